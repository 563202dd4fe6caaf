"""``python -m bench balance``: a balance read against an account with a long history, folded and not, against a short
one, in the same run (SQLite, and PostgreSQL when ``BENCH_DATABASE_URL`` is set).

A balance is its mark plus the postings after it (``ledger.marks``). Seeds two merchant deposits: one with
``BENCH_SHORT_POSTINGS`` (default 1,000) postings, one with ``BENCH_POSTINGS`` (default 200,000), then reads
``ledger.balance`` of each for ``BENCH_SECONDS`` per round, in alternating rounds: first with no mark (every read sums
the whole history: what every read did before marks), then after the marks are folded and ``TAIL`` more postings
were added to each after them (a mark is up to a minute behind). Flat is the long history's read costing what the
short one's does (1.00×). The balances are compared with the plain sum of postings before a figure is printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import func, select, text

from bench import harness
from models import LedgerAccount, LedgerPosting, Merchant, db

LONG = harness.env_int("BENCH_POSTINGS", 200_000)
SHORT = harness.env_int("BENCH_SHORT_POSTINGS", 1_000)
SECONDS = harness.env_float("BENCH_SECONDS", 1.0)
ROUNDS = harness.env_int("BENCH_ROUNDS", 3)
TAIL = 50  # postings after the mark when the folded reads are measured
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def run() -> Iterator[str]:
    for backend, figures in harness.on_each_backend("balance", measure):
        yield line(backend, *figures)


def line(backend: str, short: float, unfolded: float, short_folded: float, folded: float) -> str:
    return (
        f"balance reads ({backend}; a deposit with {LONG:,} postings vs one with {SHORT:,}, {TAIL} after the mark): "
        f"folded {folded:,.0f} vs {short_folded:,.0f} reads/s → cost {short_folded / folded:.2f}x (flat: 1.00x); "
        f"without marks {unfolded:,.0f} vs {short:,.0f} reads/s → cost {short / unfolded:.2f}x (every read summing the "
        f"whole history, as before marks)"
    )


def measure(url: str) -> tuple[float, float, float, float]:
    with harness.simulator_app(url):
        fund, short, long_ = seed()
        short_rate, unfolded = _alternating(short, long_)
        _fold_all()
        _postings(short, fund, TAIL, "tail-short")  # a mark is behind by what came since its fold
        _postings(long_, fund, TAIL, "tail-long")
        short_folded, folded = _alternating(short, long_)
        return short_rate, unfolded, short_folded, folded


def _fold_all() -> None:
    """Folds as the job makes them until every posting is in the marks (PostgreSQL: the first chooses the end, a later
    one folds it once every transaction that held a transaction id then has ended)."""
    import ledger.marks

    ledger.marks.SETTLE_AFTER_S = 0.0  # the bench's own database: nobody else writes to it
    highest = db.session.execute(select(func.max(LedgerPosting.id))).scalar_one()
    for _ in range(500):
        if ledger.marks.fold_marks()["upto"] >= highest:
            db.session.commit()
            return
        db.session.commit()
        time.sleep(0.02)
    raise SystemExit(f"the marks never reached posting {highest}")


def seed() -> tuple[int, int, int]:
    import ledger
    from models import AccountKind

    shop, other = Merchant(name="bench short"), Merchant(name="bench long")
    db.session.add_all([shop, other])
    db.session.flush()
    fund = ledger.platform_account(AccountKind.PLATFORM_MARKETING_FUND).id
    short = ledger.account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id).id
    long_ = ledger.account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", other.id).id
    db.session.commit()
    harness.progress(f"balance: seeding {SHORT:,} + {LONG:,} postings")
    _postings(short, fund, SHORT, "short")
    _postings(long_, fund, LONG, "long")
    return fund, short, long_


def _postings(account_id: int, fund_id: int, count: int, label: str) -> None:
    """``count`` balanced entries of 1 fen from the fund to the account, by SQL (a series of numbers)."""
    series = (
        "SELECT generate_series(1, :n) AS n"
        if db.engine.dialect.name == "postgresql"
        else "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :n) SELECT n FROM s"
    )
    db.session.execute(
        text(
            f"INSERT INTO ledger_entries (idempotency_key, memo, unit, created_at) "  # noqa: S608 - our own SQL
            f"SELECT :label || ':' || n, 'bench', 'fen', :now FROM ({series}) AS series"
        ),
        {"n": count, "label": label, "now": NOW},
    )
    for acct, amount in ((account_id, 1), (fund_id, -1)):
        db.session.execute(
            text(
                "INSERT INTO ledger_postings (entry_id, account_id, amount) SELECT id, :a, :amount FROM ledger_entries "
                "WHERE idempotency_key LIKE :prefix ORDER BY id"
            ),
            {"a": acct, "amount": amount, "prefix": f"{label}:%"},
        )
    db.session.commit()


def _alternating(short: int, long_: int) -> tuple[float, float]:
    """Reads per second of each account's balance, in alternating rounds; checked against the plain sums first."""
    import ledger

    accounts = {a: db.session.get(LedgerAccount, a) for a in (short, long_)}
    for acct_id, acct in accounts.items():
        plain = db.session.execute(
            select(func.coalesce(func.sum(LedgerPosting.amount), 0)).where(LedgerPosting.account_id == acct_id)
        ).scalar_one()
        if ledger.balance(acct) != int(plain):
            raise SystemExit(f"balance of account {acct_id}: {ledger.balance(acct)}, its postings sum to {plain}")
    rates: dict[int, list[float]] = {short: [], long_: []}
    for _ in range(ROUNDS):
        for acct_id, acct in accounts.items():
            reads, start = 0, time.perf_counter()
            while time.perf_counter() - start < SECONDS:
                ledger.balance(acct)
                reads += 1
            rates[acct_id].append(reads / (time.perf_counter() - start))
        db.session.rollback()
    return statistics.median(rates[short]), statistics.median(rates[long_])
