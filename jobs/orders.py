"""Order jobs: close expired unpaid orders, apply payments WeChat never notified, finish stuck refunds.

Each job claims a batch of row ids, then for each row: read what it needs and
end the transaction, ask WeChat, and apply the answer in a new short
transaction under the order's row lock (``lock_order``), where the state is
checked again. A WeChat answer we cannot read leaves the row for the next run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import Select, select, text

from models import Order, OrderStatus, Refund, RefundStatus, alert_once, db, unit_of_work, utcnow
from rebate import RebateError, apply_payment, close_order
from rebate.orders import lock_order
from rebate.refunds import apply_refund_answer
from wechat.errors import WeChatBusinessError, WeChatError, WeChatNotFound
from wechat.notifications import parse_time

log = logging.getLogger(__name__)

BATCH = 50
PAYMENT_GRACE = timedelta(minutes=2)  # give the notification a chance first
REFUND_GRACE = timedelta(minutes=2)
LEASE_KEYS = {"order": 4_401, "refund": 4_402}
PAID_STATES = ("SUCCESS", "REFUND")


def _pay():
    return current_app.extensions["wechat"].pay


def claim_ids(stmt: Select) -> list[int]:
    """Ids of a batch. SKIP LOCKED only spreads runners that select at the same moment: the row lock ends
    with this short transaction. What keeps nodes apart is the per-row advisory lease (``row_lease``) and
    every step re-checking its row under the row's lock before it writes."""
    ids = list(db.session.execute(stmt.limit(BATCH).with_for_update(skip_locked=True)).scalars())
    db.session.commit()
    return ids


@contextmanager
def row_lease(kind: str, row_id: int) -> Iterator[bool]:
    """A PostgreSQL advisory lock held on its own autocommit connection: no transaction stays open.

    SQLite runs one node only; the lease is always granted there.
    """
    if db.engine.dialect.name != "postgresql":
        yield True
        return
    params = {"k": LEASE_KEYS[kind], "id": row_id % 2**31}
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        got = bool(conn.execute(text("select pg_try_advisory_lock(:k, :id)"), params).scalar())
        try:
            yield got
        finally:
            if got:
                conn.execute(text("select pg_advisory_unlock(:k, :id)"), params)


def _alert_open(kind: str, subject: str, message: str) -> None:
    """One open alert per kind and subject, whatever its wording this time."""
    alert_once(kind, subject, text=message)


# -- payments ----------------------------------------------------------------------


def _query(out_trade_no: str) -> dict | None:
    """WeChat's view of the order; None when WeChat never saw it. Raises WeChatError when unknown."""
    try:
        return _pay().query_order(out_trade_no)
    except WeChatNotFound:
        return None


def apply_queried_payment(out_trade_no: str, tx: dict, now: datetime) -> str:
    amount = tx.get("amount") or {}
    with unit_of_work():
        order = lock_order(out_trade_no)
        if order.status != OrderStatus.CREATED and order.status != OrderStatus.CLOSED:
            return "already_applied"
        if amount.get("total") != order.payable_fen and order.review_reason is not None:
            return "mismatch_flagged"
        outcome = apply_payment(
            out_trade_no,
            str(tx.get("transaction_id") or ""),
            int(amount.get("total") or 0),
            parse_time(tx.get("success_time"), now),
            notification_id=None,
            payer_total_fen=amount.get("payer_total"),
        )
    return str(outcome)


def _close_at_wechat(out_trade_no: str) -> bool:
    """True when WeChat will not take money for this order any more."""
    try:
        _pay().close_order(out_trade_no)
    except WeChatNotFound:
        return True
    except WeChatBusinessError as exc:
        return exc.code == "ORDER_CLOSED"
    except WeChatError as exc:
        log.info("close %s unknown: %s", out_trade_no, exc)
        return False
    return True


def settle_expired_order(order_id: int, now: datetime) -> str:
    order = db.session.get(Order, order_id)
    out_trade_no, status = order.out_trade_no, order.status
    db.session.rollback()
    if status != OrderStatus.CREATED:
        return "skipped"
    try:
        tx = _query(out_trade_no)
    except WeChatError:
        return "unknown"
    state = (tx or {}).get("trade_state")
    if state in PAID_STATES:
        return apply_queried_payment(out_trade_no, tx, now)
    if state == "USERPAYING":
        return "user_paying"
    if tx is not None and state != "CLOSED" and not _close_at_wechat(out_trade_no):
        return "unknown"
    with unit_of_work():
        order = lock_order(out_trade_no)
        if order.status != OrderStatus.CREATED:
            return "skipped"
        close_order(order, now)
    return "closed"


