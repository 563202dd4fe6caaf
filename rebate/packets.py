"""Issuing, claiming, locking and expiring red packets.

Every issue or claim takes one from the campaign's count budget (if any) and
reserves its money budget: the packet's top face value plus the largest rebate
it can trigger, both in one conditional UPDATE. A merchant-funded packet is
issued only when its funder's deposit covers that reservation on top of every
live one against it. Audience rules (regions, channels, Beijing day/hour
windows) are checked on issue, claim and use.

A claim is few statements (the hot path of a flash sale): the packet (or the
campaign) read with its rules in one SELECT, every check that needs no counter
made in Python, then one conditional statement per counter — the packet's
owner, the campaign's budget, the claim limits — and the packet row. Rows are
locked in one order by every path that issues from a campaign: packet, campaign,
deposit, limit counters; but a self-serve campaign's claims (``_budget_last``:
the hot row of a flash sale) lock packet, limit counters, then the campaign row
last, held only until the commit. A refusal raises; the caller rolls the claim back.
"""

from __future__ import annotations

import copy
import functools
import json
import secrets
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import String, Text, and_, bindparam, cast, exists, func, literal, select, tuple_, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from models import (
    Campaign,
    CampaignRules,
    CampaignStatus,
    FunderType,
    Notice,
    PacketStatus,
    RedPacket,
    User,
    db,
    guarded_row,
)
from models.base import beijing, utcnow
from models.sql import past
from models.triggers import TriggerKind
from rebate import budgets
from rebate.campaigns import is_running, rules_of
from rebate.deposits import cover_reservation
from rebate.errors import BudgetExhausted, DepositExhausted, Invalid, NotFound, StateConflict
from rebate.rules import parse_rules
from risk import ClaimGate, take_or_refuse
from risk.bans import banned_column
from risk.limits import refused_of, slots_upsert

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 16  # 32^16 = 2^80 codes: unguessable


def new_claim_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def top_face_fen(campaign: Campaign) -> int:
    return max([campaign.packet_amount_fen or 0, *(t["amount_fen"] for t in campaign.packet_tiers or [])])


# The largest award of a rules JSON, by its content (the same text always parses the same): a claim reads
# the rules with the packet or campaign and needs no query of its own for them. Bounded: a few hundred
# campaigns run at once; an overflow just starts again.
_MAX_AWARD: dict[tuple[str, bool], int | None] = {}
_MAX_AWARD_ENTRIES = 1024


def _max_award(campaign: Campaign, rules: dict | None, version: int | None = None) -> int | None:
    budgeted = campaign.budget_limit_fen is not None
    if rules is None:
        return rules_of(campaign, version).max_award_fen()
    key = (json.dumps(rules, sort_keys=True, separators=(",", ":")), budgeted)
    try:
        return _MAX_AWARD[key]
    except KeyError:
        pass
    # Another thread (gthread workers) may clear the dict between a write and a read: return our own value.
    max_award = parse_rules(rules, budgeted=budgeted).max_award_fen()
    if len(_MAX_AWARD) >= _MAX_AWARD_ENTRIES:
        _MAX_AWARD.clear()
    _MAX_AWARD[key] = max_award
    return max_award


def reservation_for(
    campaign: Campaign, face_fen: int | None = None, rules: dict | None = None, version: int | None = None
) -> int:
    """Face value plus the largest rebate the packet can trigger (``rules``: the rules JSON the packet earns by, its
    campaign's current version or, for a minted code, the version it was minted under, when the caller read it;
    else ``version``'s, a packet's own, else the current version's)."""
    max_award = _max_award(campaign, rules, version)
    if campaign.budget_limit_fen is not None and max_award is None:
        raise StateConflict("a budgeted campaign's rules must all have caps", code="uncapped_rule")
    return (face_fen if face_fen is not None else top_face_fen(campaign)) + (max_award or 0)


def check_audience(campaign: Campaign, user: User, channel: str | None, now: datetime) -> None:
    """Regions, channels and the Beijing day-of-week / hour window; refusals say why."""
    if campaign.regions and user.region not in campaign.regions:
        unset = "" if user.region else "; your account has no region yet: set your region first"
        raise Invalid(f"this campaign is for {', '.join(campaign.regions)} only{unset}", code="outside_region")
    check_occasion(campaign, channel, now)


