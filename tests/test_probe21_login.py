"""Probe round 21: sign-in as an attacker and as WeChat would meet it.

Found by a probe helper; the tests marked "failed before its fix" did.

* An official-account callback sent any ``code`` on to WeChat: 3,000 characters, non-ASCII, a space, CR LF, a
  fullwidth look-alike, each spending the sign-in's state first (the browser was told to start again). A code is
  refused (422 ``invalid_oauth_callback``) before the state is spent and before WeChat is called, as the
  mini-program's ``js_code`` already was: the real code WeChat sends next still finishes the sign-in.
* An openid or unionid of any printable text was taken: a blank ``" "``, ``"o-1 "`` beside ``"o-1"``, a fullwidth
  ``"ｏ１"``. The first answer with a blank openid made a person every later blank answer signed in as (the
  ``openid ''`` case, one space away). WeChat's identifiers are letters, digits, ``-`` and ``_``: anything else is
  an answer we cannot act on (503 ``wechat_unavailable``), nothing written.
* A ``snsapi_userinfo`` answer about another openid than the grant's was believed: its unionid joined this
  official-account openid to whichever person held that unionid, and the browser got that person's token.
  Refused (503), nobody linked.
"""

from __future__ import annotations

import io
import json
import logging
import re
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
import responses
from sqlalchemy import func, select

from models import RedPacket, User, UserIdentity, db
from tests.concurrency import together
from web.auth import issue_user_token
from web.logs import JsonFormatter

LOGIN = "/api/v1/auth/login"
MOCK_API = "https://api.weixin.test"
JSCODE2SESSION = re.compile(MOCK_API + r"/sns/jscode2session.*")
OAUTH_TOKEN = re.compile(MOCK_API + r"/sns/oauth2/access_token.*")
USERINFO = re.compile(MOCK_API + r"/sns/userinfo.*")
SESSION_KEY = "c2Vzc2lvbktleTEyMzQ1Ng=="
RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def authorize(client, **args) -> str:
    response = client.get("/oauth/authorize", query_string=args)
    assert response.status_code == 302, response.json
    return parse_qs(urlsplit(response.headers["Location"].split("#")[0]).query)["state"][0]


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "WECHAT_API_BASE": MOCK_API}


@pytest.fixture
def wechat_api(app):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


# -- the OAuth callback's code (failed before its fix) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["x" * 3000, "c" * 129, "código", "a b", "a\r\nb", "ｃ1", "c1\u200b", "c1;x", "c1\n"],
    ids=["3000-chars", "129-chars", "non-ascii", "space", "crlf", "fullwidth", "zero-width", "semicolon", "newline"],
)
def test_an_oauth_code_wechat_never_issues_is_refused_before_wechat_and_the_sign_in_still_finishes(
    client, wechat_api, code
):
    # given: a sign-in this browser started
    state = authorize(client, next="/me")
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "unionid": "u-1", "scope": "snsapi_base"})
    # when: the callback carries a code WeChat never issues
    response = client.get("/oauth/callback", query_string={"code": code, "state": state})
    # then: refused before WeChat is asked, the state unspent
    assert (response.status_code, response.json["error"]) == (422, "invalid_oauth_callback")
    assert "code" in response.json["message"]
    assert len(wechat_api.calls) == 0
    assert count(User) == 0
    # and the real code WeChat sends finishes the same sign-in
    done = client.get("/oauth/callback", query_string={"code": "061AbCd-_9", "state": state})
    assert done.status_code == 302, done.json
    assert done.headers["Location"].startswith("/me#token=")


# -- identifiers WeChat never sends (failed before its fix) -----------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"openid": " "},
        {"openid": "o-1 "},
        {"openid": "o 1"},
        {"openid": "ｏ１"},
        {"openid": "o-1", "unionid": " "},
        {"openid": "o-1", "unionid": "u-1\u00ad"},
    ],
)
def test_a_jscode2session_identifier_wechat_never_sends_makes_nobody(client, wechat_api, answer):
    wechat_api.get(JSCODE2SESSION, json={**answer, "session_key": SESSION_KEY})
    response = client.post(LOGIN, json={"code": "0a1b2c"})
    assert (response.status_code, response.json["error"]) == (503, "wechat_unavailable")
    assert "token" not in response.json
    assert count(User) == count(UserIdentity) == 0


