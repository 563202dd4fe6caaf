"""A campaign's issue trigger as a typed value, parsed from the JSON stored in ``campaigns.trigger``.

The stored format is unchanged (``{"kind": "order_paid", "min_order_fen": 20000}``, ``{}`` for a
campaign whose packets are only issued by hand); ``Trigger.parse`` reads it once where it is used and
refuses anything else with a ``TriggerError`` that says which field is wrong and why. ``Campaign``
validates the column on every write, so a bad trigger is refused before it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from money import MAX_FEN


class TriggerKind(StrEnum):
    """What issues a campaign's packets."""

    ORDER_PAID = "order_paid"  # a paid order (at least min_order_fen; first_order_only)
    CLAIM_CODE = "claim_code"  # a code the person types (batch codes)
    CLAIM = "claim"  # a self-serve claim straight from the campaign
    REGISTRATION = "registration"  # a new person's first login
    DAILY_SIGN_IN = "daily_sign_in"  # one sign-in a Beijing day, with streak bonuses
    SHARE = "share"  # a friend opens a share link (the sharer may be rewarded)
    REFERRAL_BIND = "referral_bind"  # a new person binds to their inviter
    MANUAL = "manual"  # an operator issues them; also what an empty trigger means


# Fired by platform-wide events: such campaigns are created and changed by platform admins only.
PLATFORM_WIDE = frozenset({TriggerKind.REGISTRATION, TriggerKind.DAILY_SIGN_IN, TriggerKind.REFERRAL_BIND})


class TriggerError(ValueError):
    """A stored trigger that is not one we can act on; the message names the field."""

    code = "invalid_trigger"


@dataclass(frozen=True)
class StreakBonus:
    days: int  # every this many consecutive days...
    amount_fen: int  # ...the sign-in packet is worth this instead


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    min_order_fen: int = 0
    first_order_only: bool = False
    streak_bonus: tuple[StreakBonus, ...] = ()
    sharer_reward_fen: int | None = None

    @classmethod
    def parse(cls, raw: object) -> Trigger:
        """The stored JSON as a ``Trigger``; ``None`` or ``{}`` is a manual one."""
        if raw is None:
            return cls(TriggerKind.MANUAL)
        if not isinstance(raw, dict):
            raise TriggerError(f"a trigger is an object, not {type(raw).__name__}")
        unknown = sorted(set(raw) - FIELDS)
        if unknown:
            raise TriggerError(f"unknown trigger field(s) {unknown}; a trigger has {sorted(FIELDS)}")
        kind = raw.get("kind", TriggerKind.MANUAL.value)
        if not isinstance(kind, str) or kind not in KINDS:
            raise TriggerError(f"trigger kind {kind!r} is not one of {sorted(KINDS)}")
        return cls(
            kind=TriggerKind(kind),
            min_order_fen=_fen(raw, "min_order_fen", 0, low=0),
            first_order_only=_flag(raw, "first_order_only"),
            streak_bonus=_streak_bonus(raw.get("streak_bonus", [])),
            sharer_reward_fen=_fen(raw, "sharer_reward_fen", None, low=1),
        )


FIELDS = frozenset({"kind", "min_order_fen", "first_order_only", "streak_bonus", "sharer_reward_fen"})
KINDS = frozenset(k.value for k in TriggerKind)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fen(raw: dict, key: str, default: int | None, *, low: int) -> int | None:
    if key not in raw:
        return default
    value = raw[key]
    if value is None and default is None:
        return None
    if not _is_int(value) or not low <= value <= MAX_FEN:
        raise TriggerError(f"trigger {key} must be a whole number of fen from {low} to {MAX_FEN}, not {value!r}")
    return value


def _flag(raw: dict, key: str) -> bool:
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise TriggerError(f"trigger {key} must be true or false, not {value!r}")
    return value


def _streak_bonus(raw: object) -> tuple[StreakBonus, ...]:
    if not isinstance(raw, list):
        raise TriggerError("trigger streak_bonus must be a list of {days, amount_fen}")
    bonuses = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"days", "amount_fen"}:
            raise TriggerError(f"each streak bonus is {{days, amount_fen}}, not {item!r}")
        days, amount = item["days"], item["amount_fen"]
        if not _is_int(days) or not 1 <= days <= 366:
            raise TriggerError(f"a streak bonus's days must be a whole number from 1 to 366, not {days!r}")
        if not _is_int(amount) or not 1 <= amount <= MAX_FEN:
            raise TriggerError(f"a streak bonus's amount_fen must be a positive whole number of fen, not {amount!r}")
        bonuses.append(StreakBonus(days, amount))
    return tuple(bonuses)
