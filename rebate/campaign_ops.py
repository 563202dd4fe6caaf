"""The campaign lifecycle as operators drive it: create, rules versions, activate / pause / end, changes,
batches of packets and revocation. Each operation checks, writes, audits with the operator's reason, and
flushes; the caller commits once (a refusal anywhere leaves nothing).

Merchant staff manage only their own merchant's campaigns, funded by their own deposit; anything else
is not found. Referral campaigns and campaigns fired by platform-wide events (registration, daily
sign-in, referral binding) are for platform admins only. A merchant-funded campaign is activated, and a
running one's budget raised, only while its funder's deposit holds what the budget may still commit.

The trigger and the claim limits are parsed here by their one definition (``Trigger.parse``,
``ClaimLimits.parse``: 422 ``invalid_trigger`` / ``invalid_claim_limits`` naming the field) and stored
with every default written out, whoever calls (the admin API, the console, a script).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Boolean, bindparam, select, text

from models import Campaign, CampaignRules, CampaignStatus, FunderType, IssuerType, Merchant, RedPacket, db, utcnow
from models.base import beijing, next_beijing_midnight
from models.limits import LimitCounter
from models.operators import Actor, audit
from models.sql import WRITES
from models.triggers import PLATFORM_WIDE, Trigger, TriggerKind
from money import format_yuan
from rebate.campaigns import rules_of
from rebate.deposits import deposit_funded, held_in_deposit, lock_deposits, reserved_against
from rebate.errors import Invalid, NotFound, RebateError, StateConflict
from rebate.fund_flow import (
    fund_from_sales,
    refuse_deposit_campaign_in_direct_mode,
    refuse_foreign_discount,
    refuse_pooling_forms,
)
from rebate.packets import generate_batch, refuse_user_stake, revoke_packet, top_face_fen
from rebate.rules import RuleSet, parse_rules, rules_json
from rebate.scope import visible_campaign, visible_merchant
from risk import ClaimLimits
from risk.limits import ALL_TIME, person_key_prefix

TRANSITIONS = {
    "activate": ({CampaignStatus.DRAFT, CampaignStatus.PAUSED}, CampaignStatus.ACTIVE),
    "pause": ({CampaignStatus.ACTIVE}, CampaignStatus.PAUSED),
    "end": ({CampaignStatus.DRAFT, CampaignStatus.ACTIVE, CampaignStatus.PAUSED}, CampaignStatus.ENDED),
}


class PlatformOnly(RebateError):
    code, kind = "platform_only", "forbidden"


def check_platform_only(actor: Actor, applies_to: str, trigger_kind: str | None) -> None:
    """Referral and platform-wide campaigns pay on every merchant's customers: platform admins only."""
    if actor.merchant_scope is None:
        return
    if applies_to == "referral":
        raise PlatformOnly("referral campaigns are created and changed by platform admins only")
    if trigger_kind in PLATFORM_WIDE:
        raise PlatformOnly(f"campaigns fired by {trigger_kind} are platform-wide: platform admins only")


def _check_platform_only_campaign(actor: Actor, campaign: Campaign) -> None:
    check_platform_only(actor, rules_of(campaign).applies_to, campaign.issue_trigger.kind)


def _check_window(starts_at: datetime | None, ends_at: datetime | None, what: str = "ends_at") -> None:
    if starts_at and ends_at and ends_at <= starts_at:
        raise Invalid(f"{what} must be after starts_at", code="window")


def _check_hours(usage_windows: Mapping | None) -> None:
    hours = (usage_windows or {}).get("hours")
    if hours and hours[0] >= hours[1]:
        raise Invalid("usage_windows.hours must be [from, to) with from < to", code="window")


