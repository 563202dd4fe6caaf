"""Admin API for campaigns: create, validate, version rules, activate / pause / end, batch packets.

Merchant staff manage only their own merchant's campaigns, funded by their own
deposit; anything else answers 404. Referral campaigns and campaigns fired by
platform-wide events (registration, daily sign-in, referral binding) are for
platform admins only (403). A merchant-funded campaign is activated, and a
running one's budget raised, only while its funder's deposit holds what the
budget may still commit (409 deposit_exhausted).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from flask import Blueprint, g
from pydantic import AwareDatetime, Field, StrictBool, StrictInt
from sqlalchemy import select

from models import Campaign, CampaignRules, CampaignStatus, FunderType, IssuerType, OperatorRole, RedPacket, db, utcnow
from models.triggers import PLATFORM_WIDE, TriggerKind
from rebate.campaigns import rules_of
from rebate.deposits import held_in_deposit, lock_deposits
from rebate.errors import StateConflict
from rebate.packets import generate_batch, revoke_packet
from rebate.rules import Form, RuleError, RuleSet, parse_rules
from web.admin import audit, merchant_scope, visible_merchant
from web.api import endpoint
from web.errors import Forbidden, NotFound, ValidationFailed
from web.schemas import Category, Id, Model, Name, NonNegativeFen, Page, PositiveFen, Reason

bp = Blueprint("campaign_admin", __name__, url_prefix="/admin/api")
MANAGERS = (OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF)
READERS = (OperatorRole.ADMIN, OperatorRole.FINANCE, OperatorRole.SUPPORT, OperatorRole.MERCHANT_STAFF)
TRANSITIONS = {
    "activate": ({CampaignStatus.DRAFT, CampaignStatus.PAUSED}, CampaignStatus.ACTIVE),
    "pause": ({CampaignStatus.ACTIVE}, CampaignStatus.PAUSED),
    "end": ({CampaignStatus.DRAFT, CampaignStatus.ACTIVE, CampaignStatus.PAUSED}, CampaignStatus.ENDED),
}


class TierIn(Model):
    min_order_fen: NonNegativeFen
    rate_bps: Annotated[StrictInt, Field(ge=0, le=10_000)]


class WindowIn(Model):
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    factor_bps: Annotated[StrictInt, Field(ge=10_000, le=50_000)] = 20_000


class ConditionIn(Model):
    milestones: Annotated[list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")]], Field(min_length=1, max_length=10)]
    window_days: Annotated[StrictInt, Field(ge=1, le=3650)] = 90
    release: Literal["all", "parts"] = "all"
    quality_scaled: StrictBool = False


class RoleRuleIn(Model):
    role: Literal["issuer", "consumer", "inviter"]
    rate_bps: Annotated[StrictInt, Field(ge=0, le=10_000)]
    form: Form
    base: Literal["paid", "order_total"] = "paid"
    min_order_fen: NonNegativeFen = 0
    cap_fen: PositiveFen | None = None
    fallback_form: Literal[Form.WECHAT_CHANGE, Form.CASH_RED_PACKET, Form.BALANCE, Form.POINTS] | None = None
    tiers: Annotated[list[TierIn], Field(max_length=20)] = []
    windows: Annotated[list[WindowIn], Field(max_length=20)] = []
    condition: ConditionIn | None = None


class RulesIn(Model):
    roles: Annotated[list[RoleRuleIn], Field(min_length=1, max_length=3)]
    applies_to: Literal["packet", "referral"] = "packet"
    referral_days: Annotated[StrictInt, Field(ge=1, le=3650)] | None = None
    attribution_days: Annotated[StrictInt, Field(ge=1, le=3650)] | None = None


class StreakBonus(Model):
    days: Annotated[StrictInt, Field(ge=2, le=365)]
    amount_fen: PositiveFen


class TriggerIn(Model):
    kind: TriggerKind
    min_order_fen: NonNegativeFen = 0
    first_order_only: StrictBool = False
    streak_bonus: Annotated[list[StreakBonus], Field(max_length=10)] = []
    sharer_reward_fen: PositiveFen | None = None


class PacketTier(Model):
    min_spend_fen: NonNegativeFen
    amount_fen: PositiveFen


class UsageWindows(Model):
    weekdays: Annotated[list[Annotated[StrictInt, Field(ge=1, le=7)]], Field(max_length=7)] = []
    hours: Annotated[list[Annotated[StrictInt, Field(ge=0, le=24)]], Field(min_length=2, max_length=2)] | None = None


class ClaimLimitsIn(Model):
    per_ip_per_day: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = 5
    min_interval_seconds: Annotated[StrictInt, Field(ge=1, le=86_400 * 30)] | None = 600
    per_person: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = 1
    per_person_per_day: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = None


class CreateCampaign(Model):
    name: Name
    issuer_type: IssuerType
    issuer_merchant_id: Id | None = None
    funder_type: FunderType
    funder_merchant_id: Id | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    budget_limit_fen: PositiveFen | None = None
    packet_amount_fen: PositiveFen | None = None
    packet_min_spend_fen: NonNegativeFen = 0
    packet_categories: Annotated[list[Category], Field(max_length=20)] = []
    packet_merchant_id: Id | None = None
    packet_valid_days: Annotated[StrictInt, Field(ge=1, le=365)] = 30
    restore_packet_on_refund: StrictBool = False
    packet_tiers: Annotated[list[PacketTier], Field(max_length=10)] = []
    packet_products: Annotated[list[Id], Field(max_length=100)] = []
    packet_valid_from: AwareDatetime | None = None
    packet_valid_until: AwareDatetime | None = None
    regions: Annotated[list[Category], Field(max_length=100)] = []
    channels: Annotated[list[Literal["mini_program", "official_account", "h5", "app"]], Field(max_length=4)] = []
    usage_windows: UsageWindows = UsageWindows()
    max_packets: Annotated[StrictInt, Field(ge=1, le=100_000_000)] | None = None
    max_packets_per_order: Annotated[StrictInt, Field(ge=1, le=5)] = 1
    claim_limits: ClaimLimitsIn = ClaimLimitsIn()
    trigger: TriggerIn = TriggerIn(kind=TriggerKind.MANUAL)
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


def _rules_data(rules: RulesIn) -> dict:
    return rules.model_dump(mode="json", exclude_none=True)


def _parsed_rules(rules: RulesIn, budgeted: bool) -> tuple[dict, RuleSet]:
    """The rules as stored JSON and as the engine reads them; refused with the engine's reason."""
    data = _rules_data(rules)
    try:
        return data, parse_rules(data, budgeted=budgeted)
    except RuleError as exc:
        raise ValidationFailed(str(exc), code="invalid_rules") from None


