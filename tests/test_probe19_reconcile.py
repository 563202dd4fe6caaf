"""Probe 19, reconciliation and the books as a finance team and an on-call engineer meet them: the daily ledger
check valuing points as ``flask ledger check`` does, the daily reconciliation on two job nodes at once, and the memory a
big bill takes to unzip."""

from __future__ import annotations

import gc
import gzip
import hashlib
import tracemalloc
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from jobs import payouts as payout_jobs
from jobs.payouts import daily_reconciliation
from jobs.scheduler import in_app
from ledger import Leg, account, post_entry
from models import AccountKind, Alert, Receivable, db
from payouts import reconcile
from payouts.reconcile import read_trade_lines
from tests.concurrency import together
from tests.conftest import on_postgres
from tests.test_reconciliation import (
    DAY,
    NOW,
    alerts,
    bj,
    findings,
    fund_bill,
    merchant_key,  # noqa: F401 - fixture
    ours,  # noqa: F401 - fixture
    paid,
    pay_client,  # noqa: F401 - fixture
    runs,
    trade_bill,
    wechat,  # noqa: F401 - fixture
    wechat_keys,  # noqa: F401 - fixture
)
from wechat.bills import UNZIP_STEP, decompress_bill


def test_the_daily_ledger_check_values_points_as_flask_ledger_check_does(
    app,
    make_user,
    make_campaign,
    monkeypatch,
    pay_client,  # noqa: F811
):
    # given: a point is worth 1 yuan; a refund clawed back 5 points the person had spent, but only 1 yuan of the
    # 5 they are worth is owed back as a receivable (4 yuan of points paid out twice: a violation)
    app.config["POINT_VALUE_FEN"] = 1_00
    rosa, campaign = make_user(), make_campaign({})
    spent = [Leg(account(AccountKind.USER_POINTS, "user", rosa.id), -5), Leg(account(AccountKind.POINTS_ISSUANCE), 5)]
    post_entry("probe19:points-spent-twice", "5 points spent that a refund took back", spent)
    debt = Receivable(beneficiary_type="user", beneficiary_id=rosa.id, kind="points", campaign_id=campaign.id)
    debt.outstanding_fen = 1_00
    db.session.add(debt)
    db.session.commit()
    try:
        cli = app.test_cli_runner().invoke(args=["ledger", "check"])
        assert cli.exit_code == 1 and "is at -5 (worth -500 fen) but only 100 fen" in cli.output
        # when: the daily job checks the ledger after the bills (none to reconcile here)
        monkeypatch.setattr(payout_jobs, "job_context", lambda: SimpleNamespace(pay=pay_client, config=app.config))
        monkeypatch.setattr(payout_jobs, "reconcile_day", lambda *_args, **_kwargs: [])
        monkeypatch.setattr(reconcile, "days_to_catch_up", lambda *_args: [])
        done = daily_reconciliation()
        report = reconcile.check_ledger_and_alert(app.config["POINT_VALUE_FEN"])
        db.session.commit()
        # then: it finds what `flask ledger check` finds, and the on-call hears of it (a point was valued at 1 fen:
        # 5 fen "owed", less than the 1 yuan receivable, so no violation and no alert)
        assert done["ledger_violations"] == len(report.violations) >= 1
        assert [v for v in report.violations if "is at -5 (worth -500 fen)" in v], report.violations
        assert [a.subject for a in alerts("ledger_check_failed")] == ["ledger"]
    finally:  # the debt as it should be, so the check after the test passes
        db.session.rollback()
        db.session.get(Receivable, debt.id).outstanding_fen = 5_00
        db.session.commit()


