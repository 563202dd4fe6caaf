"""Accounts are created on first use, concurrency-safe (insert … on conflict do nothing)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from ledger.errors import LedgerError
from models import AccountKind, LedgerAccount, LedgerPosting, Unit, db, utcnow
from models.ledger import POINT_KINDS


def _code(kind: str, owner_type: str | None, owner_id: int | None) -> str:
    return kind if owner_type is None else f"{kind}:{owner_type}:{owner_id}"


def account(kind: AccountKind, owner_type: str | None = None, owner_id: int | None = None) -> LedgerAccount:
    """The account of ``kind`` for an owner ("merchant", 7), created if missing."""
    try:
        kind = AccountKind(kind)
    except ValueError:
        raise LedgerError(f"unknown account kind {kind!r}") from None
    if (owner_type is None) != (owner_id is None):
        raise LedgerError("owner_type and owner_id go together")
    code = _code(kind, owner_type, owner_id)
    found = db.session.execute(select(LedgerAccount).where(LedgerAccount.code == code)).scalar_one_or_none()
    if found is not None:
        return found
    unit = Unit.POINT if kind in POINT_KINDS else Unit.FEN
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(LedgerAccount)
        .values(code=code, kind=kind, unit=unit, owner_type=owner_type, owner_id=owner_id, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["code"])
    )
    db.session.execute(stmt)
    return db.session.execute(select(LedgerAccount).where(LedgerAccount.code == code)).scalar_one()


def platform_account(kind: AccountKind) -> LedgerAccount:
    return account(kind)


def balance(acct: LedgerAccount) -> int:
    total = db.session.execute(
        select(func.coalesce(func.sum(LedgerPosting.amount), 0)).where(LedgerPosting.account_id == acct.id)
    ).scalar_one()
    return int(total)


def balances(accounts: Iterable[LedgerAccount]) -> dict[int, int]:
    ids = [a.id for a in accounts]
    rows = db.session.execute(
        select(LedgerPosting.account_id, func.sum(LedgerPosting.amount))
        .where(LedgerPosting.account_id.in_(ids))
        .group_by(LedgerPosting.account_id)
    ).all()
    found = {account_id: int(total) for account_id, total in rows}
    return {account_id: found.get(account_id, 0) for account_id in ids}
