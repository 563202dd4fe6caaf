"""Balance marks (ledger/marks.py): a balance is its mark plus the postings after it, exact at every moment, on SQLite
and PostgreSQL; a mark never covers a posting a transaction still open may commit."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from sqlalchemy import func, select, text

import ledger
from jobs.ledger_marks import fold_ledger_marks
from jobs.scheduler import JOBS
from ledger import Leg
from ledger.marks import fold_marks
from models import AccountKind as K
from models import LedgerAccount, LedgerBalanceMark, LedgerMarkProgress, LedgerPosting, db
from tests.concurrency import together
from tests.conftest import on_postgres

_keys = itertools.count(1)


@pytest.fixture(autouse=True)
def settle_at_once(monkeypatch):
    """An end is folded as soon as no transaction older than it is open (the job waits two seconds more)."""
    import ledger.marks as marks_module

    monkeypatch.setattr(marks_module, "SETTLE_AFTER_S", 0.0)


@pytest.fixture
def accounts(app, make_merchant, make_user):
    merchant, user = make_merchant(), make_user()
    found = {
        "fund": ledger.platform_account(K.PLATFORM_MARKETING_FUND),
        "deposit": ledger.account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant.id),
        "cash": ledger.account(K.USER_CASH, "user", user.id),
        "quiet": ledger.account(K.MERCHANT_MARKETING_CREDIT, "merchant", merchant.id),
    }
    db.session.commit()
    return {name: acct.id for name, acct in found.items()}


def move(from_id: int, to_id: int, fen: int) -> None:
    legs = [Leg(db.session.get(LedgerAccount, from_id), -fen), Leg(db.session.get(LedgerAccount, to_id), fen)]
    ledger.post_entry(f"marks:{next(_keys)}", "test", legs)


def summed() -> dict[int, int]:
    """Every account's balance the slow way: all its postings."""
    rows = db.session.execute(
        select(LedgerPosting.account_id, func.sum(LedgerPosting.amount)).group_by(LedgerPosting.account_id)
    )
    return {account_id: int(total) for account_id, total in rows}


def assert_exact(accounts: dict[str, int]) -> None:
    slow = summed()
    ids = list(accounts.values())
    assert {i: ledger.balance(db.session.get(LedgerAccount, i)) for i in ids} == {i: slow.get(i, 0) for i in ids}
    assert ledger.balances([db.session.get(LedgerAccount, i) for i in ids]) == {i: slow.get(i, 0) for i in ids}


def fold_until_settled(job=None, *, count: bool = False):
    """Folds as the job runs them until every posting is in the marks: on PostgreSQL the first chooses the end and a
    later one folds it, once every transaction that held a transaction id then has ended (anywhere on the server:
    an autovacuum's ANALYZE, say, for a few milliseconds)."""
    highest = db.session.execute(select(func.coalesce(func.max(LedgerPosting.id), 0))).scalar_one()
    db.session.commit()
    for runs in range(1, 201):
        done = (job or fold_marks)()
        db.session.commit()
        if db.session.get(LedgerMarkProgress, 1).upto_posting_id >= highest:
            return runs if count else done
        time.sleep(0.02)
    raise AssertionError(f"the marks never reached posting {highest}")


def marks() -> dict[int, tuple[int, int]]:
    rows = db.session.execute(
        select(LedgerBalanceMark.account_id, LedgerBalanceMark.balance, LedgerBalanceMark.upto_posting_id)
    )
    return {a: (b, u) for a, b, u in rows}


def test_a_balance_is_its_mark_and_the_postings_after_it(accounts):
    a = accounts
    move(a["fund"], a["deposit"], 100_00)
    move(a["deposit"], a["cash"], 30_00)
    db.session.commit()
    assert_exact(a)  # no mark yet: every posting
    done = fold_until_settled()
    highest = db.session.execute(select(func.max(LedgerPosting.id))).scalar_one()
    assert done["upto"] == highest and done["folded"] > 0
    assert marks()[a["deposit"]] == (70_00, highest)
    assert a["quiet"] not in marks()  # no postings, no mark: 0
    assert_exact(a)
    # after the mark: later postings are added to it
    move(a["deposit"], a["cash"], 5_00)
    move(a["fund"], a["quiet"], 1)
    db.session.commit()
    assert ledger.balance(db.session.get(LedgerAccount, a["deposit"])) == 65_00
    assert_exact(a)
    fold_until_settled()
    assert marks()[a["deposit"]][0] == 65_00 and marks()[a["quiet"]][0] == 1
    assert marks()[a["cash"]] == (35_00, db.session.execute(select(func.max(LedgerPosting.id))).scalar_one())
    assert_exact(a)
    # nothing new: a fold changes nothing
    before = marks()
    assert fold_until_settled()["folded"] == 0
    assert marks() == before
    assert ledger.check_ledger().ok


