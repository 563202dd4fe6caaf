"""Claim limits, enforced by ``INSERT … ON CONFLICT DO UPDATE … WHERE`` on ``limit_counters``.

The conditional upsert either takes a slot (and returns a row) or, when the
limit is reached, returns nothing. Every slot of one packet (the campaign's
own and the platform-wide ones) goes in ONE multi-row upsert (``take_slots``):
fewer rows back than asked is a refusal, named by the first refused slot in
the order the limits are checked. On PostgreSQL the row lock serialises
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

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy import Integer, String, bindparam, text
from sqlalchemy.sql.elements import TextClause

from models import db
from models.base import beijing, next_beijing_midnight
from models.limits import ClaimRefusal, LimitCounter
from models.sql import WRITES
from risk.bans import active_bans, subjects
from risk.net import limit_key

ALL_TIME = "-"


class LimitHit(Exception):
    code = "claim_limited"
    kind = "limit"

    def __init__(self, message: str, retry_after: int, code: str):
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.code = code


class Banned(LimitHit):
    """A claim from a banned device or network address (403 ``banned``); kept for the trace like a limit's refusal.

    A ``LimitHit`` so that every claim path that keeps and answers a limit's refusal does the same for it."""

    kind = "forbidden"

    def __init__(self, message: str, retry_after: int | None = None, code: str = "banned"):
        Exception.__init__(self, message)
        self.retry_after = retry_after
        self.code = code


def ban_refusal(device: str | None, ip: str | None, now: datetime) -> Banned | None:
    """The refusal of a claim from ``device`` at ``ip`` when either is banned now. Its words name the ban by id
    only: the person (and anyone else on a banned network) and a merchant's staff reading the kept refusal
    never learn its reason, which may be a reviewer's note; the platform's operators look the ban up."""
    bans = active_bans(subjects(device=device, ip=ip), now) if device or ip else []
    if not bans:
        return None
    ends = [b.ends_at for b in bans]
    retry = None if None in ends else int((max(ends) - now).total_seconds())
    named = ", ".join(str(b.id) for b in bans)
    return Banned(f"no red packets can be claimed from this device or network (ban {named})", retry)


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


def _last_at(key: str) -> datetime | None:
    row = db.session.get(LimitCounter, key, populate_existing=True)
    return row.last_at if row else None


def _until_midnight(now: datetime) -> int:
    """Seconds until the Beijing day (and every daily count) turns over."""
    return int((next_beijing_midnight(now) - now).total_seconds())


def take_device_token_slot(ip: str, per_day: int, now: datetime) -> None:
    """Device tokens are handed out sparingly per network address, so fresh ones cannot reset a device limit."""
    day = beijing(now).date().isoformat()
    what = f"at most {per_day} new device tokens a day from one network address"
    take_or_refuse(
        [Slot(f"devices:ip-day:{limit_key(ip)}", day, "device_tokens", what, _until_midnight(now), limit=per_day)], now
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
        ("ip", limit_key(claimant.ip), limits.ip_per_day, limits.ip_interval_seconds, "network address"),
        ("device", claimant.device, limits.device_per_day, limits.device_interval_seconds, "device"),
        ("person", claimant.person_id, limits.person_per_day, limits.person_interval_seconds, "person"),
    )


@dataclass(frozen=True)
class Slot:
    """One limit counter a claim takes: a count (at most ``limit`` in ``window``) or an interval (``seconds``).

    ``code`` and ``refusal`` say what the refusal answers: ``refusal`` is the message of a count, or of an
    interval with ``{wait}`` for the seconds left."""

    key: str
    window: str
    code: str
    refusal: str
    retry_after: int = 0
    limit: int | None = None
    seconds: int | None = None

    def hit(self, now: datetime) -> LimitHit:
        """The refusal of this slot (for an interval, how long is left: one read, on the rare path)."""
        if self.seconds is None:
            return LimitHit(self.refusal, self.retry_after, self.code)
        wait = self.seconds - int((now - _last_at(self.key)).total_seconds())
        return LimitHit(self.refusal.format(wait=wait), wait, self.code)


def take_slots(slots: list[Slot], now: datetime) -> list[Slot]:
    """Take every slot in ONE ``INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING key``; the refused ones, in order.

    A row comes back for each slot taken; a slot whose WHERE fails returns none (and is left as it was).
    The slots taken beside a refused one stay taken: the caller rolls the claim back on a refusal, as
    it does for every other refusal. Rows go in key order, so concurrent claims lock shared counters in
    the same order (PostgreSQL). A count restarts at 1 in a new window; an interval's count just goes on.
    On SQLite too (3.35 and later: multi-row upsert with RETURNING).

    The statement is text, one per shape (which rows are intervals), built once per process and bound
    with the slots' values: SQLAlchemy cannot cache a dialect ``insert().on_conflict_do_update()``
    (``inherit_cache = False``), and compiling it again on every claim cost more than running it."""
    if not slots:
        return []
    statement, params, _ = slots_upsert(slots, now)
    return refused_of(slots, db.session.execute(statement, params).scalars())


