"""The rollup job and ``flask insights rebuild``: the writer of the tables ``insights.reports`` reads.

A day is rebuilt whole in one transaction: its ``insights_days`` row is taken with a row lock (created
first when missing, ``ON CONFLICT DO NOTHING``), its counters and people are deleted and inserted again
from ``insights.rollups.roll_up_day``. Rebuilding is idempotent, and two nodes rebuilding the same day
take turns on the lock (the second one reads what the first committed). Every event counts on its own
Beijing day, so a day that has ended does not change: the job rebuilds only days not yet ``final``
(today and the two days before it on every run — see ``FINAL_AFTER`` — and any day never built: the
catch-up, which also runs once when the jobs start). A payment or a payout counts on WeChat's time of it, which
may be days before we learn of it (a notification lost, a transfer's result found by a query or an operator
days later): a final day such an event recorded since the job's previous run belongs to is rebuilt too
(``late_days``, read from the ledger entries' own dates).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta

import click
from flask.cli import AppGroup
from sqlalchemy import delete, select, update

from insights.rollups import beijing_day, day_bounds, first_data_day, people_rows, roll_up_day
from jobs.payouts import row_failed
from models import (
    InsightsDaily,
    InsightsDay,
    InsightsPerson,
    LedgerEntry,
    Order,
    Payout,
    Refund,
    db,
    unit_of_work,
    utcnow,
)
from models.sql import insert_ignoring, insert_rows

log = logging.getLogger(__name__)
# A day is final once rebuilt this long after it ended: WeChat retries a payment or refund notification
# for up to 24 h (and query_unnotified_payments catches the rest within the hour), and the payment is
# counted on WeChat's success_time, so a late notification lands on a day that ended up to a day ago.
FINAL_AFTER = timedelta(hours=48)


def rebuild_day(day: date, now: datetime) -> int:
    """Rebuild one Beijing day's rollups in one transaction (commits); returns the counter rows written."""
    final = now >= day_bounds(day)[1] + FINAL_AFTER
    with unit_of_work():
        insert_ignoring(InsightsDay.__table__, [{"day": day, "rolled_at": now, "final": False}], ("day",))
        db.session.execute(select(InsightsDay.day).where(InsightsDay.day == day).with_for_update())
        rollup = roll_up_day(day)
        rows, people = rollup.rows(), people_rows(rollup)
        db.session.execute(delete(InsightsDaily).where(InsightsDaily.day == day))
        db.session.execute(delete(InsightsPerson).where(InsightsPerson.day == day))
        insert_rows(InsightsDaily.__table__, rows)
        insert_rows(InsightsPerson.__table__, people)
        db.session.execute(update(InsightsDay).where(InsightsDay.day == day).values(rolled_at=now, final=final))
    return len(rows)


def rebuild(days: Iterable[date], now: datetime, progress: Callable[[date], None] | None = None) -> Counter:
    results: Counter = Counter()
    for day in days:
        results["rows"] += rebuild_day(day, now)
        results["days"] += 1
        if progress is not None:
            progress(day)
    return results


# Events dated by WeChat's time, by the key of the ledger entry their recording posts (dated when recorded). A refund
# is found by when it was applied here (``Refund.applied_at``): one of a partner order whose money WeChat had already
# released posts no ledger entry of its own, and it counts on its success_time, which a lost notification may leave to
# a query days later.
LATE_EVENTS = (("order:%:sale", Order, Order.paid_at), ("payout:%:paid", Payout, Payout.finished_at))
LATE_MARGIN = timedelta(minutes=10)  # an entry dated before the run but committed after its read


def late_days(since: datetime, before: datetime) -> set[date]:
    """The Beijing days of the payments, payouts and refunds recorded since ``since`` that WeChat dated before
    ``before`` (the end of the last final day: only those can be late; the rest are rebuilt anyway)."""
    days: set[date] = set()
    for pattern, model, when in LATE_EVENTS:
        keys = db.session.execute(
            select(LedgerEntry.idempotency_key).where(
                LedgerEntry.created_at >= since, LedgerEntry.idempotency_key.like(pattern)
            )
        ).scalars()
        ids = sorted({int(k.split(":")[1]) for k in keys if k.split(":")[1].isdecimal()})
        for chunk in range(0, len(ids), 1000):
            stmt = select(when).where(model.id.in_(ids[chunk : chunk + 1000]), when < before)
            days.update(beijing_day(at if at.tzinfo else at.replace(tzinfo=UTC)) for at in db.session.scalars(stmt))
    refunds = select(Refund.finished_at).where(Refund.applied_at >= since, Refund.finished_at < before)
    days.update(beijing_day(at if at.tzinfo else at.replace(tzinfo=UTC)) for at in db.session.scalars(refunds))
    return days


def due_days(now: datetime) -> list[date]:
    """Days not final yet, from the first day with data to today (Beijing), and the final days of payments, refunds
    and payouts recorded since the previous run (the rolled time of the latest day built) that WeChat dated there."""
    today = beijing_day(now)
    first = first_data_day() or today
    final = set(
        db.session.execute(select(InsightsDay.day).where(InsightsDay.final, InsightsDay.day >= first)).scalars()
    )
    last_run = db.session.execute(select(InsightsDay.rolled_at).order_by(InsightsDay.day.desc()).limit(1)).scalar()
    late = set()
    if last_run is not None and final:
        late = late_days(last_run - LATE_MARGIN, day_bounds(max(final))[1]) & final
    db.session.rollback()  # end the read before the per-day transactions
    return sorted({d for d in days_between(first, today) if d not in final} | late)


def days_between(start: date, end: date) -> list[date]:
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def insights_rollup_job() -> Counter:
    """The scheduled job (and the catch-up at start): rebuild every day that is not final yet. A day whose rebuild
    fails is rolled back, logged and alerted once (``insights_day_failed``) and tried again next run; the days after
    it, today's included, are rebuilt all the same."""
    now = utcnow()
    results: Counter = Counter()
    for day in due_days(now):
        try:
            results += rebuild([day], now)
        except Exception as exc:
            row_failed("insights_day_failed", "insights_day", day.isoformat(), exc)
            results["failed"] += 1
            reopen(day)
    return results


def reopen(day: date) -> None:
    """A day whose rebuild failed is no longer final, so the next run rebuilds it: a final day is rebuilt only for the
    late events recorded since the previous run, and this run's are behind the next one."""
    try:
        with unit_of_work():
            db.session.execute(update(InsightsDay).where(InsightsDay.day == day).values(final=False))
    except Exception:  # the database itself failing: the run's own rolled time did not move either
        log.exception("insights day %s could not be reopened", day.isoformat())


insights_cli = AppGroup("insights", help="Insights: the daily rollups behind the reports.")


@insights_cli.command("rebuild")
@click.option("--from", "start", type=click.DateTime(["%Y-%m-%d"]), required=True, help="First Beijing day.")
@click.option("--to", "end", type=click.DateTime(["%Y-%m-%d"]), required=True, help="Last Beijing day (included).")
def rebuild_command(start: datetime, end: datetime) -> None:
    """Rebuild the rollups of the Beijing days from --from to --to (idempotent)."""
    if end < start:
        raise click.BadParameter("--to is before --from", param_hint="--to")
    days = days_between(start.date(), end.date())
    with click.progressbar(  # on stderr, like every other progress line: stdout stays the result
        days, label="rebuilding", show_pos=True, item_show_func=lambda d: d and str(d), file=sys.stderr
    ) as bar:
        results = rebuild(bar, utcnow())
    click.echo(f"rebuilt {results['days']} days, {results['rows']} counter rows")
