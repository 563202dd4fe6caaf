"""Operations below the shell (issue 10, item 1): the campaign lifecycle, claims and the scope checks
live in ``rebate``; a view validates, calls one operation and commits once.

* a claim is refused by the platform-wide limits through the rebate operation itself, with no request;
* an operation that fails after it wrote leaves nothing (the view's one commit never happens);
* another merchant's campaign is not found, by the operation as by the API;
* the rule set has one schema: the engine checks it, and /openapi.json publishes the same.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask import has_request_context
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from models import AuditLog, Campaign, CampaignRules, ClaimRefusal, RedPacket, db
from models.operators import Actor
from rebate import campaign_ops
from rebate.claims import claim_by_code, claim_from_campaign
from rebate.errors import NotFound, StateConflict
from rebate.packets import generate_batch
from rebate.rules import RULES_SCHEMA
from rebate.scope import visible_campaign
from risk import Claimant, LimitHit, PlatformLimits

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
NOON = datetime(2025, 3, 5, 4, 0, tzinfo=UTC)  # 12:00 Beijing
ONE_A_DAY = PlatformLimits(
    ip_per_day=0,
    device_per_day=0,
    person_per_day=1,
    ip_interval_seconds=0,
    device_interval_seconds=0,
    person_interval_seconds=0,
)
NO_CAMPAIGN_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}
CAMPAIGNS = "/admin/api/campaigns"


def count(model, *where) -> int:
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def reserved(campaign_id: int) -> int:
    db.session.expire_all()
    return db.session.get(Campaign, campaign_id).budget_reserved_fen


def campaign_body(**overrides) -> dict:
    return {
        "name": "Spring cashback",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 1_000_00,
        "packet_amount_fen": 10_00,
        "trigger": {"kind": "claim_code"},
        "rules": RULES,
        "reason": "spring promotion",
        **overrides,
    }


# --- claims: rebate takes the risk limits ---------------------------------------------------------


def test_a_code_claim_over_a_platform_limit_is_refused_by_the_rebate_operation_without_a_request(
    make_campaign, make_user
):
    # given: a code campaign with no limits of its own, two codes, and one packet a day per person platform-wide
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=5_00, claim_limits=NO_CAMPAIGN_LIMITS)
    first, second = generate_batch(campaign, 2, NOON, batch_ref="ops")
    codes, campaign_id = (first.claim_code, second.claim_code), campaign.id
    amy = make_user()
    db.session.commit()
    assert not has_request_context()

    # when: amy claims the first code, then the second the same Beijing day, calling rebate directly
    packet = claim_by_code(codes[0], amy, NOON, claimant=Claimant(amy.id), limits=ONE_A_DAY)
    db.session.commit()
    with pytest.raises(LimitHit) as refused:
        claim_by_code(codes[1], amy, NOON, claimant=Claimant(amy.id), limits=ONE_A_DAY)
    db.session.commit()  # what the operation kept: the refusal, not the claim

    # then: the first is hers; the second stays unclaimed, reserves nothing, and the refusal is kept
    assert refused.value.code == "platform_person_daily_limit"
    assert packet.owner_id == amy.id and reserved(campaign_id) == 5_00 + 3_00
    assert db.session.get(RedPacket, second.id).status == "unclaimed"
    assert [(r.user_id, r.code) for r in db.session.execute(select(ClaimRefusal)).scalars()] == [
        (amy.id, "platform_person_daily_limit")
    ]


def test_a_campaign_claim_takes_the_campaigns_own_limits_in_rebate(make_campaign, make_user):
    # given: a self-serve campaign allowing one packet per person, no platform-wide limit
    campaign = make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        trigger={"kind": "claim"},
        claim_limits={**NO_CAMPAIGN_LIMITS, "per_person": 1},
    )
    campaign_id, ben = campaign.id, make_user()
    off = PlatformLimits.off()

    # when: ben claims twice
    claim_from_campaign(campaign_id, ben, NOON, claimant=Claimant(ben.id), limits=off)
    db.session.commit()
    with pytest.raises(LimitHit) as refused:
        claim_from_campaign(campaign_id, ben, NOON, claimant=Claimant(ben.id), limits=off)
    db.session.commit()

    # then: one packet, one reservation, one kept refusal
    assert refused.value.code == "person_limit"
    assert count(RedPacket, RedPacket.owner_id == ben.id) == 1
    assert reserved(campaign_id) == 5_00 + 3_00
    assert count(ClaimRefusal) == 1


# --- one commit, in the view ----------------------------------------------------------------------


@pytest.fixture
def commits_in_requests():
    """How many times the database session commits while a request is being answered."""
    seen = []

    def counted(session):
        if has_request_context():
            seen.append(session)

    event.listen(Session, "after_commit", counted)
    yield seen
    event.remove(Session, "after_commit", counted)


def test_creating_a_campaign_commits_once(client, make_operator, commits_in_requests):
    _, headers = make_operator("admin")

    response = client.post(CAMPAIGNS, json=campaign_body(), headers=headers)

    assert response.status_code == 201, response.json
    assert len(commits_in_requests) == 1


def test_an_operation_failing_after_it_wrote_leaves_nothing(client, make_operator, monkeypatch):
    # given: the audit line (written last) refuses, after the campaign and its rules were flushed
    _, headers = make_operator("admin")
    flushed = []

    def refuse(actor, action, *args, **details):
        flushed.append(count(Campaign) + count(CampaignRules))
        raise StateConflict("audit refused", code="audit_refused")

    monkeypatch.setattr(campaign_ops, "audit", refuse)

    # when
    response = client.post(CAMPAIGNS, json=campaign_body(), headers=headers)

    # then: the operation had written both rows, and none of it was committed
    assert (response.status_code, response.json["error"]) == (409, "audit_refused")
    assert flushed == [2]
    db.session.rollback()
    assert (count(Campaign), count(CampaignRules), count(AuditLog)) == (0, 0, 0)


# --- scope checks below the shell -----------------------------------------------------------------


@pytest.fixture
def others_campaign(make_campaign, make_merchant):
    other = make_merchant()
    return make_campaign(
        RULES,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        status="draft",
        issuer_type="merchant",
        issuer_merchant_id=other.id,
        funder_type="merchant_deposit",
        funder_merchant_id=other.id,
    )


def test_another_merchants_campaign_is_not_found_by_the_operations(make_operator, others_campaign):
    staff, _ = make_operator("merchant_staff")
    admin, _ = make_operator("admin")
    campaign_id = others_campaign.id

    with pytest.raises(NotFound):
        visible_campaign(staff, campaign_id)
    with pytest.raises(NotFound):
        campaign_ops.transition(Actor(staff), campaign_id, "activate", "not mine")
    with pytest.raises(NotFound):
        campaign_ops.replace_rules(Actor(staff), campaign_id, RULES, "not mine")
    db.session.rollback()
    assert visible_campaign(admin, campaign_id).id == campaign_id


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "", None),
        ("patch", "", {"name": "mine now", "reason": "take it"}),
        ("post", "/activate", {"reason": "take it"}),
        ("put", "/rules", {"rules": RULES, "reason": "take it"}),
        ("post", "/packets/batch", {"count": 1, "reason": "take it"}),
    ],
)
def test_another_merchants_campaign_is_404_through_the_api(client, make_operator, others_campaign, method, path, body):
    _, headers = make_operator("merchant_staff")
    campaign_id = others_campaign.id

    response = getattr(client, method)(f"{CAMPAIGNS}/{campaign_id}{path}", json=body, headers=headers)

    assert (response.status_code, response.json["error"]) == (404, "not_found")
    db.session.rollback()
    campaign = db.session.get(Campaign, campaign_id)
    assert (campaign.status, campaign.name, campaign.rules_version) == ("draft", others_campaign.name, 1)
    assert count(AuditLog) == 0 and count(RedPacket) == 0


# --- one rule schema ------------------------------------------------------------------------------


def test_rules_with_an_unknown_field_are_refused_naming_it_and_nothing_is_saved(client, make_operator):
    _, headers = make_operator("admin")
    rules = {"roles": [{**RULES["roles"][0], "bonus": 1}]}

    response = client.post(CAMPAIGNS, json=campaign_body(rules=rules), headers=headers)

    assert (response.status_code, response.json["error"]) == (422, "validation_error")
    assert "roles[0]: unknown field 'bonus'" in str(response.json["details"])
    db.session.rollback()
    assert count(Campaign) == 0


def test_the_stored_rules_write_every_default_out_and_a_window_doubles_by_default(client, make_operator):
    _, headers = make_operator("admin")
    window = {"starts_at": "2030-01-01T00:00:00+08:00", "ends_at": "2030-01-02T00:00:00+08:00"}
    rules = {"roles": [{**RULES["roles"][0], "windows": [window]}]}

    response = client.post(CAMPAIGNS, json=campaign_body(rules=rules), headers=headers)

    assert response.status_code == 201, response.json
    stored = db.session.execute(select(CampaignRules)).scalar_one().rules
    assert stored == {
        "roles": [
            {
                "role": "consumer",
                "rate_bps": 500,
                "form": "balance",
                "base": "paid",
                "min_order_fen": 0,
                "cap_fen": 3_00,
                "tiers": [],
                "windows": [{**window, "factor_bps": 20_000}],
            }
        ],
        "applies_to": "packet",
    }


def test_openapi_publishes_the_engines_rule_schema(client):
    doc = client.get("/openapi.json").json
    schemas = doc["components"]["schemas"]

    for body in ("CreateCampaign", "NewRules"):
        published = schemas[body]["properties"]["rules"]
        assert {k: v for k, v in published.items() if k != "title"} == RULES_SCHEMA
