"""Probe of the jobs outside payouts: retention and the scheduler (jobs/retention.py, jobs/scheduler.py)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from models import IdempotencyRecord, InboundMessage, Notice, OAuthState, db, utcnow
from tests.conftest import on_postgres


def oauth_state(state: str, expires_in: timedelta, used: bool = False) -> None:
    now = utcnow()
    db.session.add(
        OAuthState(
            state=state,
            scope="snsapi_base",
            next_url="/",
            created_at=now + expires_in - timedelta(minutes=10),
            expires_at=now + expires_in,
            used_at=now if used else None,
        )
    )


def idempotency_record(key: str, expires_in: timedelta, state: str = "done") -> None:
    now = utcnow()
    db.session.add(
        IdempotencyRecord(
            scope="user:1",
            route="POST /api/v1/x",
            key=key,
            request_sha256="0" * 64,
            state=state,
            response_status=200 if state == "done" else None,
            response_body={"ok": True} if state == "done" else None,
            created_at=now + expires_in - timedelta(hours=25),
            locked_at=now + expires_in - timedelta(hours=25),
            expires_at=now + expires_in,
        )
    )


def column(col) -> list[str]:
    db.session.expire_all()
    return sorted(db.session.execute(select(col)).scalars())


def test_oauth_states_past_their_expiry_are_purged_by_the_nightly_job(app):
    # given: sign-ins started days ago and never finished (or finished), and no sign-in since to clear them
    from jobs.retention import purge_kept_rows_job

    oauth_state("old-unused", -timedelta(days=3))
    oauth_state("old-used", -timedelta(hours=2), used=True)
    oauth_state("just-expired", -timedelta(minutes=5))  # kept a while: another node's clock may be behind
    oauth_state("live", timedelta(minutes=5))
    db.session.commit()
    # when: the nightly purge runs
    done = purge_kept_rows_job()
    # then: the expired states are gone (they had stayed for good), the live one (and the one just expired) stay
    assert done["oauth_states"] == 2
    assert column(OAuthState.state) == ["just-expired", "live"]


def test_idempotency_answers_past_their_time_are_purged_by_the_nightly_job(app):
    # given: Idempotency-Key answers kept IDEMPOTENCY_TTL_HOURS ("how long answers are kept"), some long expired
    from jobs.retention import purge_kept_rows_job

    idempotency_record("old-done", -timedelta(days=30))
    idempotency_record("old-abandoned", -timedelta(hours=3), state="in_progress")
    idempotency_record("just-expired", -timedelta(minutes=5))
    idempotency_record("live", timedelta(hours=20))
    db.session.commit()
    # when: the nightly purge runs
    done = purge_kept_rows_job()
    # then: only the answers past their time go (they, and the answers they stored, had been kept for good)
    assert done["idempotency_keys"] == 2
    assert column(IdempotencyRecord.key) == ["just-expired", "live"]


def test_a_live_idempotency_key_still_answers_after_the_purge(app):
    # given: a key a client used a minute ago, and an old one of the same person
    from jobs.retention import purge_kept_rows_job

    idempotency_record("old", -timedelta(days=2))
    idempotency_record("recent", timedelta(hours=24))
    db.session.commit()
    # when: the purge runs
    purge_kept_rows_job()
    # then: the recent one is untouched, with its stored answer
    db.session.expire_all()
    kept = db.session.execute(select(IdempotencyRecord).where(IdempotencyRecord.key == "recent")).scalar_one()
    assert (kept.state, kept.response_status, kept.response_body) == ("done", 200, {"ok": True})


def test_one_purge_failing_stops_none_of_the_others(app, make_user, monkeypatch):
    # given: old messages, old notices and expired sign-in states; the messages' purge meets a busy database
    import jobs.retention as retention

    user = make_user()
    db.session.add(
        InboundMessage(
            source="oa",
            dedupe_key="m-old",
            msg_type="event",
            event="subscribe",
            openid="oOA-x",
            payload={},
            status="done",
            received_at=utcnow() - timedelta(days=400),
        )
    )
    db.session.add(
        Notice(
            user_id=user.id, event="rebate_paid", key="n-old", status="sent", created_at=utcnow() - timedelta(days=400)
        )
    )
    oauth_state("old", -timedelta(days=3))
    db.session.commit()

    def busy(*args, **kwargs):
        raise OperationalError("DELETE FROM inbound_messages", {}, Exception("database is locked"))

    monkeypatch.setattr(retention, "purge_messages", busy)
    # when: the nightly purge runs
    with pytest.raises(OperationalError):
        retention.purge_kept_rows_job()
    # then: the job fails (the scheduler logs it: a busy database, tried again the next night), yet the notices and
    # the states were purged (a failure of the first had left every other kind for another night)
    assert column(InboundMessage.dedupe_key) == ["m-old"]
    assert column(Notice.key) == []
    assert column(OAuthState.state) == []


def test_jobs_run_says_the_intervals_it_keeps_not_the_defaults(app, monkeypatch):
    # given: the rollups and the challenges' settling set to run more often than their defaults (as `make run` does)
    from jobs import scheduler

    app.config["INSIGHTS_ROLLUP_SECONDS"], app.config["CHALLENGE_SETTLE_SECONDS"] = 30, 5
    kept = {}
    real_build = scheduler.build_scheduler

    def build(app, blocking=False):  # the real scheduler built (background: this test goes on), never started
        kept["s"] = real_build(app)
        return type("S", (), {"start": lambda self: None})()

    monkeypatch.setattr(scheduler, "database_warnings", lambda: [])
    monkeypatch.setattr(scheduler, "build_scheduler", build)
    # when: `flask jobs run` starts (its scheduler built, not started here)
    result = app.test_cli_runner().invoke(args=["jobs", "run"])
    # then: it says the intervals the scheduler keeps (it said the defaults, 300 s and 60 s: an operator checking
    # the setting read that it was ignored)
    assert result.exit_code == 0, result.output
    assert "insights_rollup_job every 30s" in result.output and "settle_challenges every 5s" in result.output
    triggers = {
        job.id: job.trigger.interval.total_seconds() for job in kept["s"].get_jobs() if hasattr(job.trigger, "interval")
    }
    assert triggers["insights_rollup_job"] == 30 and triggers["settle_challenges"] == 5


@pytest.mark.skipif(not on_postgres(), reason="SQLite folds its end at once")
def test_a_long_first_fold_is_not_said_to_wait_for_an_open_transaction(app, make_merchant, caplog, monkeypatch):
    # given: a long history folded in bounded steps (after `ledger rebuild-marks` on a big ledger, say), its end
    # chosen over an hour ago and safe since (no transaction holds it back): only the steps are left
    import ledger
    import ledger.marks as marks_module
    from jobs.ledger_marks import fold_ledger_marks
    from ledger import Leg
    from models import AccountKind, LedgerMarkProgress

    monkeypatch.setattr(marks_module, "SETTLE_AFTER_S", 0.0)
    monkeypatch.setattr(marks_module, "FOLD_MOST", 1)
    monkeypatch.setattr(marks_module, "STEPS_PER_RUN", 1)
    merchant = make_merchant()
    fund = ledger.platform_account(AccountKind.PLATFORM_MARKETING_FUND)
    deposit = ledger.account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant.id)
    for i in range(3):
        ledger.post_entry(f"probe-jobs:{i}", "test", [Leg(fund, -100), Leg(deposit, 100)])
    db.session.commit()
    marks_module.fold_marks()  # chooses the end
    db.session.commit()
    progress = db.session.get(LedgerMarkProgress, 1)
    progress.candidate_at -= timedelta(hours=2)
    db.session.commit()
    # when: the job folds a step of it (another database's transaction on the server may hold it a moment)
    caplog.set_level("WARNING", logger="jobs.ledger_marks")
    for _ in range(200):
        done = marks_module.fold_marks()
        db.session.commit()
        if done["folded"]:
            break
        time.sleep(0.02)
    # then: the step folded is not said to wait (it said two hours: "a transaction open for over an hour", which
    # sent an operator hunting for a transaction nobody held), nor does the job warn
    assert done["folded"] == 1 and done["waiting_s"] == 0
    while fold_ledger_marks():
        if caplog.records:
            break
    assert not [r for r in caplog.records if "open for over an hour" in r.getMessage()]


@pytest.mark.parametrize("kind", ["notices", "messages"])
def test_a_purge_batch_reads_its_batch_not_every_row_of_the_statuses(app, make_user, kind):
    # given: notices and messages done with, old and recent (in production: 180 days of them, millions)
    from sqlalchemy import event

    from jobs.retention import purge_messages, purge_notices

    user = make_user()
    for i in range(6):
        age = timedelta(days=400 if i < 3 else 1)
        db.session.add(
            Notice(user_id=user.id, event="rebate_paid", key=f"n{i}", status="sent", created_at=utcnow() - age)
        )
        db.session.add(
            InboundMessage(
                source="oa",
                dedupe_key=f"m{i}",
                msg_type="event",
                event="subscribe",
                openid="oOA-x",
                payload={},
                status="done",
                received_at=utcnow() - age,
            )
        )
    db.session.commit()
    deletes = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        # when: the nightly purge deletes them two at a time
        if kind == "notices":
            assert purge_notices(utcnow(), 180, batch=2, commit=db.session.commit) == 3
        else:
            assert purge_messages(utcnow(), 90, batch=2, commit=db.session.commit) == 3
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    # then: the old ones went, the recent ones stayed
    assert len(column(Notice.key if kind == "notices" else InboundMessage.dedupe_key)) == 3
    # and each batch reads its rows by the primary key: it had read every row of the statuses matched (by the
    # due-rows index) and sorted them all, batch after batch, under SQLite's one write lock
    if on_postgres():
        return
    assert deletes
    db.session.rollback()  # SQLite: the session's lock given back before another connection explains
    with db.engine.connect() as conn:
        for statement, parameters in deletes:
            plan = " | ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
            assert "TEMP B-TREE" not in plan and "_due" not in plan, plan
