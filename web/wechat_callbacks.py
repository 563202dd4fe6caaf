"""WeChat Pay callbacks: ``POST /wechat/pay/notify`` and ``POST /wechat/pay/refund-notify``.

Verification comes first, on the raw body, and touches no table: a callback
that fails it is answered 4xx with WeChat's ``{"code":"FAIL","message":…}``.
A verified callback is checked against our records; a mismatch flags the
order and alerts an operator (once) and moves no money. Success is 204 with an
empty body. A notification id already recorded is answered 204 and skipped;
a concurrent duplicate waits on the order's row lock and then sees it done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import Order, PaymentNotification, Refund, RefundStatus, alert_once, db, utcnow
from rebate import PaymentOutcome, RebateError, apply_payment, apply_refund, fail_refund
from rebate.payments import notification_seen
from web import wechat
from web.errors import BUSY_RETRY_AFTER_S, is_busy
from web.openapi import RETRY_AFTER, WECHAT_FAIL, documented
from wechat.errors import NotificationRejected
from wechat.notifications import Notification, failure_response_body, parse_time, verify_and_decrypt

log = logging.getLogger(__name__)
bp = Blueprint("wechat_callbacks", __name__, url_prefix="/wechat/pay")

MAX_CALLBACK_BYTES = 16 * 1024  # WeChat's callbacks are well under 2 KiB
ENVELOPE = {
    "type": "object",
    "required": ["id", "event_type", "resource_type", "resource"],
    "properties": {
        "id": {"type": "string"},
        "create_time": {"type": "string"},
        "event_type": {"type": "string"},
        "resource_type": {"const": "encrypt-resource"},
        "summary": {"type": "string"},
        "resource": {
            "type": "object",
            "required": ["algorithm", "ciphertext", "nonce"],
            "properties": {
                "algorithm": {"const": "AEAD_AES_256_GCM"},
                "ciphertext": {"type": "string"},
                "nonce": {"type": "string"},
                "associated_data": {"type": "string"},
                "original_type": {"type": "string"},
            },
        },
    },
}
SIGNED = [
    {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
    for name in ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial")
]


def callback_doc(summary: str) -> Callable:
    """A WeChat callback's description: signed envelope in, 204 or WeChat's own error format out."""
    return documented(
        summary=summary,
        tags=["wechat"],
        parameters=SIGNED,
        requestBody={"required": True, "content": {"application/json": {"schema": ENVELOPE}}},
        responses={
            "204": {"description": "applied, or already applied (nothing happens again)"},
            "4XX": WECHAT_FAIL,
            "500": {**WECHAT_FAIL, "description": "processing failed; WeChat retries"},
            "503": {**WECHAT_FAIL, "description": "database busy; WeChat retries", "headers": RETRY_AFTER},
        },
    )


class CallbackRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def fail(status: int, message: str) -> Response:
    response = jsonify(failure_response_body(message))
    response.status_code = status
    return response


def _raw_body() -> bytes:
    limit = min(MAX_CALLBACK_BYTES, current_app.config.get("MAX_CONTENT_LENGTH") or MAX_CALLBACK_BYTES)
    if request.content_length is not None and request.content_length > limit:
        raise CallbackRefused(413, "body too large")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise CallbackRefused(413, "body too large")
    return raw


def handle_notification(process: Callable[[Notification], None]) -> Response:
    try:
        raw = _raw_body()
        ext = wechat()
        notification = verify_and_decrypt(request.headers, raw, ext.keys, ext.apiv3_key)
    except CallbackRefused as exc:
        return fail(exc.status, exc.message)
    except NotificationRejected as exc:
        log.warning("callback rejected", extra={"reason": exc.reason, "path": request.path})
        return fail(exc.http_status or 401, exc.reason)
    try:
        process(notification)
    except CallbackRefused as exc:
        db.session.rollback()
        log.warning("callback refused", extra={"notification_id": notification.id, "refusal": exc.message})
        return fail(exc.status, exc.message)
    except Exception as exc:
        db.session.rollback()
        if is_busy(exc):  # WeChat retries any non-2xx answer; this one is not a bug
            log.warning("callback deferred: database busy", extra={"notification_id": notification.id})
            response = fail(503, "busy, retry later")
            response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
            return response
        log.exception("callback processing failed", extra={"notification_id": notification.id})
        return fail(500, "processing failed")
    return Response(status=204)


def alert_once_and_commit(kind: str, subject: str, message: str) -> None:
    """Raise the alert and commit, unless the same one is already open (WeChat retries for 24 h)."""
    alert_once(kind, subject, message)
    db.session.commit()


def _flag_order(order: Order, kind: str, message: str) -> None:
    order.review_reason = message
    alert_once_and_commit(kind, order.out_trade_no, message)


# -- payment -----------------------------------------------------------------------


def _check_transaction(data: dict, cfg) -> Order:
    out_trade_no = str(data.get("out_trade_no") or "")
    order = db.session.execute(select(Order).where(Order.out_trade_no == out_trade_no)).scalar_one_or_none()
    if order is None:
        raise CallbackRefused(404, "unknown out_trade_no")
    amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
    problems = []
    if data.get("mchid") != cfg["WECHAT_MCHID"]:
        problems.append(f"mchid {data.get('mchid')!r} is not ours")
    if data.get("appid") != cfg["WECHAT_APPID"]:
        problems.append(f"appid {data.get('appid')!r} is not ours")
    if amount.get("total") != order.payable_fen:
        problems.append(f"WeChat says {amount.get('total')!r} fen was paid; the order asks {order.payable_fen}")
    if problems:
        _flag_order(order, "payment_mismatch", "payment notification disagrees: " + "; ".join(problems))
        raise CallbackRefused(400, "notification disagrees with our order")
    return order


def process_transaction(n: Notification) -> None:
    if n.event_type != "TRANSACTION.SUCCESS" or n.original_type not in ("", "transaction"):
        log.warning("payment callback of unexpected type acknowledged", extra={"event_type": n.event_type})
        return
    data = n.resource
    if notification_seen(n.id):
        return
    order = _check_transaction(data, current_app.config)
    if data.get("trade_state") != "SUCCESS":
        raise CallbackRefused(400, f"trade_state {data.get('trade_state')!r} is not SUCCESS")
    try:
        outcome = apply_payment(
            order.out_trade_no,
            str(data.get("transaction_id") or ""),
            int(data["amount"]["total"]),
            parse_time(data.get("success_time"), utcnow()),
            notification_id=n.id,
            payer_total_fen=data["amount"].get("payer_total"),
        )
        db.session.commit()
    except IntegrityError:  # a concurrent delivery recorded the same id first
        db.session.rollback()
        if not notification_seen(n.id):
            raise
        return
    if outcome not in (PaymentOutcome.APPLIED, PaymentOutcome.ALREADY_APPLIED, PaymentOutcome.DUPLICATE_NOTIFICATION):
        log.warning("payment notification needs an operator", extra={"outcome": outcome, "order": order.id})


@bp.post("/notify")
@callback_doc("WeChat Pay TRANSACTION.SUCCESS")
def pay_notify() -> Response:
    """WeChat Pay ``TRANSACTION.SUCCESS``."""
    return handle_notification(process_transaction)


# -- refund ------------------------------------------------------------------------

REFUND_FAILURES = {"REFUND.ABNORMAL": RefundStatus.ABNORMAL, "REFUND.CLOSED": RefundStatus.CLOSED}


def process_refund(n: Notification) -> None:
    data = n.resource
    if n.event_type != "REFUND.SUCCESS" and n.event_type not in REFUND_FAILURES:
        log.warning("refund callback of unexpected type acknowledged", extra={"event_type": n.event_type})
        return
    if notification_seen(n.id):
        return
    out_trade_no, out_refund_no = str(data.get("out_trade_no") or ""), str(data.get("out_refund_no") or "")
    order = db.session.execute(select(Order).where(Order.out_trade_no == out_trade_no)).scalar_one_or_none()
    if order is None:
        raise CallbackRefused(404, "unknown out_trade_no")
    if data.get("mchid") != current_app.config["WECHAT_MCHID"]:
        _flag_order(order, "refund_mismatch", f"refund notification for mchid {data.get('mchid')!r}")
        raise CallbackRefused(400, "notification disagrees with our order")
    refund = db.session.execute(select(Refund).where(Refund.out_refund_no == out_refund_no)).scalar_one_or_none()
    if refund is not None and refund.order_id != order.id:
        _flag_order(order, "refund_mismatch", f"refund {out_refund_no} belongs to another order")
        raise CallbackRefused(400, "refund belongs to another order")
    amount = data.get("amount") if isinstance(data.get("amount"), dict) else {}
    if n.event_type == "REFUND.SUCCESS":
        _apply_success(order, refund, out_refund_no, amount, data)
    elif refund is None:
        raise CallbackRefused(404, "unknown out_refund_no")
    else:
        fail_refund(out_refund_no, REFUND_FAILURES[n.event_type], utcnow())
    db.session.add(PaymentNotification(notification_id=n.id, out_trade_no=out_trade_no, outcome=n.event_type.lower()))
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        if not notification_seen(n.id):
            raise


def _apply_success(order: Order, refund: Refund | None, out_refund_no: str, amount: dict, data: dict) -> None:
    refund_fen = amount.get("refund")
    if not isinstance(refund_fen, int) or (refund is not None and refund_fen != refund.amount_fen):
        asked = refund.amount_fen if refund else None
        _flag_order(
            order, "refund_amount_mismatch", f"WeChat refunded {refund_fen!r} fen on {out_refund_no}; we asked {asked}"
        )
        raise CallbackRefused(400, "refund amount disagrees with our record")
    try:
        apply_refund(order.out_trade_no, out_refund_no, refund_fen, utcnow(), refund_id=data.get("refund_id"))
    except RebateError as exc:
        db.session.rollback()
        _flag_order(db.session.get(Order, order.id), "refund_refused", f"refund {out_refund_no}: {exc}")
        raise CallbackRefused(409, str(exc)) from None


@bp.post("/refund-notify")
@callback_doc("WeChat Pay REFUND.SUCCESS / REFUND.ABNORMAL / REFUND.CLOSED")
def refund_notify() -> Response:
    """WeChat Pay ``REFUND.SUCCESS`` / ``REFUND.ABNORMAL`` / ``REFUND.CLOSED``."""
    return handle_notification(process_refund)
