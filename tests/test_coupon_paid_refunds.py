"""Orders paid partly with a WeChat Pay coupon (``payer_total`` below ``total``), refunded as WeChat refunds them.

WeChat refunds up to the order's total and splits each refund between the buyer and the coupon in proportion.
The rebate base is what the buyer paid (``paid_fen``), and what is left of it after refunds is its unrefunded
share, rounded down (``money.left_after_refunds``). Before, the refund limit was ``paid_fen``: a full refund of
a coupon-paid order, which WeChat allows, was refused and flagged. Signed and encrypted as WeChat does."""

from __future__ import annotations

import pytest
from flask import current_app
from sqlalchemy import select

from ledger import account, balance, check_ledger
from models import AccountKind, Alert, Order, Refund, db, net_paid_sql, utcnow
from money import left_after_refunds
from rebate import PayAccount, apply_payment, apply_refund, begin_refund, create_order, issue_packet
from rebate.errors import Invalid
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_refunds import rebate_of
from tests.test_wallet import buy, fund, wallet_of
from tests.test_wechat_callbacks import (  # noqa: F401 - fixtures
    deliver,
    deliver_refund,
    make_order,
    no_network,
    refund_resource,
    transaction_resource,
)

K = AccountKind


def test_what_is_left_of_a_payment_is_its_unrefunded_share_rounded_down():
    assert left_after_refunds(80_00, 100_00, 0) == 80_00  # nothing refunded
    assert left_after_refunds(80_00, 100_00, 100_00) == 0  # all of it
    assert left_after_refunds(80_00, 100_00, 50_00) == 40_00  # half of what WeChat charged: half the buyer's part
    assert left_after_refunds(99, 100, 1) == 98  # 98.01 rounded down
    assert left_after_refunds(100_00, 100_00, 37_00) == 63_00  # no coupon: simply what is left
    assert left_after_refunds(0, 0, 0) == 0  # paid from the wallet alone


def coupon_paid(order: Order, coupon_fen: int) -> str:
    """WeChat says the order was paid, ``coupon_fen`` of it by a WeChat Pay coupon."""
    tx = wechat_payment(
        order.out_trade_no,
        f"tx-{order.out_trade_no}",
        order.payable_fen,
        success_time=utcnow(),
        payer_total_fen=order.payable_fen - coupon_fen,
    )
    outcome = apply_payment(tx, PayAccount.from_config(current_app.config), utcnow(), money=app_money())
    db.session.commit()
    return outcome


def signed_coupon_payment(app, client, order: Order, payer_total: int) -> Order:
    """WeChat's signed notification that ``order`` was paid, ``payer_total`` of it by the buyer (a coupon the rest)."""
    paid = transaction_resource(app, order)
    paid["amount"] = {**paid["amount"], "payer_total": payer_total}
    assert deliver(client, app, paid).status_code == 204
    db.session.rollback()
    return db.session.get(Order, order.id)


def signed_coupon_refund(app, client, order: Order, number: str, fen: int, payer_refund: int) -> int:
    """WeChat's signed REFUND.SUCCESS of ``fen`` (``payer_refund`` of it to the buyer); the answer's status."""
    told = refund_resource(app, order, number, fen)
    told["amount"] = {**told["amount"], "payer_total": order.paid_fen, "payer_refund": payer_refund}
    return deliver_refund(client, app, told).status_code


def test_a_coupon_paid_order_is_refunded_whole_through_signed_callbacks(app, client, make_order, no_network):
    # given: 100 yuan charged, 80 paid by the buyer and 20 by a WeChat Pay coupon
    order = make_order(100_00)
    order = signed_coupon_payment(app, client, order, 80_00)
    assert (order.payable_fen, order.paid_fen) == (100_00, 80_00)
    begin_refund(order, "R-COUPON-ALL", 100_00, "returned")  # all of what WeChat charged: allowed now
    db.session.commit()
    # when
    answer = signed_coupon_refund(app, client, order, "R-COUPON-ALL", 100_00, payer_refund=80_00)
    # then
    assert answer == 204
    db.session.rollback()
    done = db.session.get(Order, order.id)
    assert (done.status, done.refunded_fen, done.net_paid_fen) == ("refunded", 100_00, 0)
    assert db.session.execute(select(Refund.status)).scalars().all() == ["succeeded"]
    assert db.session.execute(select(Alert.kind)).scalars().all() == []
    assert balance(account(K.WECHAT_SETTLEMENT)) == 0  # the sale's 100 yuan all went back out
    assert check_ledger().ok