def test_two_blank_openids_are_never_one_person(app, wechat_api):
    # given: WeChat (or whatever answered for it) gives two people the same blank openid
    wechat_api.get(JSCODE2SESSION, json={"openid": " ", "session_key": SESSION_KEY})
    first = app.test_client().post(LOGIN, json={"code": "code-one"})
    second = app.test_client().post(LOGIN, json={"code": "code-two"})
    # then: neither is signed in (before: the second was handed the first one's account)
    assert [first.status_code, second.status_code] == [503, 503]
    assert count(User) == 0


@pytest.mark.parametrize("grant", [{"openid": " "}, {"openid": "o-oa", "unionid": "u 1"}])
def test_an_oauth_identifier_wechat_never_sends_makes_nobody(client, wechat_api, grant):
    state = authorize(client, next="/me")
    wechat_api.get(OAUTH_TOKEN, json={**grant, "access_token": "AT", "scope": "snsapi_base"})
    response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
    assert (response.status_code, response.json["error"]) == (503, "wechat_unavailable")
    assert count(User) == count(UserIdentity) == 0


def test_a_userinfo_answer_about_another_openid_joins_nobody(app, client, wechat_api):
    # given: a mini-program person whose unionid is u-victim
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp-victim", "session_key": SESSION_KEY, "unionid": "u-victim"})
    victim = client.post(LOGIN, json={"code": "0a1b2c"})
    assert victim.status_code == 200
    # when: an official-account sign-in's grant names o-oa, and the userinfo answer is about another openid
    state = authorize(client, next="/me", scope="snsapi_userinfo")
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "scope": "snsapi_userinfo"})
    wechat_api.get(USERINFO, json={"openid": "o-someone-else", "unionid": "u-victim", "nickname": "x"})
    response = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
    # then: not believed; o-oa is nobody's, and no token of the victim's is handed out
    assert (response.status_code, response.json["error"]) == (503, "wechat_unavailable")
    assert "token" not in response.headers.get("Location", "")
    assert count(UserIdentity) == 1
    assert db.session.execute(select(UserIdentity.openid)).scalar_one() == "o-mp-victim"


def test_a_userinfo_answer_about_the_grants_openid_still_links_by_unionid(app, client, wechat_api):
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY, "unionid": "u-1"})
    mp = client.post(LOGIN, json={"code": "0a1b2c"}).json["user"]["id"]
    state = authorize(client, next="/me", scope="snsapi_userinfo")
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "scope": "snsapi_userinfo"})
    wechat_api.get(USERINFO, json={"openid": "o-oa", "unionid": "u-1", "nickname": "x"})
    assert client.get("/oauth/callback", query_string={"code": "c1", "state": state}).status_code == 302
    assert count(User) == 1
    assert set(db.session.execute(select(UserIdentity.user_id)).scalars()) == {mp}


# -- guards: passed from the start ------------------------------------------------------------------------------------


