"""Service-provider mode on the wire: every partner request our one Pay v3 client sends, checked against a fake
WeChat (``responses``) for its URL, query, JSON body keys and an Authorization signature that verifies with the
merchant's public key, and cross-checked with ``wechatpayv3``'s ``partner_mode`` where it has the endpoint."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

import pytest
import responses
from wechatpayv3 import WeChatPay, WeChatPayType

from wechat import crypto
from wechat.errors import WeChatInvalidRequest
from wechat.partner import SubMerchant, valid_sub_appid, valid_sub_mchid
from wechat.pay import PayClient, PayConfig
from wechat.sim.keys import SimulatorKeys, generate_rsa_key
from wechat.transactions import MalformedResource, RefundNotice, Transaction

BASE = "https://api.mch.weixin.qq.com"
SP_MCHID, SP_APPID = "1900000001", "wx1234567890abcdef"
SUB = SubMerchant("1900000109")
SUB_WITH_APP = SubMerchant("1900000109", "wxabcdef0123456789")
SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
APIV3 = "0123456789abcdef0123456789abcdef"
NOTIFY = "https://rebate.example.com/wechat/pay/notify"
EXPIRE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def merchant_key():
    return generate_rsa_key()


@pytest.fixture(scope="module")
def wechat_keys():
    return SimulatorKeys()


@pytest.fixture
def client(merchant_key, wechat_keys):
    config = PayConfig(
        mchid=SP_MCHID,
        appid=SP_APPID,
        private_key=merchant_key,
        cert_serial=SERIAL,
        apiv3_key=APIV3,
        keys=wechat_keys.verifier_keys(public_key=True),
        api_base=BASE,
    )
    return PayClient(config)


@pytest.fixture
def wpv3(merchant_key, wechat_keys):
    return WeChatPay(
        wechatpay_type=WeChatPayType.MINIPROG,
        mchid=SP_MCHID,
        private_key=crypto.private_key_pem(merchant_key),
        cert_serial_no=SERIAL,
        appid=SP_APPID,
        apiv3_key=APIV3,
        notify_url=NOTIFY,
        public_key=wechat_keys.public_key_pem,
        public_key_id=wechat_keys.public_key_id,
        partner_mode=True,
        timeout=(3, 5),
    )


@pytest.fixture
def wechat(wechat_keys):
    """A fake WeChat that answers every call with a signed ``answer`` and keeps what it was sent."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:

        def answer(request):
            body = json.dumps(rsps.answer).encode()
            return 200, wechat_keys.sign_headers(body), body

        rsps.answer = {}
        for method in (responses.GET, responses.POST):
            rsps.add_callback(method, re.compile(BASE + "/v3/.*"), callback=answer)
        yield rsps


def sent(rsps, n: int = -1):
    """(method, canonical path+query, parsed body or None, headers) of the n-th request."""
    request = rsps.calls[n].request
    parts = urlsplit(request.url)
    canonical = parts.path + ("?" + parts.query if parts.query else "")
    raw = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
    return request.method, canonical, (json.loads(raw) if raw else None), request.headers, raw


def assert_signed_by(merchant_key, method: str, canonical: str, raw: str, headers) -> None:
    auth = crypto.parse_authorization(headers["Authorization"])
    assert auth["mchid"] == SP_MCHID and auth["serial_no"] == SERIAL
    message = crypto.request_message(method, canonical, int(auth["timestamp"]), auth["nonce_str"], raw)
    assert crypto.verify_rsa(message, auth["signature"], merchant_key.public_key())


def query_of(canonical: str) -> tuple[str, dict]:
    path, _, query = canonical.partition("?")
    return path, dict(parse_qsl(query))


# -- our requests, exactly ----------------------------------------------------------------


