"""Mini-program login, OA OAuth, shared tokens and the addCard signature."""

from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from wechat_testkit import API_BASE, SIM_HOST

from wechat.errors import (
    WeChatBusinessError,
    WeChatLoginCodeInvalid,
    WeChatRateLimited,
    WeChatUnavailable,
    WeChatUserBlocked,
)
from wechat.mp import (
    MemoryTokenStore,
    MiniProgramClient,
    OAuthClient,
    RedisTokenStore,
    card_ext,
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


def test_redis_store_shares_token_between_workers(mocked):
    mocked.add(responses.GET, f"{API_BASE}/cgi-bin/token", json={"access_token": "T1", "expires_in": 7200})
    shared = FakeRedis()
    assert get_access_token(RedisTokenStore(shared), OA_APPID, "s", api_base=API_BASE) == "T1"
    assert get_access_token(RedisTokenStore(shared), OA_APPID, "s", api_base=API_BASE) == "T1"
    assert len(mocked.calls) == 1 and shared.ttls["wechat:access_token:" + OA_APPID] == 6900


def test_api_ticket_cached(mocked):
    mocked.add(responses.GET, f"{API_BASE}/cgi-bin/token", json={"access_token": "T1", "expires_in": 7200})
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
