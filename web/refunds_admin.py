"""Admin refunds: ``POST /admin/api/orders/<id>/refunds`` (admin, finance).

Order of work (docs/architecture.md §5): the refund row, its ``out_refund_no``, the payout
hold and the audit line are committed first; then WeChat is asked with no
transaction open, retrying with the SAME ``out_refund_no`` on SYSTEM_ERROR,
429 and NOT_ENOUGH; then the answer is recorded. An answer we cannot read
leaves the refund pending for the refund-query job. With an
``Idempotency-Key`` the ``out_refund_no`` is derived from it, so a retried
request after a crash continues the same refund instead of starting another.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from flask import Blueprint, current_app, g, request

from models import OperatorRole, Order, Refund, RefundStatus, call_between_commits, db, utcnow
from models.operators import audit
from models.orders import OPEN_REFUNDS
from payouts import MoneySettings
from rebate import PayAccount, apply_refund_notice, begin_refund, fail_refund
from web import wechat
from web.admin import actor
from web.api import endpoint
from web.errors import NotFound
from web.payment_api import sub_merchant
from web.schemas import Model, PositiveFen, shown_line
from wechat.errors import WeChatBusinessError, WeChatError
from wechat.transactions import RefundAnswer

bp = Blueprint("refunds_admin", __name__, url_prefix="/admin/api")

MAX_ATTEMPTS = 3
FINISHED = {"SUCCESS", "CLOSED", "ABNORMAL"}


class CreateRefund(Model):
    amount_fen: PositiveFen
    reason: shown_line(1, 80)  # sent to WeChat: the payer reads it (one visible line, no direction marks)


def refund_json(refund: Refund) -> dict:
    return {
        "id": refund.id,
        "order_id": refund.order_id,
        "out_refund_no": refund.out_refund_no,
        "amount_fen": refund.amount_fen,
        "status": refund.status,
        "refund_id": refund.refund_id,
        "reason": refund.reason,
        "created_at": refund.created_at.isoformat(),
        "finished_at": refund.finished_at.isoformat() if refund.finished_at else None,
    }


def new_out_refund_no(order: Order) -> str:
    """Derived from the (required) Idempotency-Key: a retry after a crash continues the same refund."""
    key = request.headers["Idempotency-Key"]
    digest = hashlib.sha256(f"operator:{g.operator.id}|{order.id}|{key}".encode()).hexdigest()[:24].upper()
    return f"R{order.id}-{digest}"


@dataclass(frozen=True)
class RefundCall:
    """What is sent, fixed and committed before the call."""

    refund_id: int
    out_trade_no: str
    out_refund_no: str
    total_fen: int
    sub_mchid: str | None = None  # partner mode: the sub-merchant the order was paid to
    ended: bool = False  # the key's refund has ended (succeeded, closed, refused): WeChat is not asked again


def call_refund(
    out_trade_no: str,
    out_refund_no: str,
    amount_fen: int,
    total_fen: int,
    reason: str | None,
    sub_mchid: str | None = None,
) -> dict:
    """Ask WeChat, retrying the same number while WeChat says retrying is safe. Raises the last error.

    A partner order's refund (``sub_mchid``) goes to the same endpoint naming its sub-merchant."""
    ext = wechat()
    backoff = current_app.config.get("WECHAT_RETRY_BACKOFF_S", 0.5)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return ext.pay.refund(
                out_trade_no,
                out_refund_no,
                amount_fen,
                total_fen,
                ext.refund_notify_url,
                reason,
                sub=sub_merchant(sub_mchid),
            )
        except WeChatError as exc:
            if not exc.retryable or attempt == MAX_ATTEMPTS:
                raise
            time.sleep(backoff * attempt)
    raise AssertionError("unreachable")


@endpoint(
    bp,
    "/orders/<int:order_id>/refunds",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN, OperatorRole.FINANCE),
    body=CreateRefund,
    idempotent=True,
    require_key=True,
    tags=("refunds",),
    status=201,
)
def create_refund(order_id: int, body: CreateRefund):
    """Refund an order in full or in part through WeChat Pay."""

    def begin() -> RefundCall:  # committed before WeChat hears of it: the refund, its hold, the audit line
        order = db.session.get(Order, order_id)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        refund = begin_refund(order, new_out_refund_no(order), body.amount_fen, body.reason)
        if refund.status not in OPEN_REFUNDS:  # a retry (its key's answer expired) of a refund that has ended:
            # answered as it stands, never sent again (one WeChat refused or closed may be refunded again since,
            # and the same number sent now could refund it twice, the books holding it failed)
            return RefundCall(refund.id, order.out_trade_no, refund.out_refund_no, order.payable_fen, ended=True)
        why, number = body.reason, refund.out_refund_no
        audit(actor(), "refund.create", "order", order.id, why, out_refund_no=number, amount_fen=body.amount_fen)
        return RefundCall(refund.id, order.out_trade_no, refund.out_refund_no, order.payable_fen, order.sub_mchid)

    def ask(r: RefundCall) -> RefundAnswer | WeChatError | None:
        if r.ended:
            return None
        try:  # read as the refund job reads its answers: WeChat's create_time is the day its bill lists the refund
            return RefundAnswer.read(
                call_refund(r.out_trade_no, r.out_refund_no, body.amount_fen, r.total_fen, body.reason, r.sub_mchid),
                r.out_trade_no,
                r.out_refund_no,
            )
        except WeChatError as exc:  # an unreadable answer too (MalformedResource): the refund job asks again
            return exc

    def record(r: RefundCall, answer: RefundAnswer | WeChatError | None) -> dict:
        if isinstance(answer, RefundAnswer):
            cfg = current_app.config
            apply_refund_notice(
                answer.notice,
                PayAccount.from_config(cfg),
                utcnow(),
                money=MoneySettings.from_config(cfg),
                requested_at=answer.requested_at,
                unreadable_time=answer.unreadable_time,
            )
        elif isinstance(answer, WeChatBusinessError) and not answer.retryable:
            why = f"WeChat refused it: {answer.code} {answer.message}"  # definitive: WeChat will not refund this
            fail_refund(r.out_refund_no, RefundStatus.FAILED, utcnow(), why=why)
        db.session.flush()
        result = refund_json(db.session.get(Refund, r.refund_id))
        if isinstance(answer, WeChatError):
            result["wechat_error"] = {"code": answer.code, "message": answer.message}
        return result

    return call_between_commits(begin, ask, record), 201
