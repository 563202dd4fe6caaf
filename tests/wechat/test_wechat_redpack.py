"""v2 cash red packets: MD5 sign, defusedxml-only parsing, err_code → action."""

from __future__ import annotations

import pytest
import requests
import responses
from wechat_testkit import MCHID, PAY_BASE

from wechat.errors import WeChatConfigError, WeChatInvalidRequest, WeChatSignatureError, WeChatUnavailable
from wechat.redpack import ERR_CODE_ACTIONS, RedpackAction, RedpackClient
from wechat.v2sign import parse_xml, to_xml, v2_sign

OA_APPID = "wxsimofficialacct1"
SEND_URL = f"{PAY_BASE}/mmpaymkttransfers/sendredpack"
QUERY_URL = f"{PAY_BASE}/mmpaymkttransfers/gethbinfo"


@pytest.fixture
def client(api_v2_key):
    return RedpackClient(MCHID, OA_APPID, api_v2_key, None, None, api_base=PAY_BASE)


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _send(client, billno="10000098201411111234567890", amount=888, scene_id=None):
    return client.send(
        billno, "sim-oa-openid-alice", amount, "双向返利", "新春活动", "恭喜发财", "返利", "10.0.0.1", scene_id
    )


def _answer(api_key, **fields) -> bytes:
    fields = {"return_code": "SUCCESS", "return_msg": "", **fields}
    return to_xml({**fields, "sign": v2_sign(fields, api_key)}).encode()


def test_v2_sign_matches_wechatpy(api_v2_key):
    from wechatpy.pay.utils import calculate_signature

    params = {"mch_billno": "B1", "total_amount": 100, "empty": "", "none": None, "wishing": "恭喜"}
    assert v2_sign(params, api_v2_key) == calculate_signature({k: v for k, v in params.items() if v}, api_v2_key)


def test_https_base_requires_client_certificate(api_v2_key):
    with pytest.raises(WeChatConfigError):
        RedpackClient(MCHID, OA_APPID, api_v2_key, None, None)


def test_send_uses_mutual_tls_and_signs(mocked, api_v2_key, tmp_path):
    cert, key = tmp_path / "apiclient_cert.pem", tmp_path / "apiclient_key.pem"
    client = RedpackClient(MCHID, OA_APPID, api_v2_key, str(cert), str(key))
    seen = {}

    def callback(request):
        seen.update(cert=request.req_kwargs["cert"], fields=parse_xml(request.body))
        return 200, {}, _answer(api_v2_key, result_code="SUCCESS", mch_billno="B1")

    mocked.add_callback(
        responses.POST, "https://api.mch.weixin.qq.com/mmpaymkttransfers/sendredpack", callback=callback
    )
    result = _send(client)
    assert result.action is RedpackAction.SUCCEEDED
    assert seen["cert"] == (str(cert), str(key))
    assert seen["fields"]["sign"] == v2_sign(seen["fields"], api_v2_key) and seen["fields"]["total_num"] == "1"


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b"<xml><return_code>&xxe;</return_code></xml>",
        b'<!DOCTYPE xml [<!ENTITY a "SUCCESS">]>'
        b"<xml><return_code>&a;</return_code><result_code>&a;</result_code></xml>",
        b"<xml><return_code>SUCCESS</return_code>",
        b"not xml at all",
        b"<xml><result_code>SUCCESS</result_code></xml>",
    ],
)
def test_unsafe_or_unparseable_answers_are_unknown(mocked, client, body):
    mocked.add(responses.POST, SEND_URL, body=body)
    with pytest.raises(WeChatUnavailable) as info:
        _send(client)
    assert info.value.outcome_unknown and info.value.retryable


@pytest.mark.parametrize("exc", [requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError])
def test_transport_errors_are_unknown(mocked, client, exc):
    mocked.add(responses.POST, SEND_URL, body=exc("x"))
    with pytest.raises(WeChatUnavailable) as info:
        _send(client)
    assert info.value.outcome_unknown


def test_http_5xx_is_unknown(mocked, client):
    mocked.add(responses.POST, SEND_URL, status=503, body=b"busy")
    with pytest.raises(WeChatUnavailable):
        _send(client)


