"""``post_entry`` and ``Batch``: the only ways money or points move.

A ``Batch`` collects a payment's entries (key, memo, legs) and writes them in one round trip
per table: the entries by one ``INSERT … ON CONFLICT (idempotency_key) DO NOTHING RETURNING``,
their postings by one executemany, the clearing flows they open by one
``INSERT … ON CONFLICT DO NOTHING``; on PostgreSQL all three in one statement (a data-modifying
``WITH``, the rows as array parameters: one statement text for every batch). No savepoint: the key's
unique constraint makes a repeat (or a concurrent twin, which waits on the index entry) safe, and a
key that already existed is compared with its legs, as ``post_entry`` always did. ``post_entry`` is a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from sqlalchemy import Executable, bindparam, insert, select, text

from ledger.accounts import AccountRef, account_ids
from ledger.errors import IdempotencyMismatch, LedgerError, UnbalancedEntry
from models import LedgerAccount, LedgerEntry, LedgerFlow, LedgerPosting, db, utcnow
from models.ledger import CLEARING_KINDS
from models.sql import WRITES, execute_core, insert_ignoring
from money import MAX_FEN

MAX_KEY_LENGTH = 160  # ledger_entries.idempotency_key
MAX_FLOW_LENGTH = 64  # ledger_postings.flow


@dataclass(frozen=True)
class Leg:
    account: LedgerAccount | AccountRef  # a loaded row, or a name resolved when written
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


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise LedgerError(f"ledger key must be 1 to {MAX_KEY_LENGTH} characters, got {key!r}")


@dataclass
class _Item:
    key: str
    memo: str
    unit: str
    legs: list[Leg]
    reverses_id: int | None


@dataclass
class Batch:
    """Entries to write together; ``post()`` writes them (flushes, never commits) and returns key → entry id.

    Every entry is validated when added, so a bad one raises before anything is written.
    """

    items: dict[str, _Item] = field(default_factory=dict)

    def add(self, key: str, memo: str, legs: list[Leg], reverses: LedgerEntry | None = None) -> None:
        _check_key(key)
        unit = _validate(legs)
        item = _Item(key, memo[:200], unit, list(legs), reverses.id if reverses is not None else None)
        twin = self.items.get(key)
        if twin is not None:
            if _shape(twin.legs) != _shape(legs):
                raise IdempotencyMismatch(f"ledger key {key!r} was posted with different legs")
            return
        self.items[key] = item

    def __len__(self) -> int:
        return len(self.items)

    def post(self) -> dict[str, int]:
        if not self.items:
            return {}
        items = list(self.items.values())
        db.session.flush()  # pending rows first (nothing here when the caller already flushed)
        ids = account_ids({leg.account.code: leg.account for item in items for leg in item.legs}.values())
        if db.session.get_bind().dialect.name == "postgresql":  # one data-modifying WITH (below)
            new = _post_in_one_statement(items, ids)
            written = []  # their postings and flows are written already
        else:
            new = _insert_entries(items)
            written = [item for item in items if item.key in new]
        if written:
            db.session.execute(
                insert(LedgerPosting.__table__),
                [
                    {
                        "entry_id": new[item.key],
                        "account_id": ids[leg.account.code],
                        "amount": leg.amount,
                        "flow": leg.flow,
                    }
                    for item in written
                    for leg in item.legs
                ],
            )
            flows = sorted({leg.flow for item in written for leg in item.legs if leg.flow})
            if flows:
                _open_flows(flows)
        repeated = [item for item in items if item.key not in new]
        existing = _compare_existing(repeated, ids) if repeated else {}
        self.items = {}
        return {**new, **existing}


def _post_in_one_statement(items: list[_Item], ids: dict[str, int]) -> dict[str, int]:
    """PostgreSQL: the entries, the postings of those this call wrote and the clearing flows they open in ONE
    statement (data-modifying WITH); key → id of the entries written (a key that existed already is left out, its
    postings and flows not written: the caller compares it, as on the three-statement path).

    The rows go as one array per column (``unnest``), so the statement's text is the same for every batch:
    SQLAlchemy compiles it once, psycopg converts it once and PostgreSQL plans it once (a prepared
    statement). Numbered parameters per row had cost a payment a conversion of 65 parameters (psycopg caches
    none with more than 50) and a statement of its own per batch shape."""
    postings = [(item.key, leg) for item in items for leg in item.legs]
    params = {
        "now": utcnow(),
        "keys": [item.key for item in items],
        "memos": [item.memo for item in items],
        "units": [item.unit for item in items],
        "reverses": [item.reverses_id for item in items],
        "posting_keys": [key for key, _ in postings],
        "accounts": [ids[leg.account.code] for _, leg in postings],
        "amounts": [leg.amount for _, leg in postings],
        "flows": [leg.flow for _, leg in postings],
    }
    return dict(execute_core(_one_statement(), params).tuples().all())


@cache
def _one_statement() -> Executable:
    """``_post_in_one_statement``'s SQL, built once per process: the entries in the order given (their ids too)."""
    sql = (  # our own table names; the rows are the array parameters
        "WITH e AS (INSERT INTO ledger_entries (idempotency_key, memo, unit, reverses_id, created_at) "
        "SELECT x.k, x.m, x.u, x.r, :now FROM unnest(CAST(:keys AS VARCHAR[]), CAST(:memos AS VARCHAR[]), "
        "CAST(:units AS VARCHAR[]), CAST(:reverses AS INTEGER[])) WITH ORDINALITY AS x (k, m, u, r, n) ORDER BY x.n "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, id), "
        "v (key, account_id, amount, flow) AS (SELECT * FROM unnest(CAST(:posting_keys AS VARCHAR[]), "
        "CAST(:accounts AS INTEGER[]), CAST(:amounts AS BIGINT[]), CAST(:flows AS VARCHAR[]))), "
        "p AS (INSERT INTO ledger_postings (entry_id, account_id, amount, flow) "
        "SELECT e.id, v.account_id, v.amount, v.flow FROM v JOIN e ON e.idempotency_key = v.key RETURNING flow), "
        "f AS (INSERT INTO ledger_flows (ref, opened_at, closed_at) "
        "SELECT DISTINCT p.flow, :now, CAST(NULL AS TIMESTAMP WITH TIME ZONE) FROM p WHERE p.flow IS NOT NULL "
        "ORDER BY 1 ON CONFLICT (ref) DO NOTHING) "
        "SELECT idempotency_key, id FROM e"
    )
    e = LedgerEntry.__table__.c
    arrays = ("keys", "memos", "units", "reverses", "posting_keys", "accounts", "amounts", "flows")
    binds = [bindparam("now", type_=e.created_at.type), *(bindparam(name) for name in arrays)]
    return text(sql).bindparams(*binds).columns(e.idempotency_key, e.id).execution_options(**WRITES)


