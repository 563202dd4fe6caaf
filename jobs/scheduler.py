"""APScheduler 3 set-up: ``flask jobs run`` (blocking, one process per node) and the demo's in-process start.

Memory job store: the schedule is code, not data, and every node runs the
same jobs; the jobs themselves are safe to run on several nodes at once.
``RUN_JOBS_IN_PROCESS=1`` (``make run`` only) starts a background scheduler
with the first request of a web process, never under the reloader, never in
tests or other CLI commands.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from time import monotonic
from typing import Any

import click
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from jobs.audiences import audience_runs_job
from jobs.challenge_posts import post_challenge_standings, update_chat_tool_cards
from jobs.challenges import settle_challenges
from jobs.chat_commands import send_chat_replies
from jobs.expiring import expire_packets_and_conditions, tell_expiring_packets
from jobs.insights import insights_cli, insights_rollup_job
from jobs.invoices import invoice_fees
from jobs.ledger_marks import fold_ledger_marks
from jobs.messages import apply_messages
from jobs.notices import dispatch_notices
from jobs.orders import close_expired_orders, query_stuck_refunds, query_unnotified_payments
from jobs.payouts import (
    check_unclaimed_red_packets,
    daily_reconciliation,
    deliver_alerts,
    dispatch_payouts,
    install_job_context,
    payout_rails,
    settle_covered_debts,
)
from jobs.profit_sharing import query_profit_shares, share_due_orders
from jobs.reconcile_cli import reconcile_command
from jobs.retention import purge_kept_rows_job
from jobs.risk import (
    collusion_job,
    fill_order_networks_job,
    lift_expired_bans_job,
    purge_behaviour_events_job,
    release_lifted_bans_job,
    spike_job,
)
from models import alert_once, db, unit_of_work
from models.alerts import noting_busy_rows, resolve_alerts
from models.base import BEIJING
from models.sql import is_busy

log = logging.getLogger(__name__)

JOBS: tuple[tuple[Callable, int], ...] = (
    (close_expired_orders, 60),
    (query_unnotified_payments, 60),
    (query_stuck_refunds, 120),
    (dispatch_payouts, 2),  # a run goes on while there is backlog (up to a minute); this is the idle check
    (check_unclaimed_red_packets, 900),
    (expire_packets_and_conditions, 300),
    (settle_covered_debts, 300),  # receivables a balance has covered since (a payout back in it, ...)
    (deliver_alerts, 30),
    (lift_expired_bans_job, 60),
    (release_lifted_bans_job, 30),  # a lifted ban's held rebates, a batch of orders per transaction (a run: 50 s)
    (fill_order_networks_job, 300),  # orders of before migration 0046 get their network (a ban's lift finds them)
    (spike_job, 300),  # folds only whole hours, each once
    (collusion_job, 3600),
    (insights_rollup_job, 300),  # today's rollups again; days never built (the catch-up) too
    (apply_messages, 3),  # what WeChat pushed, applied after the answer; a run goes on while rows are due
    (send_chat_replies, 5),  # the bots' answers to official-account commands (customer-service texts)
    (tell_expiring_packets, 600),  # "packet expiring" notices, a day ahead (idempotent, any number of nodes)
    (audience_runs_job, 10),  # batch issues to audiences, a chunk per transaction
    (dispatch_notices, 5),  # a run goes on while notices are due (up to 30 s)
    (settle_challenges, 60),  # start, cancel and settle challenges, one per transaction; loser packets' rest
    (post_challenge_standings, 60),  # groups' daily leaderboards and results (WeCom webhook, once per day)
    (update_chat_tool_cards, 15),  # chat-tool group challenge cards: who joined, started / ended
    (invoice_fees, 3600),  # last month's fee invoices, once per merchant and month (the credit applied first)
    (share_due_orders, 60),  # service-provider mode: profit sharing of orders whose refund window closed
    (query_profit_shares, 60),  # … and the shares' asynchronous results
    (fold_ledger_marks, 60),  # balances' marks folded up to what is safe (ledger/marks.py): reads stay short
)
RUN_AT_START = (insights_rollup_job,)  # the rollups' catch-up: at once, not an interval after the start
# Bills for day D are ready from 09:00 on D+1, Beijing time: reconcile at 10:30.
# The behaviour trail's old events go at night, when the shop is quiet.
DAILY_JOBS: tuple[tuple[Callable, dict], ...] = (
    (daily_reconciliation, {"hour": 10, "minute": 30}),
    (purge_behaviour_events_job, {"hour": 4, "minute": 10}),
    (purge_kept_rows_job, {"hour": 4, "minute": 20}),  # old pushed messages and notices (jobs/retention.py)
)
# Jobs whose interval is a setting (the default above is the setting's default).
CONFIGURED_INTERVALS = {
    "insights_rollup_job": "INSIGHTS_ROLLUP_SECONDS",
    "settle_challenges": "CHALLENGE_SETTLE_SECONDS",
}
# Jobs that claim no rows before calling out: two nodes' runs at once each sent every alert to the robot (the on-call
# paged twice for each while a slow webhook kept the first run going). One node at a time runs them (``one_node``).
# The daily reconciliation too: its 10:30 fires on every node at once, and each node's run made the new day's runs
# (unique by day, kind and sub-merchant): all but one failed on the others' rows every day ("job failed", their
# catch-up and ledger check never run), after each had asked WeChat for the same bills.
ONE_NODE_AT_A_TIME = frozenset({"deliver_alerts", "daily_reconciliation"})
JOB_LEASE_CLASS = 0x4A42  # PostgreSQL advisory lock keys of a job's run ("JB", then the job name's CRC-32)
jobs_cli = AppGroup("jobs", help="Scheduled jobs.")


def interval_of(app: Flask, job: Callable, seconds: int) -> int:
    """How often ``job`` runs in this app: its setting when it has one (``CONFIGURED_INTERVALS``), else ``seconds``."""
    return app.config.get(CONFIGURED_INTERVALS.get(job.__name__, ""), seconds)


@contextmanager
def one_node(name: str) -> Iterator[bool]:
    """Whether this run of the job ``name`` may go on: always, unless it is one of ``ONE_NODE_AT_A_TIME`` and another
    node's run of it holds its lease. The lease is a PostgreSQL advisory lock on a connection of its own, in
    autocommit (no transaction stays open), released when the run ends however it ends; a connection whose unlock
    failed is closed rather than pooled (its lock would have kept the job from every node), and a process that dies
    takes its connection, and the lock, with it. SQLite runs one node: granted."""
    if name not in ONE_NODE_AT_A_TIME or db.engine.dialect.name != "postgresql":
        yield True
        return
    params = {"c": JOB_LEASE_CLASS, "k": zlib.crc32(name.encode()) - 2**31}
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:c, :k)"), params).scalar())
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:c, :k)"), params)
                except Exception:
                    log.warning("job lease not released: its connection is closed", exc_info=True)
                    conn.invalidate()  # the server's session ends, and its lock with it


# A job (or one of its rows) deferred because the database was busy is a warning: one-off contention (a long writer,
# a deadlock broken once) goes through at the next run. Deferred in every run for this long, it is stuck (a lock
# holder that never lets go, a deadlock that repeats) and an operator is alerted, once per job or row and cause, the
# alert resolved when it goes through. A time, not a number of runs: the intervals go from 2 s (the dispatcher) to a
# day (the daily jobs), so N runs would page the dispatcher within seconds of one long writer, and a daily job only
# after N days. Two runs at least, a quarter of an hour apart: longer than any one-off contention (a lock is waited
# for up to DATABASE_LOCK_TIMEOUT_S, a nightly purge or a reconciliation writes for minutes), still well before a
# person's money waits noticeably.
BUSY_ALERT_AFTER = timedelta(minutes=15)
JOB_BUSY_ALERT = "job_stuck_busy"  # subject: the job's name
ROW_BUSY_ALERT = "row_stuck_busy"  # subject: "<what> <id>" as the row's own alert (``jobs.payouts.row_failed``)


class BusyWatch:
    """One job's runs in this process: since when (``monotonic``) the job, and each of its rows, has been deferred
    as busy in every run, and which were alerted. A job runs one at a time (``max_instances``): no lock needed.
    Another node watches its own runs; ``alert_once`` raises one alert between them."""

    JOB = ("", "", "")  # the key of the job as a whole

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.since: dict[tuple[str, str, str], float] = {}
        self.alerted: set[tuple[str, str, str]] = set()

    def ran(self, busy_rows: set[tuple[str, str, str]], outcome: str) -> None:
        """After a run (``outcome``: done, busy or failed) that deferred ``busy_rows`` as busy: streaks go on or end,
        and the alerts due are raised or resolved (in a transaction of their own, the session clean)."""
        now = monotonic()
        if outcome == "busy":
            self.since.setdefault(self.JOB, now)
            ended: list[tuple[str, str, str]] = []  # rows not reached this run: unknown, their streaks wait
        else:
            ended = [self.JOB] if self.JOB in self.since else []
            if outcome == "done":  # every row it did not defer went through (or is no longer due)
                ended += [key for key in self.since if key != self.JOB and key not in busy_rows]
        for key in busy_rows:
            self.since.setdefault(key, now)
        for key in ended:
            del self.since[key]
        due = [
            k for k, t in self.since.items() if k not in self.alerted and now - t >= BUSY_ALERT_AFTER.total_seconds()
        ]
        cleared = [key for key in ended if key in self.alerted]
        if not due and not cleared:
            return
        try:
            db.session.rollback()  # what the run left uncommitted is dropped, as its session's removal would have
            with unit_of_work():
                for key in cleared:
                    resolve_alerts(*self._alert(key))
                for key in due:
                    alert_once(*self._alert(key))
        except Exception:  # the database still away: said in the log, tried again after the next run
            db.session.rollback()
            log.exception("busy job alert not written", extra={"job": self.job_name})
            return
        self.alerted.difference_update(cleared)
        self.alerted.update(due)

    def _alert(self, key: tuple[str, str, str]) -> tuple[str, str, str]:
        """The alert's kind, subject and message: the same for a job or row for as long as it is stuck (the message
        names the cause, so a row stuck in two jobs is two alerts)."""
        minutes = int(BUSY_ALERT_AFTER.total_seconds() // 60)
        if key == self.JOB:
            return (
                JOB_BUSY_ALERT,
                self.job_name,
                f"job {self.job_name} has met a busy database in every run for over {minutes} minutes (a lock held "
                "that long, every pooled connection taken, a deadlock that repeats): it does nothing until it goes "
                "through. Find what holds the locks or connections (pg_stat_activity, pg_locks) and end it.",
            )
        kind, what, row_id = key
        return (
            ROW_BUSY_ALERT,
            f"{what} {row_id}",
            f"{what} {row_id} ({kind}, job {self.job_name}) has met a busy database in every run for over "
            f"{minutes} minutes (a lock on it held that long, a deadlock that repeats): it waits, undone, until it "
            "goes through. Find what holds its lock (pg_stat_activity, pg_locks) and end it.",
        )


def in_app(app: Flask, job: Callable) -> Callable[[], None]:
    watch = BusyWatch(job.__name__)

    def run() -> None:
        with app.app_context(), noting_busy_rows() as busy_rows:
            outcome = "done"
            try:
                with one_node(job.__name__) as mine:
                    if not mine:
                        log.info("job skipped: another node runs it now", extra={"job": job.__name__})
                        outcome = "skipped"
                        return
                    results = job()
                if results:
                    log.info("job done", extra={"job": job.__name__, "results": dict(results)})
            except Exception as exc:
                db.session.rollback()
                if is_busy(exc):  # the database busy for a while (a long writer, every connection taken): no bug
                    log.warning("job deferred: database busy", extra={"job": job.__name__, "error": repr(exc)[:300]})
                    outcome = "busy"
                else:
                    log.exception("job failed", extra={"job": job.__name__})
                    outcome = "failed"
            finally:
                if outcome != "skipped":
                    watch.ran(busy_rows, outcome)
                db.session.remove()

    run.__name__ = job.__name__
    return run


SKIPPED_STILL_RUNNING = 'Execution of job "%s" skipped: maximum number of running instances reached (%d)'


class SchedulerLog(logging.LoggerAdapter):
    """APScheduler's own log, but a job's "skipped: still running" said once per long run, not on every tick.

    A run that goes on for minutes (a reconciliation, a catch-up of rollups, WeChat slow during an outage) had
    APScheduler warn at every interval it was still going: every 2 s for the dispatcher, thirty lines a minute
    burying the ones that matter. The first skip of a run is said, with the job's name; the next is said again only
    after that run has ended (``ended``, a listener of the job's executed and failed events)."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("apscheduler.scheduler"), {})
        self._skipping: set[str] = set()
        self._lock = threading.Lock()

    def warning(self, msg, *args, **kwargs) -> None:
        if msg == SKIPPED_STILL_RUNNING and args:
            job_id = getattr(args[0], "id", str(args[0]))
            with self._lock:
                if job_id in self._skipping:
                    return
                self._skipping.add(job_id)
            msg = msg + "; said once until this run ends"
        super().warning(msg, *args, **kwargs)

    def ended(self, event: JobExecutionEvent) -> None:
        with self._lock:
            self._skipping.discard(event.job_id)


def build_scheduler(app: Flask, blocking: bool = False):
    payout_rails(app)  # bad payout settings fail here, at start-up, not on every pass
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler_log = SchedulerLog()
    scheduler = cls(
        logger=scheduler_log,
        jobstores={"default": MemoryJobStore()},
        # a thread for every job (none runs twice at once): with APScheduler's 10, the jobs waiting on WeChat during
        # an outage (each call up to 13 s, fifty rows a run) took every thread, and the others (bans lifted, packets
        # expired, balance marks folded, messages applied, the daily runs) waited past their grace time: skipped
        executors={"default": ThreadPoolExecutor(max_workers=len(JOBS) + len(DAILY_JOBS))},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        timezone=UTC,
    )
    scheduler.add_listener(scheduler_log.ended, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    for job, seconds in JOBS:
        seconds = interval_of(app, job, seconds)
        first = {"next_run_time": datetime.now(UTC)} if job in RUN_AT_START else {}
        scheduler.add_job(in_app(app, job), "interval", seconds=seconds, id=job.__name__, name=job.__name__, **first)
    for job, at in DAILY_JOBS:  # run however late they start (the pool's threads all busy, a WeChat outage's
        # slow calls): a daily run missed by more than the grace time had been skipped until the next day
        scheduler.add_job(
            in_app(app, job),
            "cron",
            timezone=BEIJING,
            id=job.__name__,
            name=job.__name__,
            misfire_grace_time=None,
            **at,
        )
    return scheduler


def database_warnings() -> list[str]:
    """What in the database's own settings would slow the app as its tables grow (said at the jobs' start-up).

    PostgreSQL with autovacuum off keeps the planner's statistics of the day its tables were small: it goes
    on reading a payment's packets and campaigns by scanning whole tables (the bench saw a notification's
    database time grow with the history until an ANALYZE), and dead rows are never reclaimed."""
    if db.engine.dialect.name != "postgresql":
        return []
    try:
        autovacuum = db.session.execute(text("SHOW autovacuum")).scalar()
    except SQLAlchemyError:  # unreachable now: the jobs start anyway, each retrying on its own as before
        log.warning("could not read the database's settings at start-up", exc_info=True)
        return []
    finally:
        db.session.rollback()
    if autovacuum == "off":
        return [
            "PostgreSQL's autovacuum is off: the planner's statistics go stale and the payment path slows as "
            "the tables grow; turn it on (the default), or run ANALYZE and VACUUM on a schedule"
        ]
    return []


@jobs_cli.command("run")
def run_command() -> None:
    """Run the scheduler in the foreground (one process per node)."""
    from flask import current_app

    app = current_app._get_current_object()
    for warning in database_warnings():
        log.warning(warning)
        click.echo(f"warning: {warning}", err=True)
    # the intervals this process will keep (a job's setting, not its default: INSIGHTS_ROLLUP_SECONDS=30 said 300s)
    click.echo("jobs: " + ", ".join(f"{job.__name__} every {interval_of(app, job, s)}s" for job, s in JOBS))
    click.echo(
        "daily (Beijing time): "
        + ", ".join(f"{job.__name__} at {at['hour']:02d}:{at['minute']:02d}" for job, at in DAILY_JOBS)
    )
    build_scheduler(app, blocking=True).start()


@jobs_cli.command("run-once")
def run_once_command() -> None:
    """Run every job once now and print what each did. A job that fails is rolled back and said on stderr, and the
    others still run (one failing job had stopped every job after it); the command then exits 1."""
    failed = []
    for job, _ in JOBS:
        try:
            with one_node(job.__name__) as mine:
                click.echo(f"{job.__name__}: {dict(job() or {})}" if mine else f"{job.__name__}: another node runs it")
        except Exception as exc:
            db.session.rollback()
            log.exception("job failed", extra={"job": job.__name__})
            click.echo(f"{job.__name__}: failed: {exc!r}", err=True)
            failed.append(job.__name__)
        finally:
            db.session.remove()
    if failed:
        raise click.ClickException(f"{len(failed)} job(s) failed: {', '.join(failed)}")


jobs_cli.add_command(reconcile_command)  # flask jobs reconcile [--date]


def _start_in_process(app: Flask) -> None:
    lock = threading.Lock()
    state = {"started": False}

    @app.before_request
    def start_scheduler_once() -> None:
        if state["started"]:
            return
        with lock:
            if state["started"]:
                return
            state["started"] = True
            if os.environ.get("WERKZEUG_RUN_MAIN"):
                log.warning("RUN_JOBS_IN_PROCESS ignored under the reloader; run `flask jobs run`")
                return
            build_scheduler(app).start()
            log.info("jobs started inside the web process (demo only)")


def install_jobs(app: Flask, wechat: Any) -> None:
    """``wechat``: the WeChat clients the app's wiring built, handed to every job (``job_context``)."""
    install_job_context(app, wechat)
    app.cli.add_command(jobs_cli)
    app.cli.add_command(insights_cli)
    if app.config.get("RUN_JOBS_IN_PROCESS") and not app.config.get("TESTING"):
        _start_in_process(app)