def check_occasion(campaign: Campaign, channel: str | None, now: datetime) -> None:
    """``check_audience`` but the person's region: the channel and the Beijing day-of-week / hour window."""
    if campaign.channels and channel is not None and channel not in campaign.channels:
        raise Invalid(f"this campaign runs on {', '.join(campaign.channels)} only", code="wrong_channel")
    windows = campaign.usage_windows or {}
    local = beijing(now)
    weekdays, hours = windows.get("weekdays"), windows.get("hours")
    if weekdays and local.isoweekday() not in weekdays:
        raise StateConflict("not on this day of the week (Beijing time)", code="outside_window")
    if hours and not hours[0] <= local.hour < hours[1]:
        raise StateConflict(f"only between {hours[0]}:00 and {hours[1]}:00 Beijing time", code="outside_window")


def _validity(campaign: Campaign, now: datetime) -> tuple[datetime, datetime]:
    """Fixed dates when the campaign has them, else N days from issue (from the start date if later)."""
    start = max(now, campaign.packet_valid_from or now)
    end = campaign.packet_valid_until or start + timedelta(days=campaign.packet_valid_days)
    if end <= now:
        raise StateConflict("this campaign's packets are no longer valid", code="packet_validity_over")
    return start, end


def _new_packet(campaign: Campaign, now: datetime, face_fen: int | None = None, **fields) -> RedPacket:
    valid_from, expires_at = _validity(campaign, now)
    fields.setdefault("issuer_user_id", campaign.issuer_user_id)
    return RedPacket(
        campaign_id=campaign.id,
        rules_version=campaign.rules_version,
        issuer_type=campaign.issuer_type,
        issuer_merchant_id=campaign.issuer_merchant_id,
        amount_fen=face_fen or top_face_fen(campaign),
        min_spend_fen=campaign.packet_min_spend_fen,
        categories=list(campaign.packet_categories or []),
        products=list(campaign.packet_products or []),
        tiers=[] if face_fen else [dict(t) for t in campaign.packet_tiers or []],  # (the campaign may be a shared copy)
        merchant_id=campaign.packet_merchant_id,
        valid_from=valid_from,
        expires_at=expires_at,
        created_at=now,
        **fields,
    )


CLAIM_SOURCE = "claim"  # a self-serve claim's packets
STAKE_SOURCE = "challenge"
"""The one source that issues from a campaign funded by a person's stake (``FunderType.USER_STAKE``): a
challenge's settlement. Every other path (claims, codes, batches, audiences, triggers, operators) is refused."""


def refuse_user_stake(campaign: Campaign, source: str | None = None) -> None:
    """A campaign funded by a person's challenge stake issues only its challenge's packets, and no operator
    reshapes it (its rules, budget, status or audience are the challenge's)."""
    if campaign.funder_type == FunderType.USER_STAKE and source != STAKE_SOURCE:
        raise StateConflict("this campaign belongs to a challenge among friends", code="challenge_campaign")


def _require_issuing(campaign: Campaign, now: datetime, source: str | None = None) -> None:
    refuse_user_stake(campaign, source)
    if not top_face_fen(campaign):
        raise StateConflict("this campaign issues no packets", code="campaign_issues_no_packets")
    if not is_running(campaign, now):
        raise StateConflict("the campaign is not running", code="campaign_not_running")


def _take_budget(campaign: Campaign, reserved: int, gate: ClaimGate | None, now: datetime) -> None:
    """Count the packet and reserve its money in one UPDATE; when a merchant's deposit funds the campaign, have it
    cover the reservation (``DepositExhausted``: the caller rolls back, then ``deposits.pause_refused``); then the
    claim limits of ``gate`` in one statement (``LimitHit``).

    The campaign's own limits refuse before its budget and deposit, as they always have: on those refusals
    (the rare path) the gate's campaign slots are tried first, and a refused one is what is raised."""
    if not budgets.take_packet(campaign.id, reserved, now):
        refusal = _budget_refusal(campaign.id, now)
        _campaign_limits_first(gate, now)
        raise refusal
    try:
        cover_reservation(campaign, reserved)
    except DepositExhausted:
        _campaign_limits_first(gate, now)
        raise
    if gate is not None:
        gate.take(now)


