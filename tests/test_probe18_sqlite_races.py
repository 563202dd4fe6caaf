"""Probe 18: the money paths under real threads on the embedded default (a SQLite file, one process, as `make run`
serves it), each request a thread with its own test client. After each race: the ledger check, no budget over, no
money made or lost, and every refusal a clear 409/429/503 (never a 500, never a 503 that did something)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import Counter

import pytest
import time_machine
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from app import create_app
from jobs.expiring import expire_packets_and_conditions
from jobs.ledger_marks import fold_ledger_marks
from jobs.payouts import dispatch_payouts, settle_covered_debts
from jobs.scheduler import in_app
from ledger import check_ledger
from models import ChallengeParticipant, LedgerEntry, Order, Payout, Refund, db
from tests.challenge_helpers import NOW, cash, fund, staked
from tests.concurrency import post_together, together
from tests.conftest import release_test_session
from tests.test_simulator_e2e import app_settings, delivered, login, pay_at_checkout  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from web import refunds_admin

REFUSED = {409, 429, 503}
IMPATIENT = "probe18:impatient"


def key() -> str:
    return uuid.uuid4().hex


def clean_ledger() -> None:
    db.session.rollback()
    report = check_ledger()
    assert report.ok, report.violations


def total(column, *where) -> int:
    db.session.rollback()
    return db.session.execute(select(func.coalesce(func.sum(column), 0)).where(*where)).scalar_one()


# -- a challenge joined by many at once ---------------------------------------------------------------------------


def test_fourteen_people_joining_a_challenge_for_five_at_once_stake_exactly_four(app, make_user, user_headers):
    with time_machine.travel(NOW, tick=False):
        alice = make_user()
        fund(alice.id, 10_00)
        people = [make_user() for _ in range(14)]
        for person in people:
            fund(person.id, 10_00)
        db.session.commit()
        spec = {"kind": "steps", "days": 2, "stake": 5_00, "start_day": "2026-12-02", "max_participants": 5}
        created = app.test_client().post(
            "/api/v1/challenges", json=spec, headers=user_headers(alice, **{"Idempotency-Key": key()})
        )
        assert created.status_code == 201, created.json
        cid = created.json["challenge_id"]
        path = f"/api/v1/challenges/{cid}/join"
        answers = post_together(app, [(path, user_headers(p), {}) for p in people])

    assert Counter(s for s, _ in answers)[200] == 4, answers
    assert all(s == 200 or s in REFUSED for s, _ in answers), answers
    db.session.rollback()
    joined = db.session.execute(select(func.count()).select_from(ChallengeParticipant)).scalar_one()
    assert joined == 5
    stakes = sum(staked(p.id) for p in [alice, *people])
    assert stakes == 5 * 5_00
    assert sum(cash(p.id) for p in [alice, *people]) + stakes == 15 * 10_00
    clean_ledger()


# -- refunds of one order at once (admin API) -------------------------------------------------------------------


@pytest.fixture
def paid_order(app, client, make_product, delivered, no_network):  # noqa: F811
    alice = login(client, "alice")
    product = make_product(price_fen=10_000)
    created = client.post("/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=alice)
    pay_at_checkout(client, created.json["payment"])
    delivered()
    order = db.session.get(Order, created.json["id"])
    assert order.status == "paid"
    return order


def test_ten_partial_refunds_of_one_order_at_once_never_refund_more_than_was_paid(
    app,
    paid_order,
    make_operator,
    delivered,  # noqa: F811
):
    finance = make_operator("finance")[1]
    path = f"/admin/api/orders/{paid_order.id}/refunds"
    body = {"amount_fen": 30_00, "reason": "partial"}
    entries = db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
    answers = post_together(app, [(path, {**finance, "Idempotency-Key": key()}, body) for _ in range(10)])
    delivered()

    assert Counter(s for s, _ in answers)[201] == 3, answers
    assert all(s == 201 or s in REFUSED | {422} for s, _ in answers), answers  # 422: more than is left to refund
    assert total(Refund.amount_fen) == 90_00
    assert total(Refund.amount_fen, Refund.status == "succeeded") == 90_00
    db.session.rollback()
    assert db.session.get(Order, paid_order.id).refunded_fen == 90_00
    assert db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() > entries
    clean_ledger()


# -- orders spending one balance ---------------------------------------------------------------------------------


def test_twelve_orders_spending_one_balance_at_once_spend_it_exactly(app, make_user, make_product, user_headers):
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user.id, 10_00)
    db.session.commit()
    product = make_product(price_fen=20_00)
    body = {"lines": [{"product_id": product.id, "quantity": 1}], "use_balance_fen": 3_00}
    answers = post_together(
        app, [("/api/v1/orders", user_headers(user, **{"Idempotency-Key": key()}), body) for _ in range(12)]
    )
    assert Counter(s for s, _ in answers)[201] == 3, answers
    assert all(s == 201 or s in REFUSED for s, _ in answers), answers
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Order)).scalar_one() == 3
    assert cash(user.id) == 1_00
    assert db.session.execute(select(func.count()).select_from(Payout)).scalar_one() == 0
    clean_ledger()


# -- a keyed request whose work waits past DATABASE_LOCK_TIMEOUT_S ---------------------------------------------


def test_a_keyed_withdrawal_that_waited_too_long_answers_503_and_its_retry_goes_through(
    app_settings, app, make_user, user_headers
):
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    # given: an app that waits one second for the lock; right after a keyed withdrawal's key is committed, another
    # writer takes the database's write lock (a job's long transaction, `make run`'s jobs in the same process) and
    # keeps it for 2.5 s: the withdrawal's own transaction waits past the timeout
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user.id, 5_00)
    db.session.commit()
    headers = user_headers(user, **{"Idempotency-Key": "w-busy"})
    entries = db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
    release_test_session()
    holding: list[threading.Thread] = []
    locked = threading.Event()
    path = db.engine.url.database

    def hold_the_lock():
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(2.5)
        other.execute("ROLLBACK")
        other.close()

    def after_the_key(session):
        if not holding and session.info.get(IMPATIENT):
            holding.append(threading.Thread(target=hold_the_lock))
            holding[0].start()
            locked.wait(5)  # the other writer has the lock before the withdrawal's own transaction begins

    def mark(session, transaction, connection):
        session.info[IMPATIENT] = connection.engine is engine

    with impatient.app_context():
        engine = db.engine
    event.listen(Session, "after_begin", mark)
    event.listen(Session, "after_commit", after_the_key)
    try:
        # when
        first = impatient.test_client().post("/api/v1/me/withdrawals", json={"amount_fen": 3_00}, headers=headers)
    finally:
        event.remove(Session, "after_commit", after_the_key)
        event.remove(Session, "after_begin", mark)
        for thread in holding:
            thread.join()
        with impatient.app_context():
            db.engine.dispose()

    # then: 503 + Retry-After, nothing moved; the retry the answer invites (same key) goes through
    assert first.status_code == 503, first.get_json()
    assert first.headers["Retry-After"] == "1"
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Payout)).scalar_one() == 0
    assert db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == entries
    again = app.test_client().post("/api/v1/me/withdrawals", json={"amount_fen": 3_00}, headers=headers)
    assert again.status_code == 201, again.get_json()
    assert cash(user.id) == 2_00
    clean_ledger()


# -- a refund WeChat took while the database was busy -----------------------------------------------------------


def hold_write_lock(path: str, seconds: float) -> threading.Thread:
    """Another writer takes SQLite's write lock (returns once it has it) and keeps it for ``seconds``."""
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


