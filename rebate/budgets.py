"""Campaign budget counters: conditional UPDATEs, so concurrent claims never oversell.

reserved + committed <= limit is checked in the UPDATE's WHERE clause and again
by a CHECK constraint. Each function returns whether the move happened.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import cache

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    TextClause,
    bindparam,
    case,
    column,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.orm.util import identity_key

from models import Campaign, CampaignStatus, db
from models.sql import WRITES, execute_core

C = Campaign.__table__.c


def _apply(campaign_id: int, where, **values) -> bool:
    stmt = update(Campaign).where(C.id == campaign_id, *where).values(**values)
    done = db.session.execute(stmt.execution_options(synchronize_session=False)).rowcount == 1
    _expire(campaign_id)
    return done


def _expire(campaign_id: int) -> None:
    campaign = db.session.identity_map.get(identity_key(Campaign, campaign_id))
    if campaign is not None:
        db.session.expire(campaign, ["budget_reserved_fen", "budget_committed_fen"])


def _fits(amount_fen: int):
    return (C.budget_limit_fen.is_(None)) | (
        C.budget_reserved_fen + C.budget_committed_fen + amount_fen <= C.budget_limit_fen
    )


def reserve(campaign_id: int, amount_fen: int) -> bool:
    if amount_fen == 0:
        return True
    return _apply(campaign_id, [_fits(amount_fen)], budget_reserved_fen=C.budget_reserved_fen + amount_fen)


def commit(campaign_id: int, amount_fen: int) -> bool:
    """Commit spending that had no reservation (referral awards, say)."""
    if amount_fen == 0:
        return True
    return _apply(campaign_id, [_fits(amount_fen)], budget_committed_fen=C.budget_committed_fen + amount_fen)


def settle(campaign_id: int, reserved_fen: int, actual_fen: int, limited: bool = True) -> None:
    """Turn a reservation into commitment at the real amount (never more than reserved when budgeted)."""
    if limited and actual_fen > reserved_fen:
        raise ValueError(f"settling {actual_fen} fen against a reservation of {reserved_fen}")
    _apply(
        campaign_id,
        [],
        budget_reserved_fen=C.budget_reserved_fen - reserved_fen,
        budget_committed_fen=C.budget_committed_fen + actual_fen,
    )


def lock_in_order(campaign_ids: Iterable[int], *, even_one: bool = False) -> None:
    """Row-lock the campaigns in id order, in one statement (none for fewer than two unless ``even_one``: one
    UPDATE of one row cannot wait in a circle, unless another lock comes after it). A caller that writes several
    campaign rows takes them all here first: each UPDATE alone locks in id order, but two in a row do not
    (A: Y then X; B: X then Y).

    ``FOR NO KEY UPDATE``, the lock an UPDATE of the counters takes: it does not wait on the key-share locks
    that inserting a row referencing the campaign (a rebate, a packet) takes, as ``FOR UPDATE`` would (two
    payments that inserted their rebates would then each wait on the other)."""
    ids = sorted(set(campaign_ids))
    if len(ids) > 1 or (ids and even_one):
        db.session.execute(select(C.id).where(C.id.in_(ids)).order_by(C.id).with_for_update(key_share=True))


def commit_many(amounts: dict[int, int], settles: dict[int, tuple[int, int]] | None = None) -> set[int]:
    """Commit unreserved spending of several campaigns, and settle others' reservations (campaign id: reserved,
    actual; see ``settle``), in one conditional UPDATE; returns the ids that did not fit.

    Each campaign moves only if its own amount fits its limit (the others still move). A settlement alone
    always fits: the caller settles a budgeted campaign at no more than it reserved.
    """
    amounts = {cid: fen for cid, fen in amounts.items() if fen}
    settles = settles or {}
    if not amounts and not settles:
        return set()
    ids = sorted(set(amounts) | set(settles))
    params = {}
    for i, cid in enumerate(ids):
        released, settled = settles.get(cid, (0, 0))
        params.update({f"id{i}": cid, f"add{i}": amounts.get(cid, 0) + settled, f"sub{i}": released})
    stmt = _commit_many_statement(len(ids))
    done = set(execute_core(stmt, params).scalars())
    for campaign_id in ids:
        _expire(campaign_id)
    return set(ids) - done


@cache
def _commit_many_statement(count: int):
    """``commit_many``'s UPDATE for ``count`` campaigns, built once: ids, amounts committed (``add``) and
    reservations released (``sub``) are bound parameters ``id0``, ``add0``, ``sub0``, …"""

    def per_campaign(name: str):
        whens = [(C.id == bindparam(f"id{i}"), bindparam(f"{name}{i}", type_=BigInteger)) for i in range(count)]
        return case(*whens, else_=literal(0, BigInteger))

    add, sub = per_campaign("add"), per_campaign("sub")
    # The rows are locked first, in id order, by a materialised CTE: an UPDATE alone locks them in the order its
    # scan meets them, which after updates is not id order, and two payments of the same two campaigns then
    # deadlock (seen under load). SQLite serialises its transactions and drops the FOR clause.
    locked = (
        select(C.id)
        .where(C.id.in_([bindparam(f"id{i}") for i in range(count)]))
        .order_by(C.id)
        .with_for_update(key_share=True)
        .cte("locked")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    return (
        update(Campaign.__table__)
        .where(C.id == locked.c.id, _fits(add - sub))
        .values(budget_reserved_fen=C.budget_reserved_fen - sub, budget_committed_fen=C.budget_committed_fen + add)
        .returning(C.id)
    )


def release_reserved(campaign_id: int, amount_fen: int) -> None:
    if amount_fen:
        _apply(campaign_id, [], budget_reserved_fen=C.budget_reserved_fen - amount_fen)


def release_committed(campaign_id: int, amount_fen: int) -> None:
    if amount_fen:
        _apply(campaign_id, [], budget_committed_fen=C.budget_committed_fen - amount_fen)


def count_packet(campaign_id: int) -> bool:
    """Take one from the campaign's count budget (always succeeds when it has none)."""
    fits = C.max_packets.is_(None) | (C.packets_issued < C.max_packets)
    return _apply(campaign_id, [fits], packets_issued=C.packets_issued + 1)


