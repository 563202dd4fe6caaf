"""A self-serve claim in ONE statement, committed by itself (PostgreSQL; issue 11).

A flash sale's claim of a campaign this process keeps a copy of (``rebate.packets``' snapshots) needs, before any
statement, nothing but the claimant's own row: every check of the campaign (running, dates, channel, Beijing
window, validity), the packet's columns, its reservation and the limit slots to take come from the copy and the
request. So the claim is sent as one statement on a connection in autocommit, with no ``BEGIN`` and no
``COMMIT`` of its own (each a round trip):

    WITH context AS (whether the copy is still the row (its digest) and its count and budget fit, as the row
                     stands; whether a ban applies to the claimant's device or address; when the budget is
                     spent, whether one of the campaign's own limits would refuse, read only),
         claimant AS (the claimant's row: ``admitted`` (active, in the campaign's regions, not banned, the copy
                      still the row), whether the budget fits),
         slots AS (the limits' conditional upsert, written only when admitted and the budget fits),
         budget AS (the campaign's conditional UPDATE when so and every slot was taken, the digest checked again
                    on the row it locks),
         ins AS (the packet's INSERT, one row per row of budget)
    SELECT the packet's id, 1 / (packets made, or 1 when no slot was taken), the checks FROM claimant

The statement either makes the packet, or writes nothing: when a slot was taken but no packet made (a limit
refused after another slot was taken, a concurrent claim took the last of the budget, an edit of the campaign
committed while the statement waited for its row), the last column divides
by zero, PostgreSQL fails the statement, and autocommit rolls all of it back. The row lock on the campaign is
held for the statement only.

Whatever this path does not answer itself is answered by the claim's transaction (``rebate.claims``), exactly as
before, by running it: a campaign not kept or edited since (the digest), a missing, banned or out-of-region
claimant, a device or address banned, a limit refused, a refusal the copy already tells (a paused campaign, the
window), a session that has begun a transaction (an ``Idempotency-Key``'s: the key goes with the claim). The one
refusal it answers is the flash sale's common one after the sell-out: the campaign's count or budget is spent
(``BudgetExhausted``, nothing written) and none of its own limits would refuse (those rank first, and are kept
for the trace: the transaction answers them).
"""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Integer,
    String,
    TextClause,
    and_,
    bindparam,
    case,
    column,
    false,
    func,
    literal,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from models import Campaign, PacketStatus, RedPacket, User, UserStatus, db
from models.sql import Precompiled
from models.triggers import TriggerKind
from rebate import budgets
from rebate.errors import BudgetExhausted, RebateError
from rebate.packets import (
    _SNAPSHOTS,
    CLAIM_SOURCE,
    _columns_of,
    _digest,
    _loaded,
    _new_packet,
    _require_issuing,
    _Snapshot,
    budget_refusal,
    check_occasion,
    reservation_for,
)
from risk import Slot
from risk.bans import banned_column
from risk.limits import slots_refusing, slots_upsert

DIVISION_BY_ZERO = "22012"  # PostgreSQL's SQLSTATE: the statement failed as a whole (its last column)
GUARD = "(SELECT admitted AND free FROM claimant)"  # the slots' upsert writes only when every check held
C = Campaign.__table__.c
U = User.__table__.c


@functools.lru_cache(maxsize=256)
def _precompiled(upsert: TextClause | None, own: TextClause | None, regions: bool, dialect) -> Precompiled:
    """``_statement`` compiled once for ``dialect`` (an engine's: tests make many)."""
    return Precompiled(_statement(upsert, own, regions), dialect)


@functools.cache
def _statement(upsert: TextClause | None, own: TextClause | None, regions: bool):
    """The claim's one statement, for the shape of its limit slots (``upsert``: None, no slots), of the campaign's
    own ones (``own``: whether one would refuse; None, it has none) and whether the campaign keeps to ``regions``."""
    fits = budgets.packet_fits()
    full = C.max_packets.is_not(None) & (C.packets_issued >= C.max_packets)
    fresh = _digest() == bindparam("digest", type_=String)
    # Would one of the campaign's own limits refuse? (A read, when sold out: that refusal ranks after them.)
    refusing = own.columns(column("refusing", Boolean)).scalar_subquery() if own is not None else false()
    context = (  # the campaign as the row stands, the bans on the claimant's device and address
        select(
            fresh.label("fresh"),
            fits.label("free"),
            full.label("full"),
            banned_column(),
            case((fits, false()), else_=refusing).label("own_refusing"),
        )
        .where(C.id == bindparam("campaign_id"))
        .cte("context")
    )
    in_regions = U.region == func.any(bindparam("in_regions", type_=ARRAY(String))) if regions else true()
    # the token's generation is the person's (not signed out everywhere since it was issued: ``web.auth``)
    current_token = U.token_generation == bindparam("generation", type_=Integer)
    admitted = and_(U.status == UserStatus.ACTIVE, current_token, in_regions, ~context.c.banned, context.c.fresh)
    claimant = (
        select(
            admitted.label("admitted"),
            context.c.free,
            context.c.full,
            context.c.own_refusing,
        )
        .select_from(User.__table__)
        .join(context, true())
        .where(U.id == bindparam("uid"))
        .cte("claimant")
    )
    ok = select(claimant.c.admitted & claimant.c.free).scalar_subquery()
    # The digest again in the UPDATE's own WHERE: a claim that waited for the row's lock is checked against the row
    # as the edit that held it committed it (a pause, say), not as the statement began.
    slots, taken, budget, ins = budgets.claim_ctes(upsert, ok, fresh)
    made = select(func.count()).select_from(ins).scalar_subquery()
    # A slot taken and no packet made: 1 / 0, and the whole statement is undone (autocommit).
    all_or_nothing = literal(1, Integer) // (made + case((taken == 0, 1), else_=0))
    ctes = [context, claimant] + ([slots] if slots is not None else []) + [budget, ins]
    return (
        select(
            select(ins.c.id).scalar_subquery().label("packet_id"),
            all_or_nothing.label("whole"),
            claimant.c.admitted,
            claimant.c.free,
            claimant.c.full,
            claimant.c.own_refusing,
        )
        .select_from(claimant)
        .add_cte(*ctes)
    )


