"""Probing refunds of orders that paid rebates: partial and repeated refunds, points worth more than a fen, clawbacks
and the debts they leave, checked against the ledger after every step. Amounts in comments are yuan; asserted: fen."""

from __future__ import annotations

from sqlalchemy import func, select

from ledger import Leg, account, balance, check_ledger, post_entry
from models import AccountKind, Rebate, RebateAdjustment, Receivable, db, utcnow
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money

K = AccountKind


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def refund(order, number, amount_fen) -> None:
    begin_refund(order, number, amount_fen)
    apply_refund(order.out_trade_no, number, amount_fen, utcnow(), refund_id=f"wx-{number}", money=app_money())
    db.session.commit()
    db.session.refresh(order)


def ledger_ok() -> None:
    report = check_ledger(app_money().point_value_fen)
    assert report.ok, report.violations


def owed(user) -> int:
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(Receivable.outstanding_fen), 0)).where(
                Receivable.beneficiary_type == "user", Receivable.beneficiary_id == user.id
            )
        ).scalar_one()
    )


def committed(campaign) -> int:
    db.session.refresh(campaign)
    return campaign.budget_committed_fen


def points_order(make_user, make_product, make_campaign, pay):
    """5 % of a 100.01-yuan order (a 1-fen packet on it) to points worth 1 yuan each: 5 yuan, 5 points."""
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "points", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=1,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref="p", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_01).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    rebate = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
    assert (rebate.amount_fen, rebate.points, bal(K.USER_POINTS, "user", user.id)) == (5_00, 5, 5)
    return campaign, user, order, rebate


def test_a_point_taken_back_by_a_small_refund_that_the_person_spent_is_owed_at_its_value(
    app, make_user, make_product, make_campaign, pay
):
    # given: a point is worth 1 yuan; 5 yuan of rebate bought 5 points, all spent since
    app.config["POINT_VALUE_FEN"] = 1_00
    campaign, user, order, rebate = points_order(make_user, make_product, make_campaign, pay)
    post_entry(
        "spent", "points spent", [Leg(account(K.USER_POINTS, "user", user.id), -5), Leg(account(K.POINTS_ISSUANCE), 5)]
    )
    db.session.commit()

    # when: 20 fen of the 100.01 paid is refunded: the rebate's new amount, 4.99 yuan, buys 4 points
    refund(order, "P1", 20)

    # then: the point taken is one the person no longer holds: they owe exactly it, at its value (1 yuan), as the
    # ledger check and the settling of debts reckon a points balance below zero (before: 1 fen owed for a point
    # worth 1 yuan, and the ledger check failed); the rebate keeps what its 4 points are worth
    db.session.refresh(rebate)
    assert (rebate.amount_fen, rebate.points) == (4_00, 4)
    assert bal(K.USER_POINTS, "user", user.id) == -1
    assert owed(user) == 1_00
    adjustment = db.session.execute(select(RebateAdjustment).filter_by(rebate_id=rebate.id)).scalar_one()
    assert (adjustment.amount_fen, adjustment.recovered_fen, adjustment.receivable_fen) == (1_00, 0, 1_00)
    assert committed(campaign) == 1 + 5_00  # the packet, the rebate (4 yuan) and what is owed (1 yuan)
    ledger_ok()

    # and: the rest refunded, all 5 points are owed, at their value, and nothing more stays committed
    refund(order, "P2", order.payable_fen - order.refunded_fen)
    db.session.refresh(rebate)
    assert (rebate.amount_fen, rebate.points, rebate.status) == (0, 0, "clawed_back")
    assert (bal(K.USER_POINTS, "user", user.id), owed(user), committed(campaign)) == (-5, 5_00, 5_00)
    ledger_ok()


def test_a_point_the_person_still_holds_is_taken_back_for_what_the_refund_takes_as_before(
    app, make_user, make_product, make_campaign, pay
):
    # given: the same 5 points, still held
    app.config["POINT_VALUE_FEN"] = 1_00
    campaign, user, order, rebate = points_order(make_user, make_product, make_campaign, pay)

    # when: 20 fen is refunded
    refund(order, "H1", 20)

    # then: the point comes back from what they hold; the rebate is its new amount, nothing is owed
    db.session.refresh(rebate)
    assert (rebate.amount_fen, rebate.points, bal(K.USER_POINTS, "user", user.id), owed(user)) == (4_99, 4, 4, 0)
    assert committed(campaign) == 1 + 4_99  # the packet and the rebate
    ledger_ok()