@pytest.fixture
def log_lines():
    """Every log line of every logger at DEBUG, as the app's JSON formatter writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def test_the_session_key_the_secret_and_the_code_reach_no_log_and_no_answer(app, client, wechat_api, log_lines):
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY, "unionid": "u-1"})
    ok = client.post(LOGIN, json={"code": "js-code-secret-1"})
    wechat_api.replace(responses.GET, JSCODE2SESSION, body=requests.ConnectionError("reset by peer"))
    down = client.post(LOGIN, json={"code": "js-code-secret-2"})
    assert ok.status_code == 200 and down.status_code == 503
    written = log_lines.getvalue()
    for secret in (SESSION_KEY, app.config["WECHAT_APP_SECRET"], "js-code-secret-1", "js-code-secret-2"):
        assert secret not in written
        assert secret not in json.dumps(ok.json) + json.dumps(down.json)


def test_first_sign_ins_through_both_apps_at_once_make_one_person_with_one_newcomer_packet(
    app, wechat_api, make_campaign
):
    make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY, "unionid": "u-twice"})
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "unionid": "u-twice", "scope": "x"})
    browsers = [app.test_client() for _ in range(4)]
    states = [authorize(b, next="/me") if i % 2 else None for i, b in enumerate(browsers)]

    def go(i: int) -> int:
        if states[i] is None:
            return browsers[i].post(LOGIN, json={"code": f"c{i}"}).status_code
        return browsers[i].get("/oauth/callback", query_string={"code": f"c{i}", "state": states[i]}).status_code

    assert together(4, go, app) == [200, 302, 200, 302]
    assert (count(User), count(UserIdentity), count(RedPacket)) == (1, 2, 1)


def test_one_openid_text_under_both_apps_is_two_people_without_a_unionid(app, client, wechat_api):
    # given: a mini-program person o-same, with no unionid
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-same", "session_key": SESSION_KEY})
    mp = client.post(LOGIN, json={"code": "0a1b2c"}).json["user"]["id"]
    # when: the official account's silent grant names the same text as its openid
    state = authorize(client, next="/me")
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-same", "access_token": "AT", "scope": "snsapi_base"})
    silent = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
    # then: not signed in as the mini-program person: asked again with consent (its unionid would link them)
    assert silent.status_code == 302 and "#token=" not in silent.headers["Location"]
    assert "scope=snsapi_userinfo" in silent.headers["Location"]
    # and with consent but still no unionid, a person of their own: openids are never compared across apps
    state = authorize(client, next="/me", scope="snsapi_userinfo")
    wechat_api.replace(
        responses.GET, OAUTH_TOKEN, json={"openid": "o-same", "access_token": "AT", "scope": "snsapi_userinfo"}
    )
    wechat_api.get(USERINFO, json={"openid": "o-same", "nickname": "x"})
    done = client.get("/oauth/callback", query_string={"code": "c2", "state": state})
    assert done.status_code == 302 and "#token=" in done.headers["Location"]
    assert count(User) == 2
    oa = db.session.execute(
        select(UserIdentity.user_id).where(UserIdentity.appid == app.config["WECHAT_OA_APPID"])
    ).scalar_one()
    assert oa != mp


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.test/",
        "HTTPS://evil.test/",
        "//evil.test",
        "/\\evil.test",
        "\\\\evil.test",
        "/%2F%2Fevil.test",
        "/%2Fevil.test",
        "/%5C%5Cevil.test",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "/\uff0f\uff0fevil.test",
        "/\u2215\u2215evil.test",
        "\uff0f\uff0fevil.test",
        "/\u3000/evil.test",
        "/ /evil.test",
        "/@evil.test",
        "/.evil.test",
    ],
)
def test_the_page_after_sign_in_is_on_this_site_whatever_next_says(client, wechat_api, target):
    # a guard (passed from the start): refused, or a path on this host however a browser resolves it
    response = client.get("/oauth/authorize", query_string={"next": target})
    if response.status_code == 422:
        return
    state = parse_qs(urlsplit(response.headers["Location"].split("#")[0]).query)["state"][0]
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT", "unionid": "u-1", "scope": "x"})
    done = client.get("/oauth/callback", query_string={"code": "c1", "state": state})
    assert done.status_code == 302
    location = done.headers["Location"]
    assert location.isascii() and location.startswith("/") and not location.startswith(("//", "/\\"))
    resolved = urlsplit(urljoin("https://shop.example/", location))
    assert (resolved.scheme, resolved.netloc) == ("https", "shop.example")


def test_a_token_or_an_oauth_code_in_a_query_string_reaches_no_log(app, client, wechat_api, make_user, log_lines):
    # a guard (passed from the start): the request log writes the path, never the query; a token put in the query
    # string by a careless client is not taken as a bearer token either
    app.logger.setLevel(logging.INFO)
    person = make_user()
    token = issue_user_token(person, "mini_program")
    db.session.commit()
    careless = client.get("/api/v1/me/wallet", query_string={"access_token": token, "token": token})
    assert (careless.status_code, careless.json["error"]) == (401, "missing_token")
    state = authorize(client, next="/me")
    wechat_api.get(OAUTH_TOKEN, json={"openid": "o-oa", "access_token": "AT-secret", "unionid": "u-1", "scope": "x"})
    done = client.get("/oauth/callback", query_string={"code": "oauth-code-secret", "state": state})
    issued = done.headers["Location"].partition("#token=")[2]
    written = log_lines.getvalue()
    assert '"path": "/oauth/callback"' in written.replace('":"', '": "')  # the request log did write lines
    for secret in (token, issued, "oauth-code-secret", state, "AT-secret"):
        assert secret not in written


@pytest.mark.parametrize(
    "code",
    ["x" * 129, "código", "ａｂｃ", "a\u200bb", "a\u0000b", "a\r\nb", "a b", ""],
    ids=["129-chars", "non-ascii", "fullwidth", "zero-width", "nul", "crlf", "space", "empty"],
)
def test_a_js_code_wechat_never_issues_is_refused_before_wechat(client, wechat_api, code):
    # a guard (passed from the start): the mini-program's code, as the OAuth callback's now
    wechat_api.get(JSCODE2SESSION, json={"openid": "o-mp", "session_key": SESSION_KEY})
    response = client.post(LOGIN, json={"code": code})
    assert response.status_code == 422
    assert response.json["error"] in ("validation_error", "invalid_json")
    assert len(wechat_api.calls) == 0
    assert count(User) == 0