def test_partner_prepay_shape_and_signature(client, wechat, merchant_key):
    # given
    wechat.answer = {"prepay_id": "wx201410272009395522657a690389285100"}
    # when
    prepay_id = client.jsapi_prepay(
        "P20261201A", "红包返利订单 P20261201A", 8_000, "sp-openid-1", NOTIFY, EXPIRE, sub=SUB, profit_sharing=True
    )
    # then
    method, canonical, body, headers, raw = sent(wechat)
    assert prepay_id == "wx201410272009395522657a690389285100"
    assert (method, canonical) == ("POST", "/v3/pay/partner/transactions/jsapi")
    assert body == {
        "sp_appid": SP_APPID,
        "sp_mchid": SP_MCHID,
        "sub_mchid": "1900000109",
        "description": "红包返利订单 P20261201A",
        "out_trade_no": "P20261201A",
        "time_expire": "2026-12-01T20:00:00+08:00",
        "notify_url": NOTIFY,
        "amount": {"total": 8_000, "currency": "CNY"},
        "payer": {"sp_openid": "sp-openid-1"},
        "settle_info": {"profit_sharing": True},
    }
    assert "profit_sharing" not in body and "appid" not in body and "mchid" not in body
    assert headers["Content-Type"] == "application/json"
    assert_signed_by(merchant_key, method, canonical, raw, headers)


def test_partner_prepay_with_the_merchants_own_app_pays_as_sub_openid(client, wechat):
    wechat.answer = {"prepay_id": "wx2"}
    client.jsapi_prepay("P2", "d", 100, "sub-openid-1", NOTIFY, EXPIRE, sub=SUB_WITH_APP, sub_openid=True)
    _, _, body, _, _ = sent(wechat)
    assert body["sub_appid"] == "wxabcdef0123456789" and body["payer"] == {"sub_openid": "sub-openid-1"}
    assert "settle_info" not in body  # no merchant-funded cash rebate: nothing frozen


def test_pay_params_are_signed_for_the_calling_app(client, merchant_key):
    params = client.jsapi_pay_params("wx2", "wxabcdef0123456789")
    message = f"wxabcdef0123456789\n{params['timeStamp']}\n{params['nonceStr']}\nprepay_id=wx2\n"
    assert crypto.verify_rsa(message, params["paySign"], merchant_key.public_key())
    ours = client.jsapi_pay_params("wx2")
    assert crypto.verify_rsa(
        f"{SP_APPID}\n{ours['timeStamp']}\n{ours['nonceStr']}\nprepay_id=wx2\n",
        ours["paySign"],
        merchant_key.public_key(),
    )


@pytest.mark.parametrize(
    ("sub", "sub_openid", "code"),
    [(SUB, True, "SUB_OPENID_WITHOUT_SUB_APPID"), (None, True, "SUB_OPENID_WITHOUT_SUB")],
)
def test_a_sub_openid_payer_without_sub_appid_is_refused_before_sending(client, wechat, sub, sub_openid, code):
    with pytest.raises(WeChatInvalidRequest) as info:
        client.jsapi_prepay("P3", "d", 100, "o", NOTIFY, EXPIRE, sub=sub, sub_openid=sub_openid)
    assert info.value.code == code and len(wechat.calls) == 0


@pytest.mark.parametrize("bad", ["1234567", "1234567890123", "19000001O9", "", " 1900000109"])
def test_sub_merchant_numbers_are_digits_8_to_12(bad):
    assert not valid_sub_mchid(bad)
    with pytest.raises(WeChatInvalidRequest):
        SubMerchant(bad)


def test_sub_appid_is_wx_and_16_hex():
    assert valid_sub_appid("wxfdc955f7104ad557") and valid_sub_mchid("19000000001")
    for bad in ("wxd678efh567hg6999", "wx1234", "WX1234567890abcdef", "wx1234567890ABCDEF"):
        assert not valid_sub_appid(bad)


