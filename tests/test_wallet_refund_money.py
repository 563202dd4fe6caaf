"""Probing the wallet and refunds as an attacker and a payment engineer would: partial refunds summing to the whole,
points valued at more than a fen, an order racing a refund for one balance, and bad refund requests.

The first three tests found a fault (``rebate.clawbacks._points_back``); the rest pin what was checked and found
sound, so it stays that way. Amounts in comments are yuan; everything asserted is fen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ledger import Leg, account, balance, check_ledger, post_entry
from models import (
    AccountKind,
    LedgerAccount,
    LedgerEntry,
    LedgerPosting,
    Order,
    Rebate,
    RebateAdjustment,
    Receivable,
    Refund,
    User,
    db,
    utcnow,
)
from payouts.operations import withdraw
from rebate import apply_refund, begin_refund, close_order, create_order, issue_packet
from rebate.orders import LineRequest
from rebate.wallet import WalletAsk
from tests.concurrency import together
from tests.money_helpers import app_money
from tests.test_wallet import fund

K = AccountKind


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def refund(order, number, amount_fen) -> None:
    begin_refund(order, number, amount_fen)
    apply_refund(order.out_trade_no, number, amount_fen, utcnow(), refund_id=f"wx-{number}", money=app_money())
    db.session.commit()
    db.session.refresh(order)


def ledger_ok() -> None:
    report = check_ledger()
    assert report.ok, report.violations


def owed(user) -> int:
    """What the person owes back, all kinds (fen)."""
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


# --- points worth more than a fen, clawed back -------------------------------------------------------------

POINTS_776 = {"roles": [{"role": "consumer", "rate_bps": 776, "form": "points", "cap_fen": 20_00}]}


@pytest.fixture
def points_rebate(app, make_user, make_product, make_campaign, pay):
    """A point is worth 3 fen; a 10-yuan packet on a 100-yuan order (90 paid) earns 7.76 % of it: 6.98 yuan, which
    buys 232 points (6.96 yuan: the award rounds down to whole points)."""
    app.config["POINT_VALUE_FEN"] = 3
    campaign = make_campaign(POINTS_776, budget_limit_fen=100_00, packet_amount_fen=10_00)
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref="points", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    rebate = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
    assert (order.payable_fen, rebate.amount_fen, rebate.points) == (90_00, 6_98, 232)
    assert bal(K.USER_POINTS, "user", user.id) == 232
    return campaign, user, order, rebate


def test_a_full_refund_of_a_points_rebate_leaves_no_debt_when_every_point_comes_back(points_rebate):
    # given: 232 points (6.98 yuan of rebate) the person still holds
    campaign, user, order, rebate = points_rebate

    # when: the whole order is refunded
    refund(order, "PF", 90_00)

    # then: every point is back; the 2 fen that never became a point are not a debt of the person, and the whole
    # rebate is back in the budget (before: a 2-fen receivable, and 2 fen kept committed, for a debt nobody has)
    db.session.refresh(rebate)
    assert (rebate.status, rebate.amount_fen, rebate.points) == ("clawed_back", 0, 0)
    assert bal(K.USER_POINTS, "user", user.id) == 0
    [adjustment] = db.session.execute(select(RebateAdjustment).filter_by(rebate_id=rebate.id)).scalars()
    assert (adjustment.amount_fen, adjustment.recovered_fen, adjustment.receivable_fen) == (6_98, 6_98, 0)
    assert owed(user) == 0
    assert committed(campaign) == 0
    ledger_ok()


def test_partial_refunds_keep_the_points_the_new_amount_buys_no_point_lost_to_rounding(points_rebate):
    # given: 232 points for 6.98 yuan
    campaign, user, order, rebate = points_rebate

    # when / then: after each partial refund the person keeps exactly what the rebate's new amount buys in whole
    # points (as the award converts), never a point less, and owes nothing (they hold every point taken)
    steps = [(17_00, 5_66, 188), (23_00, 3_88, 129), (11_00, 3_02, 100), (9_00, 2_32, 77)]
    for n, (amount, left_fen, points) in enumerate(steps):
        refund(order, f"PP{n}", amount)
        db.session.refresh(rebate)
        assert (rebate.amount_fen, rebate.points) == (left_fen, points), n
        assert left_fen // 3 == points  # (before: 128 after the second refund, 99 after the third, 76 ...)
        assert bal(K.USER_POINTS, "user", user.id) == points
        assert owed(user) == 0
        ledger_ok()

    # and: what each step recovered is what it took back, all told the rebate's whole fen amount at the end
    refund(order, "PPend", order.payable_fen - order.refunded_fen)
    db.session.refresh(rebate)
    assert (rebate.amount_fen, rebate.points) == (0, 0)
    recovered = db.session.execute(
        select(func.sum(RebateAdjustment.recovered_fen)).where(RebateAdjustment.rebate_id == rebate.id)
    ).scalar_one()
    assert recovered == 6_98
    assert (owed(user), committed(campaign), bal(K.USER_POINTS, "user", user.id)) == (0, 0, 0)
    ledger_ok()


def test_points_taken_beyond_what_the_person_holds_are_owed_in_fen_at_a_points_value(points_rebate):
    # given: the person spent all but 50 of the 232 points elsewhere
    campaign, user, order, rebate = points_rebate
    post_entry(
        "given:spent",
        "points spent elsewhere",
        [Leg(account(K.USER_POINTS, "user", user.id), -182), Leg(account(K.POINTS_ISSUANCE), 182)],
    )
    db.session.commit()

    # when: the whole order is refunded
    refund(order, "PS", 90_00)

    # then: 50 points come back from what they hold; 182 points (5.46 yuan) are owed, as the balance is below zero
    assert bal(K.USER_POINTS, "user", user.id) == -182
    [adjustment] = db.session.execute(select(RebateAdjustment).filter_by(rebate_id=rebate.id)).scalars()
    assert (adjustment.amount_fen, adjustment.recovered_fen, adjustment.receivable_fen) == (6_98, 6_98 - 5_46, 5_46)
    assert owed(user) == 5_46
    assert committed(campaign) == 5_46  # the budget keeps what was not recovered
    ledger_ok()


def test_a_point_valued_higher_since_the_award_is_still_taken_back_only_in_proportion(app, points_rebate):
    # given: 232 points for 6.98 yuan, awarded at 3 fen a point; a point is now worth 10 fen
    campaign, user, order, rebate = points_rebate
    app.config["POINT_VALUE_FEN"] = 10

    # when: half of what was paid is refunded (the rebate's new amount is 3.49 yuan)
    refund(order, "PV", 45_00)

    # then: half the points stay (116), not the 34 that 3.49 yuan buys at today's value
    db.session.refresh(rebate)
    assert (rebate.amount_fen, rebate.points) == (3_49, 116)
    assert bal(K.USER_POINTS, "user", user.id) == 116
    assert owed(user) == 0
    ledger_ok()


# --- partial refunds in any order add up to one full refund --------------------------------------------------


def every_balance() -> dict:
    rows = db.session.execute(
        select(LedgerAccount.code, func.sum(LedgerPosting.amount))
        .join(LedgerPosting, LedgerPosting.account_id == LedgerAccount.id)
        .group_by(LedgerAccount.code)
    ).all()
    return {code: int(total) for code, total in rows if total}


@pytest.mark.parametrize("form", ["balance", "points"])
@pytest.mark.parametrize("split", [[], [1], [3_33, 3_33], [50_00, 1, 7]], ids=["whole", "1fen", "thirds", "odd"])
def test_refunds_in_parts_end_where_one_full_refund_does(
    app, make_user, make_merchant, make_product, make_campaign, pay, form, split
):
    # given: a 99.97-yuan order with a 10.01 packet, 5.55 of balance and 211 points at 3 fen; the consumer earns
    # 7.77 % of the goods value, the merchant 10 % of what was paid
    app.config["POINT_VALUE_FEN"] = 3
    shop = make_merchant("odd amounts")
    product = make_product(shop, price_fen=99_97)
    rules = {
        "roles": [
            {"role": "consumer", "rate_bps": 777, "base": "order_total", "form": form, "cap_fen": 20_00},
            {"role": "issuer", "rate_bps": 1000, "base": "paid", "form": "merchant_credit", "cap_fen": 20_00},
        ]
    }
    campaign = make_campaign(
        rules,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=10_01,
        packet_merchant_id=shop.id,
        budget_limit_fen=100_00,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref="split", now=utcnow())
    fund(user, cash_fen=7_77, points=333)
    before = every_balance()
    order = create_order(
        user, [LineRequest(product.id, 1)], packet.id, utcnow(), wallet=WalletAsk(5_55, 211, point_value_fen=3)
    )
    db.session.commit()
    assert (order.balance_used_fen, order.points_used, order.points_value_fen) == (5_55, 211, 6_33)
    assert pay(order) == "applied"
    db.session.refresh(order)

    # when: refunded in the parts given, the last one the rest
    parts = [*split, order.payable_fen - sum(split)]
    for n, amount in enumerate(parts):
        refund(order, f"S{n}", amount)
        ledger_ok()

    # then: every account is where it was before the order, nothing owed, nothing committed
    assert (order.status, order.balance_returned_fen, order.points_returned) == ("refunded", 5_55, 211)
    assert every_balance() == before
    assert owed(user) == 0
    assert (committed(campaign), campaign.budget_reserved_fen) == (0, 0)


# --- an order and a refund racing for one balance ---------------------------------------------------------------


@pytest.mark.parametrize("rounds", range(2))
@pytest.mark.parametrize("other", ["order", "withdrawal"])
def test_a_refund_clawing_back_races_an_order_or_a_withdrawal_spending_the_balance(
    app, make_user, make_product, make_campaign, pay, other, rounds
):
    # given: a person who spent 5 yuan of balance on a 100-yuan order and earned 10 yuan to the balance; its full
    # refund (begun) will give the 5 back and claw the 10 back
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 1000, "base": "order_total", "form": "balance", "cap_fen": 20_00}]},
        packet_amount_fen=10_00,
        budget_limit_fen=100_00,
    )
    user = make_user()
    user_id, small_id = user.id, make_product(price_fen=50_00).id
    packet = issue_packet(campaign, user, source="test", source_ref="race", now=utcnow())
    fund(user, cash_fen=5_00)
    order = create_order(
        user, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow(), wallet=WalletAsk(5_00)
    )
    db.session.commit()
    assert pay(order) == "applied"
    assert bal(K.USER_CASH, "user", user_id) == 10_00
    begin_refund(order, "RACE", order.payable_fen)
    db.session.commit()
    out_trade_no, payable = order.out_trade_no, order.payable_fen

    # when: the refund's success and an order (or a withdrawal) spending all 10 yuan arrive together
    def work(i: int):
        if i == 0:
            return apply_refund(out_trade_no, "RACE", payable, utcnow(), refund_id="wx-RACE", money=app_money()).id
        person = db.session.get(User, user_id)
        if other == "withdrawal":
            return withdraw(person, 10_00, 1, f"race-{rounds}", money=app_money()).id
        return create_order(person, [LineRequest(small_id, 1)], None, utcnow(), wallet=WalletAsk(10_00)).id

    results = together(2, work, app=app)

    # then: the refund always applies; whatever the spend took is owed back, never lost: the balance is below zero
    # by exactly what is owed, and the ledger check holds
    assert not isinstance(results[0], Exception), results
    db.session.rollback()
    cash = bal(K.USER_CASH, "user", user_id)
    person = db.session.get(User, user_id)
    if isinstance(results[1], Exception):
        assert getattr(results[1], "code", None) == "insufficient_balance"
        assert (cash, owed(person)) == (5_00, 0)
    else:
        assert (cash, owed(person)) == (-5_00, 5_00)
    ledger_ok()


# --- refunds that must be refused, changing nothing ------------------------------------------------------------------


def test_refunds_of_unpaid_closed_or_refunded_orders_and_beyond_what_was_paid_change_nothing(
    make_user, make_product, pay
):
    user = make_user()
    fund(user, cash_fen=3_00, points=100)
    product = make_product(price_fen=10_00)
    unpaid = create_order(user, [LineRequest(product.id, 1)], None, utcnow(), wallet=WalletAsk(1_00, 10))
    closed = create_order(user, [LineRequest(product.id, 1)], None, utcnow(), wallet=WalletAsk(1_00, 10))
    db.session.commit()
    close_order(closed, utcnow())
    paid = create_order(user, [LineRequest(product.id, 1)], None, utcnow(), wallet=WalletAsk(1_00, 10))
    db.session.commit()
    pay(paid)
    db.session.refresh(paid)
    entries, refunds = db.session.query(LedgerEntry).count(), db.session.query(Refund).count()

    for order in (unpaid, closed):
        with pytest.raises(Exception) as refused:
            begin_refund(order, f"X{order.id}", 1)
        assert refused.value.code == "order_not_refundable"
        db.session.rollback()
    for amount in (0, -1, paid.payable_fen + 1):
        with pytest.raises(Exception) as refused:
            begin_refund(paid, f"Y{amount}", amount)
        assert refused.value.code == "refund_amount"
        db.session.rollback()

    assert (db.session.query(LedgerEntry).count(), db.session.query(Refund).count()) == (entries, refunds)
    assert db.session.get(Order, paid.id).balance_returned_fen == 0
    ledger_ok()


def test_the_ledger_check_values_a_negative_points_balance_at_a_points_worth(app, make_user, make_campaign):
    """182 points below zero at 3 fen a point are 546 fen owed back: a receivable of 182 fen explains a third."""
    user, campaign = make_user(), make_campaign(POINTS_776, budget_limit_fen=100_00, packet_amount_fen=10_00)
    post_entry(
        "given:points-taken",
        "points taken back beyond the balance",
        [Leg(account(K.USER_POINTS, "user", user.id), -182), Leg(account(K.POINTS_ISSUANCE), 182)],
    )
    owed = Receivable(beneficiary_type="user", beneficiary_id=user.id, kind="points", campaign_id=campaign.id)
    owed.outstanding_fen = 182
    db.session.add(owed)
    db.session.flush()
    (violation,) = check_ledger(point_value_fen=3).violations
    assert "is at -182 (worth -546 fen) but only 182 fen is owed back" in violation
    assert check_ledger(point_value_fen=1).ok  # a point worth a fen: 182 owed explains it
    owed.outstanding_fen = 546
    db.session.flush()
    assert check_ledger(point_value_fen=3).ok
    owed.outstanding_fen = 0  # (the app fixture checks the ledger again at the end, at the configured worth)
    post_entry(
        "given:points-back",
        "points back",
        [Leg(account(K.POINTS_ISSUANCE), -182), Leg(account(K.USER_POINTS, "user", user.id), 182)],
    )
    db.session.commit()
