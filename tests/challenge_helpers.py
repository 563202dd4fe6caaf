"""Set-ups shared by the challenge tests: a funded balance, balances by account, a fixed clock."""

from __future__ import annotations

from datetime import UTC, date, datetime

from ledger import Leg, balance, post, ref
from models import AccountKind

# Tuesday 1 December 2026, 10:00 in Beijing: the challenges start on Wednesday the 2nd.
NOW = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
DAY1, DAY2, DAY3 = date(2026, 12, 2), date(2026, 12, 3), date(2026, 12, 4)


def at_beijing(day: date, hour: int) -> datetime:
    """``hour`` o'clock in Beijing on ``day``, in UTC."""
    from datetime import timedelta

    from challenges.days import day_start

    return day_start(day) + timedelta(hours=hour)


def fund(user_id: int, amount_fen: int, key: str = "earlier", points: bool = False) -> None:
    """The person earned this before (an earlier rebate to their balance, or points)."""
    if points:
        source, target = ref(AccountKind.POINTS_ISSUANCE), ref(AccountKind.USER_POINTS, "user", user_id)
    else:
        source, target = ref(AccountKind.PLATFORM_MARKETING_FUND), ref(AccountKind.USER_CASH, "user", user_id)
    post(f"fund:{user_id}:{key}", "an earlier rebate", [Leg(source, -amount_fen), Leg(target, amount_fen)])


def cash(user_id: int) -> int:
    return balance(ref(AccountKind.USER_CASH, "user", user_id))


def staked(user_id: int) -> int:
    return balance(ref(AccountKind.USER_STAKE, "user", user_id))


def points(user_id: int) -> int:
    return balance(ref(AccountKind.USER_POINTS, "user", user_id))


def point_stake(user_id: int) -> int:
    return balance(ref(AccountKind.USER_POINT_STAKE, "user", user_id))


def fund_account() -> int:
    return balance(ref(AccountKind.PLATFORM_MARKETING_FUND))
