"""A campaign's issue trigger as a typed value, parsed from the JSON stored in ``campaigns.trigger``.

The stored format is unchanged (``{"kind": "order_paid", "min_order_fen": 20000}``, ``{}`` for a
campaign whose packets are only issued by hand); ``Trigger.parse`` reads it once where it is used and
refuses anything else with a ``TriggerError`` that says which field is wrong and why. ``Campaign``
validates the column on every write, so a bad trigger is refused before it is stored.

This parser is the one definition of a trigger: the campaign operations parse with it (and store
``to_json``, every default written out), the admin API checks its JSON with it, and ``TRIGGER_SCHEMA``
(built from the same bounds) is what /openapi.json publishes.

A streak bonus is every 2 to 365 consecutive days: a bonus "every 1 day" is no streak (every sign-in
would pay it: that is the campaign's packet amount), and a year is the longest streak a campaign runs.
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
    """A trigger that is not one we can act on; the message names the field."""

    code = "invalid_trigger"
    kind = "invalid"


STREAK_DAYS = (2, 365)  # a bonus every this many consecutive days (see the module's note)
MAX_STREAK_BONUSES = 10


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

    def to_json(self) -> dict:
        """As stored in ``campaigns.trigger``: every field written out (``sharer_reward_fen`` only when set)."""
        stored = {
            "kind": TriggerKind(self.kind).value,
            "min_order_fen": self.min_order_fen,
            "first_order_only": self.first_order_only,
            "streak_bonus": [{"days": b.days, "amount_fen": b.amount_fen} for b in self.streak_bonus],
        }
        if self.sharer_reward_fen is not None:
            stored["sharer_reward_fen"] = self.sharer_reward_fen
        return stored


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
    if not isinstance(raw, list) or len(raw) > MAX_STREAK_BONUSES:
        raise TriggerError(f"trigger streak_bonus must be a list of at most {MAX_STREAK_BONUSES} {{days, amount_fen}}")
    low, high = STREAK_DAYS
    bonuses = []
    for i, item in enumerate(raw):
        where = f"trigger streak_bonus[{i}]"
        if not isinstance(item, dict) or set(item) != {"days", "amount_fen"}:
            raise TriggerError(f"{where}: each streak bonus is {{days, amount_fen}}, not {item!r}")
        days, amount = item["days"], item["amount_fen"]
        if not _is_int(days) or not low <= days <= high:
            raise TriggerError(f"{where}.days must be a whole number from {low} to {high}, not {days!r}")
        if not _is_int(amount) or not 1 <= amount <= MAX_FEN:
            raise TriggerError(f"{where}.amount_fen must be a positive whole number of fen, not {amount!r}")
        bonuses.append(StreakBonus(days, amount))
    return tuple(bonuses)


def _fen_schema(low: int, *, null: bool = False) -> dict:
    kind = ["integer", "null"] if null else "integer"
    return {"type": kind, "minimum": low, "maximum": MAX_FEN}


# What /openapi.json publishes for a trigger: the same fields and bounds ``Trigger.parse`` checks.
TRIGGER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": [k.value for k in TriggerKind], "default": TriggerKind.MANUAL.value},
        "min_order_fen": {**_fen_schema(0), "default": 0},
        "first_order_only": {"type": "boolean", "default": False},
        "streak_bonus": {
            "type": "array",
            "maxItems": MAX_STREAK_BONUSES,
            "default": [],
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["days", "amount_fen"],
                "properties": {
                    "days": {"type": "integer", "minimum": STREAK_DAYS[0], "maximum": STREAK_DAYS[1]},
                    "amount_fen": _fen_schema(1),
                },
            },
        },
        "sharer_reward_fen": _fen_schema(1, null=True),
    },
}
