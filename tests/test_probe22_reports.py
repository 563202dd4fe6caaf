"""Probe 22: the effect reports against the ledger when refunds are applied out of order and when a cash rebate's
payout falls back to the person's balance.

Each test plays the events, runs the rollup job as it runs in production (every day, so days become final), and
compares what the report says with what the ledger and the rows say (``tests.test_probe21_reports.truth``).
"""

from __future__ import annotations

from datetime import date, timedelta

from flask import current_app
from sqlalchemy import func, select

import jobs.insights as job
from insights.reports import campaign_report, overview
from jobs.payouts import dispatch_due
from models import (
    AccountKind,
    Campaign,
    InsightsDay,
    LedgerAccount,
    LedgerEntry,
    LedgerPosting,
    Order,
    Payout,
    Rebate,
    db,
)
from payouts import MoneySettings
from payouts.record import DispatchSettings
from payouts.transfer_rail import TransferRail
from rebate import PayAccount, apply_payment, apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_payout_rails import api_v2_key, redpack_rail  # noqa: F401 - fixtures
from tests.test_probe21_reports import FIGURES, FIRST, ROLE_FIGURES, RULES, at, truth

SPAN = [FIRST + timedelta(days=n) for n in range(6)]  # 5 to 10 March


def expected(campaign_id: int) -> dict:
    days = truth(campaign_id)
    series = {d.isoformat(): {f: days.get(d, {}).get(f, 0) for f in FIGURES} for d in SPAN}
    totals = {f: sum(series[d][f] for d in series) for f in FIGURES}
    roles = {key: {e: figures.get(e, 0) for e in ROLE_FIGURES} for key, figures in days.get("roles", {}).items()}
    return {"series": series, "totals": totals, "roles": roles}


def reported(campaign_id: int) -> dict:
    report = campaign_report(db.session.get(Campaign, campaign_id), SPAN[0], SPAN[-1])
    db.session.rollback()
    return {
        "series": {p["period"]: {f: p[f] for f in FIGURES} for p in report["series"]},
        "totals": {f: report["totals"][f] for f in FIGURES},
        "roles": {(r["role"], r["form"]): {e: r[e] for e in ROLE_FIGURES} for r in report["rebates_by_role"]},
    }


def differences(got: dict, want: dict) -> dict:
    out = {}
    for period, figures in want["series"].items():
        for f, value in figures.items():
            if got["series"][period][f] != value:
                out[(period, f)] = (got["series"][period][f], value)
    for f, value in want["totals"].items():
        if got["totals"][f] != value:
            out[("totals", f)] = (got["totals"][f], value)
    if got["roles"] != want["roles"]:
        out["rebates_by_role"] = (got["roles"], want["roles"])
    return out


def run_job_at(time_machine, moment) -> None:
    time_machine.move_to(moment, tick=False)
    job.insights_rollup_job()


def pay_order(order: Order, when, payer_total_fen: int | None = None) -> None:
    tx = wechat_payment(
        order.out_trade_no, f"tx-{order.id}", order.payable_fen, success_time=when, payer_total_fen=payer_total_fen
    )
    assert apply_payment(tx, PayAccount.from_config(current_app.config), when, money=app_money()) == "applied"
    db.session.commit()


def refund_now(order_id: int, number: str, fen: int, succeeded, applied) -> None:
    """WeChat's word that refund ``number`` succeeded at ``succeeded``, applied here at ``applied``."""
    order = db.session.get(Order, order_id)
    apply_refund(order.out_trade_no, number, fen, applied, f"wx-{number}", money=app_money(), succeeded_at=succeeded)
    db.session.commit()


def final(day: date) -> bool:
    return bool(db.session.execute(select(InsightsDay.final).where(InsightsDay.day == day)).scalar())


# -- 1. the discounts a full refund gave back, whatever order its refunds were applied in --------------------------


