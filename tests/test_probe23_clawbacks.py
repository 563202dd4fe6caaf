"""Probe 23: clawbacks and the debts they leave (rebate/clawbacks.py, rebate/share_debts.py).

Fixed (the tests failed before the fix in ``rebate.clawbacks.take_back``):

- A WeChat coupon rebate its rail refused and credited to the person's balance instead (the rule's
  ``fallback_form: balance``) was never taken back: a refund treated it as "a coupon already sent", so after a full
  refund the person kept the 5 yuan as withdrawable cash and the campaign's budget stayed committed. It is now taken
  back as cash (from the balance, the rest a ``cash`` receivable settled later), before any coupon that may have
  been issued; a coupon actually issued is still not taken back nor owed.

Fixed in the payout layer (``payouts.record._after_taken_back``, the budget given back by ``rebate.clawbacks`` through
``payouts.transitions.on_funded_payout_returned``):

- A coupon rebate whose payout is at WeChat (sending / unknown) when its order is refunded in full stays the
  campaign's cost. When WeChat then fails the coupon, ``payouts.record`` sees the rebate taken back and returns the
  money to the coupon's *funder* (its source) without telling the rebate layer: the funder had the 5 yuan back, the
  budget stayed committed by them for ever.
- The same coupon refunded only in part (rebate 5 → 2 yuan) then failed: all 5 yuan go back to the funder and
  nothing was sent again, so the person never got the 2 yuan the rebate still says they earned (now sent anew).
"""

from __future__ import annotations

from sqlalchemy import select

from ledger import account, balance, check_ledger
from models import AccountKind, Campaign, Notice, Payout, Rebate, RebateAdjustment, Receivable, db, utcnow
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from payouts.transitions import mark_sent, move
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money

K = AccountKind
COUPON = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_coupon", "cap_fen": 20_00}]}


def ledger_ok() -> None:
    report = check_ledger(app_money().point_value_fen)
    assert report.ok, report.violations


def committed(campaign_id: int) -> int:
    db.session.expire_all()
    return db.session.get(Campaign, campaign_id).budget_committed_fen


def refund(order, number: str, amount_fen: int) -> None:
    begin_refund(order, number, amount_fen)
    apply_refund(order.out_trade_no, number, amount_fen, utcnow(), refund_id=f"wx-{number}", money=app_money())
    db.session.commit()
    db.session.refresh(order)


def coupon_at_wechat(make_user, make_product, make_campaign, pay):
    """A 5-yuan coupon rebate on a 100.01-yuan order (a 1-fen packet on it), its payout at WeChat, answer unknown."""
    campaign = make_campaign(COUPON, budget_limit_fen=100_00, packet_amount_fen=1)
    user = make_user()
    packet = issue_packet(campaign, user, source="test", source_ref="c", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_01).id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    [payout] = db.session.execute(select(Payout).filter_by(order_id=order.id)).scalars()
    assert (payout.rail, payout.amount_fen, payout.status) == ("wechat_coupon", 5_00, "pending")
    move(payout, "sending")
    mark_sent(payout, utcnow())
    move(payout, "unknown")
    db.session.commit()
    return campaign, user, order, payout


def fails(payout) -> None:
    apply_result(payout, RailResult(Outcome.FAILED, "FAIL", "no"), utcnow(), DispatchSettings(money=app_money()))
    db.session.commit()


def test_a_coupon_at_wechat_when_its_order_is_refunded_gives_its_budget_back_when_it_fails(
    make_user, make_product, make_campaign, pay
):
    # given: the order is refunded whole while its coupon is at WeChat: the coupon may have been issued, so it stays
    # the campaign's cost (the packet's 1 fen came back)
    campaign, _, order, payout = coupon_at_wechat(make_user, make_product, make_campaign, pay)
    funder = balance(account(K.PLATFORM_MARKETING_FUND))
    refund(order, "F1", order.payable_fen)
    assert committed(campaign.id) == 5_00
    # when: WeChat fails the coupon for good
    fails(payout)
    # then: it never left: its funder has the 5 yuan back, and so must the campaign's budget
    assert balance(account(K.PLATFORM_MARKETING_FUND)) == funder + 5_00 + 1
    assert committed(campaign.id) == 0
    ledger_ok()


def test_a_coupon_at_wechat_refunded_in_part_then_failed_still_pays_what_the_rebate_says_was_earned(
    make_user, make_product, make_campaign, pay
):
    # given: 60 of the 100.01 yuan are refunded while the coupon is at WeChat: the rebate is 2 yuan now
    campaign, user, order, payout = coupon_at_wechat(make_user, make_product, make_campaign, pay)
    refund(order, "P1", 60_00)
    rebate = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
    assert (rebate.amount_fen, rebate.status) == (2_00, "awarded")
    # when: WeChat fails the coupon for good
    fails(payout)
    # then: the person still gets the 2 yuan the rebate says they earned (sent again, or in their balance) ...
    others = db.session.execute(select(Payout).where(Payout.id != payout.id)).scalars().all()
    got = balance(account(K.USER_CASH, "user", user.id)) + sum(p.amount_fen for p in others if p.status != "cancelled")
    assert got == 2_00
    # ... and the budget is committed by exactly that (and the packet's 1 fen: the order is refunded in part only)
    assert committed(campaign.id) == 2_00 + 1
    ledger_ok()


