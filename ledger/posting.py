"""``post_entry`` and ``Batch``: the only ways money or points move.

A ``Batch`` collects a payment's entries (key, memo, legs) and writes them in one round trip
per table: the entries by one ``INSERT … ON CONFLICT (idempotency_key) DO NOTHING RETURNING``,
their postings by one executemany, the clearing flows they open by one
``INSERT … ON CONFLICT DO NOTHING``; on PostgreSQL all three in one statement (a data-modifying
``WITH``) for a batch of up to 50 entries. No savepoint: the key's unique constraint makes a repeat
(or a concurrent twin, which waits on the index entry) safe, and a key that already existed is
compared with its legs, as ``post_entry`` always did. ``post_entry`` is a batch of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy import Executable, bindparam, insert, select, text

from ledger.accounts import AccountRef, account_ids
from ledger.errors import IdempotencyMismatch, LedgerError, UnbalancedEntry
from models import LedgerAccount, LedgerEntry, LedgerFlow, LedgerPosting, db, utcnow
from models.ledger import CLEARING_KINDS
from models.sql import WRITES, insert_ignoring
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
        if _in_one_statement(items):
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


ONE_STATEMENT_ENTRIES = 50  # at most this many entries and
ONE_STATEMENT_POSTINGS = 200  # postings in one statement (bounded SQL text); a bigger batch takes three


def _in_one_statement(items: list[_Item]) -> bool:
    return (
        db.session.get_bind().dialect.name == "postgresql"
        and len(items) <= ONE_STATEMENT_ENTRIES
        and sum(len(item.legs) for item in items) <= ONE_STATEMENT_POSTINGS
    )


def _post_in_one_statement(items: list[_Item], ids: dict[str, int]) -> dict[str, int]:
    """PostgreSQL: the entries, the postings of those this call wrote and the clearing flows they open in ONE
    statement (data-modifying WITH); key → id of the entries written (a key that existed already is left out, its
    postings and flows not written: the caller compares it, as on the three-statement path)."""
    postings = [(item.key, leg) for item in items for leg in item.legs]
    params: dict = {"now": utcnow()}
    for i, item in enumerate(items):
        params |= _numbered(_ENTRY_BINDS, i, (item.key, item.memo, item.unit, item.reverses_id))
    for j, (key, leg) in enumerate(postings):
        params |= _numbered(_POSTING_BINDS, j, (key, ids[leg.account.code], leg.amount, leg.flow))
    rows = db.session.execute(_one_statement(len(items), len(postings)), params).tuples().all()
    return dict(rows)


# (bind name, the column whose type it has) of an entry's and a posting's VALUES row, numbered per row
_ENTRY_BINDS = (
    ("k", LedgerEntry.__table__.c.idempotency_key),
    ("m", LedgerEntry.__table__.c.memo),
    ("u", LedgerEntry.__table__.c.unit),
    ("r", LedgerEntry.__table__.c.reverses_id),
)
_POSTING_BINDS = (
    ("pk", LedgerEntry.__table__.c.idempotency_key),
    ("pa", LedgerPosting.__table__.c.account_id),
    ("pm", LedgerPosting.__table__.c.amount),
    ("pf", LedgerPosting.__table__.c.flow),
)


def _numbered(binds: tuple, n: int, values: tuple) -> dict:
    return {f"{name}_{n}": value for (name, _), value in zip(binds, values, strict=True)}


def _values_rows(binds: tuple, count: int, extra: str = "") -> str:
    return ", ".join("(" + ", ".join(f":{name}_{n}" for name, _ in binds) + extra + ")" for n in range(count))


@lru_cache(maxsize=256)  # shapes (entries, postings) seen: a handful in practice, bounded anyway
def _one_statement(entries: int, postings: int) -> Executable:
    """``_post_in_one_statement``'s SQL for ``entries`` entries and ``postings`` postings, built once per shape."""
    entry_rows, posting_rows = _values_rows(_ENTRY_BINDS, entries, ", :now"), _values_rows(_POSTING_BINDS, postings)
    sql = (  # our own table names and numbered parameters
        "WITH e AS (INSERT INTO ledger_entries (idempotency_key, memo, unit, reverses_id, created_at) "  # noqa: S608
        f"VALUES {entry_rows} ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key, id), "
        f"v (key, account_id, amount, flow) AS (VALUES {posting_rows}), "
        "p AS (INSERT INTO ledger_postings (entry_id, account_id, amount, flow) "
        "SELECT e.id, v.account_id, v.amount, v.flow FROM v JOIN e ON e.idempotency_key = v.key RETURNING flow), "
        "f AS (INSERT INTO ledger_flows (ref, opened_at, closed_at) "
        "SELECT DISTINCT p.flow, :now, CAST(NULL AS TIMESTAMP WITH TIME ZONE) FROM p WHERE p.flow IS NOT NULL "
        "ORDER BY 1 ON CONFLICT (ref) DO NOTHING) "
        "SELECT idempotency_key, id FROM e"
    )
    e = LedgerEntry.__table__.c
    binds = [bindparam("now", type_=e.created_at.type)]
    for spec, count in ((_ENTRY_BINDS, entries), (_POSTING_BINDS, postings)):
        binds += [bindparam(f"{name}_{n}", type_=column.type) for n in range(count) for name, column in spec]
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