def test_a_balance_read_sees_what_the_session_holds_unwritten(accounts):
    # the read is a Core statement: it writes the session's pending rows first, as the ORM query it replaced did
    a = accounts
    move(a["fund"], a["deposit"], 9_00)
    fold_until_settled()
    db.session.add(
        LedgerPosting(
            entry_id=db.session.execute(select(func.max(LedgerPosting.entry_id))).scalar_one(),
            account_id=a["deposit"],
            amount=1,
        )
    )
    db.session.add(
        LedgerPosting(
            entry_id=db.session.execute(select(func.max(LedgerPosting.entry_id))).scalar_one(),
            account_id=a["fund"],
            amount=-1,
        )
    )
    assert ledger.balance(db.session.get(LedgerAccount, a["deposit"])) == 9_01
    db.session.rollback()


def test_a_fold_over_postings_already_in_the_marks_adds_nothing_twice(accounts):
    # the progress row lost or reset (a repair, a partial restore): the next folds start from 0 again
    a = accounts
    move(a["fund"], a["deposit"], 2_00)
    db.session.commit()
    fold_until_settled()
    move(a["fund"], a["deposit"], 3_00)
    db.session.commit()
    db.session.execute(text("DELETE FROM ledger_mark_progress"))
    db.session.commit()
    fold_until_settled()
    assert marks()[a["deposit"]][0] == 5_00
    assert_exact(a)
    assert ledger.check_ledger().ok


def test_a_long_history_is_folded_in_bounded_steps(accounts, monkeypatch):
    import ledger.marks as marks_module

    monkeypatch.setattr(marks_module, "FOLD_MOST", 3)
    monkeypatch.setattr(marks_module, "STEPS_PER_RUN", 2)  # 22 postings: four runs, each a short transaction
    a = accounts
    for fen in range(1, 12):
        move(a["fund"], a["deposit"], fen)
    db.session.commit()
    runs = fold_until_settled(count=True)
    assert runs >= 4
    assert marks()[a["deposit"]][0] == sum(range(1, 12))
    assert_exact(a)


@pytest.mark.skipif(not on_postgres(), reason="PostgreSQL numbers postings as they are taken")
@pytest.mark.parametrize("its_start", ["known", "unknown"])
def test_a_transaction_still_open_holds_the_fold_back_until_it_ends(app, accounts, its_start):
    """PostgreSQL numbers postings as they are taken, not as they commit: posting 100 of a transaction still open is
    invisible while posting 101 is committed. A mark folded up to 101 then would leave 100 out for good."""
    a = accounts
    move(a["fund"], a["deposit"], 1_00)
    db.session.commit()
    # given: another connection takes posting ids and has not committed
    other = db.engine.connect()
    held = other.begin()
    if its_start == "unknown":  # pg_stat_activity shows no start (as for another role's session): counted as before
        other.execute(text("SET LOCAL track_activities = off"))
    entry = other.execute(
        text(
            "INSERT INTO ledger_entries (idempotency_key, memo, unit, created_at)"
            " VALUES ('open', 'open', 'fen', now()) RETURNING id"
        )
    ).scalar_one()
    other.execute(
        text("INSERT INTO ledger_postings (entry_id, account_id, amount) VALUES (:e, :f, -700), (:e, :d, 700)"),
        {"e": entry, "f": a["fund"], "d": a["deposit"]},
    )
    try:
        # and: this session commits postings with higher ids after it
        move(a["fund"], a["deposit"], 2_00)
        db.session.commit()
        first = fold_marks()  # the end: the highest id now (the open transaction's are below it)
        db.session.commit()
        # when: the job runs again while the other transaction is open
        second = fold_marks()
        db.session.commit()
        # then: nothing past the open transaction's start is folded
        assert second["folded"] == 0 and second["upto"] == first["upto"]
        assert_exact(a)
    finally:
        held.commit()  # it commits late: ids below the committed ones appear
        other.close()
    # when: it has ended, the fold goes on
    fold_until_settled()
    assert_exact(a)
    assert marks()[a["deposit"]][0] == 1_00 + 7_00 + 2_00
    assert ledger.check_ledger().ok