def slots_upsert(slots: list[Slot], now: datetime, guard: str = "") -> tuple[TextClause, dict[str, object], int]:
    """``take_slots``' statement (``INSERT … RETURNING key``), its parameters and how many rows it takes: for a
    caller that runs it inside a statement of its own (a data-modifying WITH). ``slots`` is not empty.
    ``guard``: a boolean SQL expression of that statement (PostgreSQL); when it is not true, no row is written."""
    rows = sorted({s.key: s for s in slots}.values(), key=lambda s: s.key)
    params: dict[str, object] = {"now": now}
    for i, s in enumerate(rows):
        params[f"k{i}"], params[f"w{i}"] = s.key, s.window
        if s.seconds is not None:
            params[f"t{i}"] = now - timedelta(seconds=s.seconds)
        else:
            params[f"n{i}"] = s.limit
    return _upsert(tuple(s.seconds is not None for s in rows), guard), params, len(rows)


def slots_refusing(slots: list[Slot], now: datetime) -> tuple[TextClause, dict[str, object]]:
    """Whether any of ``slots`` would be refused now, as a one-row ``SELECT EXISTS (…) AS refusing`` (a counter that
    is full in its window or a later one, or an interval's counter taken after its time) and its parameters
    (``o``-prefixed): a read, for a caller that must rank a refusal without taking anything. ``slots`` is not empty."""
    rows = sorted({s.key: s for s in slots}.values(), key=lambda s: s.key)
    params: dict[str, object] = {}
    for i, s in enumerate(rows):
        params[f"ok{i}"] = s.key
        if s.seconds is not None:
            params[f"ot{i}"] = now - timedelta(seconds=s.seconds)
        else:
            params[f"ow{i}"], params[f"on{i}"] = s.window, s.limit
    return _refusing(tuple(s.seconds is not None for s in rows)), params


@functools.cache
def _refusing(intervals: tuple[bool, ...]) -> TextClause:
    full = " OR ".join(
        f"(limit_counters.key = :ok{i} AND limit_counters.last_at > :ot{i})"
        if interval
        else f'(limit_counters.key = :ok{i} AND limit_counters."window" >= :ow{i} AND limit_counters."count" >= :on{i})'
        for i, interval in enumerate(intervals)
    )
    when = LimitCounter.__table__.c.last_at.type
    times = [bindparam(f"ot{i}", type_=when) for i, interval in enumerate(intervals) if interval]
    counts = [bindparam(f"on{i}", type_=Integer) for i, interval in enumerate(intervals) if not interval]
    windows = [bindparam(f"ow{i}", type_=String) for i, interval in enumerate(intervals) if not interval]
    keys = [bindparam(f"ok{i}", type_=String) for i in range(len(intervals))]
    sql = f"SELECT EXISTS (SELECT 1 FROM limit_counters WHERE {full}) AS refusing"  # noqa: S608 - row numbers only
    return text(sql).bindparams(*times, *counts, *windows, *keys)


def refused_of(slots: list[Slot], taken_keys) -> list[Slot]:
    """The slots whose keys the upsert did not return, in the order checked."""
    taken = set(taken_keys or ())
    return [s for s in slots if s.key not in taken]


