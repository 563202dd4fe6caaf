"""Mini-program login, OA OAuth, shared tokens and the addCard signature."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from wechat_testkit import API_BASE, SIM_HOST

from wechat.errors import (
    WeChatBusinessError,
    WeChatLoginCodeInvalid,
    WeChatRateLimited,
    WeChatTokenInvalid,
    WeChatUnavailable,
    WeChatUserBlocked,
)
from wechat.mp import (
    MemoryTokenStore,
    MiniProgramClient,
    OAuthClient,
    RedisTokenStore,
    card_ext,
    consume_card_code,
    get_access_token,
    get_api_ticket,
)

MP_APPID, OA_APPID = "wxsimminiprogram01", "wxsimofficialacct1"
LOGIN_URL = f"{API_BASE}/sns/jscode2session"


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def test_code_to_session_is_one_get_without_access_token(mocked):
    mocked.add(responses.GET, LOGIN_URL, json={"openid": "o1", "session_key": "k", "unionid": "u1"})
    data = MiniProgramClient(MP_APPID, "secret", api_base=API_BASE).code_to_session("abc")
    assert data["openid"] == "o1" and len(mocked.calls) == 1
    query = parse_qs(urlsplit(mocked.calls[0].request.url).query)
    assert query == {
        "appid": [MP_APPID],
        "secret": ["secret"],
        "js_code": ["abc"],
        "grant_type": ["authorization_code"],
    }


@pytest.mark.parametrize(
    ("errcode", "error", "retryable"),
    [
        (40029, WeChatLoginCodeInvalid, False),
        (40163, WeChatLoginCodeInvalid, False),
        (45011, WeChatRateLimited, True),
        (40226, WeChatUserBlocked, False),
        (-1, WeChatUnavailable, True),
        (40013, WeChatBusinessError, False),
    ],
)
def test_code_to_session_errors(mocked, errcode, error, retryable):
    mocked.add(responses.GET, LOGIN_URL, json={"errcode": errcode, "errmsg": "x"})
    with pytest.raises(error) as info:
        MiniProgramClient(MP_APPID, "s", api_base=API_BASE).code_to_session("c")
    assert info.value.code == str(errcode) and info.value.retryable is retryable


def test_code_to_session_timeout_and_garbage(mocked):
    mocked.add(responses.GET, LOGIN_URL, body=requests.exceptions.ReadTimeout("slow"))
    with pytest.raises(WeChatUnavailable):
        MiniProgramClient(MP_APPID, "s", api_base=API_BASE).code_to_session("c")
    mocked.replace(responses.GET, LOGIN_URL, body=b"<html>")
    with pytest.raises(WeChatUnavailable):
        MiniProgramClient(MP_APPID, "s", api_base=API_BASE).code_to_session("c")


def test_simulator_login_is_deterministic(sim_http):
    client = MiniProgramClient(MP_APPID, "s", api_base=API_BASE)
    first = client.code_to_session("code-alice")
    assert first["openid"] == "sim-openid-alice" and first["unionid"] == "sim-union-alice"
    assert client.code_to_session("code-alice")["session_key"] == first["session_key"]
    with pytest.raises(WeChatLoginCodeInvalid):
        client.code_to_session("bad")


def test_authorize_url_format():
    url = OAuthClient(OA_APPID, "s").authorize_url("https://app.test/cb?x=1", "snsapi_userinfo", "st8")
    assert url == (
        "https://open.weixin.qq.com/connect/oauth2/authorize?appid=wxsimofficialacct1"
        "&redirect_uri=https%3A%2F%2Fapp.test%2Fcb%3Fx%3D1&response_type=code&scope=snsapi_userinfo&state=st8#wechat_redirect"
    )


def test_oauth_flow_through_simulator_consent_page(sim_http, sim_app):
    oauth = OAuthClient(OA_APPID, "s", api_base=API_BASE, open_base=f"{SIM_HOST}/_sim/open")
    url = oauth.authorize_url("https://app.test/cb", "snsapi_userinfo", "xyz")
    page_path = urlsplit(url)
    client = sim_app.test_client()
    page = client.get(page_path.path + "?" + page_path.query)
    assert page.status_code == 200 and "同意" in page.get_data(as_text=True)
    consent = client.get(page_path.path + "?" + page_path.query + "&consent=1&name=bob")
    assert consent.status_code == 302
    back = urlsplit(consent.headers["Location"])
    params = parse_qs(back.query)
    assert back.netloc == "app.test" and params["state"] == ["xyz"]
    data = oauth.exchange_code(params["code"][0])
    assert data["openid"] == "sim-oa-openid-bob" and data["unionid"] == "sim-union-bob" and data["scope"]
    assert oauth.fetch_userinfo(data["access_token"], data["openid"])["nickname"] == "bob"
    with pytest.raises(WeChatLoginCodeInvalid) as info:
        oauth.exchange_code(params["code"][0])
    assert info.value.code == "40163"


def test_consent_page_refuses_non_http_redirect(sim_app):
    resp = sim_app.test_client().get(
        "/_sim/open/connect/oauth2/authorize?appid=a&redirect_uri=javascript:alert(1)&state=s"
    )
    assert resp.status_code == 400


def test_access_token_is_fetched_only_when_store_is_empty(sim_http, sim_state):
    store = MemoryTokenStore()
    first = get_access_token(store, OA_APPID, "s", api_base=API_BASE)
    assert get_access_token(store, OA_APPID, "s", api_base=API_BASE) == first
    assert sim_state.token_calls == 1


def test_memory_store_expires():
    now = [100.0]
    store = MemoryTokenStore(clock=lambda: now[0])
    store.set("k", "v", 10)
    assert store.get("k") == "v"
    now[0] += 10
    assert store.get("k") is None


class FakeRedis:
    def __init__(self):
        self.data, self.ttls = {}, {}

    def get(self, key):
        return self.data.get(key)

    def set(self, key, value, ex=None):
        self.data[key], self.ttls[key] = value.encode(), ex

    def eval(self, script, numkeys, key, value):  # the compare-and-delete script, as Redis runs it
        assert numkeys == 1 and "redis.call('del'" in script
        if self.data.get(key) == value.encode():
            del self.data[key]
            return 1
        return 0


STABLE_TOKEN_URL = f"{API_BASE}/cgi-bin/stable_token"


def stable_token(token: str):
    return {"method": responses.POST, "url": STABLE_TOKEN_URL, "json": {"access_token": token, "expires_in": 7200}}


def test_redis_store_shares_token_between_workers(mocked):
    mocked.add(**stable_token("T1"))
    shared = FakeRedis()
    assert get_access_token(RedisTokenStore(shared), OA_APPID, "s", api_base=API_BASE) == "T1"
    assert get_access_token(RedisTokenStore(shared), OA_APPID, "s", api_base=API_BASE) == "T1"
    assert len(mocked.calls) == 1 and shared.ttls["wechat:access_token:" + OA_APPID] == 6900


def test_access_token_comes_from_stable_token_in_normal_mode(mocked):
    mocked.add(**stable_token("T1"))
    assert get_access_token(MemoryTokenStore(), OA_APPID, "sec", api_base=API_BASE) == "T1"
    [call] = mocked.calls
    assert call.request.method == "POST" and call.request.url == STABLE_TOKEN_URL
    assert json.loads(call.request.body) == {
        "grant_type": "client_credential",
        "appid": OA_APPID,
        "secret": "sec",
        "force_refresh": False,
    }


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        ({"json": {"errcode": 40125, "errmsg": "invalid appsecret"}}, WeChatBusinessError, "40125"),
        ({"json": {"expires_in": 7200}}, WeChatUnavailable, "UNPARSEABLE_RESPONSE"),
        ({"status": 502, "body": "bad gateway"}, WeChatUnavailable, "HTTP_502"),
    ],
)
def test_stable_token_failures_are_typed_and_nothing_is_cached(mocked, answer, error, code):
    mocked.add(responses.POST, STABLE_TOKEN_URL, **answer)
    store = MemoryTokenStore()
    with pytest.raises(error) as info:
        get_access_token(store, OA_APPID, "s", api_base=API_BASE)
    assert info.value.code == code and store.get("access_token:" + OA_APPID) is None


@pytest.mark.parametrize("expires_in", ["soon", None, -5, True, 1.5, {"s": 1}, "１２"])
def test_a_token_whose_lifetime_is_unreadable_is_an_unreadable_answer_not_a_crash(mocked, expires_in):
    mocked.add(responses.POST, STABLE_TOKEN_URL, json={"access_token": "T1", "expires_in": expires_in})
    store = MemoryTokenStore()
    with pytest.raises(WeChatUnavailable) as info:  # (it had raised ValueError / TypeError: a 500)
        get_access_token(store, OA_APPID, "s", api_base=API_BASE)
    assert info.value.code == "UNPARSEABLE_RESPONSE" and store.get("access_token:" + OA_APPID) is None


@pytest.mark.parametrize(("expires_in", "kept"), [(7200, 6900), ("7200", 6900), (600, 300), (240, 120), (1, 1)])
def test_a_token_near_its_end_is_kept_for_half_of_what_is_left(mocked, expires_in, kept):
    # stable_token hands out the current token with what remains of its two hours: one with under five minutes left
    # had been kept for no time at all, and every call in those minutes asked WeChat again
    mocked.add(responses.POST, STABLE_TOKEN_URL, json={"access_token": "T1", "expires_in": expires_in})
    shared = FakeRedis()
    assert get_access_token(RedisTokenStore(shared), OA_APPID, "s", api_base=API_BASE) == "T1"
    assert shared.ttls["wechat:access_token:" + OA_APPID] == kept


TICKET_URL = f"{API_BASE}/cgi-bin/ticket/getticket"
TICKET_OK = {"errcode": 0, "errmsg": "ok", "ticket": "TK", "expires_in": 7200}


@pytest.mark.parametrize("errcode", [40001, 40014, 42001])
def test_token_error_drops_the_token_and_retries_once_with_a_fresh_one(mocked, errcode):
    # given: a cached token WeChat no longer accepts
    store = MemoryTokenStore()
    store.set("access_token:" + OA_APPID, "OLD", 3600)
    mocked.add(
        responses.GET,
        TICKET_URL,
        json={"errcode": errcode, "errmsg": "token"},
        match=[responses.matchers.query_param_matcher({"access_token": "OLD", "type": "wx_card"})],
    )
    mocked.add(**stable_token("NEW"))
    mocked.add(
        responses.GET,
        TICKET_URL,
        json=TICKET_OK,
        match=[responses.matchers.query_param_matcher({"access_token": "NEW", "type": "wx_card"})],
    )
    # when / then
    assert get_api_ticket(store, OA_APPID, "s", api_base=API_BASE) == "TK"
    assert [c.request.url.split("?")[0] for c in mocked.calls] == [TICKET_URL, STABLE_TOKEN_URL, TICKET_URL]
    assert store.get("access_token:" + OA_APPID) == "NEW"


def test_a_second_token_error_is_raised_not_retried_again(mocked):
    store = MemoryTokenStore()
    store.set("access_token:" + OA_APPID, "OLD", 3600)
    mocked.add(responses.GET, TICKET_URL, json={"errcode": 40001, "errmsg": "invalid credential"})
    mocked.add(**stable_token("NEW"))
    with pytest.raises(WeChatTokenInvalid) as info:
        get_api_ticket(store, OA_APPID, "s", api_base=API_BASE)
    assert info.value.code == "40001"
    assert len(mocked.calls) == 3  # the call, one fresh token, the one retry


def test_other_errors_keep_the_token_and_are_not_retried(mocked):
    store = MemoryTokenStore()
    store.set("access_token:" + OA_APPID, "T1", 3600)
    mocked.add(responses.GET, TICKET_URL, json={"errcode": 45009, "errmsg": "api freq out of limit"})
    with pytest.raises(WeChatBusinessError):
        get_api_ticket(store, OA_APPID, "s", api_base=API_BASE)
    assert len(mocked.calls) == 1 and store.get("access_token:" + OA_APPID) == "T1"


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_dropping_a_token_keeps_a_newer_one_another_process_stored(store_kind):
    store = MemoryTokenStore() if store_kind == "memory" else RedisTokenStore(FakeRedis())
    store.set("access_token:x", "NEWER", 3600)
    store.discard("access_token:x", "OLD")
    assert store.get("access_token:x") == "NEWER"
    store.discard("access_token:x", "NEWER")
    assert store.get("access_token:x") is None


def test_simulator_serves_stable_tokens_and_answers_40001_after_revocation(sim_http, sim_state):
    # given: a ticket fetched with the simulator's stable token
    store = MemoryTokenStore()
    assert get_api_ticket(store, OA_APPID, "s", api_base=API_BASE) == "sim-ticket-wx_card"
    first = store.get("access_token:" + OA_APPID)
    # normal mode: asking again while valid answers the same token (processes never invalidate each other)
    assert get_access_token(MemoryTokenStore(), OA_APPID, "s", api_base=API_BASE) == first
    # when: WeChat invalidates the token (say, the AppSecret was reset) and the ticket is needed again
    sim_state.revoke_access_tokens()
    ticket_store = MemoryTokenStore()
    ticket_store.set("access_token:" + OA_APPID, first, 3600)
    # then: the 40001 drops the dead token and the retry fetches a fresh one
    assert get_api_ticket(ticket_store, OA_APPID, "s", api_base=API_BASE) == "sim-ticket-wx_card"
    assert ticket_store.get("access_token:" + OA_APPID) not in (None, first)


def test_card_consume_after_a_token_error_is_sent_again_with_the_fresh_token(mocked):
    store = MemoryTokenStore()
    store.set("access_token:" + OA_APPID, "OLD", 3600)
    consume = f"{API_BASE}/card/code/consume"
    mocked.add(responses.POST, consume, json={"errcode": 42001, "errmsg": "access_token expired"})
    mocked.add(**stable_token("NEW"))
    mocked.add(responses.POST, consume, json={"errcode": 0, "errmsg": "ok", "openid": "o1", "card": {"card_id": "C"}})
    answer = consume_card_code(
        requests.Session(), "1234567890", "C", token_store=store, appid=OA_APPID, secret="s", api_base=API_BASE
    )
    assert answer["openid"] == "o1"
    sent = [c.request for c in mocked.calls if c.request.url.startswith(consume)]
    assert [parse_qs(urlsplit(r.url).query)["access_token"] for r in sent] == [["OLD"], ["NEW"]]
    assert sent[0].body == sent[1].body


def test_api_ticket_cached(mocked):
    mocked.add(**stable_token("T1"))
    mocked.add(
        responses.GET,
        f"{API_BASE}/cgi-bin/ticket/getticket",
        json={"errcode": 0, "errmsg": "ok", "ticket": "TK", "expires_in": 7200},
    )
    store = MemoryTokenStore()
    assert get_api_ticket(store, OA_APPID, "s", api_base=API_BASE) == "TK"
    assert get_api_ticket(store, OA_APPID, "s", api_base=API_BASE) == "TK"
    assert len(mocked.calls) == 2
    assert "type=wx_card" in mocked.calls[1].request.url


def test_card_ext_signature():
    ext = card_ext("ticket", "pFS7Fjg8kV1IdDz01r4SQwMkuCKc", 1404896688, "jonyqin", code="", openid="o1")
    expected = hashlib.sha1(  # noqa: S324
        "".join(sorted(["ticket", "1404896688", "jonyqin", "pFS7Fjg8kV1IdDz01r4SQwMkuCKc", "o1"])).encode()
    ).hexdigest()
    assert ext == {"timestamp": 1404896688, "nonce_str": "jonyqin", "openid": "o1", "signature": expected}
    with_code = card_ext("ticket", "card", 1, "n", code="C1")
    assert "code" in with_code and with_code["signature"] != card_ext("ticket", "card", 1, "n")["signature"]
