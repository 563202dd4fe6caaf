"""Packet constraints (issue 6, items 2 and 3): product and category scope, tiers, fixed validity,
regions, channels, Beijing day-of-week / hour windows, the count budget, and pausing.

Each refusal is checked with its status and code, and with proof it changed nothing:
packets, orders, budget counters, the count budget and the claim-limit counters.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from models import Campaign, Order, Rebate, RedPacket, db, utcnow
from models.limits import LimitCounter
from rebate import create_order, issue_packet
from rebate.errors import RebateError
from rebate.orders import LineRequest
from rebate.triggers import on_registered
from risk import PlatformLimits
from web.errors import KIND_STATUS

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def count(model, **where) -> int:
    stmt = select(func.count()).select_from(model)
    for name, value in where.items():
        stmt = stmt.where(getattr(model, name) == value)
    return db.session.execute(stmt).scalar_one()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def state(campaign: Campaign) -> tuple:
    """Everything a refusal must leave alone."""
    db.session.rollback()
    db.session.refresh(campaign)
    counters = tuple(
        (c.key, c.window, c.count, c.last_at)
        for c in db.session.execute(select(LimitCounter).order_by(LimitCounter.key)).scalars()
    )
    packets = tuple(
        (p.id, p.status, p.owner_id, p.reserved_fen)
        for p in db.session.execute(select(RedPacket).order_by(RedPacket.id)).scalars()
    )
    return (
        campaign.budget_reserved_fen,
        campaign.budget_committed_fen,
        campaign.packets_issued,
        count(Order),
        count(Rebate),
        packets,
        counters,
    )


def refused(call, *args, **kwargs) -> RebateError:
    with pytest.raises(RebateError) as info:
        call(*args, **kwargs)
    db.session.rollback()
    return info.value


def outcome(exc: RebateError) -> tuple[int, str]:
    return KIND_STATUS[exc.kind], exc.code


def order(user, lines, packet=None, now=None, channel="mini_program") -> Order:
    result = create_order(
        user, [LineRequest(p.id, q) for p, q in lines], packet.id if packet else None, now or utcnow(), channel
    )
    db.session.commit()
    return result


def give(campaign, user, now=None, ref=None) -> RedPacket:
    packet = issue_packet(campaign, user, source="test", source_ref=ref or f"u{user.id}", now=now or utcnow())
    db.session.commit()
    return packet


def claim(client, user_headers, campaign, user, **headers):
    return client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(user, **headers))


def claim_campaign(make_campaign, **fields):
    fields.setdefault("budget_limit_fen", 1_000_00)
    fields.setdefault("packet_amount_fen", 10_00)
    fields.setdefault("claim_limits", NO_LIMITS)
    return make_campaign(RULES, trigger={"kind": "claim"}, **fields)


# -- product and category scope, tiers ------------------------------------------------


def test_product_scope_discounts_only_the_products_named(make_user, make_merchant, make_product, make_campaign):
    # given: a 10-yuan packet for one product of a shop
    shop = make_merchant()
    lipstick, mascara = make_product(shop, price_fen=30_00), make_product(shop, price_fen=50_00)
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, packet_products=[lipstick.id])
    amy = make_user()
    packet = give(campaign, amy)
    before = state(campaign)

    # when: an order of only the other product tries to use it
    exc = refused(order, amy, [(mascara, 1)], packet)

    # then: 422 packet_wrong_category naming the product, nothing changed
    assert outcome(exc) == (422, "packet_wrong_category") and str(lipstick.id) in str(exc)
    assert state(campaign) == before

    # when: an order of both uses it
    both = order(amy, [(lipstick, 1), (mascara, 1)], packet)

    # then: 10 off the 80-yuan order
    assert (both.total_fen, both.discount_fen, both.payable_fen) == (80_00, 10_00, 70_00)


def test_tiered_packet_counts_only_in_scope_spend(make_user, make_merchant, make_product, make_campaign):
    # given: "5 off, 10 off from 50" on one product only
    shop = make_merchant()
    scoped, other = make_product(shop, price_fen=40_00), make_product(shop, price_fen=100_00)
    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_tiers=[{"min_spend_fen": 0, "amount_fen": 5_00}, {"min_spend_fen": 50_00, "amount_fen": 10_00}],
        packet_products=[scoped.id],
    )
    amy, ben = make_user(), make_user()

    # when: amy's 140-yuan order has 40 yuan of the scoped product; ben buys 80 yuan of it
    amys = order(amy, [(scoped, 1), (other, 1)], give(campaign, amy))
    bens = order(ben, [(scoped, 2)], give(campaign, ben))

    # then: amy reaches only the 5-yuan tier, ben the 10-yuan tier
    assert (amys.total_fen, amys.discount_fen) == (140_00, 5_00)
    assert (bens.total_fen, bens.discount_fen) == (80_00, 10_00)


def test_category_scope_and_minimum_spend_on_eligible_goods(make_user, make_merchant, make_product, make_campaign):
    # given: 10 off beauty goods, from 50 yuan of beauty goods
    shop = make_merchant()
    cream = make_product(shop, price_fen=30_00, category="beauty")
    bread = make_product(shop, price_fen=40_00, category="food")
    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        packet_min_spend_fen=50_00,
        packet_categories=["beauty"],
    )
    amy = make_user()
    packet = give(campaign, amy)
    before = state(campaign)

    # then: food only is 422 packet_wrong_category; 30 beauty + 40 food is 422 below_min_spend
    assert outcome(refused(order, amy, [(bread, 2)], packet)) == (422, "packet_wrong_category")
    assert outcome(refused(order, amy, [(cream, 1), (bread, 1)], packet)) == (422, "below_min_spend")
    assert state(campaign) == before

    # when: 60 yuan of beauty goods
    ok = order(amy, [(cream, 2), (bread, 1)], packet)

    # then: 10 off
    assert (ok.total_fen, ok.discount_fen) == (100_00, 10_00)


# -- fixed validity dates ------------------------------------------------------------


def test_fixed_validity_dates_not_yet_valid_then_valid_then_expired(make_user, make_product, make_campaign):
    # given: packets valid from 10 March to 20 March, issued on 1 March
    valid_from, valid_until = at("2025-03-10T00:00:00"), at("2025-03-20T00:00:00")
    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        packet_valid_from=valid_from,
        packet_valid_until=valid_until,
    )
    amy, ben = make_user(), make_user()
    product = make_product(price_fen=50_00)
    amys = give(campaign, amy, now=at("2025-03-01T00:00:00"))
    bens = give(campaign, ben, now=at("2025-03-01T00:00:00"), ref="ben")
    assert (amys.valid_from, amys.expires_at) == (valid_from, valid_until)
    before = state(campaign)

    # then: before 10 March it is not usable yet (409), and nothing changes
    exc = refused(order, amy, [(product, 1)], amys, now=valid_from - timedelta(seconds=1))
    assert KIND_STATUS[exc.kind] == 409 and exc.code == "packet_not_yet_valid" and "valid from" in str(exc)
    # and: at 20 March it has expired (409 packet_expired)
    assert outcome(refused(order, ben, [(product, 1)], bens, now=valid_until)) == (409, "packet_expired")
    assert state(campaign) == before

    # when: used on 10 March exactly
    ok = order(amy, [(product, 1)], amys, now=valid_from)

    # then: 10 off
    assert ok.discount_fen == 10_00


def test_a_packet_not_valid_yet_says_so(make_user, make_product, make_campaign):
    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        packet_valid_from=at("2025-03-10T00:00:00"),
        packet_valid_until=at("2025-03-20T00:00:00"),
    )
    amy = make_user()
    packet = give(campaign, amy, now=at("2025-03-01T00:00:00"))
    exc = refused(order, amy, [(make_product(price_fen=50_00), 1)], packet, now=at("2025-03-05T00:00:00"))
    assert outcome(exc) == (409, "packet_not_yet_valid")


def test_packet_valid_from_alone_delays_validity(make_user, make_campaign):
    # given: packets valid from 10 March for the campaign's usual 30 days
    campaign = make_campaign(
        RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, packet_valid_from=at("2025-03-10T00:00:00")
    )

    # when: one is issued on 1 March
    packet = give(campaign, make_user(), now=at("2025-03-01T00:00:00"))

    # then: it starts on 10 March
    assert packet.valid_from == at("2025-03-10T00:00:00")


def test_no_packet_is_issued_after_its_fixed_validity_ended(make_user, make_campaign):
    # given: packets valid until 20 March
    campaign = make_campaign(
        RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, packet_valid_until=at("2025-03-20T00:00:00")
    )
    amy = make_user()
    before = state(campaign)

    # when: the campaign (still running) is asked for a packet on 21 March
    exc = refused(issue_packet, campaign, amy, source="test", source_ref="late", now=at("2025-03-21T00:00:00"))

    # then: refused with a 409, no budget reserved for a dead packet
    assert KIND_STATUS[exc.kind] == 409
    assert state(campaign) == before


# -- regions --------------------------------------------------------------------------


def test_regions_refuse_claim_and_issue_outside_them(client, user_headers, make_user, make_campaign):
    # given: a campaign for Beijing and Tianjin only, claimable with default-free limits but counting per person
    campaign = claim_campaign(
        make_campaign,
        regions=["beijing", "tianjin"],
        claim_limits={"per_ip_per_day": None, "min_interval_seconds": None, "per_person": 1},
    )
    shanghai, nowhere, beijing = make_user(region="shanghai"), make_user(), make_user(region="beijing")
    before = state(campaign)

    # when: a Shanghai user and a user with no region claim
    for user in (shanghai, nowhere):
        resp = claim(client, user_headers, campaign, user)

        # then: 422 outside_region, naming the regions
        assert resp.status_code == 422 and resp.get_json()["error"] == "outside_region"
        assert "beijing" in resp.get_json()["message"]

    # and: nothing changed, not even the limit counters
    assert state(campaign) == before

    # and: issuing directly is refused the same way; a trigger silently skips them
    assert outcome(refused(issue_packet, campaign, shanghai, source="t", source_ref="1", now=utcnow())) == (
        422,
        "outside_region",
    )
    registration = make_campaign(RULES, packet_amount_fen=5_00, regions=["beijing"], trigger={"kind": "registration"})
    assert on_registered(shanghai, utcnow(), limits=PlatformLimits.off()) == []
    db.session.commit()
    assert count(RedPacket, campaign_id=registration.id) == 0

    # when: the Beijing user claims
    resp = claim(client, user_headers, campaign, beijing)

    # then: 201
    assert resp.status_code == 201
    assert count(RedPacket, owner_id=beijing.id) == 1


def test_regions_refuse_a_code_claim_outside_them(client, user_headers, make_user, make_campaign):
    from rebate.packets import generate_batch

    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        regions=["beijing"],
        claim_limits={"per_ip_per_day": 5, "min_interval_seconds": None, "per_person": 1},
    )
    [packet] = generate_batch(campaign, 1, utcnow(), "b1")
    db.session.commit()
    before = state(campaign)

    resp = client.post(
        "/api/v1/red-packets/claim", json={"code": packet.claim_code}, headers=user_headers(make_user(region="xian"))
    )

    assert resp.status_code == 422 and resp.get_json()["error"] == "outside_region"
    assert state(campaign) == before


# -- channels -------------------------------------------------------------------------


def test_channels_refuse_a_claim_from_another_channel_and_an_unknown_channel(
    client, user_headers, make_user, make_campaign
):
    # given: a mini-program-only campaign
    campaign = claim_campaign(
        make_campaign,
        channels=["mini_program"],
        claim_limits={"per_ip_per_day": 5, "min_interval_seconds": None, "per_person": 1},
    )
    amy = make_user()
    before = state(campaign)

    # when: amy claims from H5
    h5 = claim(client, user_headers, campaign, amy, **{"X-Channel": "h5"})

    # then: 422 wrong_channel
    assert h5.status_code == 422 and h5.get_json()["error"] == "wrong_channel"

    # when: a channel we do not know
    bogus = claim(client, user_headers, campaign, amy, **{"X-Channel": "tv"})

    # then: 422 invalid_channel; neither changed anything
    assert bogus.status_code == 422 and bogus.get_json()["error"] == "invalid_channel"
    assert state(campaign) == before

    # when: from the mini-program (the default channel) it works
    assert claim(client, user_headers, campaign, amy).status_code == 201
    assert claim(client, user_headers, campaign, make_user(), **{"X-Channel": "mini_program"}).status_code == 201


def test_channels_refuse_use_on_another_channel(make_user, make_product, make_campaign):
    # given: amy holds a packet from a mini-program-only campaign
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, channels=["mini_program"])
    amy = make_user()
    packet = give(campaign, amy)
    product = make_product(price_fen=50_00)
    before = state(campaign)

    # then: using it in an H5 order is 422 wrong_channel and changes nothing
    assert outcome(refused(order, amy, [(product, 1)], packet, channel="h5")) == (422, "wrong_channel")
    assert state(campaign) == before

    # and: in a mini-program order it works
    assert order(amy, [(product, 1)], packet).discount_fen == 10_00


def test_an_h5_packet_can_be_spent_in_an_h5_order(client, user_headers, make_user, make_product, make_campaign):
    # given: amy claimed a packet of an H5-only campaign from H5
    campaign = claim_campaign(make_campaign, channels=["h5"])
    amy = make_user()
    packet = claim(client, user_headers, campaign, amy, **{"X-Channel": "h5"}).get_json()

    # when: she orders from H5 with it
    resp = client.post(
        "/api/v1/orders",
        json={
            "lines": [{"product_id": make_product(price_fen=50_00).id, "quantity": 1}],
            "red_packet_id": packet["id"],
        },
        headers=user_headers(amy, **{"X-Channel": "h5"}),
    )

    # then: it applies
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["discount_fen"] == 10_00


# -- day-of-week and hour windows (Beijing time) --------------------------------------


def test_usage_window_weekend_10_to_22_beijing_for_claims(client, user_headers, make_user, make_campaign):
    # given: claims and use on Saturdays and Sundays, 10:00-22:00 Beijing time (1 March 2025 was a Saturday)
    campaign = claim_campaign(make_campaign, usage_windows={"weekdays": [6, 7], "hours": [10, 22]})
    before = state(campaign)

    def claim_at(when: str):
        with time_machine.travel(at(when), tick=False):
            user = make_user()
            return claim(client, user_headers, campaign, user)

    # then: Wednesday noon, Saturday 09:59 and Saturday 22:00 (Beijing) are 409 outside_window
    for when in ("2025-03-05T04:00:00", "2025-03-08T01:59:59", "2025-03-08T14:00:00"):
        resp = claim_at(when)
        assert (resp.status_code, resp.get_json()["error"]) == (409, "outside_window"), when
    assert state(campaign)[:5] == before[:5] and count(RedPacket) == 0

    # and: Saturday 10:00 and Sunday 21:59 Beijing are inside
    assert claim_at("2025-03-08T02:00:00").status_code == 201
    assert claim_at("2025-03-09T13:59:59").status_code == 201


def test_usage_window_weekday_is_the_beijing_weekday(client, user_headers, make_user, make_campaign):
    # given: Saturday-only claims
    campaign = claim_campaign(make_campaign, usage_windows={"weekdays": [6]})

    def claim_at(when: str):
        with time_machine.travel(at(when), tick=False):
            return claim(client, user_headers, campaign, make_user())

    # then: Friday 15:59 UTC is Friday 23:59 in Beijing: refused; Friday 16:30 UTC is Saturday 00:30: allowed
    assert claim_at("2025-03-07T15:59:00").status_code == 409
    assert claim_at("2025-03-07T16:30:00").status_code == 201
    # and: Saturday 16:30 UTC is already Sunday in Beijing: refused
    assert claim_at("2025-03-08T16:30:00").status_code == 409


def test_usage_window_applies_to_use_in_an_order(client, user_headers, make_user, make_product, make_campaign):
    # given: amy claimed a weekend-only packet on Saturday 8 March at noon, Beijing time
    campaign = claim_campaign(make_campaign, usage_windows={"weekdays": [6, 7], "hours": [10, 22]})
    amy = make_user()
    with time_machine.travel(at("2025-03-08T04:00:00"), tick=False):
        assert claim(client, user_headers, campaign, amy).status_code == 201
    packet = db.session.execute(select(RedPacket).filter_by(owner_id=amy.id)).scalar_one()
    product = make_product(price_fen=50_00)
    before = state(campaign)

    # then: using it on Monday noon, or Saturday 23:00 Beijing, is 409 outside_window and changes nothing
    for when in ("2025-03-10T04:00:00", "2025-03-15T15:00:00"):
        assert outcome(refused(order, amy, [(product, 1)], packet, now=at(when))) == (409, "outside_window")
    assert state(campaign) == before

    # when: used on Saturday 15 March at noon
    ok = order(amy, [(product, 1)], packet, now=at("2025-03-15T04:00:00"))

    # then: 10 off
    assert ok.discount_fen == 10_00


# -- count budget ---------------------------------------------------------------------


def test_count_budget_max_packets_3_refuses_the_4th_claim(client, user_headers, make_user, make_campaign):
    # given: at most 3 packets, per person 1, 10 a day per IP
    campaign = claim_campaign(
        make_campaign,
        max_packets=3,
        claim_limits={"per_ip_per_day": 10, "min_interval_seconds": None, "per_person": 1},
    )
    users = [make_user() for _ in range(4)]

    # when: three claim
    for user in users[:3]:
        assert claim(client, user_headers, campaign, user).status_code == 201

    # then: the count budget is used up, 3 reservations of 10 + 3
    before = state(campaign)
    assert before[:3] == (3 * 13_00, 0, 3)

    # when: the fourth claims
    resp = claim(client, user_headers, campaign, users[3])

    # then: 409 packets_exhausted; counters (budget, count, claim limits) exactly as before
    assert (resp.status_code, resp.get_json()["error"]) == (409, "packets_exhausted")
    assert state(campaign) == before
    assert db.session.get(LimitCounter, f"c{campaign.id}:person:{users[3].id}") is None
    assert db.session.get(LimitCounter, f"c{campaign.id}:ip-day:127.0.0.1").count == 3


def test_count_budget_also_limits_trigger_issues(make_user, make_campaign):
    from models import Alert

    campaign = make_campaign(RULES, packet_amount_fen=5_00, max_packets=1, trigger={"kind": "registration"})
    assert len(on_registered(make_user(), utcnow(), limits=PlatformLimits.off())) == 1
    db.session.commit()
    late = make_user()

    assert on_registered(late, utcnow(), limits=PlatformLimits.off()) == []
    db.session.commit()
    db.session.refresh(campaign)
    assert campaign.packets_issued == 1 and count(RedPacket, owner_id=late.id) == 0
    assert count(Alert, kind="budget_exhausted") == 1


# -- pausing --------------------------------------------------------------------------


def test_paused_campaign_stops_issuing_and_code_claims_409(client, user_headers, make_user, make_campaign):
    from rebate.packets import generate_batch

    # given: a campaign with an unclaimed code, then paused
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, claim_limits=NO_LIMITS)
    [packet] = generate_batch(campaign, 1, utcnow(), "b1")
    campaign.status = "paused"
    db.session.commit()
    amy = make_user()
    before = state(campaign)

    # when: amy claims the code, and a trigger tries to issue
    resp = client.post("/api/v1/red-packets/claim", json={"code": packet.claim_code}, headers=user_headers(amy))
    exc = refused(issue_packet, campaign, amy, source="t", source_ref="1", now=utcnow())

    # then: 409 campaign_not_running both ways, and nothing changed
    assert (resp.status_code, resp.get_json()["error"]) == (409, "campaign_not_running")
    assert outcome(exc) == (409, "campaign_not_running")
    assert state(campaign) == before


def test_paused_campaign_claim_is_409(client, user_headers, make_user, make_campaign):
    campaign = claim_campaign(make_campaign, status="paused")
    resp = claim(client, user_headers, campaign, make_user())
    assert (resp.status_code, resp.get_json()["error"]) == (409, "campaign_not_running")


def test_paused_campaign_claim_endpoint_refuses_and_changes_nothing(client, user_headers, make_user, make_campaign):
    campaign = claim_campaign(make_campaign, status="paused")
    before = state(campaign)
    resp = claim(client, user_headers, campaign, make_user())
    assert resp.status_code in (404, 409)
    assert state(campaign) == before


def test_paused_campaign_stops_awarding_but_honours_the_packet(make_user, make_product, make_campaign, pay):
    # given: amy holds a 10-yuan packet (reserved 10 + 3); then the campaign is paused
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00)
    amy = make_user()
    packet = give(campaign, amy)
    paid = order(amy, [(make_product(price_fen=50_00), 1)], packet)
    campaign.status = "paused"
    db.session.commit()

    # when: the order is paid
    pay(paid)

    # then: the discount stands, the consumer rebate is skipped with the reason, only the face is committed
    rebate = db.session.execute(select(Rebate).filter_by(order_id=paid.id)).scalar_one()
    assert (rebate.amount_fen, rebate.status, rebate.reason_code) == (0, "skipped", "campaign_not_running")
    db.session.refresh(campaign)
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (0, 10_00)


def test_sign_in_from_another_channel_earns_no_packet_of_a_channel_bound_campaign(
    client, user_headers, make_user, make_campaign
):
    # given: a sign-in campaign for the mini-program only
    campaign = make_campaign(
        RULES, packet_amount_fen=1_00, channels=["mini_program"], trigger={"kind": "daily_sign_in"}
    )

    # when: amy signs in from H5
    resp = client.post("/api/v1/sign-in", headers=user_headers(make_user(), **{"X-Channel": "h5"}))

    # then: the sign-in counts, but the mini-program campaign issues nothing
    assert resp.status_code == 200 and resp.get_json()["packets"] == []
    assert count(RedPacket, campaign_id=campaign.id) == 0


def test_an_expired_packet_gives_its_count_budget_slot_back(make_user, make_campaign):
    from rebate.packets import expire_due_packets

    # given: a campaign of one packet, issued and expired unused
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, max_packets=1)
    give(campaign, make_user(), now=at("2025-03-01T00:00:00"))
    assert expire_due_packets(at("2025-04-01T00:00:00")) == 1
    db.session.commit()

    # then: both the money reservation and the count slot are back (so another person can be given one)
    db.session.refresh(campaign)
    assert (campaign.budget_reserved_fen, campaign.packets_issued) == (0, 0)
