"""``flask jobs reconcile [--date YYYY-MM-DD]``: the daily reconciliation now, for one finished Beijing day.

What the 10:30 job does (jobs/payouts.py ``reconcile_day``, then the ledger check), by hand: after a
failed run, or for a day the job missed. Each phase is a line on stderr (downloading the bills can take
a while); stdout is one line per run and one for the ledger, for scripts to read. Exit code 1 when a
run failed or the ledger has violations.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

import click
from flask import current_app

from jobs.payouts import job_context, reconcile_day
from models import unit_of_work, utcnow
from models.base import beijing
from models.reconciliation import RunStatus
from payouts import reconcile

FIRST_YEAR = "2000"


def one_line(text: str) -> str:
    """A run's error on its one stdout line (a bill's message may hold a line break): scripts read a line a run."""
    return " ".join(text.splitlines())


class Steps:
    """One line per phase on stderr, with the seconds since the work began (web/progress.py's, for jobs)."""

    def __init__(self, what: str) -> None:
        self.what, self.started = what, time.monotonic()

    def __call__(self, message: str) -> None:
        click.echo(f"{self.what}: {message} ({time.monotonic() - self.started:.1f} s)", err=True)


@click.command("reconcile")
@click.option("--date", "bill_date", default=None, help="The Beijing day YYYY-MM-DD (default: yesterday).")
def reconcile_command(bill_date: str | None) -> None:
    """Reconcile one finished Beijing day against WeChat's bills now, then check the ledger."""
    now = utcnow()
    day = (beijing(now).date() - timedelta(days=1)).isoformat() if bill_date is None else bill_date.strip()
    if day[:4].isdecimal() and day[:4] < FIRST_YEAR:  # WeChat keeps no bill of then (and 0001-01-01 has no day before)
        raise click.BadParameter(f"a day from {FIRST_YEAR}-01-01, not {day}", param_hint="--date")
    step = Steps("reconcile")
    try:
        service_provider = current_app.config.get("FUND_FLOW") == "service_provider"
        runs = reconcile_day(job_context().pay, day, now, service_provider=service_provider, step=step)
    except ValueError as exc:  # not a date (an empty one too), or a day not over yet in Beijing
        raise click.BadParameter(str(exc), param_hint="--date") from None
    step("checking the ledger")
    with unit_of_work():
        report = reconcile.check_ledger_and_alert(current_app.config["POINT_VALUE_FEN"])
    step("done")
    for run in runs:
        bill = f"{run.bill_date} {run.kind}" + (f" {run.sub_mchid}" if run.sub_mchid else "")
        click.echo(
            f"{bill}: {run.status}, {run.lines_read} lines, {run.matched} matched, "
            f"{run.mismatches} mismatches" + (f" ({one_line(run.error)})" if run.error else "")
        )
    click.echo(f"ledger: {report.entries_checked} entries checked, {len(report.violations)} violations")
    if report.violations or any(run.status != RunStatus.DONE for run in runs):
        sys.exit(1)
