"""Claim limits, enforced by ``INSERT … ON CONFLICT DO UPDATE … WHERE`` on ``limit_counters``.

The conditional upsert either takes a slot (and returns a row) or, when the
limit is reached, returns nothing. On PostgreSQL the row lock serialises
concurrent claims on one key; on SQLite the database lock does. Counters
commit or roll back with the claim.

Two layers: the platform-wide limits (settings ``CLAIM_*``: packets a Beijing
day and seconds between claims, per IP, per device and per person, across
every campaign and every way to get a packet) and a campaign's own limits
(``Campaign.claim_limits``) on top, for the claim paths.

``ClaimLimits.parse`` is the one definition of a campaign's limits: the campaign operations parse
with it (and store ``to_json``), the admin API checks its JSON with it, claims read the stored JSON
with it, and ``CLAIM_LIMITS_SCHEMA`` (built from the same bounds) is what /openapi.json publishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import case, literal_column
from sqlalchemy.dialects import postgresql, sqlite

from models import db
from models.base import beijing, next_beijing_midnight
from models.limits import ClaimRefusal, LimitCounter

ALL_TIME = "-"


class LimitHit(Exception):
    code = "claim_limited"
    kind = "limit"

    def __init__(self, message: str, retry_after: int, code: str):
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.code = code


# The largest value of each campaign limit (the smallest is 1; null is "no such limit").
LIMIT_MAXIMUM = {
    "per_ip_per_day": 100_000,
    "min_interval_seconds": 86_400 * 30,
    "per_person": 100_000,
    "per_person_per_day": 100_000,
}


class ClaimLimitsError(ValueError):
    """Claim limits that are not ones we can enforce; the message names the field."""

    code = "invalid_claim_limits"
    kind = "invalid"


@dataclass(frozen=True)
class ClaimLimits:
    """A campaign's own limits; ``None`` is "no such limit"."""

    per_ip_per_day: int | None = 5
    min_interval_seconds: int | None = 600  # per device and per IP
    per_person: int | None = 1
    per_person_per_day: int | None = None

    @classmethod
    def parse(cls, raw: object) -> ClaimLimits:
        """The JSON (``None`` or ``{}``: the defaults; a field sent as null: no such limit), or ``ClaimLimitsError``."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise ClaimLimitsError(f"claim_limits is an object, not {type(raw).__name__}")
        unknown = sorted(set(raw) - set(LIMIT_MAXIMUM))
        if unknown:
            raise ClaimLimitsError(f"unknown claim_limits field(s) {unknown}; claim limits have {list(LIMIT_MAXIMUM)}")
        for name, value in raw.items():
            top = LIMIT_MAXIMUM[name]
            whole = isinstance(value, int) and not isinstance(value, bool)
            if value is not None and not (whole and 1 <= value <= top):
                raise ClaimLimitsError(
                    f"claim_limits.{name} must be a whole number from 1 to {top} or null, not {value!r}"
                )
        return cls(**raw)

    def to_json(self) -> dict:
        """As stored in ``campaigns.claim_limits``: every field written out, null for "no such limit"."""
        return asdict(self)


# What /openapi.json publishes for a campaign's claim limits: the fields and bounds ``ClaimLimits.parse`` checks.
CLAIM_LIMITS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        f.name: {"type": ["integer", "null"], "minimum": 1, "maximum": LIMIT_MAXIMUM[f.name], "default": f.default}
        for f in fields(ClaimLimits)
    },
}


def _insert():
    return postgresql.insert if db.session.get_bind().dialect.name == "postgresql" else sqlite.insert


def _take_count(key: str, window: str, limit: int, now: datetime) -> bool:
    table = LimitCounter.__table__
    stmt = _insert()(table).values(key=key, window=window, count=1, last_at=now)
    same_window = table.c.window == window
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "count": case((same_window, table.c["count"] + 1), else_=literal_column("1")),
            "window": window,
            "last_at": now,
        },
        where=(~same_window) | (table.c["count"] < limit),
    ).returning(table.c.key)
    return db.session.execute(stmt).first() is not None


def _take_interval(key: str, seconds: int, now: datetime) -> bool:
    table = LimitCounter.__table__
    stmt = _insert()(table).values(key=key, window=ALL_TIME, count=1, last_at=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={"count": table.c["count"] + 1, "last_at": now},
        where=table.c.last_at <= now - timedelta(seconds=seconds),
    ).returning(table.c.key)
    return db.session.execute(stmt).first() is not None


def _last_at(key: str) -> datetime | None:
    row = db.session.get(LimitCounter, key)
    return row.last_at if row else None


def _until_midnight(now: datetime) -> int:
    """Seconds until the Beijing day (and every daily count) turns over."""
    return int((next_beijing_midnight(now) - now).total_seconds())


def take_device_token_slot(ip: str, per_day: int, now: datetime) -> None:
    """Device tokens are handed out sparingly per network address, so fresh ones cannot reset a device limit."""
    day = beijing(now).date().isoformat()
    if not _take_count(f"devices:ip-day:{ip}", day, per_day, now):
        raise LimitHit(
            f"at most {per_day} new device tokens a day from one network address", _until_midnight(now), "device_tokens"
        )


@dataclass(frozen=True)
class PlatformLimits:
    """Across the whole platform; 0 switches a limit off."""

    ip_per_day: int = 5
    device_per_day: int = 5
    person_per_day: int = 5
    ip_interval_seconds: int = 600
    device_interval_seconds: int = 600
    person_interval_seconds: int = 600

    @classmethod
    def from_config(cls, config: Mapping) -> PlatformLimits:
        return cls(
            ip_per_day=int(config.get("CLAIM_IP_PER_DAY", 5)),
            device_per_day=int(config.get("CLAIM_DEVICE_PER_DAY", 5)),
            person_per_day=int(config.get("CLAIM_PERSON_PER_DAY", 5)),
            ip_interval_seconds=int(config.get("CLAIM_IP_INTERVAL_SECONDS", 600)),
            device_interval_seconds=int(config.get("CLAIM_DEVICE_INTERVAL_SECONDS", 600)),
            person_interval_seconds=int(config.get("CLAIM_PERSON_INTERVAL_SECONDS", 600)),
        )

    @classmethod
    def off(cls) -> PlatformLimits:
        """No platform-wide limit: for issuing that no person asked for at a counter (tests, back-office)."""
        return cls(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class Claimant:
    """Who is asking for a packet: the person, and the network address and device when a request carries them."""

    person_id: int
    ip: str | None = None
    device: str | None = None


def _kinds(limits: PlatformLimits, claimant: Claimant):
    return (
        ("ip", claimant.ip, limits.ip_per_day, limits.ip_interval_seconds, "network address"),
        ("device", claimant.device, limits.device_per_day, limits.device_interval_seconds, "device"),
        ("person", claimant.person_id, limits.person_per_day, limits.person_interval_seconds, "person"),
    )


def take_platform_daily(limits: PlatformLimits, claimant: Claimant, now: datetime) -> None:
    """Take one packet's slot of the daily counts per IP, device and person, or raise ``LimitHit``."""
    day = beijing(now).date().isoformat()
    for kind, value, per_day, _, what in _kinds(limits, claimant):
        if value is not None and per_day and not _take_count(f"p:{kind}-day:{value}", day, per_day, now):
            raise LimitHit(
                f"at most {per_day} red packets a day per {what} across the platform",
                _until_midnight(now),
                f"platform_{kind}_daily_limit",
            )


