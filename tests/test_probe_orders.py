"""Probes of the buyer's order path (creation, prepay, close, the payment callback and the order jobs)."""

from __future__ import annotations

from datetime import timedelta

from jobs.orders import close_expired_orders, query_unnotified_payments
from models import Order, db, utcnow
from tests.test_order_jobs import age, alice, new_order, pay_at_wechat_only  # noqa: F401 - fixtures
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixture
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

RULES = {"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]}


def answering_about(app, monkeypatch, asked_no: str, named_no: str) -> None:
    """WeChat's (signed) answer to a query about ``asked_no`` is the transaction of another order, ``named_no``."""
    sim = simulator(app)
    readable = sim.transaction_view

    def view(order):
        if order["request"]["out_trade_no"] == asked_no:
            return readable(sim.orders[named_no])
        return readable(order)

    monkeypatch.setattr(sim, "transaction_view", view)


def test_the_close_job_never_closes_an_order_on_an_answer_about_another_order(app, new_order, monkeypatch):  # noqa: F811
    # given: an order paid at WeChat whose notification never came, past its expiry; another order closed at WeChat
    paid, other = new_order(), new_order()
    age(other["id"], time_expire=utcnow() - timedelta(minutes=1))
    assert close_expired_orders() == {"closed": 1}
    pay_at_wechat_only(app, paid)
    age(paid["id"], time_expire=utcnow() - timedelta(minutes=1))
    # when: the query about the paid order is answered with the closed one's transaction
    answering_about(app, monkeypatch, paid["out_trade_no"], other["out_trade_no"])
    results = close_expired_orders()
    # then: unreadable, left for the next run (it had closed the paid order here: its payment refunded as late)
    assert results == {"unknown": 1}
    db.session.rollback()
    assert db.session.get(Order, paid["id"]).status == "created"
    monkeypatch.undo()
    assert close_expired_orders() == {"applied": 1}
    db.session.rollback()
    assert db.session.get(Order, paid["id"]).status == "paid"


def test_the_query_job_never_applies_an_answer_about_another_order(app, new_order, monkeypatch):  # noqa: F811
    # given: two unpaid orders given a prepay a while ago; the second is paid at WeChat, its notification lost
    asked, named = new_order(), new_order()
    pay_at_wechat_only(app, named)
    age(asked["id"], prepay_at=utcnow() - timedelta(minutes=3))
    # when: the question about the first is answered with the second's transaction
    answering_about(app, monkeypatch, asked["out_trade_no"], named["out_trade_no"])
    results = query_unnotified_payments()
    # then: unreadable, nothing applied on it
    assert results == {"unknown": 1}
    db.session.rollback()
    assert db.session.get(Order, named["id"]).status == "created"
    assert db.session.get(Order, asked["id"]).status == "created"


def test_a_packet_held_by_an_order_too_late_to_pay_is_not_said_to_come_back_by_paying_it(
    app, client, alice, make_product, make_campaign
):
    # given: alice's packet in her unpaid order, which can no longer be paid (within a minute of its expiry; the
    # close job has not closed it yet)
    from models import User, UserIdentity
    from rebate import issue_packet

    product = make_product(price_fen=3_000)
    campaign = make_campaign(RULES, packet_amount_fen=5_00)
    user = db.session.get(User, db.session.query(UserIdentity.user_id).filter_by(openid="sim-openid-alice").scalar())
    packet = issue_packet(campaign, user, source="test", source_ref="held", now=utcnow())
    db.session.commit()
    lines = [{"product_id": product.id, "quantity": 1}]
    first = client.post("/api/v1/orders", json={"lines": lines, "red_packet_id": packet.id}, headers=alice).json
    age(first["id"], time_expire=utcnow() + timedelta(seconds=30))
    assert client.post(f"/api/v1/orders/{first['id']}/pay", headers=alice).json["error"] == "order_expired"
    # when: she orders again with the packet
    again = client.post("/api/v1/orders", json={"lines": lines, "red_packet_id": packet.id}, headers=alice)
    # then: refused, without telling her to pay an order she cannot pay, nor a time already gone
    assert again.status_code == 409 and again.json["error"] == "packet_locked"
    assert "pay that order" not in again.json["message"]
    assert first["out_trade_no"] in again.json["message"] and "once it is closed" in again.json["message"]
