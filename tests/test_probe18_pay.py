"""Probe 18: order creation and WeChat Pay's paid notifications, as WeChat, a buyer and an auditor drive them."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, text

from models import Rebate, User, db, utcnow
from rebate import create_order, issue_packet
from rebate.errors import StateConflict
from rebate.orders import LineRequest
from rebate.triggers import bind_inviter, invite_code_of
from risk import PlatformLimits
from tests.conftest import on_postgres
from tests.payment_helpers import pay_as_wechat


def buy(user, product, packet=None):
    order = create_order(user, [LineRequest(product.id, 1)], packet.id if packet else None, utcnow())
    db.session.commit()
    return order


def trial_campaign(make_campaign, shop, days: int):
    """A shop's trial packet (5 yuan off) whose issuer earns 5 % credit on the buyer's orders there for ``days``."""
    return make_campaign(
        {
            "attribution_days": days,
            "roles": [{"role": "issuer", "rate_bps": 500, "form": "merchant_credit", "cap_fen": 50_00}],
        },
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=500_00,
        packet_amount_fen=5_00,
        packet_merchant_id=shop.id,
    )


@pytest.mark.skipif(not on_postgres(), reason="two payments at once: PostgreSQL (SQLite serialises them)")
def test_two_payments_of_one_buyer_at_once_keep_the_longer_attribution(
    app, make_user, make_merchant, make_product, make_campaign
):
    # given: a buyer holding a 30-day trial packet of shop A and a 7-day one of shop B, an order at each
    shop_a, shop_b = make_merchant("shop a"), make_merchant("shop b")
    long_trial, short_trial = trial_campaign(make_campaign, shop_a, 30), trial_campaign(make_campaign, shop_b, 7)
    buyer = make_user()
    at_a = issue_packet(long_trial, buyer, source="trial", source_ref="a", now=utcnow())
    at_b = issue_packet(short_trial, buyer, source="trial", source_ref="b", now=utcnow())
    db.session.commit()
    product_a, product_b = make_product(shop_a, price_fen=20_00), make_product(shop_b, price_fen=20_00)
    order_a, order_b = buy(buyer, product_a, at_a), buy(buyer, product_b, at_b)
    now = utcnow()

    # when: WeChat tells of both payments at once: shop A's is applied while shop B's is between its read of the
    # order (and its buyer) and its writes
    main, fired = threading.current_thread(), []

    def pay_a_meanwhile(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread() is not main or fired or "order_packets.discount_fen" not in statement:
            return
        fired.append(True)

        def pay_a():
            with app.app_context():
                pay_as_wechat(order_a.out_trade_no, f"tx-{order_a.out_trade_no}", order_a.payable_fen, now)
                db.session.commit()
                db.session.remove()

        other = threading.Thread(target=pay_a)
        other.start()
        other.join(timeout=60)

    event.listen(db.engine, "before_cursor_execute", pay_a_meanwhile)
    try:
        assert pay_as_wechat(order_b.out_trade_no, f"tx-{order_b.out_trade_no}", order_b.payable_fen, now) == "applied"
        db.session.commit()
    finally:
        event.remove(db.engine, "before_cursor_execute", pay_a_meanwhile)
    assert fired

    # then: the buyer's attribution runs to shop A's 30 days (shop B's 7 had overwritten it), and shop A earns on
    # the buyer's order ten days later
    db.session.expire_all()
    assert db.session.get(User, buyer.id).attribution_until == now + timedelta(days=30)
    later = buy(buyer, make_product(shop_a, price_fen=200_00))
    assert pay_as_wechat(later.out_trade_no, "tx-later", later.payable_fen, now + timedelta(days=10)) == "applied"
    db.session.commit()
    issuer = db.session.query(Rebate).filter_by(order_id=later.id, role="issuer").one()
    assert (issuer.amount_fen, issuer.packet_id) == (10_00, at_a.id)


def run_beside(work, app) -> tuple[threading.Thread, list]:
    """``work()`` in a thread with its own app context (committed, or rolled back when it raised), started now;
    returns once it has ended or waits on a lock (PostgreSQL), with the thread and its result (one item)."""
    result: list = []

    def target():
        with app.app_context():
            try:
                result.append(work())
                db.session.commit()
            except Exception as exc:  # the test asserts on it
                db.session.rollback()
                result.append(exc)
            finally:
                db.session.remove()

    thread = threading.Thread(target=target)
    thread.start()
    with db.engine.connect() as probe:
        for _ in range(200):
            if not thread.is_alive() or probe.execute(LOCK_WAITS).scalar_one():
                break
            probe.rollback()
            threading.Event().wait(0.05)
    return thread, result


LOCK_WAITS = text(
    "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
)


@pytest.mark.skipif(not on_postgres(), reason="a payment and a bind at once: PostgreSQL (SQLite serialises them)")
def test_an_invite_code_cannot_bind_while_the_first_purchase_is_being_paid(app, make_user, make_product):
    # given: a newcomer with an unpaid first order, and a friend's invite code
    buyer, friend = make_user(), make_user()
    code = invite_code_of(friend)
    db.session.commit()
    order = buy(buyer, make_product(price_fen=100_00))

    # when: the newcomer binds the code while WeChat's notification of that order is being applied
    main, beside = threading.current_thread(), []

    def bind_meanwhile(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread() is not main or beside or "risk_profiles" not in statement:
            return
        bind = lambda: bind_inviter(db.session.get(User, buyer.id), code, utcnow(), limits=PlatformLimits.off())  # noqa: E731
        beside.append(run_beside(bind, app))

    event.listen(db.engine, "before_cursor_execute", bind_meanwhile)
    try:
        assert pay_as_wechat(order.out_trade_no, f"tx-{order.out_trade_no}", order.payable_fen, utcnow()) == "applied"
        db.session.commit()
    finally:
        event.remove(db.engine, "before_cursor_execute", bind_meanwhile)
    [(thread, result)] = beside
    thread.join(timeout=60)

    # then: the code binds before the first purchase only: refused once the payment is in (it had bound)
    [refusal] = result
    assert isinstance(refusal, StateConflict) and refusal.code == "bind_window_closed"
    db.session.expire_all()
    assert db.session.get(User, buyer.id).inviter_id is None


@pytest.mark.skipif(not on_postgres(), reason="two sign-ins at once: PostgreSQL (SQLite serialises them)")
def test_a_double_tap_across_beijing_midnight_keeps_the_streak(app, make_user):
    from datetime import UTC, datetime

    from models import SignIn
    from rebate.triggers import sign_in

    # given: a person signed in the day before yesterday (Beijing), streak 1
    person = make_user()
    before_midnight = datetime(2026, 12, 9, 15, 59, 59, tzinfo=UTC)  # 23:59:59 in Beijing, 9 December
    after_midnight = before_midnight + timedelta(seconds=2)  # 00:00:01, 10 December
    db.session.add(SignIn(user_id=person.id, day="2026-12-08", streak=1, created_at=before_midnight))
    db.session.commit()
    main, results = threading.current_thread(), {}

    def the_second_tap(conn, cursor, statement, parameters, context, executemany):
        if threading.current_thread() is not main or results or "INSERT INTO sign_ins" not in statement:
            return
        results["started"] = True

        def tap():
            with app.app_context():
                row, _ = sign_in(db.session.get(User, person.id), after_midnight, limits=PlatformLimits.off())
                results["second"] = row.streak
                db.session.commit()
                db.session.remove()

        results["thread"] = threading.Thread(target=tap)
        results["thread"].start()
        results["thread"].join(timeout=2)  # it waits for this one's turn (it had read no row of yesterday at once)

    # when: the tap of 23:59:59 is being written while the tap of 00:00:01 arrives
    event.listen(db.engine, "after_cursor_execute", the_second_tap)
    try:
        row, _ = sign_in(db.session.get(User, person.id), before_midnight, limits=PlatformLimits.off())
        db.session.commit()
    finally:
        event.remove(db.engine, "after_cursor_execute", the_second_tap)
    results["thread"].join(timeout=30)
    # then: yesterday's streak is 2 and today's 3 (today's had started again at 1: the seventh day's bonus lost)
    assert (row.streak, results["second"]) == (2, 3)
