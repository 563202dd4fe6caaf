"""Order jobs: expired orders closed at WeChat then here, missed notifications applied, stuck refunds finished."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from jobs.orders import close_expired_orders, query_stuck_refunds, query_unnotified_payments
from models import Alert, LedgerEntry, Order, PaymentNotification, Refund, db, transaction_open, utcnow
from rebate import begin_refund
from tests.test_simulator_e2e import app_settings, delivered, login  # noqa: F401 - fixture
from tests.test_wechat_callbacks import count, no_network, simulator  # noqa: F401 - fixture
from wechat.http import CallInsideTransaction, WeChatSession


@pytest.fixture(autouse=True)
def guarded_pay(app, monkeypatch):
    """Every test here runs with a pay client that refuses a call while a database transaction is open."""
    pay = app.extensions["wechat"].pay
    guarded = WeChatSession(transaction_open)
    guarded.adapters = pay.session.adapters  # the simulator, served in-process
    monkeypatch.setattr(pay, "session", guarded)
    return pay


@pytest.fixture
def alice(client, no_network, delivered):  # noqa: F811
    return login(client, "alice")


@pytest.fixture
def new_order(client, alice, make_product):
    def make() -> dict:
        product = make_product(price_fen=3_000)
        response = client.post(
            "/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=alice
        )
        assert response.status_code == 201
        return response.json

    return make


def age(order_id: int, **values) -> None:
    db.session.execute(update(Order).where(Order.id == order_id).values(**values))
    db.session.commit()


def test_expired_unpaid_order_is_closed_at_wechat_and_here(app, new_order):
    order = new_order()
    age(order["id"], time_expire=utcnow() - timedelta(minutes=1))
    results = close_expired_orders()
    assert results == {"closed": 1}
    assert db.session.get(Order, order["id"]).status == "closed"
    assert simulator(app).orders[order["out_trade_no"]]["trade_state"] == "CLOSED"
    assert close_expired_orders() == {}  # nothing left for a second runner


def test_expired_order_paid_at_wechat_is_applied_not_closed(app, new_order):
    order = new_order()
    pay_at_wechat_only(app, order)
    age(order["id"], time_expire=utcnow() - timedelta(minutes=1))
    entries = count(LedgerEntry)
    assert close_expired_orders() == {"applied": 1}
    db.session.rollback()
    assert db.session.get(Order, order["id"]).status == "paid"
    assert count(LedgerEntry) == entries + 1


def test_order_never_sent_to_wechat_is_closed_locally(app, client, make_user, user_headers, make_product):
    user = make_user(appid="wx-other")
    product = make_product()
    created = client.post(
        "/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=user_headers(user)
    )
    age(created.json["id"], time_expire=utcnow() - timedelta(minutes=1))
    assert close_expired_orders() == {"closed": 1}


def test_wechat_outage_leaves_the_order_for_the_next_run(app, new_order):
    order = new_order()
    age(order["id"], time_expire=utcnow() - timedelta(minutes=1))
    simulator(app).inject_fault("/v3/pay/transactions/out-trade-no", 500, "SYSTEM_ERROR")
    assert close_expired_orders() == {"unknown": 1}
    assert db.session.get(Order, order["id"]).status == "created"
    assert close_expired_orders() == {"closed": 1}


def test_the_guard_refuses_a_call_inside_a_transaction(app, new_order, guarded_pay):
    order = new_order()
    db.session.get(Order, order["id"])  # a transaction is open
    with pytest.raises(CallInsideTransaction):
        guarded_pay.query_order(order["out_trade_no"])
    db.session.commit()
    assert guarded_pay.query_order(order["out_trade_no"])["trade_state"] == "NOTPAY"


def test_payment_without_notification_is_applied_by_query(app, new_order):
    order = new_order()
    unpaid = new_order()
    pay_at_wechat_only(app, order)
    for o in (order, unpaid):
        age(o["id"], prepay_at=utcnow() - timedelta(minutes=3))
    assert query_unnotified_payments() == {"applied": 1, "not_paid": 1}
    db.session.rollback()
    assert db.session.get(Order, order["id"]).status == "paid"
    assert query_unnotified_payments() == {"not_paid": 1}


def pay_at_wechat_only(app, order: dict) -> None:
    """The person pays at WeChat and the notification never leaves it: not sent at all (stopping the
    simulator's delivery after paying raced its 0.2 s delay on a loaded machine)."""
    sim = simulator(app)
    sim.dispatcher.stop()
    sim.notify = lambda *_args, **_kwargs: None
    try:
        sim.pay(order["payment"]["pay_params"]["package"].removeprefix("prepay_id="))
    finally:
        del sim.notify


def paid_unnotified(app, order: dict) -> None:
    """Paid at WeChat; the notification never arrives; past the grace period."""
    pay_at_wechat_only(app, order)
    age(order["id"], prepay_at=utcnow() - timedelta(minutes=3))


def test_a_queried_payment_that_disagrees_is_flagged_once_and_not_applied(app, new_order):
    # given: WeChat's answer names another merchant
    order = new_order()
    paid_unnotified(app, order)
    simulator(app).orders[order["out_trade_no"]]["request"]["mchid"] = "1999999999"
    entries = count(LedgerEntry)
    # when: the job asks twice
    assert query_unnotified_payments() == {"mismatch_flagged": 1}
    assert query_unnotified_payments() == {"mismatch_flagged": 1}
    # then
    db.session.rollback()
    flagged = db.session.get(Order, order["id"])
    assert flagged.status == "created" and "1999999999" in flagged.review_reason
    assert [a.kind for a in db.session.query(Alert)] == ["payment_mismatch"]
    assert count(LedgerEntry) == entries
    assert count(PaymentNotification) == 0


def test_an_unreadable_query_answer_leaves_the_order_for_the_next_run(app, new_order, monkeypatch):
    order = new_order()
    paid_unnotified(app, order)
    sim = simulator(app)
    readable = sim.transaction_view
    monkeypatch.setattr(sim, "transaction_view", lambda o: {**readable(o), "amount": {"total": "30.00"}})
    assert query_unnotified_payments() == {"unknown": 1}
    db.session.rollback()
    assert (db.session.get(Order, order["id"]).status, db.session.get(Order, order["id"]).review_reason) == (
        "created",
        None,
    )
    monkeypatch.setattr(sim, "transaction_view", readable)
    assert query_unnotified_payments() == {"applied": 1}


def test_one_order_whose_step_fails_does_not_keep_the_others_unpaid_or_open(app, new_order, monkeypatch):
    # given: two paid orders WeChat did not notify and two expired unpaid ones; the first of each fails its step
    import jobs.orders as order_jobs

    first, second = new_order(), new_order()
    for o in (first, second):
        paid_unnotified(app, o)
    stale, later = new_order(), new_order()
    for o in (stale, later):
        age(o["id"], time_expire=utcnow() - timedelta(minutes=1))
    apply_answer, record = order_jobs._apply_answer, order_jobs._record_settlement

    def failing(real, bad_no):
        def step(ref, *args):
            if getattr(ref, "out_trade_no", ref) == bad_no or getattr(args[0], "out_trade_no", None) == bad_no:
                raise RuntimeError("one bad row")
            return real(ref, *args)

        return step

    monkeypatch.setattr(order_jobs, "_apply_answer", failing(apply_answer, first["out_trade_no"]))
    monkeypatch.setattr(order_jobs, "_record_settlement", failing(record, stale["out_trade_no"]))
    # when
    assert query_unnotified_payments() == {"error": 1, "applied": 1}
    assert close_expired_orders() == {"error": 1, "closed": 1}
    # then: the others went on; the failing ones wait for the next run, unchanged
    db.session.rollback()
    status = {o["id"]: db.session.get(Order, o["id"]).status for o in (first, second, stale, later)}
    assert status == {first["id"]: "created", second["id"]: "paid", stale["id"]: "created", later["id"]: "closed"}


def test_orders_wechat_keeps_answering_unreadably_do_not_crowd_out_the_rest(app, new_order, monkeypatch):
    # given: a batch of two (standing for fifty) expired orders whose answers WeChat keeps garbling, and a third
    import jobs.orders as order_jobs

    monkeypatch.setattr(order_jobs, "BATCH", 2)
    stuck, later = [new_order(), new_order()], new_order()
    for o in (*stuck, later):
        age(o["id"], time_expire=utcnow() - timedelta(minutes=1))
    sim = simulator(app)
    readable, garbled = sim.transaction_view, {o["out_trade_no"] for o in stuck}

    def view(o):
        return {**readable(o), "amount": {"total": "30.00"}} if o["request"]["out_trade_no"] in garbled else readable(o)

    monkeypatch.setattr(sim, "transaction_view", view)
    # when: the job runs twice
    assert close_expired_orders() == {"unknown": 2}
    assert close_expired_orders() == {"closed": 1, "unknown": 1}
    # then: the third was reached on the second run (the least recently asked first)
    db.session.rollback()
    assert db.session.get(Order, later["id"]).status == "closed"
    assert {db.session.get(Order, o["id"]).status for o in stuck} == {"created"}


@pytest.fixture
def paid(app, new_order):
    order = new_order()
    pay_at_wechat_only(app, order)
    age(order["id"], prepay_at=utcnow() - timedelta(minutes=3))
    query_unnotified_payments()
    db.session.rollback()
    return db.session.get(Order, order["id"])


def test_refund_that_never_reached_wechat_is_resent_with_its_number(app, paid):
    refund = begin_refund(paid, "R-JOB-1", 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    simulator(app).refund_auto_succeed = False
    assert query_stuck_refunds() == {"processing": 1}
    assert simulator(app).refunds["R-JOB-1"]["refund_fen"] == 1_000
    simulator(app).complete_refund("R-JOB-1", "SUCCESS")
    assert query_stuck_refunds() == {"success": 1}
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "succeeded"
    assert db.session.get(Order, paid.id).refunded_fen == 1_000
    assert query_stuck_refunds() == {}


def test_closed_refund_is_released(app, paid):
    refund = begin_refund(paid, "R-JOB-2", 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    simulator(app).refund_auto_succeed = False
    query_stuck_refunds()
    simulator(app).complete_refund("R-JOB-2", "CLOSED")
    assert query_stuck_refunds() == {"closed": 1}
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "closed"


def test_scheduler_has_every_job(app):
    from jobs.scheduler import build_scheduler

    scheduler = build_scheduler(app)
    assert sorted(j.id for j in scheduler.get_jobs()) == [
        "apply_messages",
        "audience_runs_job",
        "check_unclaimed_red_packets",
        "close_expired_orders",
        "collusion_job",
        "daily_reconciliation",
        "deliver_alerts",
        "dispatch_notices",
        "dispatch_payouts",
        "expire_packets_and_conditions",
        "fill_order_networks_job",
        "fold_ledger_marks",
        "insights_rollup_job",
        "invoice_fees",
        "lift_expired_bans_job",
        "post_challenge_standings",
        "purge_behaviour_events_job",
        "purge_kept_rows_job",
        "query_profit_shares",
        "query_stuck_refunds",
        "query_unnotified_payments",
        "release_lifted_bans_job",
        "send_chat_replies",
        "settle_challenges",
        "settle_covered_debts",
        "share_due_orders",
        "spike_job",
        "tell_expiring_packets",
        "update_chat_tool_cards",
    ]


def test_the_rollup_interval_is_a_setting(app):
    from jobs.scheduler import build_scheduler

    assert build_scheduler(app).get_job("insights_rollup_job").trigger.interval.total_seconds() == 300
    app.config["INSIGHTS_ROLLUP_SECONDS"] = 30
    assert build_scheduler(app).get_job("insights_rollup_job").trigger.interval.total_seconds() == 30


def test_the_jobs_warn_when_the_database_keeps_no_statistics(app, monkeypatch):
    from sqlalchemy import text

    from jobs import scheduler
    from tests.conftest import on_postgres

    if on_postgres():
        autovacuum = db.session.execute(text("SHOW autovacuum")).scalar()
        warnings = scheduler.database_warnings()
        assert bool(warnings) == (autovacuum == "off")
        assert all("autovacuum" in w and "ANALYZE" in w for w in warnings)
    else:
        assert scheduler.database_warnings() == []  # SQLite: nothing to say
    # and `flask jobs run` says it before it starts (the scheduler itself is not started here)
    monkeypatch.setattr(scheduler, "build_scheduler", lambda *a, **k: type("S", (), {"start": lambda self: None})())
    monkeypatch.setattr(scheduler, "database_warnings", lambda: ["autovacuum is off: … ANALYZE …"])
    result = app.test_cli_runner().invoke(args=["jobs", "run"])
    assert result.exit_code == 0, result.output
    assert "warning: autovacuum is off" in result.stderr


def test_jobs_cli_run_once(app):
    result = app.test_cli_runner().invoke(args=["jobs", "run-once"])
    assert result.exit_code == 0, result.output
    assert "close_expired_orders" in result.output


def test_a_payment_after_the_close_is_given_back_by_the_refund_job(app, new_order):
    # given: the person paid at WeChat as the order was closed here, and the payment was told to us
    from ledger import balance, check_ledger, ref
    from models import AccountKind
    from rebate import close_order
    from rebate.refunds import late_refund_no
    from tests.money_helpers import app_money
    from tests.payment_helpers import pay_as_wechat

    order = new_order()
    pay_at_wechat_only(app, order)
    late = db.session.get(Order, order["id"])
    close_order(late, utcnow())
    db.session.commit()
    paid_as = simulator(app).orders[late.out_trade_no]["transaction_id"]
    assert pay_as_wechat(late.out_trade_no, paid_as, late.payable_fen, utcnow()) == "paid_after_close"
    db.session.commit()
    refund = db.session.execute(select(Refund).where(Refund.order_id == late.id)).scalar_one()
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    # when: the refund job runs (WeChat has never heard of the refund: it is sent under its number), WeChat
    # finishes the refund, and the job runs again
    simulator(app).refund_auto_succeed = False
    assert query_stuck_refunds() == {"processing": 1}
    simulator(app).complete_refund(late_refund_no(late, app_money().number_prefix), "SUCCESS")
    assert query_stuck_refunds() == {"success": 1}
    # then: WeChat refunded all of it, and the money owed back is gone from the books
    db.session.rollback()
    assert simulator(app).refunds[late_refund_no(late, app_money().number_prefix)]["refund_fen"] == late.payable_fen
    assert (db.session.get(Refund, refund.id).status, db.session.get(Order, late.id).refunded_fen) == (
        "succeeded",
        late.payable_fen,
    )
    assert balance(ref(AccountKind.PAYMENTS_TO_RETURN)) == balance(ref(AccountKind.WECHAT_SETTLEMENT)) == 0
    assert check_ledger().ok
    assert query_stuck_refunds() == {}


def refusing_refunds(monkeypatch, code: str, retryable: bool) -> None:
    """WeChat refuses every refund sent from here on with ``code``."""
    from jobs.payouts import job_context
    from wechat.errors import WeChatBusinessError

    def refuse(*_args, **_kwargs):
        raise WeChatBusinessError(f"{code} (refused by the test)", code=code, retryable=retryable)

    monkeypatch.setattr(job_context().wechat.pay, "refund", refuse)


def test_a_refund_wechat_refuses_for_good_is_failed_and_may_be_asked_again(app, paid, monkeypatch):
    # given: a refund that never reached WeChat, and WeChat refusing it for good when the job sends it
    refund = begin_refund(paid, "R-JOB-REFUSED", 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    refusing_refunds(monkeypatch, "INVALID_REQUEST", retryable=False)
    # when
    assert query_stuck_refunds() == {"failed": 1}
    # then: failed once, its hold released, an operator told why; another refund may begin
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "failed"
    alert = db.session.execute(select(Alert).where(Alert.kind == "refund_failed")).scalar_one()
    assert "INVALID_REQUEST" in alert.message
    assert query_stuck_refunds() == {}
    assert begin_refund(db.session.get(Order, paid.id), "R-JOB-AGAIN", 1_000).status == "pending"


def test_a_refund_wechat_refuses_for_now_stays_pending(app, paid, monkeypatch):
    refund = begin_refund(paid, "R-JOB-NOT-ENOUGH", 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    refusing_refunds(monkeypatch, "NOT_ENOUGH", retryable=True)

    assert query_stuck_refunds() == {"unknown": 1}

    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "pending"


def test_an_abnormal_refund_is_asked_about_again_each_hour_until_wechat_finishes_it(app, paid):
    from models import RefundStatus

    # given: a refund WeChat took and then marked abnormal
    refund = begin_refund(paid, "R-JOB-ABNORMAL", 1_000)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    simulator(app).refund_auto_succeed = False
    assert query_stuck_refunds() == {"processing": 1}
    simulator(app).complete_refund("R-JOB-ABNORMAL", "ABNORMAL")
    assert query_stuck_refunds() == {"abnormal": 1}
    assert query_stuck_refunds() == {}  # not asked again at once
    # when: an hour on it is still abnormal, then the merchant resolves it at WeChat and its notice is lost
    db.session.execute(update(Refund).where(Refund.id == refund.id).values(checked_at=utcnow() - timedelta(hours=2)))
    db.session.commit()
    assert query_stuck_refunds() == {"abnormal": 1}
    assert query_stuck_refunds() == {}  # seen abnormal again just now: the next hour
    db.session.execute(update(Refund).where(Refund.id == refund.id).values(checked_at=utcnow() - timedelta(hours=2)))
    db.session.commit()
    sim = simulator(app)
    sim.notify = lambda *_args, **_kwargs: None  # the notification never arrives
    try:
        sim.complete_refund("R-JOB-ABNORMAL", "SUCCESS")
    finally:
        del sim.notify
    # then: the job finds it succeeded and applies it
    assert query_stuck_refunds() == {"success": 1}
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == RefundStatus.SUCCEEDED
    assert db.session.get(Order, paid.id).refunded_fen == 1_000


def test_refunds_wechat_goes_on_processing_never_crowd_out_the_others(app, paid, monkeypatch):
    # given: a batch of two, and three refunds WeChat has taken and goes on processing (to a bank card: for days)
    from jobs import orders as order_jobs

    monkeypatch.setattr(order_jobs, "BATCH", 2)
    simulator(app).refund_auto_succeed = False
    refunds = [begin_refund(paid, f"R-JOB-SLOW-{n}", 100) for n in range(3)]
    for n, refund in enumerate(refunds):
        refund.created_at = utcnow() - timedelta(minutes=10 - n)
    db.session.commit()
    numbers = [r.out_refund_no for r in refunds]
    # when: the job runs twice
    assert query_stuck_refunds() == {"processing": 2}
    assert query_stuck_refunds() == {"processing": 2}
    # then: the third was asked about in the second run, not the first two again
    assert set(numbers) <= set(simulator(app).refunds)


def test_a_refund_answer_about_another_refund_is_never_applied_to_ours(app, paid, monkeypatch):
    # given: a stuck refund, and WeChat answering the query about it with another refund's (or order's) state
    other = begin_refund(paid, "R-JOB-OTHER", 500)
    refund = begin_refund(paid, "R-JOB-9", 1_000)
    for r in (other, refund):
        r.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    sim = simulator(app)
    sim.refund_auto_succeed = False
    query_stuck_refunds()  # both reach WeChat
    sim.refunds["R-JOB-9"].update(status="SUCCESS", success_time=utcnow().isoformat())  # its notification lost
    readable = sim.query_partner_refund
    swapped = {"R-JOB-OTHER": "R-JOB-9", "R-JOB-9": "R-JOB-OTHER"}
    monkeypatch.setattr(sim, "query_partner_refund", lambda number, sub: readable(swapped[number], sub))
    # when / then: neither is applied (R-JOB-OTHER is still processing at WeChat, whatever its answer says)
    assert query_stuck_refunds() == {"unknown": 2}
    db.session.rollback()
    assert {db.session.get(Refund, r.id).status for r in (other, refund)} == {"pending"}
    assert db.session.get(Order, paid.id).refunded_fen == 0
    # and once WeChat names the refunds asked about, each gets its own state
    monkeypatch.setattr(sim, "query_partner_refund", readable)
    assert query_stuck_refunds() == {"processing": 1, "success": 1}
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "succeeded"
    assert db.session.get(Refund, other.id).status == "pending"
    assert db.session.get(Order, paid.id).refunded_fen == 1_000
