"""What counts: WeRun steps per Beijing day, reading check-ins at server times, and quiz attempts.

Steps: one row per person and day (``StepDay``). An upload made after a day ended closes that day: its data
has arrived, and a later upload never lowers it (a decrease is refused, the value kept). A value above the
plausibility cap, or the same non-zero total ``steps_repeat_days`` days running, is kept but flagged and
counts as zero (a flagged day shows in the standings as such; an operator can see why in the row).
Reading: a check-in at the server's time, at least ``reading_interval_minutes`` after the person's last
one and at most ``reading_daily_cap`` a Beijing day; a day's count is final once the day has ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import func, select

from challenges import stakes
from challenges.days import day_end, today
from challenges.errors import MeasureRefused, NotParticipant, TooSoon
from challenges.spec import ChallengeSettings
from models import Challenge, ChallengeKind, ChallengeParticipant, ChallengeStatus, ReadingCheckIn, StepDay, db

WERUN_DAYS = 31  # WeRun hands over the last 30 days; older ones are not taken
OVER_CAP, REPEATED = "over_cap", "repeated"


@dataclass
class StepsRecorded:
    taken: list[date] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)  # {"day", "reason"}: future, too_old, closed_day_decrease
    flagged: list[dict] = field(default_factory=list)  # {"day", "reason"}: over_cap, repeated


def record_steps(
    user_id: int,
    steps: list[tuple[date, int]],
    now: datetime,
    *,
    made: datetime | None = None,
    settings: ChallengeSettings | None = None,
) -> StepsRecorded:
    """Store a decrypted WeRun upload (the web layer decrypted and checked it). ``made``: when WeChat wrote the data
    (its watermark); a day closes only with data written after it ended, not data fetched before midnight and
    uploaded after (that day's count was still growing: closing on it would settle on a partial day)."""
    from challenges.operations import current_settings

    settings = settings or current_settings()
    stakes.lock_person(user_id)  # one upload of a person at a time
    result, this_day = StepsRecorded(), today(now)
    written_on = today(min(made, now)) if made is not None else this_day  # the Beijing day the data was written
    wanted = {}
    for day, value in steps:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MeasureRefused(f"steps on {day} must be a whole number ≥ 0", zh="步数数据有误")
        if day > this_day:
            result.refused.append({"day": day.isoformat(), "reason": "future"})
        elif day < this_day - timedelta(days=WERUN_DAYS):
            result.refused.append({"day": day.isoformat(), "reason": "too_old"})
        else:
            wanted[day] = value
    rows = _step_rows(user_id, min(wanted, default=this_day) - timedelta(days=settings.steps_repeat_days), this_day)
    for day, value in sorted(wanted.items()):
        row = rows.get(day)
        if row is not None and row.closed and value < row.steps:
            result.refused.append({"day": day.isoformat(), "reason": "closed_day_decrease"})
            continue
        if row is None:
            row = rows[day] = StepDay(user_id=user_id, day=day, steps=value)
            db.session.add(row)
        row.steps, row.uploaded_at, row.closed = value, now, row.closed or day < written_on
        row.flagged = OVER_CAP if value > settings.steps_daily_cap else None
        result.taken.append(day)
    _flag_repeats(rows, settings.steps_repeat_days)
    result.flagged = [{"day": d.isoformat(), "reason": r.flagged} for d, r in sorted(rows.items()) if r.flagged]
    db.session.flush()
    return result


def _step_rows(user_id: int, first: date, last: date) -> dict[date, StepDay]:
    found = db.session.execute(
        select(StepDay).where(StepDay.user_id == user_id, StepDay.day >= first, StepDay.day <= last)
    ).scalars()
    return {row.day: row for row in found}


def _flag_repeats(rows: dict[date, StepDay], run: int) -> None:
    """The same non-zero total ``run`` days running: every day of the run is flagged (a stuck or faked feed)."""
    if run < 2:
        return
    for day, row in rows.items():
        window = [rows.get(day - timedelta(days=i)) for i in range(run)]
        if all(r is not None and r.steps and r.steps == row.steps for r in window):
            for r in window:
                r.flagged = r.flagged or REPEATED


def check_in_reading(user_id: int, now: datetime, *, settings: ChallengeSettings | None = None) -> ReadingCheckIn:
    """A reading check-in now, if the interval and the daily cap allow; only for someone in a reading challenge."""
    from challenges.operations import current_settings

    settings = settings or current_settings()
    stakes.lock_person(user_id)
    if not _in_reading_challenge(user_id):
        raise NotParticipant("you are in no reading challenge", zh="你没有进行中的阅读挑战")
    last = db.session.execute(
        select(func.max(ReadingCheckIn.at)).where(ReadingCheckIn.user_id == user_id)
    ).scalar_one_or_none()
    interval = timedelta(minutes=settings.reading_interval_minutes)
    if last is not None and now - _aware(last) < interval:
        wait = int((_aware(last) + interval - now).total_seconds()) + 1
        raise TooSoon(wait, en=f"check in again in {wait} s", zh=f"请 {wait} 秒后再打卡")
    day = today(now)
    count = db.session.execute(
        select(func.count()).where(ReadingCheckIn.user_id == user_id, ReadingCheckIn.day == day)
    ).scalar_one()
    if count >= settings.reading_daily_cap:
        wait = int((day_end(day) - now).total_seconds()) + 1
        raise TooSoon(wait, en="today's check-ins are all done", zh="今天的打卡次数已用完", code="checkin_daily_cap")
    checkin = ReadingCheckIn(user_id=user_id, day=day, at=now)
    db.session.add(checkin)
    db.session.flush()
    return checkin


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _in_reading_challenge(user_id: int) -> bool:
    return (
        db.session.execute(
            select(Challenge.id)
            .join(ChallengeParticipant, ChallengeParticipant.challenge_id == Challenge.id)
            .where(
                ChallengeParticipant.user_id == user_id,
                Challenge.kind == ChallengeKind.READING,
                Challenge.status.in_([ChallengeStatus.OPEN, ChallengeStatus.RUNNING]),
            )
            .limit(1)
        ).first()
        is not None
    )


@dataclass(frozen=True)
class DayData:
    """One participant's value on one day and whether it has arrived (counts before the report deadline)."""

    value: int
    arrived: bool
    flagged: str | None = None


def daily_data(challenge: Challenge, user_ids: list[int], days: list[date], now: datetime) -> dict:
    """(user_id, day) → DayData for a steps or reading challenge."""
    if challenge.kind == ChallengeKind.STEPS:
        rows = db.session.execute(
            select(StepDay).where(StepDay.user_id.in_(user_ids), StepDay.day >= days[0], StepDay.day <= days[-1])
        ).scalars()
        found = {(r.user_id, r.day): r for r in rows}
        data = {}
        for uid in user_ids:
            for day in days:
                r = found.get((uid, day))
                if r is None:
                    data[uid, day] = DayData(0, False)
                else:
                    data[uid, day] = DayData(0 if r.flagged else r.steps, r.closed, r.flagged)
        return data
    counts = {
        (uid, day): n
        for uid, day, n in db.session.execute(
            select(ReadingCheckIn.user_id, ReadingCheckIn.day, func.count())
            .where(ReadingCheckIn.user_id.in_(user_ids), ReadingCheckIn.day >= days[0], ReadingCheckIn.day <= days[-1])
            .group_by(ReadingCheckIn.user_id, ReadingCheckIn.day)
        ).all()
    }
    return {(uid, day): DayData(counts.get((uid, day), 0), now >= day_end(day)) for uid in user_ids for day in days}
