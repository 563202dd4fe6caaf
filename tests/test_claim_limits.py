"""Claim limits (issue 6, item 4): per IP per day, minimum interval per device and per IP, per person,
per person per day. Each refusal is 429 with the reason and ``Retry-After``, and changes nothing.

The device is a server-issued token (``X-Device-Token``); the IP is the socket's, or the last hop of
``X-Forwarded-For`` only behind ``TRUSTED_PROXY_COUNT`` proxies. Daily limits reset at Beijing midnight.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from itsdangerous import URLSafeSerializer
from sqlalchemy import func, select

from app import create_app
from models import Campaign, RedPacket, db
from models.limits import LimitCounter
from rebate.packets import generate_batch

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
RESERVATION = 10_00 + 3_00
NOON_UTC = "2025-03-05T10:00:00"  # 18:00 Beijing: 6 hours to Beijing midnight


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def limits(**values) -> dict:
    return {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None, **values}


def claim_campaign(make_campaign, claim_limits, **fields) -> Campaign:
    fields.setdefault("budget_limit_fen", 1_000_00)
    return make_campaign(RULES, packet_amount_fen=10_00, trigger={"kind": "claim"}, claim_limits=claim_limits, **fields)


def counters() -> dict[str, tuple]:
    db.session.rollback()
    return {
        c.key: (c.window, c.count, c.last_at)
        for c in db.session.execute(select(LimitCounter).order_by(LimitCounter.key)).scalars()
    }


def state(campaign: Campaign) -> tuple:
    db.session.rollback()
    db.session.refresh(campaign)
    packets = db.session.execute(select(func.count()).select_from(RedPacket)).scalar_one()
    return campaign.budget_reserved_fen, campaign.packets_issued, packets, counters()


@pytest.fixture
def claim(client, user_headers):
    def do(campaign, user, ip="203.0.113.7", device=None, client_=None, **headers):
        if device is not None:
            headers["X-Device-Token"] = device
        return (client_ or client).post(
            f"/api/v1/campaigns/{campaign.id}/claim",
            headers=user_headers(user, **headers),
            environ_base={"REMOTE_ADDR": ip},
        )

    return do


def refusal(resp) -> tuple[int, str, int]:
    return resp.status_code, resp.get_json()["error"], int(resp.headers.get("Retry-After", "0"))


@pytest.fixture
def new_device(client, user_headers, make_user):
    def do() -> str:
        resp = client.post("/api/v1/devices", headers=user_headers(make_user()))
        assert resp.status_code == 201
        return resp.get_json()["device_token"]

    return do


# -- per IP per day ------------------------------------------------------------------


def test_per_ip_per_day_5_sixth_claim_from_one_ip_is_429_until_beijing_midnight(claim, make_user, make_campaign):
    # given: at most 5 claims a day from one network address, no interval, no per-person limit
    campaign = claim_campaign(make_campaign, limits(per_ip_per_day=5))
    users = [make_user() for _ in range(7)]

    with time_machine.travel(at(NOON_UTC), tick=False):
        # when: six people claim from one IP
        answers = [claim(campaign, u) for u in users[:5]]
        assert [a.status_code for a in answers] == [201] * 5
        before = state(campaign)
        sixth = claim(campaign, users[5])

        # then: the sixth is 429 ip_daily_limit, retry at Beijing midnight (6 hours), and nothing changed
        assert refusal(sixth) == (429, "ip_daily_limit", 6 * 3600)
        assert state(campaign) == before
        assert before[:3] == (5 * RESERVATION, 5, 5)
        assert before[3][f"c{campaign.id}:ip-day:203.0.113.7"][:2] == ("2025-03-05", 5)

        # and: another address is not affected
        assert claim(campaign, users[5], ip="198.51.100.1").status_code == 201

    # when: one second before Beijing midnight, then at Beijing midnight (16:00 UTC)
    with time_machine.travel(at("2025-03-05T15:59:59"), tick=False):
        last_second = claim(campaign, users[6])
    with time_machine.travel(at("2025-03-05T16:00:00"), tick=False):
        next_day = claim(campaign, users[6])

    # then: Retry-After is never below 1; the new Beijing day starts a new count
    assert refusal(last_second) == (429, "ip_daily_limit", 1)
    assert next_day.status_code == 201
    assert counters()[f"c{campaign.id}:ip-day:203.0.113.7"][:2] == ("2025-03-06", 1)


def test_claim_limits_are_per_campaign(claim, make_user, make_campaign):
    first = claim_campaign(make_campaign, limits(per_ip_per_day=1))
    second = claim_campaign(make_campaign, limits(per_ip_per_day=1))
    amy, ben = make_user(), make_user()

    assert claim(first, amy).status_code == 201
    assert refusal(claim(first, ben))[:2] == (429, "ip_daily_limit")
    assert claim(second, ben).status_code == 201


# -- minimum interval per device and per IP -------------------------------------------


def test_device_interval_600_seconds_429_then_allowed_after_601(claim, make_user, make_campaign, new_device):
    # given: 10 minutes between claims from one device (and from one IP), nothing else
    campaign = claim_campaign(make_campaign, limits(min_interval_seconds=600))
    device = new_device()
    amy, ben = make_user(), make_user()
    start = at(NOON_UTC)

    with time_machine.travel(start, tick=False):
        assert claim(campaign, amy, ip="203.0.113.1", device=device).status_code == 201

        # when: another person claims at once on the same device from another network
        before = state(campaign)
        again = claim(campaign, ben, ip="203.0.113.2", device=device)

        # then: 429 device_interval, retry in 600 s; the other IP's interval slot was rolled back too
        assert refusal(again) == (429, "device_interval", 600)
        assert state(campaign) == before
        assert f"c{campaign.id}:ip-interval:203.0.113.2" not in before[3]

    # when: 4 minutes later
    with time_machine.travel(start + timedelta(seconds=240), tick=False):
        later = claim(campaign, ben, ip="203.0.113.2", device=device)

    # then: still refused, retry in the remaining 360 s
    assert refusal(later) == (429, "device_interval", 360)

    # when: 601 s after the first claim
    with time_machine.travel(start + timedelta(seconds=601), tick=False):
        allowed = claim(campaign, ben, ip="203.0.113.2", device=device)

    # then: allowed
    assert allowed.status_code == 201
    assert counters()[f"c{campaign.id}:device-interval:" + _device_id(device)][1] == 2


def _device_id(token: str) -> str:
    from flask import current_app

    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="device-token-v1").loads(token)["d"]


def test_ip_interval_600_seconds_applies_across_devices(claim, make_user, make_campaign, new_device):
    campaign = claim_campaign(make_campaign, limits(min_interval_seconds=600))
    amy, ben = make_user(), make_user()
    start = at(NOON_UTC)

    with time_machine.travel(start, tick=False):
        assert claim(campaign, amy, device=new_device()).status_code == 201
    with time_machine.travel(start + timedelta(seconds=599), tick=False):
        bens_device = new_device()  # issuing a device token counts too: take it before the snapshot
        before = state(campaign)
        refused = claim(campaign, ben, device=bens_device)
        assert refusal(refused) == (429, "ip_interval", 1)
        assert state(campaign) == before
    with time_machine.travel(start + timedelta(seconds=600), tick=False):
        assert claim(campaign, ben, device=new_device()).status_code == 201


def test_device_tokens_are_distinct_per_call(client, user_headers, make_user):
    headers = user_headers(make_user())
    tokens = {client.post("/api/v1/devices", headers=headers).get_json()["device_token"] for _ in range(3)}
    assert len(tokens) == 3


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "eyJkIjoiYWJjIn0.forged-signature",
        URLSafeSerializer("another-secret", salt="device-token-v1").dumps({"d": "chosen-by-client"}),
        URLSafeSerializer("test-secret-key", salt="another-salt").dumps({"d": "chosen-by-client"}),
        URLSafeSerializer("test-secret-key", salt="device-token-v1").dumps({"x": "no device"}),
        URLSafeSerializer("test-secret-key", salt="device-token-v1").dumps("not a dict"),
    ],
)
def test_a_forged_or_garbled_device_token_is_422_and_changes_nothing(claim, make_user, make_campaign, token):
    campaign = claim_campaign(make_campaign, limits(per_ip_per_day=5, min_interval_seconds=600, per_person=1))
    before = state(campaign)

    resp = claim(campaign, make_user(), device=token)

    assert (resp.status_code, resp.get_json()["error"]) == (422, "invalid_device_token")
    assert state(campaign) == before and before[3] == {}


def test_devices_endpoint_needs_a_signed_in_user(client):
    assert client.post("/api/v1/devices").status_code == 401


# -- per person -----------------------------------------------------------------------


def test_per_person_1_second_claim_is_429_person_limit(claim, make_user, make_campaign):
    campaign = claim_campaign(make_campaign, limits(per_person=1))
    amy = make_user()

    assert claim(campaign, amy).status_code == 201
    before = state(campaign)
    again = claim(campaign, amy, ip="198.51.100.9")

    assert refusal(again)[:2] == (429, "person_limit") and refusal(again)[2] >= 1
    assert state(campaign) == before and before[2] == 1


def test_per_person_counts_one_person_across_mini_program_and_official_account(
    claim, make_user, make_campaign, client, user_headers
):
    from models import UserIdentity
    from web.login import sign_in

    # given: a person who logged in through the mini-program and the OA (one unionid, two openids)
    campaign = claim_campaign(make_campaign, limits(per_person=1))
    via_mp = sign_in("wx-mini", "openid-mp", "union-amy", "mini_program")
    via_oa = sign_in("wx-oa", "openid-oa", "union-amy", "official_account")
    db.session.commit()
    assert via_mp.id == via_oa.id
    assert db.session.execute(select(func.count()).select_from(UserIdentity)).scalar_one() == 2

    # then: the second claim, from the OA, is the same person's second
    assert claim(campaign, via_mp).status_code == 201
    assert refusal(claim(campaign, via_oa, **{"X-Channel": "official_account"}))[:2] == (429, "person_limit")


def test_per_person_per_day_2_third_claim_429_until_beijing_midnight(claim, make_user, make_campaign):
    campaign = claim_campaign(make_campaign, limits(per_person_per_day=2))
    amy = make_user()

    with time_machine.travel(at("2025-03-05T12:30:00"), tick=False):  # 20:30 Beijing
        assert [claim(campaign, amy).status_code for _ in range(2)] == [201, 201]
        before = state(campaign)
        assert refusal(claim(campaign, amy)) == (429, "person_daily_limit", 3 * 3600 + 30 * 60)
        assert state(campaign) == before
    with time_machine.travel(at("2025-03-05T16:30:00"), tick=False):  # 00:30 the next Beijing day
        assert claim(campaign, amy).status_code == 201


def test_default_limits_when_the_campaign_sets_none(claim, make_user, make_campaign):
    # given: a campaign with no claim_limits: the defaults (5 a day per IP, 10 minutes, 1 per person)
    campaign = claim_campaign(make_campaign, None)
    amy, ben = make_user(), make_user()

    with time_machine.travel(at(NOON_UTC), tick=False):
        assert claim(campaign, amy).status_code == 201
        # then: amy again is person_limit; ben from the same IP at once waits 10 minutes
        assert refusal(claim(campaign, amy))[:2] == (429, "person_limit")
        assert refusal(claim(campaign, ben)) == (429, "ip_interval", 600)


def test_admin_created_campaign_keeps_null_limits_as_no_limit(client, make_operator, make_user, claim):
    # given: an operator creates a claim campaign with 2 a day per IP and no other limit
    _, admin = make_operator("admin")
    body = {
        "name": "spring claim",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 100_00,
        "packet_amount_fen": 10_00,
        "trigger": {"kind": "claim"},
        "claim_limits": {"per_ip_per_day": 2, "min_interval_seconds": None, "per_person": None},
        "rules": RULES,
    }
    created = client.post("/admin/api/campaigns", json=body, headers=admin)
    assert created.status_code == 201, created.get_json()
    campaign_id = created.get_json()["id"]
    activate = client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "go live"}, headers=admin)
    assert activate.status_code == 200
    campaign = db.session.get(Campaign, campaign_id)
    assert campaign.claim_limits == {
        "per_ip_per_day": 2,
        "min_interval_seconds": None,
        "per_person": None,
        "per_person_per_day": None,
    }
    amy = make_user()

    # then: the same person claims twice at once (no interval, no per-person limit), the third is the IP's limit
    assert [claim(campaign, amy).status_code for _ in range(2)] == [201, 201]
    assert refusal(claim(campaign, amy))[:2] == (429, "ip_daily_limit")


# -- the IP: socket, or X-Forwarded-For behind trusted proxies --------------------------


def test_x_forwarded_for_is_ignored_without_trusted_proxies(claim, make_user, make_campaign):
    # given: one claim a day per IP, no proxy configured
    campaign = claim_campaign(make_campaign, limits(per_ip_per_day=1))
    amy, ben = make_user(), make_user()

    # when: both claim from one socket address, each sending a different X-Forwarded-For
    first = claim(campaign, amy, ip="203.0.113.7", **{"X-Forwarded-For": "198.51.100.1"})
    second = claim(campaign, ben, ip="203.0.113.7", **{"X-Forwarded-For": "198.51.100.2"})

    # then: the socket address counts: the second is refused
    assert first.status_code == 201
    assert refusal(second)[:2] == (429, "ip_daily_limit")
    assert set(counters()) == {f"c{campaign.id}:ip-day:203.0.113.7"}


@pytest.fixture
def proxied(app_settings):
    """A second app on the same database, behind one trusted proxy."""
    behind = create_app({**app_settings, "TRUSTED_PROXY_COUNT": 1})
    yield behind
    with behind.app_context():
        db.session.remove()
        db.engine.dispose()


def test_behind_one_trusted_proxy_the_last_x_forwarded_for_hop_counts(claim, make_user, make_campaign, proxied):
    # given: one claim a day per IP, the app behind one trusted proxy (the socket is the proxy)
    campaign = claim_campaign(make_campaign, limits(per_ip_per_day=1))
    amy, ben, cy = make_user(), make_user(), make_user()
    via_proxy = proxied.test_client()
    proxy = "10.0.0.2"

    # when: two clients behind the proxy claim; ben forges an extra first hop with amy's address
    first = claim(campaign, amy, ip=proxy, client_=via_proxy, **{"X-Forwarded-For": "198.51.100.1"})
    second = claim(campaign, ben, ip=proxy, client_=via_proxy, **{"X-Forwarded-For": "198.51.100.2"})
    forged = claim(campaign, cy, ip=proxy, client_=via_proxy, **{"X-Forwarded-For": "198.51.100.9, 198.51.100.1"})

    # then: each counts under the hop the proxy saw; the forged first hop is ignored
    assert first.status_code == 201 and second.status_code == 201
    assert refusal(forged)[:2] == (429, "ip_daily_limit")
    assert set(counters()) == {f"c{campaign.id}:ip-day:198.51.100.1", f"c{campaign.id}:ip-day:198.51.100.2"}


# -- limits roll back with the claim ----------------------------------------------------


def test_a_claim_refused_for_budget_leaves_the_limit_counters_untouched(claim, make_user, make_campaign):
    # given: budget for one packet (10 + 3), limits that all take slots
    campaign = claim_campaign(
        make_campaign,
        limits(per_ip_per_day=5, min_interval_seconds=60, per_person=1, per_person_per_day=1),
        budget_limit_fen=RESERVATION,
    )
    amy, ben = make_user(), make_user()
    with time_machine.travel(at(NOON_UTC), tick=False):
        assert claim(campaign, amy).status_code == 201
    before = state(campaign)

    # when: ben claims (a minute later, from another IP) and the budget is exhausted
    with time_machine.travel(at(NOON_UTC) + timedelta(minutes=2), tick=False):
        resp = claim(campaign, ben, ip="198.51.100.3")

    # then: 409 budget_exhausted; no limit slot was taken for ben or his IP
    assert (resp.status_code, resp.get_json()["error"]) == (409, "budget_exhausted")
    assert state(campaign) == before
    assert set(before[3]) == {
        f"c{campaign.id}:{kind}:{value}"
        for kind, value in (("person", amy.id), ("person-day", amy.id), ("ip-day", "203.0.113.7"))
    } | {f"c{campaign.id}:ip-interval:203.0.113.7"}


def test_a_claim_refused_for_the_wrong_trigger_takes_no_limit_slot(claim, make_user, make_campaign):
    campaign = make_campaign(
        RULES, packet_amount_fen=10_00, trigger={"kind": "registration"}, claim_limits=limits(per_person=1)
    )
    resp = claim(campaign, make_user())
    assert (resp.status_code, resp.get_json()["error"]) == (409, "not_claimable")
    assert counters() == {}


def test_code_claims_take_claim_limits_too(client, user_headers, make_user, make_campaign):
    # given: three unclaimed codes of a campaign allowing one per person
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00, claim_limits=limits(per_person=1))
    codes = [p.claim_code for p in generate_batch(campaign, 3, datetime.now(UTC), "b1")]
    db.session.commit()
    amy = make_user()

    def claim_code(code):
        return client.post("/api/v1/red-packets/claim", json={"code": code}, headers=user_headers(amy))

    # when: amy claims one, then claims it again, then a second code
    first = claim_code(codes[0])
    repeat = claim_code(codes[0])
    before = state(campaign)
    second = claim_code(codes[1])

    # then: the repeat answers the same packet without a slot; the second code is 429 person_limit
    assert first.status_code == 201 and repeat.status_code == 201
    assert repeat.get_json()["id"] == first.get_json()["id"]
    assert refusal(second)[:2] == (429, "person_limit")
    assert state(campaign) == before
    packet = db.session.execute(select(RedPacket).where(RedPacket.claim_code == codes[1])).scalar_one()
    assert (packet.status, packet.owner_id) == ("unclaimed", None)


def test_share_link_claims_take_claim_limits(client, user_headers, make_user, make_campaign):
    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        trigger={"kind": "share", "sharer_reward_fen": 1_00},
        claim_limits=limits(per_ip_per_day=1),
    )
    sharer = make_user()
    token = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer)).get_json()[
        "token"
    ]
    assert client.post(f"/api/v1/share-links/{token}/claim", headers=user_headers(make_user())).status_code == 201
    before = state(campaign)

    resp = client.post(f"/api/v1/share-links/{token}/claim", headers=user_headers(make_user()))

    assert refusal(resp)[:2] == (429, "ip_daily_limit")
    assert state(campaign) == before and before[2] == 2
