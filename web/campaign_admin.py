"""Admin API for campaigns: create, validate, version rules, activate / pause / end, batch packets.

Each route validates its body, calls one operation of ``rebate/campaign_ops.py`` (which checks scope,
parties, rules and deposits, writes and audits) and commits once. Merchant staff manage only their own
merchant's campaigns (anything else answers 404); referral and platform-wide campaigns are for platform
admins only (403); a merchant-funded campaign is activated, and a running one's budget raised, only
while its funder's deposit holds what the budget may still commit (409 deposit_exhausted). The rule set
is one JSON object: its shape is ``rebate.rules.RULES_SCHEMA`` (checked here, 422 naming the field, and
published in /openapi.json), its meaning is checked by ``parse_rules`` in the operation (422 invalid_rules).
The trigger and the claim limits are JSON objects too, checked here by their one parser
(``models.triggers.Trigger.parse``, ``risk.ClaimLimits.parse``) and published with its schema
(``TRIGGER_SCHEMA``, ``CLAIM_LIMITS_SCHEMA``); the operation parses them again for callers other than this API.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

from flask import Blueprint, g
from pydantic import AfterValidator, Field, StrictBool, StrictInt, WithJsonSchema, model_validator
from sqlalchemy import select

from models import (
    Campaign,
    CampaignRules,
    FunderType,
    IssuerType,
    Merchant,
    OperatorRole,
    RedPacket,
    db,
    merchant_name,
    utcnow,
)
from models.operators import merchant_scope
from models.triggers import TRIGGER_SCHEMA, Trigger, TriggerError, TriggerKind
from rebate import campaign_ops
from rebate.rules import RULES_SCHEMA, RuleError, check_shape
from rebate.scope import visible_campaign
from risk import CLAIM_LIMITS_SCHEMA, ClaimLimits, ClaimLimitsError
from web.admin import actor
from web.api import endpoint
from web.errors import ValidationFailed
from web.payment_api import service_provider
from web.schemas import Category, Id, Instant, Model, Name, NonNegativeFen, Page, PositiveFen, Reason

bp = Blueprint("campaign_admin", __name__, url_prefix="/admin/api")
MANAGERS = (OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF)
READERS = (OperatorRole.ADMIN, OperatorRole.FINANCE, OperatorRole.SUPPORT, OperatorRole.MERCHANT_STAFF)


def _checked_by(parse: Callable[[dict], object], error: type[Exception]) -> AfterValidator:
    """A JSON object the one parser below the shell accepts (the operation parses it again and stores
    it with every default written out); its refusal becomes a 422 naming the field."""

    def check(value: dict) -> dict:
        try:
            parse(value)
        except error as exc:
            raise ValueError(str(exc)) from None
        return value

    return AfterValidator(check)


RulesIn = Annotated[dict, _checked_by(check_shape, RuleError), WithJsonSchema(RULES_SCHEMA)]
TriggerIn = Annotated[dict, _checked_by(Trigger.parse, TriggerError), WithJsonSchema(TRIGGER_SCHEMA)]
ClaimLimitsIn = Annotated[dict, _checked_by(ClaimLimits.parse, ClaimLimitsError), WithJsonSchema(CLAIM_LIMITS_SCHEMA)]


class PacketTier(Model):
    min_spend_fen: NonNegativeFen
    amount_fen: PositiveFen


class UsageWindows(Model):
    weekdays: Annotated[list[Annotated[StrictInt, Field(ge=1, le=7)]], Field(max_length=7)] = []
    hours: Annotated[list[Annotated[StrictInt, Field(ge=0, le=24)]], Field(min_length=2, max_length=2)] | None = None


class CreateCampaign(Model):
    name: Name
    issuer_type: IssuerType
    issuer_merchant_id: Id | None = None
    funder_type: FunderType
    funder_merchant_id: Id | None = None
    starts_at: Instant | None = None
    ends_at: Instant | None = None
    budget_limit_fen: PositiveFen | None = None
    packet_amount_fen: PositiveFen | None = None
    packet_min_spend_fen: NonNegativeFen = 0
    packet_categories: Annotated[list[Category], Field(max_length=20)] = []
    packet_merchant_id: Id | None = None
    packet_valid_days: Annotated[StrictInt, Field(ge=1, le=365)] = 30
    restore_packet_on_refund: StrictBool = False
    packet_tiers: Annotated[list[PacketTier], Field(max_length=10)] = []
    packet_products: Annotated[list[Id], Field(max_length=100)] = []
    packet_valid_from: Instant | None = None
    packet_valid_until: Instant | None = None
    regions: Annotated[list[Category], Field(max_length=100)] = []
    channels: Annotated[list[Literal["mini_program", "official_account", "h5", "app"]], Field(max_length=4)] = []
    usage_windows: UsageWindows = UsageWindows()
    max_packets: Annotated[StrictInt, Field(ge=1, le=100_000_000)] | None = None
    max_packets_per_order: Annotated[StrictInt, Field(ge=1, le=5)] = 1
    claim_limits: ClaimLimitsIn = {}
    spike_auto_pause: StrictBool = False  # a spike alert on this campaign also pauses it (risk: spike_job)
    trigger: TriggerIn = {}
    rules: RulesIn
    reason: Reason | None = None


class NewRules(Model):
    rules: RulesIn
    reason: Reason


class Transition(Model):
    reason: Reason


class Batch(Model):
    count: Annotated[StrictInt, Field(ge=1, le=10_000)]
    reason: Reason


# Triggers that fire for a brand-new person: at their first login (registration), or when they bind to their inviter
# within days of joining, before they have said their region (``PUT /api/v1/me/region``). A campaign of one limited
# to regions would issue to nobody (``check_audience``: a person without a region is outside every region), and the
# operator would see no claim and no reason: such a campaign cannot have regions.
NEW_PERSON_TRIGGERS = frozenset({TriggerKind.REGISTRATION, TriggerKind.REFERRAL_BIND})


def _no_regions_for_new_people(trigger: object, regions: list | None) -> None:
    """422 ``regions_on_new_person_trigger`` for regions on a campaign whose trigger fires for a brand-new person."""
    if not regions:
        return
    kind = Trigger.parse(trigger).kind
    if kind in NEW_PERSON_TRIGGERS:
        raise ValidationFailed(
            f"a {kind.value} campaign issues its packets to a brand-new person, who has no region yet when it fires: "
            "it cannot be limited to regions (send no regions)",
            code="regions_on_new_person_trigger",
            details={"trigger": kind.value, "regions": list(regions)},
        )


def _columns(body: CreateCampaign) -> dict:
    """The new campaign's columns: JSON columns as JSON (the operation parses the trigger and claim limits)."""
    json_columns = {"packet_tiers", "usage_windows"}
    fields = body.model_dump(exclude={"rules", "reason", *json_columns})
    return fields | body.model_dump(mode="json", include=json_columns, exclude_none=True)


