"""Order jobs: close expired unpaid orders, apply payments WeChat never notified, finish stuck refunds.

Each job claims a batch of row ids, then for each row goes through
``call_between_commits``: read what it needs and commit, ask WeChat with no
transaction open, and apply the typed answer in a new short transaction
through the one intake (``apply_payment`` / ``apply_refund_notice``), under the
order's row lock, where the state is checked again. A WeChat answer we did not
get or cannot read leaves the row for the next run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import Select, and_, func, or_, select, text

from jobs.payouts import job_context, row_failed
from models import Alert, Order, OrderStatus, Refund, RefundStatus, alert_once, call_between_commits, db, utcnow
from models.orders import OPEN_REFUNDS
from rebate import PayAccount, RefundOutcome, apply_payment, apply_refund_notice, close_order, fail_refund
from rebate.orders import lock_order
from wechat.errors import WeChatBusinessError, WeChatError, WeChatNotFound
from wechat.partner import SubMerchant
from wechat.transactions import MalformedResource, RefundAnswer, Transaction

log = logging.getLogger(__name__)

BATCH = 50
PAYMENT_GRACE = timedelta(minutes=2)  # give the notification a chance first
REFUND_GRACE = timedelta(minutes=2)
ABNORMAL_RECHECK = timedelta(hours=1)  # an abnormal refund is asked about again this long after it was last seen
LEASE_KEYS = {"order": 4_401, "refund": 4_402}
P = TypeVar("P")
R = TypeVar("R")


def _pay():
    return job_context().pay


def _pay_account() -> PayAccount:
    return PayAccount.from_config(job_context().config)


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


def _between_commits(prepare: Callable[[], P], call: Callable[[P], R], record: Callable[[P, R], str]) -> str:
    """``call_between_commits``, with an answer WeChat did not give (or gave unreadable) left for the next run."""
    try:
        return call_between_commits(prepare, call, record)
    except WeChatError as exc:
        log.info("WeChat answer unknown: %s", exc)
        return "unknown"


@dataclass(frozen=True)
class OrderRef:
    """How WeChat knows an order: its number, and (partner mode) the sub-merchant it was paid to."""

    out_trade_no: str
    sub: SubMerchant | None = None

    @classmethod
    def of(cls, order: Order) -> OrderRef:
        return cls(order.out_trade_no, None if order.sub_mchid is None else SubMerchant(order.sub_mchid))


def _open_order_no(order_id: int) -> OrderRef | None:
    """The order while it is still unpaid and open here (None: someone settled it meanwhile), noted as asked now
    (committed before the call), whatever WeChat answers: the next run asks the others first."""
    order = db.session.get(Order, order_id)
    if order.status != OrderStatus.CREATED:
        return None
    order.checked_at = utcnow()
    return OrderRef.of(order)


# -- payments ----------------------------------------------------------------------


def _query(ref: OrderRef) -> Transaction | None:
    """WeChat's view of the order; None when WeChat never saw it. Raises WeChatError when unknown or unreadable: an
    answer naming another order is unreadable (never applied, nor taken as this order's state: a CLOSED one had
    closed a paid order here, its payment then refunded as late)."""
    try:
        tx = Transaction.parse(_pay().query_order(ref.out_trade_no, sub=ref.sub))
    except WeChatNotFound:
        return None
    if tx.out_trade_no != ref.out_trade_no:
        raise MalformedResource(
            "out_trade_no", f"the answer is about order {tx.out_trade_no!r}; we asked about {ref.out_trade_no!r}"
        )
    return tx


def _ask_if_paid(ref: OrderRef | None) -> Transaction | str:
    """The order's paid transaction, or why there is none to apply: "skipped" (not ours to ask) or "not_paid"."""
    if ref is None:
        return "skipped"
    tx = _query(ref)
    return tx if tx is not None and tx.paid else "not_paid"


def _apply_answer(answer: Transaction | str, now: datetime) -> str:
    """A paid transaction goes to the one intake (which compares it); any other answer is the result."""
    if isinstance(answer, str):
        return answer
    # The slow path (an order WeChat's notification did not reach): the budgets locked first, never retried.
    return str(apply_payment(answer, _pay_account(), now, money=job_context().money, lock_budgets=True))


def _close_at_wechat(ref: OrderRef) -> bool:
    """True when WeChat will not take money for this order any more."""
    try:
        _pay().close_order(ref.out_trade_no, sub=ref.sub)
    except WeChatNotFound:
        return True
    except WeChatBusinessError as exc:
        return exc.code == "ORDER_CLOSED"
    except WeChatError as exc:
        log.info("close %s unknown: %s", ref.out_trade_no, exc)
        return False
    return True