def test_a_refund_wechat_took_while_the_database_was_busy_is_recorded_not_answered_busy(
    app_settings,
    app,
    paid_order,
    make_operator,
    delivered,
    monkeypatch,  # noqa: F811
):
    # given: an app that waits one second for the lock; while WeChat answers the refund, another writer (a job of
    # `make run`'s own scheduler, say) takes the write lock for a little longer than that
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock")
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    finance = make_operator("finance")[1]
    path, holders = db.engine.url.database, []
    asked = refunds_admin.call_refund

    def ask_then_busy(*args, **kwargs):
        answer = asked(*args, **kwargs)
        holders.append(hold_write_lock(path, 1.6))
        return answer

    monkeypatch.setattr(refunds_admin, "call_refund", ask_then_busy)
    release_test_session()
    try:
        # when: a finance operator refunds 30 of the 100 yuan
        headers = {**finance, "Idempotency-Key": key()}
        body = {"amount_fen": 30_00, "reason": "busy"}
        answer = impatient.test_client().post(f"/admin/api/orders/{paid_order.id}/refunds", json=body, headers=headers)
    finally:
        for thread in holders:
            thread.join()
        impatient_sim = simulator(impatient).dispatcher
        assert impatient_sim.wait_idle(10)  # its refund's notification, delivered into the app
        impatient_sim.stop()
        with impatient.app_context():
            db.engine.dispose()
    delivered()

    # then: the refund WeChat took is answered as made (never "busy, try again": a retry from a fresh form would
    # refund another 30 yuan), and it is booked once
    assert answer.status_code == 201, answer.get_json()
    assert answer.json["amount_fen"] == 30_00
    assert total(Refund.amount_fen) == 30_00
    db.session.rollback()
    assert db.session.get(Order, paid_order.id).refunded_fen == 30_00
    clean_ledger()