@pytest.mark.skipif(not on_postgres(), reason="SQLite runs one node (one jobs process)")
def test_two_job_nodes_reconcile_a_fresh_day_once_and_neither_run_fails(
    app,
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
    monkeypatch,
    caplog,
):
    # given: yesterday, an order WeChat lists and one it lacks; two nodes each running `flask jobs run`, whose
    # 10:30 daily job fires on both at once (every node runs every job)
    ours.order("ORD-OK", 50_00, bj(10))
    ours.order("ORD-LOST", 30_00, bj(12))
    wechat.serve("trade", trade_bill(paid("ORD-OK", "50.00")))
    wechat.serve("fund", fund_bill())
    monkeypatch.setattr(payout_jobs, "job_context", lambda: SimpleNamespace(pay=pay_client, config=app.config))
    monkeypatch.setattr(payout_jobs, "utcnow", lambda: NOW)
    # when: each node's scheduler runs the job (its wrapper: jobs.scheduler.in_app)
    results = together(2, lambda _: in_app(app, daily_reconciliation)())
    # then: the day is reconciled, no node's job failed on the other's rows (the second node's start had hit the
    # runs' unique key: "job failed" with a traceback every day, its catch-up and ledger check never run), and the
    # finding is alerted once
    assert results == [None, None]
    assert not [r for r in caplog.records if r.getMessage() == "job failed"], [r.exc_text for r in caplog.records]
    assert {(r.status, r.mismatches) for r in runs().values()} == {("done", 1), ("done", 0)}
    assert findings() == {("missing_there", "order", "ORD-LOST", 30_00, None)}
    assert len(alerts("reconciliation_mismatch")) == 1
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["reconciliation_mismatch"]


def test_a_big_bill_is_unzipped_into_one_buffer_not_copied_again_and_again():
    """A busy day's bill unzips to hundreds of megabytes (``MAX_BILL_BYTES``: a gigabyte), on a host that serves
    payments. Unzipped in one call and copied out as bytes, it was held some 2.5 times over at the peak."""
    content = trade_bill(*(paid(f"O20240501{i:016X}", "12.34") for i in range(20_000)))
    archive = gzip.compress(content)
    gc.collect()
    tracemalloc.start()
    try:
        unzipped = decompress_bill(archive)
        _, top = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert unzipped == content and hashlib.sha1(unzipped).hexdigest() == hashlib.sha1(content).hexdigest()  # noqa: S324
    # the bill once (its buffer grown in place, a little room to spare) and a step being added to it
    assert top < 1.25 * len(content) + 2 * UNZIP_STEP, f"unzipping took {top / len(content):.1f} times the bill"
    # and: read as the job reads it, to the same lines
    assert len(read_trade_lines(unzipped)) == len(read_trade_lines(content)) == 20_000


def test_a_rerun_of_the_same_open_findings_pages_once_and_a_failing_bill_once(
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
):
    from jobs.payouts import reconcile_day

    # given: yesterday's trade bill lacks an order of ours, and the fund bill is not ready
    ours.order("ORD-LOST", 30_00, bj(12))
    wechat.serve("trade", trade_bill())
    wechat.refuse("fund", "SYSTEM_ERROR", "系统错误")
    # when: the day is reconciled three times (a hand rerun, a catch-up, a second node)
    for hours in range(3):
        reconcile_day(pay_client, DAY, NOW + timedelta(hours=hours))
        db.session.commit()
    # then: the on-call heard of the missing order once, and of the fund bill once, while those alerts are open
    assert len(alerts("reconciliation_mismatch")) == 1
    assert len(alerts("reconciliation_failed")) == 1


@pytest.mark.skipif(not on_postgres(), reason="SQLite runs one node (one jobs process)")
def test_a_hand_reconciliation_beside_the_job_makes_the_new_days_runs_once_and_neither_fails(
    app,
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
):
    from jobs.payouts import reconcile_day

    # given: yesterday, an order WeChat lists; no run of the day yet
    ours.order("ORD-OK", 50_00, bj(10))
    wechat.serve("trade", trade_bill(paid("ORD-OK", "50.00")))
    wechat.serve("fund", fund_bill())

    # when: `flask jobs reconcile` is run by hand while the 10:30 job reconciles the same new day (no job lease
    # between them: the command is not a scheduled job)
    def reconcile(_: int) -> str:
        reconcile_day(pay_client, DAY, NOW)
        db.session.commit()
        return "done"

    results = together(2, reconcile, app=app)

    # then: both finish (the second's start had hit the runs' unique key), one run per bill
    assert results == ["done", "done"], results
    assert {(r.status, r.mismatches) for r in runs().values()} == {("done", 0)}
