"""Probe round 22: sign-in (``wx.login`` → ``POST /api/v1/auth/login``, official-account OAuth).

Found by a probe helper; the tests marked "failed before its fix" did.

* Neither ``GET /oauth/authorize`` (no sign-in needed; each call writes a state row) nor ``POST /api/v1/auth/login``
  (each call costs a ``jscode2session`` call to WeChat) had a limit: one script could flood both. Each now takes a
  slot of a per-network-address count a minute (``OAUTH_AUTHORIZE_PER_IP_PER_MINUTE``, ``LOGIN_PER_IP_PER_MINUTE``)
  in ``limit_counters``, as the claim limits do: shared by every worker, committed before WeChat is called (a
  flood of bad codes counts too), and a refusal is 429 with ``Retry-After`` that writes nothing and calls nobody.
* ``"errcode": "0"`` (a string) in a WeChat answer was taken as a refusal ("WeChat refused: 0", 502): WeChat's 0 is
  success, as a number or as the string "0". Any other errcode that is no number (``true``, ``1.5``, ``"00"``, a
  list) is an answer we cannot read (503 ``wechat_unavailable``); ``false`` and ``0.0`` had passed as success.
* ``user_identities`` had no unique (user_id, appid): a second openid under one appid carrying a person's unionid
  (WeChat never sends one; a wrong answer would) became the person's second identity there, and which one a
  payment or a notice used was the database's choice. Refused (409 ``identity_conflict``, nothing written), and
  the database holds it (migration 0047, which stops on rows that already break it).
* Tried as an attacker would, and held from the start (guards kept as tests): states never issued (with a forged
  cookie to match), a replayed or expired callback, odd login bodies, odd authorize queries.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import IntegrityError

from app import create_app
from models import OAuthState, User, UserIdentity, db
from tests.concurrency import together
from tests.conftest import PG_URL, TEST_SETTINGS, on_postgres

LOGIN = "/api/v1/auth/login"
MOCK_API = "https://api.weixin.test"
JSCODE2SESSION = re.compile(MOCK_API + r"/sns/jscode2session.*")
OAUTH_TOKEN = re.compile(MOCK_API + r"/sns/oauth2/access_token.*")
SESSION_KEY = "c2Vzc2lvbktleTEyMzQ1Ng=="
HOME = {"REMOTE_ADDR": "203.0.113.7"}


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def state_of(response) -> str:
    return parse_qs(urlsplit(response.headers["Location"].split("#")[0]).query)["state"][0]


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "WECHAT_API_BASE": MOCK_API}


@pytest.fixture
def wechat_api(app):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def at(monkeypatch):
    """Set the clock the sign-in routes read (``at(datetime)``)."""

    def move(when: datetime) -> None:
        monkeypatch.setattr("web.login.utcnow", lambda: when)

    return move


def login(client, code: str = "0a1b2c", addr: dict = HOME):
    return client.post(LOGIN, json={"code": code}, environ_base=addr)


# -- the per-network-address limits (failed before their fix) ---------------------------------------------------------


@pytest.fixture
def three_a_minute(app, at):
    """Three a minute, the routes' clock held inside one minute (a slow run must not cross into the next: its
    window is new); a test moves it on with ``at``."""
    app.config.update(LOGIN_PER_IP_PER_MINUTE=3, OAUTH_AUTHORIZE_PER_IP_PER_MINUTE=3)
    at(datetime(2026, 12, 1, 10, 0, 15, tzinfo=UTC))


def test_a_flood_of_logins_from_one_address_is_refused_before_wechat_and_writes_nothing(
    app, client, wechat_api, three_a_minute, at
):
    at(datetime(2026, 12, 1, 10, 0, 15, tzinfo=UTC))
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})
    assert [login(client, f"c{i}").status_code for i in range(3)] == [200, 200, 200]
    people, calls = count(User), len(wechat_api.calls)
    # when: a fourth within the minute
    flood = login(client, "c4")
    # then: 429 with a clear code and Retry-After (to the minute's end), WeChat not called, nothing written
    assert (flood.status_code, flood.json["error"]) == (429, "login_rate_limited")
    assert flood.headers["Retry-After"] == "45"
    assert "network address" in flood.json["message"]
    assert len(wechat_api.calls) == calls and count(User) == people
    # and another address (a real person elsewhere) signs in meanwhile
    assert login(client, "c5", {"REMOTE_ADDR": "198.51.100.9"}).status_code == 200
    # and the next minute the first address may again
    at(datetime(2026, 12, 1, 10, 1, 0, tzinfo=UTC))
    assert login(client, "c6").status_code == 200


def test_a_flood_of_bad_codes_counts_too(app, client, wechat_api, three_a_minute, at):
    at(datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC))
    wechat_api.get(JSCODE2SESSION, json={"errcode": 40029, "errmsg": "invalid code"})
    assert [login(client, f"bad{i}").status_code for i in range(3)] == [401, 401, 401]
    refused = login(client, "bad4")
    assert (refused.status_code, refused.json["error"]) == (429, "login_rate_limited")
    assert len(wechat_api.calls) == 3  # each bad code cost WeChat a call; the fourth cost nothing


def test_a_flood_of_authorize_redirects_from_one_address_is_refused_and_writes_no_state(
    app, client, three_a_minute, at
):
    at(datetime(2026, 12, 1, 10, 0, 50, tzinfo=UTC))
    codes = [client.get("/oauth/authorize", environ_base=HOME).status_code for _ in range(3)]
    assert codes == [302, 302, 302]
    flood = client.get("/oauth/authorize", query_string={"next": "/me"}, environ_base=HOME)
    assert (flood.status_code, flood.json["error"]) == (429, "oauth_rate_limited")
    assert flood.headers["Retry-After"] == "10"
    assert flood.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in flood.headers
    assert count(OAuthState) == 3
    assert client.get("/oauth/authorize", environ_base={"REMOTE_ADDR": "198.51.100.9"}).status_code == 302


def test_logins_and_authorize_redirects_are_counted_apart(app, client, wechat_api, three_a_minute, at):
    at(datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC))
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})
    assert [client.get("/oauth/authorize", environ_base=HOME).status_code for _ in range(3)] == [302] * 3
    assert [login(client, f"c{i}").status_code for i in range(3)] == [200] * 3


def test_every_worker_counts_against_the_same_limit(app, app_settings, client, wechat_api, three_a_minute):
    # given: a second process of the same deployment (another gunicorn worker), on the same database
    other = create_app({**app_settings, "LOGIN_PER_IP_PER_MINUTE": 3})
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})
    try:
        assert login(client, "c1").status_code == 200
        assert login(other.test_client(), "c2").status_code == 200
        assert login(client, "c3").status_code == 200
        # then: the fourth, in either, is refused
        assert login(other.test_client(), "c4").status_code == 429
    finally:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()


def test_a_flood_sent_at_once_gets_exactly_the_limit_through(app, wechat_api, three_a_minute):
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})

    def go(i: int) -> int:
        if i % 2:
            return app.test_client().get("/oauth/authorize", environ_base=HOME).status_code
        return login(app.test_client(), f"c{i}").status_code

    got = together(12, go)
    assert sorted(got[0::2]) == [200] * 3 + [429] * 3 and sorted(got[1::2]) == [302] * 3 + [429] * 3, got
    assert len(wechat_api.calls) == 3 and count(OAuthState) == 3


def test_an_ipv6_phone_cannot_escape_the_limit_by_changing_its_address_within_its_64(
    app, client, wechat_api, three_a_minute
):
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})
    codes = [login(client, f"c{i}", {"REMOTE_ADDR": f"2001:db8:1:2::{i + 1}"}).status_code for i in range(4)]
    assert codes == [200, 200, 200, 429]


def test_zero_switches_the_limits_off(app, client, wechat_api):
    app.config.update(LOGIN_PER_IP_PER_MINUTE=0, OAUTH_AUTHORIZE_PER_IP_PER_MINUTE=0)
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})
    assert {login(client, f"c{i}").status_code for i in range(5)} == {200}
    assert {client.get("/oauth/authorize", environ_base=HOME).status_code for _ in range(5)} == {302}
    assert db.session.execute(text("SELECT count(*) FROM limit_counters")).scalar_one() == 0


def test_the_defaults_never_bother_a_real_person_nor_a_busy_shared_address(app, client, wechat_api):
    # A person signs in a few times a minute at most; a venue's Wi-Fi puts many people behind one address.
    assert app.config["LOGIN_PER_IP_PER_MINUTE"] >= 60
    assert app.config["OAUTH_AUTHORIZE_PER_IP_PER_MINUTE"] >= 60
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})
    assert {login(client, f"c{i}").status_code for i in range(30)} == {200}
    assert {client.get("/oauth/authorize", environ_base=HOME).status_code for _ in range(30)} == {302}


@pytest.mark.parametrize("name", ["LOGIN_PER_IP_PER_MINUTE", "OAUTH_AUTHORIZE_PER_IP_PER_MINUTE"])
def test_the_limits_are_settings_checked_at_start(name):
    from config import ConfigError, load_config

    assert load_config({**TEST_SETTINGS}, environ={name: "7"})[name] == 7
    with pytest.raises(ConfigError, match=name):
        load_config({**TEST_SETTINGS}, environ={name: "-1"})
    with pytest.raises(ConfigError, match=name):
        load_config({**TEST_SETTINGS}, environ={name: "lots"})


# -- errcode "0" is WeChat's success (failed before its fix) ---------------------------------------------------------


@pytest.mark.parametrize("zero", [0, "0"])
def test_a_jscode2session_answer_with_errcode_zero_signs_in(client, wechat_api, zero):
    wechat_api.get(JSCODE2SESSION, json={"errcode": zero, "errmsg": "ok", "openid": "o-mp", "session_key": SESSION_KEY})
    response = login(client)
    assert response.status_code == 200, response.json
    assert count(User) == 1


@pytest.mark.parametrize("zero", [0, "0"])
def test_an_oauth_answer_with_errcode_zero_signs_in(client, wechat_api, zero):
    state = state_of(client.get("/oauth/authorize", query_string={"next": "/me"}))
    wechat_api.get(
        OAUTH_TOKEN,
        json={"errcode": zero, "errmsg": "ok", "openid": "o-oa", "unionid": "u-1", "access_token": "AT", "scope": "x"},
    )
    response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
    assert response.status_code == 302 and "#token=" in response.headers["Location"], response.json


@pytest.mark.parametrize("errcode", [True, False, 0.0, 1.5, "00", "-0", " 0", "ok", "", None, [], {}], ids=repr)
def test_an_errcode_that_is_no_number_is_an_answer_we_cannot_read(client, wechat_api, errcode):
    answer = {"errcode": errcode, "errmsg": "?", "openid": "o-mp", "session_key": SESSION_KEY}
    wechat_api.get(JSCODE2SESSION, json=answer)
    response = login(client)
    if errcode is None:  # JSON null: no errcode at all, as WeChat's success usually is
        assert response.status_code == 200
        return
    assert (response.status_code, response.json["error"]) == (503, "wechat_unavailable"), response.json
    assert count(User) == count(UserIdentity) == 0


def test_a_numeric_string_errcode_is_still_wechats_refusal(client, wechat_api):
    wechat_api.get(JSCODE2SESSION, json={"errcode": "40029", "errmsg": "invalid code"})
    response = login(client)
    assert (response.status_code, response.json["error"]) == (401, "login_code_invalid")


def test_the_reason_an_errcode_cannot_be_read_is_named():
    from wechat.errors import WeChatUnavailable
    from wechat.mp import MiniProgramClient

    with responses.RequestsMock() as rsps:
        rsps.get(JSCODE2SESSION, json={"errcode": True, "openid": "o", "session_key": "k"})
        with pytest.raises(WeChatUnavailable, match="errcode is not a number: True") as caught:
            MiniProgramClient("wx1", "s", api_base=MOCK_API).code_to_session("c1")
    assert caught.value.code == "UNPARSEABLE_RESPONSE"


# -- one identity per person and app (failed before its fix) ---------------------------------------------------------


def test_a_second_openid_for_a_known_person_under_one_app_makes_no_second_identity(app, client, wechat_api):
    # given: a person known on the mini-program by o-mp-1 and unionid u-1
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp-1", "session_key": SESSION_KEY, "unionid": "u-1"})
    first = login(client, "c1")
    assert first.status_code == 200
    # when: an answer names another openid of the same app with the same unionid (WeChat never does)
    wechat_api.replace(
        responses.GET, JSCODE2SESSION, json={"openid": "o-mp-2", "session_key": SESSION_KEY, "unionid": "u-1"}
    )
    second = login(client, "c2")
    # then: refused, nothing written; the person keeps their one identity there
    assert (second.status_code, second.json["error"]) == (409, "identity_conflict"), second.json
    assert "token" not in second.json
    assert count(UserIdentity) == 1 and count(User) == 1
    # and the known openid still signs in
    wechat_api.replace(
        responses.GET, JSCODE2SESSION, json={"openid": "o-mp-1", "session_key": SESSION_KEY, "unionid": "u-1"}
    )
    assert login(client, "c3").json["user"]["id"] == first.json["user"]["id"]


def test_a_second_official_account_openid_for_a_known_person_makes_no_second_identity(app, client, wechat_api):
    def sign_in(openid: str):
        state = state_of(client.get("/oauth/authorize", query_string={"next": "/me"}))
        wechat_api.replace(
            responses.GET, OAUTH_TOKEN, json={"openid": openid, "unionid": "u-1", "access_token": "AT", "scope": "x"}
        )
        return client.get("/oauth/callback", query_string={"code": "c1", "state": state})

    wechat_api.get(OAUTH_TOKEN, json={})
    assert sign_in("o-oa-1").status_code == 302
    refused = sign_in("o-oa-2")
    assert (refused.status_code, refused.json["error"]) == (409, "identity_conflict")
    assert count(UserIdentity) == 1


def test_the_database_refuses_a_second_identity_of_one_person_under_one_app(app, make_user):
    person = make_user(appid="wx-one")
    db.session.add(UserIdentity(user_id=person.id, appid="wx-one", openid="o-other"))
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()
    db.session.add(UserIdentity(user_id=person.id, appid="wx-two", openid="o-other"))  # another app: fine
    db.session.commit()


# -- migration 0047 ---------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_database(tmp_path):
    """An empty database of its own: a SQLite file, or on PostgreSQL a schema of its own (dropped after)."""
    if not on_postgres():
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    schema = "probe22_migration"
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def _identities(conn, rows) -> None:
    for user_id, appid, openid in rows:
        conn.execute(
            text(
                "INSERT INTO user_identities (user_id, appid, openid, channel, created_at) "
                "VALUES (:u, :a, :o, 'mini_program', :t)"
            ),
            {"u": user_id, "a": appid, "o": openid, "t": datetime(2026, 12, 1, tzinfo=UTC)},
        )


def test_migration_0047_stops_on_a_person_with_two_identities_under_one_app_and_passes_once_resolved(
    fresh_database,
):
    from flask_migrate import downgrade, upgrade

    app = create_app({**TEST_SETTINGS, "DATABASE_URL": fresh_database})
    with app.app_context():
        upgrade(revision="0046_order_ip_net")
        with db.engine.begin() as conn:
            for uid in (1, 2):
                conn.execute(
                    text("INSERT INTO users (id, status, created_at, token_generation) VALUES (:i, 'active', :t, 0)"),
                    {"i": uid, "t": datetime(2026, 12, 1, tzinfo=UTC)},
                )
            _identities(conn, [(1, "wx-mp", "o-1"), (1, "wx-mp", "o-1b"), (1, "wx-oa", "o-oa"), (2, "wx-mp", "o-2")])
        # when: upgraded with the duplicate there
        from alembic import command

        alembic_config = app.extensions["migrate"].migrate.get_config()
        with pytest.raises(RuntimeError, match=r"user 1 under appid wx-mp \(identities \d+, \d+\)"):
            command.upgrade(alembic_config, "head")  # (flask_migrate's upgrade turns the error into an exit)
        db.session.remove()
        with db.engine.connect() as conn:  # stopped: still at 0046, every row kept
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0046_order_ip_net"
            assert conn.execute(text("SELECT count(*) FROM user_identities")).scalar_one() == 4
        # then: once an operator has resolved it, the upgrade passes and the database holds the rule
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM user_identities WHERE openid = 'o-1b'"))
        upgrade()
        with pytest.raises(IntegrityError), db.engine.begin() as conn:
            _identities(conn, [(2, "wx-mp", "o-2b")])
        downgrade(revision="0046_order_ip_net")
        with db.engine.begin() as conn:  # down again: no longer held
            _identities(conn, [(2, "wx-mp", "o-2b")])
        db.session.remove()
        db.engine.dispose()


# -- the sign-in routes as an attacker would try them -----------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    ["a\x00b", "0" * 31 + "\x00", "Z" * 32, "'; drop table oauth_states; --", "é" * 32, "0" * 33, "../" * 10],
    ids=["nul", "nul-at-end", "not-hex", "sql", "non-ascii", "33-hex", "dots"],
)
def test_a_state_we_never_issued_is_refused_even_with_its_forged_cookie(client, wechat_api, state):
    # a guard (passed from the start): a script sends whatever cookie it likes, matching the state
    client.set_cookie(f"oauth_state_{state[:12]}", state, path="/oauth/callback")
    response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
    # refused (a NUL by the app's guard on every query string, 422), never a 500, WeChat not called
    expected = (422, "unprocessable_entity") if "\x00" in state else (400, "invalid_oauth_state")
    assert (response.status_code, response.json["error"]) == expected, response.json
    assert len(wechat_api.calls) == 0


def test_a_replayed_callback_is_refused_and_signs_nobody_in_twice(client, wechat_api):
    state = state_of(client.get("/oauth/authorize", query_string={"next": "/me"}))
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "unionid": "u-1", "access_token": "AT", "scope": "x"})
    cookie = client.get_cookie(f"oauth_state_{state[:12]}", path="/oauth/callback").value
    assert client.get("/oauth/callback", query_string={"code": "c1", "state": state}).status_code == 302
    client.set_cookie(f"oauth_state_{state[:12]}", cookie, path="/oauth/callback")  # the script keeps it
    again = client.get("/oauth/callback", query_string={"code": "c2", "state": state})
    assert (again.status_code, again.json["error"]) == (400, "invalid_oauth_state")
    assert len(wechat_api.calls) == 1


def test_an_expired_state_is_refused_without_calling_wechat(client, wechat_api, at):
    at(datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC))
    state = state_of(client.get("/oauth/authorize", query_string={"next": "/me"}))
    at(datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC) + timedelta(minutes=10, seconds=1))
    late = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
    assert (late.status_code, late.json["error"]) == (400, "invalid_oauth_state")
    assert len(wechat_api.calls) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"code": None},
        {"code": 123},
        {"code": ["c1"]},
        {"code": {"$ne": ""}},
        {"code": "c1", "extra": "x" * 10_000},
        ["c1"],
        "c1",
        {"code": "c" * 100_000},
    ],
    ids=["null", "number", "list", "object", "extra-field", "array-body", "string-body", "huge-code"],
)
def test_odd_login_bodies_are_422_and_never_reach_wechat(client, wechat_api, body):
    response = client.post(LOGIN, json=body, environ_base=HOME)
    assert response.status_code in (413, 422), response.json
    assert len(wechat_api.calls) == 0
    assert count(User) == 0


def test_odd_authorize_queries_are_refused_and_write_no_state(client):
    for args in (
        {"scope": "snsapi_login"},
        {"scope": "x" * 5000},
        {"next": "/" + "a" * 600},
        {"next": "/a\x00b"},
        {"next": "https://evil.test/"},
    ):
        response = client.get("/oauth/authorize", query_string=args, environ_base=HOME)
        assert response.status_code == 422, (args, response.json)
        assert len(response.json["message"]) < 200
    assert count(OAuthState) == 0
