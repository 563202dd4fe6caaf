"""Probe 17: claiming red packets around the limits (a crowd, an abuser), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from models import Ban, RedPacket, db, utcnow
from models.limits import LimitCounter
from rebate import claims
from rebate.packets import generate_batch
from risk import Claimant, LimitHit, PlatformLimits

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
FARM_IP = "203.0.113.50"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def claim_campaign(make_campaign, **claim_limits):
    limits = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None, **claim_limits}
    return make_campaign(
        RULES, packet_amount_fen=10_00, budget_limit_fen=1_000_00, trigger={"kind": "claim"}, claim_limits=limits
    )


def claim_stamped(campaign, user, now: datetime, ip: str = FARM_IP) -> str:
    """One claim as the view makes it: ``now`` is the moment its request arrived (``utcnow()`` at its start),
    its statements run whenever the database lets them. Committed; answers "ok" or the refusal's code."""
    try:
        claims.claim_from_campaign(campaign.id, user, now, claimant=Claimant(user.id, ip), limits=PlatformLimits.off())
    except LimitHit as refused:
        db.session.commit()  # (the refusal kept for the trace, as the view commits it)
        return refused.code
    db.session.commit()
    return "ok"


def packets_of(campaign) -> int:
    db.session.rollback()
    return db.session.execute(
        select(func.count()).select_from(RedPacket).where(RedPacket.campaign_id == campaign.id)
    ).scalar_one()


def packets_owned_by(user) -> int:
    db.session.rollback()
    return db.session.execute(
        select(func.count()).select_from(RedPacket).where(RedPacket.owner_id == user.id)
    ).scalar_one()


# -- a daily count across Beijing midnight ------------------------------------------------------------------------
# 16:00 UTC is Beijing midnight. A claim whose request arrived at 23:59:59.9 Beijing can reach the counter after one
# that arrived at 00:00:00.1 (it waited for the counter's row lock, held by the network's other claims: a crowd
# behind one address at the midnight reset). It must not turn the counter back to the day before: the new day's
# claims were then counted from nothing again, and the late one was not counted against the full day it came from.


@pytest.mark.parametrize("limit", ["per_ip_per_day", "per_person_per_day"])
def test_a_claim_stamped_before_midnight_that_lands_after_one_of_the_new_day_does_not_reset_the_days_count(
    make_campaign, make_user, limit
):
    # given: one packet a day (per network address, or per person)
    campaign = claim_campaign(make_campaign, **{limit: 1})
    one = make_user()
    people = [one] * 4 if limit == "per_person_per_day" else [one, make_user(), make_user(), make_user()]

    # the old day's one packet, then the new day's one
    assert claim_stamped(campaign, people[0], at("2025-03-05T15:59:00")) == "ok"
    assert claim_stamped(campaign, people[1], at("2025-03-05T16:00:00.100")) == "ok"

    # when: a request of 23:59:59.9 reaches the counter only now, then another of the new day
    late = claim_stamped(campaign, people[2], at("2025-03-05T15:59:59.900"))
    next_one = claim_stamped(campaign, people[3], at("2025-03-05T16:00:05"))

    # then: both are refused: the old day had its packet, and so has the new one; two packets in all
    code = "ip_daily_limit" if limit == "per_ip_per_day" else "person_daily_limit"
    assert (late, next_one) == (code, code)
    assert packets_of(campaign) == 2
    key = f"c{campaign.id}:ip-day:{FARM_IP}" if limit == "per_ip_per_day" else f"c{campaign.id}:person-day:{one.id}"
    counter = db.session.get(LimitCounter, key)
    assert (counter.window, counter.count) == ("2025-03-06", 1)


def test_the_platforms_daily_count_is_not_turned_back_by_a_late_claim_either(make_campaign, make_user):
    # given: the platform allows one packet a day per network address; no limit of the campaign's own
    campaign = claim_campaign(make_campaign)
    platform = PlatformLimits(
        ip_per_day=1,
        device_per_day=0,
        person_per_day=0,
        ip_interval_seconds=0,
        device_interval_seconds=0,
        person_interval_seconds=0,
    )
    people = [make_user() for _ in range(4)]

    def claim(user, now):
        try:
            claims.claim_from_campaign(campaign.id, user, now, claimant=Claimant(user.id, FARM_IP), limits=platform)
        except LimitHit as refused:
            db.session.commit()
            return refused.code
        db.session.commit()
        return "ok"

    assert claim(people[0], at("2025-03-05T15:59:00")) == "ok"
    assert claim(people[1], at("2025-03-05T16:00:00.100")) == "ok"

    # when: a late request of the old day, then one more of the new day
    results = claim(people[2], at("2025-03-05T15:59:59.900")), claim(people[3], at("2025-03-05T16:00:05"))

    # then: one packet a day, two in all
    assert results == ("platform_ip_daily_limit", "platform_ip_daily_limit")
    assert packets_of(campaign) == 2


# -- an Idempotency-Key retried after a ban ends -------------------------------------------------------------------
# A claim from a banned device or address is 403 ``banned`` with Retry-After when the ban has an end: a refusal of
# things as they stand, like a limit's 429 or a conflict's 409, which are never kept as the key's answer. Kept, the
# client retrying the same request with its key once the ban is over (or lifted) is told "banned" for a day.


@pytest.mark.parametrize("path", ["code", "share_link"])
def test_a_claim_refused_by_a_ban_is_not_the_keys_answer_once_the_ban_is_over(
    client, make_campaign, make_user, user_headers, path
):
    # given: a ban on one network address for an hour; a code of a campaign, or a friend's share link
    limits = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}
    if path == "code":
        campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, claim_limits=limits)
        [packet] = generate_batch(campaign, 1, utcnow(), "probe17")
        db.session.commit()
        url, body = "/api/v1/red-packets/claim", {"code": packet.claim_code}
    else:
        campaign = make_campaign(
            RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "share"}, claim_limits=limits
        )
        sharer = make_user()
        link = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer))
        url, body = f"/api/v1/share-links/{link.get_json()['token']}/claim", None
    ban = Ban(subject="net", value=FARM_IP, reason="click farm", ends_at=utcnow() + timedelta(hours=1))
    db.session.add(ban)
    db.session.commit()
    amy = make_user()

    def claim():
        headers = user_headers(amy, **{"Idempotency-Key": "amy-claim-1"})
        return client.post(url, json=body, headers=headers, environ_base={"REMOTE_ADDR": FARM_IP})

    refused = claim()
    assert (refused.status_code, refused.get_json()["error"]) == (403, "banned")
    assert int(refused.headers["Retry-After"]) > 3000

    # when: the ban is over, and amy's app retries the same request with its key
    db.session.rollback()
    db.session.get(Ban, ban.id).ends_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    retried = claim()

    # then: the claim is made now, not "banned" replayed
    assert retried.status_code == 201, (retried.get_json(), dict(retried.headers))
    assert "Idempotent-Replayed" not in retried.headers
    assert packets_owned_by(amy) == 1
