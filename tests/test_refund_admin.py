"""POST /admin/api/orders/<id>/refunds: begin_refund committed first, same out_refund_no on retries."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import Order, Refund, db
from tests.test_simulator_e2e import app_settings, delivered, login, pay_at_checkout  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

REFUNDS = "/admin/api/orders/{}/refunds"


@pytest.fixture
def paid_order(app, client, make_product, delivered, no_network):  # noqa: F811
    alice = login(client, "alice")
    product = make_product(price_fen=10_000)
    created = client.post("/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=alice)
    pay_at_checkout(client, created.json["payment"])
    delivered()
    order = db.session.get(Order, created.json["id"])
    assert order.status == "paid"
    return order


@pytest.fixture
def refund_calls(app, monkeypatch):
    """Bodies of the refund requests WeChat received, with our refund row's state at that moment."""
    sim, calls = simulator(app), []
    original = sim.create_refund

    def spy(body):
        with db.engine.connect() as conn:
            row = conn.execute(select(Refund.status).where(Refund.out_refund_no == body["out_refund_no"])).first()
        calls.append({**body, "_row_status": row[0] if row else None})
        return original(body)

    monkeypatch.setattr(sim, "create_refund", spy)
    return calls


@pytest.fixture
def finance(make_operator):
    return make_operator("finance")[1]


def keyed(headers: dict) -> dict:
    """A fresh Idempotency-Key: refunds refuse to run without one."""
    import uuid

    return {**headers, "Idempotency-Key": uuid.uuid4().hex}


def test_a_refund_without_an_idempotency_key_is_refused_and_changes_nothing(client, paid_order, finance):
    from models import Refund, db

    response = client.post(REFUNDS.format(paid_order.id), json={"amount_fen": 1_000, "reason": "r"}, headers=finance)
    assert response.status_code == 422
    assert response.json["error"] == "idempotency_key_required"
    assert db.session.query(Refund).count() == 0


def test_refund_is_recorded_before_wechat_and_finished_by_the_notification(
    app,
    client,
    paid_order,
    finance,
    refund_calls,
    delivered,  # noqa: F811
):
    response = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 4_000, "reason": "damaged"}, headers=keyed(finance)
    )
    assert response.status_code == 201, response.json
    [call] = refund_calls
    assert call["_row_status"] == "pending"  # committed before the call
    assert call["out_refund_no"] == response.json["out_refund_no"]
    assert call["amount"] == {"refund": 4_000, "total": 10_000, "currency": "CNY"}
    assert call["notify_url"] == app.config["PUBLIC_BASE_URL"] + "/wechat/pay/refund-notify"
    delivered()
    refund = db.session.get(Refund, response.json["id"])
    assert refund.status == "succeeded"
    assert db.session.get(Order, paid_order.id).refunded_fen == 4_000


@pytest.mark.parametrize(("status", "code"), [(500, "SYSTEM_ERROR"), (429, "FREQUENCY_LIMITED"), (403, "NOT_ENOUGH")])
def test_retryable_errors_retry_with_the_same_number(app, client, paid_order, finance, refund_calls, status, code):
    simulator(app).inject_fault("/v3/refund/domestic/refunds", status, code, times=2)
    response = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 10_000, "reason": "r"}, headers=keyed(finance)
    )
    assert response.status_code == 201
    assert response.json["status"] in ("pending", "succeeded")
    assert "wechat_error" not in response.json
    [call] = refund_calls  # faults answer before the simulator's handler; the third attempt got through
    assert call["out_refund_no"] == response.json["out_refund_no"]


def test_unknown_outcome_leaves_the_refund_pending(app, client, paid_order, finance, refund_calls):
    simulator(app).inject_fault("/v3/refund/domestic/refunds", 500, "SYSTEM_ERROR", times=3)
    response = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 1_000, "reason": "r"}, headers=keyed(finance)
    )
    assert response.status_code == 201
    assert response.json["status"] == "pending"
    assert response.json["wechat_error"]["code"] == "SYSTEM_ERROR"


def test_an_answer_about_another_refund_is_not_applied_to_ours(app, client, paid_order, finance, monkeypatch):
    sim = simulator(app)
    sim.refund_auto_succeed = False
    original = sim.create_refund

    def answered_about_another(body):
        return {**original(body), "out_refund_no": "R-SOMEONE-ELSES", "status": "SUCCESS"}

    monkeypatch.setattr(sim, "create_refund", answered_about_another)
    response = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 1_000, "reason": "r"}, headers=keyed(finance)
    )
    assert response.status_code == 201
    assert response.json["status"] == "pending"  # the refund job asks WeChat about ours
    assert response.json["wechat_error"]["code"] == "MALFORMED_RESOURCE"
    assert "R-SOMEONE-ELSES" in response.json["wechat_error"]["message"]
    db.session.rollback()
    assert db.session.get(Order, paid_order.id).refunded_fen == 0
    assert db.session.execute(select(Refund.out_refund_no)).scalars().all() == [response.json["out_refund_no"]]


def test_definitive_refusal_fails_the_refund_and_releases_the_hold(app, client, paid_order, finance):
    simulator(app).inject_fault("/v3/refund/domestic/refunds", 403, "USER_ACCOUNT_ABNORMAL")
    response = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 1_000, "reason": "r"}, headers=keyed(finance)
    )
    assert response.status_code == 201
    assert response.json["status"] == "failed"
    assert response.json["wechat_error"]["code"] == "USER_ACCOUNT_ABNORMAL"
    assert db.session.get(Order, paid_order.id).refunded_fen == 0
    from models import Alert  # the operator is told WeChat's reason, not only that it failed

    alert = db.session.execute(select(Alert).where(Alert.kind == "refund_failed")).scalar_one()
    assert "USER_ACCOUNT_ABNORMAL" in alert.message


def test_idempotency_key_makes_one_refund(app, client, paid_order, finance, refund_calls):
    headers = {**finance, "Idempotency-Key": "refund-1"}
    first = client.post(REFUNDS.format(paid_order.id), json={"amount_fen": 2_000, "reason": "r"}, headers=headers)
    again = client.post(REFUNDS.format(paid_order.id), json={"amount_fen": 2_000, "reason": "r"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json["id"] == first.json["id"]
    assert len(refund_calls) == 1


@pytest.mark.parametrize("role", ["support", "merchant_staff"])
def test_other_roles_may_not_refund(client, paid_order, make_operator, refund_calls, role):
    _, headers = make_operator(role)
    response = client.post(REFUNDS.format(paid_order.id), json={"amount_fen": 1_000, "reason": "r"}, headers=headers)
    assert response.status_code == 403
    assert refund_calls == []


def test_bad_amounts_and_unknown_orders(client, paid_order, finance, refund_calls):
    too_much = client.post(
        REFUNDS.format(paid_order.id), json={"amount_fen": 10_001, "reason": "r"}, headers=keyed(finance)
    )
    assert too_much.status_code == 422
    assert (
        client.post(
            REFUNDS.format(paid_order.id), json={"amount_fen": 0, "reason": "r"}, headers=keyed(finance)
        ).status_code
        == 422
    )
    assert (
        client.post(REFUNDS.format(999_999), json={"amount_fen": 1, "reason": "r"}, headers=keyed(finance)).status_code
        == 404
    )
    assert refund_calls == []
