"""Races on the money path, on PostgreSQL and on SQLite (serialised by BEGIN IMMEDIATE there):
claims against one budget, duplicate payment
notifications, a payment racing a refund, concurrent idempotent order creation.

Each thread runs in its own app context (its own session and connection), starts at
a barrier and commits its own transaction; results are counted afterwards.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import func, select

from ledger import check_ledger
from models import (
    Campaign,
    IdempotencyRecord,
    LedgerEntry,
    Order,
    PaymentNotification,
    Payout,
    Rebate,
    RedPacket,
    Refund,
    User,
    db,
    utcnow,
)
from rebate import apply_refund, begin_refund, claim_packet, create_order
from rebate.errors import BudgetExhausted, RebateError
from rebate.orders import LineRequest
from rebate.packets import generate_batch
from tests.concurrency import together
from tests.money_helpers import app_money
from tests.payment_helpers import pay_as_wechat

RULES = {
    "roles": [
        {"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 5_00},
        {"role": "inviter", "rate_bps": 300, "form": "balance", "cap_fen": 3_00},
    ]
}
RESERVATION = 10_00 + 5_00 + 3_00


def count(model, *where) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def test_fifty_claims_against_a_budget_for_ten_reserve_exactly_ten(app, make_campaign, make_user):
    # given: 50 codes, a budget that covers exactly 10 reservations, 50 different people
    campaign = make_campaign(RULES, budget_limit_fen=10 * RESERVATION, packet_amount_fen=10_00)
    codes = [p.claim_code for p in generate_batch(campaign, 50, utcnow(), batch_ref="race")]
    db.session.commit()
    user_ids = [make_user().id for _ in range(50)]

    # when: they all claim at once
    def work(i: int):
        return claim_packet(codes[i], db.session.get(User, user_ids[i]), utcnow()).id

    results = together(50, work, app=app)

    # then: exactly 10 win, 40 are told the budget is exhausted, the counters are exact
    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"int": 10, "BudgetExhausted": 40}, results
    assert all(r.code == "budget_exhausted" for r in results if isinstance(r, BudgetExhausted))
    db.session.rollback()
    fresh = db.session.get(Campaign, campaign.id)
    assert (fresh.budget_reserved_fen, fresh.budget_committed_fen) == (10 * RESERVATION, 0)
    assert fresh.budget_reserved_fen + fresh.budget_committed_fen == fresh.budget_limit_fen
    assert count(RedPacket, RedPacket.status == "issued") == 10
    assert count(RedPacket, RedPacket.status == "unclaimed") == 40
    reserved = db.session.execute(select(func.sum(RedPacket.reserved_fen))).scalar_one()
    assert reserved == 10 * RESERVATION


def test_twenty_concurrent_payment_notifications_apply_once(app, make_campaign, make_user, make_product):
    # given: an order paid with a packet; the buyer has an inviter, so both rules award
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    [packet_row] = generate_batch(campaign, 1, utcnow(), batch_ref="one")
    db.session.commit()
    inviter = make_user()
    buyer = make_user(inviter=inviter)
    packet = claim_packet(packet_row.claim_code, buyer, utcnow())
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    out_trade_no, payable = order.out_trade_no, order.payable_fen

    # when: 20 deliveries arrive at once, half under one notification id, half without
    def work(i: int):
        return pay_as_wechat(out_trade_no, "tx-1", payable, utcnow(), notification_id="N-1" if i % 2 == 0 else None)

    results = together(20, work, app=app)

    # then: every call answers, exactly one applies; one sale, one set of rebates, one payout
    assert not [r for r in results if isinstance(r, Exception)], results
    outcomes = Counter(str(r) for r in results)
    assert outcomes["applied"] == 1
    assert outcomes["applied"] + outcomes["already_applied"] + outcomes["duplicate_notification"] == 20
    assert count(LedgerEntry, LedgerEntry.idempotency_key.like("order:%:sale")) == 1
    assert count(Rebate) == 2
    db.session.rollback()
    amounts = sorted(db.session.execute(select(Rebate.role, Rebate.amount_fen)).all())
    assert amounts == [("consumer", 4_50), ("inviter", 2_70)]
    assert count(Payout) == 1
    assert count(PaymentNotification) == 1
    fresh = db.session.get(Campaign, campaign.id)
    assert (fresh.budget_reserved_fen, fresh.budget_committed_fen) == (0, 10_00 + 4_50 + 2_70)
    assert check_ledger().ok


def test_payment_racing_a_refund_ends_consistent(app, make_campaign, make_user, make_product):
    # given: an unpaid order with a packet
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    [row] = generate_batch(campaign, 1, utcnow(), batch_ref="one")
    db.session.commit()
    buyer = make_user()
    packet = claim_packet(row.claim_code, buyer, utcnow())
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    out_trade_no, payable, order_id = order.out_trade_no, order.payable_fen, order.id
    paid = threading.Event()

    # when: thread 0 applies the payment while thread 1 refunds everything right after it
    def work(i: int):
        if i == 0:
            try:
                return pay_as_wechat(out_trade_no, "tx-1", payable, utcnow(), notification_id="N-1")
            finally:
                paid.set()
        paid.wait(timeout=30)
        target = db.session.get(Order, order_id)
        begin_refund(target, "R-1", payable)
        return apply_refund(out_trade_no, "R-1", payable, utcnow(), money=app_money()).status

    results = together(2, work, app=app)

    # then: either the refund saw the payment (refunded, everything reversed) or it was refused (paid)
    assert str(results[0]) == "applied", results
    db.session.rollback()
    final = db.session.get(Order, order_id)
    sale = count(LedgerEntry, LedgerEntry.idempotency_key == f"order:{order_id}:sale")
    assert sale == 1
    if isinstance(results[1], RebateError):
        assert results[1].code == "order_not_refundable"
        assert (final.status, final.refunded_fen, count(Refund)) == ("paid", 0, 0)
    else:
        assert results[1] == "succeeded", results
        assert (final.status, final.refunded_fen) == ("refunded", payable)
        assert count(LedgerEntry, LedgerEntry.idempotency_key.like("refund:%")) >= 1
        assert db.session.execute(select(func.sum(Rebate.amount_fen))).scalar_one() == 0
        fresh = db.session.get(Campaign, campaign.id)
        assert (fresh.budget_reserved_fen, fresh.budget_committed_fen) == (0, 0)
    report = check_ledger()
    assert report.ok, report.violations


def test_twenty_concurrent_orders_with_one_idempotency_key_make_one_order(app, make_product, make_user, user_headers):
    # given
    product = make_product(price_fen=25_00)
    buyer = make_user()
    headers = {**user_headers(buyer), "Idempotency-Key": "same-key"}
    body = {"lines": [{"product_id": product.id, "quantity": 2}]}

    # when: 20 identical requests arrive at once
    def work(i: int):
        response = app.test_client().post("/api/v1/orders", json=body, headers=headers)
        return response.status_code, response.get_json()

    results = together(20, work, app=app)

    # then: one order; the others are a 201 replay of it or a 409 "in progress"
    assert not [r for r in results if isinstance(r, Exception)], results
    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {201, 409}, results
    assert statuses[201] >= 1
    assert count(Order) == 1
    assert count(IdempotencyRecord) == 1
    order_id = db.session.execute(select(Order.id)).scalar_one()
    assert {b["id"] for s, b in results if s == 201} == {order_id}
    assert all(b["error"] == "idempotency_in_progress" for s, b in results if s == 409)


@pytest.mark.parametrize("attempt", range(5))
def test_payment_and_refund_started_at_the_same_instant_end_consistent(
    app, make_campaign, make_user, make_product, attempt
):
    # given: an unpaid order with a packet; no ordering between the two threads but the barrier
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    [row] = generate_batch(campaign, 1, utcnow(), batch_ref=f"race-{attempt}")
    db.session.commit()
    buyer = make_user()
    packet = claim_packet(row.claim_code, buyer, utcnow())
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    out_trade_no, payable, order_id = order.out_trade_no, order.payable_fen, order.id

    # when: the payment notification and the refund run at once (each waits on the order's row lock)
    def work(i: int):
        if i == 0:
            return pay_as_wechat(out_trade_no, "tx-1", payable, utcnow(), notification_id=f"N-{attempt}")
        target = db.session.get(Order, order_id)
        begin_refund(target, f"R-{attempt}", payable)
        return apply_refund(out_trade_no, f"R-{attempt}", payable, utcnow(), money=app_money()).status

    results = together(2, work, app=app)

    # then: the payment always applies once; the refund either came first (refused, nothing moved) or after
    assert str(results[0]) == "applied", results
    db.session.rollback()
    final = db.session.get(Order, order_id)
    assert count(LedgerEntry, LedgerEntry.idempotency_key == f"order:{order_id}:sale") == 1
    if isinstance(results[1], RebateError):
        assert results[1].code == "order_not_refundable"
        assert (final.status, final.refunded_fen) == ("paid", 0)
    else:
        assert (results[1], final.status, final.refunded_fen) == ("succeeded", "refunded", payable)
        fresh = db.session.get(Campaign, campaign.id)
        assert (fresh.budget_reserved_fen, fresh.budget_committed_fen) == (0, 0)
    assert check_ledger().ok


def test_a_request_running_past_the_stale_time_is_not_taken_over_by_its_retry(app, make_operator, monkeypatch):
    """A key left in progress longer than ``STALE_AFTER`` is taken over by a retry only when its holder is gone: a
    holder still running keeps its key's row locked, so the retry waits and replays what it stored, never runs the
    view a second time. (Found by a probe: past 60 s a retry ran the view again beside the first.)"""
    from datetime import timedelta

    import web.admin
    import web.idempotency
    from models import AuditLog, Merchant
    from tests.concurrency import wait_until_a_backend_waits_on_a_lock
    from tests.conftest import release_test_session

    _, admin = make_operator("admin")
    headers = {**admin, "Idempotency-Key": "slow-1"}
    body = {"name": "a slow shop", "reason": "opening"}
    monkeypatch.setattr(web.idempotency, "STALE_AFTER", timedelta(0))  # every key in progress looks stale at once
    entered, release = threading.Event(), threading.Event()
    real_audit = web.admin.audit

    def slow_audit(*args, **kwargs):
        if not entered.is_set():
            entered.set()
            release.wait(20)
        return real_audit(*args, **kwargs)

    monkeypatch.setattr(web.admin, "audit", slow_audit)
    release_test_session()
    answers = {}

    def post(name: str):
        response = app.test_client().post("/admin/api/merchants", json=body, headers=headers)
        answers[name] = (response.status_code, response.get_json(), response.headers.get("Idempotent-Replayed"))

    first = threading.Thread(target=post, args=("first",))
    first.start()
    assert entered.wait(20)
    retry = threading.Thread(target=post, args=("retry",))
    retry.start()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as probe:
            wait_until_a_backend_waits_on_a_lock(probe)  # the retry waits on the first one's key
    else:
        threading.Event().wait(0.3)  # (SQLite: the retry waits on the write lock the first one holds)
    release.set()
    first.join(30)
    retry.join(30)

    assert answers["first"][0] == 201, answers
    assert answers["retry"][:2] == answers["first"][:2] and answers["retry"][2] == "true", answers
    db.session.rollback()
    assert count(Merchant) == 1
    assert count(AuditLog, AuditLog.action == "merchant.create") == 1


def test_a_failed_request_gives_up_its_key_only_while_the_key_is_still_its_own(app):
    """Between a failed view's rollback (its hold on the key ends) and its giving the key up, a waiting retry may
    take the key over: the key is then the retry's, not deleted from under it, and a refusal the first request
    stores after its rollback does not overwrite the retry's answer."""
    from datetime import timedelta

    from sqlalchemy import update

    from models import IdempotencyRecord, utcnow
    from web import idempotency

    first = utcnow()
    record = IdempotencyRecord(
        scope="user:1", route="POST /x", key="k", request_sha256="f", locked_at=first, expires_at=first + timedelta(1)
    )
    db.session.add(record)
    db.session.commit()
    record_id = record.id
    taken = first + timedelta(seconds=61)  # the retry's takeover
    db.session.execute(update(IdempotencyRecord).where(IdempotencyRecord.id == record_id).values(locked_at=taken))
    db.session.commit()

    idempotency._store(record_id, 422, {"error": "first"}, first)
    idempotency._release(record_id, first)

    kept = db.session.get(IdempotencyRecord, record_id)
    assert kept is not None and (kept.state, kept.locked_at) == ("in_progress", taken)
    idempotency._store(record_id, 201, {"id": 7}, taken)  # the retry stores its own answer
    db.session.expire_all()
    assert (db.session.get(IdempotencyRecord, record_id).state, kept.response_status) == ("done", 201)
    idempotency._release(record_id, taken)  # (a stored answer is never given up)
    assert count(IdempotencyRecord) == 1