def test_a_payout_sent_again_while_a_refund_of_its_order_is_pending_waits_for_the_refund(
    app, make_user, make_product, make_campaign, pay
):
    from models import Payout
    from payouts.rails import Outcome, RailResult
    from payouts.record import DispatchSettings, apply_result
    from payouts.transitions import mark_sent, move

    # given: 5 yuan of change on a 100-yuan order; its transfer was handed to WeChat when the refund of the whole
    # order began (so the refund could not hold it)
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=1,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref="c", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_01).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    [payout] = db.session.execute(select(Payout).filter_by(order_id=order.id)).scalars()
    assert (payout.amount_fen, payout.status) == (5_00, "pending")
    move(payout, "sending")
    mark_sent(payout, utcnow())
    db.session.commit()
    begin_refund(order, "C1", order.payable_fen)
    db.session.commit()

    # when: WeChat fails that transfer for good: the dispatcher queues it again under a new number
    apply_result(
        payout, RailResult(Outcome.FAILED, "FAIL", "bank refused"), utcnow(), DispatchSettings(money=app_money())
    )
    db.session.commit()

    # then: the new payout waits for the refund, as every unsent payout of the order does
    retry = db.session.execute(select(Payout).filter_by(retry_of_id=payout.id)).scalar_one()
    assert (retry.status, retry.held) == ("pending", True)

    # and: the refund succeeds: the payout never leaves; nothing is owed
    apply_refund(order.out_trade_no, "C1", order.payable_fen, utcnow(), refund_id="wx-C1", money=app_money())
    db.session.commit()
    db.session.refresh(retry)
    assert retry.status == "cancelled"
    assert (owed(user), bal(K.USER_CASH, "user", user.id)) == (0, 0)
    ledger_ok()


def change_rebate(make_user, make_product, make_campaign, pay):
    """5 yuan of change on a 100.01-yuan order (a 1-fen packet on it), its transfer queued."""
    from models import Payout

    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=1,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref="c", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_01).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    [payout] = db.session.execute(select(Payout).filter_by(order_id=order.id)).scalars()
    assert (payout.amount_fen, payout.status) == (5_00, "pending")
    return campaign, user, order, payout


def test_a_transfer_still_waiting_for_the_persons_confirmation_is_cancelled_when_a_refund_takes_it_back(
    app, make_user, make_product, make_campaign, pay
):
    from payouts.rails import Outcome, RailResult
    from payouts.record import DispatchSettings, apply_result
    from payouts.transitions import mark_sent, move
    from rebate.covered_debts import settle_covered

    # given: the 5-yuan transfer bill was offered to the person, who has not confirmed it (the money has not left)
    campaign, user, order, payout = change_rebate(make_user, make_product, make_campaign, pay)
    move(payout, "sending")
    mark_sent(payout, utcnow())
    move(payout, "waiting_user_confirm")
    payout.package_info = '{"package": "p"}'
    db.session.commit()

    # when: the whole order is refunded
    refund(order, "W1", order.payable_fen)

    # then: the bill is to be cancelled at WeChat (the dispatcher's next pass), not left for the person to confirm
    # while they owe all of it back
    db.session.refresh(payout)
    assert (payout.status, payout.cancel_requested) == ("waiting_user_confirm", True)
    assert (bal(K.USER_CASH, "user", user.id), owed(user)) == (-5_00, 5_00)
    ledger_ok()

    # and: WeChat cancels it: the money is back in the balance and settles what was owed, nothing left over
    move(payout, "sending")
    apply_result(payout, RailResult(Outcome.CANCELLED, "CANCELLED", ""), utcnow(), DispatchSettings(money=app_money()))
    settle_covered(user.id, app_money().point_value_fen)
    db.session.commit()
    assert (payout.status, bal(K.USER_CASH, "user", user.id), owed(user)) == ("cancelled", 0, 0)
    assert committed(campaign) == 0
    ledger_ok()


def test_a_transfer_waiting_for_confirmation_stays_offered_when_the_balance_covers_the_clawback(
    app, make_user, make_product, make_campaign, pay
):
    from payouts.transitions import mark_sent, move
    from tests.test_wallet import fund

    # given: the bill offered, and 10 yuan in the person's balance besides
    campaign, user, order, payout = change_rebate(make_user, make_product, make_campaign, pay)
    move(payout, "sending")
    mark_sent(payout, utcnow())
    move(payout, "waiting_user_confirm")
    payout.package_info = '{"package": "p"}'
    db.session.commit()
    fund(user, cash_fen=10_00)

    # when: the whole order is refunded
    refund(order, "W2", order.payable_fen)

    # then: the balance covers the 5 yuan taken back: nothing is owed, and the bill stays theirs to confirm
    db.session.refresh(payout)
    assert (payout.status, payout.cancel_requested) == ("waiting_user_confirm", False)
    assert (bal(K.USER_CASH, "user", user.id), owed(user)) == (5_00, 0)
    ledger_ok()