def uncount_packet(campaign_id: int) -> None:
    """An expired or revoked packet gives its count slot back."""
    _apply(campaign_id, [C.packets_issued > 0], packets_issued=C.packets_issued - 1)


def take_packet(campaign_id: int, reserved_fen: int, now: datetime) -> bool:
    """One packet's count slot and money reservation in ONE conditional UPDATE (a claim's single budget statement),
    for a packet issued at ``now``.

    Both conditions of ``count_packet`` and ``reserve`` sit in its WHERE: either both move or neither does.
    The caller tells which one refused (the rare path) by reading the campaign's counters."""
    params = {"campaign_id": campaign_id, "reserved": reserved_fen, "campaign_now": now}
    done = db.session.execute(take_packet_statement(), params).rowcount == 1
    _expire(campaign_id)
    return done


@cache
def take_packet_statement():
    """``take_packet``'s UPDATE, built once per process (building it cost as much as running it): bound by
    ``campaign_id``, ``reserved`` and ``campaign_now`` (the packet's moment). Only an active campaign's, not past its
    ``ends_at`` at that moment: a claim read the campaign before this statement locks its row, and a pause (an end, a
    ban, an end date moved before the claim's moment) committed while it waited is seen here (PostgreSQL evaluates
    the WHERE again on the row it waited for), so no packet is issued by a campaign that stopped."""
    not_over = C.ends_at.is_(None) | (C.ends_at > bindparam("campaign_now", type_=C.ends_at.type))
    return (
        update(Campaign.__table__)
        .where(C.id == bindparam("campaign_id"), C.status == CampaignStatus.ACTIVE.value, not_over, packet_fits())
        .values(
            packets_issued=C.packets_issued + 1,
            budget_reserved_fen=C.budget_reserved_fen + bindparam("reserved", type_=BigInteger),
        )
    )


def packet_fits():
    """Whether one more packet reserving ``reserved`` (bound) fits the campaign's count and budget."""
    return (C.max_packets.is_(None) | (C.packets_issued < C.max_packets)) & _fits(
        bindparam("reserved", type_=BigInteger)
    )


