"""Probe 21: a campaign's effect report against the money, in seeded random scenarios on both databases.

Each seed plays claims, payments through the signed payment notification, partial and full refunds through the
signed refund notification (some told steps later, after a refund of the same order WeChat dated after them: the
late one then completes the order), cash red packets sent, refused and falling back through the rail or to the
person's balance (WeChat answered by ``responses``), across a Beijing midnight, with the rollup job run at arbitrary
points (twice, and concurrently). After every step the report read over the API equals the figures built here from
the ledger's postings and the rows (never from the rollups or the report's code), as of the job's last run.
"""

from __future__ import annotations

import random
from bisect import insort
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import responses
from sqlalchemy import func, select

import jobs.insights as job
from jobs.payouts import dispatch_due
from models import (
    LedgerAccount,
    LedgerEntry,
    LedgerPosting,
    Order,
    OrderPacket,
    Payout,
    Rebate,
    RebateAdjustment,
    Receivable,
    RedPacket,
    Refund,
    db,
)
from payouts import MoneySettings
from payouts.record import DispatchSettings
from rebate import begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.concurrency import together
from tests.test_payout_rails import SEND_URL, answer, api_v2_key, oa_user, redpack_rail  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import deliver, deliver_refund, refund_resource, transaction_resource
from wechat.v2sign import parse_xml

SHANGHAI = ZoneInfo("Asia/Shanghai")  # the operator's day, reckoned here without the app's helpers
FIRST = date(2026, 3, 5)
DAYS = [FIRST, FIRST + timedelta(days=1), FIRST + timedelta(days=2)]
RULES = {
    "roles": [
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 30_00},
        {"role": "inviter", "rate_bps": 1000, "form": "cash_red_packet", "cap_fen": 40_00},
    ]
}
FIGURES = (
    "orders",
    "sales_fen",
    "refunds",
    "refunds_fen",
    "net_sales_fen",
    "influenced_orders",
    "influenced_sales_fen",
    "influenced_refunds_fen",
    "discounts_fen",
    "discounts_returned_fen",
    "packets_issued",
    "packets_issued_fen",
    "packets_used",
    "packets_used_fen",
    "rebates_awarded",
    "rebates_awarded_fen",
    "rebates_paid",
    "rebates_paid_fen",
    "rebates_clawed_back",
    "rebates_clawed_back_fen",
    "rebates_cancelled",
    "rebates_cancelled_fen",
    "rebates_net_fen",
)
ROLE_FIGURES = ("awarded_fen", "paid_fen", "clawed_back_fen", "cancelled_fen")


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=SHANGHAI).astimezone(UTC)


def day_of(moment: datetime | None) -> date | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(SHANGHAI).date()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).replace(microsecond=0).isoformat()


# -- the truth, from the rows and the ledger ------------------------------------------------------------------