def test_a_full_refund_completed_by_an_earlier_refund_applied_late_gives_its_discount_back_on_that_refunds_day(
    app, make_merchant, make_product, make_user, make_campaign, time_machine
):
    """Two partial refunds make an order refunded in full. WeChat dates the first at 20:00 on 5 March and the second
    at 11:00 on 6 March, but we learn of the first only on 9 March, once 6 March is final. The refund applied last
    completed the order: the ledger gives the packet's value back under its key (``refund:<first>:discount:<p>``),
    the report on the day of the refund that completed it. The rollup took the refund WeChat dated last (the second)
    as the one that completed it: 5 March, rebuilt for the late refund, had none, and 6 March, final, was never
    rebuilt: the 10.00 given back was lost for good (and would have sat on the wrong day had it been rebuilt)."""
    shop = make_merchant("out of order")
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    buyer = make_user(appid=app.config["WECHAT_APPID"])
    time_machine.move_to(at(FIRST, 10), tick=False)
    packet = issue_packet(campaign, buyer, source="claim", source_ref="ooo", now=at(FIRST, 10))
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=110_00).id, 1)], packet.id, at(FIRST, 10))
    db.session.commit()
    pay_order(order, at(FIRST, 10))
    order = db.session.get(Order, order.id)
    first, second = 40_00, order.payable_fen - 40_00
    begin_refund(order, "R-OOO-1", first, "probe")
    begin_refund(db.session.get(Order, order.id), "R-OOO-2", second, "probe")
    db.session.commit()
    # the second is told at once; the job runs every day at noon, so 6 March is final on 9 March
    refund_now(order.id, "R-OOO-2", second, at(FIRST + timedelta(days=1), 11), at(FIRST + timedelta(days=1), 11))
    for n in range(5):
        run_job_at(time_machine, at(FIRST + timedelta(days=n), 12))
    assert final(FIRST + timedelta(days=1))
    # when: on 9 March at 13:00 WeChat's word on the first arrives: it succeeded on 5 March at 20:00
    refund_now(order.id, "R-OOO-1", first, at(FIRST, 20), at(FIRST + timedelta(days=4), 13))
    assert db.session.get(Order, order.id).status == "refunded"
    run_job_at(time_machine, at(FIRST + timedelta(days=4), 13, 5))
    # then: the ledger gave the packet's 10.00 back under the first refund's key, and the report says so that day
    keys = db.session.execute(
        select(LedgerEntry.idempotency_key).where(LedgerEntry.idempotency_key.like("refund:%:discount:%"))
    ).scalars()
    assert len(list(keys)) == 1
    want = expected(campaign.id)
    assert want["series"][FIRST.isoformat()]["discounts_returned_fen"] == 10_00
    assert differences(reported(campaign.id), want) == {}
    # and the overview (the orders' own discounts, campaign 0) as well
    totals = overview(SPAN[0], SPAN[-1], merchant_id=shop.id)["totals"]
    assert (totals["discounts_fen"], totals["discounts_returned_fen"]) == (10_00, 10_00)
    db.session.rollback()


def test_refunds_applied_out_of_order_give_the_discount_back_once_on_the_completing_refunds_day(
    app, make_merchant, make_product, make_user, make_campaign, time_machine
):
    """The same without any day final: the refund WeChat dated first is applied last and completes the order.
    The report must put the discount given back on its day (the ledger's), not on the other refund's."""
    shop = make_merchant("out of order, open days")
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=20_00)
    buyer = make_user(appid=app.config["WECHAT_APPID"])
    time_machine.move_to(at(FIRST, 9), tick=False)
    packet = issue_packet(campaign, buyer, source="claim", source_ref="ooo2", now=at(FIRST, 9))
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=99_90).id, 1)], packet.id, at(FIRST, 9))
    db.session.commit()
    pay_order(order, at(FIRST, 9))
    order = db.session.get(Order, order.id)
    first, second = 10_00, order.payable_fen - 10_00
    begin_refund(order, "R-OOO-3", first, "probe")
    begin_refund(db.session.get(Order, order.id), "R-OOO-4", second, "probe")
    db.session.commit()
    refund_now(order.id, "R-OOO-4", second, at(FIRST + timedelta(days=1), 8), at(FIRST + timedelta(days=1), 8))
    refund_now(order.id, "R-OOO-3", first, at(FIRST, 22), at(FIRST + timedelta(days=1), 9))
    run_job_at(time_machine, at(FIRST + timedelta(days=1), 10))
    want = expected(campaign.id)
    assert want["series"][FIRST.isoformat()]["discounts_returned_fen"] == 20_00
    assert differences(reported(campaign.id), want) == {}


