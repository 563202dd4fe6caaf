"""Inbound WeChat Pay callbacks and signed responses: verify, then decrypt.

Order (docs/wechat-rules.md §3): signature probe → signature type → headers → timestamp
window → key by serial → RSA over the RAW body → envelope checks → AES-GCM.
Every failure raises :class:`NotificationRejected` with a stable reason code.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag

from wechat import crypto
from wechat.errors import NotificationRejected, WeChatConfigError, WeChatSignatureError
from wechat.keys import ApiV3Keys, VerifierKeys
from wechat.text import loads_strict, storable
from wechat.transactions import ID_CHARS, MalformedResource, RefundNotice, Transaction, TransferBill

PROBE_PREFIX = "WECHATPAY/SIGNTEST/"
MAX_SKEW_S = 300
_REQUIRED = ("wechatpay-timestamp", "wechatpay-nonce", "wechatpay-signature", "wechatpay-serial")


@dataclass(frozen=True)
class Notification:
    id: str
    event_type: str
    resource_type: str
    create_time: str
    summary: str
    resource: dict[str, Any]
    original_type: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def transaction(self) -> Transaction:
        """The resource of a ``TRANSACTION.*`` notification, typed; :class:`MalformedResource` when it is not one."""
        return Transaction.parse(self.resource)

    def refund_notice(self) -> RefundNotice:
        """The resource of a ``REFUND.*`` notification, typed; its state must be the one the event names.

        A notification always names the merchant (API answers do not): without ``mchid`` it is malformed,
        so the intake's mchid comparison can never be skipped for one.
        """
        notice = RefundNotice.parse(self.resource)
        if notice.mchid is None:
            raise MalformedResource("refund.mchid", "is missing")
        if self.event_type != f"REFUND.{notice.status}":
            raise MalformedResource("refund.refund_status", f"{notice.status} in a {self.event_type} notification")
        return notice

    def transfer_bill(self) -> TransferBill:
        """The resource of a ``MCHTRANSFER.BILL.FINISHED`` notification, typed; its state must be final."""
        bill = TransferBill.parse(self.resource)
        if not bill.final:
            raise MalformedResource("transfer_bill.state", f"{bill.state} in a {self.event_type} notification")
        return bill


def verify_and_decrypt(
    headers: Mapping[str, str],
    raw_body: bytes,
    keys: VerifierKeys,
    apiv3_key: ApiV3Keys | str,
    now: float | None = None,
    max_skew_s: int = MAX_SKEW_S,
) -> Notification:
    """Verify a callback and return it with ``resource`` decrypted (a rotated-out key only during its overlap)."""
    check_signature(headers, raw_body, keys, now=now, max_skew_s=max_skew_s)
    envelope = _parse_envelope(raw_body)
    at = None if now is None else datetime.fromtimestamp(now, UTC)
    resource = _decrypt_resource(envelope["resource"], ApiV3Keys.of(apiv3_key), at)
    return Notification(
        id=str(envelope.get("id", "")),
        event_type=str(envelope.get("event_type", "")),
        resource_type=envelope["resource_type"],
        create_time=str(envelope.get("create_time", "")),
        summary=str(envelope.get("summary", "")),
        resource=resource,
        original_type=str(envelope["resource"].get("original_type", "")),
        raw=envelope,
    )


def failure_response_body(message: str) -> dict[str, str]:
    """The body WeChat expects with a 4xx/5xx callback answer."""
    return {"code": "FAIL", "message": message}


def verify_response(
    headers: Mapping[str, str],
    body: bytes,
    keys: VerifierKeys,
    now: float | None = None,
    max_skew_s: int = MAX_SKEW_S,
) -> None:
    """Check a 2xx API answer's signature; an unsigned or bad one is forged."""
    try:
        check_signature(headers, body, keys, now=now, max_skew_s=max_skew_s)
    except NotificationRejected as exc:
        code = "FORGED_RESPONSE" if exc.reason == "MISSING_HEADERS" else f"RESPONSE_{exc.reason}"
        raise WeChatSignatureError(exc.message, code=code) from exc