def test_partner_query_close_refund_and_bill_shapes(client, wechat, merchant_key):
    wechat.answer = {"out_refund_no": "R1", "status": "PROCESSING"}
    client.query_order("P4", sub=SUB)
    client.close_order("P4", sub=SUB)
    client.refund("P4", "R1", 300, 8_000, NOTIFY, "damaged", sub=SUB)
    client.query_refund("R1", sub=SUB)
    client.trade_bill("2026-11-30", "ALL", "GZIP", sub=SUB)
    calls = [sent(wechat, n) for n in range(5)]
    for method, canonical, _, headers, raw in calls:
        assert_signed_by(merchant_key, method, canonical, raw, headers)
    (m0, q0, b0, *_), (m1, q1, b1, *_), (m2, q2, b2, *_), (m3, q3, b3, *_), (m4, q4, b4, *_) = calls
    assert (m0, b0) == ("GET", None)
    assert query_of(q0) == (
        "/v3/pay/partner/transactions/out-trade-no/P4",
        {"sp_mchid": SP_MCHID, "sub_mchid": "1900000109"},
    )
    assert (m1, q1, b1) == (
        "POST",
        "/v3/pay/partner/transactions/out-trade-no/P4/close",
        {"sp_mchid": SP_MCHID, "sub_mchid": "1900000109"},
    )
    assert (m2, q2) == ("POST", "/v3/refund/domestic/refunds")
    assert b2 == {
        "sub_mchid": "1900000109",
        "out_trade_no": "P4",
        "out_refund_no": "R1",
        "notify_url": NOTIFY,
        "amount": {"refund": 300, "total": 8_000, "currency": "CNY"},
        "reason": "damaged",
    }
    assert (m3, q3, b3) == ("GET", "/v3/refund/domestic/refunds/R1?sub_mchid=1900000109", None)
    assert (m4, b4) == ("GET", None)
    assert query_of(q4) == (
        "/v3/bill/tradebill",
        {"bill_date": "2026-11-30", "bill_type": "ALL", "sub_mchid": "1900000109", "tar_type": "GZIP"},
    )


def test_direct_calls_keep_the_direct_shape(client, wechat):
    wechat.answer = {"prepay_id": "wx9"}
    client.jsapi_prepay("D1", "d", 100, "openid-1", NOTIFY, EXPIRE)
    client.query_order("D1")
    client.trade_bill("2026-11-30")
    (_, q0, b0, *_), (_, q1, *_), (_, q2, *_) = (sent(wechat, n) for n in range(3))
    assert q0 == "/v3/pay/transactions/jsapi" and b0["appid"] == SP_APPID and b0["payer"] == {"openid": "openid-1"}
    assert not {"sp_appid", "sub_mchid", "settle_info"} & b0.keys()
    assert q1 == f"/v3/pay/transactions/out-trade-no/D1?mchid={SP_MCHID}"
    assert "sub_mchid" not in q2


# -- the same requests as wechatpayv3's partner mode sends them ------------------------------


def _expire() -> str:
    return EXPIRE.astimezone(timezone(timedelta(hours=8))).isoformat(timespec="seconds")


def test_prepay_matches_wechatpayv3_partner_mode(client, wpv3, wechat, merchant_key):
    # given: both clients ask for the same partner order
    wechat.answer = {"prepay_id": "wx1"}
    code, _ = wpv3.pay(
        description="d",
        out_trade_no="X1",
        amount={"total": 500, "currency": "CNY"},
        payer={"sp_openid": "o1"},
        time_expire=_expire(),
        settle_info={"profit_sharing": True},
        sub_mchid="1900000109",
        pay_type=WeChatPayType.MINIPROG,
    )
    assert code == 200
    client.jsapi_prepay("X1", "d", 500, "o1", NOTIFY, EXPIRE, sub=SUB, profit_sharing=True)
    # then: same endpoint, same body (as objects: wechatpayv3 escapes non-ASCII), both signatures verify
    (m0, q0, b0, h0, r0), (m1, q1, b1, h1, r1) = sent(wechat, 0), sent(wechat, 1)
    assert (m0, q0) == (m1, q1) == ("POST", "/v3/pay/partner/transactions/jsapi")
    assert b0 == b1
    assert_signed_by(merchant_key, m0, q0, r0, h0)
    assert_signed_by(merchant_key, m1, q1, r1, h1)


