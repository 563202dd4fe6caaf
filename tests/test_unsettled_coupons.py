"""Orders paid partly with a 免充值 coupon (``promotion_detail`` type NOCASH): WeChat never settles the coupon's part.

Its 应结订单金额 is the order total less the coupon, so the books take that part from the merchant of record that
funded it at WeChat (direct mode: the platform's marketing fund; service-provider mode: the sub-merchant, whose frozen
money is the settled part only), give it back to the coupon in proportion as the order is refunded, and the
reconciliation matches the trade bill. A 充值型 (CASH) coupon is settled by WeChat as before
(tests/test_coupon_paid_refunds.py). Signed and encrypted as WeChat does."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ledger import account, balance, check_ledger
from models import AccountKind, LedgerEntry, Order, db
from money import unsettled_share
from rebate import begin_refund
from tests.test_paid_after_close import closed, late_refund_no
from tests.test_wechat_callbacks import (  # noqa: F401 - fixtures
    deliver,
    deliver_refund,
    make_order,
    no_network,
    refund_resource,
    transaction_resource,
)

K = AccountKind


def promotions(*coupons: tuple[str, int]) -> list[dict]:
    return [
        {"coupon_id": f"C{i}", "name": "满100减", "scope": "GLOBAL", "type": kind, "amount": fen, "stock_id": "S1"}
        for i, (kind, fen) in enumerate(coupons)
    ]


def paid_with(app, client, order: Order, *coupons: tuple[str, int]):
    """WeChat's signed notification: the buyer paid what the coupons did not."""
    resource = transaction_resource(app, order, promotion_detail=promotions(*coupons))
    resource["amount"]["payer_total"] = order.payable_fen - sum(fen for _, fen in coupons)
    return deliver(client, app, resource)


def books() -> dict[str, int]:
    db.session.rollback()
    kinds = (K.WECHAT_SETTLEMENT, K.PLATFORM_MARKETING_FUND)
    return {k.value: balance(account(k)) for k in kinds}


def refunded(app, client, order: Order, number: str, fen: int) -> int:
    begin_refund(order, number, fen, "returned")
    db.session.commit()
    return deliver_refund(client, app, refund_resource(app, order, number, fen)).status_code


def test_the_unsettled_share_of_refunds_adds_up_to_the_coupon():
    assert unsettled_share(20_00, 100_00, 100_00, 100_00) == 20_00  # all at once
    parts = [unsettled_share(7, 100, done, fen) for done, fen in ((33, 33), (66, 33), (99, 33), (100, 1))]
    assert parts == [2, 2, 2, 1] and sum(parts) == 7  # rounded down on the running total: never more, never less
    assert unsettled_share(0, 100_00, 50_00, 50_00) == 0


def test_a_nocash_coupon_is_funded_by_the_platform_not_settled_by_wechat(app, client, make_order, no_network):
    # given: 100 yuan charged: 70 paid by the buyer, 20 by a 免充值 coupon, 10 by a 充值型 one
    order = make_order(100_00)
    before = books()
    # when
    assert paid_with(app, client, order, ("NOCASH", 20_00), ("CASH", 10_00)).status_code == 204
    # then: WeChat settles 80 yuan (the CASH coupon's part included); the platform funded the other 20
    done = db.session.get(Order, order.id)
    assert (done.status, done.paid_fen, done.unsettled_coupon_fen) == ("paid", 70_00, 20_00)
    after = books()
    assert after[K.WECHAT_SETTLEMENT] - before[K.WECHAT_SETTLEMENT] == -80_00
    assert after[K.PLATFORM_MARKETING_FUND] - before[K.PLATFORM_MARKETING_FUND] == -20_00
    assert balance(account(K.MERCHANT_PAYABLE, "merchant", done.merchant_id)) == 100_00  # the shop gets its price
    assert check_ledger().ok


def test_refunds_give_the_coupons_part_back_to_it_exactly(app, client, make_order, no_network):
    order = make_order(100_00)
    before = books()
    assert paid_with(app, client, order, ("NOCASH", 7)).status_code == 204
    order = db.session.get(Order, order.id)
    # when: three partial refunds, then the rest
    for i, fen in enumerate((33_33, 33_33, 33_33, 1)):
        assert refunded(app, client, db.session.get(Order, order.id), f"R-NOCASH-{i}", fen) == 204
    # then: everything back where it was, to the fen
    assert books() == before
    assert db.session.get(Order, order.id).status == "refunded"
    assert check_ledger().ok