# -- 3. a coupon-paid order's refunds applied out of order: the buyer's part of each, as the books took it ----------


def test_a_coupon_paid_orders_refunds_applied_out_of_order_still_take_back_exactly_what_the_buyer_paid(
    app, make_merchant, make_product, make_user, time_machine
):
    """A 100-yuan order, 99.99 paid by the buyer and 0.01 by a WeChat Pay coupon, refunded whole in two parts.
    Each refund's buyer part is the running total's (``money.left_after_refunds``), as the books and
    ``Order.net_paid_fen`` take it: in the order the refunds were applied. The rollup ran the total in the order
    WeChat dated them: the refund applied first was counted on its (now final) day as if it came first (66.67), and
    the one dated earlier but applied late on its day as if it came first too (33.33): 100.00 refunded of 99.99 paid,
    net sales −0.01 for an order refunded whole."""
    shop = make_merchant("coupon paid")
    buyer = make_user(appid=app.config["WECHAT_APPID"])
    time_machine.move_to(at(FIRST, 10), tick=False)
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], None, at(FIRST, 10))
    db.session.commit()
    pay_order(order, at(FIRST, 10), payer_total_fen=99_99)
    begin_refund(db.session.get(Order, order.id), "R-CPN-1", 33_33, "probe")
    begin_refund(db.session.get(Order, order.id), "R-CPN-2", 66_67, "probe")
    db.session.commit()
    refund_now(order.id, "R-CPN-2", 66_67, at(FIRST + timedelta(days=1), 11), at(FIRST + timedelta(days=1), 11))
    for n in range(5):
        run_job_at(time_machine, at(FIRST + timedelta(days=n), 12))
    assert final(FIRST + timedelta(days=1))
    refund_now(order.id, "R-CPN-1", 33_33, at(FIRST, 20), at(FIRST + timedelta(days=4), 13))
    run_job_at(time_machine, at(FIRST + timedelta(days=4), 13, 5))
    order = db.session.get(Order, order.id)
    assert (order.status, order.paid_fen, order.net_paid_fen) == ("refunded", 99_99, 0)
    report = overview(SPAN[0], SPAN[-1], merchant_id=shop.id)
    totals = report["totals"]
    assert (totals["sales_fen"], totals["refunds_fen"], totals["net_sales_fen"]) == (99_99, 99_99, 0)
    assert report["category_shares"][0]["net_sales_fen"] == 0
    db.session.rollback()


# -- 2. a cash rebate whose payout fell back to the person's balance -----------------------------------------------


def cash_rebate_order(app, shop, make_product, make_user, make_campaign, inviter, price_fen=200_00):
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    buyer = make_user(inviter=inviter, appid=app.config["WECHAT_APPID"])
    packet = issue_packet(campaign, buyer, source="claim", source_ref=f"cash:{buyer.id}", now=at(FIRST, 10))
    db.session.commit()
    product = make_product(shop, price_fen=price_fen)
    order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, at(FIRST, 10))
    db.session.commit()
    pay_order(order, at(FIRST, 10))
    return campaign, db.session.get(Order, order.id)


def user_cash(user_id: int) -> int:
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(LedgerPosting.amount), 0))
            .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
            .where(
                LedgerAccount.kind == AccountKind.USER_CASH,
                LedgerAccount.owner_type == "user",
                LedgerAccount.owner_id == user_id,
            )
        ).scalar_one()
    )


