"""Probe 17: audiences and measured re-engagement runs (docs/architecture.md §15). Both databases."""

from __future__ import annotations

from sqlalchemy import select

from insights.lift import run_lift
from jobs.audiences import work_runs
from models import AudienceRun, OrderPacket, RedPacket, User, db, utcnow
from rebate.budgets import release_reserved
from tests.test_audiences import DAY, RULES, many_users, new_run, plant_order


def test_the_uptake_counts_only_packets_spent_on_orders_paid_in_the_window(
    app, make_operator, make_campaign, make_merchant, make_product
):
    """The lift is "over the orders paid in a window from the run's start" (§15), its buyers and sales as well as
    the treated's packet uptake. A packet spent three weeks after the run is no uptake of a 14-day window (its
    order is in no sales of that window either): the report counted every packet ever spent."""
    ids = many_users(4)
    shop = make_merchant("shop")
    product = make_product(shop, category="tea")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0)  # no holdout: all four treated
    work_runs(chunk=20)
    run = db.session.get(AudienceRun, run.id)
    start = run.started_at
    packets = {
        p.owner_id: p for p in db.session.execute(select(RedPacket).where(RedPacket.owner_id.in_(ids))).scalars()
    }
    soon = plant_order(db.session.get(User, ids[0]), product, start + DAY, 100_00)
    late = plant_order(db.session.get(User, ids[1]), product, start + 20 * DAY, 100_00)
    late_refunded = plant_order(db.session.get(User, ids[2]), product, start + 21 * DAY, 100_00, refunded_fen=100_00)
    for order, owner in ((soon, ids[0]), (late, ids[1])):  # spent (the payment path would commit it)
        packet = packets[owner]
        release_reserved(campaign.id, packet.reserved_fen)
        packet.status, packet.order_id, packet.reserved_fen = "used", order.id, 0
        db.session.add(OrderPacket(order_id=order.id, packet_id=packet.id, discount_fen=1_00))
    db.session.add(OrderPacket(order_id=late_refunded.id, packet_id=packets[ids[2]].id, discount_fen=1_00))
    db.session.commit()

    in_two_weeks = run_lift(run, start + 30 * DAY, 14)
    in_a_month = run_lift(run, start + 30 * DAY, 30)

    assert in_two_weeks["treated"]["orders"] == 1  # the window's orders: the soon one only …
    assert in_two_weeks["uptake"] == {"issued": 4, "used": 1, "uptake_bps": 2500}  # … and so its packets
    assert in_a_month["treated"]["orders"] == 3
    assert in_a_month["uptake"] == {"issued": 4, "used": 3, "uptake_bps": 7500}
    assert run_lift(run, start + 2 * DAY, 14)["uptake"]["used"] == 1  # a window not over yet: up to now


def test_a_merchants_staff_see_no_packet_spent_at_another_shop_in_their_runs_uptake(
    app, client, make_operator, make_campaign, make_merchant, make_product
):
    """A merchant-scoped audience "counts only orders at its merchant", so its staff learn nothing of other shops
    (§15). A platform campaign run on a shop's buyers: a packet they spent at another shop was counted in the uptake
    the shop's staff read (how many of their buyers shop elsewhere), while the same order is in no sales there."""
    shop, elsewhere = make_merchant("shop"), make_merchant("elsewhere")
    here, there = make_product(shop, category="tea"), make_product(elsewhere, category="tea")
    _, staff = make_operator("merchant_staff", shop)
    buyers = many_users(2)
    for uid in buyers:
        plant_order(db.session.get(User, uid), here, utcnow() - 3 * DAY, 10_00)
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=1_000_00)  # the platform's, any shop
    run = new_run(make_operator, campaign, {"kind": "never_used_packet"}, 0, merchant_id=shop.id)
    work_runs(chunk=20)
    run = db.session.get(AudienceRun, run.id)
    run.started_at -= 2 * DAY  # chosen two days ago (the orders below are then in the past)
    packets = {
        p.owner_id: p for p in db.session.execute(select(RedPacket).where(RedPacket.owner_id.in_(buyers))).scalars()
    }
    for uid, product in ((buyers[0], there), (buyers[1], here)):
        order = plant_order(db.session.get(User, uid), product, run.started_at + DAY, 50_00)
        packet = packets[uid]
        release_reserved(campaign.id, packet.reserved_fen)
        packet.status, packet.order_id, packet.reserved_fen = "used", order.id, 0
        db.session.add(OrderPacket(order_id=order.id, packet_id=packet.id, discount_fen=1_00))
    db.session.commit()

    shown = client.get(f"/admin/api/audiences/runs/{run.id}?window_days=14", headers=staff)

    assert shown.status_code == 200, shown.get_json()
    lift = shown.get_json()["lift"]
    assert (lift["treated"]["orders"], lift["treated"]["sales_fen"]) == (1, 50_00)  # the shop's own order only …
    assert lift["uptake"] == {"issued": 2, "used": 1, "uptake_bps": 5000}  # … and the packet spent there
