"""Campaign budget counters: conditional UPDATEs, so concurrent claims never oversell.

reserved + committed <= limit is checked in the UPDATE's WHERE clause and again
by a CHECK constraint. Each function returns whether the move happened.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, case, literal, update
from sqlalchemy.orm.util import identity_key

from models import Campaign, db

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


def commit_many(amounts: dict[int, int]) -> set[int]:
    """Commit unreserved spending of several campaigns in one conditional UPDATE; returns the ids that did not fit.

    Each campaign moves only if its own amount fits its limit (the others still move).
    """
    amounts = {cid: fen for cid, fen in amounts.items() if fen}
    if not amounts:
        return set()
    delta = case({cid: literal(fen, BigInteger) for cid, fen in amounts.items()}, value=C.id)
    stmt = (
        update(Campaign)
        .where(C.id.in_(sorted(amounts)), _fits(delta))
        .values(budget_committed_fen=C.budget_committed_fen + delta)
        .returning(C.id)
        .execution_options(synchronize_session=False)
    )
    done = set(db.session.execute(stmt).scalars())
    for campaign_id in amounts:
        _expire(campaign_id)
    return set(amounts) - done


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


def take_packet(campaign_id: int, reserved_fen: int) -> bool:
    """One packet's count slot and money reservation in ONE conditional UPDATE (a claim's single budget statement).

    Both conditions of ``count_packet`` and ``reserve`` sit in its WHERE: either both move or neither does.
    The caller tells which one refused (the rare path) by reading the campaign's counters."""
    fits = (C.max_packets.is_(None) | (C.packets_issued < C.max_packets)) & _fits(reserved_fen)
    return _apply(
        campaign_id,
        [fits],
        packets_issued=C.packets_issued + 1,
        budget_reserved_fen=C.budget_reserved_fen + reserved_fen,
    )
