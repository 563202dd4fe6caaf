"""Platform-wide claim limits (issue 9, item 2): 5 red packets a Beijing day and 600 s between them, per IP,
per device and per person, across every campaign and every way to get a packet (claims, codes, share
links, registration, daily sign-in, referral binding). Campaign limits stay on top.

A direct claim refused by a limit is 429 with ``Retry-After`` and changes nothing but the kept refusal;
a login, sign-in or binding still succeeds, issues nothing, and the refusal is kept for the trace.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from config import ConfigError, load_config
from models import ClaimRefusal, RedPacket, SignIn, User, db
from models.limits import LimitCounter
from rebate.packets import generate_batch
from risk import PlatformLimits

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
NO_CAMPAIGN_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}
DEFAULTS = {
    "CLAIM_IP_PER_DAY": 5,
    "CLAIM_DEVICE_PER_DAY": 5,
    "CLAIM_PERSON_PER_DAY": 5,
    "CLAIM_IP_INTERVAL_SECONDS": 600,
    "CLAIM_DEVICE_INTERVAL_SECONDS": 600,
    "CLAIM_PERSON_INTERVAL_SECONDS": 600,
}
NO_INTERVALS = {
    **DEFAULTS,
    "CLAIM_IP_INTERVAL_SECONDS": 0,
    "CLAIM_DEVICE_INTERVAL_SECONDS": 0,
    "CLAIM_PERSON_INTERVAL_SECONDS": 0,
}
MORNING = datetime(2025, 3, 5, 0, 0, tzinfo=UTC)  # 08:00 Beijing: 16 hours to Beijing midnight


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, **DEFAULTS}


def count(model, *where) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def refusals() -> list[tuple[int, str]]:
    db.session.rollback()
    rows = db.session.execute(select(ClaimRefusal).order_by(ClaimRefusal.id)).scalars()
    return [(r.user_id, r.code) for r in rows]


def claim_campaign(make_campaign, **fields):
    fields.setdefault("claim_limits", NO_CAMPAIGN_LIMITS)
    return make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=5_00, trigger={"kind": "claim"}, **fields)


def claim(client, user_headers, campaign, user, ip="203.0.113.7", **headers):
    return client.post(
        f"/api/v1/campaigns/{campaign.id}/claim",
        headers=user_headers(user, **headers),
        environ_base={"REMOTE_ADDR": ip},
    )


def login(client, name: str, ip: str = "203.0.113.7"):
    return client.post("/api/v1/auth/login", json={"code": f"code-{name}"}, environ_base={"REMOTE_ADDR": ip})


def test_the_defaults_are_5_a_day_and_600_seconds_per_ip_device_and_person():
    assert PlatformLimits.from_config(load_config({"WECHAT_MODE": "simulator", "SECRET_KEY": "x"})) == PlatformLimits(
        5, 5, 5, 600, 600, 600
    )


@pytest.mark.parametrize("key", sorted(DEFAULTS))
@pytest.mark.parametrize("value", ["-1", "five", "1.5"])
def test_a_bad_limit_setting_refuses_to_start(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config({"WECHAT_MODE": "simulator", "SECRET_KEY": "x"}, environ={key: value})


# -- registration ----------------------------------------------------------------------


def test_12_new_logins_from_one_ip_get_at_most_5_newcomer_packets(client, make_campaign):
    # given: a newcomer campaign with budget for 12, the platform defaults (5 a day, 10 minutes)
    make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})

    # when: 12 new people log in from one address within a minute
    with time_machine.travel(MORNING, tick=False):
        burst = [login(client, f"burst{i}") for i in range(12)]

    # then: every login succeeds, one newcomer packet (10 minutes between packets), 11 refusals kept
    assert [r.status_code for r in burst] == [200] * 12
    assert count(RedPacket) == 1
    assert [code for _, code in refusals()] == ["platform_ip_interval"] * 11

    # when: 12 more people log in from another address, 11 minutes apart (all in one Beijing day)
    for i in range(12):
        with time_machine.travel(MORNING + timedelta(minutes=11 * i), tick=False):
            assert login(client, f"slow{i}", ip="198.51.100.4").status_code == 200

    # then: exactly 5 of them got a newcomer packet; the others are refused for the day
    from_slow = select(User.id).where(User.id > 12)
    assert count(RedPacket, RedPacket.owner_id.in_(from_slow)) == 5
    assert [code for _, code in refusals()[11:]] == ["platform_ip_daily_limit"] * 7


# -- claims across campaigns -------------------------------------------------------------


def test_daily_limits_count_across_campaigns_not_per_campaign(app, client, user_headers, make_user, make_campaign):
    # given: six campaigns with no limits of their own, no platform intervals
    app.config.update(NO_INTERVALS)
    campaigns = [claim_campaign(make_campaign) for _ in range(6)]
    amy = make_user()

    with time_machine.travel(MORNING, tick=False):
        # when: amy claims one packet from each, from one address
        answers = [claim(client, user_headers, c, amy) for c in campaigns]

        # then: five, and the sixth is 429 until Beijing midnight, changing nothing
        assert [a.status_code for a in answers] == [201] * 5 + [429]
        assert answers[5].get_json()["error"] == "platform_ip_daily_limit"
        assert answers[5].headers["Retry-After"] == str(16 * 3600)
        assert count(RedPacket) == 5
        assert refusals() == [(amy.id, "platform_ip_daily_limit")]

        # when: from another address, amy (the same person) is still at her 5
        other_ip = claim(client, user_headers, campaigns[5], amy, ip="198.51.100.1")
        # then: the person's own daily limit
        assert (other_ip.status_code, other_ip.get_json()["error"]) == (429, "platform_person_daily_limit")

    # when: the next Beijing day
    with time_machine.travel(MORNING + timedelta(hours=16), tick=False):
        assert claim(client, user_headers, campaigns[5], amy).status_code == 201


def test_600_seconds_between_packets_per_person_across_campaigns(client, user_headers, make_user, make_campaign):
    first, second = claim_campaign(make_campaign), claim_campaign(make_campaign)
    amy = make_user()

    with time_machine.travel(MORNING, tick=False):
        assert claim(client, user_headers, first, amy).status_code == 201
    with time_machine.travel(MORNING + timedelta(seconds=300), tick=False):
        refused = claim(client, user_headers, second, amy, ip="198.51.100.2")
    with time_machine.travel(MORNING + timedelta(seconds=601), tick=False):
        allowed = claim(client, user_headers, second, amy, ip="198.51.100.2")

    assert (refused.status_code, refused.get_json()["error"]) == (429, "platform_person_interval")
    assert refused.headers["Retry-After"] == "300"
    assert allowed.status_code == 201


def test_per_device_daily_limit_across_people_and_addresses(app, client, user_headers, make_user, make_campaign):
    app.config.update({**NO_INTERVALS, "CLAIM_IP_PER_DAY": 0, "CLAIM_DEVICE_PER_DAY": 2})
    campaign = claim_campaign(make_campaign)
    device = client.post("/api/v1/devices", headers=user_headers(make_user())).get_json()["device_token"]
    people = [make_user() for _ in range(3)]

    answers = [
        claim(client, user_headers, campaign, p, ip=f"198.51.100.{i}", **{"X-Device-Token": device})
        for i, p in enumerate(people)
    ]

    assert [a.status_code for a in answers] == [201, 201, 429]
    assert answers[2].get_json()["error"] == "platform_device_daily_limit"


def test_campaign_limits_still_apply_on_top(client, user_headers, make_user, make_campaign):
    campaign = claim_campaign(make_campaign, claim_limits={**NO_CAMPAIGN_LIMITS, "per_person": 1})
    amy = make_user()
    with time_machine.travel(MORNING, tick=False):
        assert claim(client, user_headers, campaign, amy).status_code == 201
    with time_machine.travel(MORNING + timedelta(hours=1), tick=False):
        again = claim(client, user_headers, campaign, amy)
    assert (again.status_code, again.get_json()["error"]) == (429, "person_limit")


def test_a_claim_refused_for_budget_takes_no_platform_slot(client, user_headers, make_user, make_campaign):
    campaign = make_campaign(
        RULES, budget_limit_fen=1_00, packet_amount_fen=5_00, trigger={"kind": "claim"}, claim_limits=NO_CAMPAIGN_LIMITS
    )
    resp = claim(client, user_headers, campaign, make_user())
    assert (resp.status_code, resp.get_json()["error"]) == (409, "budget_exhausted")
    assert count(LimitCounter) == 0


def test_code_claims_obey_the_platform_limits(client, user_headers, make_user, make_campaign):
    from models import utcnow

    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, claim_limits=NO_CAMPAIGN_LIMITS)
    codes = [p.claim_code for p in generate_batch(campaign, 2, utcnow(), "b1")]
    db.session.commit()
    amy, ben = make_user(), make_user()

    def claim_code(user, code):
        return client.post("/api/v1/red-packets/claim", json={"code": code}, headers=user_headers(user))

    with time_machine.travel(MORNING, tick=False):
        assert claim_code(amy, codes[0]).status_code == 201
        assert claim_code(amy, codes[0]).status_code == 201  # her own packet again: no slot, no refusal
        second = claim_code(ben, codes[1])  # the same address at once

    assert (second.status_code, second.get_json()["error"]) == (429, "platform_ip_interval")
    packet = db.session.execute(select(RedPacket).where(RedPacket.claim_code == codes[1])).scalar_one()
    assert (packet.status, packet.owner_id) == ("unclaimed", None)
    assert refusals() == [(ben.id, "platform_ip_interval")]


# -- sign-in, share links, referral binding ----------------------------------------------


def test_sign_in_is_recorded_but_its_packet_obeys_the_limits(client, user_headers, make_user, make_campaign):
    claims = claim_campaign(make_campaign)
    daily = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=1_00, trigger={"kind": "daily_sign_in"})
    amy = make_user()

    with time_machine.travel(MORNING, tick=False):
        assert claim(client, user_headers, claims, amy, ip="127.0.0.1").status_code == 201
        # when: she signs in at once from the same address
        signed = client.post("/api/v1/sign-in", headers=user_headers(amy))

    # then: the sign-in counts (streak 1), no packet, the refusal is kept for the trace
    assert signed.status_code == 200 and signed.get_json()["packets"] == []
    assert count(SignIn) == 1
    assert refusals() == [(amy.id, "platform_ip_interval")]
    assert count(RedPacket, RedPacket.campaign_id == daily.id) == 0

    # when: the next day she signs in again
    with time_machine.travel(MORNING + timedelta(days=1), tick=False):
        next_day = client.post("/api/v1/sign-in", headers=user_headers(amy))
    assert len(next_day.get_json()["packets"]) == 1


def test_share_link_friend_429_and_sharer_reward_obeys_the_sharers_own_limits(
    app, client, user_headers, make_user, make_campaign
):
    # given: a share campaign rewarding the sharer, 1 packet a day per person, no IP limits
    app.config.update({**NO_INTERVALS, "CLAIM_IP_PER_DAY": 0, "CLAIM_PERSON_PER_DAY": 1})
    campaign = make_campaign(
        RULES,
        budget_limit_fen=1_000_00,
        packet_amount_fen=5_00,
        trigger={"kind": "share", "sharer_reward_fen": 1_00},
        claim_limits=NO_CAMPAIGN_LIMITS,
    )
    sharer, amy, ben = make_user(), make_user(), make_user()
    token = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer)).get_json()[
        "token"
    ]

    def via_link(friend):
        return client.post(f"/api/v1/share-links/{token}/claim", headers=user_headers(friend))

    first, second = via_link(amy), via_link(ben)

    # then: both friends get their packet; the sharer is rewarded once (their own daily limit), refusal kept
    assert [r.get_json()["sharer_rewarded"] for r in (first, second)] == [True, False]
    assert count(RedPacket, RedPacket.owner_id == sharer.id) == 1
    assert refusals() == [(sharer.id, "platform_person_daily_limit")]

    # when: amy claims through the link of another sharer the same day
    other = make_user()
    other_token = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(other))
    resp = client.post(f"/api/v1/share-links/{other_token.get_json()['token']}/claim", headers=user_headers(amy))

    # then: 429 for amy, and the other sharer gets nothing either
    assert (resp.status_code, resp.get_json()["error"]) == (429, "platform_person_daily_limit")
    assert count(RedPacket, RedPacket.owner_id.in_([amy.id, other.id])) == 1


def test_referral_binding_binds_but_the_starter_packet_obeys_the_limits(client, user_headers, make_user, make_campaign):
    make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        issuer_type="user",
        trigger={"kind": "referral_bind"},
    )
    claims = claim_campaign(make_campaign)
    inviter, newbie = make_user(), make_user()
    code = client.get("/api/v1/me/invite", headers=user_headers(inviter)).get_json()["invite_code"]

    with time_machine.travel(datetime.now(UTC), tick=False):
        assert claim(client, user_headers, claims, newbie, ip="127.0.0.1").status_code == 201
        resp = client.post("/api/v1/referrals/bind", json={"code": code}, headers=user_headers(newbie))

    assert resp.status_code == 201 and resp.get_json() == {"bound": True, "packets": []}
    db.session.refresh(newbie)
    assert newbie.inviter_id == inviter.id
    assert refusals() == [(newbie.id, "platform_ip_interval")]


# -- the daily count is per packet, the interval per event -------------------------------------


def slots(key: str) -> int:
    db.session.rollback()
    row = db.session.get(LimitCounter, key)
    return row.count if row else 0


def packets_per_owner() -> list[int]:
    db.session.rollback()
    rows = db.session.execute(
        select(func.count()).select_from(RedPacket).group_by(RedPacket.owner_id).order_by(RedPacket.owner_id)
    )
    return list(rows.scalars())


def test_a_login_issuing_three_newcomer_packets_uses_three_daily_slots(client, make_campaign):
    # given: three registration campaigns, the platform defaults (5 a day, 600 s)
    for _ in range(3):
        make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})

    # when: a new person logs in
    with time_machine.travel(MORNING, tick=False):
        assert login(client, "first").status_code == 200

    # then: three packets, three of the address's and the person's five slots
    assert count(RedPacket) == 3
    assert slots("p:ip-day:203.0.113.7") == 3
    assert refusals() == []

    # when: another person logs in from the same address 11 minutes later (past the interval)
    with time_machine.travel(MORNING + timedelta(minutes=11), tick=False):
        assert login(client, "second").status_code == 200

    # then: two packets (the address's last two slots), the third refused for the day and kept
    assert packets_per_owner() == [3, 2]
    assert slots("p:ip-day:203.0.113.7") == 5
    assert [code for _, code in refusals()] == ["platform_ip_daily_limit"]

    # when: a third person 11 minutes later: nothing
    with time_machine.travel(MORNING + timedelta(minutes=22), tick=False):
        assert login(client, "third").status_code == 200
    assert count(RedPacket) == 5


def test_a_sign_in_issuing_three_packets_uses_three_daily_slots(app, client, user_headers, make_user, make_campaign):
    for _ in range(3):
        make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=1_00, trigger={"kind": "daily_sign_in"})
    amy, ben, cat = make_user(), make_user(), make_user()

    def sign_in(user, minutes):
        with time_machine.travel(MORNING + timedelta(minutes=minutes), tick=False):
            return client.post("/api/v1/sign-in", headers=user_headers(user), environ_base={"REMOTE_ADDR": "10.9.8.7"})

    first = sign_in(amy, 0)
    assert len(first.get_json()["packets"]) == 3
    assert slots("p:ip-day:10.9.8.7") == 3
    assert slots(f"p:person-day:{amy.id}") == 3

    second = sign_in(ben, 11)
    assert len(second.get_json()["packets"]) == 2
    assert [code for _, code in refusals()] == ["platform_ip_daily_limit"]

    third = sign_in(cat, 22)
    assert third.status_code == 200 and third.get_json()["packets"] == []
    assert count(SignIn) == 3
    assert count(RedPacket) == 5


def test_a_person_limit_of_2_stops_the_third_packet_of_one_login(app, client, make_campaign):
    app.config.update({"CLAIM_PERSON_PER_DAY": 2})
    for _ in range(3):
        make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})

    with time_machine.travel(MORNING, tick=False):
        assert login(client, "amy").status_code == 200

    assert count(RedPacket) == 2
    assert [code for _, code in refusals()] == ["platform_person_daily_limit"]
