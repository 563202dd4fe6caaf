"""``post_entry``: the only way money or points move."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ledger.errors import IdempotencyMismatch, LedgerError, UnbalancedEntry
from models import LedgerAccount, LedgerEntry, LedgerFlow, LedgerPosting, db, utcnow
from models.ledger import CLEARING_KINDS
from money import MAX_FEN

MAX_KEY_LENGTH = 160  # ledger_entries.idempotency_key
MAX_FLOW_LENGTH = 64  # ledger_postings.flow


@dataclass(frozen=True)
class Leg:
    account: LedgerAccount
    amount: int  # signed: positive credits the account
    flow: str | None = None  # required on clearing accounts


def _validate(legs: list[Leg]) -> str:
    if len(legs) < 2:
        raise UnbalancedEntry("an entry needs at least two legs")
    units = {leg.account.unit for leg in legs}
    if len(units) != 1:
        raise UnbalancedEntry(f"an entry mixes units {sorted(units)}")
    for leg in legs:
        if isinstance(leg.amount, bool) or not isinstance(leg.amount, int):
            raise UnbalancedEntry(f"leg amount must be an int, got {leg.amount!r}")
        if leg.amount == 0:
            raise UnbalancedEntry(f"zero leg on {leg.account.code}")
        if abs(leg.amount) > MAX_FEN:
            raise UnbalancedEntry(f"leg amount {leg.amount} on {leg.account.code} is out of range")
        if leg.account.kind in CLEARING_KINDS and not leg.flow:
            raise UnbalancedEntry(f"clearing account {leg.account.code} needs a flow")
        if leg.flow is not None and not (isinstance(leg.flow, str) and 0 < len(leg.flow) <= MAX_FLOW_LENGTH):
            raise LedgerError(f"flow must be 1 to {MAX_FLOW_LENGTH} characters, got {leg.flow!r}")
    total = sum(leg.amount for leg in legs)
    if total != 0:
        raise UnbalancedEntry(f"legs sum to {total}, not zero")
    return units.pop()


def _signature(legs) -> list[tuple[int, int, str]]:
    return sorted((leg.account.id, leg.amount, leg.flow or "") for leg in legs)


def post_entry(key: str, memo: str, legs: list[Leg], reverses: LedgerEntry | None = None) -> LedgerEntry:
    """Post a balanced entry once per ``key``; a repeat returns the first entry.

    A repeat with different legs raises ``IdempotencyMismatch``: the key names
    one movement, and two movements under one key is a caller bug.
    """
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise LedgerError(f"ledger key must be 1 to {MAX_KEY_LENGTH} characters, got {key!r}")
    unit = _validate(legs)
    existing = _by_key(key)
    if existing is None:
        try:
            with db.session.begin_nested():
                existing = _insert(key, memo, unit, legs, reverses)
                return existing
        except IntegrityError:
            existing = _by_key(key)
            if existing is None:
                raise
    if _signature(existing.postings) != _signature(legs):
        raise IdempotencyMismatch(f"ledger key {key!r} was posted with different legs")
    return existing


def _by_key(key: str) -> LedgerEntry | None:
    return db.session.execute(select(LedgerEntry).where(LedgerEntry.idempotency_key == key)).scalar_one_or_none()


def _insert(key, memo, unit, legs, reverses) -> LedgerEntry:
    entry = LedgerEntry(idempotency_key=key, memo=memo[:200], unit=unit, reverses_id=reverses.id if reverses else None)
    db.session.add(entry)
    db.session.flush()
    for leg in legs:
        if leg.flow:
            _open_flow(leg.flow)
        db.session.add(LedgerPosting(entry_id=entry.id, account_id=leg.account.id, amount=leg.amount, flow=leg.flow))
    db.session.flush()
    db.session.refresh(entry, ["postings"])
    return entry


def _open_flow(ref: str) -> None:
    if db.session.get(LedgerFlow, ref) is None:
        db.session.add(LedgerFlow(ref=ref))
        db.session.flush()


def reverse_entry(entry: LedgerEntry, key: str, memo: str) -> LedgerEntry:
    """Post the mirror image of ``entry``; the original is never edited."""
    legs = [Leg(p.account, -p.amount, p.flow) for p in entry.postings]
    return post_entry(key, memo, legs, reverses=entry)


def close_flow(ref: str) -> None:
    """Mark a clearing flow finished; the ledger check then requires it to net to zero."""
    flow = db.session.get(LedgerFlow, ref)
    if flow is None:
        flow = LedgerFlow(ref=ref)
        db.session.add(flow)
    if flow.closed_at is None:
        flow.closed_at = utcnow()
    db.session.flush()