@functools.cache
def _upsert(intervals: tuple[bool, ...], guard: str = "") -> TextClause:
    """The conditional multi-row upsert of ``take_slots`` for rows of this shape (True: an interval), in key order;
    with ``guard`` (PostgreSQL), only when that boolean SQL expression is true.

    Row i binds ``k{i}`` (key), ``w{i}`` (window) and either ``t{i}`` (an interval: free when the last
    slot was taken at or before it) or ``n{i}`` (a count: free in a later window than the row's, or below it);
    ``now`` is every row's ``last_at``. The same SQL on PostgreSQL and SQLite.

    A window never goes back: a claim stamped before Beijing midnight (its request's ``now``) whose upsert runs
    after one of the new day (it waited for the row's lock) counts in the row's newer day, where it had reset
    the row to the day before (the new day's count then started again from nothing, and the late claim was
    taken on top of its own full day). Windows are ISO dates (or ``ALL_TIME``): they compare as text."""
    values = ", ".join(f"(:k{i}, :w{i}, 1, :now)" for i in range(len(intervals)))
    free = " OR ".join(
        f"(limit_counters.key = :k{i} AND limit_counters.last_at <= :t{i})"
        if interval
        else f'(limit_counters.key = :k{i} AND (limit_counters."window" < :w{i} OR limit_counters."count" < :n{i}))'
        for i, interval in enumerate(intervals)
    )
    # Only row numbers are formatted in; every value is a bound parameter.
    rows = f"VALUES {values}"
    if guard:  # (a WHERE, so that ON CONFLICT is not read as a join's ON)
        rows = f'SELECT * FROM ({rows}) AS rows_(key, "window", "count", last_at) WHERE {guard}'  # noqa: S608
    sql = (
        f'INSERT INTO limit_counters (key, "window", "count", last_at) {rows} '  # noqa: S608
        'ON CONFLICT (key) DO UPDATE SET "count" = CASE WHEN limit_counters."window" < excluded."window" '
        'THEN 1 ELSE limit_counters."count" + 1 END, "window" = CASE WHEN limit_counters."window" < excluded."window" '
        'THEN excluded."window" ELSE limit_counters."window" END, last_at = excluded.last_at '
        f"WHERE {free} RETURNING key"
    )
    when = LimitCounter.__table__.c.last_at.type
    times = [bindparam(f"t{i}", type_=when) for i, interval in enumerate(intervals) if interval]
    counts = [bindparam(f"n{i}", type_=Integer) for i, interval in enumerate(intervals) if not interval]
    keys = [bindparam(f"{k}{i}", type_=String) for i in range(len(intervals)) for k in "kw"]
    return text(sql).bindparams(bindparam("now", type_=when), *times, *counts, *keys).execution_options(**WRITES)


def take_or_refuse(slots: list[Slot], now: datetime) -> None:
    """Take every slot in one statement or raise the first refused one's ``LimitHit`` (the caller rolls back)."""
    refused = take_slots(slots, now)
    if refused:
        raise refused[0].hit(now)


def platform_slots(limits: PlatformLimits, claimant: Claimant, now: datetime, *, interval: bool = True) -> list[Slot]:
    """One packet's platform-wide slots: the daily counts per IP, device and person, then (when the packet
    starts a claim event) the intervals, in the order they are checked."""
    day = beijing(now).date().isoformat()
    until_midnight = _until_midnight(now)
    slots = [
        Slot(
            f"p:{kind}-day:{value}",
            day,
            f"platform_{kind}_daily_limit",
            f"at most {per_day} red packets a day per {what} across the platform",
            until_midnight,
            limit=per_day,
        )
        for kind, value, per_day, _, what in _kinds(limits, claimant)
        if value is not None and per_day
    ]
    if interval:
        slots += [
            Slot(
                f"p:{kind}-interval:{value}",
                ALL_TIME,
                f"platform_{kind}_interval",
                f"wait {{wait}} s between red packets per {what}",
                seconds=seconds,
            )
            for kind, value, _, seconds, what in _kinds(limits, claimant)
            if value is not None and seconds
        ]
    return slots


# The keys of the interval slots (window ``ALL_TIME``, free again once ``last_at`` is older than its seconds), as SQL
# LIKE patterns: ``platform_slots``' ``p:<kind>-interval:<value>`` and ``campaign_slots``' ``c<id>:<kind>-interval:
# <value>``. Any other key of window ``ALL_TIME`` is a count for good (a campaign's per-person limit: ``c<id>:person:
# <person>``), which no purge may delete (``jobs.retention.purge_limit_counters``).
INTERVAL_KEY_PATTERNS = (
    "p:ip-interval:%",
    "p:device-interval:%",
    "p:person-interval:%",
    "c%:ip-interval:%",
    "c%:device-interval:%",
)


# The slot code of each of a campaign's per-person limits, with its key's part: ``c<campaign>:<part>:<person>``.
PERSON_KEY_PARTS = {"person_limit": "person", "person_daily_limit": "person-day"}


def person_key_prefix(campaign_id: int, code: str) -> str:
    """The key of a campaign's per-person slot (``code``: a ``PERSON_KEY_PARTS`` code), less the person's id."""
    return f"c{campaign_id}:{PERSON_KEY_PARTS[code]}:"