def fell_back(make_user, make_product, make_campaign, pay):
    """A 5-yuan coupon rebate on a 100-yuan order (110 less a 10-yuan packet) that the coupon rail refused: the
    5 yuan were credited to the buyer's balance instead (the rule's fallback), withdrawable cash."""
    from tests.test_dispatch import run
    from tests.test_probe17_reports import CouponRail
    from tests.test_refunds import spend

    rule = {"role": "consumer", "rate_bps": 500, "form": "wechat_coupon", "fallback_form": "balance", "cap_fen": 20_00}
    campaign = make_campaign({"roles": [rule]}, budget_limit_fen=100_00, packet_amount_fen=10_00)
    user = make_user()
    order = spend(campaign, user, make_product(price_fen=110_00), pay)
    run(CouponRail(RailResult(Outcome.FALLBACK, "RULE_LIMIT", "stock rule refuses")))
    assert balance(account(K.USER_CASH, "user", user.id)) == 5_00
    return campaign, user, order


def cash_of(user) -> int:
    return balance(account(K.USER_CASH, "user", user.id))


def owed(user) -> int:
    db.session.expire_all()
    rows = db.session.execute(select(Receivable).filter_by(beneficiary_id=user.id)).scalars()
    return sum(r.outstanding_fen for r in rows if r.kind == "cash")


def test_a_coupon_that_fell_back_to_the_balance_is_taken_back_by_a_full_refund(
    make_user, make_product, make_campaign, pay
):
    campaign, user, order = fell_back(make_user, make_product, make_campaign, pay)
    fund = balance(account(K.PLATFORM_MARKETING_FUND))
    # when: the order is refunded in full
    refund(order, "F1", order.payable_fen)
    # then: the 5 yuan in the balance come back to the fund, and the budget with them (the packet's 10 too)
    assert cash_of(user) == 0
    assert balance(account(K.PLATFORM_MARKETING_FUND)) == fund + 5_00 + 10_00
    assert committed(campaign.id) == 0
    rebate = db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalar_one()
    assert (rebate.amount_fen, rebate.status) == (0, "clawed_back")
    adjustment = db.session.execute(select(RebateAdjustment).filter_by(rebate_id=rebate.id)).scalar_one()
    assert (adjustment.recovered_fen, adjustment.receivable_fen) == (5_00, 0)
    assert "not taken back" not in adjustment.reason
    told = db.session.execute(select(Notice).filter_by(event="rebate_clawed_back")).scalars().all()
    assert [n.facts["amount_fen"] for n in told] == [5_00]
    ledger_ok()


def test_a_coupon_fallen_back_to_a_balance_already_spent_leaves_a_cash_debt_settled_later(
    make_user, make_product, make_campaign, pay
):
    from ledger import Leg, post_entry
    from rebate.covered_debts import settle_covered

    campaign, user, order = fell_back(make_user, make_product, make_campaign, pay)
    # given: the buyer spent 3 of the 5 yuan (withdrawn, say)
    post_entry(
        "spent", "spent", [Leg(account(K.USER_CASH, "user", user.id), -3_00), Leg(account(K.WECHAT_SETTLEMENT), 3_00)]
    )
    db.session.commit()
    # when: the order is refunded in two halves
    refund(order, "H1", 50_00)
    assert (cash_of(user), owed(user)) == (0 - 50, 50)  # 2.50 taken back: 2 from the balance, 0.50 owed
    assert committed(campaign.id) == 10_00 + 2_50 + 50  # the packet, the rebate left, what is owed
    refund(order, "H2", 50_00)
    assert (cash_of(user), owed(user)) == (-3_00, 3_00)
    assert committed(campaign.id) == 3_00
    ledger_ok()
    # when: 3 yuan come back to the balance another way: the debt is settled, its budget back
    post_entry(
        "back", "back", [Leg(account(K.WECHAT_SETTLEMENT), -3_00), Leg(account(K.USER_CASH, "user", user.id), 3_00)]
    )
    settle_covered(user.id, app_money().point_value_fen)
    db.session.commit()
    assert (cash_of(user), owed(user), committed(campaign.id)) == (0, 0, 0)
    ledger_ok()


def test_a_coupon_issued_is_still_not_taken_back_nor_owed(make_user, make_product, make_campaign, pay):
    from tests.test_dispatch import ok, run
    from tests.test_probe17_reports import CouponRail
    from tests.test_refunds import spend

    rule = {"role": "consumer", "rate_bps": 500, "form": "wechat_coupon", "fallback_form": "balance", "cap_fen": 20_00}
    campaign = make_campaign({"roles": [rule]}, budget_limit_fen=100_00, packet_amount_fen=10_00)
    user = make_user()
    order = spend(campaign, user, make_product(price_fen=110_00), pay)
    run(CouponRail(ok("coupon-1")))
    refund(order, "F1", order.payable_fen)
    assert (cash_of(user), owed(user), committed(campaign.id)) == (0, 0, 5_00)
    ledger_ok()
