"""Probes of audiences, growth and collusion communities (round 16): each test failed before its fix. Both
databases."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, func, insert, select

from models import AuditLog, OrderPacket, RedPacket, ReviewCase, RiskCommunity, User, db, utcnow
from rebate.audiences import members_query, parse_definition
from risk.communities import GraphSettings, find_communities
from tests.test_audiences import DAY, plant_order
from tests.test_collusion import NOW, World

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]}


# -- audiences: the operator's reason is audited ---------------------------------------------------------------


def test_the_reason_given_for_an_audience_and_its_run_is_audited(client, make_operator, make_campaign):
    # given: an admin defines an audience and runs a campaign on it, each with a reason
    _, admin = make_operator("admin")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=100_00)
    made = client.post(
        "/admin/api/audiences",
        json={"name": "lapsed", "definition": {"kind": "never_used_packet"}, "reason": "spring win-back"},
        headers=admin,
    )
    assert made.status_code == 201, made.get_json()
    run = client.post(
        f"/admin/api/audiences/{made.get_json()['id']}/runs",
        json={"campaign_id": campaign.id, "holdout_bps": 1000, "reason": "ticket 4411"},
        headers={**admin, "Idempotency-Key": "why-1"},
    )
    assert run.status_code == 201, run.get_json()

    # then: the audit log says why, as every other audited operator action does
    reasons = dict(db.session.execute(select(AuditLog.action, AuditLog.reason)).tuples().all())
    assert reasons["audience.create"] == "spring win-back"
    assert reasons["audience.run"] == "ticket 4411"


def test_a_packet_spent_on_an_order_a_refund_gave_back_is_a_packet_used(
    app, make_user, make_merchant, make_product, make_campaign
):
    # given: a person who spent a packet on a paid order, refunded in full since; the campaign restores packets on a
    # refund, so the packet is theirs to spend again (issued, in no order) — and a person who never spent one
    now = utcnow()
    shop = make_merchant("shop")
    tea = make_product(shop, category="tea")
    spender, never = make_user(), make_user()
    campaign = make_campaign(RULES, packet_amount_fen=5_00)
    order = plant_order(spender, tea, now - 3 * DAY, 100_00, refunded_fen=100_00, status="refunded")
    plant_order(never, tea, now - 3 * DAY, 100_00)
    packet = RedPacket(
        campaign_id=campaign.id,
        rules_version=1,
        issuer_type="platform",
        owner_id=spender.id,
        amount_fen=5_00,
        status="issued",
        reserved_fen=5_00,
        expires_at=now + 10 * DAY,
        source="test",
        source_ref="restored",
    )
    db.session.add(packet)
    db.session.flush()
    db.session.add(OrderPacket(order_id=order.id, packet_id=packet.id, discount_fen=5_00))
    db.session.commit()

    # then: "never used a packet" holds the one who never spent one, platform-wide and at the shop
    clause = parse_definition({"kind": "never_used_packet"})
    for merchant_id in (None, shop.id):
        found = sorted(db.session.execute(members_query(clause, merchant_id, now)).scalars())
        assert found == [never.id], (merchant_id, found)


def test_starting_a_run_on_a_big_audience_does_not_count_it_to_the_end(app, client, make_operator, make_campaign):
    # given: an audience of 30 people, and runs of more than 5 left to the job
    app.config["AUDIENCE_RUN_INLINE_MAX"] = 5
    db.session.execute(insert(User), [{"status": "active"} for _ in range(30)])
    db.session.commit()
    _, admin = make_operator("admin")
    campaign = make_campaign(RULES, packet_amount_fen=1_00, budget_limit_fen=100_00)
    made = client.post(
        "/admin/api/audiences", json={"name": "all", "definition": {"kind": "never_used_packet"}}, headers=admin
    ).get_json()
    counted: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if "count(*)" in statement.lower():
            counted.append((statement, parameters))

    # when: a run starts (this request writes: on SQLite it holds the one write lock while it counts)
    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        run = client.post(
            f"/admin/api/audiences/{made['id']}/runs",
            json={"campaign_id": campaign.id, "holdout_bps": 0},
            headers={**admin, "Idempotency-Key": "big-1"},
        )
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)

    # then: it is left to the job, and whether it is small was read no further than one member past the line
    assert (run.status_code, run.get_json()["status"]) == (201, "pending"), run.get_json()
    assert len(counted) == 1 and "limit" in counted[0][0].lower(), counted
    assert 6 in (counted[0][1].values() if isinstance(counted[0][1], dict) else counted[0][1]), counted


# -- collusion: a community on the watch list that turns suspicious opens its case --------------------------------


def test_a_watched_community_that_becomes_suspicious_opens_its_case(app):
    # given: four fresh accounts on one phone (the shop's staff's) ordering at the shop, at first mostly without
    # its packets: they score (0.25 + 0.75 × 0.1) × 0.75 ≈ 0.24, on the watch list (≥ 0.2) but not suspicious
    w = World()
    shop = w.merchant()
    ring = [w.user(age_days=1) for _ in range(4)]
    w.seen(shop, "device", "one-phone")  # the shop's staff use it too
    for u in ring:
        w.seen(u, "device", "one-phone")
    for k in range(20):
        w.order(ring[k % 4], shop, packet=k < 2, days_ago=1 + k / 100)
    w.save()
    settings = GraphSettings()
    first = find_communities(NOW, settings)
    db.session.commit()
    watched = db.session.execute(select(RiskCommunity)).scalar_one()
    assert (first["stored"], first["cases"], watched.suspicious) == (1, 0, False), (first, watched.reasons)

    # when: the same accounts go on ordering with the shop's packets (the same members, so the same fingerprint)
    later = World(now=NOW + timedelta(hours=1), seed=9)
    later.campaigns = w.campaigns
    for k in range(20):
        later.order(ring[k % 4], shop, packet=True, days_ago=k / 100)
    later.save()
    again = find_communities(NOW + timedelta(hours=1), settings)
    db.session.commit()

    # then: the community is now suspicious, with the new score and reasons, and its case is open
    db.session.expire_all()
    community = db.session.execute(select(RiskCommunity)).scalar_one()
    assert community.id == watched.id and community.suspicious is True and community.score >= 0.4
    assert any("≥ 0.4" in r for r in community.reasons)
    case = db.session.execute(select(ReviewCase)).scalar_one()
    assert (case.kind, case.community_id, case.status) == ("community", community.id, "open")
    assert again["cases"] == 1

    # and: a third pass opens nothing more
    find_communities(NOW + timedelta(hours=2), settings)
    db.session.commit()
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 1