def _budget_last(campaign: Campaign) -> bool:
    """Does a packet of this campaign take its budget last (limits, packet, then the campaign row)?

    A self-serve campaign (trigger ``claim``) is the flash sale's hot row: every claim of it waits on
    its row lock, held from the budget UPDATE to the commit. So its claims take the limit counters
    first, and lock the campaign row with their last statement (with the packet's INSERT on PostgreSQL,
    just before it elsewhere). Deadlock-free because
    every path that takes a lock of such a campaign and limit counters is a claim of it, all in this
    order (packet, counters, campaign); the issue paths that take the campaign row before the counters
    issue from campaigns of other triggers. Not for a merchant-funded campaign: its deposit row is
    locked after the campaign row and, by the other issue paths, before the limit counters."""
    return campaign.funder_type != FunderType.MERCHANT_DEPOSIT and campaign.issue_trigger.kind == TriggerKind.CLAIM


def _take_limits(campaign: Campaign, reserved: int, gate: ClaimGate | None, now: datetime) -> None:
    """The claim limits of ``gate`` in one statement, before the budget (``_budget_last``); ``LimitHit``."""
    if gate is None:
        return
    refused = gate.try_take(now)
    if refused:
        _refuse(campaign, reserved, gate, refused, now)


def _refuse(campaign: Campaign, reserved: int, gate: ClaimGate, refused: list, now: datetime) -> NoReturn:
    """Raise the refusal of a claim whose limit ``refused`` slots were not taken. The refusals rank as in
    ``_take_budget``: the campaign's own limits, then the budget, then the platform-wide limits. So when only a
    platform-wide slot refused, the budget is tried (the rare path, rolled back with the claim) and its
    refusal wins."""
    first = refused[0]
    if first not in gate.campaign and not budgets.take_packet(campaign.id, reserved, now):
        raise _budget_refusal(campaign.id, now)
    raise first.hit(now)


def _claim_in_one_statement(
    packet: RedPacket, campaign: Campaign, reserved: int, gate: ClaimGate, now: datetime
) -> RedPacket:
    """PostgreSQL: the claim's limit slots, its budget and the packet's row in ONE statement
    (``budgets.claim_packet_inserting``), the campaign's row locked by it until the commit. A refusal is told
    apart after it: a slot not taken (``_refuse``), else the budget."""
    slots = gate.to_take(now)
    if not slots:
        gate.taken_by_caller()
        return _insert_taking_budget(packet, campaign, reserved, now)
    upsert, params, rows = slots_upsert(slots, now)
    packet_id, taken = budgets.claim_packet_inserting(
        campaign.id, reserved, _columns_of(packet), upsert, params, rows, now
    )
    if packet_id is None:
        refused = refused_of(slots, taken)
        if refused:
            _refuse(campaign, reserved, gate, refused, now)
        raise _budget_refusal(campaign.id, now)
    gate.taken_by_caller()
    return _loaded(packet, packet_id)


def _take_budget_last(campaign: Campaign, reserved: int, now: datetime) -> None:
    """The budget after the limits and the packet's row (``_budget_last``): one UPDATE, then the commit."""
    if not budgets.take_packet(campaign.id, reserved, now):
        raise _budget_refusal(campaign.id, now)


def _insert_taking_budget(packet: RedPacket, campaign: Campaign, reserved: int, now: datetime) -> RedPacket:
    """Write the new packet, then take its budget (``_budget_last``): on PostgreSQL both in one statement, the
    packet then added to the session as a loaded row; elsewhere its INSERT, then the budget's UPDATE."""
    if db.session.get_bind().dialect.name != "postgresql":
        db.session.add(packet)
        db.session.flush()
        _take_budget_last(campaign, reserved, now)
        return packet
    packet_id = budgets.take_packet_inserting(campaign.id, reserved, _columns_of(packet), now)
    if packet_id is None:
        raise _budget_refusal(campaign.id, now)
    return _loaded(packet, packet_id)


def _columns_of(packet: RedPacket) -> dict:
    """Every column but ``id``, as the INSERT writes it (unset ones NULL, set on the object too)."""
    columns = [c.key for c in RedPacket.__table__.columns if c.key != "id"]
    for name in columns:
        if name not in packet.__dict__:
            setattr(packet, name, None)
    return {name: packet.__dict__[name] for name in columns}


def _loaded(packet: RedPacket, packet_id: int) -> RedPacket:
    """The packet a statement of ours inserted, added to the session as a loaded row."""
    packet.id = packet_id
    make_transient_to_detached(packet)
    db.session.add(packet)
    return packet