def _check_rules(rules: RulesIn, budgeted: bool) -> dict:
    return _parsed_rules(rules, budgeted)[0]


PLATFORM_TRIGGERS = PLATFORM_WIDE


def _check_platform_only(applies_to: str, trigger_kind: str | None) -> None:
    """Referral and platform-wide campaigns pay on every merchant's customers: platform admins only."""
    if merchant_scope() is None:
        return
    if applies_to == "referral":
        raise Forbidden("referral campaigns are created and changed by platform admins only", code="platform_only")
    if trigger_kind in PLATFORM_TRIGGERS:
        raise Forbidden(
            f"campaigns fired by {trigger_kind} are platform-wide: platform admins only", code="platform_only"
        )


def _check_platform_only_campaign(campaign: Campaign) -> None:
    _check_platform_only(rules_of(campaign).applies_to, campaign.issue_trigger.kind)


def _check_parties(body: CreateCampaign) -> None:
    if (body.issuer_type == IssuerType.MERCHANT) != (body.issuer_merchant_id is not None):
        raise ValidationFailed("issuer_merchant_id goes with issuer_type merchant", code="issuer")
    if (body.funder_type == FunderType.MERCHANT_DEPOSIT) != (body.funder_merchant_id is not None):
        raise ValidationFailed("funder_merchant_id goes with funder_type merchant_deposit", code="funder")
    if body.issuer_type == IssuerType.USER or body.funder_type == FunderType.USER_STAKE:
        raise ValidationFailed("user-issued campaigns are created by users, not operators", code="issuer")
    if body.starts_at and body.ends_at and body.ends_at <= body.starts_at:
        raise ValidationFailed("ends_at must be after starts_at", code="window")
    if body.packet_valid_until and body.packet_valid_from and body.packet_valid_until <= body.packet_valid_from:
        raise ValidationFailed("packet_valid_until must be after packet_valid_from", code="window")
    hours = body.usage_windows.hours
    if hours and hours[0] >= hours[1]:
        raise ValidationFailed("usage_windows.hours must be [from, to) with from < to", code="window")
    if len({t.min_spend_fen for t in body.packet_tiers}) != len(body.packet_tiers):
        raise ValidationFailed("two packet tiers start at the same spend", code="packet_tiers")
    scope = merchant_scope()
    for merchant_id in (body.issuer_merchant_id, body.funder_merchant_id, body.packet_merchant_id):
        if merchant_id is not None:
            visible_merchant(merchant_id)
    if scope is not None and (body.funder_merchant_id != scope or body.issuer_merchant_id != scope):
        raise ValidationFailed("merchant staff run campaigns issued and funded by their own merchant", code="funder")


