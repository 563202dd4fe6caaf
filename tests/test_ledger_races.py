"""The ledger under concurrency, on SQLite (BEGIN IMMEDIATE) and PostgreSQL (unique keys) alike."""

from sqlalchemy import func, select

import ledger
from ledger import Leg
from models import AccountKind, LedgerAccount, LedgerEntry, LedgerPosting, db
from tests.concurrency import together

K = AccountKind


def test_concurrent_post_entry_with_one_key_posts_once(app):
    fund = ledger.platform_account(K.PLATFORM_MARKETING_FUND).id
    cash = ledger.account(K.USER_CASH, "user", 1).id
    db.session.commit()

    def work(_: int) -> int:
        legs = [Leg(db.session.get(LedgerAccount, fund), -700), Leg(db.session.get(LedgerAccount, cash), 700)]
        return ledger.post_entry("race:1", "race", legs).id

    results = together(10, work, app=app)

    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 1
    db.session.rollback()
    assert db.session.execute(select(func.count(LedgerEntry.id))).scalar_one() == 1
    assert db.session.execute(select(func.count(LedgerPosting.id))).scalar_one() == 2
    assert ledger.balance(db.session.get(LedgerAccount, cash)) == 700


def test_concurrent_account_creation_makes_one_account(app):
    results = together(10, lambda _: ledger.account(K.USER_CASH, "user", 77).id, app=app)

    assert all(isinstance(r, int) for r in results), results
    assert len(set(results)) == 1
    db.session.rollback()
    assert db.session.execute(select(func.count(LedgerAccount.id))).scalar_one() == 1