def test_query_close_refund_and_bill_match_wechatpayv3_partner_mode(client, wpv3, wechat):
    wechat.answer = {"status": "PROCESSING"}
    amount = {"refund": 300, "total": 500, "currency": "CNY"}
    pairs = [
        (lambda: wpv3.query(out_trade_no="X1", sub_mchid="1900000109"), lambda: client.query_order("X1", sub=SUB)),
        (lambda: wpv3.close(out_trade_no="X1", sub_mchid="1900000109"), lambda: client.close_order("X1", sub=SUB)),
        (
            lambda: wpv3.refund(out_refund_no="R1", amount=amount, out_trade_no="X1", sub_mchid="1900000109"),
            lambda: client.refund("X1", "R1", 300, 500, NOTIFY, sub=SUB),
        ),
        (lambda: wpv3.query_refund("R1", sub_mchid="1900000109"), lambda: client.query_refund("R1", sub=SUB)),
        (
            lambda: wpv3.trade_bill("2026-11-30", sub_mchid="1900000109"),
            lambda: client.trade_bill("2026-11-30", "ALL", "GZIP", sub=SUB),
        ),
    ]
    for theirs, ours in pairs:
        before = len(wechat.calls)
        code, text = theirs()
        assert code in (200, 204), text  # wechatpayv3 verified our fake WeChat's signed answer
        ours()
        (m0, q0, b0, *_), (m1, q1, b1, *_) = sent(wechat, before), sent(wechat, before + 1)
        assert m0 == m1
        assert query_of(q0) == query_of(q1)  # same path and parameters (the order of the query may differ)
        assert b0 == b1


# -- partner resources parsed once at the edge ---------------------------------------------

PARTNER_TX = {
    "sp_appid": SP_APPID,
    "sp_mchid": SP_MCHID,
    "sub_appid": "wxabcdef0123456789",
    "sub_mchid": "1900000109",
    "out_trade_no": "P1",
    "transaction_id": "4200000001",
    "trade_type": "JSAPI",
    "trade_state": "SUCCESS",
    "success_time": "2026-11-30T20:00:00+08:00",
    "payer": {"sp_openid": "sp-o", "sub_openid": "sub-o"},
    "amount": {"total": 8_000, "payer_total": 8_000, "currency": "CNY"},
}


def test_a_partner_transaction_reads_our_sp_ids_and_the_sub_merchant():
    tx = Transaction.parse(PARTNER_TX)
    assert (tx.mchid, tx.appid, tx.sub_mchid, tx.sub_appid) == (SP_MCHID, SP_APPID, "1900000109", "wxabcdef0123456789")
    assert tx.payer_openid == "sp-o" and tx.amount.total_fen == 8_000
    direct = Transaction.parse(
        {
            **{k: v for k, v in PARTNER_TX.items() if not k.startswith(("sp_", "sub_"))},
            "mchid": SP_MCHID,
            "appid": SP_APPID,
            "payer": {"openid": "o"},
        }
    )
    assert direct.sub_mchid is None and direct.payer_openid == "o"


@pytest.mark.parametrize("missing", ["sub_mchid", "sp_appid"])
def test_a_partner_transaction_without_its_ids_is_malformed(missing):
    with pytest.raises(MalformedResource) as info:
        Transaction.parse({k: v for k, v in PARTNER_TX.items() if k != missing})
    assert info.value.field == f"transaction.{missing}"


def test_a_partner_refund_notice_names_us_as_sp_mchid_and_the_sub_merchant():
    notice = RefundNotice.parse(
        {
            "sp_mchid": SP_MCHID,
            "sub_mchid": "1900000109",
            "out_trade_no": "P1",
            "out_refund_no": "R1",
            "refund_id": "50000001",
            "transaction_id": "4200000001",
            "refund_status": "SUCCESS",
            "amount": {"total": 8_000, "refund": 300, "payer_total": 8_000, "payer_refund": 300},
        }
    )
    assert (notice.mchid, notice.sub_mchid, notice.refund_fen) == (SP_MCHID, "1900000109", 300)
