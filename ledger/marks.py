"""Balance marks: an account's balance folded up to a posting, so reading a balance costs the same whatever the history.

A balance is the sum of the account's postings (``ledger.accounts.balance``). Summed on every read, a merchant's
deposit (read by every claim and payment of the campaigns it funds), a platform account or a busy person's cash grows
slower with each posting. A mark keeps the sum up to a posting id; a balance is the mark plus the postings after it,
read by the index on (account, id): only those.

``fold_marks`` (a job, every minute, any number of nodes: the progress row is locked) adds the postings with ids in
(folded so far, end] to each account's mark, by account, a statement per 200,000 ids and at most ten a run (a long
history's first fold goes on over several runs, each a short transaction). It never writes an account's balance on
the money path: postings go in as before, with no lock of the account's row.

What makes a mark safe is its end. Posting ids come from a sequence (PostgreSQL) in the order they are taken, but
transactions commit in another order: when posting 101 is visible, posting 100 may belong to a transaction still
open, and a mark folded up to 101 would leave 100 out for good. So an end is chosen first (``candidate_id``: the
highest posting id; then ``candidate_at``, the database's clock, and ``candidate_xmax``, its next transaction id) and
folded only once every transaction that held a transaction id at that moment has ended (the server's oldest running
one is at least ``candidate_xmax``: whatever its role or settings, prepared ones too), no transaction of the database
that began before ``candidate_at`` holds one now (its start unknown counts as before), and two seconds have passed.
Every id up to the end was taken before that moment by a transaction that wrote the posting's row in the same
statement, now committed or rolled back. A fold adds to a mark only postings above the mark's own end. A read-only
transaction, however long, holds nothing back; one that wrote and stays open holds the marks where they are (balances
stay exact, reads longer).

On SQLite a writer holds the database's one write lock until it commits and the ids it takes are above every
committed one: the end is folded at once. Postings are never changed or deleted (PostgreSQL refuses it by trigger,
migration 0036), so a mark, once folded, stays true; ``ledger check`` compares every mark with its postings again.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache

from sqlalchemy import BigInteger, Float, bindparam, column, func, select, text

from models import LedgerMarkProgress, LedgerPosting, db, utcnow
from models.base import UTCDateTime
from models.sql import WRITES, execute_core

PROGRESS_ID = 1
SETTLE_AFTER_S = 2.0  # an end is folded no sooner than this after it was chosen (PostgreSQL)
FOLD_MOST = 200_000  # posting ids per statement: a first fold of a long history goes in bounded steps
STEPS_PER_RUN = 10  # statements per run (one transaction); a longer history goes on in the next runs


def fold_marks(now: datetime | None = None) -> dict[str, int]:
    """Fold what is safe to fold into the marks and choose the next end, in the caller's transaction (the progress
    row locked until it ends: commit soon). ``{"folded": the span of posting ids folded, "upto": the id folded to,
    "waiting_s": how long the end chosen has waited for transactions older than it (PostgreSQL)}``."""
    now = now or utcnow()
    progress = _progress()
    postgres = db.session.get_bind().dialect.name == "postgresql"
    if not postgres:  # SQLite: the highest committed id is safe now (one writer at a time, ids above it)
        progress.candidate_id, progress.candidate_at = _highest(), now
    start = progress.upto_posting_id
    due = progress.candidate_id is not None and progress.candidate_id > start
    settled = due and (not postgres or _settled(progress.candidate_at, progress.candidate_xmax))
    if settled:
        for _ in range(STEPS_PER_RUN):
            if progress.upto_posting_id >= progress.candidate_id:
                break
            end = min(progress.candidate_id, progress.upto_posting_id + FOLD_MOST)
            execute_core(_fold_statement(), {"lo": progress.upto_posting_id, "hi": end, "now": now})
            progress.upto_posting_id = end
    waiting = 0
    if postgres and progress.candidate_id is not None and progress.candidate_id > progress.upto_posting_id:
        if not settled:  # still not safe (an end safe but not folded to yet, a long history's first fold, waits not)
            waiting = max(0, int((now - progress.candidate_at).total_seconds()))
    elif postgres:  # the next end: the highest id now, then the clock and the next transaction id after it
        progress.candidate_id = _highest()
        progress.candidate_at, progress.candidate_xmax = db.session.execute(_horizon()).one()
    return {"folded": progress.upto_posting_id - start, "upto": progress.upto_posting_id, "waiting_s": waiting}


def forget_marks() -> int:
    """Every mark and the progress gone (``flask ledger rebuild-marks``, after ``ledger check`` found a mark wrong):
    balances read every posting until the folds are done again. How many marks there were."""
    _progress()  # locked: no fold runs meanwhile
    forgotten = execute_core(text("DELETE FROM ledger_balance_marks"), writes=True).rowcount
    execute_core(text("DELETE FROM ledger_mark_progress"), writes=True)
    return forgotten


def _progress() -> LedgerMarkProgress:
    """The progress row, locked (made when missing): one fold at a time across nodes."""
    execute_core(_progress_insert(), {"id": PROGRESS_ID})
    return db.session.execute(
        select(LedgerMarkProgress).where(LedgerMarkProgress.id == PROGRESS_ID).with_for_update()
    ).scalar_one()


def _highest() -> int:
    return int(db.session.execute(select(func.coalesce(func.max(LedgerPosting.id), 0))).scalar_one())


def _settled(at: datetime, xmax: int | None) -> bool:
    """PostgreSQL: every transaction that held a transaction id when the end was chosen has ended (the server's
    oldest running one is at least ``xmax``, the next id then: whatever its role, its settings, and prepared ones
    too); no transaction of this database that began before ``at`` holds one now (one that took a posting id in
    the instant before getting its transaction id; its start unknown to us, another role's say, counts as before);
    and ``SETTLE_AFTER_S`` have passed. ``pg_stat_activity`` is read afresh (a transaction keeps its first look)."""
    if xmax is None:
        return False
    db.session.execute(text("SELECT pg_stat_clear_snapshot()"))
    params = {"at": at, "xmax": xmax, "after": SETTLE_AFTER_S}
    return bool(db.session.execute(_settled_statement(), params).scalar_one())


@cache
def _horizon():
    """The database's clock, then the next transaction id (``pg_snapshot_xmax``: every id below it was assigned)."""
    return text("SELECT clock_timestamp(), pg_snapshot_xmax(pg_current_snapshot())::text::bigint").columns(
        column("at", UTCDateTime), column("xmax", BigInteger)
    )


@cache
def _settled_statement():
    sql = """
        SELECT clock_timestamp() >= :at + make_interval(secs => :after)
           AND pg_snapshot_xmin(pg_current_snapshot())::text::bigint >= :xmax
           AND NOT EXISTS (
            SELECT 1 FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL
               AND (xact_start IS NULL OR xact_start < :at)
        )
    """
    return text(sql).bindparams(
        bindparam("at", type_=UTCDateTime), bindparam("xmax", type_=BigInteger), bindparam("after", type_=Float)
    )


@cache
def _progress_insert():
    sql = "INSERT INTO ledger_mark_progress (id, upto_posting_id) VALUES (:id, 0) ON CONFLICT (id) DO NOTHING"
    return text(sql).execution_options(**WRITES)


@cache
def _fold_statement():
    """Each account's postings with ids in (lo, hi] added to its mark, which then reaches ``hi``; only those above its
    mark's own end (a fold again over a range, after the progress row was lost or reset, adds nothing twice)."""
    sql = """
        INSERT INTO ledger_balance_marks (account_id, balance, upto_posting_id, marked_at)
        SELECT p.account_id, sum(p.amount), :hi, :now FROM ledger_postings p
         WHERE p.id > :lo AND p.id <= :hi
           AND p.id > coalesce((SELECT m.upto_posting_id FROM ledger_balance_marks m
                                 WHERE m.account_id = p.account_id), 0)
         GROUP BY p.account_id
        ON CONFLICT (account_id) DO UPDATE SET
            balance = ledger_balance_marks.balance + excluded.balance,
            upto_posting_id = excluded.upto_posting_id,
            marked_at = excluded.marked_at
    """
    return (
        text(sql)
        .bindparams(
            bindparam("lo", type_=BigInteger), bindparam("hi", type_=BigInteger), bindparam("now", type_=UTCDateTime)
        )
        .execution_options(**WRITES)
    )