def _user_of(uid: int, generation: int) -> User:
    """The claimant's row as the session's loaded ``User``, active and of the token's generation as the statement
    found it; its other columns are read when first used (the one the session holds already, if any)."""
    held = db.session.identity_map.get(identity_key(User, uid))
    if held is not None:  # (an app context pushed across requests: tests, scripts)
        set_committed_value(held, "id", uid)
        set_committed_value(held, "status", UserStatus.ACTIVE)
        set_committed_value(held, "token_generation", generation)
        return held
    user = User(id=uid, status=UserStatus.ACTIVE, token_generation=generation)
    make_transient_to_detached(user)  # the columns not set are expired: loaded when first read
    db.session.add(user)
    return user


def kept(campaign_id: int) -> _Snapshot | None:
    """This process's copy of the campaign, if it keeps one (PostgreSQL; ``rebate.packets``' snapshots), for a claim
    in one statement: None too when the session has begun a transaction (its work must go with the claim's)."""
    session = db.session()
    if session.in_transaction():
        return None
    snapshots = _SNAPSHOTS.get(session.get_bind())
    return snapshots.get(campaign_id) if snapshots else None


def claim(
    copy: _Snapshot,
    uid: int,
    slots: list[Slot],
    bans: dict,
    *,
    own: list[Slot],
    channel: str | None,
    source_ref: str,
    now: datetime,
    generation: int = 0,
) -> tuple[User, RedPacket | BudgetExhausted] | None:
    """Claim a packet of the campaign ``copy`` keeps for user ``uid``, taking the limit ``slots`` (the campaign's
    own limits among them: ``own``), in one statement committed by itself.

    The claimant's row (added to the session as a loaded row) with the new packet (likewise), or with the
    ``BudgetExhausted`` to raise when the campaign's count or budget is spent and nothing else refused (nothing
    written). None when the claim's transaction must answer (nothing was written)."""
    campaign = copy.campaign
    if db.session().in_transaction() or campaign.issue_trigger.kind != TriggerKind.CLAIM:  # (as ``kept``)
        return None
    try:  # every check of the campaign the claim's transaction makes before its writes, made on the copy
        _require_issuing(campaign, now, CLAIM_SOURCE)
        check_occasion(campaign, channel, now)
        reserved = reservation_for(campaign, rules=copy.rules)
        packet = _new_packet(
            campaign,
            now,
            owner_id=uid,
            status=PacketStatus.ISSUED,
            reserved_fen=reserved,
            source=CLAIM_SOURCE,
            source_ref=source_ref,
            claimed_at=now,
        )
    except RebateError:
        return None  # refused: the transaction reads the row and refuses in the order it always has
    upsert, slot_params, n_slots = slots_upsert(slots, now, GUARD) if slots else (None, {}, 0)
    refusing, own_params = slots_refusing(own, now) if own else (None, {})
    params = {
        "campaign_id": campaign.id,
        "digest": copy.digest,
        "uid": uid,
        "generation": generation,
        "reserved": reserved,
        "campaign_now": now,
        **bans,
        **slot_params,
        **own_params,
        **{f"p_{k}": v for k, v in _columns_of(packet).items()},
    }
    if upsert is not None:
        params["n_slots"] = n_slots
    if campaign.regions:
        params["in_regions"] = list(campaign.regions)  # (not "regions": an UPDATE would SET the column by it)
    try:
        with db.session.get_bind().connect() as connection:
            statement = _precompiled(upsert, refusing, bool(campaign.regions), connection.dialect)
            row = statement.first(connection.execution_options(isolation_level="AUTOCOMMIT"), params)
    except DBAPIError as failed:
        if getattr(failed.orig, "sqlstate", None) == DIVISION_BY_ZERO:  # a slot taken, no packet: all undone
            return None  # the transaction tells why
        raise
    if row is None or not row.admitted:
        return None  # nothing written: no such user, a ban, an edited campaign, ...: the transaction answers
    if row.packet_id is None and (row.free or row.own_refusing):
        return None  # nothing written: a limit refused (kept for the trace by the transaction), or ranks first
    user = _user_of(uid, generation)
    if row.packet_id is None:  # sold out, and no limit of the campaign's own refusing, to rank before it
        return user, budget_refusal(row.full)
    return user, _loaded(packet, row.packet_id)  # committed already: a loaded row of the session
