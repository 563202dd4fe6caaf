"""The audience-run job: works off the batch runs the admin API created (``rebate.audiences.work_run``).

Each step is its own transaction (``unit_of_work``): choosing a run's members, then each chunk of
``AUDIENCE_RUN_CHUNK`` treated members. A run's row is locked for its step with ``SKIP LOCKED``, so jobs
on several nodes work different runs (or take turns on one) and never issue a member twice; a process
that dies mid-chunk leaves that chunk undone, and the next pass starts at the first member not done.
"""

from __future__ import annotations

import time
from collections import Counter

from flask import current_app

from jobs.payouts import row_failed
from models import RunStatus, unit_of_work, utcnow
from rebate.audiences import open_runs, work_run

RUN_SECONDS = 50  # a pass stops starting chunks after this long (the next pass goes on)


def work_runs(
    chunk: int, max_seconds: float = RUN_SECONDS, max_steps: int | None = None, *, guarded: bool = False
) -> Counter:
    """Work every open run step by step, for at most ``max_seconds`` (or ``max_steps`` steps: tests).

    ``guarded`` (the scheduled job): a run whose step fails is rolled back, logged and alerted once
    (``audience_run_failed``) and left for the next pass; the runs after it go on (a run that always fails had
    kept every later run from ever issuing). Unguarded, the step's error is raised."""
    done: Counter = Counter()
    deadline = time.monotonic() + max_seconds
    with unit_of_work():
        runs = open_runs()
    for run_id in runs:
        while time.monotonic() < deadline and (max_steps is None or done["steps"] < max_steps):
            try:
                with unit_of_work():
                    status = work_run(run_id, utcnow(), chunk)
            except Exception as exc:
                if not guarded:
                    raise
                row_failed("audience_run_failed", "audience_run", run_id, exc)
                done["failed"] += 1
                break
            if status is None:  # another node holds it now
                break
            done["steps"] += 1
            if status == RunStatus.DONE:
                done["runs_done"] += 1
                break
    return done


def audience_runs_job() -> Counter:
    """The scheduled job."""
    return work_runs(current_app.config["AUDIENCE_RUN_CHUNK"], guarded=True)
