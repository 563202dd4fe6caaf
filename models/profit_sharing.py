"""Profit sharing (分账) in the service-provider fund flow: one share per profit-sharing order, the receivers
added at each sub-merchant, and each sub-merchant's maximum ratio as WeChat last told it.

A share carries the order's merchant-funded cash rebates to persons out of the merchant's own frozen order
money, in one request per order after its refund window (``due_at``); its payouts are ordinary payout rows on
``Rail.PROFIT_SHARING`` (the outbox's numbers, states and ledger flows), claimed by the share, not by the
dispatcher. ``out_order_no`` is made from the order id and never changes: every resend uses it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class ShareStatus(StrEnum):
    PENDING = "pending"  # waiting for its refund window to close (``due_at``), or for a retry
    SENDING = "sending"  # claimed: its request is fixed and may be at WeChat
    PROCESSING = "processing"  # WeChat accepted it and is still sharing: query later
    FINISHED = "finished"  # every receiver SUCCESS or CLOSED, the rest unfrozen (or nothing was left)
    NEEDS_OPERATOR = "needs_operator"


class ShareKind(StrEnum):
    SHARE = "share"  # POST /v3/profitsharing/orders with unfreeze_unsplit=true
    UNFREEZE = "unfreeze"  # nothing to share: POST /v3/profitsharing/orders/unfreeze
    NOTHING = "nothing"  # the order was refunded in full: nothing is frozen any more


class ProfitShare(Base):
    __tablename__ = "profit_shares"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), unique=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"), index=True)
    sub_mchid: Mapped[str] = mapped_column(String(32))
    transaction_id: Mapped[str] = mapped_column(String(64))
    out_order_no: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=ShareStatus.PENDING)
    kind: Mapped[str | None] = mapped_column(String(16))  # fixed with the request at the first claim
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the order's refund window closes
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(default=0)
    posted: Mapped[bool] = mapped_column(default=False)  # claimed for a POST: a share of this number may exist
    request: Mapped[dict | None] = mapped_column(JSON)  # the body, fixed at the first claim, resent verbatim
    ratio_bps: Mapped[int | None] = mapped_column()  # the merchant's maximum ratio the request was held to
    shared_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # asked to share (sum of receivers)
    held_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # did not fit the ratio: an operator decides
    wechat_order_id: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("status in ('pending', 'sending', 'processing', 'finished', 'needs_operator')", name="status"),
        CheckConstraint("kind is null or kind in ('share', 'unfreeze', 'nothing')", name="kind"),
        CheckConstraint("shared_fen >= 0 and held_fen >= 0", name="amounts"),
        Index("ix_profit_shares_due", "status", "next_attempt_at"),
    )


class ReceiverType(StrEnum):
    MERCHANT_ID = "MERCHANT_ID"
    PERSONAL_OPENID = "PERSONAL_OPENID"  # an openid under the service provider's appid
    PERSONAL_SUB_OPENID = "PERSONAL_SUB_OPENID"  # an openid under the sub-merchant's sub_appid


class ProfitShareReceiver(Base):
    """A receiver added at a sub-merchant (``receivers/add``): added once, remembered (WeChat caps 20,000)."""

    __tablename__ = "profit_share_receivers"

    id: Mapped[int] = mapped_column(primary_key=True)
    sub_mchid: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(24))
    account: Mapped[str] = mapped_column(String(64))
    appid: Mapped[str] = mapped_column(String(32))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("sub_mchid", "type", "account", name="uq_profit_share_receivers_once"),)


class ProfitShareConfig(Base):
    """A sub-merchant's maximum profit-sharing ratio (``merchant-configs``), cached for a day."""

    __tablename__ = "profit_share_configs"

    sub_mchid: Mapped[str] = mapped_column(String(32), primary_key=True)
    max_ratio_bps: Mapped[int] = mapped_column()
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint("max_ratio_bps >= 0 and max_ratio_bps <= 10000", name="ratio"),)
