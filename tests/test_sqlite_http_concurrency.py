"""The money endpoints under real concurrency, as `make run` serves them (SQLite file, threads) and on PostgreSQL:
the same request, or two requests racing for one thing, sent at once from many threads, each with its own app
context and connection. Nothing may be lost or doubled, no answer may be a 500, and the ledger check stays clean.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, update

from app import create_app
from jobs.orders import query_unnotified_payments
from jobs.payouts import dispatch_payouts
from ledger import Leg, account, check_ledger, post_entry
from models import AccountKind, Campaign, LedgerEntry, Order, Payout, Receivable, RedPacket, Refund, User, db, utcnow
from payouts.operations import withdraw
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.concurrency import post_together, together
from tests.conftest import release_test_session
from tests.money_helpers import app_money
from tests.test_claim_sql import RESERVATION, claim_campaign
from tests.test_simulator_e2e import app_settings, delivered, login, pay_at_checkout  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import (  # noqa: F401 - fixtures
    NOTIFY,
    count,
    make_order,
    no_network,
    simulator,
    transaction_resource,
)
from web import payment_api

REFUNDS = "/admin/api/orders/{}/refunds"


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


def key() -> str:
    return uuid.uuid4().hex


def clean_ledger() -> None:
    db.session.rollback()
    report = check_ledger()
    assert report.ok, report.violations


def test_two_whole_refunds_of_one_order_sent_at_once_refund_it_once(app, paid_order, make_operator, delivered):  # noqa: F811
    # given: a paid order of 100 yuan; a finance operator double-clicks "refund all" (two keys)
    finance = make_operator("finance")[1]
    body = {"amount_fen": 10_000, "reason": "double click"}
    path = REFUNDS.format(paid_order.id)

    # when: both requests arrive at once
    answers = post_together(app, [(path, {**finance, "Idempotency-Key": key()}, body) for _ in range(4)])
    delivered()

    # then: one refund of 100 yuan, the others refused clearly; never a 500
    assert Counter(status for status, _ in answers)[201] == 1, answers
    assert all(status in (201, 409, 422) for status, _ in answers), answers
    refunded = db.session.execute(select(func.coalesce(func.sum(Refund.amount_fen), 0))).scalar_one()
    assert refunded == 10_000
    clean_ledger()


def test_one_payment_notified_several_times_at_once_while_the_query_job_finds_it_paid_applies_once(
    app,
    client,
    make_product,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
):
    # given: an order paid at WeChat whose notification has not arrived yet, past the query job's grace period
    alice = login(client, "alice")
    product = make_product(price_fen=3_000)
    created = client.post("/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=alice)
    assert created.status_code == 201, created.json
    sim = simulator(app)
    sim.dispatcher.stop()
    sim.notify = lambda *_args, **_kwargs: None
    try:
        sim.pay(created.json["payment"]["pay_params"]["package"].removeprefix("prepay_id="))
    finally:
        del sim.notify
    order_id, out_trade_no = created.json["id"], created.json["out_trade_no"]
    db.session.execute(update(Order).where(Order.id == order_id).values(prepay_at=utcnow() - timedelta(minutes=3)))
    db.session.commit()
    resource = sim.transaction_view(sim.orders[out_trade_no])
    headers, body = sim.build_notification("TRANSACTION.SUCCESS", resource, "transaction")
    entries = count(LedgerEntry)

    # when: WeChat delivers the notification four times at once while the query job runs
    def work(i: int):
        if i == 0:
            return query_unnotified_payments()
        return app.test_client().post(NOTIFY, data=body, headers=headers).status_code

    results = together(5, work, app=app)

    # then: every delivery is acknowledged, and the payment is applied exactly once
    assert results[1:] == [204] * 4, results
    # the job applies it, finds it applied, finds it settled between its claim and its read ("skipped"), or finds
    # nothing left to claim
    assert results[0] in ({"applied": 1}, {"already_applied": 1}, {"skipped": 1}, {}), results
    db.session.rollback()
    assert db.session.get(Order, order_id).status == "paid"
    assert count(LedgerEntry) == entries + 1
    clean_ledger()


# -- every pooled connection taken: a request waiting past the pool's timeout ---------------------------------------


def fund(user_id: int, cash_fen: int) -> None:
    cash = account(AccountKind.USER_CASH, "user", user_id)
    post_entry(
        f"fund:cash:{user_id}",
        "test rebate",
        [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -cash_fen), Leg(cash, cash_fen)],
    )
    db.session.commit()


def test_a_request_waiting_past_the_pools_timeout_for_a_connection_answers_503_not_500(
    app_settings,
    app,
    make_user,
    user_headers,
    make_order,
):
    # given: a second app whose every pooled connection is taken (a burst of requests queued behind a long writer:
    # `make run` serves each request in its own thread, and SQLite's pool holds 15), waiting half a second for one
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user.id, 5_00)
    headers = user_headers(user, **{"Idempotency-Key": "pool-1"})
    order = make_order(user=user)
    wechat_headers, notice = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    entries = count(LedgerEntry)
    release_test_session()
    with impatient.app_context():
        pool = db.engine.pool
        pool._timeout = 0.5  # QueuePool's pool_timeout (30 s by default)
        taken = [pool.connect() for _ in range(pool.size() + pool._max_overflow)]
    try:
        # when: a withdrawal and a payment notification arrive
        response = impatient.test_client().post("/api/v1/me/withdrawals", json={"amount_fen": 3_00}, headers=headers)
        notified = impatient.test_client().post(NOTIFY, data=notice, headers=wechat_headers)
    finally:
        for conn in taken:
            conn.close()
        with impatient.app_context():
            db.engine.dispose()

    # then: 503 + Retry-After ("busy"), as for a lock held too long, not a 500; nothing was written
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"] == "busy"
    assert notified.status_code == 503  # WeChat delivers it again
    assert count(Payout) == 0 and count(LedgerEntry) == entries
    # and once connections are free the same request goes through
    again = app.test_client().post("/api/v1/me/withdrawals", json={"amount_fen": 3_00}, headers=headers)
    assert again.status_code == 201, again.get_json()


def test_an_order_whose_prepay_meets_a_busy_database_says_busy_not_internal_error(
    app_settings,
    app,
    make_user,
    make_product,
    user_headers,
    monkeypatch,
    no_network,  # noqa: F811
):
    # given: an app that waits one second for locks; while WeChat answers the prepay, another writer takes the lock
    # the prepay's record step needs (SQLite's write lock; the order's row on PostgreSQL) and keeps it
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    user = make_user(appid=app.config["WECHAT_APPID"])
    product = make_product(price_fen=3_000)
    headers = user_headers(user, **{"Idempotency-Key": "prepay-busy"})
    release_test_session()
    holder = db.engine.connect()
    asked = payment_api._ask_wechat

    def ask_then_lock(facts):
        prepay_id = asked(facts)
        holder.begin()
        if holder.dialect.name == "sqlite":
            holder.exec_driver_sql("UPDATE orders SET id = id WHERE 0")  # BEGIN IMMEDIATE took the lock
        else:
            holder.execute(select(Order.id).where(Order.id == facts.order_id).with_for_update())
        return prepay_id

    monkeypatch.setattr(payment_api, "_ask_wechat", ask_then_lock)
    try:
        # when: the person creates the order
        body = {"lines": [{"product_id": product.id, "quantity": 1}]}
        response = impatient.test_client().post("/api/v1/orders", json=body, headers=headers)
    finally:
        holder.rollback()
        holder.close()
        with impatient.app_context():
            db.engine.dispose()

    # then: the order is made (201); the payment part says the database was busy, to call /pay again shortly
    assert response.status_code == 201, response.get_json()
    assert response.json["payment"] is None
    assert response.json["payment_error"]["error"] == "busy", response.json


# -- the wallet read while a withdrawal commits -------------------------------------------------------------------


def test_the_wallet_read_while_a_withdrawal_commits_shows_the_money_once_never_missing(app, make_user, user_headers):
    # given: a person holding 5 yuan, reading their wallet; a withdrawal of 3 yuan (the same person's other tap)
    # commits while the read runs: after the payouts in progress were read, before the balances are
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user.id, 5_00)
    headers, user_id = user_headers(user), user.id
    release_test_session()
    done: list = []

    def withdraw_meanwhile(conn, cursor, statement, parameters, context, executemany):
        if done or "ledger_postings" not in statement or conn.dialect.name != "postgresql":
            return  # on SQLite the read holds the write lock (BEGIN IMMEDIATE): no withdrawal can commit inside it
        done.append(True)
        with app.app_context():
            withdraw(db.session.get(User, user_id), 3_00, 1_00, "meanwhile", money=app_money())
            db.session.commit()

    event.listen(db.engine, "before_cursor_execute", withdraw_meanwhile)
    try:
        # when
        wallet = app.test_client().get("/api/v1/me/wallet", headers=headers)
    finally:
        event.remove(db.engine, "before_cursor_execute", withdraw_meanwhile)

    # then: what the wallet shows adds up to the 5 yuan: before the withdrawal or after it, never in between
    assert wallet.status_code == 200, wallet.get_json()
    shown = wallet.json
    assert done or db.engine.dialect.name == "sqlite", "the withdrawal never ran inside the read"
    assert (shown["cash_fen"], shown["payouts_in_progress_fen"]) in ((5_00, 0), (2_00, 3_00)), shown


# -- the payout dispatcher while a refund claws the rebate back ---------------------------------------------------


@pytest.mark.parametrize("round_", range(3))
def test_payout_dispatch_racing_a_refund_of_the_rebates_order_moves_the_money_once(
    app,
    make_user,
    make_product,
    make_campaign,
    pay,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
    round_,
):
    # given: a paid order whose 5 % cashback (5 yuan) waits as a WeChat change payout
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 20_00}]}
    campaign = make_campaign(rules, budget_limit_fen=100_00, packet_amount_fen=10_00)
    user = make_user(appid=app.config["WECHAT_APPID"])
    product = make_product(price_fen=110_00)
    packet = issue_packet(campaign, user, source="test", source_ref=f"race-{round_}", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    [payout] = db.session.execute(select(Payout)).scalars().all()
    payout_id, out_trade_no = payout.id, order.out_trade_no

    # when: the dispatcher job runs while the whole order is refunded (asked, then WeChat's success applied)
    def work(i: int):
        if i == 0:
            return dict(dispatch_payouts())
        found = db.session.execute(select(Order).where(Order.out_trade_no == out_trade_no)).scalar_one()
        begin_refund(found, "R-race", found.payable_fen)
        db.session.commit()
        return apply_refund(
            out_trade_no, "R-race", found.payable_fen, utcnow(), refund_id="wx-R-race", money=app_money()
        )

    results = together(2, work, app=app)

    # then: nothing failed; the payout either left (and the 5 yuan is owed back) or never did (cancelled)
    assert not any(isinstance(r, Exception) for r in results), results
    db.session.rollback()
    sent = db.session.get(Payout, payout_id)
    owed = db.session.execute(select(func.coalesce(func.sum(Receivable.outstanding_fen), 0))).scalar_one()
    if sent.status in ("cancelled", "canceled"):
        assert owed == 0, (sent.status, owed)
    else:
        assert sent.status == "waiting_user_confirm" and owed == 5_00, (sent.status, sent.held, owed, results)
    clean_ledger()


# -- a hot campaign's last packets, keyed and unkeyed claims together ---------------------------------------------


def test_keyed_and_unkeyed_claims_of_a_hot_campaigns_last_packets_at_once_get_exactly_what_is_left(
    app, make_campaign, make_user, user_headers
):
    # given: a self-serve campaign already claimed from once (on PostgreSQL its copy is kept: an unkeyed claim is one
    # statement, a keyed one runs in a transaction with its key), its budget holding 5 more packets
    campaign = claim_campaign(make_campaign, budget_limit_fen=6 * RESERVATION)
    path = f"/api/v1/campaigns/{campaign.id}/claim"
    first = app.test_client().post(path, headers=user_headers(make_user()), environ_base={"REMOTE_ADDR": "192.0.2.250"})
    assert first.status_code == 201, first.get_json()

    # when: 24 people claim at once, every other one with an Idempotency-Key
    requests = [
        (
            path,
            user_headers(make_user(), **({"Idempotency-Key": key()} if i % 2 else {})),
            {"REMOTE_ADDR": f"192.0.2.{i}"},
        )
        for i in range(24)
    ]
    results = post_together(app, requests, as_="environ_base")

    # then: exactly the 5 left are claimed, the others told the budget is spent; the counters agree with the packets
    assert Counter(results) == {(201, None): 5, (409, "budget_exhausted"): 19}, results
    db.session.rollback()
    fresh = db.session.get(Campaign, campaign.id)
    packets = db.session.execute(
        select(func.count(), func.sum(RedPacket.reserved_fen)).where(RedPacket.campaign_id == campaign.id)
    ).one()
    assert (fresh.budget_reserved_fen, tuple(packets)) == (6 * RESERVATION, (6, 6 * RESERVATION))


def test_a_request_waits_for_a_pooled_connection_no_longer_than_for_a_lock(app):
    """The pool's wait is the lock's (``DATABASE_LOCK_TIMEOUT_S``), not SQLAlchemy's 30 s: a burst queued behind a
    long writer answers 503 within the bound the README gives, on both databases."""
    from app import _engine_options

    assert db.engine.pool.timeout() == app.config["DATABASE_LOCK_TIMEOUT_S"]
    for url in ("sqlite:////tmp/shop.db", "postgresql+psycopg://u@h/db"):
        assert _engine_options(url, 7)["pool_timeout"] == 7
    assert "pool_timeout" not in _engine_options("sqlite://", 7)  # in memory: one connection, no queue
