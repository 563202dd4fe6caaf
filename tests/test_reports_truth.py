"""The effect reports against the truth: scenarios built through the app's own operations (orders paid through
the payment intake, refunds, packets restored or expiring), every figure compared with what the rows say.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import func, select

from insights.reports import campaign_report, overview
from jobs.insights import days_between, rebuild
from models import Campaign, InsightsDaily, Order, OrderPacket, RedPacket, db
from models.base import BEIJING
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money


def bj(*args) -> datetime:
    return datetime(*args, tzinfo=BEIJING).astimezone(UTC)


def refund(order: Order, number: str, amount_fen: int, at: datetime) -> None:
    begin_refund(order, number, amount_fen)
    apply_refund(order.out_trade_no, number, amount_fen, at, refund_id=f"wx-{number}", money=app_money())
    db.session.commit()


def counter_rows(days: list[date]) -> list[tuple]:
    t = InsightsDaily
    stmt = select(t.day, t.merchant_id, t.campaign_id, t.metric, t.dim, t.count, t.fen).where(t.day.in_(days))
    return sorted(db.session.execute(stmt).all())


def spend_packet(campaign, user, product, pay, time_machine, at: datetime) -> Order:
    """At ``at``: a packet of ``campaign`` issued to ``user`` and spent on an order of ``product``, paid."""
    time_machine.move_to(at, tick=False)
    packet = issue_packet(campaign, user, source="test", source_ref=f"{user.id}:{at.timestamp()}", now=at)
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, 1)], packet.id, at)
    db.session.commit()
    assert pay(order, at=at) == "applied"
    db.session.refresh(order)
    return order


# -- a packet restored by a refund still was used: the day it was spent keeps it, however late the rollup -----


def test_a_packet_restored_by_a_refund_stays_used_on_the_day_it_was_spent(
    make_campaign, make_user, make_product, pay, time_machine
):
    # given: a 10-yuan packet (restored on refund) spent on a 110-yuan order on 5 March (Beijing)
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]},
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        restore_packet_on_refund=True,
    )
    buyer, product = make_user(), make_product(price_fen=110_00)
    order = spend_packet(campaign, buyer, product, pay, time_machine, bj(2026, 3, 5, 10))
    march5 = date(2026, 3, 5)
    rebuild([march5], bj(2026, 3, 5, 12))  # the job, that day
    built_that_day = counter_rows([march5])
    # when: the order is refunded in full on 6 March (a day later: 5 March is rebuilt by the job again)
    time_machine.move_to(bj(2026, 3, 6, 11), tick=False)
    refund(order, "R-restore", order.payable_fen, bj(2026, 3, 6, 11))
    packet = db.session.get(RedPacket, order.packet_id)
    db.session.refresh(packet)
    assert packet.status == "issued"  # restored: it may be spent again
    rebuild([march5, date(2026, 3, 6)], bj(2026, 3, 6, 12))
    # then: the packet was spent on 5 March and its discount counted there: a used packet on that day still
    spent = db.session.execute(select(func.count()).select_from(OrderPacket)).scalar()
    assert spent == 1
    campaign = db.session.get(Campaign, campaign.id)
    day = campaign_report(campaign, march5, march5)["totals"]
    assert (day["discounts_fen"], day["influenced_orders"]) == (10_00, 1)
    assert (day["packets_used"], day["packets_used_fen"], day["uptake_bps"]) == (1, 10_00, 10000)
    # and the day reads the same whether it was built before the refund or after it
    assert counter_rows([march5]) == built_that_day
    # the refund is on its own day
    later = campaign_report(campaign, date(2026, 3, 6), date(2026, 3, 6))["totals"]
    assert (later["influenced_refunds_fen"], later["packets_used"]) == (order.payable_fen, 0)
    # spent again on 8 March: a second use, on its own day
    time_machine.move_to(bj(2026, 3, 8, 9), tick=False)
    again = create_order(buyer, [LineRequest(product.id, 1)], packet.id, bj(2026, 3, 8, 9))
    db.session.commit()
    assert pay(again, at=bj(2026, 3, 8, 9)) == "applied"
    rebuild(days_between(march5, date(2026, 3, 8)), bj(2026, 3, 8, 12))
    window = campaign_report(db.session.get(Campaign, campaign.id), march5, date(2026, 3, 8))["totals"]
    assert (window["packets_issued"], window["packets_used"], window["discounts_fen"]) == (1, 2, 20_00)
    assert overview(march5, date(2026, 3, 8))["totals"]["packets_used"] == 2


# -- the what-if replay reads the orders that spent the campaign's packets, whichever packet came first --------


def test_the_replay_counts_a_campaigns_packet_stacked_second_and_only_its_own_discount(
    make_merchant, make_campaign, make_user, make_product, make_operator, client, pay, time_machine
):
    from models import Rebate

    # given: two campaigns of one shop that allow two packets per order; one order spends a packet of each
    shop = make_merchant("stacking shop")
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 50_00}]}

    def campaign(face):
        return make_campaign(
            rules,
            issuer_type="merchant",
            issuer_merchant_id=shop.id,
            funder_type="merchant_deposit",
            funder_merchant_id=shop.id,
            budget_limit_fen=1_000_00,
            packet_amount_fen=face,
            packet_merchant_id=shop.id,
            max_packets_per_order=2,
        )

    first, second = campaign(20_00), campaign(5_00)
    buyer = make_user()
    paid_at = datetime(2026, 3, 5, 2, tzinfo=UTC)
    time_machine.move_to(paid_at, tick=False)
    packets = [issue_packet(c, buyer, source="test", source_ref=f"s{c.id}", now=paid_at) for c in (first, second)]
    db.session.commit()
    product = make_product(shop, price_fen=200_00)
    order = create_order(buyer, [LineRequest(product.id, 1)], [p.id for p in packets], paid_at)
    db.session.commit()
    assert pay(order, at=paid_at) == "applied"
    discounts = dict(
        db.session.execute(
            select(RedPacket.campaign_id, OrderPacket.discount_fen).join(
                RedPacket, RedPacket.id == OrderPacket.packet_id
            )
        ).all()
    )
    assert discounts == {first.id: 20_00, second.id: 5_00}
    _, admin = make_operator("admin")
    time_machine.move_to(paid_at + timedelta(days=1), tick=False)
    for c in (first, second):
        awarded = db.session.execute(
            select(func.sum(Rebate.original_fen)).where(Rebate.campaign_id == c.id)
        ).scalar_one()
        answer = client.post(f"/admin/api/campaigns/{c.id}/simulate", json={"rules": rules, "days": 7}, headers=admin)
        assert answer.status_code == 200, answer.json
        current = answer.json["current"]
        # then: each replay holds the order once, with its own campaign's discount and what the engine awarded
        assert (current["orders"], current["packet_value_fen"]) == (1, discounts[c.id])
        assert current["rebates_fen"] == awarded
        assert current["total_cost_fen"] == discounts[c.id] + awarded


# -- a refund and its clawback on the same Beijing day, however late its notification is worked ---------------


def test_a_clawback_counts_on_the_day_its_refund_succeeded(make_campaign, make_user, make_product, pay, time_machine):
    from models import Rebate, RebateAdjustment

    # given: a 10-yuan packet on a 110-yuan order paid on 20 March; the buyer earns 5 % to the balance
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]},
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
    )
    order = spend_packet(campaign, make_user(), make_product(price_fen=110_00), pay, time_machine, bj(2026, 3, 20, 9))
    awarded = db.session.execute(select(Rebate.original_fen).where(Rebate.order_id == order.id)).scalar_one()
    assert awarded == 5_00
    # when: the refund succeeded at 23:58 on 31 March (Beijing) and its notification was worked at 00:03 on 1 April
    time_machine.move_to(bj(2026, 4, 1, 0, 3), tick=False)
    refund(order, "R-late", order.payable_fen, bj(2026, 3, 31, 23, 58))
    [adjustment] = db.session.execute(select(RebateAdjustment)).scalars().all()
    assert adjustment.amount_fen == 5_00 and adjustment.created_at >= bj(2026, 4, 1)
    rebuild(days_between(date(2026, 3, 20), date(2026, 4, 2)), bj(2026, 4, 2, 12))
    # then: March holds the sale, its refund and the rebate taken back: nothing of it left, in April nothing
    march = campaign_report(db.session.get(Campaign, campaign.id), date(2026, 3, 1), date(2026, 3, 31), "month")
    totals = march["totals"]
    assert (totals["influenced_sales_fen"], totals["influenced_refunds_fen"]) == (100_00, 100_00)
    assert (totals["rebates_awarded_fen"], totals["rebates_clawed_back_fen"], totals["rebates_net_fen"]) == (
        5_00,
        5_00,
        0,
    )
    by_day = {p["period"]: p for p in campaign_report(campaign, date(2026, 3, 31), date(2026, 4, 1))["series"]}
    assert by_day["2026-03-31"]["refunds_fen"] == by_day["2026-03-31"]["influenced_refunds_fen"] == 100_00
    assert by_day["2026-03-31"]["rebates_clawed_back_fen"] == 5_00
    assert by_day["2026-04-01"]["rebates_clawed_back_fen"] == by_day["2026-04-01"]["refunds_fen"] == 0
    april = overview(date(2026, 4, 1), date(2026, 4, 30), granularity="month")["totals"]
    assert (april["refunds_fen"], april["rebates_clawed_back_fen"]) == (0, 0)
