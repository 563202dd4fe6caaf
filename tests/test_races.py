"""Races over HTTP, on SQLite (the embedded default) and on PostgreSQL alike.

SQLite ignores ``SELECT … FOR UPDATE``; every transaction opens with ``BEGIN IMMEDIATE``
instead (app.py), so each read-check-write below is serialised there as the row locks
serialise it on PostgreSQL. A lock held longer than ``DATABASE_LOCK_TIMEOUT_S`` is
answered 503 + Retry-After, never 500.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import func, select, text

from app import create_app
from ledger import Leg, account, balance, check_ledger, post_entry, reverse_entry
from models import (
    AccountKind,
    Campaign,
    LedgerEntry,
    Order,
    OrderPacket,
    Payout,
    Receivable,
    RedPacket,
    User,
    db,
    utcnow,
)
from rebate import issue_packet
from rebate.packets import generate_batch
from tests.concurrency import together
from tests.conftest import release_test_session
from tests.test_wechat_callbacks import no_network  # noqa: F401 - fixture

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]}
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def count(model, *where) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def cash_of(user_id: int) -> int:
    return balance(account(AccountKind.USER_CASH, "user", user_id))


def fund(user_id: int, amount_fen: int, key: str = "race") -> None:
    post_entry(
        f"fund:{user_id}:{key}",
        "rebate",
        [
            Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen),
            Leg(account(AccountKind.USER_CASH, "user", user_id), amount_fen),
        ],
    )
    db.session.commit()


# -- withdrawals ---------------------------------------------------------------------


def test_ten_concurrent_withdrawals_of_a_400_fen_balance_send_one_transfer(app, make_user, user_headers):
    # given: 400 fen of balance, ten requests for all of it with different keys
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user.id, 4_00)
    headers = [user_headers(user, **{"Idempotency-Key": f"w-{i}"}) for i in range(10)]

    # when
    def work(i: int):
        return app.test_client().post("/api/v1/me/withdrawals", json={"amount_fen": 4_00}, headers=headers[i])

    results = together(10, work)

    # then: one transfer, nine refusals, the balance never below zero
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sorted(r.status_code for r in results) == [201] + [409] * 9, [r.get_json() for r in results]
    assert count(Payout) == 1
    assert cash_of(user.id) == 0


# -- one packet, many orders ---------------------------------------------------------


def test_ten_concurrent_orders_spending_one_packet_discount_exactly_one(
    app, make_campaign, make_product, make_user, user_headers
):
    # given: a 10-yuan packet and a 50-yuan product
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="race", source_ref="p1", now=utcnow())
    db.session.commit()
    product = make_product(price_fen=50_00)
    body = {"lines": [{"product_id": product.id, "quantity": 1}], "red_packet_id": packet.id}
    headers = [user_headers(buyer, **{"Idempotency-Key": f"o-{i}"}) for i in range(10)]

    # when: ten orders try to spend it at once
    def work(i: int):
        return app.test_client().post("/api/v1/orders", json=body, headers=headers[i])

    results = together(10, work)

    # then: one order carries the discount; the others are told the packet is taken and create nothing
    assert not [r for r in results if isinstance(r, Exception)], results
    statuses = Counter(r.status_code for r in results)
    assert statuses == {201: 1, 409: 9}, [r.get_json() for r in results]
    assert {r.get_json()["error"] for r in results if r.status_code == 409} == {"packet_locked"}
    assert count(Order) == 1
    assert count(OrderPacket) == 1
    assert check_ledger().ok


# -- one code, many claimants --------------------------------------------------------


def test_ten_people_claiming_one_code_at_once_one_wins_and_nothing_stays_reserved(
    app, make_campaign, make_user, user_headers
):
    # given: one claim code with no claim limits, ten people
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, claim_limits=NO_LIMITS)
    (code,) = [p.claim_code for p in generate_batch(campaign, 1, utcnow(), batch_ref="one")]
    db.session.commit()
    headers = [user_headers(make_user()) for _ in range(10)]

    # when
    def work(i: int):
        return app.test_client().post("/api/v1/red-packets/claim", json={"code": code}, headers=headers[i])

    results = together(10, work)

    # then: one owner, one 201; the budget holds exactly one packet's reservation
    assert not [r for r in results if isinstance(r, Exception)], results
    statuses = Counter(r.status_code for r in results)
    assert statuses[201] == 1, [r.get_json() for r in results]
    assert set(statuses) <= {201, 404, 409}, [r.get_json() for r in results]
    db.session.rollback()
    packet = db.session.execute(select(RedPacket)).scalar_one()
    fresh = db.session.get(Campaign, campaign.id)
    assert fresh.budget_reserved_fen == packet.reserved_fen > 0
    assert check_ledger().ok


# -- logins while another writer works -------------------------------------------------


def test_logins_wait_for_a_writer_instead_of_failing(app, no_network):  # noqa: F811
    # given: a writer that holds the database for a moment (as the dispatcher's record step does)
    writer_started = threading.Event()

    def writer():
        with app.app_context():
            db.session.execute(text("UPDATE users SET nickname = nickname WHERE id = -1"))
            if db.engine.dialect.name == "postgresql":  # take a lock the logins need
                db.session.execute(text("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"))
            writer_started.set()
            time.sleep(1.0)
            db.session.commit()
            db.session.remove()

    release_test_session()
    thread = threading.Thread(target=writer)
    thread.start()
    writer_started.wait(10)

    # when: five people log in meanwhile
    results = together(5, lambda i: app.test_client().post("/api/v1/auth/login", json={"code": f"code-user{i}"}))
    thread.join()

    # then: every login waited and succeeded
    assert [r.status_code for r in results] == [200] * 5, [r.get_json() for r in results]
    assert count(User) == 5


def test_a_lock_held_past_the_timeout_answers_503_with_retry_after_and_changes_nothing(
    app_settings, app, make_user, user_headers
):
    # given: a second app that waits one second for locks, and a transaction holding the user's row
    impatient = create_app({**app_settings, "DATABASE_LOCK_TIMEOUT_S": 1})
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user.id, 5_00)
    headers = user_headers(user, **{"Idempotency-Key": "busy-1"})
    entries, user_id = count(LedgerEntry), user.id
    release_test_session()
    holder = db.engine.connect()
    tx = holder.begin()
    holder.execute(select(User.id).where(User.id == user_id).with_for_update())
    try:
        # when
        response = impatient.test_client().post("/api/v1/me/withdrawals", json={"amount_fen": 3_00}, headers=headers)
    finally:
        tx.rollback()
        holder.close()
        with impatient.app_context():
            db.engine.dispose()

    # then: 503, told when to come back; nothing was written
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["error"] == "busy"
    assert count(Payout) == 0 and count(LedgerEntry) == entries
    # and once the lock is gone the same request goes through
    again = app.test_client().post("/api/v1/me/withdrawals", json={"amount_fen": 3_00}, headers=headers)
    assert again.status_code == 201, again.get_json()


# -- what the ledger check must see ----------------------------------------------------


def test_ledger_check_sees_a_negative_balance_no_receivable_explains(app, make_user, make_campaign):
    # given: a person's balance driven below zero with nothing owed back
    user = make_user()
    campaign = make_campaign(RULES)
    entry = post_entry(
        "overdraw",
        "a withdrawal that raced",
        [
            Leg(account(AccountKind.USER_CASH, "user", user.id), -3_00),
            Leg(account(AccountKind.PLATFORM_MARKETING_FUND), 3_00),
        ],
    )
    db.session.commit()

    # then: a violation naming the account; a receivable of the same size explains it
    assert any("is at -300" in v for v in check_ledger().violations)
    receivable = Receivable(
        beneficiary_type="user", beneficiary_id=user.id, kind="cash", campaign_id=campaign.id, outstanding_fen=3_00
    )
    db.session.add(receivable)
    db.session.commit()
    assert check_ledger().ok
    receivable.outstanding_fen = 1_00
    db.session.commit()
    assert not check_ledger().ok
    reverse_entry(entry, "undo-overdraw", "undo the planted overdraft")
    db.session.delete(receivable)
    db.session.commit()


def test_ledger_check_sees_a_packet_discounting_two_live_orders(app, make_campaign, make_product, make_user):
    # given: one packet recorded on two paid orders (what the SQLite race produced)
    campaign = make_campaign(RULES, packet_amount_fen=10_00)
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="race", source_ref="twice", now=utcnow())
    product = make_product(price_fen=50_00)
    orders = []
    for n in range(2):
        order = Order(
            out_trade_no=f"OTWICE{n}",
            user_id=buyer.id,
            merchant_id=product.merchant_id,
            total_fen=50_00,
            discount_fen=10_00,
            payable_fen=40_00,
            status="paid",
            time_expire=utcnow(),
        )
        db.session.add(order)
        db.session.flush()
        db.session.add(OrderPacket(order_id=order.id, packet_id=packet.id, discount_fen=10_00))
        orders.append(order)
    db.session.commit()

    # then
    assert f"red packet {packet.id} discounts 2 live orders" in check_ledger().violations
    orders[0].status = "closed"  # a closed order gave its packet back: no longer a violation
    db.session.commit()
    assert check_ledger().ok


def test_ledger_check_sees_a_budget_reserving_more_than_its_live_packets(app, make_campaign, make_user):
    # given: a reservation left behind by a claim that lost its race
    campaign = make_campaign(RULES, budget_limit_fen=100_00, packet_amount_fen=10_00)
    issue_packet(campaign, make_user(), source="race", source_ref="kept", now=utcnow())
    db.session.commit()
    assert check_ledger().ok
    db.session.execute(
        text("UPDATE campaigns SET budget_reserved_fen = budget_reserved_fen + 1500 WHERE id = :id"),
        {"id": campaign.id},
    )
    db.session.commit()

    # then
    violations = check_ledger().violations
    assert any(v.startswith(f"campaign {campaign.id} reserves") for v in violations), violations
    db.session.execute(
        text("UPDATE campaigns SET budget_reserved_fen = budget_reserved_fen - 1500 WHERE id = :id"),
        {"id": campaign.id},
    )
    db.session.commit()


def test_every_sqlite_transaction_takes_the_write_lock_at_its_start(app):
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: PostgreSQL keeps its row locks")
    seen: list[str] = []
    from sqlalchemy import event

    def record(conn, cursor, sql, *args):
        seen.append(sql)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        release_test_session()
        db.session.execute(select(func.count(User.id)))
        db.session.rollback()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert seen[0] == "BEGIN IMMEDIATE"


def test_ledger_check_sees_a_merchant_deposit_spent_beyond_what_was_paid_in(app, make_merchant):
    # given: a deposit holding 1 yuan that paid out 3
    shop = make_merchant()
    deposit = account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)
    post_entry("dep-in", "top-up", [Leg(account(AccountKind.WECHAT_SETTLEMENT), -1_00), Leg(deposit, 1_00)])
    out = post_entry(
        "dep-out", "discount", [Leg(deposit, -3_00), Leg(account(AccountKind.PLATFORM_MARKETING_FUND), 3_00)]
    )
    db.session.commit()

    # then
    assert any(v.startswith(f"{deposit.code} is overdrawn at -200") for v in check_ledger().violations)
    reverse_entry(out, "dep-out-undo", "undo the planted overdraft")
    db.session.commit()
    assert check_ledger().ok
