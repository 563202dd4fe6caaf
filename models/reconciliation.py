"""Reconciliation against WeChat's bills: one run per (Beijing bill date, bill kind, sub-merchant), and what it found.

A rerun of a day updates its run in place (unique ``bill_date, kind, sub_mchid``) and its
mismatches by subject (unique ``run_id, subject_type, subject_ref``), so an
operator's resolution survives a rerun that finds the same thing again.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class BillKind(StrEnum):
    TRADE = "trade"  # orders and refunds
    FUNDFLOW = "fundflow"  # payouts leaving the merchant account


class RunStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class MismatchKind(StrEnum):
    MISSING_HERE = "missing_here"  # WeChat lists it, we have no such record
    MISSING_THERE = "missing_there"  # we finished it that day, WeChat does not list it
    AMOUNT_DIFFERS = "amount_differs"
    STATUS_DIFFERS = "status_differs"  # e.g. WeChat says paid, our order is not


class SubjectType(StrEnum):
    ORDER = "order"
    REFUND = "refund"
    PAYOUT = "payout"


class ReconciliationRun(Base):
    __tablename__ = "reconciliation_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    bill_date: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD, Beijing
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.RUNNING)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lines_read: Mapped[int] = mapped_column(default=0)
    matched: Mapped[int] = mapped_column(default=0)
    mismatches: Mapped[int] = mapped_column(default=0)
    hash_value: Mapped[str | None] = mapped_column(String(64))  # WeChat's announced SHA-1
    error: Mapped[str | None] = mapped_column(Text)
    # Service-provider mode: the sub-merchant whose trade bill this is (``/v3/bill/tradebill?sub_mchid=``).
    # "" for a bill of our own merchant number (direct mode's trade bill, the fund-flow bill), never NULL:
    # NULLs are distinct in a unique constraint, and a rerun must find the same run.
    sub_mchid: Mapped[str] = mapped_column(String(32), default="", server_default="")

    __table_args__ = (
        UniqueConstraint("bill_date", "kind", "sub_mchid"),
        CheckConstraint("kind in ('trade', 'fundflow')", name="kind"),
        CheckConstraint("status in ('running', 'done', 'failed')", name="status"),
    )


class ReconciliationMismatch(Base):
    __tablename__ = "reconciliation_mismatches"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("reconciliation_runs.id"))  # served by the unique index it begins
    kind: Mapped[str] = mapped_column(String(16))
    subject_type: Mapped[str] = mapped_column(String(16))
    subject_ref: Mapped[str] = mapped_column(String(64))  # out_trade_no / out_refund_no / external_no
    ours_fen: Mapped[int | None] = mapped_column(BigInteger)
    theirs_fen: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[str] = mapped_column(Text, default="")
    found_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    resolution: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("run_id", "subject_type", "subject_ref"),
        CheckConstraint("kind in ('missing_here', 'missing_there', 'amount_differs', 'status_differs')", name="kind"),
        CheckConstraint("subject_type in ('order', 'refund', 'payout')", name="subject_type"),
    )
