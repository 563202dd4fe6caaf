"""Claim limits, budgets and sign-ins under concurrency, on PostgreSQL (issue 6, items 3, 4 and 10).

Each thread pushes its own app context (its own session and connection) and waits on a
barrier, so the requests really race. The database decides who wins: exactly as many as allowed.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select

from models import Campaign, RedPacket, SignIn, db
from models.limits import LimitCounter
from tests.concurrency import post_together

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
RESERVATION = 10_00 + 3_00


def race(app, requests: list[tuple[str, dict, dict]]) -> list[tuple[int, str | None]]:
    """POST every (path, headers, environ) at once; (status, error code) of each."""
    return post_together(app, requests, as_="environ_base")


def limits(**values) -> dict:
    return {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None, **values}


def claim_campaign(make_campaign, claim_limits, **fields) -> Campaign:
    fields.setdefault("budget_limit_fen", 1_000_00)
    return make_campaign(RULES, packet_amount_fen=10_00, trigger={"kind": "claim"}, claim_limits=claim_limits, **fields)


def packets_of(campaign) -> int:
    return db.session.execute(
        select(func.count()).select_from(RedPacket).where(RedPacket.campaign_id == campaign.id)
    ).scalar_one()


def budget(campaign) -> tuple[int, int, int]:
    db.session.rollback()
    db.session.refresh(campaign)
    return campaign.budget_reserved_fen, campaign.budget_committed_fen, campaign.packets_issued


def test_30_simultaneous_claims_from_one_ip_with_5_a_day_exactly_5_succeed(app, make_user, make_campaign, user_headers):
    # given: 5 claims a day per IP, no interval, no per-person limit; 30 people behind one address
    campaign = claim_campaign(make_campaign, limits(per_ip_per_day=5))
    users = [make_user() for _ in range(30)]
    path = f"/api/v1/campaigns/{campaign.id}/claim"

    # when: all 30 claim at once
    results = race(app, [(path, user_headers(u), {"REMOTE_ADDR": "203.0.113.7"}) for u in users])

    # then: exactly 5 packets; the other 25 are 429 ip_daily_limit
    assert Counter(results) == {(201, None): 5, (429, "ip_daily_limit"): 25}, results
    assert packets_of(campaign) == 5
    assert db.session.get(LimitCounter, f"c{campaign.id}:ip-day:203.0.113.7").count == 5
    assert budget(campaign) == (5 * RESERVATION, 0, 5)


def test_20_concurrent_claims_with_money_budget_for_7_exactly_7_succeed(app, make_user, make_campaign, user_headers):
    # given: a money budget of exactly 7 reservations (10 + 3 each), no claim limits
    campaign = claim_campaign(make_campaign, limits(), budget_limit_fen=7 * RESERVATION)
    users = [make_user() for _ in range(20)]
    path = f"/api/v1/campaigns/{campaign.id}/claim"

    # when: 20 people claim at once, each from their own address
    results = race(app, [(path, user_headers(u), {"REMOTE_ADDR": f"198.51.100.{i}"}) for i, u in enumerate(users)])

    # then: exactly 7; the rest 409 budget_exhausted; reserved + committed is exactly 7 reservations
    assert Counter(results) == {(201, None): 7, (409, "budget_exhausted"): 13}, results
    reserved, committed, issued = budget(campaign)
    assert reserved + committed == 7 * RESERVATION and issued == 7
    assert packets_of(campaign) == 7


def test_20_concurrent_claims_with_a_count_budget_of_4_exactly_4_succeed(app, make_user, make_campaign, user_headers):
    campaign = claim_campaign(make_campaign, limits(), max_packets=4)
    users = [make_user() for _ in range(20)]
    path = f"/api/v1/campaigns/{campaign.id}/claim"

    results = race(app, [(path, user_headers(u), {"REMOTE_ADDR": f"198.51.100.{i}"}) for i, u in enumerate(users)])

    assert Counter(results) == {(201, None): 4, (409, "packets_exhausted"): 16}, results
    assert budget(campaign) == (4 * RESERVATION, 0, 4) and packets_of(campaign) == 4


def test_10_concurrent_claims_by_one_person_with_per_person_1_exactly_1(app, make_user, make_campaign, user_headers):
    campaign = claim_campaign(make_campaign, limits(per_person=1))
    amy = make_user()
    path = f"/api/v1/campaigns/{campaign.id}/claim"

    results = race(app, [(path, user_headers(amy), {"REMOTE_ADDR": f"198.51.100.{i}"}) for i in range(10)])

    assert Counter(results) == {(201, None): 1, (429, "person_limit"): 9}, results
    assert packets_of(campaign) == 1 and budget(campaign) == (RESERVATION, 0, 1)


def test_10_concurrent_claims_from_one_device_with_an_interval_exactly_1(
    app, client, make_user, make_campaign, user_headers
):
    campaign = claim_campaign(make_campaign, limits(min_interval_seconds=600))
    device = client.post("/api/v1/devices", headers=user_headers(make_user())).get_json()["device_token"]
    users = [make_user() for _ in range(10)]
    path = f"/api/v1/campaigns/{campaign.id}/claim"

    results = race(
        app,
        [
            (path, user_headers(u, **{"X-Device-Token": device}), {"REMOTE_ADDR": f"198.51.100.{i}"})
            for i, u in enumerate(users)
        ],
    )

    assert Counter(results) == {(201, None): 1, (429, "device_interval"): 9}, results
    assert packets_of(campaign) == 1


def sign_in_race(app, make_user, make_campaign, user_headers):
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=1_00, trigger={"kind": "daily_sign_in"})
    amy = make_user()
    results = race(app, [("/api/v1/sign-in", user_headers(amy), {}) for _ in range(10)])
    db.session.rollback()
    return campaign, results


def test_10_concurrent_sign_ins_by_one_user_make_one_sign_in(app, make_user, make_campaign, user_headers):
    # given: a daily sign-in campaign paying 1 yuan
    # when: one user's client fires 10 sign-ins at once
    campaign, results = sign_in_race(app, make_user, make_campaign, user_headers)

    # then: one sign-in row, one packet, one reservation (1 + 3)
    assert db.session.execute(select(func.count()).select_from(SignIn)).scalar_one() == 1
    assert packets_of(campaign) == 1
    assert budget(campaign) == (1_00 + 3_00, 0, 1)
    assert (200, None) in results


def test_10_concurrent_sign_ins_are_all_answered_as_todays_sign_in(app, make_user, make_campaign, user_headers):
    _, results = sign_in_race(app, make_user, make_campaign, user_headers)
    assert Counter(status for status, _ in results) == {200: 10}, results
