"""WeChat Pay callbacks: ``POST /wechat/pay/notify`` and ``POST /wechat/pay/refund-notify``.

Verification comes first, on the raw body, and touches no table: a callback
that fails it is answered 4xx with WeChat's ``{"code":"FAIL","message":…}``.
A verified callback's resource is parsed into a typed value (a bad shape is
400, nothing applied) and handed to the one intake, ``apply_payment`` or
``apply_refund_notice``, which compares it with our records once: a mismatch
flags the order and alerts an operator (once) and moves no money. Success is
204 with an empty body. A notification id already recorded is answered 204 and
skipped; a concurrent duplicate waits on the order's row lock and then sees it
done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from flask import Blueprint, Response, current_app, jsonify, request

from models import db, retried_once, utcnow
from payouts import MoneySettings
from rebate import PayAccount, PaymentOutcome, RefundOutcome, apply_payment, apply_refund_notice
from rebate.errors import BudgetMoved
from web import wechat
from web.errors import BUSY_RETRY_AFTER_S, is_busy
from web.openapi import RETRY_AFTER, WECHAT_FAIL, documented
from wechat.errors import NotificationRejected
from wechat.notifications import Notification, failure_response_body, verify_and_decrypt
from wechat.transactions import MalformedResource, read_time

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


class Accepted(Protocol):
    """An intake's outcome (payment, refund, transfer): may WeChat stop telling us?"""

    @property
    def accepted(self) -> bool: ...


class CallbackRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def fail(status: int, message: str) -> Response:
    response = jsonify(failure_response_body(message))
    response.status_code = status
    return response


def _raw_body() -> bytes:
    """The body as sent, refused (413, naming the limit) when larger than 16 KiB or ``MAX_CONTENT_LENGTH``.

    A chunked body arrives here sized: ``web.guards`` buffered it (up to ``MAX_CONTENT_LENGTH``) first.
    """
    limit = min(MAX_CALLBACK_BYTES, current_app.config.get("MAX_CONTENT_LENGTH") or MAX_CALLBACK_BYTES)
    if request.content_length is not None and request.content_length > limit:
        raise CallbackRefused(413, body_too_large(limit))
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise CallbackRefused(413, body_too_large(limit))
    return raw


def body_too_large(limit: int) -> str:
    return f"body larger than {limit} bytes"


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
    except MalformedResource as exc:  # verified, but not the shape WeChat documents: nothing applied
        db.session.rollback()
        log.warning("callback malformed", extra={"notification_id": notification.id, "field": exc.field})
        return fail(400, str(exc))
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


def pay_account() -> PayAccount:
    return PayAccount.from_config(current_app.config)


def money_settings() -> MoneySettings:
    return MoneySettings.from_config(current_app.config)


def commit_or_refuse(outcome: Accepted, refusals: dict[str, tuple[int, str]]) -> None:
    """Keep what the intake did (a flag included), then answer: 204 when WeChat may stop, else its refusal."""
    db.session.commit()
    if not outcome.accepted:
        status, message = refusals[outcome]
        raise CallbackRefused(status, message)


# -- payment -----------------------------------------------------------------------

PAYMENT_REFUSALS = {
    PaymentOutcome.NOT_OURS: (404, "unknown out_trade_no"),
    PaymentOutcome.MISMATCH_FLAGGED: (400, "notification disagrees with our order"),
    PaymentOutcome.NOT_PAID: (400, "the transaction is not paid"),
}


def process_transaction(n: Notification) -> None:
    if n.event_type != "TRANSACTION.SUCCESS" or n.original_type not in ("", "transaction"):
        log.warning("payment callback of unexpected type acknowledged", extra={"event_type": n.event_type})
        return
    tx, account, money = n.transaction(), pay_account(), money_settings()
    outcome = retried_once(  # the budgets go last, unlocked; if one moved meanwhile, once more with them locked
        lambda locking: apply_payment(tx, account, utcnow(), n.id, money=money, lock_budgets=locking), BudgetMoved
    )
    commit_or_refuse(outcome, PAYMENT_REFUSALS)


@bp.post("/notify")
@callback_doc("WeChat Pay TRANSACTION.SUCCESS (any other kind of ours is applied by its event type too)")
def pay_notify() -> Response:
    """WeChat Pay ``TRANSACTION.SUCCESS``."""
    return handle_notification(process_by_event)


# -- refund ------------------------------------------------------------------------

REFUND_EVENTS = ("REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED")
REFUND_REFUSALS = {
    RefundOutcome.NOT_OURS: (404, "unknown out_trade_no or out_refund_no"),
    RefundOutcome.MISMATCH_FLAGGED: (400, "notification disagrees with our refund"),
    RefundOutcome.REFUSED: (409, "refund refused; an operator is alerted"),
}


def process_refund(n: Notification) -> None:
    if n.event_type not in REFUND_EVENTS:
        log.warning("refund callback of unexpected type acknowledged", extra={"event_type": n.event_type})
        return
    n, unreadable = without_unreadable_time(n)
    notice, account, money = n.refund_notice(), pay_account(), money_settings()
    outcome = apply_refund_notice(notice, account, utcnow(), n.id, money=money, unreadable_time=unreadable)
    commit_or_refuse(outcome, REFUND_REFUSALS)


def without_unreadable_time(n: Notification) -> tuple[Notification, str | None]:
    """A verified refund notification whose ``success_time`` is not an RFC 3339 time with its offset is still
    WeChat's word on the refund (its money has moved): applied without that time, which the intake notes and
    replaces with ours, rather than refused for a day of WeChat's retries. Returns the unreadable text, if any."""
    told = n.resource.get("success_time") if isinstance(n.resource, dict) else None
    if told is None or told == "":
        return n, None
    if isinstance(told, str):
        try:
            read_time(told)
            return n, None
        except ValueError:
            pass
    resource = {k: v for k, v in n.resource.items() if k != "success_time"}
    return replace(n, resource=resource), str(told)


@bp.post("/refund-notify")
@callback_doc("WeChat Pay REFUND.SUCCESS / REFUND.ABNORMAL / REFUND.CLOSED (any other kind of ours by its event type)")
def refund_notify() -> Response:
    """WeChat Pay ``REFUND.SUCCESS`` / ``REFUND.ABNORMAL`` / ``REFUND.CLOSED``."""
    return handle_notification(process_by_event)


# -- whichever URL it reaches --------------------------------------------------------

# event type prefix → its intake (``web.transfer_callbacks`` adds the transfer bills')
PROCESSORS: dict[str, Callable[[Notification], None]] = {
    "TRANSACTION.": process_transaction,
    "REFUND.": process_refund,
}


def process_by_event(n: Notification) -> None:
    """Apply a verified notification by its event type, whichever of our callback URLs it reached: WeChat sends
    each to the URL configured for it, and a refund begun on the merchant platform goes to the one set there (our
    payment URL, say). Acknowledged before, dropped, it would have been booked by nobody. A kind we do not handle
    is acknowledged (WeChat would otherwise repeat it for a day) and logged."""
    for prefix, process in PROCESSORS.items():
        if n.event_type.startswith(prefix):
            process(n)
            return
    log.warning("callback of unexpected type acknowledged", extra={"event_type": n.event_type})
