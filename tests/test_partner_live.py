"""Live mode (no simulator) in service-provider mode, against a fake WeChat (``responses``): an order of a
sub-merchant is prepaid through the partner JSAPI with exactly the documented body, signed with the
service provider's merchant key, and the answer's pay parameters are signed for our appid."""

from __future__ import annotations

import json

import responses

from models import Merchant, Product, User, UserIdentity, db
from tests.test_call_between_commits import live_app  # noqa: F401 - fixture
from wechat import crypto
from wechat.sim.keys import SimulatorKeys

PREPAY = "https://api.mch.weixin.qq.com/v3/pay/partner/transactions/jsapi"


def test_a_sub_merchants_order_is_prepaid_through_the_partner_jsapi(live_app, tmp_path):  # noqa: F811
    # given: a live app in service-provider mode; the fake WeChat signs its answers with a key the app trusts
    app = live_app
    app.config["FUND_FLOW"] = "service_provider"
    wechat_keys = SimulatorKeys()
    app.extensions["wechat"].pay.config.keys = wechat_keys.verifier_keys(public_key=True)
    merchant_public = crypto.load_private_key((tmp_path / "apiclient_key.pem").read_text()).public_key()
    shop = Merchant(name="noodles", sub_mchid="1900000109")
    db.session.add(shop)
    db.session.flush()
    bowl = Product(merchant_id=shop.id, name="bowl", category="food", price_fen=30_00)
    alice = User()
    db.session.add_all([bowl, alice])
    db.session.flush()
    db.session.add(UserIdentity(user_id=alice.id, appid=app.config["WECHAT_APPID"], openid="o-alice"))
    db.session.commit()
    from web.auth import issue_user_token

    headers = {"Authorization": f"Bearer {issue_user_token(alice)}"}
    db.session.commit()
    answer = json.dumps({"prepay_id": "wx201410272009395522657a690389285100"}).encode()

    with responses.RequestsMock() as wechat:  # any other call fails the test
        wechat.add(responses.POST, PREPAY, body=answer, headers=wechat_keys.sign_headers(answer), status=200)
        # when
        created = app.test_client().post(
            "/api/v1/orders", json={"lines": [{"product_id": bowl.id, "quantity": 1}]}, headers=headers
        )
        # then
        assert created.status_code == 201, created.json
        assert created.json["payment"] is not None, created.json.get("payment_error")
        [call] = wechat.calls
    raw = call.request.body.decode()
    body = json.loads(raw)
    assert sorted(body) == sorted(
        [
            "sp_appid",
            "sp_mchid",
            "sub_mchid",
            "description",
            "out_trade_no",
            "time_expire",
            "notify_url",
            "amount",
            "payer",
        ]
    )
    assert (body["sp_appid"], body["sp_mchid"], body["sub_mchid"]) == ("wx1234567890abcdef", "1900000001", "1900000109")
    assert body["payer"] == {"sp_openid": "o-alice"} and body["amount"] == {"total": 30_00, "currency": "CNY"}
    assert body["notify_url"] == "https://rebate.example.com/wechat/pay/notify"
    auth = crypto.parse_authorization(call.request.headers["Authorization"])
    message = crypto.request_message(
        "POST", "/v3/pay/partner/transactions/jsapi", int(auth["timestamp"]), auth["nonce_str"], raw
    )
    assert auth["mchid"] == "1900000001" and crypto.verify_rsa(message, auth["signature"], merchant_public)
    params = created.json["payment"]["pay_params"]
    signed = f"wx1234567890abcdef\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    assert crypto.verify_rsa(signed, params["paySign"], merchant_public)
