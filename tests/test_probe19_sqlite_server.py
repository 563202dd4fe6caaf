"""Probe 19: the app as `make run` serves it (werkzeug's threaded server over a SQLite file, the scheduler's jobs in
the same process) under many real HTTP requests at once: claims on a hot campaign, orders spending one balance,
payment notifications delivered several times at once, refunds, withdrawals, console forms. Nothing may be lost or
doubled, no answer may be a 500, a 503 must have changed nothing, every Idempotency-Key is answered the same way each
time, and no request waits much past the lock timeout. The same races run on PostgreSQL where they are not about
SQLite's one write lock."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
from sqlalchemy import func, select
from werkzeug.serving import make_server

from app import create_app
from ledger import check_ledger
from models import Order, Refund, db
from tests.conftest import release_test_session
from tests.test_simulator_e2e import app_settings, delivered, login, pay_at_checkout  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import simulator
from web import refunds_admin

log = logging.getLogger(__name__)


def key() -> str:
    return uuid.uuid4().hex


def clean_ledger() -> None:
    db.session.rollback()
    report = check_ledger()
    assert report.ok, report.violations


def total(column, *where) -> int:
    db.session.rollback()
    return db.session.execute(select(func.coalesce(func.sum(column), 0)).where(*where)).scalar_one()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(app, port: int = 0) -> Iterator[str]:
    """``app`` served as `make run` serves it (``flask run --with-threads``: werkzeug, a thread per request)."""
    release_test_session()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def hold_write_lock(path: str, seconds: float) -> threading.Thread:
    """Another writer (a job of `make run`'s own scheduler, say) takes SQLite's write lock (returns once it has it)
    and keeps it for ``seconds``."""
    locked = threading.Event()

    def hold():
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(seconds)
            other.execute("ROLLBACK")
        finally:
            locked.set()
            other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(5)
    return thread


@pytest.fixture
def paid_order(app, client, make_product, delivered):  # noqa: F811
    alice = login(client, "alice")
    product = make_product(price_fen=10_000)
    created = client.post("/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=alice)
    pay_at_checkout(client, created.json["payment"])
    delivered()
    order = db.session.get(Order, created.json["id"])
    assert order.status == "paid"
    return order


# -- a refund made while the database is busy: its answer stored, not a 503 ----------------------------------------


def test_a_refund_made_whose_answer_meets_a_busy_database_is_answered_made_and_its_key_replays_it(
    app_settings,  # noqa: F811
    app,
    paid_order,
    make_operator,
    delivered,  # noqa: F811
    monkeypatch,
):
    # given: the server waits one second for SQLite's lock; the refund view has asked WeChat and recorded its answer
    # (committed) when a job takes the write lock for a little longer than that, before the key's answer is stored
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    finance = make_operator("finance")[1]
    path, holders = db.engine.url.database, []
    made = refunds_admin.call_between_commits

    def made_then_busy(*args):
        answer = made(*args)
        holders.append(hold_write_lock(path, 1.6))
        return answer

    monkeypatch.setattr(refunds_admin, "call_between_commits", made_then_busy)
    headers = {**finance, "Idempotency-Key": key()}
    body = {"amount_fen": 30_00, "reason": "busy"}
    order_id = paid_order.id
    try:
        with served(impatient) as base:
            # when: a finance operator refunds 30 of the 100 yuan, then sends the same request again (same key)
            url = f"{base}/admin/api/orders/{order_id}/refunds"
            first = requests.post(url, json=body, headers=headers, timeout=30)
            for thread in holders:
                thread.join()
            monkeypatch.setattr(refunds_admin, "call_between_commits", made)
            again = requests.post(url, json=body, headers=headers, timeout=30)
    finally:
        for thread in holders:
            thread.join()
        impatient_sim = simulator(impatient).dispatcher
        assert impatient_sim.wait_idle(10)
        impatient_sim.stop()
        with impatient.app_context():
            db.engine.dispose()
    delivered()

    # then: the refund WeChat took is answered as made (never a 503 that did something), and the retry with its key
    # replays that answer at once (not 409 "in progress" for a minute); the refund is booked once
    assert first.status_code == 201, (first.status_code, first.text)
    assert again.status_code == 201, (again.status_code, again.text)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json()["out_refund_no"] == first.json()["out_refund_no"]
    assert total(Refund.amount_fen) == 30_00
    clean_ledger()


# -- everything at once, over HTTP, with the scheduler's jobs running ---------------------------------------------

LOCK_TIMEOUT_S = 3
JOB_PAUSE_S = 0.05


@contextmanager
def jobs_running(app) -> Iterator[list[str]]:
    """Every interval job of the scheduler, each in a thread of its own running again and again (as `make run`'s
    in-process scheduler runs them, only much more often) while inside; yields the jobs' warnings and errors."""
    from jobs.scheduler import JOBS, in_app

    troubles: list[str] = []
    stop = threading.Event()

    class Caught(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING and record.name.startswith("jobs"):
                troubles.append(f"{record.getMessage()} {getattr(record, 'job', '')} {getattr(record, 'error', '')}")

    def loop(run) -> None:
        while not stop.is_set():
            run()
            stop.wait(JOB_PAUSE_S)

    handler = Caught()
    logging.getLogger("jobs").addHandler(handler)
    threads = [threading.Thread(target=loop, args=(in_app(app, job),), daemon=True) for job, _ in JOBS]
    for thread in threads:
        thread.start()
    try:
        yield troubles
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        logging.getLogger("jobs").removeHandler(handler)
        assert not any(t.is_alive() for t in threads), "a job hung"


def send_together(calls: list) -> list[tuple[int, object, float, str]]:
    """Run every call (a function answering a ``requests`` response) at once, each in a thread of its own; for each,
    (status, JSON body or text, seconds taken, its label); status -1 for a call that raised (a hang, a reset)."""
    release_test_session()
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        label, call = calls[i]
        barrier.wait(30)
        started = time.monotonic()
        try:
            answer = call()
        except Exception as exc:  # noqa: BLE001 - collected and asserted on
            results[i] = (-1, repr(exc), time.monotonic() - started, label)
            return
        try:
            body = answer.json()
        except ValueError:
            body = answer.text
        results[i] = (answer.status_code, body, time.monotonic() - started, label, dict(answer.headers))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return results


OK_OR_REFUSED = {200, 201, 204, 302, 409, 422, 429, 503}
VOLATILE = ("payment", "payment_error")  # an order's answer gets its prepay after the key's answer is stored


def same_answer(body):
    return {k: v for k, v in body.items() if k not in VOLATILE} if isinstance(body, dict) else body


def made(label: str, status: int, body) -> object:
    """What a successful answer made: the packet, order, payout or refund's id, the console's new campaign page."""
    if status == 302:
        return body
    return body.get("id") if isinstance(body, dict) and status == 201 else None


@pytest.mark.parametrize("busy", [False, True], ids=["queued", "behind-a-long-writer"])
def test_everything_at_once_over_http_with_the_jobs_running_moves_each_yuan_once(
    app_settings,  # noqa: F811
    app,
    paid_order,
    make_user,
    make_product,
    make_campaign,
    make_operator,
    user_headers,
    delivered,  # noqa: F811
    busy,
):
    from models import Campaign, LedgerEntry, Payout, RedPacket, utcnow
    from rebate import create_order
    from rebate.orders import LineRequest
    from tests.challenge_helpers import cash, fund
    from tests.console_helpers import csrf_of, token_of
    from tests.test_claim_sql import RESERVATION, claim_campaign
    from tests.test_console_campaigns import form as campaign_form
    from tests.test_wechat_callbacks import NOTIFY, transaction_resource

    if busy and db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's one write lock")
    lock_timeout_s = 1 if busy else LOCK_TIMEOUT_S
    port = free_port()
    served_app = create_app(
        {
            **{k: v for k, v in app_settings.items() if not k.startswith(("WECHAT_SIM_NOTIFY", "_NOTIFY"))},
            "DATABASE_LOCK_TIMEOUT_S": lock_timeout_s,
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "TRUSTED_PROXY_COUNT": 1,  # each claimant its own address (X-Forwarded-For), as behind a proxy
        }
    )
    appid = app.config["WECHAT_APPID"]
    # given: a hot campaign with 6 packets left for 20 claimants; a person holding 10 yuan who orders six 20-yuan
    # lunches spending 3 yuan of it each; four people holding 10 yuan who withdraw 3 yuan three times each; three
    # orders paid at WeChat whose notification WeChat delivers four times at once; six partial refunds of 30 of the
    # paid 100 yuan; a console form creating a campaign; every keyed request sent twice at once (a double tap)
    campaign_id = claim_campaign(make_campaign, budget_limit_fen=6 * RESERVATION).id
    claimants = [make_user() for _ in range(20)]
    spender = make_user(appid=appid)
    fund(spender.id, 10_00)
    withdrawers = [make_user(appid=appid) for _ in range(4)]
    for person in withdrawers:
        fund(person.id, 10_00, key="w")
    db.session.commit()
    lunch = make_product(price_fen=20_00)
    notified = []
    for _ in range(3):
        buyer = make_user(appid=appid)
        order = create_order(buyer, [LineRequest(make_product(price_fen=50_00).id, 1)], None, utcnow())
        db.session.commit()
        resource = transaction_resource(app, order)
        notified.append((order.id, simulator(app).build_notification("TRANSACTION.SUCCESS", resource, "transaction")))
    finance = make_operator("finance")[1]
    admin = make_operator("admin")[1]
    order_id, lunch_id = paid_order.id, lunch.id
    entries = db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
    claimant_headers = [user_headers(p) for p in claimants]
    spender_headers = user_headers(spender)
    withdrawer_headers = [user_headers(p) for p in withdrawers]
    withdrawer_ids, spender_id = [p.id for p in withdrawers], spender.id
    release_test_session()

    with served(served_app, port) as base:
        console = requests.Session()
        csrf = csrf_of(console.get(f"{base}/console/sign-in", timeout=30).text)
        signed = console.post(
            f"{base}/console/sign-in",
            data={"token": token_of(admin), "csrf_token": csrf},
            allow_redirects=False,
            timeout=30,
        )
        assert signed.status_code == 302, signed.text
        csrf = csrf_of(console.get(f"{base}/console/", timeout=30).text)
        cookies = console.cookies.get_dict()

        sent: list[tuple[str, str | None, object]] = []  # (label, key, call)

        def post(label, path, headers=None, **kwargs):
            def call():
                return requests.post(base + path, headers=headers, timeout=60, allow_redirects=False, **kwargs)

            sent.append((label, (headers or {}).get("Idempotency-Key"), call))

        for i, headers in enumerate(claimant_headers):
            extra = {"X-Forwarded-For": f"192.0.2.{i + 1}"}
            if i % 2:
                extra["Idempotency-Key"] = key()
            for _ in range(2 if i % 2 else 1):
                post("claim", f"/api/v1/campaigns/{campaign_id}/claim", {**headers, **extra})
        body = {"lines": [{"product_id": lunch_id, "quantity": 1}], "use_balance_fen": 3_00}
        for _ in range(6):
            headers = {**spender_headers, "Idempotency-Key": key()}
            for _ in range(2):
                post("order", "/api/v1/orders", headers, json=body)
        for person in withdrawer_headers:
            for _ in range(3):
                headers = {**person, "Idempotency-Key": key()}
                for _ in range(2):
                    post("withdrawal", "/api/v1/me/withdrawals", headers, json={"amount_fen": 3_00})
        for _ in range(6):
            headers = {**finance, "Idempotency-Key": key()}
            refund = {"amount_fen": 30_00, "reason": "x"}
            for _ in range(2):
                post("refund", f"/admin/api/orders/{order_id}/refunds", headers, json=refund)
        for _, (wx_headers, notice) in notified:
            for _ in range(4):
                post("notify", NOTIFY, wx_headers, data=notice)
        form = {**campaign_form(form_key="k-" + key()), "csrf_token": csrf}

        def console_form():
            return requests.post(
                f"{base}/console/campaigns/new", data=form, cookies=cookies, allow_redirects=False, timeout=60
            )

        for _ in range(3):
            sent.append(("console", form["form_key"], console_form))

        # when: they all arrive at once while the scheduler's jobs run (and, behind a long writer, while another
        # writer holds SQLite's lock past the lock timeout: a job's long transaction)
        holders: list[threading.Thread] = []
        database = db.engine.url.database

        def hold_meanwhile() -> None:
            time.sleep(0.3)
            holders.append(hold_write_lock(database, 1.5))

        starter = threading.Thread(target=hold_meanwhile)
        with jobs_running(served_app) as troubles:
            if busy:
                starter.start()
            answers = send_together([(label, call) for label, _, call in sent])
            if busy:
                starter.join()
            for holder in holders:
                holder.join()
            time.sleep(1)
        # and: every key is sent once more afterwards (a client retrying), and each notification (WeChat retrying)
        retried = {}
        for label, k, call in sent:
            if (k is not None or label == "notify") and (k or call) not in retried:
                again = call()
                body = again.json() if again.headers.get("Content-Type", "").startswith("application/json") else None
                retried[k or call] = (
                    label,
                    again.status_code,
                    body if again.status_code != 302 else again.headers["Location"],
                )
        served_sim = simulator(served_app).dispatcher
        assert served_sim.wait_idle(20)
        served_sim.stop()
    with served_app.app_context():
        db.engine.dispose()

    # then: no 500, nothing hung, every answer a success or a clear refusal; a busy one says when to retry
    statuses = Counter((a[3], a[0]) for a in answers)
    assert all(a[0] in OK_OR_REFUSED for a in answers), (statuses, [a for a in answers if a[0] not in OK_OR_REFUSED])
    assert all(a[4].get("Retry-After") for a in answers if a[0] == 503), statuses
    slowest = max(a[2] for a in answers)
    assert slowest < 4 * lock_timeout_s + 2, (slowest, statuses)
    # (a transfer's answer met by the busy database: test_a_transfer_wechat_took_while_a_job_holds_the_lock_…)
    assert not [t for t in troubles if "failed" in t and not (busy and t.startswith("payout call failed"))], troubles
    # every key answered one way: its successes alike, and the retry afterwards the same again
    by_key: dict = {}
    for (label, k, _), answer in zip(sent, answers, strict=True):
        # a console form refused shows its page again with the reason (200: "in progress", on PostgreSQL, while
        # its twin runs), as every console refusal does
        if k is not None and answer[0] < 400 and not (label == "console" and answer[0] == 200):
            body = answer[1] if answer[0] != 302 else answer[4]["Location"]
            by_key.setdefault(k, []).append(same_answer(body))
    for k, bodies in by_key.items():
        assert all(b == bodies[0] for b in bodies), bodies
        label, status, again = retried[k]
        assert status < 400 and same_answer(again) == bodies[0], (k, bodies[0], status, again)
    # what the successes made, first answers and retries together: exactly what is in the database
    made_by = {label: set() for label in ("claim", "order", "withdrawal", "refund", "console")}
    for (label, _, _), answer in zip(sent, answers, strict=True):
        if label in made_by and answer[0] in (201, 302):
            made_by[label].add(made(label, answer[0], answer[1] if answer[0] != 302 else answer[4]["Location"]))
    for label, status, again in retried.values():
        if label in made_by and status in (201, 302):
            made_by[label].add(made(label, status, again))
    unresolved = [
        v for v in retried.values() if v[1] == 503 or (v[1] == 409 and v[2].get("error") == "idempotency_in_progress")
    ]
    assert not unresolved, unresolved
    db.session.rollback()
    # the hot campaign: no more than the 6 packets its budget holds, each one a claimant was told of
    packets = db.session.execute(select(RedPacket.id).where(RedPacket.campaign_id == campaign_id)).scalars().all()
    assert set(packets) == made_by["claim"] and len(packets) <= 6, (packets, made_by["claim"])
    assert db.session.get(Campaign, campaign_id).budget_reserved_fen == len(packets) * RESERVATION
    # the spender's balance: 3 yuan for each order made, each one answered
    orders = db.session.execute(select(Order.id).where(Order.user_id == spender_id)).scalars().all()
    assert set(orders) == made_by["order"] and cash(spender_id) == 10_00 - 3_00 * len(orders) >= 1_00
    # the withdrawers: one payout of 3 yuan for each withdrawal answered made
    payouts = db.session.execute(select(Payout.id).where(Payout.user_id.in_(withdrawer_ids))).scalars().all()
    assert set(payouts) == made_by["withdrawal"]
    assert sum(cash(u) for u in withdrawer_ids) == 4 * 10_00 - 3_00 * len(payouts)
    # the refunds: at most what was paid, each one answered; the notifications: each order paid once
    refunds = db.session.execute(select(Refund.id, Refund.amount_fen)).all()
    assert {r.id for r in refunds} == made_by["refund"] and sum(r.amount_fen for r in refunds) <= 100_00
    for oid, _ in notified:
        assert db.session.get(Order, oid).status == "paid"
    campaigns = db.session.execute(select(func.count()).select_from(Campaign)).scalar_one()
    assert campaigns == 1 + len(made_by["console"]) == 2
    if not busy:  # all of it went through: the exact figures
        assert (len(packets), len(orders), len(payouts), sum(r.amount_fen for r in refunds)) == (6, 3, 12, 90_00)
    assert db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() > entries
    clean_ledger()


# -- a transfer WeChat took while the database is busy: recorded, not left to its lease --------------------------


def test_a_transfer_wechat_took_while_a_job_holds_the_lock_is_recorded_by_the_same_run(
    app_settings,  # noqa: F811
    app,
    make_user,
    monkeypatch,
    caplog,
):
    import jobs.payouts as dispatcher
    from jobs.scheduler import in_app
    from models import Payout
    from payouts.operations import withdraw
    from tests.challenge_helpers import fund
    from tests.money_helpers import app_money

    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    # given: a withdrawal of 3 yuan waiting for the dispatcher, which waits one second for SQLite's lock; right after
    # WeChat took the transfer, another writer (a job of `make run`'s own scheduler) holds the lock for 1.6 s
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user.id, 5_00)
    payout_id = withdraw(user, 3_00, 1_00, "busy-record", money=app_money()).id
    db.session.commit()
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    path, holders = db.engine.url.database, []
    point = dispatcher.fault_point

    def busy_before_the_record(name: str) -> None:
        if name == "before_record_commit" and not holders:
            holders.append(hold_write_lock(path, 1.6))
        point(name)

    monkeypatch.setattr(dispatcher, "fault_point", busy_before_the_record)
    release_test_session()
    try:
        # when: the dispatcher runs
        with caplog.at_level(logging.WARNING):
            in_app(impatient, dispatcher.dispatch_payouts)()
    finally:
        for thread in holders:
            thread.join()
        with impatient.app_context():
            db.engine.dispose()

    # then: the transfer WeChat took is recorded by this run (waiting for the person's confirmation), no error said
    assert holders, "the dispatcher never reached its record"
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    db.session.rollback()
    assert db.session.get(Payout, payout_id).status == "waiting_user_confirm", failed
    assert not failed, failed


# -- a job's row that met a busy database: deferred, not an operator's alert ----------------------------------------


def test_a_jobs_row_that_waited_past_the_lock_timeout_is_deferred_without_an_alert(app_settings, app, monkeypatch):  # noqa: F811
    import jobs.insights as rollups
    from jobs.scheduler import in_app
    from models import Alert

    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    # given: the rollup job waits one second for SQLite's lock; as it begins today's rebuild another writer (a long
    # request, `make run`'s web threads in the same process) holds the lock for 1.6 s
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    path, holders = db.engine.url.database, []
    rebuild = rollups.rebuild

    def busy_rebuild(days, now):
        if not holders:
            holders.append(hold_write_lock(path, 1.6))
        return rebuild(days, now)

    monkeypatch.setattr(rollups, "rebuild", busy_rebuild)
    release_test_session()
    errors: list[str] = []

    class Caught(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    handler = Caught()
    logging.getLogger().addHandler(handler)
    try:
        # when: the job runs
        in_app(impatient, rollups.insights_rollup_job)()
    finally:
        logging.getLogger().removeHandler(handler)
        for thread in holders:
            thread.join()
        with impatient.app_context():
            db.engine.dispose()

    # then: no operator is alerted and no error is logged for it: the next run rebuilds the day
    assert holders, "the rebuild never began"
    db.session.rollback()
    alerts = db.session.execute(select(Alert.kind, Alert.subject)).all()
    assert (alerts, errors) == ([], []), (alerts, errors)


def test_a_keyed_refusal_whose_answer_meets_a_busy_database_is_answered_and_its_retry_runs(
    app_settings,  # noqa: F811
    app,
    paid_order,
    make_operator,
    monkeypatch,
):
    # given: the server waits one second for SQLite's lock; a refund of more than was paid is refused (422, kept as
    # the key's answer) just as a job takes the write lock for a little longer than that
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    finance = make_operator("finance")[1]
    path, holders = db.engine.url.database, []
    made = refunds_admin.call_between_commits

    def refused_then_busy(*args):
        try:
            return made(*args)
        except Exception:
            if not holders:
                holders.append(hold_write_lock(path, 1.6))
            raise

    monkeypatch.setattr(refunds_admin, "call_between_commits", refused_then_busy)
    headers = {**finance, "Idempotency-Key": key()}
    body = {"amount_fen": 200_00, "reason": "too much"}
    order_id = paid_order.id
    try:
        with served(impatient) as base:
            # when: the operator sends it, then again with the same key once the lock is free
            url = f"{base}/admin/api/orders/{order_id}/refunds"
            first = requests.post(url, json=body, headers=headers, timeout=30)
            for thread in holders:
                thread.join()
            again = requests.post(url, json=body, headers=headers, timeout=30)
    finally:
        for thread in holders:
            thread.join()
        with impatient.app_context():
            db.engine.dispose()

    # then: the refusal is answered as it is, and the retry gets the same (never 409 "in progress" for a minute)
    assert holders, "the refusal never came"
    assert (first.status_code, first.json()["error"]) == (422, "refund_amount"), first.text
    assert (again.status_code, again.json()["error"]) == (422, "refund_amount"), again.text
    assert total(Refund.amount_fen) == 0
