"""A merchant's bill with the platform: its service-fee rate, each paid order's fee, the monthly invoices,
and deposit top-ups waiting for a second operator.

``OrderFee`` is the fee an order owes now (lowered by refunds, never below zero); its ledger entries carry the
money. ``FeeInvoice`` is one per merchant and Beijing month (unique), written once by the invoice job with the
marketing credit applied first. ``DepositProposal`` is a top-up (or a fee payment, or a withdrawal of unspent
deposit money) one operator proposed; a different operator approves (its ledger entry posts then, once) or rejects
it. Its ``transfer_ref`` names the bank transfer it records: one proposal per merchant, purpose and reference among
those not rejected (a partial unique index), so one transfer is never recorded, nor approved, twice.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class MerchantFeeRate(Base):
    """A merchant's own platform service fee (basis points of each paid order's total); none: the default."""

    __tablename__ = "merchant_fee_rates"

    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"), primary_key=True)
    rate_bps: Mapped[int] = mapped_column()
    updated_by: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint("rate_bps >= 0 and rate_bps <= 10000", name="rate_bps"),)


class OrderFee(Base):
    """The platform fee of one paid order: ``rate_bps`` of its total when paid, lowered as refunds come."""

    __tablename__ = "order_fees"

    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"), index=True)
    rate_bps: Mapped[int] = mapped_column()
    accrued_fen: Mapped[int] = mapped_column(BigInteger)  # at payment
    fee_fen: Mapped[int] = mapped_column(BigInteger)  # now, after refunds
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint("fee_fen >= 0 and fee_fen <= accrued_fen", name="fee_within_accrued"),)


class FeeInvoice(Base):
    """A merchant's platform fees of one Beijing month: the credit applied first, the rest due."""

    __tablename__ = "fee_invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"))
    month: Mapped[str] = mapped_column(String(7))  # YYYY-MM, Beijing
    # fees booked in the month, less refunds' reductions, at most what was owed and not yet billed (a credit
    # carried from earlier months nets here); 0 when below zero (``rebate.fees.invoice_month``)
    fee_fen: Mapped[int] = mapped_column(BigInteger)
    credit_applied_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    due_fen: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("merchant_id", "month"),
        CheckConstraint("credit_applied_fen >= 0 and due_fen = fee_fen - credit_applied_fen", name="due"),
    )


class ProposalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ProposalPurpose(StrEnum):
    DEPOSIT = "deposit"  # money the merchant paid in for its marketing deposit (direct mode only)
    FEES = "fees"  # money the merchant paid against its billed service fees (the platform's own income)
    WITHDRAWAL = "withdrawal"  # unspent deposit money paid back to the merchant by bank transfer


# a proposal's live bank transfer reference: one per merchant and purpose (a rejected proposal frees its reference)
LIVE_TRANSFER_REF = text("transfer_ref IS NOT NULL AND status <> 'rejected'")


class DepositProposal(Base):
    """Money a merchant paid in, as one operator recorded it (a deposit top-up, or a payment of its billed
    fees), or deposit money paid back to it (a withdrawal); another approves (posted then, once) or rejects it."""

    __tablename__ = "deposit_proposals"

    id: Mapped[int] = mapped_column(primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(16), default=ProposalPurpose.DEPOSIT, server_default="deposit")
    reason: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=ProposalStatus.PENDING)
    proposed_by: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    proposed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_reason: Mapped[str | None] = mapped_column(String(200))
    # the bank transfer's own reference (capitals; ``rebate.deposit_ops.transfer_reference``); none before 0049
    transfer_ref: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint("amount_fen > 0", name="amount_positive"),
        CheckConstraint("status in ('pending', 'approved', 'rejected')", name="status"),
        CheckConstraint("purpose in ('deposit', 'fees', 'withdrawal')", name="purpose"),
        CheckConstraint("decided_by is null or decided_by <> proposed_by", name="four_eyes"),
        Index("ix_deposit_proposals_merchant_status", "merchant_id", "status"),
        Index(
            "uq_deposit_proposals_transfer_ref",
            "merchant_id",
            "purpose",
            "transfer_ref",
            unique=True,
            postgresql_where=LIVE_TRANSFER_REF,
            sqlite_where=LIVE_TRANSFER_REF,
        ),
    )
