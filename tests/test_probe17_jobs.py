"""Probe 17, the scheduled jobs and the ledger's own checks as an on-call engineer meets them at 3 a.m.: the ledger
check run while the shop is live (no false alarm for money moving as it reads), the balance marks, the jobs."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event

from ledger import check_ledger
from models import db, utcnow
from tests.conftest import on_postgres, release_test_session
from tests.payment_helpers import pay_as_wechat
from tests.test_wallet import buy, fund


def _while_the_check_reads(app, marker: str, work) -> dict:
    """``work`` run and committed in a connection of its own (another request) right after the check's first statement
    whose parameters name ``marker``, before its next one; returns what it did ({"done": …} or {"error": …})."""
    state: dict = {}

    def other() -> None:
        with app.app_context():
            try:
                state["done"] = work()
                db.session.commit()
            except Exception as exc:  # noqa: BLE001 - asserted on by the test
                db.session.rollback()
                state["error"] = exc
            finally:
                db.session.remove()

    def after(conn, cursor, statement, parameters, context, executemany) -> None:
        if "fired" in state or marker not in str(parameters):
            return
        state["fired"] = True
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=30)

    event.listen(db.engine, "after_cursor_execute", after)
    state["stop"] = lambda: event.remove(db.engine, "after_cursor_execute", after)
    return state


@pytest.mark.skipif(not on_postgres(), reason="SQLite's check holds the write lock (BEGIN IMMEDIATE): nobody commits")
def test_an_order_paid_while_the_check_reads_is_no_violation(app, make_user, make_product):
    # given: a person whose open order holds 50 fen of her rebate balance (the payment is on its way)
    rosa = make_user()
    fund(rosa, cash_fen=1_00)
    order = buy(rosa, make_product(price_fen=10_00), balance_fen=50)
    out_trade_no, payable = order.out_trade_no, order.payable_fen
    release_test_session()
    # when: the daily check runs, and WeChat's notification of the order is applied while it reads (the check read
    # the held accounts; the payment commits; the check reads the open orders)
    state = _while_the_check_reads(
        app, "user_cash_held", lambda: str(pay_as_wechat(out_trade_no, f"tx-{out_trade_no}", payable, utcnow()))
    )
    try:
        report = check_ledger()
    finally:
        state["stop"]()
    # then: the payment went through, and the books were right at every moment: no violation, no alert at 10:30
    assert state.get("fired") and "error" not in state, state
    assert report.ok, report.violations
    db.session.rollback()
    assert check_ledger().ok


@pytest.mark.skipif(not on_postgres(), reason="SQLite runs one node (one jobs process)")
def test_two_nodes_deliver_each_alert_once(app):
    # given: two alerts waiting, two nodes each running `flask jobs run`, and a robot answering slowly (a WeCom
    # outage: each call up to its 5 s timeout); both nodes' deliver_alerts come round within that time
    import json
    import time

    import responses

    from jobs.payouts import deliver_alerts
    from jobs.scheduler import in_app
    from models import raise_alert
    from tests.concurrency import together

    url = "https://qyapi.test/cgi-bin/webhook/send?key=robot-key"
    app.config["ALERT_WEBHOOK_URL"] = url
    raise_alert("payout_needs_operator", "TB000000000001", "first")
    raise_alert("payout_needs_operator", "TB000000000002", "second")
    db.session.commit()
    posted: list[str] = []

    def robot(request):
        posted.append(json.loads(request.body)["text"]["content"])
        time.sleep(0.3)
        return 200, {}, json.dumps({"errcode": 0, "errmsg": "ok"})

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, url, callback=robot)
        # when: each node's scheduler runs the job (its wrapper: jobs.scheduler.in_app)
        results = together(2, lambda _: in_app(app, deliver_alerts)())
    # then: the on-call's phone buzzed once per alert, not once per node
    assert results == [None, None]
    assert sorted(posted) == [
        "[payout_needs_operator] TB000000000001: first",
        "[payout_needs_operator] TB000000000002: second",
    ]
    db.session.rollback()
    from models import Alert

    assert db.session.query(Alert).filter(Alert.notified_at.is_(None)).count() == 0


@pytest.mark.skipif(not on_postgres(), reason="SQLite runs one node (one jobs process)")
def test_a_run_that_crashes_leaves_no_lease_behind(app, caplog):
    # given: the alert job's run crashes mid-way (a bug, not a webhook error)
    import responses
    from sqlalchemy import text

    from jobs.payouts import deliver_alerts
    from jobs.scheduler import in_app
    from models import Alert, raise_alert

    url = "https://qyapi.test/cgi-bin/webhook/send?key=robot-key"
    app.config["ALERT_WEBHOOK_URL"] = url
    raise_alert("payout_needs_operator", "TB000000000003", "third")
    db.session.commit()
    release_test_session()

    def crash(request):
        raise RuntimeError("a bug")

    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.POST, url, callback=crash)
        in_app(app, deliver_alerts)()
    assert "job failed" in caplog.text
    # then: no advisory lock is left held on any connection, and the next run delivers
    held = db.session.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")).scalar_one()
    db.session.rollback()
    assert held == 0
    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, url, json={"errcode": 0})
        in_app(app, deliver_alerts)()
        assert len(rsps.calls) == 1
    assert db.session.query(Alert).filter(Alert.notified_at.is_(None)).count() == 0