def campaign_json(c: Campaign) -> dict:
    return {
        "id": c.id,
        "name": c.name,
        "status": c.status,
        "paused_for_deposit": c.paused_for_deposit,  # paused by a dry deposit: the packets out still earn
        "paused_by_platform": c.paused_by_platform,  # only a platform operator activates it again
        "issuer_type": c.issuer_type,
        "issuer_merchant_id": c.issuer_merchant_id,
        "issuer_merchant_name": merchant_name(c.issuer_merchant_id),
        "funder_type": c.funder_type,
        "funder_merchant_id": c.funder_merchant_id,
        "funder_merchant_name": merchant_name(c.funder_merchant_id),
        "budget_limit_fen": c.budget_limit_fen,
        "budget_reserved_fen": c.budget_reserved_fen,
        "budget_committed_fen": c.budget_committed_fen,
        "rules_version": c.rules_version,
        "packet_amount_fen": c.packet_amount_fen,
        "packet_min_spend_fen": c.packet_min_spend_fen,
        "packet_categories": c.packet_categories,
        "trigger": c.trigger,
        "spike_auto_pause": c.spike_auto_pause,
        "starts_at": _iso(c.starts_at),
        "ends_at": _iso(c.ends_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@endpoint(
    bp,
    "/campaigns",
    methods=["POST"],
    auth="operator",
    roles=MANAGERS,
    body=CreateCampaign,
    idempotent=True,
    status=201,
)
def create_campaign(body: CreateCampaign):
    """Create a draft campaign with version 1 of its rules (refused with the reason when unsafe).

    A registration or referral-bind campaign with ``regions`` is 422 ``regions_on_new_person_trigger``."""
    _no_regions_for_new_people(body.trigger, body.regions)
    campaign = campaign_ops.create_campaign(actor(), _columns(body), body.rules, body.reason)
    return campaign_json(campaign), 201


@endpoint(bp, "/campaigns/validate", methods=["POST"], auth="operator", roles=MANAGERS, body=CreateCampaign, reads=True)
def validate_campaign(body: CreateCampaign):
    """Check a campaign without saving it."""
    _no_regions_for_new_people(body.trigger, body.regions)
    rules = campaign_ops.check_campaign(actor(), _columns(body), body.rules)
    return {"valid": True, "max_rebate_per_order_fen": rules.max_award_fen()}


class CampaignPage(Page):
    challenges: bool = Field(
        False, description="also the per-challenge campaigns funded by people's stakes (hidden by default)"
    )


@endpoint(bp, "/campaigns", auth="operator", roles=READERS, query=CampaignPage)
def list_campaigns(query: CampaignPage):
    """Campaigns, newest first; a challenge's campaigns (a person's stake) only when asked."""
    stmt = select(Campaign).order_by(Campaign.id.desc()).limit(query.limit).offset(query.offset)
    if not query.challenges:
        stmt = stmt.where(Campaign.funder_type != FunderType.USER_STAKE)
    scope = merchant_scope(g.operator)
    if scope is not None:
        stmt = stmt.where(Campaign.funder_merchant_id == scope)
    found = db.session.execute(stmt).scalars().all()
    ids = {m for c in found for m in (c.issuer_merchant_id, c.funder_merchant_id) if m is not None}
    if ids:  # into the identity map: campaign_json's names cost no query each
        db.session.execute(select(Merchant).where(Merchant.id.in_(ids))).scalars().all()
    return {"items": [campaign_json(c) for c in found]}


@endpoint(bp, "/campaigns/<int:campaign_id>", auth="operator", roles=READERS)
def get_campaign(campaign_id: int):
    """One campaign with its current rules."""
    campaign = visible_campaign(g.operator, campaign_id)
    rules = db.session.execute(
        select(CampaignRules).filter_by(campaign_id=campaign.id, version=campaign.rules_version)
    ).scalar_one()
    return {**campaign_json(campaign), "rules": rules.rules}


@endpoint(
    bp,
    "/campaigns/<int:campaign_id>/rules",
    methods=["PUT"],
    auth="operator",
    roles=MANAGERS,
    body=NewRules,
    idempotent=True,
)
def replace_rules(campaign_id: int, body: NewRules):
    """A new rules version; packets and orders keep the version they were issued or evaluated under."""
    return campaign_json(campaign_ops.replace_rules(actor(), campaign_id, body.rules, body.reason))


@endpoint(
    bp,
    "/campaigns/<int:campaign_id>/<any(activate, pause, end):action>",
    methods=["POST"],
    auth="operator",
    roles=MANAGERS,
    body=Transition,
    idempotent=True,
)
def transition(campaign_id: int, action: str, body: Transition):
    """Activate, pause (stops issuing and awarding at once) or end a campaign."""
    return campaign_json(
        campaign_ops.transition(actor(), campaign_id, action, body.reason, service_provider=service_provider())
    )


@endpoint(
    bp,
    "/campaigns/<int:campaign_id>/packets/batch",
    methods=["POST"],
    auth="operator",
    roles=MANAGERS,
    body=Batch,
    idempotent=True,
    status=201,
)
def batch_packets(campaign_id: int, body: Batch):
    """Generate N unclaimed packets with unique, unguessable claim codes (budget reserved at claim)."""
    packets = campaign_ops.issue_batch(actor(), campaign_id, body.count, body.reason, utcnow())
    return {"count": len(packets), "codes": [p.claim_code for p in packets]}, 201


@endpoint(bp, "/campaigns/<int:campaign_id>/packets", auth="operator", roles=READERS, query=Page)
def campaign_packets(campaign_id: int, query: Page):
    """A campaign's packets (codes are not shown again)."""
    campaign = visible_campaign(g.operator, campaign_id)
    rows = db.session.execute(
        select(RedPacket)
        .where(RedPacket.campaign_id == campaign.id)
        .order_by(RedPacket.id)
        .limit(query.limit)
        .offset(query.offset)
    ).scalars()
    return {
        "items": [
            {
                "id": p.id,
                "status": p.status,
                "owner_id": p.owner_id,
                "amount_fen": p.amount_fen,
                "reserved_fen": p.reserved_fen,
            }
            for p in rows
        ]
    }


@endpoint(
    bp,
    "/red-packets/<int:packet_id>/revoke",
    methods=["POST"],
    auth="operator",
    roles=MANAGERS,
    body=Transition,
    idempotent=True,
)
def revoke(packet_id: int, body: Transition):
    """Revoke an unspent packet (issued or unclaimed); its reservation and count slot return to the budget."""
    packet = campaign_ops.revoke(actor(), packet_id, body.reason)
    return {"id": packet.id, "status": packet.status, "reserved_fen": packet.reserved_fen}


NEEDS_A_VALUE = frozenset(  # CampaignChanges: fields a null cannot change
    {
        "name",
        "budget_limit_fen",
        "max_packets_per_order",
        "packet_valid_days",
        "regions",
        "channels",
        "usage_windows",
        "spike_auto_pause",
    }
)


class CampaignChanges(Model):
    """What may change on a running campaign. Rules change through PUT …/rules (a new version)."""

    name: Name | None = None
    ends_at: Instant | None = None
    budget_limit_fen: PositiveFen | None = None
    max_packets: Annotated[StrictInt, Field(ge=1, le=100_000_000)] | None = None
    max_packets_per_order: Annotated[StrictInt, Field(ge=1, le=5)] | None = None
    packet_valid_days: Annotated[StrictInt, Field(ge=1, le=365)] | None = None
    regions: Annotated[list[Category], Field(max_length=100)] | None = None
    channels: Annotated[list[Literal["mini_program", "official_account", "h5", "app"]], Field(max_length=4)] | None = (
        None
    )
    usage_windows: UsageWindows | None = None
    claim_limits: ClaimLimitsIn | None = None
    spike_auto_pause: StrictBool | None = None  # true or false (null: 422, NEEDS_A_VALUE)
    reason: Reason

    @model_validator(mode="after")
    def _no_null_where_a_value_is_needed(self):
        """Null means "none" only for ends_at (no end), max_packets (no count limit) and claim_limits (the
        defaults): every other field names a value or is left out. A budget is never taken away: an unbudgeted
        campaign's packets reserve nothing, so a budgeted one cannot become one (raise the limit instead)."""
        nulled = sorted(name for name in self.model_fields_set & NEEDS_A_VALUE if getattr(self, name) is None)
        if nulled:
            raise ValueError(f"{', '.join(nulled)} cannot be null: send a value, or leave the field out")
        return self


@endpoint(
    bp,
    "/campaigns/<int:campaign_id>",
    methods=["PATCH"],
    auth="operator",
    roles=MANAGERS,
    body=CampaignChanges,
    idempotent=True,
)
def change_campaign(campaign_id: int, body: CampaignChanges):
    """Change a campaign's budget, end, counts, audience or limits; every change is audited with its reason.

    Regions on a registration or referral-bind campaign are 422 ``regions_on_new_person_trigger`` (its regions
    may be emptied)."""
    changes = body.model_dump(mode="json", exclude={"reason"}, exclude_unset=True)
    if changes.get("regions"):  # the trigger is the stored one: it never changes after create
        _no_regions_for_new_people(visible_campaign(g.operator, campaign_id).trigger, changes["regions"])
    if "ends_at" in changes:
        changes["ends_at"] = body.ends_at
    return campaign_json(campaign_ops.change_campaign(actor(), campaign_id, changes, body.reason))
