"""Order jobs: expired orders closed at WeChat then here, missed notifications applied, stuck refunds finished."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from jobs.orders import close_expired_orders, query_stuck_refunds, query_unnotified_payments
from models import LedgerEntry, Order, Refund, db, utcnow
from rebate import begin_refund
from tests.test_simulator_e2e import app_settings, delivered, login  # noqa: F401 - fixture
from tests.test_wechat_callbacks import count, no_network, simulator  # noqa: F401 - fixture


@pytest.fixture
def alice(client, no_network, delivered):  # noqa: F811
    return login(client, "alice")


@pytest.fixture
def new_order(client, alice, make_product):
    def make() -> dict:
        product = make_product(price_fen=3_000)
        response = client.post(
            "/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=alice
        )
        assert response.status_code == 201
        return response.json

    return make


def age(order_id: int, **values) -> None:
    db.session.execute(update(Order).where(Order.id == order_id).values(**values))
    db.session.commit()


def test_expired_unpaid_order_is_closed_at_wechat_and_here(app, new_order):
    order = new_order()
    age(order["id"], time_expire=utcnow() - timedelta(minutes=1))
    results = close_expired_orders()
    assert results == {"closed": 1}
    assert db.session.get(Order, order["id"]).status == "closed"
    assert simulator(app).orders[order["out_trade_no"]]["trade_state"] == "CLOSED"
    assert close_expired_orders() == {}  # nothing left for a second runner


def test_expired_order_paid_at_wechat_is_applied_not_closed(app, new_order):
    order = new_order()
    simulator(app).pay(order["payment"]["pay_params"]["package"].removeprefix("prepay_id="))
    simulator(app).dispatcher.stop()  # the notification never arrives
    age(order["id"], time_expire=utcnow() - timedelta(minutes=1))
    entries = count(LedgerEntry)
    assert close_expired_orders() == {"applied": 1}
    db.session.rollback()
    assert db.session.get(Order, order["id"]).status == "paid"
    assert count(LedgerEntry) == entries + 1


def test_order_never_sent_to_wechat_is_closed_locally(app, client, make_user, user_headers, make_product):
    user = make_user(appid="wx-other")
    product = make_product()
    created = client.post(
        "/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=user_headers(user)
    )
    age(created.json["id"], time_expire=utcnow() - timedelta(minutes=1))
    assert close_expired_orders() == {"closed": 1}


def test_wechat_outage_leaves_the_order_for_the_next_run(app, new_order):
    order = new_order()
    age(order["id"], time_expire=utcnow() - timedelta(minutes=1))
    simulator(app).inject_fault("/v3/pay/transactions/out-trade-no", 500, "SYSTEM_ERROR")
    assert close_expired_orders() == {"unknown": 1}
    assert db.session.get(Order, order["id"]).status == "created"
    assert close_expired_orders() == {"closed": 1}


def test_payment_without_notification_is_applied_by_query(app, new_order):
    order = new_order()
    unpaid = new_order()
    simulator(app).pay(order["payment"]["pay_params"]["package"].removeprefix("prepay_id="))
    simulator(app).dispatcher.stop()
    for o in (order, unpaid):
        age(o["id"], prepay_at=utcnow() - timedelta(minutes=3))
    assert query_unnotified_payments() == {"applied": 1, "not_paid": 1}
    db.session.rollback()
    assert db.session.get(Order, order["id"]).status == "paid"
    assert query_unnotified_payments() == {"not_paid": 1}


@pytest.fixture
def paid(app, new_order):
    order = new_order()
    simulator(app).pay(order["payment"]["pay_params"]["package"].removeprefix("prepay_id="))
    simulator(app).dispatcher.stop()
    age(order["id"], prepay_at=utcnow() - timedelta(minutes=3))
    query_unnotified_payments()
    db.session.rollback()
    return db.session.get(Order, order["id"])


def test_refund_that_never_reached_wechat_is_resent_with_its_number(app, paid):
    refund = begin_refund(paid, "R-JOB-1", 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    simulator(app).refund_auto_succeed = False
    assert query_stuck_refunds() == {"processing": 1}
    assert simulator(app).refunds["R-JOB-1"]["refund_fen"] == 1_000
    simulator(app).complete_refund("R-JOB-1", "SUCCESS")
    assert query_stuck_refunds() == {"success": 1}
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "succeeded"
    assert db.session.get(Order, paid.id).refunded_fen == 1_000
    assert query_stuck_refunds() == {}


def test_closed_refund_is_released(app, paid):
    refund = begin_refund(paid, "R-JOB-2", 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    simulator(app).refund_auto_succeed = False
    query_stuck_refunds()
    simulator(app).complete_refund("R-JOB-2", "CLOSED")
    assert query_stuck_refunds() == {"closed": 1}
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "closed"


def test_scheduler_has_every_job(app):
    from jobs.scheduler import build_scheduler

    scheduler = build_scheduler(app)
    assert sorted(j.id for j in scheduler.get_jobs()) == [
        "check_unclaimed_red_packets",
        "close_expired_orders",
        "daily_reconciliation",
        "deliver_alerts",
        "dispatch_payouts",
        "expire_packets_and_conditions",
        "query_stuck_refunds",
        "query_unnotified_payments",
    ]


def test_jobs_cli_run_once(app):
    result = app.test_cli_runner().invoke(args=["jobs", "run-once"])
    assert result.exit_code == 0, result.output
    assert "close_expired_orders" in result.output