def _insert_entries(items: list[_Item]) -> dict[str, int]:
    """key → id of the entries this call wrote; a key that existed already is left out (nothing written)."""
    now = utcnow()
    rows = [
        {"idempotency_key": i.key, "memo": i.memo, "unit": i.unit, "reverses_id": i.reverses_id, "created_at": now}
        for i in items
    ]
    return dict(insert_ignoring(LedgerEntry.__table__, rows, ("idempotency_key",), ("idempotency_key", "id")))


def _open_flows(refs: list[str]) -> None:
    now = utcnow()
    insert_ignoring(LedgerFlow.__table__, [{"ref": ref, "opened_at": now, "closed_at": None} for ref in refs], ("ref",))


def _shape(legs: list[Leg], ids: dict[str, int] | None = None) -> list[tuple]:
    if ids is None:
        return sorted((leg.account.code, leg.amount, leg.flow or "") for leg in legs)
    return sorted((ids[leg.account.code], leg.amount, leg.flow or "") for leg in legs)


def _compare_existing(items: list[_Item], ids: dict[str, int]) -> dict[str, int]:
    """Keys posted before: their legs must be these (else ``IdempotencyMismatch``); key → the first entry's id."""
    rows = db.session.execute(
        select(
            LedgerEntry.idempotency_key,
            LedgerEntry.id,
            LedgerPosting.account_id,
            LedgerPosting.amount,
            LedgerPosting.flow,
        )
        .join(LedgerPosting, LedgerPosting.entry_id == LedgerEntry.id)
        .where(LedgerEntry.idempotency_key.in_([i.key for i in items]))
    ).all()
    found: dict[str, tuple[int, list]] = {}
    for key, entry_id, account_id, amount, flow in rows:
        found.setdefault(key, (entry_id, []))[1].append((account_id, amount, flow or ""))
    result = {}
    for item in items:
        if item.key not in found:  # the twin's transaction rolled back after we waited: a bug or a race lost
            raise LedgerError(f"ledger key {item.key!r} is neither new nor found")
        entry_id, postings = found[item.key]
        if sorted(postings) != _shape(item.legs, ids):
            raise IdempotencyMismatch(f"ledger key {item.key!r} was posted with different legs")
        result[item.key] = entry_id
    return result


def post(key: str, memo: str, legs: list[Leg]) -> int:
    """``post_entry`` for callers that need no entry row back: the entry's id, without re-reading it."""
    batch = Batch()
    batch.add(key, memo, legs)
    return batch.post()[key]


def post_entry(key: str, memo: str, legs: list[Leg], reverses: LedgerEntry | None = None) -> LedgerEntry:
    """Post a balanced entry once per ``key``; a repeat returns the first entry.

    A repeat with different legs raises ``IdempotencyMismatch``: the key names
    one movement, and two movements under one key is a caller bug.
    """
    batch = Batch()
    batch.add(key, memo, legs, reverses)
    entry_id = batch.post()[key]
    return db.session.get(LedgerEntry, entry_id)


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
