"""Daily rollups for the effect reports (``insights.reports`` reads them; ``jobs.insights`` writes them).

Each event counts on the Beijing day it happened (an order on the day it was paid, a refund on the
day it succeeded, a packet on the day it was issued / claimed / used / expired, a rebate on the day
it was awarded / paid / clawed back), so a closed day never changes and the rollup job only rebuilds
days that are not yet final. ``merchant_id`` and ``campaign_id`` are 0 for "none" (the rows are
keys, never foreign keys: a rollup outlives nothing and is rebuilt from the tables it sums).
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime


class InsightsDaily(Base):
    """One counter of one Beijing day: ``metric`` (``sales``, ``packets_used`` …) split by ``dim``
    (``''`` the total; ``category:…``, ``bucket:…``, ``trigger:…``, ``channel:…``, ``role:form``)."""

    __tablename__ = "insights_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    merchant_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    dim: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    fen: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index("ix_insights_daily_campaign_day", "campaign_id", "day"),)


class InsightsPerson(Base):
    """Someone who took part on a day (got, claimed or used a packet, placed an influenced order, earned
    a rebate), per merchant and campaign: distinct people cannot be summed across days, so reports count
    them here. ``first_day``: the Beijing day the person was first seen (their account's creation)."""

    __tablename__ = "insights_people"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    merchant_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_day: Mapped[date] = mapped_column(Date)

    __table_args__ = (Index("ix_insights_people_campaign_day", "campaign_id", "day"),)


class InsightsDay(Base):
    """A Beijing day the rollup job has built: ``final`` once built after the day (and its stragglers) ended."""

    __tablename__ = "insights_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    rolled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    final: Mapped[bool] = mapped_column(default=False)