def test_a_refund_of_a_coupon_paid_order_started_at_wechat_is_applied_not_flagged(app, client, make_order, no_network):
    order = make_order(100_00)
    order = signed_coupon_payment(app, client, order, 80_00)
    # begun at the merchant platform
    assert signed_coupon_refund(app, client, order, "MERCHANT-PLATFORM-1", 90_00, payer_refund=72_00) == 204

    db.session.rollback()
    done = db.session.get(Order, order.id)
    assert (done.status, done.refunded_fen, done.net_paid_fen, done.review_reason) == ("paid", 90_00, 8_00, None)


def test_more_than_wechat_charged_is_still_refused(app, make_order):
    order = make_order(100_00)
    assert coupon_paid(order, 20_00) == "applied"

    with pytest.raises(Invalid) as refused:
        begin_refund(order, "R-TOO-MUCH", 100_01)

    assert refused.value.code == "refund_amount"
    assert "1 to 10000 fen" in str(refused.value)


def test_a_coupon_paid_orders_rebate_is_clawed_back_on_the_buyers_part(make_user, make_product, make_campaign):
    # given: a 5 % consumer rebate on what the buyer paid; 100 yuan charged, 80 paid, so 4 yuan earned
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref=f"coupon:{user.id}", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=110_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert coupon_paid(order, 20_00) == "applied"
    assert rebate_of(order).amount_fen == 4_00
    # when: half of what WeChat charged is refunded (40 of the buyer's 80)
    begin_refund(order, "R-HALF", 50_00)
    apply_refund(order.out_trade_no, "R-HALF", 50_00, utcnow(), money=app_money())
    db.session.commit()
    # then: the rebate is 5 % of the 40 left, not of 80 - 50 = 30
    assert order.net_paid_fen == 40_00
    assert rebate_of(order).amount_fen == 2_00
    assert balance(account(K.USER_CASH, "user", user.id)) == 2_00
    assert check_ledger().ok


def test_the_wallets_share_comes_back_in_proportion_to_what_wechat_charged(make_user, make_product):
    # given: 10 yuan from the balance, 90 charged by WeChat of which a coupon paid 30
    nina = make_user()
    fund(nina, cash_fen=10_00)
    order = buy(nina, make_product(price_fen=100_00), balance_fen=10_00)
    assert order.payable_fen == 90_00
    assert coupon_paid(order, 30_00) == "applied"
    # when: a third of what WeChat charged is refunded
    begin_refund(order, "R-THIRD", 30_00)
    apply_refund(order.out_trade_no, "R-THIRD", 30_00, utcnow(), money=app_money())
    db.session.commit()
    # then: a third of the balance comes back (not half, as 30 of the buyer's 60 would say)
    assert wallet_of(nina)[0] == 3_33
    assert check_ledger().ok


def test_the_sql_of_what_is_left_agrees_with_the_orders_own(app, make_order):
    cases = [(100_00, 0, 0), (100_00, 20_00, 0), (100_00, 20_00, 50_00), (100_00, 1, 99_99), (100_00, 20_00, 100_00)]
    orders = []
    for charged, coupon, refunded in cases:
        order = make_order(charged)
        assert coupon_paid(order, coupon) == "applied"
        order.refunded_fen = refunded
        orders.append(order)
    db.session.commit()

    ids = [o.id for o in orders]
    in_sql = dict(db.session.execute(select(Order.id, net_paid_sql()).where(Order.id.in_(ids))).all())

    assert in_sql == {o.id: o.net_paid_fen for o in orders}
    assert sorted(in_sql.values()) == [0, 0, 40_00, 80_00, 100_00]