def _check_parties(actor: Actor, fields: Mapping) -> None:
    issuer, funder = fields.get("issuer_merchant_id"), fields.get("funder_merchant_id")
    if (fields["issuer_type"] == IssuerType.MERCHANT) != (issuer is not None):
        raise Invalid("issuer_merchant_id goes with issuer_type merchant", code="issuer")
    if (fields["funder_type"] == FunderType.MERCHANT_DEPOSIT) != (funder is not None):
        raise Invalid("funder_merchant_id goes with funder_type merchant_deposit", code="funder")
    if fields["issuer_type"] == IssuerType.USER or fields["funder_type"] == FunderType.USER_STAKE:
        raise Invalid("user-issued campaigns are created by users, not operators", code="issuer")
    _check_window(fields.get("starts_at"), fields.get("ends_at"))
    valid_from, valid_until = fields.get("packet_valid_from"), fields.get("packet_valid_until")
    if valid_from and valid_until and valid_until <= valid_from:
        raise Invalid("packet_valid_until must be after packet_valid_from", code="window")
    _check_hours(fields.get("usage_windows"))
    tiers = fields.get("packet_tiers") or []
    if len({t["min_spend_fen"] for t in tiers}) != len(tiers):
        raise Invalid("two packet tiers start at the same spend", code="packet_tiers")
    for merchant_id in (issuer, funder, fields.get("packet_merchant_id")):
        if merchant_id is not None:
            visible_merchant(actor.operator, merchant_id)
    scope = actor.merchant_scope
    if scope is not None and (funder != scope or issuer != scope):
        raise Invalid("merchant staff run campaigns issued and funded by their own merchant", code="funder")


def typed_columns(fields: Mapping) -> dict:
    """``fields`` with the trigger and claim limits parsed (``TriggerError`` / ``ClaimLimitsError``) and
    written out in full; absent, they are a manual trigger and the default limits."""
    trigger = Trigger.parse(fields.get("trigger"))
    limits = ClaimLimits.parse(fields.get("claim_limits"))
    return {**fields, "trigger": trigger.to_json(), "claim_limits": limits.to_json()}


def _checked(actor: Actor, fields: Mapping, rules: dict) -> tuple[dict, RuleSet]:
    columns = typed_columns(fields)
    check_platform_only(actor, rules.get("applies_to", "packet"), columns["trigger"]["kind"])
    _check_parties(actor, columns)
    parsed = parse_rules(rules, budgeted=columns.get("budget_limit_fen") is not None)
    faces = [columns.get("packet_amount_fen") or 0, *(t["amount_fen"] for t in columns.get("packet_tiers") or [])]
    trigger = Trigger.parse(columns["trigger"])
    _check_bonus_has_packet(max(faces), trigger)
    _check_one_packet_fits(columns.get("budget_limit_fen"), max(faces), parsed, trigger)
    return columns, parsed


def _check_bonus_has_packet(face_fen: int, trigger: Trigger) -> None:
    """A bonus packet (a streak bonus, a sharer reward) is issued by a campaign that issues packets of its own: one
    with no face value and no tiers issues none at all (``rebate.packets``: "this campaign issues no packets"), so
    a sign-in campaign of streak bonuses alone had every bonus day refused, silently, and a share campaign every
    friend's claim. Refused here, naming the bonus (422 ``bonus_without_packet``); the face cannot change later."""
    bonuses = _bonus_faces(trigger)
    if bonuses and not face_fen:
        raise Invalid(
            f"{bonuses[0][0]}: a bonus packet needs the campaign's own packet, and it has none: set "
            "packet_amount_fen (or packet_tiers), the packet of the days or friends without a bonus",
            code="bonus_without_packet",
        )


def _bonus_faces(trigger: Trigger) -> list[tuple[str, int]]:
    """The packets a campaign's trigger issues at a face of its own, by the field that sets it: a sign-in
    campaign's streak bonuses, a share campaign's sharer reward (other kinds never issue them)."""
    if trigger.kind == TriggerKind.DAILY_SIGN_IN:
        return [(f"trigger.streak_bonus[{i}].amount_fen", b.amount_fen) for i, b in enumerate(trigger.streak_bonus)]
    if trigger.kind == TriggerKind.SHARE and trigger.sharer_reward_fen:
        return [("trigger.sharer_reward_fen", trigger.sharer_reward_fen)]
    return []


