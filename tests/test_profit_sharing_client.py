"""``wechat.profitsharing`` in live mode: every request's exact shape and signature, checked on the wire.

The client talks to ``https://api.mch.weixin.qq.com``; ``responses`` hands each request to the simulator
(which verifies the merchant's signature as WeChat does, and signs its answers). Each request is also
checked here: its body, its URL, and its ``Authorization`` verified with the merchant's public key. The
independent ``wechatpayv3`` client in partner mode (``partner_mode=True``) sends the same calls: its bodies
and URLs must say the same.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from flask import Flask
from wechatpayv3 import WeChatPay, WeChatPayType

from wechat import crypto
from wechat.errors import WeChatBusinessError, WeChatInvalidRequest, WeChatNotFound, WeChatRateLimited
from wechat.pay import PayClient, PayConfig
from wechat.profitsharing import ProfitSharingClient
from wechat.sim.app import create_simulator_blueprint
from wechat.sim.keys import SimulatorKeys, generate_rsa_key
from wechat.sim.state import SimulatorState

SP_MCHID, SP_APPID, SUB_MCHID, SUB_APPID = "1900000100", "wxsp0000000000001", "1900000301", "wxsub000000000001"
SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
LIVE = "https://api.mch.weixin.qq.com"
TX = "4200000000202611300000000001"


@pytest.fixture(scope="module")
def keys():
    apiv3 = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    return generate_rsa_key(), SimulatorKeys(), apiv3


@pytest.fixture
def sim(keys):
    merchant_key, sim_keys, apiv3 = keys
    state = SimulatorState(
        mchid=SP_MCHID, apiv3_key=apiv3, merchant_public_key=merchant_key.public_key(), keys=sim_keys
    )
    yield state
    state.dispatcher.stop()


@pytest.fixture
def wire(sim):
    """``responses`` serving the live host from the simulator; every request is kept in ``wire.calls``."""
    app = Flask(__name__)
    app.register_blueprint(create_simulator_blueprint(sim))
    test_client = app.test_client()

    def serve(request):
        parts = urlsplit(request.url)
        body = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        answer = test_client.open(
            "/_sim/pay" + parts.path,
            base_url=f"{parts.scheme}://{parts.netloc}",
            method=request.method,
            query_string=parts.query,
            headers=dict(request.headers),
            data=body,
        )
        return answer.status_code, dict(answer.headers), answer.get_data()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for method in ("GET", "POST"):
            rsps.add_callback(method, re.compile(re.escape(LIVE) + r"/.*"), callback=serve)
        yield rsps


@pytest.fixture
def ours(keys):
    merchant_key, sim_keys, apiv3 = keys
    config = PayConfig(
        mchid=SP_MCHID,
        appid=SP_APPID,
        private_key=merchant_key,
        cert_serial=SERIAL,
        apiv3_key=apiv3,
        keys=sim_keys.verifier_keys(public_key=True, certificates=True),
        api_base=LIVE,
    )
    return ProfitSharingClient(PayClient(config), SP_APPID)


@pytest.fixture
def theirs(keys):
    merchant_key, sim_keys, apiv3 = keys
    return WeChatPay(
        wechatpay_type=WeChatPayType.MINIPROG,
        mchid=SP_MCHID,
        private_key=crypto.private_key_pem(merchant_key),
        cert_serial_no=SERIAL,
        appid=SP_APPID,
        apiv3_key=apiv3,
        public_key=sim_keys.public_key_pem,
        public_key_id=sim_keys.public_key_id,
        partner_mode=True,
        timeout=(3, 5),
    )


def sent(call) -> tuple[str, str, dict]:
    """(method, path?query, body) of a request on the wire, its signature verified with the merchant's key."""
    request = call.request
    parts = urlsplit(request.url)
    canonical = parts.path + (f"?{parts.query}" if parts.query else "")
    raw = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
    return request.method, canonical, json.loads(raw) if raw else {}


def signed_by(call, merchant_key) -> bool:
    request = call.request
    parts = urlsplit(request.url)
    canonical = parts.path + (f"?{parts.query}" if parts.query else "")
    raw = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
    auth = crypto.parse_authorization(request.headers["Authorization"])
    message = crypto.request_message(request.method, canonical, int(auth["timestamp"]), auth["nonce_str"], raw)
    return auth["mchid"] == SP_MCHID and crypto.verify_rsa(message, auth["signature"], merchant_key.public_key())


def receivers(openids: list[str], amount: int = 100) -> list[dict]:
    return [{"type": "PERSONAL_OPENID", "account": o, "amount": amount, "description": "订单返利"} for o in openids]


def test_a_person_is_added_as_receiver_without_a_name(ours, wire, keys, sim):
    answer = ours.add_receiver(SUB_MCHID, "PERSONAL_OPENID", "o-buyer")
    assert answer == {"sub_mchid": SUB_MCHID, "type": "PERSONAL_OPENID", "account": "o-buyer", "relation_type": "USER"}
    [call] = wire.calls
    assert sent(call) == (
        "POST",
        "/v3/profitsharing/receivers/add",
        {
            "sub_mchid": SUB_MCHID,
            "appid": SP_APPID,
            "type": "PERSONAL_OPENID",
            "account": "o-buyer",
            "relation_type": "USER",
        },
    )
    assert signed_by(call, keys[0])
    assert "name" not in sent(call)[2]


