"""One schema for a campaign's trigger and claim limits (issue 10, item 1): ``Trigger.parse`` and
``ClaimLimits.parse`` are the one definition.

* a bad trigger or bad claim limits through the API answer 422 naming the field, and nothing is stored;
* the same through ``campaign_ops`` directly (the coming console): refused naming the field, nothing stored;
* what the operation stores is the parsed value with every default written out;
* /openapi.json publishes the schemas built beside the parsers, and the schemas' bounds are the parsers'.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from models import AuditLog, Campaign, CampaignRules, db
from models.operators import Actor
from models.triggers import MAX_STREAK_BONUSES, STREAK_DAYS, TRIGGER_SCHEMA, Trigger, TriggerError, TriggerKind
from rebate import campaign_ops
from risk import CLAIM_LIMITS_SCHEMA, ClaimLimits, ClaimLimitsError

CAMPAIGNS = "/admin/api/campaigns"
RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}
SIGN_IN = {"kind": "daily_sign_in"}


def campaign_fields(**overrides) -> dict:
    return {
        "name": "Spring cashback",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 1_000_00,
        "packet_amount_fen": 10_00,
        "trigger": {"kind": "claim_code"},
        **overrides,
    }


def stored() -> tuple[int, int, int]:
    db.session.rollback()
    return tuple(
        db.session.execute(select(func.count()).select_from(m)).scalar_one()
        for m in (Campaign, CampaignRules, AuditLog)
    )


BAD_TRIGGERS = {
    "streak of one day": ({**SIGN_IN, "streak_bonus": [{"days": 1, "amount_fen": 5_00}]}, "streak_bonus[0].days"),
    "streak over a year": ({**SIGN_IN, "streak_bonus": [{"days": 366, "amount_fen": 5_00}]}, "streak_bonus[0].days"),
    "too many bonuses": (
        {**SIGN_IN, "streak_bonus": [{"days": d, "amount_fen": 1} for d in range(2, 3 + MAX_STREAK_BONUSES)]},
        "streak_bonus must be a list of at most 10",
    ),
    "bonus of no money": ({**SIGN_IN, "streak_bonus": [{"days": 7, "amount_fen": 0}]}, "streak_bonus[0].amount_fen"),
    "unknown field": ({"kind": "order_paid", "min_order": 1}, "unknown trigger field(s) ['min_order']"),
    "unknown kind": ({"kind": "sometimes"}, "trigger kind 'sometimes'"),
    "negative minimum": ({"kind": "order_paid", "min_order_fen": -1}, "trigger min_order_fen"),
    "flag as text": ({"kind": "order_paid", "first_order_only": "yes"}, "trigger first_order_only"),
}

BAD_LIMITS = {
    "zero per person": ({"per_person": 0}, "claim_limits.per_person must be a whole number from 1 to 100000"),
    "interval over 30 days": ({"min_interval_seconds": 86_400 * 30 + 1}, "claim_limits.min_interval_seconds"),
    "text count": ({"per_ip_per_day": "5"}, "claim_limits.per_ip_per_day"),
    "true as a count": ({"per_person_per_day": True}, "claim_limits.per_person_per_day"),
    "unknown field": ({"per_device": 1}, "unknown claim_limits field(s) ['per_device']"),
}


# --- through the API ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_TRIGGERS, ids=list(BAD_TRIGGERS))
def test_a_bad_trigger_through_the_api_is_422_naming_the_field_and_nothing_is_stored(client, make_operator, case):
    _, headers = make_operator("admin")
    trigger, names = BAD_TRIGGERS[case]

    for path in (CAMPAIGNS, f"{CAMPAIGNS}/validate"):
        body = {**campaign_fields(trigger=trigger), "rules": RULES, "reason": "spring"}
        response = client.post(path, json=body, headers=headers)

        assert (response.status_code, response.json["error"]) == (422, "validation_error")
        [problem] = response.json["details"]
        assert problem["field"] == "trigger" and names in problem["problem"]
    assert stored() == (0, 0, 0)


@pytest.mark.parametrize("case", BAD_LIMITS, ids=list(BAD_LIMITS))
def test_bad_claim_limits_through_the_api_are_422_naming_the_field_and_nothing_is_stored(
    client, make_operator, make_campaign, case
):
    _, headers = make_operator("admin")
    limits, names = BAD_LIMITS[case]
    campaign = make_campaign(RULES, packet_amount_fen=10_00, claim_limits={"per_person": 2})
    campaign_id = campaign.id
    before = stored()

    created = client.post(
        CAMPAIGNS, json={**campaign_fields(claim_limits=limits), "rules": RULES, "reason": "x y z"}, headers=headers
    )
    changed = client.patch(
        f"{CAMPAIGNS}/{campaign_id}", json={"claim_limits": limits, "reason": "tighten"}, headers=headers
    )

    for response in (created, changed):
        assert (response.status_code, response.json["error"]) == (422, "validation_error")
        [problem] = response.json["details"]
        assert problem["field"] == "claim_limits" and names in problem["problem"]
    assert stored() == before
    assert db.session.get(Campaign, campaign_id).claim_limits == {"per_person": 2}


def test_the_api_stores_the_parsed_trigger_and_limits_with_every_default_written_out(client, make_operator):
    _, headers = make_operator("admin")
    trigger = {**SIGN_IN, "streak_bonus": [{"days": 7, "amount_fen": 5_00}, {"days": 365, "amount_fen": 50_00}]}
    body = {**campaign_fields(trigger=trigger, claim_limits={"per_ip_per_day": None}), "rules": RULES}

    response = client.post(CAMPAIGNS, json=body, headers=headers)

    assert response.status_code == 201, response.json
    campaign = db.session.get(Campaign, response.json["id"])
    assert campaign.trigger == {"kind": "daily_sign_in", "min_order_fen": 0, "first_order_only": False, **trigger}
    assert campaign.claim_limits == {
        "per_ip_per_day": None,
        "min_interval_seconds": 600,
        "per_person": 1,
        "per_person_per_day": None,
    }


# --- through the operation directly -------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_TRIGGERS, ids=list(BAD_TRIGGERS))
def test_the_operation_refuses_a_bad_trigger_naming_the_field_for_any_caller(make_operator, case):
    admin, _ = make_operator("admin")
    trigger, names = BAD_TRIGGERS[case]

    fields = campaign_fields(trigger=trigger)

    with pytest.raises(TriggerError) as checked:
        campaign_ops.check_campaign(Actor(admin), fields, RULES)
    with pytest.raises(TriggerError) as created:
        campaign_ops.create_campaign(Actor(admin), fields, RULES, "console")

    for refused in (checked, created):
        assert names in str(refused.value)
        assert (refused.value.code, refused.value.kind) == ("invalid_trigger", "invalid")
    assert stored() == (0, 0, 0)


@pytest.mark.parametrize("case", BAD_LIMITS, ids=list(BAD_LIMITS))
def test_the_operation_refuses_bad_claim_limits_naming_the_field_for_any_caller(make_operator, make_campaign, case):
    admin, _ = make_operator("admin")
    limits, names = BAD_LIMITS[case]
    campaign = make_campaign(RULES, packet_amount_fen=10_00, claim_limits={"per_person": 2})
    campaign_id = campaign.id
    db.session.commit()
    before = stored()

    with pytest.raises(ClaimLimitsError) as created:
        campaign_ops.create_campaign(Actor(admin), campaign_fields(claim_limits=limits), RULES, "console")
    db.session.rollback()
    with pytest.raises(ClaimLimitsError) as changed:
        campaign_ops.change_campaign(Actor(admin), campaign_id, {"claim_limits": limits}, "console")

    for refused in (created, changed):
        assert names in str(refused.value)
        assert (refused.value.code, refused.value.kind) == ("invalid_claim_limits", "invalid")
    assert stored() == before
    assert db.session.get(Campaign, campaign_id).claim_limits == {"per_person": 2}


def test_a_console_campaign_without_trigger_or_limits_is_manual_with_the_default_limits(make_operator):
    admin, _ = make_operator("admin")
    fields = {k: v for k, v in campaign_fields().items() if k != "trigger"}

    campaign = campaign_ops.create_campaign(Actor(admin), fields, RULES, "console")
    db.session.commit()

    assert campaign.issue_trigger == Trigger.parse(None)
    assert campaign.trigger == {"kind": "manual", "min_order_fen": 0, "first_order_only": False, "streak_bonus": []}
    assert ClaimLimits.parse(campaign.claim_limits) == ClaimLimits()
    assert campaign.claim_limits == {
        "per_ip_per_day": 5,
        "min_interval_seconds": 600,
        "per_person": 1,
        "per_person_per_day": None,
    }


def test_a_platform_wide_trigger_is_refused_to_merchant_staff_by_its_parsed_kind(make_operator):
    staff, _ = make_operator("merchant_staff")
    fields = campaign_fields(
        trigger=SIGN_IN,
        issuer_type="merchant",
        issuer_merchant_id=staff.merchant_id,
        funder_type="merchant_deposit",
        funder_merchant_id=staff.merchant_id,
    )

    with pytest.raises(campaign_ops.PlatformOnly, match="daily_sign_in"):
        campaign_ops.check_campaign(Actor(staff), fields, RULES)


# --- one schema, published ----------------------------------------------------------------------


def test_openapi_publishes_the_trigger_and_claim_limit_schemas_of_the_parsers(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]

    def plain(published: dict) -> dict:
        return {k: v for k, v in published.items() if k not in ("title", "default")}

    create = schemas["CreateCampaign"]["properties"]
    assert plain(create["trigger"]) == TRIGGER_SCHEMA
    assert plain(create["claim_limits"]) == CLAIM_LIMITS_SCHEMA
    change = schemas["CampaignChanges"]["properties"]["claim_limits"]
    assert {"type": "null"} in change["anyOf"] and CLAIM_LIMITS_SCHEMA in change["anyOf"]


def test_the_claim_limit_schema_has_the_parsers_fields_and_bounds():
    properties = CLAIM_LIMITS_SCHEMA["properties"]
    assert set(properties) == set(ClaimLimits().to_json())
    for name, bounds in properties.items():
        assert ClaimLimits.parse({name: bounds["maximum"]}).to_json()[name] == bounds["maximum"]
        assert ClaimLimits.parse({name: bounds["minimum"]}).to_json()[name] == bounds["minimum"]
        assert ClaimLimits.parse({name: None}).to_json()[name] is None
        assert ClaimLimits.parse({}).to_json()[name] == bounds["default"]
        for outside in (bounds["minimum"] - 1, bounds["maximum"] + 1):
            with pytest.raises(ClaimLimitsError, match=f"claim_limits.{name}"):
                ClaimLimits.parse({name: outside})


def test_the_trigger_schema_has_the_parsers_fields_and_bounds():
    properties = TRIGGER_SCHEMA["properties"]
    assert set(properties) == set(Trigger(TriggerKind.SHARE, sharer_reward_fen=1).to_json())
    assert set(properties["kind"]["enum"]) == {k.value for k in TriggerKind}
    days = properties["streak_bonus"]["items"]["properties"]["days"]
    assert (days["minimum"], days["maximum"]) == STREAK_DAYS
    for good in STREAK_DAYS:
        assert (
            Trigger.parse({**SIGN_IN, "streak_bonus": [{"days": good, "amount_fen": 1}]}).streak_bonus[0].days == good
        )
    for bad in (STREAK_DAYS[0] - 1, STREAK_DAYS[1] + 1):
        with pytest.raises(TriggerError, match=r"streak_bonus\[0\].days"):
            Trigger.parse({**SIGN_IN, "streak_bonus": [{"days": bad, "amount_fen": 1}]})
    assert properties["streak_bonus"]["maxItems"] == MAX_STREAK_BONUSES
    stored = Trigger.parse({"kind": "share", "sharer_reward_fen": 2_00, "streak_bonus": []})
    assert Trigger.parse(stored.to_json()) == stored
