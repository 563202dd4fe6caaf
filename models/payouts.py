"""The payout outbox: one row per money movement to WeChat, fixed at creation.

The row, its external number and its ledger entry are committed together,
before any call to WeChat. Terminal states never change.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Boolean, CheckConstraint, ForeignKey, Index, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class PayoutStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    UNKNOWN = "unknown"
    WAITING_USER_CONFIRM = "waiting_user_confirm"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NEEDS_OPERATOR = "needs_operator"
    HELD = "held"  # its person is banned or under review: not sent until a reviewer lets it go


TERMINAL = frozenset({PayoutStatus.SUCCEEDED, PayoutStatus.FAILED, PayoutStatus.CANCELLED})
NOT_LEFT = frozenset({PayoutStatus.PENDING})  # money that has certainly not left


class Rail(StrEnum):
    """How money leaves through WeChat; the same words as the rule forms of ``rebate.rules.Form``."""

    WECHAT_CHANGE = "wechat_change"
    CASH_RED_PACKET = "cash_red_packet"
    WECHAT_COUPON = "wechat_coupon"
    CARD_COUPON = "card_coupon"
    # Service-provider mode only: a merchant-funded cash rebate leaves the merchant's own frozen order money by
    # profit sharing (分账). No rule names it: the fund flow picks it for a ``wechat_change`` rebate.
    PROFIT_SHARING = "profit_sharing"


class InApp(StrEnum):
    """Where a payout's money lands when it stays with us instead (a fallback): the balance or points.

    The same words as ``rebate.rules.Form.BALANCE`` / ``POINTS`` (the rules sit above this layer and
    cannot be imported here; ``tests/test_typed_words.py`` keeps the two vocabularies in step).
    """

    BALANCE = "balance"
    POINTS = "points"


class Payout(Base):
    __tablename__ = "payouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    rebate_id: Mapped[int | None] = mapped_column(ForeignKey("rebates.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    rail: Mapped[str] = mapped_column(String(24))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    external_no: Mapped[str] = mapped_column(String(32), unique=True)
    status: Mapped[str] = mapped_column(String(24), default=PayoutStatus.PENDING)
    held: Mapped[bool] = mapped_column(default=False)  # a refund of its order is pending
    cancel_requested: Mapped[bool] = mapped_column(default=False)  # an operator asked to cancel it at WeChat
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Where the money came from: a definitive failure or a cancellation returns it there.
    source_account_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_accounts.id"))
    # Fixed at the first send and reused verbatim on every retry with the same external number.
    request: Mapped[dict | None] = mapped_column(JSON)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)  # a dispatcher is working on it
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # first handed to WeChat
    wechat_ref: Mapped[str | None] = mapped_column(String(64))  # transfer_bill_no, coupon_id, send_listid …
    package_info: Mapped[str | None] = mapped_column(Text)  # transfer awaiting the user's confirmation
    confirm_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # recorded, not proof
    retry_of_id: Mapped[int | None] = mapped_column(ForeignKey("payouts.id"))
    fallback_rail: Mapped[str | None] = mapped_column(String(24))  # the rule's fallback when this rail refuses
    created_by_operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    approved_by_operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    # a manual payout held, when it was made, for a second operator's approval (payouts.operations.manual_payout)
    needs_approval: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A card payout's card after delivery (WeChat's user_consume_card / user_del_card events, or a redemption)
    card_consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    card_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # WeChat gave the money back (a cash red packet nobody opened: payouts.unclaimed); reconciled by that day's bill
    returned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # BRIN on PostgreSQL (a btree on SQLite): the reports' rollups read one Beijing day at a time
        Index("ix_payouts_finished_at", "finished_at", postgresql_using="brin"),
        CheckConstraint("amount_fen > 0", name="positive"),
        CheckConstraint(
            "status in ('pending', 'sending', 'unknown', 'waiting_user_confirm', 'succeeded', 'failed', "
            "'cancelled', 'needs_operator', 'held')",
            name="status",
        ),
        Index("ix_payouts_due", "status", "next_attempt_at"),
        # the day's returns, which its fund-flow bill must list (payouts.reconcile); few rows have one
        Index(
            "ix_payouts_returned_at",
            "returned_at",
            postgresql_where=text("returned_at IS NOT NULL"),
            sqlite_where=text("returned_at IS NOT NULL"),
        ),
        # manual payouts by operator and time: the four-eyes limit adds up a day's (payouts.operations)
        Index(
            "ix_payouts_manual",
            "created_by_operator_id",
            "created_at",
            postgresql_where=text("created_by_operator_id IS NOT NULL"),
            sqlite_where=text("created_by_operator_id IS NOT NULL"),
        ),
    )

    @property
    def flow(self) -> str:
        return f"payout:{self.id}"


class PayoutAttempt(Base):
    """Every call to WeChat for a payout: what was asked, what came back, how long it took."""

    __tablename__ = "payout_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    payout_id: Mapped[int] = mapped_column(ForeignKey("payouts.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # send | query | cancel
    request_summary: Mapped[str] = mapped_column(String(300))
    response_code: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RailControl(Base):
    """A switch per rail: operators stop a rail at once; NOTENOUGH pauses it until a time."""

    __tablename__ = "rail_controls"

    rail: Mapped[str] = mapped_column(String(24), primary_key=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