def _check_deposit(campaign: Campaign) -> None:
    """A merchant-funded campaign goes live only when its deposit holds what it may still commit."""
    if campaign.funder_type != FunderType.MERCHANT_DEPOSIT:
        return
    lock_deposits([campaign])  # after the campaign's own lock, as payments and claims take them
    held = held_in_deposit(campaign)
    still = None if campaign.budget_limit_fen is None else campaign.budget_limit_fen - campaign.budget_committed_fen
    if held <= 0 or (still is not None and held < still):
        needs = "money" if still is None else f"the {still} fen its budget may still commit"
        raise StateConflict(
            f"merchant {campaign.funder_merchant_id}'s marketing deposit holds {held} fen, not {needs}: "
            "top it up (or lower the budget) first",
            code="deposit_exhausted",
        )


def campaign_json(c: Campaign) -> dict:
    return {
        "id": c.id,
        "name": c.name,
        "status": c.status,
        "issuer_type": c.issuer_type,
        "issuer_merchant_id": c.issuer_merchant_id,
        "funder_type": c.funder_type,
        "funder_merchant_id": c.funder_merchant_id,
        "budget_limit_fen": c.budget_limit_fen,
        "budget_reserved_fen": c.budget_reserved_fen,
        "budget_committed_fen": c.budget_committed_fen,
        "rules_version": c.rules_version,
        "packet_amount_fen": c.packet_amount_fen,
        "packet_min_spend_fen": c.packet_min_spend_fen,
        "packet_categories": c.packet_categories,
        "trigger": c.trigger,
        "starts_at": _iso(c.starts_at),
        "ends_at": _iso(c.ends_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def visible_campaign(campaign_id: int, *, lock: bool = False) -> Campaign:
    stmt = select(Campaign).where(Campaign.id == campaign_id)
    if lock:  # and see the counters as they are now, not as this session last read them
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    campaign = db.session.execute(stmt).scalar_one_or_none()
    scope = merchant_scope()
    if campaign is None or (scope is not None and campaign.funder_merchant_id != scope):
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


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
    """Create a draft campaign with version 1 of its rules (refused with the reason when unsafe)."""
    _check_platform_only(body.rules.applies_to, body.trigger.kind)
    _check_parties(body)
    rules = _check_rules(body.rules, budgeted=body.budget_limit_fen is not None)
    fields = body.model_dump(exclude={"rules", "reason", "trigger", "packet_tiers", "usage_windows", "claim_limits"})
    json_fields = body.model_dump(mode="json", include={"trigger", "packet_tiers", "usage_windows"}, exclude_none=True)
    limits = body.claim_limits.model_dump(mode="json")  # None means "no such limit" and is kept
    campaign = Campaign(**fields, **json_fields, claim_limits=limits, status=CampaignStatus.DRAFT)
    db.session.add(campaign)
    db.session.flush()
    db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=rules, created_by=g.operator.id))
    audit("campaign.create", "campaign", campaign.id, body.reason, rules=rules)
    return campaign_json(campaign), 201


@endpoint(bp, "/campaigns/validate", methods=["POST"], auth="operator", roles=MANAGERS, body=CreateCampaign)
def validate_campaign(body: CreateCampaign):
    """Check a campaign without saving it."""
    _check_platform_only(body.rules.applies_to, body.trigger.kind)
    _check_parties(body)
    _, rules = _parsed_rules(body.rules, body.budget_limit_fen is not None)
    return {"valid": True, "max_rebate_per_order_fen": rules.max_award_fen()}


@endpoint(bp, "/campaigns", auth="operator", roles=READERS, query=Page)
def list_campaigns(query: Page):
    """Campaigns, newest first."""
    stmt = select(Campaign).order_by(Campaign.id.desc()).limit(query.limit).offset(query.offset)
    if merchant_scope() is not None:
        stmt = stmt.where(Campaign.funder_merchant_id == merchant_scope())
    return {"items": [campaign_json(c) for c in db.session.execute(stmt).scalars()]}