def _check_one_packet_fits(budget_limit_fen: int | None, face_fen: int, rules: RuleSet, trigger: Trigger) -> None:
    """A claim reserves the packet's face value and the largest rebate it can trigger (every role's cap): a budget
    that cannot hold one such reservation issues no packet at all (every claim 409 ``budget_exhausted`` while the
    budget is untouched), so it is refused here, naming the fields to change (422 ``budget_below_one_packet``).
    So is one that cannot hold a bonus packet of ``trigger`` (a streak bonus, a sharer reward): each would be
    refused as "budget exhausted", with an alert saying so, while the budget stood untouched."""
    if budget_limit_fen is None or not face_fen:
        return  # no budget, or no packets: rebates are committed per order as they fit
    cap = rules.max_award_fen() or 0
    reservation = face_fen + cap
    if reservation > budget_limit_fen:
        raise Invalid(
            f"budget_limit_fen: {format_yuan(budget_limit_fen)} yuan cannot hold one packet's reservation of "
            f"{format_yuan(reservation)} yuan (its face value {format_yuan(face_fen)} and the roles' cap_fen "
            f"{format_yuan(cap)}): no packet could ever be claimed; raise budget_limit_fen "
            "or lower the packet's face value or the rules' cap_fen",
            code="budget_below_one_packet",
        )
    for field, bonus_fen in _bonus_faces(trigger):
        if bonus_fen + cap > budget_limit_fen:
            raise Invalid(
                f"budget_limit_fen: {format_yuan(budget_limit_fen)} yuan cannot hold the reservation of the bonus "
                f"packet {field} sets, {format_yuan(bonus_fen + cap)} yuan (its face value {format_yuan(bonus_fen)} "
                f"and the roles' cap_fen {format_yuan(cap)}): it could never be issued; raise budget_limit_fen or "
                f"lower {field} or the rules' cap_fen",
                code="budget_below_one_packet",
            )


def check_campaign(actor: Actor, fields: Mapping, rules: dict) -> RuleSet:
    """Everything ``create_campaign`` refuses, refused the same way; writes nothing."""
    return _checked(actor, fields, rules)[1]


def create_campaign(actor: Actor, fields: Mapping, rules: dict, reason: str | None) -> Campaign:
    """A draft campaign with version 1 of its rules (``fields``: its columns, JSON ones as JSON)."""
    columns, rule_set = _checked(actor, fields, rules)
    stored = rules_json(rule_set)
    campaign = Campaign(**columns, status=CampaignStatus.DRAFT)
    db.session.add(campaign)
    db.session.flush()
    db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=stored, created_by=actor.operator.id))
    audit(actor, "campaign.create", "campaign", campaign.id, reason, rules=stored)
    db.session.flush()
    return campaign


def _changeable(actor: Actor, campaign_id: int) -> Campaign:
    campaign = visible_campaign(actor.operator, campaign_id, lock=True)
    refuse_user_stake(campaign)
    if campaign.status == CampaignStatus.ENDED:
        raise StateConflict("an ended campaign cannot change", code="campaign_ended")
    _check_platform_only_campaign(actor, campaign)
    return campaign


def replace_rules(actor: Actor, campaign_id: int, rules: dict, reason: str) -> Campaign:
    """A new rules version; packets and orders keep the version they were issued or evaluated under."""
    campaign = _changeable(actor, campaign_id)
    check_platform_only(actor, rules.get("applies_to", "packet"), None)
    parsed = parse_rules(rules, budgeted=campaign.budget_limit_fen is not None)
    _check_one_packet_fits(campaign.budget_limit_fen, top_face_fen(campaign), parsed, campaign.issue_trigger)
    if campaign.funded_from_sales:
        refuse_pooling_forms(campaign, parsed)
    stored = rules_json(parsed)
    campaign.rules_version += 1
    version = campaign.rules_version
    db.session.add(CampaignRules(campaign_id=campaign.id, version=version, rules=stored, created_by=actor.operator.id))
    audit(actor, "campaign.rules", "campaign", campaign.id, reason, version=version, rules=stored)
    db.session.flush()
    return campaign


