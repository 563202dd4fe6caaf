"""PayClient: what is signed is what is sent, responses are verified, and every
row of the error tables maps to the right typed error."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import requests
import responses
from wechat_testkit import APPID, MCHID, MERCHANT_SERIAL, NOTIFY_URL, PAY_BASE

from wechat import crypto
from wechat.errors import (
    WeChatBusinessError,
    WeChatConfigError,
    WeChatIntegrityError,
    WeChatInvalidRequest,
    WeChatNotFound,
    WeChatRateLimited,
    WeChatSignatureError,
    WeChatUnavailable,
)
from wechat.keys import VerifierKeys
from wechat.pay import PayClient

EXPIRE = datetime.now(UTC) + timedelta(hours=2)
REPORT = [{"info_type": "活动名称", "info_content": "双向返利"}, {"info_type": "奖励说明", "info_content": "消费返现"}]


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _signed_json(sim_keys, status: int, data) -> dict:
    body = json.dumps(data, separators=(",", ":")).encode()
    return {"status": status, "body": body, "headers": sim_keys.sign_headers(body), "content_type": "application/json"}


def _prepay(client, out_trade_no="ORDER0001", amount_fen=5000):
    return client.jsapi_prepay(
        out_trade_no, "奶茶两杯", amount_fen, "sim-openid-alice", NOTIFY_URL, EXPIRE, attach="packet:7"
    )


# -- error table ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc", [requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError]
)
def test_timeouts_and_connection_errors_are_unknown(mocked, pay_client, exc):
    mocked.add(responses.POST, f"{PAY_BASE}/v3/pay/transactions/jsapi", body=exc("boom"))
    with pytest.raises(WeChatUnavailable) as info:
        _prepay(pay_client)
    assert info.value.outcome_unknown and info.value.retryable and info.value.code == "NETWORK_ERROR"


@pytest.mark.parametrize(
    ("status", "code", "error", "retryable", "unknown"),
    [
        (500, "SYSTEM_ERROR", WeChatUnavailable, True, True),
        (502, None, WeChatUnavailable, True, True),
        (429, "FREQUENCY_LIMITED", WeChatRateLimited, True, False),
        (403, "NOT_ENOUGH", WeChatBusinessError, True, False),
        (403, "USER_ACCOUNT_ABNORMAL", WeChatBusinessError, False, False),
        (400, "PARAM_ERROR", WeChatBusinessError, False, False),
        (400, "INVALID_REQUEST", WeChatBusinessError, False, False),
        (401, "SIGN_ERROR", WeChatBusinessError, False, False),
        (403, "NO_AUTH", WeChatBusinessError, False, False),
        (404, "RESOURCE_NOT_EXISTS", WeChatNotFound, False, False),
        (403, "SOMETHING_NEW", WeChatUnavailable, True, True),
    ],
)
def test_refund_error_table(mocked, pay_client, sim_keys, status, code, error, retryable, unknown):
    payload = {"code": code, "message": "x"} if code else {"message": "bad gateway"}
    mocked.add(responses.POST, f"{PAY_BASE}/v3/refund/domestic/refunds", **_signed_json(sim_keys, status, payload))
    with pytest.raises(error) as info:
        pay_client.refund("ORDER0001", "REFUND0001", 100, 5000, NOTIFY_URL)
    assert type(info.value) is error
    assert info.value.retryable is retryable and info.value.outcome_unknown is unknown
    assert info.value.http_status == status
    if code:
        assert info.value.code == code


@pytest.mark.parametrize("code", [["NOT_ENOUGH"], {"a": 1}, 7, "X" * 65, "余额不足"])
def test_a_signed_error_whose_code_is_no_word_of_wechats_is_unknown_not_a_crash(mocked, pay_client, sim_keys, code):
    payload = {"code": code, "message": "x"}
    mocked.add(responses.POST, f"{PAY_BASE}/v3/refund/domestic/refunds", **_signed_json(sim_keys, 403, payload))
    with pytest.raises(WeChatUnavailable) as info:
        pay_client.refund("ORDER0001", "REFUND0001", 100, 5000, NOTIFY_URL)
    assert info.value.outcome_unknown and info.value.code == "HTTP_403"
    assert "not one WeChat sends" in info.value.message


def test_404_order_not_exist_is_typed_not_found(mocked, pay_client, sim_keys):
    url = f"{PAY_BASE}/v3/pay/transactions/out-trade-no/NOPE?mchid={MCHID}"
    mocked.add(responses.GET, url, **_signed_json(sim_keys, 404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"}))
    with pytest.raises(WeChatNotFound) as info:
        pay_client.query_order("NOPE")
    assert info.value.code == "ORDER_NOT_EXIST" and not info.value.outcome_unknown


def test_unsigned_2xx_is_forged(mocked, pay_client):
    mocked.add(responses.POST, f"{PAY_BASE}/v3/pay/transactions/jsapi", json={"prepay_id": "wx-forged"})
    with pytest.raises(WeChatSignatureError) as info:
        _prepay(pay_client)
    assert info.value.code == "FORGED_RESPONSE" and info.value.outcome_unknown


def test_2xx_signed_by_unknown_key_is_forged(mocked, pay_client):
    from wechat.sim.keys import SimulatorKeys

    other = SimulatorKeys()
    mocked.add(responses.POST, f"{PAY_BASE}/v3/pay/transactions/jsapi", **_signed_json(other, 200, {"prepay_id": "wx"}))
    with pytest.raises(WeChatSignatureError):
        _prepay(pay_client)


def test_unparseable_200_is_unknown(mocked, pay_client, sim_keys):
    body = b"<html>gateway</html>"
    mocked.add(
        responses.POST,
        f"{PAY_BASE}/v3/pay/transactions/jsapi",
        status=200,
        body=body,
        headers=sim_keys.sign_headers(body),
    )
    with pytest.raises(WeChatUnavailable) as info:
        _prepay(pay_client)
    assert info.value.code == "UNPARSEABLE_RESPONSE" and info.value.outcome_unknown


def test_unparseable_4xx_is_unknown(mocked, pay_client):
    mocked.add(responses.POST, f"{PAY_BASE}/v3/pay/transactions/jsapi", status=400, body=b"oops")
    with pytest.raises(WeChatUnavailable) as info:
        _prepay(pay_client)
    assert info.value.outcome_unknown


def test_error_answer_with_bad_signature_is_not_trusted(mocked, pay_client, sim_keys):
    spec = _signed_json(sim_keys, 400, {"code": "PARAM_ERROR", "message": "x"})
    spec["body"] = b'{"code":"INVALID_REQUEST","message":"x"}'
    mocked.add(responses.POST, f"{PAY_BASE}/v3/pay/transactions/jsapi", **spec)
    with pytest.raises(WeChatSignatureError):
        _prepay(pay_client)


def test_request_bytes_signed_equal_bytes_sent(mocked, pay_client, merchant_key, sim_keys):
    mocked.add(
        responses.POST, f"{PAY_BASE}/v3/pay/transactions/jsapi", **_signed_json(sim_keys, 200, {"prepay_id": "wx1"})
    )
    assert _prepay(pay_client) == "wx1"
    sent = mocked.calls[0].request
    items = crypto.parse_authorization(sent.headers["Authorization"])
    message = (
        f"POST\n/v3/pay/transactions/jsapi\n{items['timestamp']}\n{items['nonce_str']}\n".encode() + sent.body + b"\n"
    )
    assert crypto.verify_rsa(message, items["signature"], merchant_key.public_key())
    assert b" " not in sent.body.replace("奶茶两杯".encode(), b"") and "奶茶两杯".encode() in sent.body
    assert sent.headers["Accept"] == "application/json" and sent.headers["Content-Type"] == "application/json"
    assert sent.headers["User-Agent"] and sent.headers["Wechatpay-Serial"] == sim_keys.public_key_id
    body = json.loads(sent.body)
    assert body["time_expire"].endswith("+08:00") and body["amount"] == {"total": 5000, "currency": "CNY"}


def test_certificate_mode_sends_no_serial_on_plain_calls(mocked, pay_config, sim_keys):
    pay_config.keys = sim_keys.verifier_keys(public_key=False, certificates=True)
    mocked.add(
        responses.POST,
        f"{PAY_BASE}/v3/pay/transactions/jsapi",
        **{**_signed_json(sim_keys, 200, {"prepay_id": "wx1"}), "headers": None},
    )
    mocked.replace(
        responses.POST,
        f"{PAY_BASE}/v3/pay/transactions/jsapi",
        status=200,
        body=b'{"prepay_id":"wx1"}',
        headers=sim_keys.sign_headers(b'{"prepay_id":"wx1"}', serial=sim_keys.platform_serial),
    )
    assert _prepay(PayClient(pay_config)) == "wx1"
    assert "Wechatpay-Serial" not in mocked.calls[0].request.headers


def test_timeout_is_applied(mocked, pay_client, sim_keys):
    seen = {}

    def callback(request):
        seen["timeout"] = request.req_kwargs["timeout"]
        return 200, sim_keys.sign_headers(b'{"prepay_id":"wx1"}'), b'{"prepay_id":"wx1"}'

    mocked.add_callback(responses.POST, f"{PAY_BASE}/v3/pay/transactions/jsapi", callback=callback)
    _prepay(pay_client)
    assert seen["timeout"] == (3.05, 10)


def test_local_validation_sends_nothing(mocked, pay_client):
    with pytest.raises(WeChatInvalidRequest):
        pay_client.jsapi_prepay("O1", "d", 0, "openid", NOTIFY_URL, EXPIRE)
    with pytest.raises(WeChatInvalidRequest):
        pay_client.jsapi_prepay("O1", "d", 100, "openid", NOTIFY_URL, datetime(2030, 1, 1))
    with pytest.raises(WeChatInvalidRequest):
        pay_client.refund("O1", "R1", 200, 100, NOTIFY_URL)
    assert len(mocked.calls) == 0


# -- through the simulator -----------------------------------------------------------
def test_prepay_is_idempotent_and_conflicts_on_different_params(sim_http, pay_client):
    first = _prepay(pay_client)
    assert _prepay(pay_client) == first
    with pytest.raises(WeChatBusinessError) as info:
        _prepay(pay_client, amount_fen=5001)
    assert info.value.code == "OUT_TRADE_NO_USED" and info.value.http_status == 403


def test_pay_query_close_refund_flow(sim_http, pay_client, sim_state):
    prepay_id = _prepay(pay_client)
    params = pay_client.jsapi_pay_params(prepay_id)
    assert params["package"] == f"prepay_id={prepay_id}"
    sim_state.pay(prepay_id)
    order = pay_client.query_order("ORDER0001")
    assert (
        order["trade_state"] == "SUCCESS" and order["amount"]["payer_total"] == 5000 and order["attach"] == "packet:7"
    )
    with pytest.raises(WeChatBusinessError) as info:
        pay_client.close_order("ORDER0001")
    assert info.value.code == "ORDERPAID"
    refund = pay_client.refund("ORDER0001", "REFUND0001", 1000, 5000, NOTIFY_URL, reason="退一杯")
    assert refund["status"] == "PROCESSING" and refund["amount"]["refund"] == 1000
    assert pay_client.refund("ORDER0001", "REFUND0001", 1000, 5000, NOTIFY_URL)["refund_id"] == refund["refund_id"]
    assert pay_client.query_refund("REFUND0001")["status"] == "SUCCESS"
    with pytest.raises(WeChatNotFound):
        pay_client.query_refund("REFUND9999")


def test_close_unpaid_order_returns_204(sim_http, pay_client):
    _prepay(pay_client, "ORDER0002")
    assert pay_client.close_order("ORDER0002") is None
    assert pay_client.query_order("ORDER0002")["trade_state"] == "CLOSED"


def test_simulator_rejects_bad_merchant_signature(sim_http, pay_config):
    from wechat.sim.keys import generate_rsa_key

    pay_config.private_key = generate_rsa_key()
    with pytest.raises(WeChatBusinessError) as info:
        _prepay(PayClient(pay_config))
    assert info.value.code == "SIGN_ERROR" and info.value.http_status == 401


def test_injected_faults_map_like_wechat(sim_http, pay_client, sim_state):
    sim_state.inject_fault("/v3/refund/domestic/refunds", 403, "NOT_ENOUGH", "余额不足")
    with pytest.raises(WeChatBusinessError) as info:
        pay_client.refund("ORDER0001", "REFUND0001", 100, 5000, NOTIFY_URL)
    assert info.value.code == "NOT_ENOUGH" and info.value.retryable


def test_transfer_bill_flow(sim_http, pay_client, sim_state):
    answer = pay_client.transfer_bill("TB0001", "sim-openid-alice", 800, "返现到账", REPORT, NOTIFY_URL)
    assert answer["state"] == "WAIT_USER_CONFIRM" and answer["package_info"]
    assert pay_client.transfer_bill("TB0001", "sim-openid-alice", 800, "返现到账", REPORT, NOTIFY_URL) == answer
    sim_state.confirm_transfer(answer["package_info"])
    assert pay_client.query_transfer_bill("TB0001")["state"] == "SUCCESS"
    second = pay_client.transfer_bill("TB0002", "sim-openid-alice", 300, "返现到账", REPORT, NOTIFY_URL)
    assert pay_client.cancel_transfer_bill("TB0002")["state"] == "CANCELING"
    assert pay_client.query_transfer_bill("TB0002")["state"] == "CANCELLED" and second["transfer_bill_no"]


def test_transfer_user_name_is_encrypted_with_serial_header(sim_http, pay_client, sim_state, sim_keys):
    pay_client.transfer_bill("TB0003", "sim-openid-bob", 250000, "大额返现", REPORT, NOTIFY_URL, user_name="张三")
    sent = [c.request for c in sim_http.calls if c.request.url.endswith("/transfer-bills")][0]
    assert sent.headers["Wechatpay-Serial"] == sim_keys.public_key_id
    assert "张三".encode() not in sent.body and sim_state.transfers["TB0003"]["user_name"] == "张三"


def test_transfer_user_name_in_certificate_mode_uses_platform_serial(sim_http, pay_config, sim_state, sim_keys):
    pay_config.keys = sim_keys.verifier_keys(public_key=False, certificates=True)
    PayClient(pay_config).transfer_bill(
        "TB0004", "sim-openid-bob", 250000, "大额返现", REPORT, NOTIFY_URL, user_name="李四"
    )
    sent = [c.request for c in sim_http.calls if c.request.url.endswith("/transfer-bills")][0]
    assert (
        sent.headers["Wechatpay-Serial"] == sim_keys.platform_serial
        and sim_state.transfers["TB0004"]["user_name"] == "李四"
    )


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"amount_fen": 200000}, "USER_NAME_REQUIRED"),
        ({"scene_report_infos": REPORT[:1]}, "BAD_REPORT_INFOS"),
        ({"scene_report_infos": REPORT + REPORT[:1]}, "BAD_REPORT_INFOS"),
        ({"scene_report_infos": [{"info_type": "活动名称", "info_content": "x" * 33}, REPORT[1]]}, "BAD_REPORT_INFOS"),
        ({"user_recv_perception": "工资"}, "INVALID_ARGUMENT"),
        ({"out_bill_no": "bad-no"}, "INVALID_ARGUMENT"),
    ],
)
def test_transfer_bill_local_refusals(mocked, pay_client, kwargs, code):
    args = {
        "out_bill_no": "TB1",
        "openid": "o",
        "amount_fen": 100,
        "remark": "返现",
        "scene_report_infos": REPORT,
        "notify_url": NOTIFY_URL,
    }
    with pytest.raises(WeChatInvalidRequest) as info:
        pay_client.transfer_bill(**{**args, **kwargs})
    assert info.value.code == code and len(mocked.calls) == 0


def test_transfer_business_errors_are_outcome_unknown(mocked, pay_client, sim_keys):
    mocked.add(
        responses.POST,
        f"{PAY_BASE}/v3/fund-app/mch-transfer/transfer-bills",
        **_signed_json(sim_keys, 403, {"code": "NOT_ENOUGH", "message": "余额不足"}),
    )
    with pytest.raises(WeChatBusinessError) as info:
        pay_client.transfer_bill("TB0009", "o", 100, "返现", REPORT, NOTIFY_URL)
    assert info.value.outcome_unknown and info.value.retryable


def test_favor_coupon_is_idempotent(sim_http, pay_client):
    first = pay_client.send_favor_coupon("sim-openid-alice", "9865000", "REQ0001", MCHID)
    assert first["coupon_id"]
    assert pay_client.send_favor_coupon("sim-openid-alice", "9865000", "REQ0001", MCHID) == first


# -- bills ---------------------------------------------------------------------------
@pytest.mark.parametrize("tar_type", [None, "GZIP"])
def test_trade_bill_download_checks_hash(sim_http, pay_client, sim_state, tar_type):
    sim_state.pay(_prepay(pay_client))
    today = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m-%d")
    applied = pay_client.trade_bill(today, tar_type=tar_type)
    content = pay_client.download_bill(applied["download_url"], applied["hash_value"], applied["hash_type"])
    from wechat.bills import parse_bill_csv

    rows, summary = parse_bill_csv(content)
    assert rows[0]["商户订单号"] == "ORDER0001" and rows[0]["订单金额"] == "50.00" and summary["总交易单数"] == "1"
    download = [c.request for c in sim_http.calls if "billdownload" in c.request.url][0]
    assert crypto.parse_authorization(download.headers["Authorization"])["mchid"] == MCHID


def test_fundflow_bill(sim_http, pay_client, sim_state):
    sim_state.pay(_prepay(pay_client))
    today = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m-%d")
    applied = pay_client.fundflow_bill(today)
    from wechat.bills import parse_bill_csv

    content = pay_client.download_bill(applied["download_url"], applied["hash_value"], applied["hash_type"])
    rows, summary = parse_bill_csv(content)
    assert rows[0]["收支类型"] == "收入" and summary["收入笔数"] == "1"


def test_bill_hash_mismatch_is_refused(mocked, pay_client):
    content = "交易时间,商户订单号\r\n`2024-01-01 00:00:00,`O1\r\n".encode()
    url = f"{PAY_BASE}/v3/billdownload/file?token=t1"
    mocked.add(responses.GET, url, body=gzip.compress(content), status=200)
    assert pay_client.download_bill(url, hashlib.sha1(content).hexdigest().upper(), "SHA1") == content  # noqa: S324
    with pytest.raises(WeChatIntegrityError) as info:
        pay_client.download_bill(url, hashlib.sha1(content + b"x").hexdigest(), "SHA1")  # noqa: S324
    assert info.value.code == "HASH_MISMATCH"


def test_bill_hash_type_sha256_is_checked_as_sha256(mocked, pay_client):
    content = "交易时间,商户订单号\r\n`2024-01-01 00:00:00,`O1\r\n".encode()
    url = f"{PAY_BASE}/v3/billdownload/file?token=t1"
    mocked.add(responses.GET, url, body=content, status=200)
    assert pay_client.download_bill(url, hashlib.sha256(content).hexdigest(), "SHA256") == content
    with pytest.raises(WeChatIntegrityError):  # a SHA-1 announced as SHA256 does not pass
        pay_client.download_bill(url, hashlib.sha1(content).hexdigest(), "SHA256")  # noqa: S324


@pytest.mark.parametrize("hash_type", [None, "", "MD5", "sha1 ", "CRC32"])
def test_unexpected_bill_hash_type_is_refused_before_downloading(mocked, pay_client, hash_type):
    url = f"{PAY_BASE}/v3/billdownload/file?token=t1"
    with pytest.raises(WeChatIntegrityError) as info:
        pay_client.download_bill(url, "00", hash_type)
    assert info.value.code == "UNEXPECTED_HASH_TYPE"
    assert len(mocked.calls) == 0


def test_bill_download_refuses_foreign_host(mocked, pay_client):
    with pytest.raises(WeChatConfigError):
        pay_client.download_bill("https://evil.test/v3/billdownload/file?token=t", "00", "SHA1")
    assert len(mocked.calls) == 0


# -- platform certificates -----------------------------------------------------------
def test_fetch_platform_certificates_from_simulator(sim_http, pay_config, sim_keys, sim_state):
    sim_state.key_mode = "certificate"
    pay_config.keys = VerifierKeys()
    client = PayClient(pay_config)
    client.attach_certificate_refresher()
    certs = client.fetch_platform_certificates()
    assert [crypto.certificate_serial(c) for c in certs] == [sim_keys.platform_serial]
    # with only a refresher, the first signed answer triggers the download and verifies
    assert _prepay(client).startswith("wx")
    assert pay_config.keys.certificate_serials == [sim_keys.platform_serial]


def test_certificate_download_with_wrong_apiv3_key_fails(sim_http, pay_config):
    pay_config.apiv3_key = "Y" * 32
    with pytest.raises(WeChatSignatureError):
        PayClient(pay_config).fetch_platform_certificates()


def test_paysign_params_verify_with_merchant_key(pay_client, merchant_key):
    p = pay_client.jsapi_pay_params("wx123")
    message = f"{APPID}\n{p['timeStamp']}\n{p['nonceStr']}\n{p['package']}\n"
    assert crypto.verify_rsa(message, p["paySign"], merchant_key.public_key()) and MERCHANT_SERIAL


def test_a_bill_archive_is_unzipped_within_a_bound_and_read_member_by_member(monkeypatch):
    """A few kilobytes that unzip to gigabytes would have taken the host's memory before the hash was checked."""
    from wechat import bills
    from wechat.errors import WeChatUnavailable

    bomb = gzip.compress(b"0" * 10_000_000)  # ~10 KB on the wire
    assert len(bomb) < 20_000
    with pytest.raises(WeChatUnavailable) as info:
        bills.decompress_bill(bomb, most=1_000_000)
    assert info.value.code == "BILL_TOO_LARGE"
    monkeypatch.setattr(bills, "MAX_BILL_BYTES", 1_000_000)  # the default bound applies the same
    with pytest.raises(WeChatUnavailable, match="more than 1000000 bytes"):
        bills.decompress_bill(bomb)
    # within the bound: every member (gzip allows several) and zero padding after the last; nothing else after
    two = gzip.compress(b"first\r\n") + gzip.compress(b"second\r\n")
    assert bills.decompress_bill(two + b"\x00" * 8) == b"first\r\nsecond\r\n"
    assert bills.decompress_bill(b"plain text bill") == b"plain text bill"
    for broken in (two[:-3], two + b"junk", gzip.compress(b"x")[:12]):
        with pytest.raises(WeChatUnavailable) as info:
            bills.decompress_bill(broken)
        assert info.value.code == "UNPARSEABLE_RESPONSE"
