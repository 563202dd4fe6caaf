"""Counters for claim limits: one row per key, updated atomically with the claim itself."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class LimitCounter(Base):
    __tablename__ = "limit_counters"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    window: Mapped[str] = mapped_column(String(16))  # the Beijing day the count is for, or "-" for all time
    count: Mapped[int]
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ClaimRefusal(Base):
    """A claim refused by a limit, kept (in its own transaction) so the trace can say "limit hit"."""

    __tablename__ = "claim_refusals"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    code: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
