"""Probes of the effect reports, their rollups, the trace and the what-if replay, checked against the money."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import func, select

from insights.reports import campaign_report
from insights.rollups import beijing_day
from jobs.insights import rebuild
from ledger import account, balance
from models import AccountKind, Campaign, Payout, RebateAdjustment, db, utcnow
from tests.test_dispatch import ScriptedRail, ok, run
from tests.test_refunds import refund, story  # noqa: F401 - fixtures

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}


class CouponRail(ScriptedRail):
    name = "wechat_coupon"


# -- a coupon that already left is not taken back by a refund: the report must not say it came back -----------


def test_a_sent_coupon_a_refund_cannot_take_back_stays_a_cost_of_the_campaign(story):  # noqa: F811
    # given: a 5-yuan WeChat Pay coupon rebate on a 100-yuan paid order, sent and received
    campaign, user, _, order = story(form="wechat_coupon")
    [payout] = db.session.execute(select(Payout)).scalars().all()
    run(CouponRail(ok("coupon-1")))
    assert db.session.get(Payout, payout.id).status == "succeeded"
    fund = account(AccountKind.PLATFORM_MARKETING_FUND)
    # when: the order is refunded in full: the coupon is in the buyer's WeChat wallet, nothing comes back
    refund(order, "R-coupon", order.payable_fen)
    [adjustment] = db.session.execute(select(RebateAdjustment)).scalars().all()
    assert (adjustment.amount_fen, adjustment.recovered_fen) == (5_00, 0)
    assert balance(fund) == -5_00  # the packet's value came back to the fund, the coupon did not
    today = beijing_day(utcnow())
    rebuild([today - timedelta(days=1), today], utcnow())
    # then: the campaign paid 5 yuan it never got back, and its report says so
    totals = campaign_report(db.session.get(Campaign, campaign.id), today - timedelta(days=1), today)["totals"]
    assert (totals["rebates_awarded_fen"], totals["rebates_paid_fen"]) == (5_00, 5_00)
    assert totals["rebates_clawed_back_fen"] == 0
    assert totals["rebates_net_fen"] == 5_00 == -balance(fund)


# -- a coupon the rail refused, credited to the balance instead: paid, as the ledger says ---------------------


def test_a_coupon_rebate_that_fell_back_to_the_balance_counts_as_paid(make_user, make_product, make_campaign, pay):
    from payouts.rails import Outcome, RailResult
    from tests.test_refunds import spend

    # given: 5 % of a 100-yuan order as a WeChat Pay coupon, falling back to the balance when refused
    rule = {"role": "consumer", "rate_bps": 500, "form": "wechat_coupon", "fallback_form": "balance", "cap_fen": 20_00}
    campaign = make_campaign({"roles": [rule]}, budget_limit_fen=100_00, packet_amount_fen=10_00)
    user = make_user()
    spend(campaign, user, make_product(price_fen=110_00), pay)
    [payout] = db.session.execute(select(Payout)).scalars().all()
    assert payout.amount_fen == 5_00
    # when: the coupon rail refuses it: the 5 yuan go from the fund to the buyer's balance
    run(CouponRail(RailResult(Outcome.FALLBACK, "RULE_LIMIT", "stock rule refuses")))
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == 5_00
    today = beijing_day(utcnow())
    rebuild([today - timedelta(days=1), today], utcnow())
    # then: the report says the rebate was paid, as the ledger does
    report = campaign_report(db.session.get(Campaign, campaign.id), today - timedelta(days=1), today)
    totals = report["totals"]
    assert (totals["rebates_awarded_fen"], totals["rebates_paid"], totals["rebates_paid_fen"]) == (5_00, 1, 5_00)
    [row] = report["rebates_by_role"]
    assert (row["role"], row["form"], row["paid_fen"]) == ("consumer", "wechat_coupon", 5_00)
    assert balance(account(AccountKind.PLATFORM_MARKETING_FUND)) == -15_00  # the packet and the coupon's 5 yuan
    spent = db.session.execute(select(func.count()).select_from(Payout).where(Payout.status == "succeeded")).scalar()
    assert spent == 0


# -- the trace of a packet a refund gave back still shows the order that spent it and what it took off ---------


def test_the_trace_of_a_packet_given_back_by_a_refund_shows_each_order_that_spent_it(
    make_campaign, make_user, make_product, make_operator, client, pay, time_machine
):
    from models import Order, RedPacket
    from rebate import create_order, issue_packet
    from rebate.orders import LineRequest
    from tests.test_reports_truth import bj

    # given: a 10-yuan packet (given back on a full refund) spent on a 110-yuan order on 5 March
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, restore_packet_on_refund=True)
    buyer, product = make_user(), make_product(price_fen=110_00)
    time_machine.move_to(bj(2026, 3, 5, 10), tick=False)
    packet = issue_packet(campaign, buyer, source="test", source_ref="restored", now=bj(2026, 3, 5, 10))
    db.session.commit()
    first = create_order(buyer, [LineRequest(product.id, 1)], packet.id, bj(2026, 3, 5, 10))
    db.session.commit()
    assert pay(first, at=bj(2026, 3, 5, 10)) == "applied"
    # when: the order is refunded in full on 6 March and the packet given back
    time_machine.move_to(bj(2026, 3, 6, 11), tick=False)
    refund(db.session.get(Order, first.id), "R-given-back", first.payable_fen, bj(2026, 3, 6, 11))
    assert db.session.get(RedPacket, packet.id).status == "issued"
    _, admin = make_operator("admin")
    body = client.get(f"/admin/api/trace/packets/{packet.id}", headers=admin).json
    # then: the trace still says it took 10 yuan off that order, which was refunded
    assert [e["event"] for e in body["history"]] == ["issued", "used"]
    assert body["history"][1]["at"] == first.paid_at.isoformat()
    line = body["history"][1]["line"]
    assert first.out_trade_no in line and "10.00 yuan (1000 fen)" in line and "refunded" in line
    # spent again on 8 March: both uses, oldest first
    time_machine.move_to(bj(2026, 3, 8, 9), tick=False)
    again = create_order(buyer, [LineRequest(product.id, 1)], packet.id, bj(2026, 3, 8, 9))
    db.session.commit()
    assert pay(again, at=bj(2026, 3, 8, 9)) == "applied"
    body = client.get(f"/admin/api/trace/packets/{packet.id}", headers=admin).json
    assert [e["event"] for e in body["history"]] == ["issued", "used", "used"]
    assert [first.out_trade_no in body["history"][1]["line"], again.out_trade_no in body["history"][2]["line"]] == [
        True,
        True,
    ]
    assert body["order"]["id"] == again.id


def test_the_trace_of_a_revoked_packet_says_when_it_was_revoked(
    make_campaign, make_user, make_operator, client, time_machine
):
    from models import RedPacket
    from rebate import issue_packet
    from rebate.packets import revoke_packet
    from tests.test_reports_truth import bj

    # given: a packet issued on 5 March and revoked on 7 March at 09:30 Beijing
    campaign = make_campaign(RULES, packet_amount_fen=3_00)
    time_machine.move_to(bj(2026, 3, 5, 10), tick=False)
    packet = issue_packet(campaign, make_user(), source="test", source_ref="revoked", now=bj(2026, 3, 5, 10))
    db.session.commit()
    time_machine.move_to(bj(2026, 3, 7, 9, 30), tick=False)
    revoke_packet(packet.id)
    db.session.commit()
    revoked_at = db.session.get(RedPacket, packet.id).revoked_at
    # when: support traces it a week later
    time_machine.move_to(bj(2026, 3, 14, 15), tick=False)
    _, admin = make_operator("admin")
    body = client.get(f"/admin/api/trace/packets/{packet.id}", headers=admin).json
    # then: it was revoked on 7 March, not "now"
    [event] = [e for e in body["history"] if e["event"] == "revoked"]
    assert event["at"] == revoked_at.isoformat()
    assert event["line"].startswith("2026-03-07 09:30 Beijing time: revoked")


# -- a payout WeChat dates days before we learn of it: the job's rollups must not miss what a rebuild finds ---------


def test_a_payout_learned_of_after_its_day_was_final_is_counted_by_the_job_as_by_a_rebuild(
    story,  # noqa: F811
    time_machine,
):
    from jobs.insights import days_between, insights_rollup_job
    from payouts.rails import Outcome, RailResult
    from tests.test_reports_truth import bj, counter_rows

    # given: a 5-yuan transfer of a rebate sent on 5 March; WeChat's answer is lost (the bill may exist)
    time_machine.move_to(bj(2026, 3, 5, 10), tick=False)
    campaign, _, _, _ = story(form="wechat_change")
    [payout] = db.session.execute(select(Payout)).scalars().all()
    confirmed = bj(2026, 3, 5, 10, 30)  # when the person took it, as WeChat's bill says
    rail = ScriptedRail(
        RailResult(Outcome.UNKNOWN, "SYSTEM_ERROR", "timeout"),
        query_answers=(
            RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref="bill-late", details={"finished_at": confirmed}),
        ),
    )
    run(rail, at=bj(2026, 3, 5, 10, 5))
    assert db.session.get(Payout, payout.id).status == "unknown"
    # the rollup job runs every day meanwhile: 5 March is final from 8 March on
    for day in range(5, 10):
        time_machine.move_to(bj(2026, 3, day, 12), tick=False)
        insights_rollup_job()
    # when: on 10 March a query finds the transfer succeeded at 10:30 on 5 March, and the job runs again
    time_machine.move_to(bj(2026, 3, 10, 9), tick=False)
    run(rail, at=bj(2026, 3, 10, 9))
    payout = db.session.get(Payout, payout.id)
    assert (payout.status, payout.finished_at) == ("succeeded", confirmed)
    time_machine.move_to(bj(2026, 3, 10, 9, 5), tick=False)
    insights_rollup_job()
    window = days_between(date(2026, 3, 5), date(2026, 3, 10))
    by_the_job = counter_rows(window)
    # then: the job counted the payment on 5 March, as WeChat dates it and as a rebuild does
    totals = campaign_report(db.session.get(Campaign, campaign.id), window[0], window[-1])["totals"]
    assert (totals["rebates_paid"], totals["rebates_paid_fen"]) == (1, 5_00)
    rebuild(window, bj(2026, 3, 10, 9, 10))
    assert counter_rows(window) == by_the_job