def test_an_order_refunded_up_to_its_buyers_part_before_counts_nothing_left(app, make_order):
    # given: a coupon-paid order marked refunded when the refund limit was what the buyer paid
    order = make_order(100_00)
    assert coupon_paid(order, 20_00) == "applied"
    order.refunded_fen, order.status = 80_00, "refunded"
    db.session.commit()

    in_sql = db.session.execute(select(net_paid_sql()).where(Order.id == order.id)).scalar_one()

    assert (order.net_paid_fen, in_sql) == (0, 0)


def test_what_is_left_of_a_very_large_order_is_counted_in_sql_without_overflow(app, make_order, monkeypatch):
    import rebate.orders

    # (WeChat takes at most 2**31 - 1 fen a payment; the books' sums, over many orders, go far past it: the SQL is
    # tested here on one order at the ledger's scale)
    monkeypatch.setattr(rebate.orders, "MAX_WECHAT_PAYMENT_FEN", 10**13)
    order = make_order(5 * 10**12)  # 50 billion yuan: MAX_FEN is 10**13
    assert coupon_paid(order, 0) == "applied"
    order.refunded_fen = 10**12
    db.session.commit()

    in_sql = db.session.execute(select(net_paid_sql()).where(Order.id == order.id)).scalar_one()

    assert in_sql == order.net_paid_fen == 4 * 10**12


@pytest.mark.parametrize(("settled", "finding"), [(100_00, None), (80_00, "amount_differs")])
def test_the_trade_bill_settles_a_coupon_paid_order_as_the_books_do(app, make_order, settled, finding):
    from payouts.bill_lines import TradeLine
    from payouts.reconcile import match_trade

    order = make_order(100_00)
    assert coupon_paid(order, 20_00) == "applied"
    line = TradeLine(1, order.out_trade_no, "SUCCESS", 100_00, settled, "", 0, "")

    matching = match_trade([line], {order.out_trade_no: order}, {}, (set(), set()))

    assert [f.kind for f in matching.findings] == ([] if finding is None else [finding])


def test_the_days_refunds_count_the_buyers_part_as_sales_count_the_buyers_payment(app, client, make_order, no_network):
    from insights.rollups import beijing_day, roll_up_day

    order = make_order(100_00)
    order = signed_coupon_payment(app, client, order, 80_00)
    assert signed_coupon_refund(app, client, order, "MERCHANT-PLATFORM-2", 100_00, payer_refund=80_00) == 204
    db.session.rollback()
    order = db.session.get(Order, order.id)

    refund = db.session.execute(select(Refund)).scalar_one()

    def figure(day, metric: str) -> int:
        rows = roll_up_day(beijing_day(day)).rows()
        return sum(
            r["fen"] for r in rows if (r["merchant_id"], r["metric"], r["dim"]) == (order.merchant_id, metric, "")
        )

    assert (figure(order.paid_at, "sales"), figure(refund.finished_at, "refunds")) == (80_00, 80_00)


def test_an_order_total_rebate_keeps_the_goods_value_left_of_what_wechat_charged(
    make_user, make_product, make_campaign
):
    # given: 8 % of the order total in points (50 yuan: 40 charged after a 10-yuan packet), all but 1 fen paid by a
    # coupon (a cash rebate could not be more than the buyer paid: points can)
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 800, "form": "points", "cap_fen": 20_00, "base": "order_total"}]},
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref=f"total:{user.id}", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=50_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert coupon_paid(order, order.payable_fen - 1) == "applied"
    assert rebate_of(order).amount_fen == 4_00
    # when: 1 fen of the 40 yuan charged is refunded
    begin_refund(order, "R-ONE-FEN", 1)
    apply_refund(order.out_trade_no, "R-ONE-FEN", 1, utcnow(), money=app_money())
    db.session.commit()
    # then: 8 % of the 49.98 yuan of goods left (not of the buyer's 0 fen left, scaled up)
    assert order.net_total_fen == 49_98
    assert rebate_of(order).amount_fen == 3_99