def truth(campaign_id: int) -> dict[date, dict[str, int]]:
    """Per Beijing day: what the operator should read, from orders, refunds, packets, rebates, payouts and postings."""
    days: dict = defaultdict(lambda: defaultdict(int))  # a day's figures; "roles": (role, form) → figures
    s = db.session

    def role(rebate_id: int) -> dict:
        rebate = rebates[rebate_id]
        return days["roles"].setdefault((rebate.role, rebate.form), defaultdict(int))

    orders = {o.id: o for o in s.execute(select(Order)).scalars()}
    spent = s.execute(
        select(OrderPacket.order_id, OrderPacket.discount_fen, RedPacket.amount_fen, RedPacket.campaign_id).join(
            RedPacket, RedPacket.id == OrderPacket.packet_id
        )
    ).all()
    rebates = {r.id: r for r in s.execute(select(Rebate)).scalars()}
    influenced = {o for o, _, _, c in spent if c == campaign_id}
    influenced |= {r.order_id for r in rebates.values() if r.campaign_id == campaign_id and r.original_fen > 0}
    for order in orders.values():
        if order.paid_fen is None:
            continue
        d = days[day_of(order.paid_at)]
        d["orders"] += 1
        d["sales_fen"] += order.paid_fen
        if order.id in influenced:
            d["influenced_orders"] += 1
            d["influenced_sales_fen"] += order.paid_fen
    for order_id, discount, face, c in spent:
        if c == campaign_id:
            d = days[day_of(orders[order_id].paid_at)]
            d["discounts_fen"] += discount
            d["packets_used"] += 1
            d["packets_used_fen"] += face
    for packet in s.execute(select(RedPacket).where(RedPacket.campaign_id == campaign_id)).scalars():
        d = days[day_of(packet.created_at)]
        d["packets_issued"] += 1
        d["packets_issued_fen"] += packet.amount_fen
    for refund in s.execute(select(Refund).where(Refund.status == "succeeded")).scalars():
        d = days[day_of(refund.finished_at)]
        d["refunds"] += 1
        d["refunds_fen"] += refund.amount_fen
        if refund.order_id in influenced:
            d["influenced_refunds_fen"] += refund.amount_fen
    mine = {i for i, r in rebates.items() if r.campaign_id == campaign_id}
    for rebate in rebates.values():
        if rebate.id in mine and rebate.original_fen > 0:
            d = days[day_of(rebate.created_at)]
            d["rebates_awarded"] += 1
            d["rebates_awarded_fen"] += rebate.original_fen
            role(rebate.id)["awarded_fen"] += rebate.original_fen
    # paid: what the ledger credited to a person's balance for a balance rebate (its ``rebate:<id>`` entries), and
    # what left the transit account for a payout WeChat paid (``payout:<id>:paid``), on WeChat's day of it
    credited = s.execute(
        select(LedgerEntry.idempotency_key, LedgerEntry.created_at, LedgerPosting.amount, LedgerAccount.kind)
        .join(LedgerPosting, LedgerPosting.entry_id == LedgerEntry.id)
        .join(LedgerAccount, LedgerAccount.id == LedgerPosting.account_id)
        .where(LedgerEntry.unit == "fen")
    ).all()
    payouts = {p.id: p for p in s.execute(select(Payout)).scalars()}
    retried = {p.retry_of_id for p in payouts.values() if p.retry_of_id is not None}
    for key, created, amount, kind in credited:
        parts = key.split(":")
        # a cash rebate's payout that came back to the person's own balance and was not sent again (refused, its
        # fallback kept it in the balance): the money is the person's there, paid when the balance had it back
        came_back = parts[0] == "payout" and parts[2:] in (["failed"], ["cancelled"]) and kind == "user_cash"
        if came_back and amount > 0 and int(parts[1]) not in retried and payouts[int(parts[1])].rebate_id in mine:
            payout = payouts[int(parts[1])]
            d = days[day_of(created)]
            d["rebates_paid"] += 1
            d["rebates_paid_fen"] += amount
            role(payout.rebate_id)["paid_fen"] += amount
        balance_credit = parts[0] == "rebate" and int(parts[1]) in mine and kind == "user_cash" and amount > 0
        if balance_credit and rebates[int(parts[1])].form == "balance":
            d = days[day_of(created)]
            d["rebates_paid"] += 1
            d["rebates_paid_fen"] += amount
            role(int(parts[1]))["paid_fen"] += amount
        if parts[0] == "payout" and parts[2:] == ["paid"] and amount < 0:
            payout = payouts[int(parts[1])]
            if payout.rebate_id in mine:
                d = days[day_of(payout.finished_at)]
                d["rebates_paid"] += 1
                d["rebates_paid_fen"] += -amount
                role(payout.rebate_id)["paid_fen"] += -amount
    refunds = {r.id: r for r in s.execute(select(Refund)).scalars()}
    packets = dict(s.execute(select(RedPacket.id, RedPacket.campaign_id)).all())
    for key, _, amount, _ in credited:
        parts = key.split(":")  # refund:<id>:discount:<packet>: a packet's value back to its funder
        back = parts[0] == "refund" and parts[2:3] == ["discount"] and amount > 0
        if back and packets[int(parts[3])] == campaign_id:
            days[day_of(refunds[int(parts[1])].finished_at)]["discounts_returned_fen"] += amount
    for adjustment, finished in s.execute(
        select(RebateAdjustment, Refund.finished_at).outerjoin(Refund, Refund.id == RebateAdjustment.refund_id)
    ).all():
        if adjustment.rebate_id in mine:
            d = days[day_of(finished or adjustment.created_at)]
            metric = "rebates_cancelled" if adjustment.kind == "cancelled" else "rebates_clawed_back"
            d[metric] += 1
            d[f"{metric}_fen"] += adjustment.amount_fen
            role(adjustment.rebate_id)[f"{metric.removeprefix('rebates_')}_fen"] += adjustment.amount_fen
    for day, d in days.items():
        if day == "roles":
            continue
        d["net_sales_fen"] = d["sales_fen"] - d["refunds_fen"]
        d["rebates_net_fen"] = d["rebates_awarded_fen"] - d["rebates_clawed_back_fen"] - d["rebates_cancelled_fen"]
    db.session.rollback()
    return days