def _budget_refusal(campaign_id: int, now: datetime) -> BudgetExhausted | StateConflict:
    """Why the campaign's row refused the packet (``budgets.take_packet``) at ``now``: it stopped (paused, ended,
    banned, its end date moved before ``now``) while the claim waited for it, else which of the two budgets: the
    count is checked first."""
    status, ends_at, max_packets, issued = db.session.execute(
        select(Campaign.status, Campaign.ends_at, Campaign.max_packets, Campaign.packets_issued).where(
            Campaign.id == campaign_id
        )
    ).one()
    if status != CampaignStatus.ACTIVE or (ends_at is not None and now >= ends_at):
        return StateConflict("the campaign is not running", code="campaign_not_running")
    return budget_refusal(max_packets is not None and issued >= max_packets)


def budget_refusal(count_spent: bool) -> BudgetExhausted:
    """The refusal of a packet the campaign's budgets cannot take: its count (``count_spent``), else its money."""
    if count_spent:
        return BudgetExhausted("the campaign has issued all its packets", code="packets_exhausted")
    return BudgetExhausted("the campaign's budget is exhausted")


def _campaign_limits_first(gate: ClaimGate | None, now: datetime) -> None:
    """Raise the first refused slot of the campaign's own limits, if any (their writes go with the rollback)."""
    if gate is not None and gate.campaign and not gate.taken:
        take_or_refuse(gate.campaign, now)


def issue_packet(
    campaign: Campaign,
    owner: User,
    *,
    source: str,
    source_ref: str,
    now: datetime,
    face_fen: int | None = None,
    issuer_user_id: int | None = None,
    channel: str | None = None,
    gate: ClaimGate | None = None,
    fresh: bool = False,
    rules: dict | None = None,
) -> RedPacket:
    """Issue a packet to ``owner``, reserving its budget. Idempotent per (campaign, source, source_ref).

    Other modules (challenges, triggers) call this to issue from a given issuer
    (``issuer_user_id``) or with a given face value (streak bonuses). ``gate``
    takes the claim limits when a new packet is really issued (``LimitHit``
    otherwise; the caller rolls back). ``fresh``: ``source_ref`` was just drawn
    at random, so no packet can have it yet and the idempotency lookup is
    skipped (a self-serve claim). ``rules``: the campaign's current rules JSON,
    when the caller read it with the campaign.
    """
    _require_issuing(campaign, now, source)
    issue = {"face_fen": face_fen, "issuer_user_id": issuer_user_id, "channel": channel, "gate": gate, "rules": rules}
    if fresh:
        return _issue_new(campaign, owner, source, source_ref, now, **issue)
    same = select(RedPacket).filter_by(campaign_id=campaign.id, source=source, source_ref=source_ref)
    existing = db.session.execute(same).scalar_one_or_none()
    if existing is not None:
        return existing
    taken = gate.taken if gate is not None else None
    try:  # a twin request (a double tap) issuing the same packet at once: the unique source decides, the later reads
        with db.session.begin_nested():
            return _issue_new(campaign, owner, source, source_ref, now, **issue)
    except IntegrityError:
        twin = db.session.execute(same.execution_options(populate_existing=True)).scalar_one_or_none()
        if twin is None:
            raise
        if gate is not None:
            gate.taken = taken  # its limit slots went with the savepoint
        return twin


def _issue_new(
    campaign: Campaign,
    owner: User,
    source: str,
    source_ref: str,
    now: datetime,
    *,
    face_fen: int | None,
    issuer_user_id: int | None,
    channel: str | None,
    gate: ClaimGate | None,
    rules: dict | None,
) -> RedPacket:
    check_audience(campaign, owner, channel, now)
    reserved = reservation_for(campaign, face_fen, rules)
    extra = {"issuer_user_id": issuer_user_id} if issuer_user_id else {}
    packet = _new_packet(  # refused for validity here, before a budget or limit slot is taken
        campaign,
        now,
        face_fen,
        owner_id=owner.id,
        status=PacketStatus.ISSUED,
        reserved_fen=reserved,
        source=source,
        source_ref=source_ref,
        claimed_at=now,
        **extra,
    )
    if _budget_last(campaign):
        if gate is not None and db.session.get_bind().dialect.name == "postgresql":
            return _claim_in_one_statement(packet, campaign, reserved, gate, now)
        _take_limits(campaign, reserved, gate, now)
        return _insert_taking_budget(packet, campaign, reserved, now)
    _take_budget(campaign, reserved, gate, now)
    db.session.add(packet)
    db.session.flush()
    return packet