def close_expired_orders(now: datetime | None = None) -> Counter:
    """Unpaid orders past ``time_expire``: closed at WeChat, then here (their packets released)."""
    now = now or utcnow()
    stmt = select(Order.id).where(Order.status == OrderStatus.CREATED, Order.time_expire <= now).order_by(Order.id)
    results: Counter = Counter()
    for order_id in claim_ids(stmt):
        with row_lease("order", order_id) as granted:
            results[settle_expired_order(order_id, now) if granted else "leased_elsewhere"] += 1
    return results


def query_unnotified_payments(now: datetime | None = None) -> Counter:
    """Orders given a prepay a while ago and still unpaid here: ask WeChat, apply a payment it knows of."""
    now = now or utcnow()
    stmt = (
        select(Order.id)
        .where(
            Order.status == OrderStatus.CREATED,
            Order.prepay_id.is_not(None),
            Order.prepay_at <= now - PAYMENT_GRACE,
            Order.time_expire > now,
        )
        .order_by(Order.id)
    )
    results: Counter = Counter()
    for order_id in claim_ids(stmt):
        with row_lease("order", order_id) as granted:
            results[_check_payment(order_id, now) if granted else "leased_elsewhere"] += 1
    return results


def _check_payment(order_id: int, now: datetime) -> str:
    out_trade_no = db.session.get(Order, order_id).out_trade_no
    db.session.rollback()
    try:
        tx = _query(out_trade_no)
    except WeChatError:
        return "unknown"
    if tx is None or tx.get("trade_state") not in PAID_STATES:
        return "not_paid"
    return apply_queried_payment(out_trade_no, tx, now)


# -- refunds -----------------------------------------------------------------------


def query_stuck_refunds(now: datetime | None = None) -> Counter:
    """Refunds pending a while: SUCCESS applied, CLOSED/ABNORMAL released, never-received ones re-sent."""
    now = now or utcnow()
    stmt = (
        select(Refund.id)
        .where(Refund.status == RefundStatus.PENDING, Refund.created_at <= now - REFUND_GRACE)
        .order_by(Refund.id)
    )
    results: Counter = Counter()
    for refund_id in claim_ids(stmt):
        with row_lease("refund", refund_id) as granted:
            results[_check_refund(refund_id, now) if granted else "leased_elsewhere"] += 1
    return results


def _resend(out_trade_no: str, out_refund_no: str, amount_fen: int, total_fen: int, reason: str | None) -> dict:
    ext = current_app.extensions["wechat"]
    return ext.pay.refund(out_trade_no, out_refund_no, amount_fen, total_fen, ext.refund_notify_url, reason)


def _check_refund(refund_id: int, now: datetime) -> str:
    refund = db.session.get(Refund, refund_id)
    order = db.session.get(Order, refund.order_id)
    facts = (order.out_trade_no, refund.out_refund_no, refund.amount_fen, order.payable_fen, refund.reason)
    db.session.rollback()  # nothing open while WeChat is asked
    out_trade_no, out_refund_no, amount_fen = facts[:3]
    try:
        try:
            answer = _pay().query_refund(out_refund_no)
        except WeChatNotFound:  # our request never reached WeChat: send it again, same number
            answer = _resend(*facts)
    except WeChatError as exc:
        log.info("refund %s unknown: %s", out_refund_no, exc)
        return "unknown"
    return record_refund_answer(out_trade_no, out_refund_no, amount_fen, answer, now)


def record_refund_answer(out_trade_no: str, out_refund_no: str, amount_fen: int, answer: dict, now: datetime) -> str:
    refunded = (answer.get("amount") or {}).get("refund", amount_fen)
    try:
        with unit_of_work():
            return apply_refund_answer(out_trade_no, out_refund_no, refunded, answer, now)
    except RebateError as exc:
        with unit_of_work():
            _alert_open("refund_refused", out_refund_no, f"refund {out_refund_no} could not be applied: {exc}")
        return "refused"