def expected_report(days: dict[date, dict[str, int]]) -> dict:
    series = {d.isoformat(): {f: days.get(d, {}).get(f, 0) for f in FIGURES} for d in DAYS}
    totals = {f: sum(series[d][f] for d in series) for f in FIGURES}
    roles = {key: {e: figures.get(e, 0) for e in ROLE_FIGURES} for key, figures in days.get("roles", {}).items()}
    return {"series": series, "totals": totals, "roles": roles}


def read_report(client, headers, campaign_id: int) -> dict:
    answer_ = client.get(
        f"/admin/api/reports/campaigns/{campaign_id}",
        query_string={"from": DAYS[0].isoformat(), "to": DAYS[-1].isoformat()},
        headers=headers,
    )
    assert answer_.status_code == 200, answer_.get_json()
    report = answer_.get_json()
    assert report["timezone"] == "Asia/Shanghai"
    assert [p["period"] for p in report["series"]] == [d.isoformat() for d in DAYS]  # Beijing days, labelled so
    for block in (report["totals"], *report["series"]):
        for name, value in block.items():
            if name.endswith("_fen") or name.endswith("_bps"):
                assert value is None or type(value) is int, (name, value)  # integer fen, never 12.0 nor "12"
    db.session.rollback()
    return {
        "series": {p["period"]: {f: p[f] for f in FIGURES} for p in report["series"]},
        "totals": {f: report["totals"][f] for f in FIGURES},
        "roles": {(r["role"], r["form"]): {e: r[e] for e in ROLE_FIGURES} for r in report["rebates_by_role"]},
    }


# -- the scenario ---------------------------------------------------------------------------------------------


class WeChatRedPackets:
    """sendredpack as ``responses`` answers it: each packet number's fate drawn from the seed."""

    def __init__(self, rng: random.Random, key: str):
        self.rng, self.key, self.fates = rng, key, {}

    def __call__(self, request):
        fields = parse_xml(request.body)
        no = fields["mch_billno"]
        fate = self.fates.setdefault(no, self.rng.choice(["SUCCESS", "SUCCESS", "SEND_FAILED", "MONEY_LIMIT"]))
        if fate == "SUCCESS":
            body = answer(self.key, result_code="SUCCESS", mch_billno=no, send_listid=f"L{no}")
        else:
            body = answer(
                self.key,
                result_code="FAIL",
                err_code=fate,
                mch_billno=no,
                total_amount=fields["total_amount"],
                re_openid=fields["re_openid"],
            )
        return 200, {}, body


def differences(got: dict, want: dict) -> dict:
    """(period, figure) → (the report's, the truth's), where they differ."""
    out = {}
    for period in want["series"]:
        for f in FIGURES:
            if got["series"][period][f] != want["series"][period][f]:
                out[(period, f)] = (got["series"][period][f], want["series"][period][f])
    for f in FIGURES:
        if got["totals"][f] != want["totals"][f]:
            out[("totals", f)] = (got["totals"][f], want["totals"][f])
    if got["roles"] != want["roles"]:
        out["rebates_by_role"] = (got["roles"], want["roles"])
    return out


def run_job(times: int = 1) -> None:
    for _ in range(times):
        job.insights_rollup_job()


