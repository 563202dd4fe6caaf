"""Beijing days of a challenge's period."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from models.base import BEIJING, beijing


def today(now: datetime) -> date:
    return beijing(now).date()


def day_start(day: date) -> datetime:
    """When a Beijing day begins, in UTC."""
    return datetime.combine(day, datetime.min.time(), BEIJING).astimezone(UTC)


def day_end(day: date) -> datetime:
    return day_start(day + timedelta(days=1))


def period(start_day: date, days: int) -> list[date]:
    return [start_day + timedelta(days=i) for i in range(days)]
