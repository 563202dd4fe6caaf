"""Rebate decisions: one row per (order, campaign, role), awarded or not, with its reasons.

A row with ``amount_fen`` 0 records a rule that did not award and why; the
customer-service trace and ``GET /api/v1/me/rebates`` read these. Refund
clawbacks lower ``amount_fen`` never below zero and record each step in
``RebateAdjustment``. ``Receivable`` tracks money already paid out that a
refund took back, until a later rebate of the same kind nets it off.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class RebateStatus(StrEnum):
    AWARDED = "awarded"
    HELD = "held"  # waiting for milestones (lessons done, test passed, feedback)
    SKIPPED = "skipped"  # the rule did not award; see reason_code
    CLAWED_BACK = "clawed_back"  # reduced to zero by refunds (or its share came back to the merchant)
    EXPIRED = "expired"  # its condition was not met in time
    REVIEW = "review"  # held for a risk review: nothing paid or queued until a reviewer releases it
    REVOKED = "revoked"  # a reviewer revoked it (its budget went back)


class Rebate(Base):
    __tablename__ = "rebates"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))  # served by the unique index it begins
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    rules_version: Mapped[int]
    packet_id: Mapped[int | None] = mapped_column(ForeignKey("red_packets.id"))
    role: Mapped[str] = mapped_column(String(16))
    beneficiary_type: Mapped[str | None] = mapped_column(String(16))  # user | merchant
    beneficiary_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    form: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(16))
    original_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # as first awarded
    amount_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # paid (released), after clawbacks
    held_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # still waiting for its condition
    condition_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    points: Mapped[int] = mapped_column(BigInteger, default=0)
    reason_code: Mapped[str] = mapped_column(String(32))
    reasons: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        # BRIN on PostgreSQL (a btree on SQLite): the reports' rollups read one Beijing day at a time
        Index("ix_rebates_created_at", "created_at", postgresql_using="brin"),
        UniqueConstraint("order_id", "campaign_id", "role"),
        CheckConstraint(
            "amount_fen >= 0 and held_fen >= 0 and amount_fen + held_fen <= original_fen", name="within_original"
        ),
        CheckConstraint(
            "status in ('awarded', 'held', 'skipped', 'clawed_back', 'expired', 'review', 'revoked')", name="status"
        ),
        # What is still held (for milestones or a review), by campaign: a deposit's "left" subtracts it.
        Index(
            "ix_rebates_held_campaign",
            "campaign_id",
            postgresql_where=text("held_fen > 0"),
            sqlite_where=text("held_fen > 0"),
        ),
    )


class OrderMilestone(Base):
    """A milestone the merchant reported for an order (lessons completed, test passed, feedback)."""

    __tablename__ = "order_milestones"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))  # served by the unique index it begins
    name: Mapped[str] = mapped_column(String(32))
    quality: Mapped[int | None]  # 0-100, for feedback
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("order_id", "name"),
        CheckConstraint("quality is null or (quality >= 0 and quality <= 100)", name="quality"),
    )


class AdjustmentKind(StrEnum):
    CLAWBACK = "clawback"  # taken back from money paid or queued (a refund, a review, a share not delivered)
    CANCELLED = "cancelled"  # money still held (milestones, a review) that will never be paid


class RebateAdjustment(Base):
    """One step taking money off a rebate: ``amount_fen`` clawed back (by a refund, a review) and how it was
    recovered, or (``kind`` cancelled) a held part that will never be paid: revoked by a reviewer, expired,
    withheld by the feedback quality, or released by a refund (recovered whole, nothing owed)."""

    __tablename__ = "rebate_adjustments"

    id: Mapped[int] = mapped_column(primary_key=True)
    rebate_id: Mapped[int] = mapped_column(ForeignKey("rebates.id"), index=True)
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    recovered_fen: Mapped[int] = mapped_column(BigInteger)  # came back now (unpaid, or from a balance)
    receivable_fen: Mapped[int] = mapped_column(BigInteger)  # already paid out: owed until netted
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default=AdjustmentKind.CLAWBACK, server_default="clawback")

    __table_args__ = (
        # BRIN on PostgreSQL (a btree on SQLite): the reports' rollups read one Beijing day at a time
        Index("ix_rebate_adjustments_created_at", "created_at", postgresql_using="brin"),
        CheckConstraint("amount_fen > 0 and recovered_fen + receivable_fen = amount_fen", name="split"),
        CheckConstraint("kind in ('clawback', 'cancelled') and (kind = 'clawback' or receivable_fen = 0)", name="kind"),
    )


# A receivable owed to the merchant whose order money funded a share (``rebate.share_debts``), not to the platform.
SHARE_DEBT = "share"


class Receivable(Base):
    """Money a beneficiary owes back (per campaign, so recovery returns to the right budget)."""

    __tablename__ = "receivables"

    id: Mapped[int] = mapped_column(primary_key=True)
    beneficiary_type: Mapped[str] = mapped_column(String(16))
    beneficiary_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # cash | points | credit | share (owed to a merchant)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    outstanding_fen: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # A ``share`` debt made while its share was still at WeChat: nothing settles it until that payout arrives;
    # if it comes back instead, its money settles this debt first (``rebate.share_debts``).
    payout_id: Mapped[int | None] = mapped_column(ForeignKey("payouts.id"), index=True)

    __table_args__ = (CheckConstraint("outstanding_fen >= 0", name="nonnegative"),)