SEEDS = list(range(20))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_report_says_what_the_money_says(
    seed,
    app,
    client,
    make_merchant,
    make_product,
    make_user,
    make_campaign,
    make_operator,
    oa_user,  # noqa: F811
    redpack_rail,  # noqa: F811
    api_v2_key,  # noqa: F811
    time_machine,
):
    rng = random.Random(seed)
    shop = make_merchant(f"shop-{seed}")
    products = [make_product(shop, price_fen=rng.choice([60_00, 99_90, 150_00, 230_00])) for _ in range(3)]
    campaign = make_campaign(RULES, budget_limit_fen=5_000_00, packet_amount_fen=rng.choice([5_00, 10_00, 20_00]))
    inviters = [oa_user() for _ in range(2)]
    buyers = [make_user(inviter=rng.choice(inviters), appid=app.config["WECHAT_APPID"]) for _ in range(4)]
    _, admin = make_operator("admin")
    wechat = WeChatRedPackets(rng, api_v2_key)
    rail = redpack_rail(clock=lambda: now[0])
    # a refused red packet falls back to a transfer to change (left in flight), or stays in the person's balance
    fallback = {} if seed % 2 else {"cash_fallback_rail": None}
    settings = DispatchSettings(money=MoneySettings(), **fallback)
    # the steps' times: from 10:00 on the first day to the evening of the second, across a Beijing midnight
    times = sorted(at(FIRST, 10) + timedelta(minutes=rng.randrange(0, 34 * 60)) for _ in range(24))
    insort(times, at(FIRST, 23, 59, 50))  # a step seconds before midnight (in its place: the clock never goes back)
    now = [times[0]]
    paid: list[int] = []
    snapshot = None
    refund_no = 0
    deferred: list[tuple[int, str, int, datetime]] = []  # refunds begun whose success WeChat tells later

    def tell_refund(order_id: int, number: str, amount: int, succeeded: datetime) -> None:
        resource = refund_resource(app, db.session.get(Order, order_id), number, amount)
        resource["success_time"] = rfc3339(succeeded)
        assert deliver_refund(client, app, resource).status_code == 204
        db.session.rollback()

    with responses.RequestsMock(assert_all_requests_are_fired=False) as http:
        http.add_callback(responses.POST, SEND_URL, callback=wechat)
        for step, moment in enumerate(times):
            now[0] = moment
            time_machine.move_to(moment, tick=False)
            action = rng.choice(["order", "order", "order", "refund", "refund", "dispatch", "job"])
            if action == "refund" and not paid:
                action = "order"
            if action == "order":
                buyer = rng.choice(buyers)
                packet_id = None
                if rng.random() < 0.8:
                    packet = issue_packet(campaign, buyer, source="claim", source_ref=f"{seed}:{step}", now=moment)
                    db.session.commit()
                    packet_id = packet.id
                order = create_order(buyer, [LineRequest(rng.choice(products).id, 1)], packet_id, moment)
                db.session.commit()
                # paid at the moment, or WeChat's success a few minutes before (a notification a little late)
                success = moment - timedelta(seconds=rng.choice([0, 0, 30, 600]))
                resource = transaction_resource(app, order, success_time=rfc3339(success))
                assert deliver(client, app, resource).status_code == 204
                paid.append(order.id)
            elif action == "refund":
                order = db.session.get(Order, rng.choice(paid))
                left = order.payable_fen - order.refunded_fen - sum(a for o, _, a, _ in deferred if o == order.id)
                if left > 0:
                    refund_no += 1
                    amount = left if rng.random() < 0.4 else rng.randrange(1, left + 1)
                    number = f"R{seed:03d}{refund_no:05d}"
                    begin_refund(order, number, amount, "probe")
                    db.session.commit()
                    succeeded = moment - timedelta(seconds=rng.choice([0, 5, 900]))
                    if rng.random() < 0.3:  # WeChat's word on it arrives steps later (a lost notification, a query)
                        earlier = succeeded - timedelta(minutes=rng.choice([1, 90, 720]))  # often the day before
                        paid_at = order.paid_at if order.paid_at.tzinfo else order.paid_at.replace(tzinfo=UTC)
                        deferred.append((order.id, number, amount, max(earlier, paid_at + timedelta(seconds=1))))
                        if amount < left and rng.random() < 0.6:  # and a refund of the rest is told first, though
                            refund_no += 1  # WeChat dates it later: the late one is then the one completing the order
                            rest = f"R{seed:03d}{refund_no:05d}"
                            begin_refund(db.session.get(Order, order.id), rest, left - amount, "probe")
                            db.session.commit()
                            tell_refund(order.id, rest, left - amount, succeeded)
                    else:
                        tell_refund(order.id, number, amount, succeeded)
            elif action == "dispatch":
                if moment.astimezone(SHANGHAI).hour >= 8:  # not in the red packets' quiet hours
                    dispatch_due({rail.name: rail}, settings=settings, clock=lambda: now[0])
            else:
                run_job(rng.choice([1, 2]))
                snapshot = expected_report(truth(campaign.id))
            db.session.rollback()
            if deferred and rng.random() < 0.3:  # a refund told late, dated by WeChat when it succeeded
                tell_refund(*deferred.pop(0))
            if rng.random() < 0.25:  # the job at an arbitrary point, once or twice
                run_job(rng.choice([1, 2]))
                snapshot = expected_report(truth(campaign.id))
            if snapshot is not None:  # what the report says is what the money said when the job last ran
                assert differences(read_report(client, admin, campaign.id), snapshot) == {}, (
                    seed,
                    step,
                    action,
                )
        # at the end: the refunds still untold are told, two nodes run the job at once, then once more: nothing doubles
        now[0] = times[-1] + timedelta(minutes=5)
        time_machine.move_to(now[0], tick=False)
        while deferred:
            tell_refund(*deferred.pop(0))
        results = together(2, lambda i: job.insights_rollup_job(), app)
        assert not [r for r in results if isinstance(r, Exception)], results
        assert differences(read_report(client, admin, campaign.id), expected_report(truth(campaign.id))) == {}
        run_job()
        final = read_report(client, admin, campaign.id)
        assert differences(final, expected_report(truth(campaign.id))) == {}
        # and the campaign's budget used is the report's cost (discounts kept, rebates net) and what people who were
        # paid still owe of their clawbacks (the budget gets back only what was recovered)
        db.session.refresh(campaign)
        t = final["totals"]
        cost = t["discounts_fen"] - t["discounts_returned_fen"] + t["rebates_net_fen"]
        owed = db.session.execute(
            select(func.coalesce(func.sum(Receivable.outstanding_fen), 0)).where(Receivable.campaign_id == campaign.id)
        ).scalar_one()
        assert campaign.budget_committed_fen == cost + owed, (seed, cost, owed)
        db.session.rollback()