def check_deposit(campaign: Campaign) -> None:
    """A merchant-funded campaign goes live only when its deposit holds what it may still commit (one funded
    from the merchant's sales in service-provider mode has no deposit).

    What the deposit holds is counted net of what it has promised already and not paid: the live packets'
    reservations of the merchant's other campaigns and every held rebate (this campaign's own too: committed
    to its budget, paid from the deposit on release), as each claim counts them (``cover_reservation``).
    Otherwise a campaign went "active" on a deposit the others' packets take whole, and its first claim was
    refused and paused it. The others' unspent budgets are not counted: campaigns share a deposit, and each
    claim is checked against it under its lock."""
    if not deposit_funded(campaign):
        return
    lock_deposits([campaign])  # after the campaign's own lock, as payments and claims take them
    held = held_in_deposit(campaign)
    promised = reserved_against(campaign.funder_merchant_id) - campaign.budget_reserved_fen
    free = held - promised
    still = None if campaign.budget_limit_fen is None else campaign.budget_limit_fen - campaign.budget_committed_fen
    if free <= 0 or (still is not None and free < still):
        needs = "money" if still is None else f"the {still} fen its budget may still commit"
        promised_words = f" ({promised} fen of it promised to live packets and held rebates)" if promised else ""
        raise StateConflict(
            f"merchant {campaign.funder_merchant_id}'s marketing deposit holds {held} fen{promised_words}, "
            f"not {needs}: top it up (or lower the budget) first",
            code="deposit_exhausted",
        )


def refuse_suspended_merchants(merchant_ids) -> None:
    """A banned merchant's campaigns stay paused and get no new packets while the ban is in force (409)."""
    named = [m for m in merchant_ids if m is not None]
    if not named:
        return
    suspended = (
        db.session.execute(
            select(Merchant.id).where(Merchant.id.in_(named), Merchant.status == "suspended").order_by(Merchant.id)
        )
        .scalars()
        .all()
    )
    if suspended:
        raise StateConflict(
            f"merchant {suspended[0]} is suspended by a ban: its campaigns stay paused until it is lifted",
            code="merchant_suspended",
        )


def _refuse_over(campaign: Campaign, now: datetime) -> None:
    """A campaign past its ``ends_at`` issues and pays nothing (``rebate.campaigns.is_running``): activated, it would
    answer 200 "active" and then refuse every claim, so it is refused (409 ``campaign_over``) until a later end is
    set."""
    if campaign.ends_at is not None and now >= campaign.ends_at:
        raise StateConflict(
            f"campaign {campaign.id} ended on {campaign.ends_at.isoformat()} (ends_at): it would issue and pay "
            "nothing; set a later ends_at first",
            code="campaign_over",
        )


def _merchants_of(campaign: Campaign) -> tuple:
    return campaign.issuer_merchant_id, campaign.funder_merchant_id, campaign.packet_merchant_id


