"""PostgreSQL guards the ledger itself: a deferred trigger refuses unbalanced entries at commit."""

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

import ledger
from ledger import Leg
from models import AccountKind, LedgerAccount, LedgerEntry, LedgerPosting, db
from tests.conftest import on_postgres

pytestmark = [
    pytest.mark.postgres_only,
    pytest.mark.skipif(not on_postgres(), reason="needs PostgreSQL (TEST_DATABASE_URL)"),
]
K = AccountKind


@pytest.fixture
def accts(app):
    fund = ledger.platform_account(K.PLATFORM_MARKETING_FUND)
    cash = ledger.account(K.USER_CASH, "user", 1)
    points = ledger.account(K.USER_POINTS, "user", 1)
    db.session.commit()
    return fund.id, cash.id, points.id


def counts() -> tuple[int, int]:
    db.session.rollback()
    return (
        db.session.execute(select(func.count(LedgerEntry.id))).scalar_one(),
        db.session.execute(select(func.count(LedgerPosting.id))).scalar_one(),
    )


def insert_entry(entry_id: int, unit: str = "fen") -> None:
    db.session.execute(
        text(
            "INSERT INTO ledger_entries (id, idempotency_key, memo, unit, created_at) "
            "VALUES (:id, :key, 'raw', :unit, now())"
        ),
        {"id": entry_id, "key": f"raw:{entry_id}", "unit": unit},
    )


def insert_posting(entry_id: int, account_id: int, amount: int) -> None:
    db.session.execute(
        text("INSERT INTO ledger_postings (entry_id, account_id, amount) VALUES (:e, :a, :amount)"),
        {"e": entry_id, "a": account_id, "amount": amount},
    )


def test_unbalanced_posting_is_refused_at_commit(accts):
    fund, cash, _ = accts
    insert_entry(1)
    insert_posting(1, fund, -500)
    insert_posting(1, cash, 499)
    db.session.flush()  # deferred: nothing is checked yet
    with pytest.raises(IntegrityError, match="unbalanced"):
        db.session.commit()
    assert counts() == (0, 0)


def test_two_legs_that_do_not_sum_to_zero_are_refused(accts):
    fund, cash, _ = accts
    insert_entry(1)
    insert_posting(1, fund, -500)
    insert_posting(1, cash, 499)
    with pytest.raises(IntegrityError, match="postings sum to -1"):
        db.session.commit()
    assert counts() == (0, 0)


def test_balanced_pair_commits(accts):
    fund, cash, _ = accts
    insert_entry(1)
    insert_posting(1, fund, -500)
    insert_posting(1, cash, 500)
    db.session.commit()
    assert counts() == (1, 2)
    assert ledger.balance(db.session.get(LedgerAccount, cash)) == 500


def test_changing_an_amount_is_refused_at_once(accts):
    # postings are never changed (a balance mark sums them once, for good: ledger/marks.py), balanced or not
    fund, cash, _ = accts
    ledger.post_entry(
        "e:1",
        "cashback",
        [Leg(db.session.get(LedgerAccount, fund), -500), Leg(db.session.get(LedgerAccount, cash), 500)],
    )
    db.session.commit()
    with pytest.raises(IntegrityError, match="never changed or deleted"):
        db.session.execute(text("UPDATE ledger_postings SET amount = 600 WHERE account_id = :a"), {"a": cash})
    db.session.rollback()
    with pytest.raises(IntegrityError, match="never changed or deleted"):
        db.session.execute(
            text("UPDATE ledger_postings SET account_id = :a WHERE account_id = :b"), {"a": fund, "b": cash}
        )
    db.session.rollback()
    amounts = db.session.execute(select(LedgerPosting.amount).order_by(LedgerPosting.amount)).scalars().all()
    assert amounts == [-500, 500]


def test_deleting_one_leg_fails(accts):
    fund, cash, _ = accts
    insert_entry(1)
    insert_posting(1, fund, -500)
    insert_posting(1, cash, 500)
    db.session.commit()
    with pytest.raises(IntegrityError, match="never changed or deleted"):
        db.session.execute(text("DELETE FROM ledger_postings WHERE account_id = :a"), {"a": cash})
    db.session.rollback()
    assert counts() == (1, 2)


def test_mixed_unit_entry_is_refused(accts):
    fund, _, points = accts
    insert_entry(1)
    insert_posting(1, fund, -500)
    insert_posting(1, points, 500)
    with pytest.raises(IntegrityError, match="mixes units"):
        db.session.commit()
    assert counts() == (0, 0)


def test_points_entry_in_fen_accounts_is_refused(accts):
    fund, cash, _ = accts
    insert_entry(1, unit="point")
    insert_posting(1, fund, -5)
    insert_posting(1, cash, 5)
    with pytest.raises(IntegrityError, match="mixes units"):
        db.session.commit()
    assert counts() == (0, 0)


def test_zero_posting_is_refused_by_the_check_constraint(accts):
    fund, cash, _ = accts
    insert_entry(1)
    with pytest.raises(IntegrityError, match="nonzero"):
        insert_posting(1, fund, 0)
    assert counts() == (0, 0)


def test_entry_without_postings_is_refused_at_commit(accts):
    insert_entry(1)
    try:
        with pytest.raises(IntegrityError):
            db.session.commit()
    finally:
        db.session.rollback()
        db.session.execute(text("DELETE FROM ledger_entries"))
        db.session.commit()


def test_deleting_every_posting_of_an_entry_is_refused_at_commit(accts):
    # given: a committed, balanced entry
    fund, cash, _ = accts
    insert_entry(1)
    insert_posting(1, fund, -500)
    insert_posting(1, cash, 500)
    db.session.commit()
    # when: both legs are deleted, leaving an empty entry (past the refusal of any delete: the commit's check too)
    db.session.execute(text("ALTER TABLE ledger_postings DISABLE TRIGGER ledger_postings_never_change"))
    try:
        db.session.execute(text("DELETE FROM ledger_postings WHERE entry_id = 1"))
        # then: the commit is refused and the entry keeps its postings
        with pytest.raises(IntegrityError, match="at least two"):
            db.session.commit()
    finally:
        db.session.rollback()
    assert counts() == (1, 2)
