"""Red packets: issued by someone, owned by someone, spent on one order.

States: ``unclaimed`` (batch-generated, waiting for its code) → ``issued`` →
``locked`` (in an unpaid order) → ``used``; or → ``expired`` / ``revoked``.
``reserved_fen`` is what the packet holds in its campaign's budget.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class PacketStatus(StrEnum):
    UNCLAIMED = "unclaimed"
    ISSUED = "issued"
    LOCKED = "locked"
    USED = "used"
    EXPIRED = "expired"
    REVOKED = "revoked"


class RedPacket(Base):
    __tablename__ = "red_packets"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))  # served by the unique index it begins
    rules_version: Mapped[int]
    issuer_type: Mapped[str] = mapped_column(String(16))
    issuer_merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"))
    issuer_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    claim_code: Mapped[str | None] = mapped_column(String(32), unique=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    min_spend_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    categories: Mapped[list] = mapped_column(JSON, default=list)
    products: Mapped[list] = mapped_column(JSON, default=list)
    tiers: Mapped[list] = mapped_column(JSON, default=list)  # [{"min_spend_fen", "amount_fen"}]; amount_fen = the top
    merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"))
    status: Mapped[str] = mapped_column(String(16), default=PacketStatus.ISSUED)
    reserved_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    source: Mapped[str] = mapped_column(String(24))
    source_ref: Mapped[str | None] = mapped_column(String(64))
    order_id: Mapped[int | None] = mapped_column(BigInteger)  # the order it is locked in or used by
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)  # reports count it on this day

    __table_args__ = (
        # BRIN on PostgreSQL (a btree on SQLite): the reports' rollups read one Beijing day at a time
        Index("ix_red_packets_created_at", "created_at", postgresql_using="brin"),
        Index("ix_red_packets_claimed_at", "claimed_at", postgresql_using="brin"),
        Index("ix_red_packets_used_at", "used_at", postgresql_using="brin"),
        CheckConstraint("status in ('unclaimed', 'issued', 'locked', 'used', 'expired', 'revoked')", name="status"),
        CheckConstraint("amount_fen > 0 and reserved_fen >= 0", name="amounts"),
        CheckConstraint(
            "owner_id is not null or status in ('unclaimed', 'expired', 'revoked')", name="owned_once_claimed"
        ),
        UniqueConstraint("campaign_id", "source", "source_ref"),
        Index("ix_red_packets_status_expires", "status", "expires_at"),
        # the packets a person still holds, by expiry: the "expiring" notices' scan (rebate.packets.expiring_packets)
        Index(
            "ix_red_packets_issued_expiry",
            "expires_at",
            "id",
            postgresql_where=text("status = 'issued'"),
            sqlite_where=text("status = 'issued'"),
        ),
    )