def take_packet_inserting(campaign_id: int, reserved_fen: int, packet: dict, now: datetime) -> int | None:
    """``take_packet`` and the packet's INSERT (``packet``: every column but ``id``) in ONE statement on
    PostgreSQL: ``WITH budget AS (UPDATE … RETURNING) INSERT … SELECT … FROM budget RETURNING id``. The new
    packet's id, or None when the budget refused (then nothing was inserted). One round trip fewer for a
    self-serve claim, whose budget UPDATE is its last statement (the campaign row stays locked until the
    commit). PostgreSQL only (SQLite has no data-modifying WITH: there the caller INSERTs, then calls
    ``take_packet``)."""
    params = {
        "campaign_id": campaign_id,
        "reserved": reserved_fen,
        "campaign_now": now,
        **{f"p_{k}": v for k, v in packet.items()},
    }
    new_id = execute_core(_take_packet_inserting_statement(), params).scalar()
    _expire(campaign_id)
    return new_id


def claim_packet_inserting(
    campaign_id: int,
    reserved_fen: int,
    packet: dict,
    upsert: TextClause,
    slot_params: dict,
    slot_rows: int,
    now: datetime,
) -> tuple[int | None, list[str]]:
    """A claim's limit slots, ``take_packet`` and the packet's INSERT in ONE statement on PostgreSQL:
    ``WITH slots AS (<the limits' upsert> RETURNING key), budget AS (UPDATE … WHERE … AND every slot was taken
    RETURNING id), ins AS (INSERT … SELECT … FROM budget RETURNING id) SELECT the new id, the slot keys taken``.

    The slots are taken first (the budget's WHERE reads them before the campaign's row is locked), so the
    locks come in the order of the two statements it replaces: counters, then the campaign row. Answers the
    new packet's id (None: nothing was inserted and the budget not taken) and the keys of the slots taken
    (fewer than ``slot_rows``: a limit refused; the caller rolls back, as for any refusal)."""
    params = {
        "campaign_id": campaign_id,
        "reserved": reserved_fen,
        "campaign_now": now,
        "n_slots": slot_rows,
        **slot_params,
        **{f"p_{k}": v for k, v in packet.items()},
    }
    new_id, keys = execute_core(_claim_packet_inserting_statement(upsert), params).one()
    _expire(campaign_id)
    return new_id, list(keys or ())


@cache
def _claim_packet_inserting_statement(upsert: TextClause):
    slots, _, _, ins = claim_ctes(upsert)
    return select(
        select(ins.c.id).scalar_subquery(), select(func.array_agg(slots.c.key)).scalar_subquery()
    ).execution_options(**WRITES)


@cache
def _take_packet_inserting_statement():
    budget = take_packet_statement().returning(C.id).cte("budget")
    return packet_from(budget).add_cte(budget)


def claim_ctes(upsert: TextClause | None, *where):
    """A claim's writes as data-modifying CTEs: ``slots`` (the limits' upsert ``upsert``, None: no slots), ``budget``
    (``take_packet`` when every slot was taken (bound ``n_slots``) and ``where`` holds; bound ``campaign_now`` too)
    and ``ins`` (the packet's INSERT, one row per row of budget). Answers (slots, the count of slots taken, budget,
    ins)."""
    take = take_packet_statement().where(*where)
    if upsert is None:
        slots, taken = None, literal(0)
    else:
        slots = upsert.columns(column("key", String)).cte("slots")
        taken = select(func.count()).select_from(slots).scalar_subquery()
        take = take.where(taken == bindparam("n_slots", type_=Integer))
    budget = take.returning(C.id).cte("budget")
    return slots, taken, budget, packet_from(budget).cte("ins")


def packet_from(budget):
    """The packet's INSERT (every column but ``id`` bound as ``p_<column>``), one row per row of ``budget``."""
    from models import RedPacket  # noqa: PLC0415 - only here: budgets are about campaigns otherwise

    packets = RedPacket.__table__
    columns = [c for c in packets.columns if c.name != "id"]
    values = select(*[bindparam(f"p_{c.name}", type_=c.type) for c in columns]).select_from(budget)
    return insert(packets).from_select([c.name for c in columns], values).returning(packets.c.id)