def campaign_with_rules(campaign_id: int) -> tuple[Campaign | None, dict | None]:
    """A campaign and its current rules JSON, in one SELECT."""
    row = db.session.execute(_campaign_with_rules(), {"campaign_id": campaign_id}).first()
    return (row[0], row[1]) if row else (None, None)


def campaign_for_claim(campaign_id: int, bans: dict) -> tuple[Campaign | None, dict | None, bool]:
    """``campaign_with_rules`` and whether the claimant's device or address is banned (``bans``:
    ``risk.bans.ban_params``), still in one SELECT: the claim's hot path has no statement for its bans."""
    row = db.session.execute(_campaign_for_claim(), {"campaign_id": campaign_id, **bans}).first()
    return (row[0], row[1], bool(row[2])) if row else (None, None, False)


def user_and_campaign_for_claim(
    user_id: int, campaign_id: int, bans: dict
) -> tuple[User | None, Campaign | None, dict | None, bool]:
    """The claimant's row with ``campaign_for_claim``, still in one SELECT: a signed-in claim whose user row is not
    read first (its ban is checked on this one). No such user: all None.

    On PostgreSQL a self-serve campaign this process has read before comes from its snapshot (below) when the
    row's digest says it is unchanged: the SELECT then reads the user, the digest and the bans only."""
    params = {"uid": user_id, "campaign_id": campaign_id, **bans}
    bind = db.session.get_bind()
    snapshots = _SNAPSHOTS.get(bind) if bind.dialect.name == "postgresql" else None
    kept = snapshots.get(campaign_id) if snapshots else None
    if kept is not None:
        row = db.session.execute(_user_and_digest(), params).first()
        if row is None:
            return None, None, None, False
        user, digest, banned = row
        if digest == kept.digest:
            return user, kept.campaign, kept.rules, bool(banned)
        campaign, rules, digest = _campaign_and_digest(campaign_id)  # edited (or gone) since: read it again
        _keep(snapshots, campaign_id, campaign, rules, digest)
        return user, campaign, rules, bool(banned)
    postgres = bind.dialect.name == "postgresql"
    row = db.session.execute(_user_and_campaign_for_claim(postgres), params).first()
    if row is None:
        return None, None, None, False
    user, campaign, rules, banned, digest = row
    if postgres:
        _keep(_SNAPSHOTS.setdefault(bind, {}), campaign_id, campaign, rules, digest)
    return user, campaign, rules, bool(banned)


# -- Self-serve campaigns as snapshots (PostgreSQL) ---------------------------------------------------------
# A flash sale's claims all read the same campaign: some 45 columns and its rules, loaded as ORM objects, a
# third of a claim's own work (issue 11). A self-serve campaign's claim only reads that row (its budget and
# count move in the claim's conditional UPDATE, never through the object; ``_budget_last``), so each process
# keeps a read-only copy of it, and the claim's SELECT returns, in place of the row, the md5 of every column
# but those counters: the copy is used only when that digest is the copy's, i.e. when the row this very
# statement sees holds what the copy holds. Any edit (status, dates, amounts, audience, limits, a new rules
# version) changes the digest, and the claim reads the row again (one statement
# more) and keeps the new copy. Columns added later are in the digest by themselves. The rules are not in it:
# a rules version is never changed once written (a change is a new version, whose number is in the digest).
# Only an active campaign is kept. SQLite: no md5, and its claims read the row as before.

SNAPSHOT_COUNTERS = frozenset({"budget_reserved_fen", "budget_committed_fen", "packets_issued"})
_SNAPSHOTS_MAX = 1024  # campaigns kept per process; an overflow starts again


@dataclass(frozen=True)
class _Snapshot:
    digest: str
    campaign: Campaign  # transient: in no session, never written, shared by threads (read only)
    rules: dict | None


_SNAPSHOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine → {campaign id: _Snapshot}


def _snapshots() -> dict[int, _Snapshot]:
    """This database's snapshots (an engine's: tests make one per app)."""
    return _SNAPSHOTS.get(db.session.get_bind(), {})


