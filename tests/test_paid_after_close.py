"""A payment WeChat took for an order already closed here: booked as owed back to the payer and refunded whole.

The buyer paid as the order's close went out. There is no sale (no rebate, fee, packet or wallet movement), but the
money arrived: ``wechat_settlement`` to ``payments_to_return``, and a refund ``L<order id>`` of all of it begun,
which the refund job sends; its success takes the money back out. Signed and encrypted as WeChat does."""

from __future__ import annotations

from sqlalchemy import select

from insights.rollups import beijing_day, roll_up_day
from ledger import balance, check_ledger, ref
from models import (
    AccountKind,
    Alert,
    LedgerEntry,
    Order,
    Payout,
    Rebate,
    Refund,
    db,
    utcnow,
)
from payouts.bill_lines import TradeLine
from payouts.reconcile import match_trade
from rebate import begin_refund, close_order, fail_refund
from rebate.errors import Invalid, StateConflict
from rebate.refunds import LATE_REFUND_REASON
from rebate.refunds import late_refund_no as numbered
from tests.money_helpers import app_money
from tests.payment_helpers import pay_as_wechat
from tests.test_wechat_callbacks import (  # noqa: F401 - fixtures
    count,
    deliver,
    deliver_refund,
    make_order,
    no_network,
    refund_resource,
    transaction_resource,
)

OWED = ref(AccountKind.PAYMENTS_TO_RETURN)


def late_refund_no(order: Order) -> str:
    return numbered(order, app_money().number_prefix)


SETTLEMENT = ref(AccountKind.WECHAT_SETTLEMENT)


def closed(make_order, price_fen: int = 10_000) -> Order:
    order = make_order(price_fen)
    close_order(order, utcnow())
    db.session.commit()
    return order


def paid_late(app, client, make_order) -> Order:
    """A closed order of 100 yuan, then WeChat's signed notification that it was paid."""
    order = closed(make_order)
    assert deliver(client, app, transaction_resource(app, order)).status_code == 204
    db.session.rollback()
    return db.session.get(Order, order.id)


def owed() -> tuple[int, int]:
    """(owed back to payers, the settlement account's mirror of money at WeChat)."""
    return balance(OWED), balance(SETTLEMENT)


def alerts() -> list[str]:
    return list(db.session.execute(select(Alert.kind).order_by(Alert.id)).scalars())


def test_a_signed_payment_after_the_close_is_booked_owed_back_and_its_refund_begun(app, client, make_order, no_network):
    order = closed(make_order)
    resource = transaction_resource(app, order)

    first = deliver(client, app, resource)
    again = deliver(client, app, resource)  # WeChat retries with another notification id

    assert (first.status_code, again.status_code) == (204, 204)
    db.session.rollback()
    late = db.session.get(Order, order.id)
    assert (late.status, late.transaction_id, late.paid_fen, late.paid_at, late.refunded_fen) == (
        "closed",
        resource["transaction_id"],
        10_000,
        None,  # never a sale: the day's sales do not count it
        0,
    )
    assert late.paid_after_close
    assert "refund L" in late.review_reason
    refunds = list(db.session.execute(select(Refund).where(Refund.order_id == order.id)).scalars())
    assert [(r.out_refund_no, r.amount_fen, r.status, r.reason) for r in refunds] == [
        (late_refund_no(late), 10_000, "pending", LATE_REFUND_REASON)
    ]
    assert owed() == (10_000, -10_000)
    assert count(LedgerEntry) == 1
    assert count(Rebate) == count(Payout) == 0
    assert alerts() == ["paid_after_close"]
    assert check_ledger().ok


def test_the_refund_of_a_late_payment_takes_the_money_back_out_once(app, client, make_order, no_network):
    order = paid_late(app, client, make_order)
    resource = refund_resource(app, order, late_refund_no(order), 10_000)

    first = deliver_refund(client, app, resource)
    again = deliver_refund(client, app, resource)

    assert (first.status_code, again.status_code) == (204, 204)
    db.session.rollback()
    done = db.session.get(Order, order.id)
    assert (done.status, done.refunded_fen) == ("closed", 10_000)
    assert db.session.execute(select(Refund.status)).scalars().all() == ["succeeded"]
    assert owed() == (0, 0)
    assert count(LedgerEntry) == 2
    assert count(Rebate) == count(Payout) == 0
    assert check_ledger().ok


def test_a_late_refund_told_with_another_amount_is_flagged_and_moves_nothing(app, client, make_order, no_network):
    order = paid_late(app, client, make_order)

    answer = deliver_refund(client, app, refund_resource(app, order, late_refund_no(order), 9_000))

    assert answer.status_code == 400
    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 0
    assert owed() == (10_000, -10_000)
    assert "refund_amount_mismatch" in alerts()


def test_a_closed_order_never_paid_still_cannot_be_refunded(app, make_order):
    order = closed(make_order)

    try:
        begin_refund(order, "R-NEVER-PAID", 100)
    except StateConflict as exc:
        assert exc.code == "order_not_refundable"
    else:
        raise AssertionError("a closed, unpaid order was refunded")