def test_a_partial_refund_takes_only_the_settled_share_from_what_wechat_holds(app, client, make_order, no_network):
    order = make_order(100_00)
    assert paid_with(app, client, order, ("NOCASH", 20_00)).status_code == 204
    paid = books()
    assert refunded(app, client, db.session.get(Order, order.id), "R-HALF", 50_00) == 204
    after = books()
    assert after[K.WECHAT_SETTLEMENT] - paid[K.WECHAT_SETTLEMENT] == 40_00  # settlement_refund: 50 less 10
    assert after[K.PLATFORM_MARKETING_FUND] - paid[K.PLATFORM_MARKETING_FUND] == 10_00


@pytest.mark.parametrize(("settled", "finding"), [(80_00, None), (100_00, "amount_differs")])
def test_the_trade_bill_settles_the_order_less_its_nocash_coupon(app, client, make_order, no_network, settled, finding):
    from payouts.bill_lines import TradeLine
    from payouts.reconcile import match_trade

    order = make_order(100_00)
    assert paid_with(app, client, order, ("NOCASH", 20_00)).status_code == 204
    order = db.session.get(Order, order.id)
    line = TradeLine(1, order.out_trade_no, "SUCCESS", 100_00, settled, "", 0, "")

    matching = match_trade([line], {order.out_trade_no: order}, {}, (set(), set()))

    assert [f.kind for f in matching.findings] == ([] if finding is None else [finding])


def test_a_late_payment_with_a_nocash_coupon_owes_back_only_what_wechat_settled(app, client, make_order, no_network):
    order = closed(make_order)
    before = books()
    assert paid_with(app, client, order, ("NOCASH", 20_00)).status_code == 204
    assert balance(account(K.PAYMENTS_TO_RETURN)) == 80_00
    order = db.session.get(Order, order.id)
    told = refund_resource(app, order, late_refund_no(order), 100_00)
    assert deliver_refund(client, app, told).status_code == 204
    assert books() == before and balance(account(K.PAYMENTS_TO_RETURN)) == 0
    assert check_ledger().ok


@pytest.mark.parametrize(
    "promotion_detail",
    [
        "NOCASH",  # not a list
        [{"type": "NOCASH"}],  # no amount
        [{"type": "NOCASH", "amount": "20"}],  # a string
        [{"type": "NOCASH", "amount": -1}],
        [{"type": "NOCASH", "amount": 30_00}],  # more than the payer was spared (20 yuan)
        ["coupon"],
    ],
)
def test_a_bad_promotion_detail_is_refused_and_changes_nothing(app, client, make_order, no_network, promotion_detail):
    order = make_order(100_00)
    resource = transaction_resource(app, order, promotion_detail=promotion_detail)
    resource["amount"]["payer_total"] = 80_00
    entries = db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()

    answer = deliver(client, app, resource)

    assert answer.status_code == 400, answer.data
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "created"
    assert db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == entries


def test_the_order_trace_says_what_the_coupons_paid_and_who_funded_it(app, client, make_order, no_network):
    from insights.trace import _order_line

    order = make_order(100_00)
    assert paid_with(app, client, order, ("NOCASH", 20_00), ("CASH", 10_00)).status_code == 204
    line = _order_line(db.session.get(Order, order.id))
    assert "paid 70.00 yuan" in line and "coupons paid 30.00 yuan" in line and "(2000 fen) of it 免充值" in line


def test_the_statement_counts_only_the_settled_part_as_frozen_and_unfrozen(app, client, make_order, no_network):
    """What WeChat froze of a partner order is what it settled: the statement's unfrozen money leaves out the
    免充值 coupon's part of the payment and of the refunds begun before the share (review of 2026-12-02)."""
    from datetime import timedelta
    from types import SimpleNamespace

    from insights.statements import _frozen_when_sent
    from models import utcnow

    order = make_order(100_00)
    assert paid_with(app, client, order, ("NOCASH", 20_00)).status_code == 204
    share = SimpleNamespace(order_id=order.id, finished_at=utcnow() + timedelta(hours=1))
    assert _frozen_when_sent(share, 100_00, 20_00) == 80_00
    assert refunded(app, client, db.session.get(Order, order.id), "R-BEFORE-SHARE", 50_00) == 204
    assert _frozen_when_sent(share, 100_00, 20_00) == 80_00 - (50_00 - 10_00)
    assert _frozen_when_sent(share, 100_00) == 50_00  # no coupon: as before


def test_a_promotion_of_a_type_we_do_not_know_is_taken_as_settled(app, client, make_order, no_network):
    """Refusing it would leave money WeChat took unbooked: booked as settled, the reconciliation shows it if not."""
    order = make_order(100_00)
    assert paid_with(app, client, order, ("DISCOUNT", 20_00)).status_code == 204
    done = db.session.get(Order, order.id)
    assert (done.status, done.paid_fen, done.unsettled_coupon_fen) == ("paid", 80_00, 0)