def check_signature(
    headers: Mapping[str, str],
    raw_body: bytes,
    keys: VerifierKeys,
    now: float | None = None,
    max_skew_s: int = MAX_SKEW_S,
) -> None:
    """Steps 1–6 of the verification order; raises :class:`NotificationRejected`."""
    h = {k.lower(): v for k, v in headers.items()}
    signature = h.get("wechatpay-signature", "")
    if signature.startswith(PROBE_PREFIX):
        raise NotificationRejected("SIGNATURE_PROBE", "signature test probe")
    _check_signature_type(h.get("wechatpay-signature-type"))
    missing = [name for name in _REQUIRED if not h.get(name)]
    if missing:
        raise NotificationRejected("MISSING_HEADERS", f"missing {', '.join(missing)}")
    _check_timestamp(h["wechatpay-timestamp"], now, max_skew_s)
    public_key = keys.key_for_serial(h["wechatpay-serial"])
    if public_key is None:
        raise NotificationRejected("UNKNOWN_SERIAL", f"no key for serial {h['wechatpay-serial']}")
    message = crypto.response_message(h["wechatpay-timestamp"], h["wechatpay-nonce"], raw_body)
    if not crypto.verify_rsa(message, signature, public_key):
        raise NotificationRejected("BAD_SIGNATURE", "signature does not verify")


def _check_signature_type(value: str | None) -> None:
    # Missing header = RSA, as the Java SDK does; anything else is refused.
    if value not in (None, "", crypto.SIGNATURE_TYPE):
        raise NotificationRejected("UNSUPPORTED_SIGNATURE_TYPE", f"signature type {value}")


def _check_timestamp(raw: str, now: float | None, max_skew_s: int) -> None:
    try:
        ts = int(raw)
    except ValueError:
        raise NotificationRejected("BAD_TIMESTAMP", "timestamp is not an integer") from None
    current = time.time() if now is None else now
    if current - ts > max_skew_s:
        raise NotificationRejected("STALE_TIMESTAMP", f"timestamp {ts} is too old")
    if ts - current > max_skew_s:
        raise NotificationRejected("FUTURE_TIMESTAMP", f"timestamp {ts} is in the future")


def _parse_envelope(raw_body: bytes) -> dict[str, Any]:
    try:
        envelope = loads_strict(raw_body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise NotificationRejected("MALFORMED_BODY", "body is not JSON", http_status=400) from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("resource"), dict):
        raise NotificationRejected("MALFORMED_BODY", "body lacks a resource object", http_status=400)
    if not storable(envelope):
        raise NotificationRejected("MALFORMED_BODY", "body holds a NUL or a lone surrogate", http_status=400)
    notification_id = envelope.get("id")
    if notification_id is not None and not (isinstance(notification_id, str) and len(notification_id) <= ID_CHARS):
        # recorded once accepted (``payment_notifications.notification_id``): it must fit, on every database
        raise NotificationRejected(
            "MALFORMED_BODY", f"id is not a string of at most {ID_CHARS} characters", http_status=400
        )
    if envelope.get("resource_type") != "encrypt-resource":
        raise NotificationRejected(
            "UNSUPPORTED_RESOURCE_TYPE", "resource_type is not encrypt-resource", http_status=400
        )
    if envelope["resource"].get("algorithm") != "AEAD_AES_256_GCM":
        raise NotificationRejected("UNSUPPORTED_ALGORITHM", "algorithm is not AEAD_AES_256_GCM", http_status=400)
    return envelope


def _decrypt_resource(resource: dict[str, Any], apiv3_keys: ApiV3Keys, now: datetime | None) -> dict[str, Any]:
    nonce, ciphertext, associated = (resource.get(k) for k in ("nonce", "ciphertext", "associated_data"))
    if not (isinstance(nonce, str) and isinstance(ciphertext, str) and isinstance(associated, str | None)):
        raise NotificationRejected(
            "MALFORMED_BODY", "resource nonce, ciphertext and associated_data must be strings", http_status=400
        )
    try:
        plain = apiv3_keys.decrypt(nonce, ciphertext, associated or "", now)
    except WeChatConfigError:
        raise
    except (InvalidTag, KeyError, TypeError, ValueError):
        raise NotificationRejected("DECRYPT_FAILED", "resource does not decrypt") from None
    try:
        data = loads_strict(plain)
    except (ValueError, RecursionError):  # (nested past the parser's depth, NaN: still not a resource we read)
        raise NotificationRejected("MALFORMED_RESOURCE", "decrypted resource is not JSON", http_status=400) from None
    if not isinstance(data, dict):
        raise NotificationRejected("MALFORMED_RESOURCE", "decrypted resource is not an object", http_status=400)
    if not storable(data):
        raise NotificationRejected(
            "MALFORMED_RESOURCE", "decrypted resource holds a NUL or a lone surrogate", http_status=400
        )
    return data