def test_concurrent_postings_and_folds_lose_nothing(app, accounts):
    """Posters and folders at once (SQLite's one writer, PostgreSQL's many): every balance exact afterwards."""
    a = accounts
    stop = threading.Event()

    def work(i: int):
        if i == 0:  # a folder, as the job on one node and then another
            runs = 0
            while not stop.is_set() or runs < 2:
                fold_marks()
                db.session.commit()
                runs += 1
            return runs
        try:
            for n in range(15):
                move(a["fund"], a["deposit"] if n % 2 else a["cash"], i * 100 + n)
                db.session.commit()
        finally:
            if i == 3:
                stop.set()
        return None

    results = together(4, work, app=app)
    assert not [r for r in results if isinstance(r, Exception)], results
    fold_until_settled()
    assert_exact(a)
    assert ledger.check_ledger().ok


def test_the_check_reports_a_mark_that_disagrees_with_its_postings(app, accounts):
    a = accounts
    move(a["fund"], a["deposit"], 3_00)
    db.session.commit()
    fold_until_settled()
    db.session.execute(
        text("UPDATE ledger_balance_marks SET balance = balance + 1 WHERE account_id = :a"), {"a": a["deposit"]}
    )
    db.session.commit()
    report = ledger.check_ledger()
    assert any(f"account {a['deposit']}'s balance mark holds 301 up to posting" in v for v in report.violations)
    result = app.test_cli_runner().invoke(args=["ledger", "check"])
    assert result.exit_code == 1
    db.session.execute(
        text("UPDATE ledger_balance_marks SET balance = balance - 1 WHERE account_id = :a"), {"a": a["deposit"]}
    )
    db.session.commit()
    assert ledger.check_ledger().ok


@pytest.mark.skipif(not on_postgres(), reason="PostgreSQL numbers postings as they are taken")
def test_an_end_waits_its_seconds_and_a_read_only_transaction_holds_nothing_back(app, accounts, monkeypatch):
    import ledger.marks as marks_module

    a = accounts
    move(a["fund"], a["deposit"], 1_00)
    db.session.commit()
    reader = db.engine.connect()
    reader.begin()
    reader.execute(select(func.count(LedgerPosting.id))).scalar_one()  # open, read only
    try:
        monkeypatch.setattr(marks_module, "SETTLE_AFTER_S", 3600.0)
        first = fold_marks()
        db.session.commit()
        assert fold_marks()["folded"] == 0  # too soon
        db.session.commit()
        monkeypatch.setattr(marks_module, "SETTLE_AFTER_S", 0.0)
        assert fold_until_settled()["upto"] > first["upto"]  # the reader did not hold it back
    finally:
        reader.close()
    assert_exact(a)


def test_rebuild_marks_forgets_them_and_the_job_folds_them_again(app, accounts):
    a = accounts
    move(a["fund"], a["deposit"], 6_00)
    move(a["deposit"], a["cash"], 1_00)
    db.session.commit()
    fold_until_settled()
    before = {account: balance for account, (balance, _) in marks().items()}
    result = app.test_cli_runner().invoke(args=["ledger", "rebuild-marks"])
    assert result.exit_code == 0, result.output
    assert "3 balance marks forgotten" in result.output
    db.session.rollback()
    assert marks() == {}
    assert_exact(a)  # every posting read meanwhile
    fold_until_settled()
    assert {account: balance for account, (balance, _) in marks().items()} == before
    assert_exact(a)


def test_the_job_runs_every_minute_and_commits(app, accounts):
    assert (fold_ledger_marks, 60) in JOBS
    a = accounts
    move(a["fund"], a["cash"], 4_00)
    db.session.commit()
    fold_until_settled(job=fold_ledger_marks)
    db.session.rollback()  # what the job did is committed
    assert marks()[a["cash"]][0] == 4_00
    assert (
        db.session.get(LedgerMarkProgress, 1).upto_posting_id
        == db.session.execute(select(func.max(LedgerPosting.id))).scalar_one()
    )