def _keep(
    kept: dict[int, _Snapshot], campaign_id: int, campaign: Campaign | None, rules: dict | None, digest: str | None
) -> None:
    """Keep in ``kept`` (an engine's) a read-only copy of an active self-serve campaign as read with ``digest``;
    forget any other."""
    if campaign is None or digest is None or campaign.status != CampaignStatus.ACTIVE or not _budget_last(campaign):
        kept.pop(campaign_id, None)
        return
    if len(kept) >= _SNAPSHOTS_MAX:
        kept.clear()
    # The counters are left out (None): nothing may read them from the copy, and a use would fail loudly.
    values = {key: copy.deepcopy(getattr(campaign, key)) for key in _column_keys() if key not in SNAPSHOT_COUNTERS}
    kept[campaign_id] = _Snapshot(digest, Campaign(**values), copy.deepcopy(rules))


@functools.cache
def _column_keys() -> tuple[str, ...]:
    return tuple(attr.key for attr in sa_inspect(Campaign).column_attrs)


def _digest():
    """md5 of every column of the campaign but its counters, as the row this statement sees holds them."""
    columns = [c for c in Campaign.__table__.c if c.key not in SNAPSHOT_COUNTERS]
    return func.md5(cast(tuple_(*columns), Text))


@functools.cache
def _user_and_digest():
    digest = select(_digest()).where(Campaign.id == bindparam("campaign_id")).scalar_subquery()
    return select(User, digest, banned_column()).where(User.id == bindparam("uid"))


def _campaign_and_digest(campaign_id: int) -> tuple[Campaign | None, dict | None, str | None]:
    row = db.session.execute(_campaign_with_rules_and_digest(), {"campaign_id": campaign_id}).first()
    return (row[0], row[1], row[2]) if row else (None, None, None)


@functools.cache
def _campaign_with_rules_and_digest():
    # populate_existing: the copy kept is the row the digest is of, even with the campaign in the session already
    return _campaign_with_rules().add_columns(_digest()).execution_options(populate_existing=True)


@functools.cache
def _campaign_for_claim():
    return _campaign_with_rules().add_columns(banned_column())


@functools.cache
def _user_and_campaign_for_claim(with_digest: bool):
    """The claim's first SELECT; ``with_digest``: and the campaign's digest (PostgreSQL, for its snapshot)."""
    digest = _digest() if with_digest else literal(None)
    stmt = (
        select(User, Campaign, CampaignRules.rules, banned_column(), digest)
        .select_from(User)
        .outerjoin(Campaign, Campaign.id == bindparam("campaign_id"))
        .outerjoin(CampaignRules, _current_rules())
        .where(User.id == bindparam("uid"))
    )
    # populate_existing: the copy kept is the row the digest is of, even with the campaign in the session already
    return stmt.execution_options(populate_existing=True) if with_digest else stmt


@functools.cache
def _campaign_with_rules():
    """``campaign_with_rules``' SELECT, built once per process (bound by ``campaign_id``)."""
    return (
        select(Campaign, CampaignRules.rules)
        .outerjoin(CampaignRules, _current_rules())
        .where(Campaign.id == bindparam("campaign_id"))
    )


def _current_rules():
    """The join of a campaign to its current rules version."""
    return and_(CampaignRules.campaign_id == Campaign.id, CampaignRules.version == Campaign.rules_version)


def _packets_rules():
    """The join of a packet to the rules version it was minted under, which its payment applies (a code minted
    before a new version keeps its rules): what its claim reserves for."""
    return and_(CampaignRules.campaign_id == RedPacket.campaign_id, CampaignRules.version == RedPacket.rules_version)


def generate_batch(campaign: Campaign, count: int, now: datetime, batch_ref: str) -> list[RedPacket]:
    """N unclaimed packets with unique codes; budget is reserved when each is claimed."""
    _require_issuing(campaign, now)
    packets = [
        _new_packet(
            campaign,
            now,
            status=PacketStatus.UNCLAIMED,
            claim_code=new_claim_code(),
            source="batch",
            source_ref=f"{batch_ref}:{i}",
        )
        for i in range(count)
    ]
    db.session.add_all(packets)
    db.session.flush()
    return packets


