"""Probes of sign-in as an attacker, WeChat and a person would meet it: the official-account OAuth callback's answers
and headers, and the OAuth states an unauthenticated redirect leaves behind."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from sqlalchemy import func, select

from models import AuditLog, OAuthState, User, UserIdentity, db, utcnow
from tests.concurrency import together
from tests.console_helpers import csrf_of
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from web.guards import json_depth

MOCK_API = "https://api.weixin.test"
OAUTH_TOKEN = re.compile(MOCK_API + r"/sns/oauth2/access_token.*")


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def authorize(client, **args) -> str:
    response = client.get("/oauth/authorize", query_string=args)
    assert response.status_code == 302, response.json
    return parse_qs(urlsplit(response.headers["Location"].split("#")[0]).query)["state"][0]


class TestOAuthCallbackRefused:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "WECHAT_API_BASE": MOCK_API}

    @pytest.fixture
    def wechat_api(self, app):
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            yield rsps

    @pytest.mark.parametrize(
        ("answer", "status", "code"),
        [
            ({"json": {"errcode": 40029, "errmsg": "invalid code"}}, 401, "login_code_invalid"),
            ({"json": {"errcode": 40163, "errmsg": "code been used"}}, 401, "login_code_used"),
            ({"json": {"errcode": 45011, "errmsg": "api minute-quota reach limit"}}, 429, "wechat_rate_limited"),
            ({"json": {"errcode": -1, "errmsg": "system error"}}, 503, "wechat_busy"),
            ({"status": 502, "body": "bad gateway"}, 503, "wechat_unavailable"),
            ({"body": requests.ReadTimeout("read timed out")}, 503, "wechat_unavailable"),
        ],
    )
    def test_a_refused_code_says_start_the_sign_in_again_and_reloading_the_link_cannot_work(
        self, client, wechat_api, answer, status, code
    ):
        # given: a sign-in this browser started, whose code WeChat refuses (or does not answer)
        state = authorize(client, next="/me")
        wechat_api.get(OAUTH_TOKEN, **answer)
        # when
        response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
        # then: the person is told what works (this link's state is used: a reload is refused), not wx.login (the
        # mini-program's) nor "retry" (the same link again)
        assert (response.status_code, response.json["error"]) == (status, code)
        message = response.json["message"]
        assert "start the sign-in again" in message
        assert "wx.login" not in message and "retry" not in message
        again = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
        assert (again.status_code, again.json["error"]) == (400, "invalid_oauth_state")
        assert count(User) == count(UserIdentity) == 0

    def test_the_mini_program_login_still_says_wx_login(self, client, wechat_api):
        wechat_api.get(re.compile(MOCK_API + r"/sns/jscode2session.*"), json={"errcode": 40029, "errmsg": "x"})
        response = client.post("/api/v1/auth/login", json={"code": "0a1b2c"})
        assert (response.status_code, response.json["error"]) == (401, "login_code_invalid")
        assert "wx.login" in response.json["message"]


def test_the_redirect_carrying_the_token_is_never_cached(app, client, no_network):  # noqa: F811
    state = authorize(client, next="/me")
    response = client.get(
        "/oauth/callback", query_string={"code": simulator(app).issue_oauth_code("bob"), "state": state}
    )
    assert response.status_code == 302
    assert "#token=" in response.headers["Location"]
    assert response.headers["Cache-Control"] == "no-store"


def test_states_past_their_time_do_not_pile_up(app, client, no_network):  # noqa: F811
    # given: a crawler (or a script) followed /oauth/authorize many times, and nobody came back
    for _ in range(6):
        authorize(client, next="/" + "x" * 500)
    live = authorize(client, next="/me")
    db.session.execute(
        OAuthState.__table__.update().where(OAuthState.state != live).values(expires_at=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()
    # when: people keep starting sign-ins
    fresh = [authorize(client, next="/me") for _ in range(3)]
    # then: each new state cleared spent ones; the live ones are all kept and still work
    assert count(OAuthState) == 4
    assert set(db.session.execute(select(OAuthState.state)).scalars()) == {live, *fresh}
    response = client.get(
        "/oauth/callback", query_string={"code": simulator(app).issue_oauth_code("bob"), "state": live}
    )
    assert response.status_code == 302, response.json


# -- the JSON guard before any sign-in ----------------------------------------------------


# Bodies the old guard scanned from every quote inside an unterminated string to its end (quadratic, holding the GIL
# in C: a 64 KiB one took 40 s of CPU, these 1 MiB ones hours); the one-pass scan takes a fraction of a second.
RUNAWAY = r"""
from web.guards import json_depth
escaped = b'\\"' * 512 * 1024
print(json_depth(b'"' + escaped), json_depth(b'[{"a": "' + escaped))
"""


def test_the_json_depth_of_a_body_is_counted_in_one_pass():
    # in a child process, so a runaway scan can be stopped (a thread cannot stop a C loop holding the GIL): a failsafe
    # far above the one-pass scan's time, not a measure of it
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", RUNAWAY],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the JSON guard is still scanning a 1 MiB body")
    assert done.stdout.split() == ["0", "2"]


@pytest.mark.parametrize(
    ("raw", "deepest"),
    [
        (b'{"a": ["x]", {"b": "\\"[["}], "c": "\\\\"}', 3),
        (b'"', 0),
        (b'["a\\', 1),
        (b"[" * 40, 40),
        (b"[]" * 40, 1),
    ],
)
def test_the_json_depth_skips_strings(raw, deepest):
    assert json_depth(raw) == deepest


def test_an_unclosed_string_of_escaped_quotes_is_a_quick_422_before_any_sign_in(client, no_network):  # noqa: F811
    body = b'"' + b'\\"' * (32 * 1024 - 1)  # 64 KiB: MAX_CONTENT_LENGTH
    response = client.post("/api/v1/auth/login", data=body, content_type="application/json")
    assert (response.status_code, response.json["error"]) == (422, "invalid_json")


# -- the console's sign-in --------------------------------------------------------------


def test_refused_console_sign_ins_count_an_ipv6_subscribers_whole_64(client):
    # given: one machine on IPv6 guesses tokens, each guess from another address of its /64 (it may pick any)
    csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))

    def guess(n: int, address: str):
        environ = {"REMOTE_ADDR": address}
        return client.post("/console/sign-in", data={"token": f"guess-{n}", "csrf_token": csrf}, environ_base=environ)

    answers = [guess(n, f"2001:db8:1:2::{n + 1:x}") for n in range(12)]
    # then: one address as the other per-address limits count it: 10 audited, then 429, writing nothing
    assert [a.status_code for a in answers] == [401] * 10 + [429] * 2
    refused = db.session.execute(select(AuditLog).where(AuditLog.action == "console.sign_in_refused")).scalars().all()
    assert len(refused) == 10
    assert {r.target_id for r in refused} == {"2001:db8:1:2::/64"}
    # another subscriber's /64, and an IPv4 address, are counted apart
    assert guess(99, "2001:db8:1:3::1").status_code == 401
    assert guess(100, "198.51.100.7").status_code == 401


def test_sign_ins_starting_at_once_clear_spent_states_without_waiting_on_each_other(app, client, no_network):  # noqa: F811
    for _ in range(8):
        authorize(client, next="/me")
    db.session.execute(OAuthState.__table__.update().values(expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    browsers = [app.test_client() for _ in range(4)]
    answers = together(4, lambda i: browsers[i].get("/oauth/authorize", query_string={"next": "/me"}).status_code)
    assert answers == [302] * 4
    assert count(OAuthState) == 4  # the 4 live ones; the 8 spent ones cleared, two by each
