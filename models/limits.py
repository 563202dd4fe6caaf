"""Counters for claim limits: one row per key, updated atomically with the claim itself."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime


class LimitCounter(Base):
    __tablename__ = "limit_counters"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    window: Mapped[str] = mapped_column(String(16))  # the Beijing day the count is for, or "-" for all time
    count: Mapped[int]
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
