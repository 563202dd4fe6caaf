"""wechatpayv3, an independent client, talks to the simulator (routed in-process by
``responses``): its request signatures verify there and the simulator's signed
answers verify in wechatpayv3, in public-key and in certificate mode."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
import responses
from conftest import route_to_app
from wechat_testkit import APPID, MCHID, MERCHANT_SERIAL, NOTIFY_URL
from wechatpayv3 import WeChatPay, WeChatPayType

from wechat import crypto
from wechat.notifications import verify_and_decrypt

REPORT = [{"info_type": "活动名称", "info_content": "双向返利"}, {"info_type": "奖励说明", "info_content": "消费返现"}]


@pytest.fixture
def wpv3_http(sim_app):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        route_to_app(rsps, sim_app, "https://api.mch.weixin.qq.com", "/_sim/pay")
        yield rsps


@pytest.fixture
def wpv3(merchant_key, apiv3_key, sim_keys):
    return WeChatPay(
        wechatpay_type=WeChatPayType.MINIPROG,
        mchid=MCHID,
        private_key=crypto.private_key_pem(merchant_key),
        cert_serial_no=MERCHANT_SERIAL,
        appid=APPID,
        apiv3_key=apiv3_key,
        notify_url=NOTIFY_URL,
        public_key=sim_keys.public_key_pem,
        public_key_id=sim_keys.public_key_id,
        timeout=(3, 5),
    )


def _expire() -> str:
    return (
        (datetime.now(UTC) + timedelta(hours=1)).astimezone(timezone(timedelta(hours=8))).isoformat(timespec="seconds")
    )


def test_wpv3_order_query_refund_against_simulator(wpv3_http, wpv3, sim_state):
    # given an order created by wechatpayv3 (it signs json.dumps with ASCII escapes; the simulator verifies raw bytes)
    code, text = wpv3.pay(
        description="奶茶",
        out_trade_no="WPV3ORDER1",
        amount={"total": 990, "currency": "CNY"},
        payer={"openid": "sim-openid-carol"},
        time_expire=_expire(),
    )
    assert code == 200, text
    prepay_id = json.loads(text)["prepay_id"]
    # when the user pays and wechatpayv3 queries and refunds
    sim_state.pay(prepay_id)
    code, text = wpv3.query(out_trade_no="WPV3ORDER1")
    # then each signed simulator answer verified inside wechatpayv3 (it raises otherwise)
    assert code == 200 and json.loads(text)["trade_state"] == "SUCCESS"
    code, text = wpv3.refund(
        out_refund_no="WPV3REFUND1", amount={"refund": 990, "total": 990, "currency": "CNY"}, out_trade_no="WPV3ORDER1"
    )
    assert code == 200 and json.loads(text)["status"] == "PROCESSING"
    code, text = wpv3.query(out_trade_no="NOPE")
    assert code == 404 and json.loads(text)["code"] == "ORDER_NOT_EXIST"


def test_wpv3_transfer_with_encrypted_name_and_coupon(wpv3_http, wpv3, sim_state):
    code, text = wpv3.mch_transfer_bills(
        out_bill_no="WPV3TB1",
        transfer_scene_id="1000",
        openid="sim-openid-carol",
        transfer_amount=200000,
        transfer_remark="返现",
        user_name="王五",
        user_recv_perception="现金奖励",
        transfer_scene_report_infos=REPORT,
    )
    assert code == 200, text
    assert json.loads(text)["state"] == "WAIT_USER_CONFIRM" and sim_state.transfers["WPV3TB1"]["user_name"] == "王五"
    code, text = wpv3.marketing_favor_stock_send(
        stock_id="9865000", openid="sim-openid-carol", out_request_no="WPV3REQ1", stock_creator_mchid=MCHID
    )
    assert code == 200 and json.loads(text)["coupon_id"]


def test_wpv3_bill_download(wpv3_http, wpv3, sim_state):
    sim_state.pay_base_url = "https://api.mch.weixin.qq.com"
    code, text = wpv3.pay(
        description="d", out_trade_no="WPV3ORDER2", amount={"total": 100}, payer={"openid": "sim-openid-x"}
    )
    sim_state.pay(json.loads(text)["prepay_id"])
    today = datetime.now(timezone(timedelta(hours=8))).strftime("%Y-%m-%d")
    code, text = wpv3.trade_bill(bill_date=today, tar_type=None)
    assert code == 200
    url = json.loads(text)["download_url"]
    assert url.startswith("https://api.mch.weixin.qq.com/v3/billdownload/file?token=")
    code, content = wpv3.download_bill(url)
    assert code == 200 and b"WPV3ORDER2" in content


def test_wpv3_in_certificate_mode_downloads_simulator_certificates(
    wpv3_http, merchant_key, apiv3_key, sim_state, sim_keys
):
    sim_state.key_mode = "certificate"
    # wechatpayv3 downloads /v3/certificates at init and decrypts them with the APIv3 key
    client = WeChatPay(
        wechatpay_type=WeChatPayType.MINIPROG,
        mchid=MCHID,
        private_key=crypto.private_key_pem(merchant_key),
        cert_serial_no=MERCHANT_SERIAL,
        appid=APPID,
        apiv3_key=apiv3_key,
        notify_url=NOTIFY_URL,
    )
    assert [crypto.certificate_serial(c) for c in client._core._certificates] == [sim_keys.platform_serial]
    code, text = client.pay(
        description="d", out_trade_no="WPV3ORDER3", amount={"total": 100}, payer={"openid": "sim-openid-x"}
    )
    assert code == 200
    headers, body = sim_state.build_notification("TRANSACTION.SUCCESS", {"out_trade_no": "WPV3ORDER3"}, "transaction")
    assert client.callback(headers, body)["resource"] == {"out_trade_no": "WPV3ORDER3"}


def test_simulator_notification_for_wpv3_order_verifies_with_both(wpv3_http, wpv3, sim_state, verifier_keys, apiv3_key):
    wpv3_http.add(responses.POST, NOTIFY_URL, status=204)
    code, text = wpv3.pay(
        description="d", out_trade_no="WPV3ORDER4", amount={"total": 300}, payer={"openid": "sim-openid-y"}
    )
    sim_state.pay(json.loads(text)["prepay_id"])
    assert sim_state.dispatcher.wait_idle(5)
    call = [c.request for c in wpv3_http.calls if c.request.url == NOTIFY_URL][0]
    ours = verify_and_decrypt(call.headers, call.body, verifier_keys, apiv3_key)
    assert wpv3.callback(dict(call.headers), call.body)["resource"] == ours.resource
    assert ours.resource["amount"]["total"] == 300