# -- the jobs of `make run`'s own scheduler while requests write ------------------------------------------------


def test_the_in_process_jobs_running_while_withdrawals_write_fail_nothing_and_move_each_yuan_once(
    app,
    make_user,
    user_headers,
    caplog,
    no_network,  # noqa: F811
):
    # given: eight people holding 10 yuan each
    people = [make_user(appid=app.config["WECHAT_APPID"]) for _ in range(8)]
    for person in people:
        fund(person.id, 10_00)
    db.session.commit()
    headers = [user_headers(p, **{"Idempotency-Key": key()}) for p in people]
    jobs = [dispatch_payouts, fold_ledger_marks, settle_covered_debts, expire_packets_and_conditions]
    runs = [in_app(app, job) for job in jobs]

    # when: each withdraws 3 yuan while the scheduler's jobs run in their own threads, as under `make run`
    def work(i: int):
        if i < len(people):
            client = app.test_client()
            return client.post("/api/v1/me/withdrawals", json={"amount_fen": 3_00}, headers=headers[i]).status_code
        for _ in range(3):
            runs[i - len(people)]()
        return "ran"

    with caplog.at_level(logging.WARNING):
        results = together(len(people) + len(runs), work)
        in_app(app, dispatch_payouts)()  # what the requests queued meanwhile

    # then: every withdrawal made, no job failed or gave up on a busy database; each payout's 3 yuan left once
    assert results == [201] * len(people) + ["ran"] * len(runs), results
    troubles = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("jobs")]
    assert not troubles, troubles
    db.session.rollback()
    payouts = db.session.execute(select(Payout.status, Payout.amount_fen)).all()
    assert sorted(payouts) == [("waiting_user_confirm", 3_00)] * len(people), payouts
    assert [cash(p.id) for p in people] == [7_00] * len(people)
    clean_ledger()


# -- notices marked read at once -------------------------------------------------------------------------------


def test_twelve_marks_of_overlapping_notices_at_once_count_each_notice_once(app, make_user, user_headers):
    from models import Notice
    from notices import NoticeEvent, enqueue

    me = make_user()
    for i in range(6):
        enqueue(me.id, NoticeEvent.REBATE_LANDED, f"mine-{i}", {"amount_fen": 100 + i, "form": "balance"})
    db.session.commit()
    ids = db.session.execute(select(Notice.id).order_by(Notice.id)).scalars().all()
    headers = user_headers(me)
    bodies = [{"ids": ids[i % 4 : i % 4 + 3]} if i % 3 else {"all": True} for i in range(12)]
    results = together(
        12, lambda i: app.test_client().post("/api/v1/me/notices/read", json=bodies[i], headers=headers).json
    )
    assert sum(r["marked"] for r in results) == 6, results
    assert results and all(r["unread"] >= 0 for r in results), results
    db.session.rollback()
    assert db.session.execute(select(func.count()).where(Notice.read_at.is_(None))).scalar_one() == 0