def _settle_at_wechat(ref: OrderRef | None) -> Transaction | str:
    """For an expired order: its paid transaction, or "user_paying", "closed" (WeChat takes no more money),
    "unknown" (the close was not confirmed) or "skipped" (nothing to ask)."""
    if ref is None:
        return "skipped"
    tx = _query(ref)
    if tx is not None and tx.paid:
        return tx
    if tx is not None and tx.trade_state == "USERPAYING":
        return "user_paying"
    if tx is not None and tx.trade_state != "CLOSED" and not _close_at_wechat(ref):
        return "unknown"
    return "closed"


def _record_settlement(ref: OrderRef | None, answer: Transaction | str, now: datetime) -> str:
    if answer != "closed":
        return _apply_answer(answer, now)
    order = lock_order(ref.out_trade_no)
    if order.status != OrderStatus.CREATED:
        return "skipped"
    close_order(order, now)
    return "closed"


def settle_expired_order(order_id: int, now: datetime) -> str:
    """Paid at WeChat after all: applied. Otherwise closed at WeChat, then here (its packets released)."""
    return _between_commits(
        lambda: _open_order_no(order_id),
        _settle_at_wechat,
        lambda ref, answer: _record_settlement(ref, answer, now),
    )


def close_expired_orders(now: datetime | None = None) -> Counter:
    """Unpaid orders past ``time_expire``: closed at WeChat, then here (their packets released)."""
    now = now or utcnow()
    stmt = (
        select(Order.id)
        .where(Order.status == OrderStatus.CREATED, Order.time_expire <= now)
        # least recently asked first: orders WeChat keeps answering unreadably never crowd out the others
        .order_by(func.coalesce(Order.checked_at, Order.time_expire), Order.id)
    )
    results: Counter = Counter()
    for order_id in claim_ids(stmt):
        with row_lease("order", order_id) as granted:
            results[_guarded(settle_expired_order, "order", order_id, now) if granted else "leased_elsewhere"] += 1
    return results


def _guarded(step: Callable[[int, datetime], str], kind: str, row_id: int, now: datetime) -> str:
    """One row's step; its fault never stops the rest of the batch (a bad answer about one order must not keep the
    others unpaid): rolled back, logged with the row's id and alerted once (``order_check_failed``,
    ``refund_check_failed``: a row failing at every run had been in the logs only)."""
    try:
        return step(row_id, now)
    except Exception as exc:
        row_failed(f"{kind}_check_failed", kind, row_id, exc)
        return "error"


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
        .order_by(func.coalesce(Order.checked_at, Order.prepay_at), Order.id)  # least recently asked first
    )
    results: Counter = Counter()
    for order_id in claim_ids(stmt):
        with row_lease("order", order_id) as granted:
            results[_guarded(check_payment, "order", order_id, now) if granted else "leased_elsewhere"] += 1
    return results


def check_payment(order_id: int, now: datetime) -> str:
    """Ask WeChat about an unpaid order and apply the payment it knows of (``apply_payment`` compares it)."""
    return _between_commits(
        lambda: _open_order_no(order_id), _ask_if_paid, lambda _, answer: _apply_answer(answer, now)
    )


# -- refunds -----------------------------------------------------------------------


def query_stuck_refunds(now: datetime | None = None) -> Counter:
    """Refunds pending a while: SUCCESS applied, CLOSED released, ABNORMAL kept open, never-received ones re-sent;
    and abnormal ones again every ``ABNORMAL_RECHECK`` (the merchant resolves one at WeChat, which then finishes it:
    its notification may be lost)."""
    now = now or utcnow()
    stmt = (
        select(Refund.id)
        .where(
            or_(
                and_(Refund.status == RefundStatus.PENDING, Refund.created_at <= now - REFUND_GRACE),
                and_(
                    Refund.status == RefundStatus.ABNORMAL,
                    func.coalesce(Refund.checked_at, Refund.finished_at) <= now - ABNORMAL_RECHECK,
                ),
            )
        )
        # least recently asked first: refunds WeChat goes on processing for days (to bank cards) never crowd out
        # the newer ones (a late payment's, one whose answer was lost)
        .order_by(func.coalesce(Refund.checked_at, Refund.created_at), Refund.id)
    )
    results: Counter = Counter()
    for refund_id in claim_ids(stmt):
        with row_lease("refund", refund_id) as granted:
            results[_guarded(check_refund, "refund", refund_id, now) if granted else "leased_elsewhere"] += 1
    return results


@dataclass(frozen=True)
class RefundAsk:
    """What asking (or asking again) for a refund needs, read before the call."""

    out_trade_no: str
    out_refund_no: str
    amount_fen: int
    total_fen: int
    reason: str | None
    sub: SubMerchant | None = None


NEVER_HEARD = "not_found"  # WeChat's query: no refund of this number (our request never reached it)
NEVER_REACHED = "never_reached"  # ... and it was sent again MAX_RESENDS times: only asked about now, an operator told
MAX_RESENDS = 5  # a refund WeChat has never heard of is sent again under its number at most this often (then alerted)