def test_bad_response_sign_is_refused(mocked, client, api_v2_key):
    body = _answer(api_v2_key, result_code="SUCCESS").replace(
        b"SUCCESS</result_code>", b"SUCCESS</result_code><x>1</x>"
    )
    mocked.add(responses.POST, SEND_URL, body=body)
    with pytest.raises(WeChatSignatureError):
        _send(client)


@pytest.mark.parametrize(
    ("err_code", "action"), sorted(ERR_CODE_ACTIONS.items()) + [("BRAND_NEW_CODE", RedpackAction.UNKNOWN)]
)
def test_each_err_code_maps_to_its_action(mocked, client, api_v2_key, err_code, action):
    mocked.add(
        responses.POST, SEND_URL, body=_answer(api_v2_key, result_code="FAIL", err_code=err_code, err_code_des="x")
    )
    result = _send(client)
    assert result.action is action and result.err_code == err_code and result.result_code == "FAIL"


def test_expected_actions_of_the_reference_table():
    assert ERR_CODE_ACTIONS["SYSTEMERROR"] is RedpackAction.RETRY_SAME_NUMBER
    assert ERR_CODE_ACTIONS["PROCESSING"] is RedpackAction.QUERY_LATER
    assert ERR_CODE_ACTIONS["NOTENOUGH"] is RedpackAction.PAUSE_RAIL_NOTENOUGH
    assert ERR_CODE_ACTIONS["SEND_FAILED"] is RedpackAction.FAILED_NEW_NUMBER_OK
    assert ERR_CODE_ACTIONS["TIME_LIMITED"] is RedpackAction.DEFER_UNTIL_8AM
    assert ERR_CODE_ACTIONS["NO_AUTH"] is RedpackAction.GIVE_UP_FOR_USER
    assert {
        ERR_CODE_ACTIONS[c]
        for c in ("OPENID_ERROR", "ILLEGAL_APPID", "PARAM_ERROR", "XML_ERROR", "SIGN_ERROR", "CA_ERROR")
    } == {RedpackAction.CONFIG_ERROR}


def test_return_code_fail_without_err_code_is_unknown(mocked, client):
    mocked.add(
        responses.POST, SEND_URL, body=b"<xml><return_code>FAIL</return_code><return_msg>sign error</return_msg></xml>"
    )
    assert _send(client).action is RedpackAction.UNKNOWN


@pytest.mark.parametrize("amount", [99, 20001])
def test_scene_id_required_outside_1_to_200_yuan(mocked, client, amount):
    with pytest.raises(WeChatInvalidRequest):
        _send(client, amount=amount)
    assert len(mocked.calls) == 0


def test_send_and_query_through_simulator(sim_http, client, sim_state):
    result = _send(client, "B0001", amount=50, scene_id="PRODUCT_1")
    assert result.action is RedpackAction.SUCCEEDED and result.fields["send_listid"]
    assert _send(client, "B0001", amount=50, scene_id="PRODUCT_1").action is RedpackAction.SUCCEEDED
    assert _send(client, "B0001", amount=51, scene_id="PRODUCT_1").err_code == "FATAL_ERROR"
    query = client.query("B0001")
    assert query.status == "SENT" and query.action is RedpackAction.SUCCEEDED
    sim_state.receive_redpack("B0001")
    query = client.query("B0001")
    assert query.status == "RECEIVED" and query.fields["hblist"][0]["amount"] == "50"
    assert client.query("B9999").action is RedpackAction.QUERY_LATER


def test_simulator_faults_and_wrong_key(sim_http, client, sim_state, api_v2_key):
    sim_state.inject_fault("/mmpaymkttransfers/sendredpack", 200, "NOTENOUGH", "余额不足")
    assert _send(client, "B0002").action is RedpackAction.PAUSE_RAIL_NOTENOUGH
    wrong = RedpackClient(MCHID, OA_APPID, "W" * 32, None, None, api_base=PAY_BASE)
    with pytest.raises(WeChatSignatureError):
        _send(wrong, "B0003")
    assert query_url_is_used(sim_http)


def query_url_is_used(rsps) -> bool:
    return all(c.request.url in (SEND_URL, QUERY_URL) for c in rsps.calls)
