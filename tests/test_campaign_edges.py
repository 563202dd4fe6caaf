"""Campaign administration at its edges: budgets moved under running claims, edits of a running campaign,
claim limits configured wrong, and who may change what. Every bad input is a 4xx that changes nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import AuditLog, Campaign, CampaignRules, RedPacket, db, utcnow
from models.limits import LimitCounter
from money import MAX_FEN
from rebate import issue_packet
from rebate.errors import RebateError
from rebate.packets import expire_due_packets
from risk import Claimant, ClaimGate, ClaimLimits, PlatformLimits
from risk.limits import LimitHit, campaign_slots
from tests.concurrency import together

CAPPED = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}
URL = "/admin/api/campaigns"


def _state(campaign_id: int) -> tuple:
    db.session.rollback()
    c = db.session.get(Campaign, campaign_id)
    db.session.refresh(c)
    changes = db.session.execute(
        select(func.count()).select_from(AuditLog).where(AuditLog.action.like("campaign.%"))
    ).scalar_one()
    versions = db.session.execute(
        select(func.count()).select_from(CampaignRules).filter_by(campaign_id=campaign_id)
    ).scalar_one()
    return (
        c.status,
        c.budget_limit_fen,
        c.budget_reserved_fen,
        c.budget_committed_fen,
        c.max_packets,
        c.claim_limits,
        c.ends_at,
        c.rules_version,
        c.name,
        changes,
        versions,
    )


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


@pytest.fixture
def merchant_campaign(make_campaign, make_merchant):
    merchant = make_merchant()
    campaign = make_campaign(
        CAPPED,
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        starts_at=utcnow() - timedelta(days=1),
        ends_at=utcnow() + timedelta(days=10),
        claim_limits={"per_person": None, "per_person_per_day": None, "per_ip_per_day": None},
    )
    return merchant, campaign


# --- budgets -------------------------------------------------------------------------------------------


def test_budget_lowered_while_claims_run_never_leaves_more_reserved_than_the_limit(
    app, make_campaign, make_user, make_operator
):
    # given: a budget of 20 packets' reservations (20 fen each: face 10 + cap 10), 2 already taken
    campaign = make_campaign(CAPPED, budget_limit_fen=20 * 20_00, packet_amount_fen=10_00)
    users = [make_user() for _ in range(8)]
    for i in range(2):
        issue_packet(campaign, make_user(), source="t", source_ref=f"pre{i}", now=utcnow())
    db.session.commit()
    _, admin = make_operator("admin")
    campaign_id, user_ids = campaign.id, [u.id for u in users]

    def work(i: int):
        if i == 0:
            answer = app.test_client().patch(
                f"{URL}/{campaign_id}", headers=admin, json={"budget_limit_fen": 5 * 20_00, "reason": "cut it"}
            )
            return answer.status_code, (answer.get_json(silent=True) or {}).get("error")
        from models import User  # noqa: PLC0415

        c, u = db.session.get(Campaign, campaign_id), db.session.get(User, user_ids[i - 1])
        try:
            issue_packet(c, u, source="race", source_ref=f"r{i}", now=utcnow())
        except RebateError as exc:
            return exc.code
        return "issued"

    # when: the cut and 8 claims run at once
    results = together(9, work, app=app)

    # then: the cut is applied or refused as a conflict (never a 500), and the invariant holds
    assert results[0] in ((200, None), (409, "budget_below_spent")), results
    assert all(r in ("issued", "budget_exhausted") for r in results[1:]), results
    c = db.session.get(Campaign, campaign_id)
    db.session.refresh(c)
    live = db.session.execute(
        select(func.coalesce(func.sum(RedPacket.reserved_fen), 0)).filter_by(campaign_id=campaign_id)
    ).scalar_one()
    assert c.budget_reserved_fen + c.budget_committed_fen <= c.budget_limit_fen
    assert c.budget_reserved_fen == live
    if results[0][0] == 200:
        assert c.budget_limit_fen == 5 * 20_00


@pytest.mark.parametrize(
    "value",
    [0, -1, None, 1.5, "100", True, MAX_FEN + 1, 2**63, [100]],
    ids=["zero", "negative", "null", "float", "string", "bool", "above-max", "int64", "list"],
)
def test_bad_budgets_are_422_and_change_nothing(client, merchant_campaign, admin, value):
    _, campaign = merchant_campaign
    before = _state(campaign.id)
    answer = client.patch(f"{URL}/{campaign.id}", headers=admin, json={"budget_limit_fen": value, "reason": "bad"})
    assert answer.status_code == 422, answer.json
    assert _state(campaign.id) == before


def test_a_budget_cut_below_reserved_is_409_and_a_cut_to_exactly_it_is_allowed(
    client, merchant_campaign, admin, make_user
):
    _, campaign = merchant_campaign
    for i in range(3):
        issue_packet(campaign, make_user(), source="t", source_ref=str(i), now=utcnow())  # 3 × 20 reserved
    db.session.commit()
    before = _state(campaign.id)
    refused = client.patch(f"{URL}/{campaign.id}", headers=admin, json={"budget_limit_fen": 59_99, "reason": "cut"})
    assert (refused.status_code, refused.json["error"]) == (409, "budget_below_spent")
    assert _state(campaign.id) == before
    exact = client.patch(f"{URL}/{campaign.id}", headers=admin, json={"budget_limit_fen": 60_00, "reason": "cut"})
    assert exact.status_code == 200, exact.json
    # and then the budget is full: the next claim is refused, nothing oversold
    with pytest.raises(RebateError) as refused_claim:
        issue_packet(db.session.get(Campaign, campaign.id), make_user(), source="t", source_ref="x", now=utcnow())
    assert refused_claim.value.code == "budget_exhausted"


def test_an_unbudgeted_campaign_stays_unbudgeted_and_a_budgeted_one_stays_budgeted(
    client, make_campaign, admin, make_user
):
    unbudgeted = make_campaign({"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]})
    unbudgeted.packet_amount_fen = 10_00
    db.session.commit()
    issue_packet(unbudgeted, make_user(), source="t", source_ref="a", now=utcnow())
    db.session.commit()
    before = _state(unbudgeted.id)
    answer = client.patch(f"{URL}/{unbudgeted.id}", headers=admin, json={"budget_limit_fen": 1_00, "reason": "cap"})
    assert (answer.status_code, answer.json["error"]) == (422, "budget_limit")
    assert _state(unbudgeted.id) == before


def test_ending_a_campaign_with_packets_out_releases_each_reservation_once(client, merchant_campaign, admin, make_user):
    _, campaign = merchant_campaign
    packets = [issue_packet(campaign, make_user(), source="t", source_ref=str(i), now=utcnow()) for i in range(3)]
    db.session.commit()
    assert client.post(f"{URL}/{campaign.id}/end", headers=admin, json={"reason": "over"}).status_code == 200
    # the packets out keep their reservations until they leave: a revocation releases one
    revoked = client.post(f"/admin/api/red-packets/{packets[0].id}/revoke", headers=admin, json={"reason": "gone"})
    assert revoked.status_code == 200, revoked.json
    again = client.post(f"/admin/api/red-packets/{packets[0].id}/revoke", headers=admin, json={"reason": "gone"})
    assert again.status_code == 409
    # expiry releases the others, once each, and nothing more when it runs again
    later = utcnow() + timedelta(days=400)
    assert expire_due_packets(later) == 2
    assert expire_due_packets(later) == 0
    db.session.commit()
    c = db.session.get(Campaign, campaign.id)
    db.session.refresh(c)
    assert (c.budget_reserved_fen, c.budget_committed_fen, c.packets_issued) == (0, 0, 0)
    # and an ended campaign is never active again, nor changed
    before = _state(campaign.id)
    for action in ("activate", "pause", "end"):
        answer = client.post(f"{URL}/{campaign.id}/{action}", headers=admin, json={"reason": "again"})
        assert answer.status_code == 409, (action, answer.json)
    patch = client.patch(f"{URL}/{campaign.id}", headers=admin, json={"budget_limit_fen": 500_00, "reason": "more"})
    assert patch.status_code == 409
    rules = client.put(f"{URL}/{campaign.id}/rules", headers=admin, json={"rules": CAPPED, "reason": "new"})
    assert rules.status_code == 409
    assert _state(campaign.id) == before


# --- edits of a running campaign ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"packet_amount_fen": 50_00},
        {"starts_at": "2030-01-01T00:00:00+08:00"},
        {"funder_type": "platform_fund"},
        {"funder_merchant_id": 1},
        {"ends_at": "2000-01-01T00:00:00+08:00"},  # before it starts
        {"ends_at": "2025-13-01T00:00:00+08:00"},
        {"ends_at": "2030-01-01T00:00:00"},  # no offset
        {"ends_at": "9999-12-31T00:00:00+08:00"},
        {"usage_windows": {"hours": [10, 10]}},
        {"usage_windows": {"hours": [10, 25]}},
        {"usage_windows": {"weekdays": [0]}},
        {"packet_valid_days": 0},
        {"packet_valid_days": 366},
        {"max_packets": 0},
        {"max_packets_per_order": 0},
        {"name": ""},
        {"name": None},
        {"regions": None},
        {"rules": CAPPED},
    ],
)
def test_bad_edits_are_4xx_and_change_nothing(client, merchant_campaign, admin, body):
    _, campaign = merchant_campaign
    before = _state(campaign.id)
    answer = client.patch(f"{URL}/{campaign.id}", headers=admin, json={**body, "reason": "operator slip"})
    assert 400 <= answer.status_code < 500 and answer.status_code != 404, (body, answer.status_code, answer.json)
    assert _state(campaign.id) == before


@pytest.mark.parametrize(
    "rules",
    [
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]},  # no cap in a budgeted campaign
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": None}]},
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 0}]},
        {"roles": [{"role": "consumer", "rate_bps": -1, "form": "balance", "cap_fen": 10_00}]},
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1.5}]},
        {"roles": []},
        {},
    ],
)
def test_bad_rules_versions_are_422_and_keep_the_version(client, merchant_campaign, admin, rules):
    _, campaign = merchant_campaign
    before = _state(campaign.id)
    answer = client.put(f"{URL}/{campaign.id}/rules", headers=admin, json={"rules": rules, "reason": "slip"})
    assert answer.status_code == 422, (rules, answer.json)
    assert _state(campaign.id) == before


def test_a_packet_out_keeps_its_rules_version_and_validity_when_the_campaign_changes(
    client, merchant_campaign, admin, make_user
):
    _, campaign = merchant_campaign
    packet = issue_packet(campaign, make_user(), source="t", source_ref="a", now=utcnow())
    db.session.commit()
    expires, reserved = packet.expires_at, packet.reserved_fen
    bigger = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "balance", "cap_fen": 30_00}]}
    put = client.put(f"{URL}/{campaign.id}/rules", headers=admin, json={"rules": bigger, "reason": "raise it"})
    assert put.status_code == 200, put.json
    assert (
        client.patch(
            f"{URL}/{campaign.id}", headers=admin, json={"packet_valid_days": 1, "reason": "shorter"}
        ).status_code
        == 200
    )
    db.session.rollback()
    db.session.refresh(packet)
    assert (packet.rules_version, packet.expires_at, packet.reserved_fen) == (1, expires, reserved)
    newer = issue_packet(db.session.get(Campaign, campaign.id), make_user(), source="t", source_ref="b", now=utcnow())
    assert (newer.rules_version, newer.reserved_fen) == (2, 10_00 + 30_00)


# --- claim limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limits",
    [
        {"per_person": 0},
        {"per_person": -1},
        {"per_person_per_day": 1.5},
        {"per_person_per_day": 1.0},
        {"per_ip_per_day": 10**12},
        {"per_ip_per_day": True},
        {"per_person": "1"},
        {"min_interval_seconds": -600},
        {"per_device_per_day": 1},
        [],
        "none",
    ],
)
def test_bad_claim_limits_are_422_and_change_nothing(client, merchant_campaign, admin, limits):
    _, campaign = merchant_campaign
    before = _state(campaign.id)
    answer = client.patch(f"{URL}/{campaign.id}", headers=admin, json={"claim_limits": limits, "reason": "slip"})
    assert answer.status_code == 422, (limits, answer.json)
    assert _state(campaign.id) == before


def _claim_once(campaign: Campaign, user, now, ref: str):
    limits = ClaimLimits.parse(campaign.claim_limits)
    claimant = Claimant(user.id)
    gate = ClaimGate(
        claimant, PlatformLimits.off(), campaign_slots(limits, campaign_id=campaign.id, claimant=claimant, now=now)
    )
    return issue_packet(campaign, user, source="claim", source_ref=ref, now=now, gate=gate)


def test_a_daily_limit_lowered_below_what_someone_claimed_today_refuses_them_until_the_beijing_day_turns(
    client, merchant_campaign, admin, make_user
):
    _, campaign = merchant_campaign
    person = make_user()
    # 15:30 UTC is 23:30 in Beijing; 16:00 UTC starts the next Beijing day
    base = utcnow().replace(hour=15, minute=30, second=0, microsecond=0) - timedelta(days=1)
    campaign.claim_limits = {"per_person": None, "per_person_per_day": 3, "per_ip_per_day": None}
    campaign.starts_at = base - timedelta(days=1)
    db.session.commit()
    for i in range(2):
        _claim_once(campaign, person, base + timedelta(minutes=i), f"d{i}")
        db.session.commit()
    lowered = client.patch(
        f"{URL}/{campaign.id}",
        headers=admin,
        json={
            "claim_limits": {"per_person": None, "per_person_per_day": 1, "per_ip_per_day": None},
            "reason": "tighter",
        },
    )
    assert lowered.status_code == 200, lowered.json
    db.session.rollback()
    c = db.session.get(Campaign, campaign.id)
    with pytest.raises(LimitHit):
        _claim_once(c, person, base + timedelta(minutes=29), "late")
    db.session.rollback()
    _claim_once(c, person, base + timedelta(minutes=30), "next-day")  # 00:00 Beijing: a new day
    db.session.commit()


def test_a_per_person_limit_switched_on_counts_what_people_claimed_while_it_was_off(
    client, merchant_campaign, admin, make_user
):
    # given: a campaign with no per-person limit; a person claims twice
    _, campaign = merchant_campaign
    person = make_user()
    now = utcnow()
    for i in range(2):
        _claim_once(campaign, person, now, f"off{i}")
        db.session.commit()
    # when: the operator switches on "one per person"
    answer = client.patch(
        f"{URL}/{campaign.id}",
        headers=admin,
        json={
            "claim_limits": {"per_person": 1, "per_ip_per_day": None, "per_person_per_day": None},
            "reason": "one each",
        },
    )
    assert answer.status_code == 200, answer.json
    # then: that person (two already) gets no third packet
    db.session.rollback()
    c = db.session.get(Campaign, campaign.id)
    with pytest.raises(LimitHit):
        _claim_once(c, person, now + timedelta(seconds=1), "on")
    db.session.rollback()
    assert (
        db.session.execute(select(LimitCounter).where(LimitCounter.key.like(f"c{campaign.id}:%"))).first() is not None
    )


# --- who may change what ------------------------------------------------------------------------------


def test_merchant_staff_cannot_change_another_merchants_or_the_platforms_campaigns(
    client, merchant_campaign, make_campaign, make_operator, make_merchant
):
    merchant, theirs = merchant_campaign
    _, staff = make_operator("merchant_staff", merchant=make_merchant())
    platform = make_campaign(CAPPED, budget_limit_fen=100_00, packet_amount_fen=10_00)
    issued_by_them_paid_by_platform = make_campaign(
        CAPPED, budget_limit_fen=100_00, packet_amount_fen=10_00, issuer_type="merchant", issuer_merchant_id=merchant.id
    )
    _, own_staff = make_operator("merchant_staff", merchant=merchant)
    for headers, campaign in (
        (staff, theirs),
        (staff, platform),
        (own_staff, platform),
        (own_staff, issued_by_them_paid_by_platform),
    ):
        before = _state(campaign.id)
        bodies = [
            ("patch", f"{URL}/{campaign.id}", {"budget_limit_fen": 10_000_00, "reason": "more"}),
            ("put", f"{URL}/{campaign.id}/rules", {"rules": CAPPED, "reason": "mine"}),
            ("post", f"{URL}/{campaign.id}/end", {"reason": "mine"}),
            ("post", f"{URL}/{campaign.id}/pause", {"reason": "mine"}),
            ("post", f"{URL}/{campaign.id}/packets/batch", {"count": 1, "reason": "mine"}),
        ]
        for method, path, body in bodies:
            answer = getattr(client, method)(path, headers=headers, json=body)
            assert answer.status_code == 404, (method, path, answer.json)
        assert _state(campaign.id) == before


def test_a_budget_cut_racing_self_serve_claims_over_http_keeps_the_invariant(
    app, make_campaign, make_user, user_headers, make_operator
):
    # given: a self-serve campaign (20 fen a packet) with room for 20, one claim made (its copy kept on PostgreSQL)
    campaign = make_campaign(
        CAPPED, budget_limit_fen=20 * 20_00, packet_amount_fen=10_00, trigger={"kind": "claim"}, claim_limits={}
    )
    _, admin = make_operator("admin")
    first = app.test_client().post(
        f"/api/v1/campaigns/{campaign.id}/claim",
        headers=user_headers(make_user()),
        environ_base={"REMOTE_ADDR": "198.51.100.1"},
    )
    assert first.status_code == 201, first.get_json()
    claimers = [user_headers(make_user()) for _ in range(10)]
    db.session.commit()
    campaign_id = campaign.id

    def work(i: int):
        client = app.test_client()
        if i == 0:
            answer = client.patch(
                f"{URL}/{campaign_id}", headers=admin, json={"budget_limit_fen": 4 * 20_00, "reason": "cut it"}
            )
        else:
            answer = client.post(
                f"/api/v1/campaigns/{campaign_id}/claim",
                headers=claimers[i - 1],
                environ_base={"REMOTE_ADDR": f"198.51.100.{i + 10}"},
            )
        return answer.status_code, (answer.get_json(silent=True) or {}).get("error")

    # when: the cut and 10 claims at once
    results = together(11, work, app=app)

    # then: no 500; the cut is applied or refused; never more reserved than the limit
    assert results[0] in ((200, None), (409, "budget_below_spent")), results
    assert set(results[1:]) <= {(201, None), (409, "budget_exhausted")}, results
    db.session.rollback()
    c = db.session.get(Campaign, campaign_id)
    db.session.refresh(c)
    assert c.budget_reserved_fen + c.budget_committed_fen <= c.budget_limit_fen
    issued = sum(1 for r in results[1:] if r[0] == 201) + 1
    assert c.budget_reserved_fen == issued * 20_00


def test_a_daily_limit_switched_on_counts_only_todays_claims_and_never_lowers_a_count(
    client, merchant_campaign, admin, make_user
):
    # given: no per-day limit; ann claimed twice today (Beijing) and once yesterday, bob once yesterday
    _, campaign = merchant_campaign
    campaign.starts_at, campaign.budget_limit_fen = utcnow() - timedelta(days=5), 1_000_00
    db.session.commit()
    ann, bob = make_user(), make_user()
    now = utcnow()
    for who, when, ref in ((ann, now - timedelta(days=1), "a0"), (ann, now, "a1"), (ann, now, "a2")):
        _claim_once(campaign, who, when, ref)
    _claim_once(campaign, bob, now - timedelta(days=1), "b0")
    db.session.commit()
    # when: "two a day per person" is switched on
    limits = {"per_person": None, "per_person_per_day": 2, "per_ip_per_day": None}
    answer = client.patch(f"{URL}/{campaign.id}", headers=admin, json={"claim_limits": limits, "reason": "two a day"})
    assert answer.status_code == 200, answer.json
    # then: ann has had her two today; bob may still claim two
    db.session.rollback()
    c = db.session.get(Campaign, campaign.id)
    with pytest.raises(LimitHit):
        _claim_once(c, ann, now + timedelta(seconds=1), "a3")
    db.session.rollback()
    _claim_once(c, bob, now + timedelta(seconds=1), "b1")
    _claim_once(c, bob, now + timedelta(seconds=2), "b2")
    db.session.commit()
    with pytest.raises(LimitHit):
        _claim_once(c, bob, now + timedelta(seconds=3), "b3")
    db.session.rollback()


def test_a_refused_change_counts_nothing_either(client, make_campaign, make_merchant, admin, make_user):
    # given: a merchant campaign whose deposit holds 200 yuan, no per-person limit, one person with a packet
    merchant = make_merchant()
    campaign = make_campaign(
        CAPPED,
        fund_deposit_fen=200_00,
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        claim_limits={"per_person": None, "per_person_per_day": None, "per_ip_per_day": None},
    )
    _claim_once(campaign, make_user(), utcnow(), "x")
    db.session.commit()
    before = _state(campaign.id)
    # when: the limit is switched on together with a budget the deposit cannot hold
    answer = client.patch(
        f"{URL}/{campaign.id}",
        headers=admin,
        json={"claim_limits": {"per_person": 1}, "budget_limit_fen": 1_000_00, "reason": "bigger and safer"},
    )
    # then: refused, and no counter was written
    assert (answer.status_code, answer.json["error"]) == (409, "deposit_exhausted")
    assert _state(campaign.id) == before
    assert db.session.execute(select(LimitCounter).where(LimitCounter.key.like(f"c{campaign.id}:%"))).first() is None


def test_merchant_staff_cannot_turn_their_campaign_into_a_referral_one(client, merchant_campaign, make_operator):
    merchant, campaign = merchant_campaign
    _, staff = make_operator("merchant_staff", merchant=merchant)
    before = _state(campaign.id)
    referral = {**CAPPED, "applies_to": "referral"}
    answer = client.put(f"{URL}/{campaign.id}/rules", headers=staff, json={"rules": referral, "reason": "all shops"})
    assert (answer.status_code, answer.json["error"]) == (403, "platform_only")
    assert _state(campaign.id) == before


def test_a_code_minted_before_new_rules_is_claimed_for_the_rules_it_pays_by(
    app, client, make_campaign, make_user, admin
):
    from rebate.claims import claim_by_code
    from rebate.packets import generate_batch

    # given: a platform campaign capping the rebate at 10 yuan, a code minted under it, then rules capping at 30
    campaign = make_campaign(CAPPED, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    (code,) = [p.claim_code for p in generate_batch(campaign, 1, utcnow(), batch_ref="v1")]
    db.session.commit()
    bigger = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "balance", "cap_fen": 30_00}]}
    put = client.put(f"{URL}/{campaign.id}/rules", headers=admin, json={"rules": bigger, "reason": "raise it"})
    assert put.status_code == 200, put.json
    # when: the code is claimed
    db.session.rollback()
    ben = make_user()
    claimant, limits = Claimant(ben.id, "203.0.113.8", "device-ben"), PlatformLimits.from_config(app.config)
    packet = claim_by_code(code, ben, utcnow(), claimant=claimant, limits=limits)
    db.session.commit()
    # then: it reserves what its own rules (version 1) can pay, not the new version's 30 yuan
    assert (packet.rules_version, packet.reserved_fen) == (1, 10_00 + 10_00)
    assert db.session.get(Campaign, campaign.id).budget_reserved_fen == 20_00