def transition(actor: Actor, campaign_id: int, action: str, reason: str, *, service_provider: bool = False) -> Campaign:
    """Activate, pause (stops issuing and awarding at once) or end a campaign.

    ``service_provider``: a merchant-funded campaign is funded from its merchant's sales (no deposit; only
    forms that leave by profit sharing), and a packet campaign not funded by its merchant is not activated (it
    would pool money): ``rebate.fund_flow``. A campaign funded from sales does not run in direct mode."""
    campaign = visible_campaign(actor.operator, campaign_id, lock=True)
    refuse_user_stake(campaign)
    _check_platform_only_campaign(actor, campaign)
    sources, target = TRANSITIONS[action]
    # paused for its deposit, it still awards its packets out: an operator's pause stops that too; paused by its
    # merchant's staff, the merchant may resume it: a platform operator's pause makes it the platform's to undo
    platform_over_merchant = actor.merchant_scope is None and not campaign.paused_by_platform
    again = (
        action == "pause"
        and campaign.status == CampaignStatus.PAUSED
        and (campaign.paused_for_deposit or platform_over_merchant)
    )
    if campaign.status not in sources and not again:
        raise StateConflict(f"a {campaign.status} campaign cannot {action}", code="campaign_state")
    if target == CampaignStatus.ACTIVE and service_provider:
        fund_from_sales(campaign)
        refuse_foreign_discount(campaign, None)
    elif target == CampaignStatus.ACTIVE:
        refuse_deposit_campaign_in_direct_mode(campaign)
    if target == CampaignStatus.ACTIVE and campaign.paused_by_platform and actor.merchant_scope is not None:
        raise RebateError(
            f"campaign {campaign.id} was paused by the platform: a platform operator activates it again",
            code="paused_by_platform",
            kind="forbidden",
        )
    if target == CampaignStatus.ACTIVE:
        _refuse_over(campaign, utcnow())
        refuse_suspended_merchants(_merchants_of(campaign))
        check_deposit(campaign)
    campaign.status, campaign.paused_for_deposit = target, False
    campaign.paused_by_platform = target == CampaignStatus.PAUSED and actor.merchant_scope is None
    audit(actor, f"campaign.{action}", "campaign", campaign.id, reason)
    db.session.flush()
    return campaign


def _check_changes(campaign: Campaign, changes: Mapping) -> None:
    spent = campaign.budget_reserved_fen + campaign.budget_committed_fen
    limit = changes.get("budget_limit_fen")
    if limit is not None and campaign.budget_limit_fen is None:
        raise Invalid(
            "an unbudgeted campaign cannot become budgeted: its packets reserved no caps", code="budget_limit"
        )
    if limit is not None and limit < spent:
        raise StateConflict(
            f"the budget cannot go below what is reserved and committed ({spent} fen)", code="budget_below_spent"
        )
    max_packets = changes.get("max_packets")
    if max_packets is not None and max_packets < campaign.packets_issued:
        raise StateConflict(f"{campaign.packets_issued} packets are already issued", code="max_packets_below_issued")
    if changes.get("ends_at") is not None:
        _check_window(campaign.starts_at, changes["ends_at"])
    _check_hours(changes.get("usage_windows"))


# A person's limits of one campaign count only the claims made while the limit was on (a claim takes no slot of a
# limit that is off). Switched on, a limit first counts the campaign's packets each person already holds (the
# per-day one: those claimed since the Beijing day began), so that nobody who claimed while it was off gets
# another: the slots of ``risk.limits.campaign_slots``, by the field of ``ClaimLimits`` that sets them.
PERSON_LIMITS = {"per_person": "person_limit", "per_person_per_day": "person_daily_limit"}


_COUNT_HELD = (
    'INSERT INTO limit_counters (key, "window", "count", last_at) '
    "SELECT :prefix || CAST(owner_id AS VARCHAR(16)), :window, COUNT(*), :now FROM red_packets "
    "WHERE campaign_id = :campaign_id AND owner_id IS NOT NULL AND (claimed_at >= :since OR :all_time) "
    "GROUP BY owner_id "
    'ON CONFLICT (key) DO UPDATE SET "count" = CASE WHEN limit_counters."window" <> excluded."window" '
    'THEN excluded."count" WHEN limit_counters."count" > excluded."count" THEN limit_counters."count" '
    'ELSE excluded."count" END, "window" = excluded."window"'
)


@cache
def _count_held_statement():
    """Each owner's packets of a campaign (claimed at or after ``:since`` unless ``:all_time``) into the owner's
    counter ``:prefix || owner id`` for ``:window``: never lowered within the same window (a claim may have counted
    already), restarted in another."""
    when = LimitCounter.__table__.c.last_at.type
    return (
        text(_COUNT_HELD)
        .bindparams(
            bindparam("now", type_=when),
            bindparam("since", type_=RedPacket.__table__.c.claimed_at.type),
            bindparam("all_time", type_=Boolean),
        )
        .execution_options(**WRITES)
    )