_STATE_WORDS = {
    PacketStatus.UNCLAIMED: "this red packet has not been claimed yet",
    PacketStatus.ISSUED: "this red packet has been claimed already",
    PacketStatus.LOCKED: "this red packet is held by an unpaid order: pay that order, or it comes back when the order "
    "closes unpaid",
    PacketStatus.USED: "this red packet has been spent on an order already",
    PacketStatus.EXPIRED: "this red packet has expired",
    PacketStatus.REVOKED: "this red packet was withdrawn by the platform",
}


def state_refusal(status: PacketStatus | str) -> StateConflict:
    """The refusal of a packet that is not in a state for what was asked, in words a person can act on (the code
    names the state: ``packet_<status>``)."""
    words = _STATE_WORDS.get(status, f"this red packet is {status}")
    return StateConflict(words, code=f"packet_{status}")


def claimable(code: str, user: User) -> tuple[RedPacket, Campaign, dict | None]:
    """The packet behind a code, with its campaign and the rules it was minted under, in one SELECT (no lock:
    the claim's conditional UPDATE decides). Unknown codes and others' claimed packets are 404."""
    packet, campaign, rules, _ = claimable_for_claim(code, user)
    return packet, campaign, rules


def claimable_for_claim(
    code: str, user: User, bans: dict | None = None
) -> tuple[RedPacket, Campaign, dict | None, bool]:
    """``claimable``, and with ``bans`` (``risk.bans.ban_params``) whether the claimant's device or address is
    banned, in the same SELECT."""
    columns = (RedPacket, Campaign, CampaignRules.rules) + ((banned_column(),) if bans else ())
    row = db.session.execute(
        select(*columns)
        .join(Campaign, Campaign.id == RedPacket.campaign_id)
        .outerjoin(CampaignRules, _packets_rules())
        .where(RedPacket.claim_code == code.strip().upper())
        .execution_options(populate_existing=True),
        bans or {},
    ).first()
    if row is None or (row[0].owner_id is not None and row[0].owner_id != user.id):
        raise NotFound("no such red packet code")
    return row[0], row[1], row[2], bool(bans and row[3])