def test_an_operator_may_refund_a_late_payment_again_after_wechat_closed_the_first_refund(app, make_order):
    order = closed(make_order)
    pay_as_wechat(order.out_trade_no, "tx-late", 10_000, utcnow())
    db.session.commit()
    fail_refund(late_refund_no(order), "closed", utcnow())  # WeChat closed it: the money is still owed back
    db.session.commit()

    try:
        begin_refund(order, "R-AGAIN-TOO-MUCH", 10_001)
    except Invalid as exc:
        assert exc.code == "refund_amount"
    else:
        raise AssertionError("more than was paid was refunded")
    again = begin_refund(order, "R-AGAIN", 10_000, "again")
    db.session.commit()

    assert (again.status, again.amount_fen) == ("pending", 10_000)
    assert owed() == (10_000, -10_000)


def test_a_second_late_transaction_is_flagged_and_books_nothing_more(app, make_order):
    order = closed(make_order)
    pay_as_wechat(order.out_trade_no, "tx-late", 10_000, utcnow())
    db.session.commit()

    outcome = pay_as_wechat(order.out_trade_no, "tx-other", 10_000, utcnow())
    db.session.commit()

    assert outcome == "paid_after_close"
    assert count(LedgerEntry) == 1
    assert count(Refund) == 1
    assert alerts() == ["paid_after_close", "second_payment"]


def test_a_partner_order_paid_after_close_is_refunded_without_touching_the_platforms_books(app, make_order):
    order = make_order(10_000)
    order.sub_mchid = "1900000109"  # paid to the merchant's own sub-merchant account at WeChat
    close_order(order, utcnow())
    db.session.commit()

    assert pay_as_wechat(order.out_trade_no, "tx-late", 10_000, utcnow()) == "paid_after_close"
    db.session.commit()
    assert db.session.execute(select(Refund.amount_fen)).scalars().all() == [10_000]
    assert count(LedgerEntry) == 0

    from rebate import apply_refund

    apply_refund(order.out_trade_no, late_refund_no(order), 10_000, utcnow(), money=app_money())
    db.session.commit()
    assert db.session.get(Order, order.id).refunded_fen == 10_000
    assert count(LedgerEntry) == 0


def test_the_trade_bill_agrees_with_a_late_payment_and_its_refund(app, make_order):
    order = closed(make_order)
    pay_as_wechat(order.out_trade_no, "tx-late", 10_000, utcnow())
    db.session.commit()
    refund = db.session.execute(select(Refund)).scalar_one()
    lines = [
        TradeLine(1, order.out_trade_no, "SUCCESS", 10_000, 10_000, "", 0, ""),
        TradeLine(2, order.out_trade_no, "REFUND", 10_000, 10_000, refund.out_refund_no, 10_000, "SUCCESS"),
    ]
    refund.status = "succeeded"

    matching = match_trade(lines, {order.out_trade_no: order}, {refund.out_refund_no: refund}, (set(), set()))

    assert (matching.findings, matching.matched) == ([], 2)


def test_the_days_figures_count_no_sale_and_no_refund_for_a_late_payment(app, client, make_order, no_network):
    order = paid_late(app, client, make_order)
    assert deliver_refund(client, app, refund_resource(app, order, late_refund_no(order), 10_000)).status_code == 204
    db.session.rollback()
    refund = db.session.execute(select(Refund)).scalar_one()

    rollup = roll_up_day(beijing_day(refund.finished_at))

    assert [r for r in rollup.rows() if r["metric"] in ("sales", "refunds", "influenced_refunds")] == []


def test_the_late_refunds_number_carries_the_environments_prefix(app, make_order):
    from dataclasses import replace

    from flask import current_app

    from rebate import PayAccount, apply_payment
    from tests.payment_helpers import wechat_payment

    order = closed(make_order)
    tx = wechat_payment(order.out_trade_no, "tx-late", 10_000, success_time=utcnow())
    staging = replace(app_money(), number_prefix="S")

    assert apply_payment(tx, PayAccount.from_config(current_app.config), utcnow(), money=staging) == "paid_after_close"
    db.session.commit()

    assert db.session.execute(select(Refund.out_refund_no)).scalars().all() == [f"SL{order.id}"]


def test_a_late_refund_is_not_the_merchants_pending_refund_in_its_statement(app, make_order):
    from insights.statements import merchant_statement
    from models import Merchant
    from models.base import beijing

    order = closed(make_order)
    pay_as_wechat(order.out_trade_no, "tx-late", 10_000, utcnow())
    db.session.commit()

    month = beijing(utcnow()).strftime("%Y-%m")
    statement = merchant_statement(db.session.get(Merchant, order.merchant_id), month, "direct", "/entries")
    assert statement["in_flight"]["refunds_pending"]["refund_ids"] == []
