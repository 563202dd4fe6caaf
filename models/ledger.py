"""Double-entry ledger tables: accounts, entries, postings, and clearing flows.

Sign convention: a posting's ``amount`` is signed; positive credits the account
(its holder is owed more, e.g. a user's cash balance grows), negative debits
it. The postings of one entry sum to zero, all in the entry's unit. Money
(``fen``) and points (``point``) never meet in one entry.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime, utcnow


class Unit(StrEnum):
    FEN = "fen"
    POINT = "point"


class AccountKind(StrEnum):
    # Platform-owned
    PLATFORM_MARKETING_FUND = "platform_marketing_fund"
    WECHAT_SETTLEMENT = "wechat_settlement"
    POINTS_ISSUANCE = "points_issuance"
    PLATFORM_FEE_INCOME = "platform_fee_income"  # merchants' service fees, earned as orders are paid
    # Payments WeChat took for orders already closed here (the buyer paid as the close went out): owed back to the
    # payer until their refund succeeds (``rebate.refunds.take_late_payment``). Above zero: what is still owed.
    PAYMENTS_TO_RETURN = "payments_to_return"
    # Clearing: every flow through them returns to zero when it finishes.
    REBATE_PAYABLE = "rebate_payable"
    PAYOUT_IN_TRANSIT = "payout_in_transit"
    # Merchant-owned
    MERCHANT_MARKETING_DEPOSIT = "merchant_marketing_deposit"
    MERCHANT_MARKETING_CREDIT = "merchant_marketing_credit"
    MERCHANT_PAYABLE = "merchant_payable"
    MERCHANT_FEES_DUE = "merchant_fees_due"  # below zero: service fees the merchant owes the platform
    # Service-provider mode: the merchant's own order money frozen at WeChat for profit sharing (never the
    # platform's). Like wechat_settlement it mirrors money held at WeChat: a share out of it credits it.
    MERCHANT_FROZEN_SALES = "merchant_frozen_sales"
    # … and the merchant's own claim on that money, in our books only while it is frozen: its sales (buyers'
    # payments) less the rebates its campaigns fund from them, less refunds and what is released to it.
    # Above zero after the release: what persons owe it for shares a refund clawed back after they were paid
    # (``user_owes_merchants``), collected only by its later shares to them.
    MERCHANT_OWN_SALES = "merchant_own_sales"
    # User-owned
    USER_CASH = "user_cash"
    USER_POINTS = "user_points"
    USER_STAKE = "user_stake"  # a challenge stake reserved from the person's cash balance
    USER_POINT_STAKE = "user_point_stake"  # … from their points
    USER_CASH_HELD = "user_cash_held"  # cash balance reserved for the person's unpaid orders (``rebate.wallet``)
    USER_POINTS_HELD = "user_points_held"  # … points reserved for them
    # Below zero: what the person owes merchants for shares (service-provider mode) clawed back after they were
    # paid, one ``share`` receivable per campaign. Kept apart from the cash balance: the platform never
    # collects a merchant's money (二清), only that merchant's later shares to the person net it.
    USER_OWES_MERCHANTS = "user_owes_merchants"


CLEARING_KINDS = frozenset({AccountKind.REBATE_PAYABLE, AccountKind.PAYOUT_IN_TRANSIT})
POINT_KINDS = frozenset(
    {AccountKind.POINTS_ISSUANCE, AccountKind.USER_POINTS, AccountKind.USER_POINT_STAKE, AccountKind.USER_POINTS_HELD}
)


class LedgerAccount(Base):
    __tablename__ = "ledger_accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(96), unique=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    unit: Mapped[str] = mapped_column(String(8))
    owner_type: Mapped[str | None] = mapped_column(String(16))
    owner_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("unit in ('fen', 'point')", name="unit"),
        Index("ix_ledger_accounts_owner", "owner_type", "owner_id"),
    )


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(160), unique=True)
    memo: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(8))
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("ledger_entries.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    postings: Mapped[list[LedgerPosting]] = relationship(back_populates="entry", order_by="LedgerPosting.id")

    __table_args__ = (CheckConstraint("unit in ('fen', 'point')", name="unit"),)


class LedgerPosting(Base):
    __tablename__ = "ledger_postings"

    id: Mapped[int] = mapped_column(primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entries.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    flow: Mapped[str | None] = mapped_column(String(64), index=True)

    entry: Mapped[LedgerEntry] = relationship(back_populates="postings")
    account: Mapped[LedgerAccount] = relationship()

    __table_args__ = (
        CheckConstraint("amount <> 0", name="nonzero"),
        # An account's postings in order: its balance reads only those after its mark (``LedgerBalanceMark``).
        Index("ix_ledger_postings_account_tail", "account_id", "id"),
    )


class LedgerBalanceMark(Base):
    """An account's balance over its postings up to ``upto_posting_id``, folded by a job (``ledger.marks``): a balance
    is its mark plus the postings after it, so reading one costs the same whatever the account's history. Postings
    are never changed or deleted; a mark covers only postings no transaction still open could add to."""

    __tablename__ = "ledger_balance_marks"

    account_id: Mapped[int] = mapped_column(ForeignKey("ledger_accounts.id"), primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(BigInteger)
    upto_posting_id: Mapped[int] = mapped_column(BigInteger)
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LedgerMarkProgress(Base):
    """One row (id 1): the postings folded into the marks so far (``upto_posting_id``), and the next fold's end
    (``candidate_id``, the highest posting id at ``candidate_at``: folded once every transaction that held a
    transaction id then has ended, PostgreSQL)."""

    __tablename__ = "ledger_mark_progress"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    upto_posting_id: Mapped[int] = mapped_column(BigInteger, default=0)
    candidate_id: Mapped[int | None] = mapped_column(BigInteger)
    candidate_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    candidate_xmax: Mapped[int | None] = mapped_column(BigInteger)  # PostgreSQL's next transaction id then


class LedgerFlow(Base):
    """A flow through clearing accounts (a payout, say). Once closed it must net to zero."""

    __tablename__ = "ledger_flows"

    ref: Mapped[str] = mapped_column(String(64), primary_key=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