def test_a_sub_openid_receiver_carries_the_sub_appid(ours, wire):
    ours.add_receiver(SUB_MCHID, "PERSONAL_SUB_OPENID", "o-sub", sub_appid=SUB_APPID)
    assert sent(wire.calls[0])[2]["sub_appid"] == SUB_APPID


def test_a_merchant_receiver_has_its_name_encrypted_with_wechats_key(ours, wire, keys):
    _, sim_keys, _ = keys
    ours.add_receiver(SUB_MCHID, "MERCHANT_ID", "1900000999", "PARTNER", name="示例商户有限公司")
    [call] = wire.calls
    body = sent(call)[2]
    serial = call.request.headers["Wechatpay-Serial"]
    _, private = sim_keys.private_for(serial)
    assert crypto.rsa_oaep_decrypt(body["name"], private) == "示例商户有限公司"
    assert signed_by(call, keys[0])


def test_a_share_request_has_the_documented_shape_and_is_signed(ours, wire, keys, sim):
    sim.freeze_for_sharing(TX, SUB_MCHID, 10_000)
    for openid in ("o-issuer", "o-buyer"):
        ours.add_receiver(SUB_MCHID, "PERSONAL_OPENID", openid)
    body = ours.order_body(SUB_MCHID, TX, "PS000000000001", receivers(["o-issuer", "o-buyer"], 1_000))
    answer = ours.post_order(body)
    assert answer["state"] == "PROCESSING" and [r["result"] for r in answer["receivers"]][:2] == ["PENDING"] * 2
    call = wire.calls[-1]
    assert sent(call) == (
        "POST",
        "/v3/profitsharing/orders",
        {
            "sub_mchid": SUB_MCHID,
            "appid": SP_APPID,
            "transaction_id": TX,
            "out_order_no": "PS000000000001",
            "receivers": receivers(["o-issuer", "o-buyer"], 1_000),
            "unfreeze_unsplit": True,
        },
    )
    assert signed_by(call, keys[0])
    # the result is asked for by number, sub-merchant and transaction
    result = ours.query_order(SUB_MCHID, TX, "PS000000000001")
    method, url, _ = sent(wire.calls[-1])
    assert (method, url) == (
        "GET",
        f"/v3/profitsharing/orders/PS000000000001?sub_mchid={SUB_MCHID}&transaction_id={TX}",
    )
    assert signed_by(wire.calls[-1], keys[0])
    assert result["state"] == "FINISHED" and {r["result"] for r in result["receivers"]} == {"SUCCESS"}


def test_unfreeze_and_the_maximum_ratio(ours, wire, keys, sim):
    sim.freeze_for_sharing(TX, SUB_MCHID, 10_000)
    sim.set_max_ratio(SUB_MCHID, 2500)
    assert ours.max_ratio_bps(SUB_MCHID) == 2500
    assert sent(wire.calls[-1])[:2] == ("GET", f"/v3/profitsharing/merchant-configs/{SUB_MCHID}")
    answer = ours.unfreeze(ours.unfreeze_body(SUB_MCHID, TX, "PS000000000002", "解冻全部剩余资金"))
    assert answer["out_order_no"] == "PS000000000002"
    assert sent(wire.calls[-1]) == (
        "POST",
        "/v3/profitsharing/orders/unfreeze",
        {
            "sub_mchid": SUB_MCHID,
            "transaction_id": TX,
            "out_order_no": "PS000000000002",
            "description": "解冻全部剩余资金",
        },
    )
    assert all(signed_by(call, keys[0]) for call in wire.calls)


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (lambda c: c.order_body(SUB_MCHID, TX, "PS1", receivers([f"o{i}" for i in range(51)])), "1 to 50"),
        (lambda c: c.order_body(SUB_MCHID, TX, "PS1", []), "1 to 50"),
        (lambda c: c.order_body(SUB_MCHID, TX, "PS1", receivers(["o1"], 0)), "positive integer"),
        (lambda c: c.order_body(SUB_MCHID, TX, "PS1", receivers(["o1", "o1"])), "once per share"),
        (lambda c: c.order_body(SUB_MCHID, TX, "PS 1", receivers(["o1"])), "out_order_no"),
        (lambda c: c.order_body("", TX, "PS1", receivers(["o1"])), "sub_mchid"),
        (
            lambda c: c.order_body(
                SUB_MCHID, TX, "PS1", [{"type": "PERSONAL_SUB_OPENID", "account": "o", "amount": 1, "description": "x"}]
            ),
            "sub_appid",
        ),
        (lambda c: c.add_receiver(SUB_MCHID, "MERCHANT_ID", "1900000999", "PARTNER"), "full name"),
        (lambda c: c.add_receiver(SUB_MCHID, "PERSONAL_OPENID", "o", "FRIEND"), "relation_type"),
        (lambda c: c.add_receiver(SUB_MCHID, "EMAIL", "o"), "receiver type"),
        (lambda c: c.unfreeze_body(SUB_MCHID, TX, "PS1", ""), "description"),
    ],
)
def test_a_bad_request_is_refused_before_anything_is_sent(ours, wire, build, why):
    with pytest.raises(WeChatInvalidRequest, match=why):
        build(ours)
    assert len(wire.calls) == 0


