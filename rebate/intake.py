"""What the two intakes speak: our account, the shapes they read, the outcomes they answer.

``apply_payment`` (``payments``) and ``apply_refund_notice`` (``refunds``) take
what WeChat said, parsed once at the edge into ``wechat.transactions`` values.
``rebate`` does not import ``wechat``: the protocols below name the fields it
reads. The account to compare with is passed in from settings (``PayAccount``),
never read from the app here. A notification id is recorded once it is
accepted; an operator's flag is an order's ``review_reason`` plus one open alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from models import Order, alert_once


@dataclass(frozen=True)
class PayAccount:
    """Our WeChat Pay merchant number and app id: every payment for us names both (a refund, the mchid)."""

    mchid: str
    appid: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PayAccount:
        return cls(mchid=config["WECHAT_MCHID"], appid=config["WECHAT_APPID"])


class PaidAmount(Protocol):
    total_fen: int
    payer_total_fen: int | None
    unsettled_coupon_fen: int  # what 免充值 coupons paid: never settled by WeChat
    coupons_fen: int  # what every coupon paid
    currency: str


class PaymentTransaction(Protocol):
    """A transaction (``wechat.transactions.Transaction``): ``amount`` and ``transaction_id`` are set when paid."""

    out_trade_no: str
    transaction_id: str
    mchid: str
    appid: str
    sub_mchid: str | None  # partner mode: the sub-merchant paid; None for a direct transaction
    amount: PaidAmount | None
    success_time: datetime | None

    @property
    def paid(self) -> bool: ...


class RefundState(Protocol):
    """A refund's state (``wechat.transactions.RefundNotice``): ``refund_fen`` is set when SUCCESS;
    ``mchid`` is None in API answers, which do not carry it."""

    out_trade_no: str
    out_refund_no: str
    status: str
    refund_fen: int | None
    total_fen: int | None  # the order's total WeChat names (``amount.total``), when it does
    refund_id: str
    transaction_id: str  # the payment refunded ("" when not named)
    mchid: str | None
    sub_mchid: str | None  # partner mode, when WeChat names it
    settlement_refund_fen: int | None  # what WeChat took back of what it settled, when it says (API answers)


class PaymentOutcome(StrEnum):
    APPLIED = "applied"
    ALREADY_APPLIED = "already_applied"  # paid before (a second transaction is flagged)
    DUPLICATE_NOTIFICATION = "duplicate_notification"
    PAID_AFTER_CLOSE = "paid_after_close"  # flagged for a refund; nothing moved
    MISMATCH_FLAGGED = "mismatch_flagged"  # mchid, appid or amount disagree: flagged, nothing moved
    NOT_PAID = "not_paid"  # WeChat does not say it was paid
    NOT_OURS = "not_ours"  # no order of ours has this out_trade_no

    @property
    def accepted(self) -> bool:
        """Settled for good (applied, or before, or an operator has it): WeChat may stop telling us."""
        return self in (self.APPLIED, self.ALREADY_APPLIED, self.DUPLICATE_NOTIFICATION, self.PAID_AFTER_CLOSE)


class RefundOutcome(StrEnum):
    SUCCESS = "success"
    CLOSED = "closed"
    ABNORMAL = "abnormal"
    PROCESSING = "processing"  # nothing to do yet
    LATE = "late"  # told it went abnormal after it succeeded: the earlier state, arriving late; nothing to do
    DUPLICATE_NOTIFICATION = "duplicate_notification"
    MISMATCH_FLAGGED = "mismatch_flagged"  # mchid, order or amount disagree: flagged, nothing moved
    REFUSED = "refused"  # our rules refuse it (say, more than was paid): flagged, nothing moved
    NOT_OURS = "not_ours"  # no such order, or a failed refund we never asked for

    @property
    def accepted(self) -> bool:
        return self in (
            self.SUCCESS,
            self.CLOSED,
            self.ABNORMAL,
            self.PROCESSING,
            self.DUPLICATE_NOTIFICATION,
            self.LATE,
        )


REASON_SEPARATOR, REVIEW_REASON_CHARS = " | ", 4000


def flag_order(order: Order, kind: str, message: str) -> None:
    """For an operator: the order says why (every distinct reason, latest last, the oldest dropped past
    ``REVIEW_REASON_CHARS``), and one alert is open (WeChat repeats a notification for 24 h)."""
    reasons = [r for r in (order.review_reason or "").split(REASON_SEPARATOR) if r and r != message]
    kept = REASON_SEPARATOR.join([*reasons, message])
    while len(kept) > REVIEW_REASON_CHARS and reasons:
        reasons.pop(0)
        kept = REASON_SEPARATOR.join([*reasons, message])
    order.review_reason = kept[-REVIEW_REASON_CHARS:]
    alert_once(kind, order.out_trade_no, text=message)