def test_a_cash_red_packet_refused_by_both_rails_and_kept_in_the_balance_counts_as_paid_once(
    app,
    make_merchant,
    make_product,
    make_user,
    make_campaign,
    redpack_rail,
    time_machine,  # noqa: F811
):
    """The inviter's 19.00 cash red packet cannot be sent (no official-account openid): it falls back to a change
    transfer, which the transfer rail refuses too (no openid under the payment appid): the money stays in the
    inviter's balance, theirs to withdraw. The report never counted it as paid (only a payout that succeeded
    was): awarded 19.00, paid 0, nothing clawed back or cancelled, for ever."""
    shop = make_merchant("fallback")
    inviter = make_user()  # no official-account identity, and none under the payment appid
    time_machine.move_to(at(FIRST, 10), tick=False)
    campaign, order = cash_rebate_order(app, shop, make_product, make_user, make_campaign, inviter)
    rebate = db.session.execute(
        select(Rebate).where(Rebate.order_id == order.id, Rebate.role == "inviter")
    ).scalar_one()
    assert (rebate.form, rebate.amount_fen) == ("cash_red_packet", 19_00)  # 10 % of 190.00 paid
    change = TransferRail(app.extensions["wechat"].pay, appid=app.config["WECHAT_APPID"], notify_url="http://n.test")
    rails = {r.name: r for r in (redpack_rail(), change)}
    settings = DispatchSettings(money=MoneySettings())
    for minute in (1, 2, 3):
        time_machine.move_to(at(FIRST, 10, minute), tick=False)
        dispatch_due(rails, settings=settings)
    payouts = db.session.execute(select(Payout).where(Payout.rebate_id == rebate.id).order_by(Payout.id)).scalars()
    assert [(p.rail, p.status) for p in payouts] == [("cash_red_packet", "cancelled"), ("wechat_change", "cancelled")]
    assert user_cash(inviter.id) == 19_00  # the money is in the inviter's balance
    db.session.rollback()
    run_job_at(time_machine, at(FIRST, 11))
    want = expected(campaign.id)
    assert want["roles"][("inviter", "cash_red_packet")]["paid_fen"] == 19_00
    assert differences(reported(campaign.id), want) == {}
    # rebuilt again, and a day later: still once
    run_job_at(time_machine, at(FIRST, 11, 5))
    run_job_at(time_machine, at(FIRST + timedelta(days=1), 11))
    assert reported(campaign.id)["totals"]["rebates_paid_fen"] == want["totals"]["rebates_paid_fen"]
    assert differences(reported(campaign.id), expected(campaign.id)) == {}


def test_a_cash_red_packet_kept_in_the_balance_then_clawed_back_by_a_refund_counts_paid_and_clawed_back(
    app,
    make_merchant,
    make_product,
    make_user,
    make_campaign,
    redpack_rail,
    time_machine,  # noqa: F811
):
    """With no cash fallback rail the refused red packet stays in the balance at once; a refund the next day then
    claws 10.00 of it back from the balance. Paid 19.00 (in the balance), clawed back 10.00: the same as a
    ``balance`` rebate would read, and what the ledger says."""
    shop = make_merchant("fallback then refund")
    inviter = make_user()
    time_machine.move_to(at(FIRST, 10), tick=False)
    campaign, order = cash_rebate_order(app, shop, make_product, make_user, make_campaign, inviter)
    settings = DispatchSettings(money=MoneySettings(), cash_fallback_rail=None)
    time_machine.move_to(at(FIRST, 10, 1), tick=False)
    dispatch_due({"cash_red_packet": redpack_rail()}, settings=settings)
    assert user_cash(inviter.id) == 19_00
    time_machine.move_to(at(FIRST + timedelta(days=1), 9), tick=False)
    begin_refund(db.session.get(Order, order.id), "R-FB-1", 100_00, "probe")
    db.session.commit()
    refund_now(order.id, "R-FB-1", 100_00, at(FIRST + timedelta(days=1), 9), at(FIRST + timedelta(days=1), 9))
    assert user_cash(inviter.id) == 9_00  # 10 % of the 90.00 left
    run_job_at(time_machine, at(FIRST + timedelta(days=1), 10))
    want = expected(campaign.id)
    assert want["roles"][("inviter", "cash_red_packet")] == {
        "awarded_fen": 19_00,
        "paid_fen": 19_00,
        "clawed_back_fen": 10_00,
        "cancelled_fen": 0,
    }
    assert differences(reported(campaign.id), want) == {}
