"""Payout edge cases where money could leave twice or turn into cash the rules never allowed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from ledger import account, balance
from models import AccountKind, Order, Payout, db, utcnow
from payouts.rails import Outcome, RailResult
from rebate import create_order, issue_packet
from rebate.orders import LineRequest
from tests.test_dispatch import ScriptedRail, ok, run
from tests.test_refunds import refund, story  # noqa: F401 - fixtures


class RecordingRail(ScriptedRail):
    def send(self, external_no, request):
        self.calls.append(("send", external_no, request["amount_fen"]))
        return self.send_answers.pop(0)


def test_a_refund_never_shrinks_a_payout_whose_request_wechat_may_hold(story):  # noqa: F811
    # given: a 5-yuan transfer that WeChat answered FREQUENCY_LIMITED (retry with the same number)
    campaign, user, _, order = story(form="wechat_change")
    [payout] = db.session.execute(select(Payout)).scalars().all()
    rail = RecordingRail(RailResult(Outcome.RETRY, "FREQUENCY_LIMITED", "slow down"), ok())
    run(rail)
    db.session.refresh(payout)
    assert (payout.status, payout.request["amount_fen"]) == ("pending", 5_00)

    # when: a 30 % refund claws back 1.50 while that number is still open
    refund(order, "R1", 30_00)

    # then: the payout keeps its amount and is resent identically; the clawback comes from the balance
    db.session.refresh(payout)
    assert payout.amount_fen == 5_00
    run(rail, at=utcnow() + timedelta(days=1))
    assert rail.calls[-1][1:] == (payout.external_no, 5_00)
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == -1_50  # owed back from the next rebate


class CouponRail(ScriptedRail):
    name = "wechat_coupon"


def test_a_refused_coupon_never_becomes_cash_beyond_what_was_paid(make_user, make_product, make_campaign, pay):
    # given: 50 % of the order total as a coupon on a 100-yuan order paid with a 99.99 packet (1 fen paid)
    campaign = make_campaign(
        {
            "roles": [
                {"role": "consumer", "rate_bps": 5000, "base": "order_total", "form": "wechat_coupon", "cap_fen": 50_00}
            ]
        },
        budget_limit_fen=1_000_00,
        packet_amount_fen=99_99,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="t", source_ref="1", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    [payout] = db.session.execute(select(Payout)).scalars().all()
    assert payout.amount_fen == 50_00  # a coupon is not cash: the paid cap does not apply

    # when: the coupon rail refuses it and the rule names no fallback
    run(CouponRail(RailResult(Outcome.FALLBACK, "RULE_LIMIT", "stock rule refuses")))

    # then: the money returns to the funder; the user holds no cash from it
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == 0
    assert balance(account(AccountKind.PLATFORM_MARKETING_FUND)) == -99_99  # only the packet's value


def test_a_coupon_that_may_fall_back_to_balance_is_capped_like_cash(make_user, make_product, make_campaign, pay):
    # given: the same rebate, but the rule falls back to balance when the coupon is refused
    campaign = make_campaign(
        {
            "roles": [
                {
                    "role": "consumer",
                    "rate_bps": 5000,
                    "base": "order_total",
                    "form": "wechat_coupon",
                    "fallback_form": "balance",
                    "cap_fen": 50_00,
                }
            ]
        },
        budget_limit_fen=1_000_00,
        packet_amount_fen=99_99,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="t", source_ref="1", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    # then: capped at what was paid (1 fen), since it may become cash
    order = db.session.get(Order, order.id)
    assert [p.amount_fen for p in db.session.execute(select(Payout)).scalars()] == [1]
    run(CouponRail(RailResult(Outcome.FALLBACK, "RULE_LIMIT", "stock rule refuses")))
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) <= order.paid_fen
