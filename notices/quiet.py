"""Quiet hours (``NOTICE_QUIET_HOURS``, Beijing time): when no WeChat message goes out (``notices.dispatch``), and
before which a transfer's reminder is sent rather than in them (``notices.watch``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from models.base import BEIJING, beijing

DEFAULT_QUIET_HOURS = "22:00-08:00"
_HOURS = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


@dataclass(frozen=True)
class QuietHours:
    """Beijing times of day between which no WeChat message goes out (``start`` after ``end``: past midnight)."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str | None) -> QuietHours | None:
        """``HH:MM-HH:MM`` as the configuration checked it; ``off`` (or nothing): None."""
        match = _HOURS.match("".join((text or "").split()))
        if match is None:
            return None
        h1, m1, h2, m2 = map(int, match.groups())
        return cls(time(h1, m1), time(h2, m2))

    @classmethod
    def of(cls, cfg: Any) -> QuietHours | None:
        """The configured quiet hours; unset: ``DEFAULT_QUIET_HOURS`` in live mode, none with the simulator (it
        wakes nobody, and the demo shows its messages at any hour)."""
        quiet = cfg.get("NOTICE_QUIET_HOURS")
        if quiet is None:
            quiet = "off" if cfg.get("WECHAT_MODE") == "simulator" else DEFAULT_QUIET_HOURS
        return cls.parse(quiet)

    def covers(self, now: datetime) -> bool:
        local = beijing(now).time()
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def end_after(self, now: datetime) -> datetime:
        """The first end of the quiet hours after ``now`` (UTC)."""
        local = beijing(now)
        end = datetime.combine(local.date(), self.end, BEIJING)
        if end <= local:
            end = datetime.combine(local.date() + timedelta(days=1), self.end, BEIJING)
        return end.astimezone(UTC)

    def start_of(self, at: datetime) -> datetime:
        """The start of the quiet hours ``at`` falls in (``covers(at)``), UTC."""
        local = beijing(at)
        start = datetime.combine(local.date(), self.start, BEIJING)
        if start > local:
            start -= timedelta(days=1)
        return start.astimezone(UTC)
