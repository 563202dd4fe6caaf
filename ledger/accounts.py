"""Accounts are created on first use, concurrency-safe (insert … on conflict do nothing).

Account ids are cached per process and database (code → id; accounts are never deleted or
renumbered), so the hot path names accounts by ``AccountRef`` and resolves them all at once
when a batch is written. An id learnt inside a transaction is promoted to the process cache
only after that transaction commits: a rolled-back insert may leave its id to another account
(SQLite reuses it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from sqlalchemy import bindparam, func, select

from ledger.errors import LedgerError
from models import AccountKind, LedgerAccount, LedgerBalanceMark, LedgerPosting, Unit, db, utcnow
from models.caches import CommittedCache
from models.ledger import POINT_KINDS
from models.sql import execute_core, insert_ignoring

_IDS = CommittedCache("ledger_account_ids")  # code → id, per process and database, kept after commit


def _code(kind: str, owner_type: str | None, owner_id: int | None) -> str:
    return kind if owner_type is None else f"{kind}:{owner_type}:{owner_id}"


@dataclass(frozen=True)
class AccountRef:
    """An account named by kind and owner, resolved to its id when a batch is written (created if missing)."""

    kind: str
    owner_type: str | None = None
    owner_id: int | None = None

    @property
    def code(self) -> str:
        return _code(self.kind, self.owner_type, self.owner_id)

    @property
    def unit(self) -> str:
        return Unit.POINT if self.kind in POINT_KINDS else Unit.FEN


def ref(kind: AccountKind | str, owner_type: str | None = None, owner_id: int | None = None) -> AccountRef:
    """The account of ``kind`` for an owner, by name only (no statement until it is used)."""
    try:
        kind = AccountKind(kind)
    except ValueError:
        raise LedgerError(f"unknown account kind {kind!r}") from None
    if (owner_type is None) != (owner_id is None):
        raise LedgerError("owner_type and owner_id go together")
    return AccountRef(kind, owner_type, owner_id)


def account_ids(refs: Iterable[AccountRef | LedgerAccount]) -> dict[str, int]:
    """code → id of every account named, creating the missing ones: at most two statements, none when cached."""
    ids: dict[str, int] = {}
    named: dict[str, AccountRef] = {}
    for r in refs:
        if isinstance(r, LedgerAccount):
            ids[r.code] = r.id
        else:
            named[r.code] = r
    ids.update(_IDS.get_many(named))
    missing = {code: r for code, r in named.items() if code not in ids}
    if not missing:
        return ids
    now = utcnow()
    rows = [
        {
            "code": code,
            "kind": r.kind,
            "unit": r.unit,
            "owner_type": r.owner_type,
            "owner_id": r.owner_id,
            "created_at": now,
        }
        for code, r in sorted(missing.items())  # sorted: concurrent creators take the index entries in one order
    ]
    found = dict(insert_ignoring(LedgerAccount.__table__, rows, ("code",), ("code", "id")))
    rest = [code for code in missing if code not in found]
    if rest:  # they existed already
        found.update(_ids_by_code(rest))
    _IDS.learn(found)
    ids.update(found)
    return ids


def _ids_by_code(codes: list[str]) -> dict[str, int]:
    """code → id of those of ``codes`` that exist: one statement."""
    rows = db.session.execute(select(LedgerAccount.code, LedgerAccount.id).where(LedgerAccount.code.in_(codes)))
    return dict(rows.tuples().all())


def account_id(r: AccountRef | LedgerAccount) -> int:
    return account_ids([r])[r.code]


def existing_account_ids(refs: Iterable[AccountRef]) -> dict[str, int]:
    """code → id of the accounts named that exist, creating none (for reads: a GET writes no row); at most one
    statement, none when cached."""
    named = {r.code: r for r in refs}
    ids = _IDS.get_many(named)
    rest = [code for code in named if code not in ids]
    if rest:
        found = _ids_by_code(rest)
        _IDS.learn(found)
        ids.update(found)
    return ids


def existing_account_id(r: AccountRef) -> int | None:
    """The account's id, None when it was never used (nothing created)."""
    return existing_account_ids([r]).get(r.code)


def account(kind: AccountKind, owner_type: str | None = None, owner_id: int | None = None) -> LedgerAccount:
    """The account of ``kind`` for an owner ("merchant", 7), created if missing."""
    r = ref(kind, owner_type, owner_id)
    known = _IDS.get(r.code)
    if known is not None:
        found = db.session.get(LedgerAccount, known)
        if found is not None:
            return found
    found = db.session.execute(select(LedgerAccount).where(LedgerAccount.code == r.code)).scalar_one_or_none()
    if found is None:
        found = db.session.get(LedgerAccount, account_id(r))
    _IDS.learn({found.code: found.id})
    return found


def platform_account(kind: AccountKind) -> LedgerAccount:
    return account(kind)


def balance(acct: LedgerAccount | AccountRef) -> int:
    """The account's balance: its mark (``ledger.marks``) and the postings after it, one statement whatever its
    history."""
    return _balance_by_id(account_id(acct))


def balance_if_any(r: AccountRef) -> int:
    """``balance`` of an account that may never have been used: 0 then, and nothing is created (for reads)."""
    found = existing_account_id(r)
    return 0 if found is None else _balance_by_id(found)


def _balance_by_id(found_id: int) -> int:
    _autoflush()
    found = execute_core(_balance_statement(), {"a": found_id}).first()
    return int(found[1]) if found is not None else 0


def balances(accounts: Iterable[LedgerAccount]) -> dict[int, int]:
    """id → balance of each account (as ``balance``), one statement."""
    ids = [a.id for a in accounts]
    if not ids:
        return {}
    _autoflush()
    found = dict(execute_core(_balances_statement(), {"ids": ids}).tuples().all())
    return {account_id: int(found.get(account_id, 0)) for account_id in ids}


def _autoflush() -> None:
    """What an ORM query does first (these are Core statements): rows the session holds unwritten are written, unless
    the caller said not to (``no_autoflush``)."""
    session = db.session()
    if session.autoflush:
        session.flush()


_P = LedgerPosting.__table__.c
_M = LedgerBalanceMark.__table__.c


def _balance_of(which):
    """(account id, its mark (none: 0 up to posting 0) plus its postings after the mark, read by the index on account
    and id: only those) of the accounts ``which`` picks."""
    accounts = LedgerAccount.__table__
    after = (
        select(func.sum(_P.amount))
        .where(_P.account_id == accounts.c.id, _P.id > func.coalesce(_M.upto_posting_id, 0))
        .scalar_subquery()
    )
    return (
        select(accounts.c.id, func.coalesce(_M.balance, 0) + func.coalesce(after, 0))
        .select_from(accounts.outerjoin(LedgerBalanceMark.__table__, _M.account_id == accounts.c.id))
        .where(which(accounts.c.id))
    )


@cache
def _balance_statement():
    return _balance_of(lambda account: account == bindparam("a"))


@cache
def _balances_statement():
    return _balance_of(lambda account: account.in_(bindparam("ids", expanding=True)))