def test_wechats_refusals_are_typed(ours, wire, sim):
    sim.freeze_for_sharing(TX, SUB_MCHID, 1_000)
    ours.add_receiver(SUB_MCHID, "PERSONAL_OPENID", "o1")
    # over the maximum ratio (30 % of 10 yuan = 3 yuan): a definite 400 refusal
    with pytest.raises(WeChatBusinessError) as refused:
        ours.post_order(ours.order_body(SUB_MCHID, TX, "PS1", receivers(["o1"], 301)))
    assert (refused.value.code, refused.value.http_status) == ("INVALID_REQUEST", 400)
    assert "最大分账比例" in refused.value.message and not refused.value.outcome_unknown
    # more than is left unsplit: NOT_ENOUGH, which may succeed later
    sim.refund_frozen(TX, 900)
    with pytest.raises(WeChatBusinessError) as short:
        ours.post_order(ours.order_body(SUB_MCHID, TX, "PS2", receivers(["o1"], 200)))
    assert short.value.code == "NOT_ENOUGH" and short.value.retryable
    # 频率超限
    sim.inject_fault("/v3/profitsharing/orders", 429, "FREQUENCY_LIMITED", "频率超限")
    with pytest.raises(WeChatRateLimited):
        ours.post_order(ours.order_body(SUB_MCHID, TX, "PS3", receivers(["o1"], 50)))
    # a number WeChat never saw
    with pytest.raises(WeChatNotFound):
        ours.query_order(SUB_MCHID, TX, "PS404")
    # a receiver never added
    with pytest.raises(WeChatBusinessError, match="分账接收方"):
        ours.post_order(ours.order_body(SUB_MCHID, TX, "PS4", receivers(["o-unknown"], 50)))


def test_wechatpayv3_partner_mode_sends_the_same_requests(ours, theirs, wire, sim):
    sim.freeze_for_sharing(TX, SUB_MCHID, 10_000)
    # receivers
    ours.add_receiver(SUB_MCHID, "PERSONAL_OPENID", "o-a")
    code, text = theirs.profitsharing_add_receiver("PERSONAL_OPENID", "o-b", "USER", sub_mchid=SUB_MCHID)
    assert code == 200, text
    mine, other = sent(wire.calls[-2]), sent(wire.calls[-1])
    assert mine[:2] == other[:2] and mine[2] == {**other[2], "account": "o-a"}
    # a share
    ours.post_order(ours.order_body(SUB_MCHID, TX, "PSA", receivers(["o-a"], 500), unfreeze_unsplit=False))
    code, text = theirs.profitsharing_order(
        TX, "PSB", receivers(["o-b"], 500), False, sub_mchid=SUB_MCHID
    )  # the simulator verified wechatpayv3's signature too (answered 200)
    assert code == 200, text
    mine, other = sent(wire.calls[-2]), sent(wire.calls[-1])
    assert mine[:2] == other[:2]
    assert mine[2] == {**other[2], "out_order_no": "PSA", "receivers": receivers(["o-a"], 500)}
    # the query: the same path and parameters (wechatpayv3 orders them differently; WeChat reads them by name)
    ours.query_order(SUB_MCHID, TX, "PSA")
    code, _ = theirs.profitsharing_order_query(TX, "PSA", sub_mchid=SUB_MCHID)
    assert code == 200
    mine, other = (urlsplit(c.request.url) for c in wire.calls[-2:])
    assert mine.path == other.path and parse_qs(mine.query) == parse_qs(other.query)
    # the maximum ratio and an unfreeze
    ours.max_ratio_bps(SUB_MCHID)
    code, _ = theirs.profitsharing_config_query(SUB_MCHID)
    assert code == 200 and sent(wire.calls[-2])[:2] == sent(wire.calls[-1])[:2]
    sim.freeze_for_sharing(TX + "2", SUB_MCHID, 100)
    ours.unfreeze(ours.unfreeze_body(SUB_MCHID, TX, "PSU", "解冻全部剩余资金"))
    code, text = theirs.profitsharing_unfreeze(TX + "2", "PSV", "解冻全部剩余资金", sub_mchid=SUB_MCHID)
    assert code == 200, text
    mine, other = sent(wire.calls[-2]), sent(wire.calls[-1])
    assert mine[:2] == other[:2]
    assert mine[2] == {**other[2], "transaction_id": TX, "out_order_no": "PSU"}