@endpoint(bp, "/campaigns/<int:campaign_id>", auth="operator", roles=READERS)
def get_campaign(campaign_id: int):
    """One campaign with its current rules."""
    campaign = visible_campaign(campaign_id)
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
    campaign = visible_campaign(campaign_id, lock=True)
    if campaign.status == CampaignStatus.ENDED:
        raise StateConflict("an ended campaign cannot change", code="campaign_ended")
    _check_platform_only_campaign(campaign)
    _check_platform_only(body.rules.applies_to, None)
    rules = _check_rules(body.rules, budgeted=campaign.budget_limit_fen is not None)
    campaign.rules_version += 1
    db.session.add(
        CampaignRules(campaign_id=campaign.id, version=campaign.rules_version, rules=rules, created_by=g.operator.id)
    )
    audit("campaign.rules", "campaign", campaign.id, body.reason, version=campaign.rules_version, rules=rules)
    return campaign_json(campaign)


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
    campaign = visible_campaign(campaign_id, lock=True)
    _check_platform_only_campaign(campaign)
    sources, target = TRANSITIONS[action]
    if campaign.status not in sources:
        raise StateConflict(f"a {campaign.status} campaign cannot {action}", code="campaign_state")
    if target == CampaignStatus.ACTIVE:
        _check_deposit(campaign)
    campaign.status = target
    audit(f"campaign.{action}", "campaign", campaign.id, body.reason)
    return campaign_json(campaign)


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
    campaign = visible_campaign(campaign_id)
    now = utcnow()
    packets = generate_batch(campaign, body.count, now, batch_ref=f"{g.operator.id}:{now.timestamp()}")
    audit("campaign.batch", "campaign", campaign.id, body.reason, count=body.count)
    return {"count": len(packets), "codes": [p.claim_code for p in packets]}, 201


@endpoint(bp, "/campaigns/<int:campaign_id>/packets", auth="operator", roles=READERS, query=Page)
def campaign_packets(campaign_id: int, query: Page):
    """A campaign's packets (codes are not shown again)."""
    campaign = visible_campaign(campaign_id)
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
    packet = db.session.get(RedPacket, packet_id)
    if packet is None:
        raise NotFound(f"red packet {packet_id} not found")
    visible_campaign(packet.campaign_id)  # merchant staff: only their own campaigns' packets
    packet = revoke_packet(packet_id)
    audit("packet.revoke", "red_packet", packet.id, body.reason, owner_id=packet.owner_id)
    return {"id": packet.id, "status": packet.status, "reserved_fen": packet.reserved_fen}


class CampaignChanges(Model):
    """What may change on a running campaign. Rules change through PUT …/rules (a new version)."""

    name: Name | None = None
    ends_at: AwareDatetime | None = None
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
    reason: Reason


def _check_changes(campaign: Campaign, body: CampaignChanges) -> None:
    spent = campaign.budget_reserved_fen + campaign.budget_committed_fen
    if body.budget_limit_fen is not None and campaign.budget_limit_fen is None:
        raise ValidationFailed(
            "an unbudgeted campaign cannot become budgeted: its packets reserved no caps", code="budget_limit"
        )
    if body.budget_limit_fen is not None and body.budget_limit_fen < spent:
        raise StateConflict(
            f"the budget cannot go below what is reserved and committed ({spent} fen)", code="budget_below_spent"
        )
    if body.max_packets is not None and body.max_packets < campaign.packets_issued:
        raise StateConflict(f"{campaign.packets_issued} packets are already issued", code="max_packets_below_issued")
    if body.ends_at is not None and campaign.starts_at is not None and body.ends_at <= campaign.starts_at:
        raise ValidationFailed("ends_at must be after starts_at", code="window")
    hours = body.usage_windows.hours if body.usage_windows else None
    if hours and hours[0] >= hours[1]:
        raise ValidationFailed("usage_windows.hours must be [from, to) with from < to", code="window")


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
    """Change a campaign's budget, end, counts, audience or limits; every change is audited with its reason."""
    campaign = visible_campaign(campaign_id, lock=True)
    if campaign.status == CampaignStatus.ENDED:
        raise StateConflict("an ended campaign cannot change", code="campaign_ended")
    _check_platform_only_campaign(campaign)
    _check_changes(campaign, body)
    changes = body.model_dump(mode="json", exclude={"reason"}, exclude_unset=True)
    before = {name: getattr(campaign, name) for name in changes}
    for name, value in changes.items():
        setattr(campaign, name, body.ends_at if name == "ends_at" else value)
    raised = "budget_limit_fen" in changes and before["budget_limit_fen"] is not None
    if raised and campaign.budget_limit_fen > before["budget_limit_fen"] and campaign.status == CampaignStatus.ACTIVE:
        _check_deposit(campaign)  # as activation: the deposit must hold what the raised budget may commit
    audit(
        "campaign.change",
        "campaign",
        campaign.id,
        body.reason,
        changes={k: {"from": _jsonable(before[k]), "to": v} for k, v in changes.items()},
    )
    return campaign_json(campaign)


def _jsonable(value):
    return value.isoformat() if isinstance(value, datetime) else value