def _refund_ask(refund_id: int) -> RefundAsk | None:
    """The refund while it is still open here (None: it ended meanwhile, on another node say: a refund failed or
    closed is never asked for again under its number, which WeChat may take now while the books hold it ended and
    its amount refundable anew). Noted as asked now (committed before the call), whatever WeChat answers: the next
    run asks the others first."""
    refund = db.session.get(Refund, refund_id)
    if refund.status not in OPEN_REFUNDS:
        return None
    refund.checked_at = utcnow()
    order = db.session.get(Order, refund.order_id)
    return RefundAsk(
        order.out_trade_no,
        refund.out_refund_no,
        refund.amount_fen,
        order.payable_fen,
        refund.reason,
        OrderRef.of(order).sub,
    )


def _resend_ask(refund_id: int) -> RefundAsk | str | None:
    """The refund to send again (WeChat's query just said it never heard of it), its re-send counted and committed
    before it is made: a send whose answer is lost (a timeout), or that WeChat keeps refusing for now (NOT_ENOUGH, a
    busy system), counts too. Past ``MAX_RESENDS``: ``NEVER_REACHED``, and an operator is told once; the refund stays
    pending (its amount reserved, the order's payouts held: a lost send may still be taken) and is asked about at
    every run. Resolving that alert (its cause fixed: the merchant account topped up, say) allows as many again."""
    ask = _refund_ask(refund_id)
    if ask is None:
        return None
    refund = db.session.get(Refund, refund_id)
    if refund.resends >= MAX_RESENDS:
        seen = db.session.execute(
            select(Alert.resolved_at).where(Alert.kind == "refund_never_reached", Alert.subject == ask.out_refund_no)
        ).scalars()
        states = {at is None for at in seen}  # True: one still open; False: one an operator resolved
        if True in states or not states:
            alert_once(
                "refund_never_reached",
                ask.out_refund_no,
                text=f"refund {ask.out_refund_no} of order {ask.out_trade_no} ({ask.amount_fen} fen): WeChat has "
                f"never heard of it though it was sent {refund.resends} times under its number. It is no longer "
                "sent, only asked about; it stays pending, its amount reserved and the order's payouts held. "
                "Look at the merchant platform (its balance, say), then resolve this alert to have it sent again.",
            )
            return NEVER_REACHED
        refund.resends = 0  # an operator resolved the last alert: as many sends again
    refund.resends += 1
    return ask


def _query_refund(ask: RefundAsk | None) -> RefundAnswer | str:
    """WeChat's word on the refund; ``NEVER_HEARD`` when it has no refund of this number; "skipped" when it is not
    open here any more."""
    if ask is None:
        return "skipped"
    try:
        answer = _pay().query_refund(ask.out_refund_no, sub=ask.sub)
    except WeChatNotFound:  # our request never reached WeChat: sent again, same number (check_refund)
        return NEVER_HEARD
    return RefundAnswer.read(answer, ask.out_trade_no, ask.out_refund_no)


def _send_refund(ask: RefundAsk | str | None) -> RefundAnswer | WeChatBusinessError | str:
    """The refund sent again under its number (WeChat refunds a number once); its refusal when WeChat will not make
    it (a refusal that may pass, such as too little money in the merchant account, raises: asked again next run)."""
    if ask is None:
        return "skipped"
    if isinstance(ask, str):
        return ask
    wx = job_context().wechat
    try:
        answer = wx.pay.refund(
            ask.out_trade_no,
            ask.out_refund_no,
            ask.amount_fen,
            ask.total_fen,
            wx.refund_notify_url,
            ask.reason,
            sub=ask.sub,
        )
    except WeChatBusinessError as refused:
        if refused.retryable:
            raise
        return refused
    return RefundAnswer.read(answer, ask.out_trade_no, ask.out_refund_no)


def _record_refund(ask: RefundAsk | str | None, answer: RefundAnswer | WeChatBusinessError | str, now: datetime) -> str:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, WeChatBusinessError):  # refused for good: failed, its hold released, an operator told
        fail_refund(
            ask.out_refund_no, RefundStatus.FAILED, now, why=f"WeChat refused it: {answer.code} {answer.message}"
        )
        return "failed"
    return str(_apply_refund(answer, now))


def check_refund(refund_id: int, now: datetime) -> str:
    """Ask WeChat about an open refund and apply its state; one WeChat has never heard of is sent again under its
    number, a bounded number of times (``_resend_ask``), in a second round of its own: no transaction is open while
    WeChat is asked, and each send is counted before it is made."""
    asked = _between_commits(lambda: _refund_ask(refund_id), _query_refund, lambda ask, a: _record_refund(ask, a, now))
    if asked != NEVER_HEARD:
        return asked
    return _between_commits(lambda: _resend_ask(refund_id), _send_refund, lambda ask, a: _record_refund(ask, a, now))


def _apply_refund(answer: RefundAnswer, now: datetime) -> RefundOutcome:
    return apply_refund_notice(
        answer.notice,
        _pay_account(),
        now,
        money=job_context().money,
        requested_at=answer.requested_at,
        unreadable_time=answer.unreadable_time,
    )