@pytest.mark.parametrize("payer_total", [-100, -1, 100_01])
def test_a_payer_total_below_zero_or_above_the_total_is_refused(app, client, make_order, no_network, payer_total):
    """Found by the WeChat probe: -100 was accepted and the order paid with paid_fen -100 (every rebate skipped)."""
    order = make_order(100_00)
    resource = transaction_resource(app, order)
    resource["amount"]["payer_total"] = payer_total
    assert deliver(client, app, resource).status_code == 400
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "created"


def test_the_v2_spelling_of_a_nocash_coupon_is_one(app, client, make_order, no_network):
    order = make_order(100_00)
    assert paid_with(app, client, order, ("NO_CASH", 20_00)).status_code == 204
    assert db.session.get(Order, order.id).unsettled_coupon_fen == 20_00


def test_a_notification_id_reused_for_another_order_or_kind_is_applied_not_a_500_nor_dropped(
    app, client, make_order, no_network
):
    """Found by the WeChat probe: an id seen for order A failed order B's payment (500, retried for a day) and
    silently dropped A's refund notice carrying it. Now a repeat is the same id for the same order and kind."""
    first, second = make_order(100_00), make_order(50_00)
    shared = "EV-SHARED-1"
    assert deliver(client, app, transaction_resource(app, first), notification_id=shared).status_code == 204
    assert deliver(client, app, transaction_resource(app, second), notification_id=shared).status_code == 204
    db.session.rollback()
    assert db.session.get(Order, second.id).status == "paid"
    first = db.session.get(Order, first.id)
    begin_refund(first, "R-SHARED-ID", 10_00, "returned")
    db.session.commit()
    told = refund_resource(app, first, "R-SHARED-ID", 10_00)
    assert deliver_refund(client, app, told, notification_id=shared).status_code == 204
    db.session.rollback()
    assert db.session.get(Order, first.id).refunded_fen == 10_00
    # and a real repeat is still one
    assert deliver_refund(client, app, told, notification_id=shared).status_code == 204
    db.session.rollback()
    assert db.session.get(Order, first.id).refunded_fen == 10_00


def test_coupons_beyond_what_the_payer_was_spared_are_refused(app, client, make_order, no_network):
    order = make_order(100_00)  # 30 yuan of coupons for a payer spared 10
    resource = transaction_resource(app, order, promotion_detail=promotions(("CASH", 20_00), ("NOCASH", 10_00)))
    resource["amount"]["payer_total"] = 90_00
    assert deliver(client, app, resource).status_code == 400
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "created"


def test_a_payment_in_another_currency_is_flagged_and_moves_nothing(app, client, make_order, no_network):
    order = make_order(100_00)
    resource = transaction_resource(app, order)
    resource["amount"]["currency"] = "USD"
    answer = deliver(client, app, resource)
    assert answer.status_code == 400
    db.session.rollback()
    flagged = db.session.get(Order, order.id)
    assert flagged.status == "created" and "USD" in flagged.review_reason


@pytest.mark.parametrize(("settlement_refund", "alerted"), [(40_00, False), (39_99, True)])
def test_wechats_settlement_refund_is_checked_against_the_books_split(
    app, client, make_order, no_network, settlement_refund, alerted
):
    """A refund API answer says what WeChat took back of what it settled: an operator is told when the books split
    the refund otherwise (a coupon's share rounded another way); the books keep theirs."""
    from flask import current_app

    from models import Alert, utcnow
    from rebate import PayAccount, apply_refund_notice
    from tests.money_helpers import app_money
    from wechat.transactions import RefundNotice

    order = make_order(100_00)
    assert paid_with(app, client, order, ("NOCASH", 20_00)).status_code == 204
    order = db.session.get(Order, order.id)
    begin_refund(order, "R-SPLIT", 50_00, "returned")
    db.session.commit()
    answer = refund_resource(app, order, "R-SPLIT", 50_00)
    answer = {k: v for k, v in answer.items() if k != "refund_status"} | {"status": "SUCCESS"}
    answer["amount"] = {**answer["amount"], "settlement_refund": settlement_refund}
    account = PayAccount.from_config(current_app.config)
    outcome = apply_refund_notice(RefundNotice.parse(answer), account, utcnow(), money=app_money())
    db.session.commit()
    assert outcome == "success"
    kinds = db.session.execute(select(Alert.kind)).scalars().all()
    assert ("refund_split_differs" in kinds) == alerted
    assert books()[K.WECHAT_SETTLEMENT] == -80_00 + 40_00  # the books' split either way
