"""A change transfer's reminder that would fall in the quiet hours goes a quarter hour before they begin
(``notices.watch``): held until the morning it came after the transfer closed, and went to the inbox only."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models import Payout
from models.base import BEIJING
from notices.events import NoticeEvent
from notices.quiet import QuietHours
from notices.watch import WatchSettings, drafts_for
from payouts.rails import Rail

QUIET = QuietHours.parse("22:00-08:00")


def beijing(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=BEIJING).astimezone(UTC)


def offered(at: datetime) -> Payout:
    return Payout(
        id=7,
        user_id=3,
        rebate_id=11,
        rail=Rail.WECHAT_CHANGE,
        amount_fen=5_00,
        package_info="pkg",
        sent_at=at,
        status="waiting_user_confirm",
        cancel_requested=False,
    )


def reminder(at: datetime, confirm_hours: int, quiet: QuietHours | None = QUIET) -> datetime | None:
    drafts = drafts_for([offered(at)], WatchSettings(confirm_hours, 3, quiet), at)
    (sent_at,) = [d.send_after for d in drafts if d.event == NoticeEvent.TRANSFER_REMINDER] or [None]
    return sent_at


@pytest.mark.parametrize(
    ("offered_at", "hours", "expected"),
    [
        (beijing(4, 19), 24, beijing(5, 16)),  # 3 h before 19:00: in the day, as it was
        (beijing(4, 1), 24, beijing(4, 21, 45)),  # 22:00 for a 01:00 close: before the quiet hours begin
        (beijing(4, 7), 4, beijing(4, 8)),  # 08:00: the quiet hours are over
        (beijing(4, 2), 4, None),  # 03:00 for a 06:00 close, offered in the night: none (the first went at once)
    ],
)
def test_a_reminder_that_would_fall_in_the_quiet_hours_goes_before_they_begin(offered_at, hours, expected):
    assert reminder(offered_at, hours) == expected


def test_without_quiet_hours_the_reminder_keeps_its_time():
    assert reminder(beijing(4, 1), 24, quiet=None) == beijing(4, 22)


def test_the_live_app_passes_its_quiet_hours_to_the_watch():
    from notices import watch

    assert QuietHours.of({"WECHAT_MODE": "live"}) == QUIET
    assert QuietHours.of({"WECHAT_MODE": "simulator"}) is None
    assert watch.DEFAULTS.quiet is None
