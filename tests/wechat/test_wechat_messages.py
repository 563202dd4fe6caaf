"""Subscribe and OA template messages: the wire format, the error mapping, the token retry, and the simulator."""

from __future__ import annotations

import json

import pytest
import responses
from wechat_testkit import API_BASE, SIM_HOST

from wechat.errors import WeChatRateLimited, WeChatUnavailable
from wechat.messages import MessageClient, WeChatConsentRefused, WeChatMessageRefused
from wechat.mp import MemoryTokenStore

SEND = f"{API_BASE}/cgi-bin/message/subscribe/send"
TEMPLATE = f"{API_BASE}/cgi-bin/message/template/send"
DATA = {"thing1": {"value": "红包"}, "amount2": {"value": "¥12.30"}, "time3": {"value": "2026年11月30日 14:00"}}


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.post(f"{API_BASE}/cgi-bin/stable_token", json={"access_token": "T1", "expires_in": 7200})
        yield rsps


def client() -> MessageClient:
    return MessageClient("wxmini", "secret", MemoryTokenStore(), API_BASE)


@pytest.mark.parametrize(
    ("errcode", "error"),
    [
        (43101, WeChatConsentRefused),
        (47003, WeChatMessageRefused),
        (41030, WeChatMessageRefused),
        (40037, WeChatMessageRefused),
        (43004, WeChatMessageRefused),
        (45009, WeChatRateLimited),
        (-1, WeChatUnavailable),
    ],
)
def test_errcodes_are_typed(mocked, errcode, error):
    mocked.post(SEND, json={"errcode": errcode, "errmsg": "x"})
    with pytest.raises(error) as raised:
        client().send_subscribe("o", "T", DATA)
    assert raised.value.code == str(errcode)


def test_a_token_error_is_retried_once_with_a_fresh_token(mocked):
    mocked.post(SEND, json={"errcode": 40001, "errmsg": "invalid credential"})
    mocked.post(SEND, json={"errcode": 0, "errmsg": "ok", "msgid": 5})
    assert client().send_subscribe("o", "T", DATA) == "5"
    assert len([c for c in mocked.calls if c.request.url.startswith(SEND)]) == 2


def test_a_read_timeout_may_follow_a_message_wechat_took_a_connect_timeout_never_does(mocked):
    import requests

    mocked.post(SEND, body=requests.ReadTimeout("slow"))
    with pytest.raises(WeChatUnavailable) as raised:
        client().send_subscribe("o", "T", DATA)
    assert raised.value.outcome_unknown and raised.value.code == "NETWORK_ERROR"
    mocked.post(SEND, body=requests.ConnectTimeout("no route"))
    with pytest.raises(WeChatUnavailable) as raised:
        client().send_subscribe("o", "T", DATA)
    assert not raised.value.outcome_unknown and raised.value.retryable and raised.value.code == "CONNECT_ERROR"


def test_the_template_message_opens_the_mini_program(mocked):
    sent = mocked.post(TEMPLATE, json={"errcode": 0, "errmsg": "ok", "msgid": 9})
    assert client().send_template("oa-o", "OA", DATA, "wxmini", "pages/wallet/index") == "9"
    body = json.loads(sent.calls[0].request.body)
    assert body == {
        "touser": "oa-o",
        "template_id": "OA",
        "data": DATA,
        "miniprogram": {"appid": "wxmini", "pagepath": "pages/wallet/index"},
    }


def test_a_bad_miniprogram_state_is_refused_before_any_call(mocked):
    with pytest.raises(ValueError):
        client().send_subscribe("o", "T", DATA, miniprogram_state="beta")


def test_the_simulator_counts_consents_and_checks_fields(sim_http, sim_state):
    sim_state.app_secrets["wxsim"] = "s"
    sim = MessageClient("wxsim", "s", MemoryTokenStore(), f"{SIM_HOST}/_sim/api")
    with pytest.raises(WeChatConsentRefused):
        sim.send_subscribe("alice", "T", DATA)
    assert sim_state.request_subscribe("alice", ["T"]) == {"errMsg": "requestSubscribeMessage:ok", "T": "accept"}
    with pytest.raises(WeChatMessageRefused):  # thing over 20 characters: WeChat's 47003, the consent kept
        sim.send_subscribe("alice", "T", {"thing1": {"value": "字" * 21}})
    assert sim.send_subscribe("alice", "T", DATA, "pages/a/b")
    with pytest.raises(WeChatConsentRefused):
        sim.send_subscribe("alice", "T", DATA)
    with pytest.raises(WeChatMessageRefused):  # not following the OA
        sim.send_template("alice", "OA", DATA)
    assert sim.send_template("sim-oa-openid-alice", "OA", DATA, "wxsim", "pages/a/b")
    kinds = sorted(m["kind"] for m in sim_state.sent_messages.values())
    assert kinds == ["oa_template", "subscribe"]


def test_a_connection_refused_never_reached_wechat():
    """A real refused connection (nothing listens on the port): certainly not sent, safe to send again."""
    import socket

    import requests

    from wechat.mp import _request_json

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(WeChatUnavailable) as raised:
        _request_json(requests.Session(), "POST", f"http://127.0.0.1:{port}/cgi-bin/x", {}, (1, 1), {"a": 1})
    assert raised.value.code == "CONNECT_ERROR" and not raised.value.outcome_unknown and raised.value.retryable