def _count_what_was_claimed_while_off(campaign: Campaign, before: ClaimLimits, after: ClaimLimits) -> None:
    """For each person limit ``after`` switches on (off in ``before``), count the packets people already hold."""
    now = utcnow()
    for name, code in PERSON_LIMITS.items():
        if getattr(before, name) is not None or not getattr(after, name):
            continue
        daily = code == "person_daily_limit"
        params = {
            "campaign_id": campaign.id,
            "prefix": person_key_prefix(campaign.id, code),
            "window": beijing(now).date().isoformat() if daily else ALL_TIME,  # as campaign_slots' windows
            "now": now,
            "since": next_beijing_midnight(now) - timedelta(days=1),  # this Beijing day's start
            "all_time": not daily,
        }
        db.session.execute(_count_held_statement(), params)


def change_campaign(actor: Actor, campaign_id: int, changes: Mapping, reason: str) -> Campaign:
    """Change a campaign's budget, end, counts, audience or limits (``changes``: only what is sent)."""
    campaign = _changeable(actor, campaign_id)
    if changes.get("claim_limits") is not None:  # null: back to the defaults
        changes = {**changes, "claim_limits": ClaimLimits.parse(changes["claim_limits"]).to_json()}
    _check_changes(campaign, changes)
    if changes.get("budget_limit_fen") is not None:  # as at create: a budget every claim would find exhausted
        _check_one_packet_fits(
            changes["budget_limit_fen"], top_face_fen(campaign), rules_of(campaign), campaign.issue_trigger
        )
    if "claim_limits" in changes:
        limits_before, limits_after = (
            ClaimLimits.parse(campaign.claim_limits),
            ClaimLimits.parse(changes["claim_limits"]),
        )
        _count_what_was_claimed_while_off(campaign, limits_before, limits_after)
    before = {name: getattr(campaign, name) for name in changes}
    for name, value in changes.items():
        setattr(campaign, name, value)
    old_limit = before.get("budget_limit_fen")
    raised = old_limit is not None and campaign.budget_limit_fen > old_limit
    if raised and campaign.status == CampaignStatus.ACTIVE:
        check_deposit(campaign)  # as activation: the deposit must hold what the raised budget may commit
    moved = {k: {"from": _jsonable(before[k]), "to": _jsonable(v)} for k, v in changes.items()}
    audit(actor, "campaign.change", "campaign", campaign.id, reason, changes=moved)
    db.session.flush()
    return campaign


def _jsonable(value):
    return value.isoformat() if isinstance(value, datetime) else value


def issue_batch(actor: Actor, campaign_id: int, count: int, reason: str, now: datetime) -> list[RedPacket]:
    """N unclaimed packets with unique, unguessable claim codes (budget reserved at claim)."""
    campaign = visible_campaign(actor.operator, campaign_id)
    refuse_suspended_merchants(_merchants_of(campaign))
    packets = generate_batch(campaign, count, now, batch_ref=f"{actor.operator.id}:{now.timestamp()}")
    audit(actor, "campaign.batch", "campaign", campaign.id, reason, count=count)
    db.session.flush()
    return packets


def revoke(actor: Actor, packet_id: int, reason: str) -> RedPacket:
    """Revoke an unspent packet of a campaign the operator may see; its reservation returns to the budget."""
    packet = db.session.get(RedPacket, packet_id)
    if packet is None:
        raise NotFound(f"red packet {packet_id} not found")
    try:  # merchant staff: only their own campaigns' packets; another's is "not found" as it is, campaign unnamed
        visible_campaign(actor.operator, packet.campaign_id)
    except NotFound:
        raise NotFound(f"red packet {packet_id} not found") from None
    packet = revoke_packet(packet_id)
    audit(actor, "packet.revoke", "red_packet", packet.id, reason, owner_id=packet.owner_id)
    db.session.flush()
    return packet