def claim_found(
    packet: RedPacket,
    campaign: Campaign,
    rules: dict | None,
    user: User,
    now: datetime,
    channel: str | None = None,
    gate: ClaimGate | None = None,
) -> RedPacket:
    """Claim the packet ``claimable`` found: its owner in one conditional UPDATE, then the budget and the limits.

    Of concurrent claimers of one code exactly one changes the row; the others are told what it became
    (one more read, the rare path). ``gate`` takes the claim limits (``LimitHit``; the caller rolls back)."""
    if packet.owner_id == user.id:
        return packet
    if packet.status != PacketStatus.UNCLAIMED:
        raise state_refusal(packet.status)
    if now >= packet.expires_at:
        raise StateConflict("this packet has expired", code="packet_expired")
    _require_issuing(campaign, now)
    check_audience(campaign, user, channel, now)
    reserved = reservation_for(campaign, rules=rules)
    mine = {"owner_id": user.id, "status": PacketStatus.ISSUED, "reserved_fen": reserved, "claimed_at": now}
    taken = db.session.execute(
        update(RedPacket)
        .where(RedPacket.id == packet.id, RedPacket.status == PacketStatus.UNCLAIMED, RedPacket.owner_id.is_(None))
        .values(**mine)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:  # another claimer got there first: say what the packet is now
        again, _, _ = claimable(packet.claim_code, user)
        if again.owner_id == user.id:
            return again
        raise state_refusal(again.status)
    if _budget_last(campaign):
        _take_limits(campaign, reserved, gate, now)
        _take_budget_last(campaign, reserved, now)
    else:
        _take_budget(campaign, reserved, gate, now)
    for name, value in mine.items():
        set_committed_value(packet, name, value)
    return packet


def claim_packet(
    code: str, user: User, now: datetime, channel: str | None = None, gate: ClaimGate | None = None
) -> RedPacket:
    """Claim an unclaimed packet by its code. Claiming your own packet again answers the same packet.

    The packet row is claimed (its owner set) before the budget and the limits are taken, so a refusal
    (``BudgetExhausted``, ``DepositExhausted``, ``LimitHit``, any error) leaves a claimed packet behind: the
    caller must roll back on every refusal (``claim_by_code`` does, inside ``refusal_kept``). ``gate`` takes
    the claim limits."""
    packet, campaign, rules = claimable(code, user)
    return claim_found(packet, campaign, rules, user, now, channel, gate)


def release_packet(packet: RedPacket, status: PacketStatus) -> None:
    """Expire or revoke an unused packet and give its reservation back."""
    if packet.status not in (PacketStatus.ISSUED, PacketStatus.UNCLAIMED, PacketStatus.LOCKED):
        raise StateConflict(f"a {packet.status} packet cannot become {status}", code="packet_state")
    budgets.release_reserved(packet.campaign_id, packet.reserved_fen)
    if packet.status != PacketStatus.UNCLAIMED:  # a claimed packet took a count slot: give it back
        budgets.uncount_packet(packet.campaign_id)
    packet.reserved_fen = 0
    packet.status = status
    packet.order_id = None
    if status == PacketStatus.REVOKED:
        packet.revoked_at = utcnow()
    db.session.flush()


def expire_due_packets(now: datetime, limit: int = 500) -> int:
    """Expire packets past their validity that no order holds; returns how many (``expire_packets_after``)."""
    return expire_packets_after(now, 0, limit)[1]


def expire_packets_after(now: datetime, after: int, limit: int = 500) -> tuple[list[int], int]:
    """Expire up to ``limit`` packets past their validity that no order holds, of ids above ``after`` (a job's
    keyset: each row once a run); (the ids read, how many expired). Each in a savepoint: one whose release fails (a
    bad row, a bug) is rolled back alone, logged and alerted once (``packet_expiry_failed``), and the others expire
    (it had failed the whole batch, every run: the head of every batch)."""
    due = (
        db.session.execute(
            select(RedPacket)
            .where(
                RedPacket.status.in_([PacketStatus.ISSUED, PacketStatus.UNCLAIMED]),
                RedPacket.expires_at <= now,
                RedPacket.id > after,
            )
            .order_by(RedPacket.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    done = sum(
        guarded_row("packet_expiry_failed", "packet", p.id, release_packet, p, PacketStatus.EXPIRED) for p in due
    )
    return [p.id for p in due], done


def revoke_packet(packet_id: int) -> RedPacket:
    """An operator takes back a packet that was not spent (fraud, mistake): its budget returns."""
    packet = db.session.execute(
        select(RedPacket).where(RedPacket.id == packet_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if packet is None:
        raise NotFound("no such red packet")
    if packet.status == PacketStatus.LOCKED:
        raise StateConflict("the packet is in an unpaid order; close the order first", code="packet_locked")
    release_packet(packet, PacketStatus.REVOKED)
    return packet


EXPIRING_WITHIN = timedelta(hours=24)  # an unused packet is told of once when it has less than this left
EXPIRING_MIN_LEFT = timedelta(minutes=15)  # …but not when it would be gone before the person reads it
EXPIRING_MIN_HELD = timedelta(hours=6)  # …nor in its first hours with the person: they just got it, deadline shown


def expiring_packets(now: datetime, after: tuple[datetime, int] | None, limit: int) -> list:
    """Claimed, unused packets expiring within ``EXPIRING_WITHIN`` whose owner was not told yet: rows of (id,
    owner_id, amount_fen, expires_at), in (expires_at, id) order after ``after`` (keyset batches).

    Read through the partial index ``ix_red_packets_issued_expiry`` (issued packets only, by expiry) and the
    notices' unique key (``packet:<id>:expiring``, one probe per packet); nothing is locked: the notice's key
    makes a second run (another node) write nothing. Not told: a packet held less than ``EXPIRING_MIN_HELD``
    (one that expires within hours of issue: its deadline was in the answer or the "received" notice) or
    with less than ``EXPIRING_MIN_LEFT`` left."""
    key = literal("packet:") + cast(RedPacket.id, String) + literal(":expiring")
    stmt = (
        select(RedPacket.id, RedPacket.owner_id, RedPacket.amount_fen, RedPacket.expires_at)
        .where(
            RedPacket.status == PacketStatus.ISSUED,
            RedPacket.expires_at > now + EXPIRING_MIN_LEFT,
            RedPacket.expires_at <= now + EXPIRING_WITHIN,
            RedPacket.claimed_at <= now - EXPIRING_MIN_HELD,
            ~exists().where(Notice.key == key),
        )
        .order_by(RedPacket.expires_at, RedPacket.id)
        .limit(limit)
    )
    stmt = stmt.where(*past((RedPacket.expires_at, RedPacket.id), after))
    return list(db.session.execute(stmt).all())