def take_platform_interval(limits: PlatformLimits, claimant: Claimant, now: datetime) -> None:
    """Start a claim event: the seconds between events per IP, device and person, or raise ``LimitHit``."""
    for kind, value, _, seconds, what in _kinds(limits, claimant):
        key = f"p:{kind}-interval:{value}"
        if value is not None and seconds and not _take_interval(key, seconds, now):
            wait = seconds - int((now - _last_at(key)).total_seconds())
            raise LimitHit(f"wait {wait} s between red packets per {what}", wait, f"platform_{kind}_interval")


def enforce_platform_limits(limits: PlatformLimits, claimant: Claimant, now: datetime) -> None:
    """One packet of a new event: a daily slot and the interval per IP, device and person (``LimitHit``)."""
    take_platform_daily(limits, claimant, now)
    take_platform_interval(limits, claimant, now)


def record_refusal(person_id: int, campaign_id: int, hit: Exception) -> None:
    """Keep a refusal (``LimitHit``, or a packet its funder's deposit could not cover) for the trace.

    It commits with whatever the caller commits; ``hit`` carries the ``code``."""
    db.session.add(ClaimRefusal(user_id=person_id, campaign_id=campaign_id, code=hit.code, message=str(hit)[:200]))


class ClaimGate:
    """The platform-wide limits of one event (a claim, a login, a sign-in, a binding).

    Every packet the event hands out takes its own slot of the daily counts (per IP, device and
    person): a login that issues packets of three registration campaigns uses three of the five.
    The interval is between claim *events*: the event's first packet checks and restarts it, the
    further packets of the same event are not held back by it. Packets are issued inside a
    savepoint; a refused packet rolls its slot back with it, and the caller puts ``taken`` (the
    event's interval) back when the savepoint that took it rolls back.
    """

    def __init__(self, claimant: Claimant, limits: PlatformLimits):
        self.claimant, self.limits, self.taken = claimant, limits, False

    def take(self, now: datetime) -> None:
        take_platform_daily(self.limits, self.claimant, now)
        if not self.taken:
            take_platform_interval(self.limits, self.claimant, now)
            self.taken = True


def enforce_claim_limits(limits: ClaimLimits, *, campaign_id: int, claimant: Claimant, now: datetime) -> None:
    """Take one slot of every applicable limit of one campaign or raise ``LimitHit`` (the caller rolls back).

    Limits on a network address or device apply only when the claimant carries one."""
    day = beijing(now).date().isoformat()
    until_midnight = _until_midnight(now)
    scope = f"c{campaign_id}"
    person_id, ip = claimant.person_id, claimant.ip
    if limits.per_person is not None and not _take_count(
        f"{scope}:person:{person_id}", ALL_TIME, limits.per_person, now
    ):
        raise LimitHit(f"at most {limits.per_person} from this campaign per person", 86_400 * 365, "person_limit")
    if limits.per_person_per_day is not None and not _take_count(
        f"{scope}:person-day:{person_id}", day, limits.per_person_per_day, now
    ):
        raise LimitHit(f"at most {limits.per_person_per_day} a day per person", until_midnight, "person_daily_limit")
    if (
        limits.per_ip_per_day is not None
        and ip is not None
        and not _take_count(f"{scope}:ip-day:{ip}", day, limits.per_ip_per_day, now)
    ):
        raise LimitHit(
            f"at most {limits.per_ip_per_day} claims a day from one network address", until_midnight, "ip_daily_limit"
        )
    if limits.min_interval_seconds:
        for kind, value in (("ip", ip), ("device", claimant.device)):
            if value is None:
                continue
            key = f"{scope}:{kind}-interval:{value}"
            if not _take_interval(key, limits.min_interval_seconds, now):
                wait = limits.min_interval_seconds - int((now - _last_at(key)).total_seconds())
                raise LimitHit(f"wait {wait} s between claims from one {kind}", wait, f"{kind}_interval")
