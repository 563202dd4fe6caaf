"""Paying: the JSAPI prepay behind POST /api/v1/orders and POST /api/v1/orders/<id>/pay."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from sqlalchemy import func, select, update

from models import Order, db, utcnow
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from wechat.pay import rfc3339

ORDERS = "/api/v1/orders"


@pytest.fixture
def alice(client, no_network):  # noqa: F811
    login = client.post("/api/v1/auth/login", json={"code": "code-alice"}).json
    return {"Authorization": f"Bearer {login['token']}"}


@pytest.fixture
def jsapi_calls(app, monkeypatch):
    """Every create-order request the simulated WeChat received."""
    sim, calls = simulator(app), []
    original = sim.create_jsapi

    def spy(body):
        calls.append(body)
        return original(body)

    monkeypatch.setattr(sim, "create_jsapi", spy)
    return calls


def verify_pay_sign(app, params: dict) -> None:
    message = f"{app.config['WECHAT_APPID']}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    simulator(app).merchant_public_key.verify(
        base64.b64decode(params["paySign"]), message.encode(), padding.PKCS1v15(), hashes.SHA256()
    )


def new_order(client, headers, product, **extra):
    return client.post(
        ORDERS, json={"lines": [{"product_id": product.id, "quantity": 2}]}, headers={**headers, **extra}
    )


def test_create_order_answers_the_order_and_request_payment_parameters(app, client, alice, make_product, jsapi_calls):
    # given
    product = make_product(price_fen=2_500)
    # when
    response = new_order(client, alice, product)
    # then
    assert response.status_code == 201, response.json
    body = response.json
    assert {"id", "out_trade_no", "status", "payable_fen", "time_expire", "lines"} <= set(body)
    payment = body["payment"]
    params = payment["pay_params"]
    assert set(params) == {"timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert params["signType"] == "RSA" and params["package"].startswith("prepay_id=")
    verify_pay_sign(app, params)
    [sent] = jsapi_calls
    order = db.session.get(Order, body["id"])
    assert sent["out_trade_no"] == order.out_trade_no
    assert sent["time_expire"] == rfc3339(order.time_expire)
    assert sent["notify_url"] == app.config["PUBLIC_BASE_URL"] + "/wechat/pay/notify"
    assert sent["payer"] == {"openid": "sim-openid-alice"}  # from the session, never the request
    assert sent["amount"] == {"total": 5_000, "currency": "CNY"}
    assert sent["appid"] == app.config["WECHAT_APPID"] and sent["mchid"] == app.config["WECHAT_MCHID"]
    assert order.prepay_id == params["package"].removeprefix("prepay_id=")
    assert payment["simulator_checkout_url"].endswith("/_sim/pay/checkout/" + order.prepay_id)


def test_asking_again_reuses_a_young_prepay_id(app, client, alice, make_product, jsapi_calls):
    order_id = new_order(client, alice, make_product()).json["id"]
    first = client.post(f"{ORDERS}/{order_id}/pay", headers=alice)
    again = client.post(f"{ORDERS}/{order_id}/pay", headers=alice)
    assert first.status_code == again.status_code == 200
    assert first.json["pay_params"]["package"] == again.json["pay_params"]["package"]
    verify_pay_sign(app, again.json["pay_params"])
    assert len(jsapi_calls) == 1


def test_an_old_prepay_id_is_renewed_with_identical_parameters(app, client, alice, make_product, jsapi_calls):
    # given an order that stays payable for 3 hours
    order_id = new_order(client, alice, make_product()).json["id"]
    package = client.post(f"{ORDERS}/{order_id}/pay", headers=alice).json["pay_params"]["package"]
    db.session.execute(
        update(Order).where(Order.id == order_id).values(prepay_at=utcnow() - timedelta(hours=2, minutes=1))
    )
    db.session.commit()
    # when
    renewed = client.post(f"{ORDERS}/{order_id}/pay", headers=alice)
    # then
    assert renewed.status_code == 200
    assert len(jsapi_calls) == 2
    assert jsapi_calls[0] == jsapi_calls[1]  # identical parameters: WeChat answers the same order
    assert renewed.json["pay_params"]["package"] == package
    db.session.rollback()
    assert db.session.get(Order, order_id).prepay_at > utcnow() - timedelta(minutes=1)


def test_someone_elses_order_is_404_and_a_paid_one_409(app, client, alice, make_product, make_user, user_headers, pay):
    order_id = new_order(client, alice, make_product()).json["id"]
    stranger = make_user(appid=app.config["WECHAT_APPID"])
    assert client.post(f"{ORDERS}/{order_id}/pay", headers=user_headers(stranger)).status_code == 404
    pay(db.session.get(Order, order_id))
    response = client.post(f"{ORDERS}/{order_id}/pay", headers=alice)
    assert response.status_code == 409
    assert response.json["error"] == "order_paid"


def test_expired_order_is_refused(app, client, alice, make_product):
    order_id = new_order(client, alice, make_product()).json["id"]
    db.session.execute(update(Order).where(Order.id == order_id).values(time_expire=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    response = client.post(f"{ORDERS}/{order_id}/pay", headers=alice)
    assert (response.status_code, response.json["error"]) == (409, "order_expired")


def test_user_without_a_mini_program_openid_cannot_pay(client, make_user, user_headers, make_product, no_network):  # noqa: F811
    user = make_user(appid="wx-some-other-app")
    response = new_order(client, user_headers(user), make_product())
    assert response.status_code == 201
    assert response.json["payment"] is None
    assert response.json["payment_error"]["error"] == "no_mini_program_identity"


def test_wechat_outage_keeps_the_order_and_answers_503_on_pay(app, client, alice, make_product):
    simulator(app).inject_fault("/v3/pay/transactions/jsapi", 500, "SYSTEM_ERROR", times=2)
    created = new_order(client, alice, make_product())
    assert created.status_code == 201
    assert created.json["payment"] is None
    assert created.json["payment_error"]["error"] == "wechat_unavailable"
    failed = client.post(f"{ORDERS}/{created.json['id']}/pay", headers=alice)
    assert failed.status_code == 503 and failed.headers["Retry-After"]
    ok = client.post(f"{ORDERS}/{created.json['id']}/pay", headers=alice)
    assert ok.status_code == 200
    verify_pay_sign(app, ok.json["pay_params"])


def test_idempotent_create_makes_one_order(app, client, alice, make_product, jsapi_calls):
    product = make_product()
    first = new_order(client, alice, product, **{"Idempotency-Key": "order-1"})
    replay = new_order(client, alice, product, **{"Idempotency-Key": "order-1"})
    assert first.status_code == replay.status_code == 201
    assert replay.json["id"] == first.json["id"]
    assert db.session.execute(select(func.count()).select_from(Order)).scalar_one() == 1
    assert len(jsapi_calls) == 1