def campaign_slots(limits: ClaimLimits, *, campaign_id: int, claimant: Claimant, now: datetime) -> list[Slot]:
    """Every applicable slot of one campaign's own limits, in the order they are checked.

    Limits on a network address or device apply only when the claimant carries one."""
    day = beijing(now).date().isoformat()
    until_midnight = _until_midnight(now)
    scope = f"c{campaign_id}"
    person_id, ip = claimant.person_id, limit_key(claimant.ip)
    slots = []
    if limits.per_person is not None:
        slots.append(
            Slot(
                f"{person_key_prefix(campaign_id, 'person_limit')}{person_id}",
                ALL_TIME,
                "person_limit",
                f"at most {limits.per_person} from this campaign per person",
                86_400 * 365,
                limit=limits.per_person,
            )
        )
    if limits.per_person_per_day is not None:
        slots.append(
            Slot(
                f"{person_key_prefix(campaign_id, 'person_daily_limit')}{person_id}",
                day,
                "person_daily_limit",
                f"at most {limits.per_person_per_day} a day per person",
                until_midnight,
                limit=limits.per_person_per_day,
            )
        )
    if limits.per_ip_per_day is not None and ip is not None:
        slots.append(
            Slot(
                f"{scope}:ip-day:{ip}",
                day,
                "ip_daily_limit",
                f"at most {limits.per_ip_per_day} claims a day from one network address",
                until_midnight,
                limit=limits.per_ip_per_day,
            )
        )
    if limits.min_interval_seconds:
        slots += [
            Slot(
                f"{scope}:{kind}-interval:{value}",
                ALL_TIME,
                f"{kind}_interval",
                f"wait {{wait}} s between claims from one {kind}",
                seconds=limits.min_interval_seconds,
            )
            for kind, value in (("ip", ip), ("device", claimant.device))
            if value is not None
        ]
    return slots


def take_platform_daily(limits: PlatformLimits, claimant: Claimant, now: datetime) -> None:
    """Take one packet's slot of the daily counts per IP, device and person, or raise ``LimitHit``."""
    take_or_refuse(platform_slots(limits, claimant, now, interval=False), now)


def enforce_platform_limits(limits: PlatformLimits, claimant: Claimant, now: datetime) -> None:
    """One packet of a new event: a daily slot and the interval per IP, device and person (``LimitHit``)."""
    take_or_refuse(platform_slots(limits, claimant, now), now)


def record_refusal(person_id: int, campaign_id: int, hit: Exception) -> None:
    """Keep a refusal (``LimitHit``, or a packet its funder's deposit could not cover) for the trace.

    It commits with whatever the caller commits; ``hit`` carries the ``code``."""
    db.session.add(ClaimRefusal(user_id=person_id, campaign_id=campaign_id, code=hit.code, message=str(hit)[:200]))


class ClaimGate:
    """The claim limits of one event (a claim, a login, a sign-in, a binding), taken in one statement per packet.

    Every packet the event hands out takes its own slot of the daily counts (per IP, device and
    person): a login that issues packets of three registration campaigns uses three of the five.
    The interval is between claim *events*: the event's first packet checks and restarts it, the
    further packets of the same event are not held back by it. ``campaign`` is the slots of the
    claimed campaign's own limits (``campaign_slots``) when the event is a claim: they are taken with
    the first packet, in the same statement, and refuse before the platform-wide ones. Packets are
    issued inside a savepoint (or their own transaction); a refused packet rolls its slots back with
    it, and the caller puts ``taken`` (the event's interval) back when what took it rolls back.
    """

    def __init__(self, claimant: Claimant, limits: PlatformLimits, campaign: list[Slot] | None = None):
        self.claimant, self.limits, self.taken = claimant, limits, False
        self.campaign = campaign or []
        self.bans_checked, self.banned = False, None

    def bans_already_checked(self) -> ClaimGate:
        """The caller read the claimant's bans with the claim (``risk.bans.banned_column``): none applies."""
        self.bans_checked = True
        return self

    def check_bans(self, now: datetime) -> None:
        """Refuse every packet of the event when its device or network address is banned (``Banned``); one
        read per event, none when the claim's own first read looked already."""
        if not self.bans_checked:
            self.bans_checked = True
            self.banned = ban_refusal(self.claimant.device, self.claimant.ip, now)
        if self.banned is not None:
            raise self.banned

    def slots(self, now: datetime) -> list[Slot]:
        """What the next packet takes: the campaign's own slots (first packet only), then the platform's."""
        first = not self.taken
        return (self.campaign if first else []) + platform_slots(self.limits, self.claimant, now, interval=first)

    def take(self, now: datetime) -> None:
        self.check_bans(now)
        take_or_refuse(self.slots(now), now)
        self.taken = True

    def to_take(self, now: datetime) -> list[Slot]:
        """The slots the next packet takes, for a caller that takes them in a statement of its own (then
        ``taken_by_caller``); the bans are checked first, as ``take`` does."""
        self.check_bans(now)
        return self.slots(now)

    def taken_by_caller(self) -> None:
        self.taken = True

    def try_take(self, now: datetime) -> list[Slot]:
        """Like ``take``, but answer the refused slots (in the order checked) instead of raising; none: taken."""
        self.check_bans(now)
        refused = take_slots(self.slots(now), now)
        if not refused:
            self.taken = True
        return refused


def enforce_claim_limits(limits: ClaimLimits, *, campaign_id: int, claimant: Claimant, now: datetime) -> None:
    """Take one slot of every applicable limit of one campaign or raise ``LimitHit`` (the caller rolls back)."""
    take_or_refuse(campaign_slots(limits, campaign_id=campaign_id, claimant=claimant, now=now), now)