# -- a refund WeChat dates on a day already closed -----------------------------------------------------------


def test_a_refund_learned_after_its_day_closed_is_deducted_on_the_day_it_succeeded(
    app, client, make_merchant, make_product, make_user, make_campaign, make_operator, time_machine
):
    """The report documents a refund as deducted on the Beijing day it succeeded (WeChat's success_time), however
    late it is learned. A refund told (or found by a query, or booked by an operator) more than two days after that
    day was booked on a day the job had already made final; the job rebuilds a final day only for the payments and
    payouts recorded since its previous run, so the refund and its clawback never reached the report: not on its day,
    nor on any other. The operator read the full sale, no refund and the rebate unclawed, for ever."""
    shop = make_merchant("late refunds")
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    buyer = make_user(appid=app.config["WECHAT_APPID"])
    _, admin = make_operator("admin")
    time_machine.move_to(at(FIRST, 10), tick=False)
    packet = issue_packet(campaign, buyer, source="claim", source_ref="late", now=at(FIRST, 10))
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=110_00).id, 1)], packet.id, at(FIRST, 10))
    db.session.commit()
    assert (
        deliver(client, app, transaction_resource(app, order, success_time=rfc3339(at(FIRST, 10)))).status_code == 204
    )
    begin_refund(db.session.get(Order, order.id), "R-LATE-000001", 40_00, "probe")
    db.session.commit()
    for n in range(4):  # the job runs every day: 5 March is final from 7 March on
        time_machine.move_to(at(FIRST + timedelta(days=n), 12), tick=False)
        run_job()
    # when: on 9 March WeChat's word arrives: the refund succeeded at 23:00 on 5 March
    time_machine.move_to(at(FIRST + timedelta(days=4), 9), tick=False)
    resource = refund_resource(app, db.session.get(Order, order.id), "R-LATE-000001", 40_00)
    resource["success_time"] = rfc3339(at(FIRST, 23))
    assert deliver_refund(client, app, resource).status_code == 204
    db.session.rollback()
    for minute in (5, 10):
        time_machine.move_to(at(FIRST + timedelta(days=4), 9, minute), tick=False)
        run_job()
    # then: 5 March holds the refund and the clawback, as the rows say
    want = expected_report(truth(campaign.id))
    assert want["series"][FIRST.isoformat()]["refunds_fen"] == 40_00
    assert differences(read_report(client, admin, campaign.id), want) == {}


# -- a packet's value given back to its funder by a full refund ------------------------------------------------


def test_a_discount_given_back_by_a_full_refund_is_not_still_a_cost(
    app, client, make_merchant, make_product, make_user, make_campaign, make_operator, time_machine
):
    """A fully refunded order gives each packet's value back to its funder (``refund:<id>:discount:<packet>``) and to
    the campaign's budget. The report kept the discount as spent: ``discounts_fen`` and the cost ratio counted a
    packet value nobody paid, while the sale and the rebate it earned were taken out. The operator read a cost above
    the budget the campaign used and above what left the funder, and a cost ratio too high by the refunded orders'
    discounts (here 25.00 on 100.00 of net sales, 2,500 bps, where the money says 15.00: 1,500 bps)."""
    shop = make_merchant("refunded discounts")
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 30_00}]}
    campaign = make_campaign(rules, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    product = make_product(shop, price_fen=110_00)
    _, admin = make_operator("admin")
    orders = []
    for n in range(2):  # two buyers each spend a 10-yuan packet on a 110-yuan order on 5 March
        buyer = make_user(appid=app.config["WECHAT_APPID"])
        time_machine.move_to(at(FIRST, 10, n), tick=False)
        packet = issue_packet(campaign, buyer, source="claim", source_ref=f"r{n}", now=at(FIRST, 10, n))
        db.session.commit()
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, at(FIRST, 10, n))
        db.session.commit()
        paid = transaction_resource(app, order, success_time=rfc3339(at(FIRST, 10, n)))
        assert deliver(client, app, paid).status_code == 204
        orders.append(order.id)
    # when: the first is refunded in full on 6 March
    time_machine.move_to(at(FIRST + timedelta(days=1), 9), tick=False)
    order = db.session.get(Order, orders[0])
    begin_refund(order, "R-FULL-000001", order.payable_fen, "probe")
    db.session.commit()
    resource = refund_resource(app, order, "R-FULL-000001", order.payable_fen)
    resource["success_time"] = rfc3339(at(FIRST + timedelta(days=1), 9))
    assert deliver_refund(client, app, resource).status_code == 204
    db.session.rollback()
    run_job()
    # then: the ledger gave the first packet's 10.00 back to its funder, and the budget has it back
    returned = db.session.execute(
        select(LedgerPosting.amount)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerEntry.idempotency_key.like("refund:%:discount:%"), LedgerPosting.amount > 0)
    ).scalar_one()
    assert returned == 10_00
    answer_ = client.get(
        f"/admin/api/reports/campaigns/{campaign.id}",
        query_string={"from": FIRST.isoformat(), "to": DAYS[-1].isoformat()},
        headers=admin,
    ).get_json()
    totals = answer_["totals"]
    by_day = {p["period"]: p for p in answer_["series"]}
    db.session.rollback()
    committed = db.session.get(type(campaign), campaign.id).budget_committed_fen
    # the report: 20.00 of discounts on 5 March, 10.00 of them given back on 6 March (the day of the refund)
    assert (totals["discounts_fen"], totals["discounts_returned_fen"]) == (20_00, 10_00)
    assert by_day[(FIRST + timedelta(days=1)).isoformat()]["discounts_returned_fen"] == 10_00
    # its cost is what the campaign's budget used: 10.00 of discount and the 5.00 rebate of the order kept
    cost = totals["discounts_fen"] - totals["discounts_returned_fen"] + totals["rebates_net_fen"]
    assert cost == committed == 10_00 + 5_00
    assert totals["influenced_net_sales_fen"] == 100_00
    assert totals["cost_ratio_bps"] == 1500
    # and the console's report page shows what was given back beside what was spent
    from tests.console_helpers import sign_in

    sign_in(client, admin)
    page = client.get(
        f"/console/campaigns/{campaign.id}/report?from={FIRST.isoformat()}&to={DAYS[-1].isoformat()}"
    ).get_data(as_text=True)
    assert "抵扣退回 Discounts returned" in page and "¥10.00" in page
