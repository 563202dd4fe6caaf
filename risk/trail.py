"""The behaviour trail: the mini-program's events kept as compact rows, folded into the person's browsing session.

``record`` takes one batch (already checked by the shell: kinds, sizes, products): it takes the batch's
share of the per-person and per-device event rate (``take_event_rate``, one upsert on ``limit_counters``),
folds the batch into ``browsing_sessions`` with one read (the row locked) and one write, and inserts every
event in ONE multi-row ``INSERT``. A refused batch raises ``EventsLimited`` (429) and the caller rolls
back: nothing of it is stored.

Times: the server is the clock, but a batch is not one moment. The mini-program buffers events and may
send ten minutes of browsing at checkout, so each event is placed by its ``client_at`` offset from the
batch's latest ``client_at``, anchored at the server's receive time: ``at = now - (latest_client_at -
client_at)`` (``place``). The client's clock never moves the anchor, it only spreads a batch backwards
within a bounded window: no event is later than ``now`` nor earlier than ``now - BATCH_SPREAD`` (older
offsets are clamped to that bound), and none is earlier than the session's last event (times never go
backwards). An event without ``client_at`` takes the time of the event before it in the batch (the first:
``now``). These times are what ``behaviour_events.at`` stores and what the session folds, so the gaps
between events (their uniformity) and "paid N s after first view" see the time the person acted, not
the time the batch arrived.

Storage: a row is a small integer kind, the product, the dwell, up to 64 characters of search words or
page path, the device and its placed time: about 93 bytes of heap and 140 with its three indexes on
PostgreSQL (measured on 200,000 rows). Rows older than the retention (``purge_events``) are deleted in
batches along the ``at`` index. Scoring never reads this
table: it reads the session, which is kept as the events arrive.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, String, bindparam, select, text
from sqlalchemy.sql.elements import TextClause

from models import Product, db
from models.limits import LimitCounter
from models.risk import BehaviourEvent, BrowsingSession, EventKind
from models.sql import WRITES, delete_in_batches, insert_ignoring, insert_rows

SESSION_GAP = timedelta(minutes=30)  # a longer pause starts another browsing session
BATCH_SPREAD = timedelta(minutes=30)  # how far back of the receive time a batch's client offsets may place events
DETAIL_CHARS = 64  # search words and page paths are kept this long
MAX_BATCH = 100
KINDS = {kind.name.lower(): kind for kind in EventKind}  # "view" → EventKind.VIEW, as the API names them
# The session's counter of each kind.
COUNTERS = {
    EventKind.VIEW: "views",
    EventKind.SEARCH: "searches",
    EventKind.COMPARE: "compares",
    EventKind.CART_ADD: "cart_adds",
    EventKind.CART_REMOVE: "cart_removes",
    EventKind.PAGE: "pages",
    EventKind.SHARE: "shares",
}


@dataclass(frozen=True)
class Event:
    """One checked event, in the batch's order."""

    kind: EventKind
    product_id: int | None = None
    detail: str | None = None  # search words or page path, truncated to DETAIL_CHARS when stored
    dwell_ms: int | None = None


class EventsLimited(Exception):
    """More events a minute than a person or a device may send: the batch is refused whole."""

    kind = "limit"

    def __init__(self, message: str, retry_after: int, code: str = "events_rate_limited"):
        super().__init__(message)
        self.retry_after = max(1, retry_after)
        self.code = code


def place(
    events: Sequence[tuple[Event, datetime | None]], now: datetime, not_before: datetime | None = None
) -> list[tuple[Event, datetime]]:
    """The batch's events with their times, in time order (the batch's order among equal times).

    An event with ``client_at`` is at ``now - (latest client_at - client_at)``, clamped to ``[now -
    BATCH_SPREAD, now]``; one without takes the time of the event before it in the batch (the first:
    ``now``). No time is before ``not_before`` (the session's last event): the trail never goes back."""
    stamped = [client_at for _, client_at in events if client_at is not None]
    latest = max(stamped) if stamped else None
    keyed, at, key = [], now, None
    for position, (event, client_at) in enumerate(events):
        if client_at is not None:
            # the gap bounded before it is subtracted: a phone's clock may say year 1 or 9999 (now minus that overflows)
            at, key = now - min(latest - client_at, BATCH_SPREAD), client_at.timestamp()
        keyed.append((at, math.inf if key is None else key, position, event))
    keyed.sort(key=lambda k: k[:3])
    return [(event, at if not_before is None else max(at, not_before)) for at, _, _, event in keyed]


def inactive_products(product_ids: set[int]) -> set[int]:
    """Of these ids, the ones that are not an active product (one statement)."""
    if not product_ids:
        return set()
    rows = db.session.execute(select(Product.id).where(Product.id.in_(product_ids), Product.active.is_(True)))
    return product_ids - set(rows.scalars())


# -- rate -----------------------------------------------------------------------------------


def minute_window(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M")


def take_event_rate(user_id: int, device: str | None, count: int, per_minute: int, now: datetime) -> None:
    """Count ``count`` events against the person's and the device's minute, or raise ``EventsLimited``.

    ONE conditional upsert on ``limit_counters`` (keys ``ev:person:<id>`` and ``ev:device:<id>``, a fixed
    window per UTC minute): a row comes back for each counter that had room and was counted; a full one
    returns nothing and is left as it was. The caller rolls the batch back on a refusal (with any counter
    this statement did take). ``per_minute`` 0 switches the limit off."""
    if not per_minute:
        return
    retry_after = 60 - now.second
    if count > per_minute:
        raise EventsLimited(f"at most {per_minute} events a minute", retry_after)
    keys = sorted([f"ev:person:{user_id}"] + ([f"ev:device:{device}"] if device else []))
    params = {"w": minute_window(now), "n": count, "most": per_minute, "now": now}
    params.update({f"k{i}": key for i, key in enumerate(keys)})
    taken = set(db.session.execute(_rate_upsert(len(keys)), params).scalars())
    refused = [key for key in keys if key not in taken]
    if refused:
        what = "device" if refused[0].startswith("ev:device:") else "person"
        raise EventsLimited(f"at most {per_minute} events a minute per {what}", retry_after)


@functools.cache
def _rate_upsert(rows: int) -> TextClause:
    """``take_event_rate``'s statement for 1 or 2 counters (keys bound in sorted order: one lock order)."""
    values = ", ".join(f"(:k{i}, :w, :n, :now)" for i in range(rows))
    sql = (
        f'INSERT INTO limit_counters (key, "window", "count", last_at) VALUES {values} '  # noqa: S608 (row numbers)
        # a window never goes back (minutes compare as text): a count stamped in the minute before, landing after
        # one of the new minute, counts in the newer one
        'ON CONFLICT (key) DO UPDATE SET "count" = CASE WHEN limit_counters."window" < excluded."window" '
        'THEN excluded."count" ELSE limit_counters."count" + excluded."count" END, '
        '"window" = CASE WHEN limit_counters."window" < excluded."window" THEN excluded."window" '
        'ELSE limit_counters."window" END, last_at = excluded.last_at '
        'WHERE limit_counters."window" < excluded."window" OR limit_counters."count" + excluded."count" <= :most '
        "RETURNING key"
    )
    when = LimitCounter.__table__.c.last_at.type
    keys = [bindparam(f"k{i}", type_=String) for i in range(rows)]
    return (
        text(sql)
        .bindparams(
            bindparam("now", type_=when),
            bindparam("w", type_=String),
            bindparam("n", type_=Integer),
            bindparam("most", type_=Integer),
            *keys,
        )
        .execution_options(**WRITES)
    )


# -- storing and folding ---------------------------------------------------------------------


def record(
    user_id: int,
    device: str | None,
    events: Sequence[tuple[Event, datetime | None]],
    now: datetime,
    *,
    per_minute: int = 0,
) -> int:
    """Store a checked batch of (event, client_at), placed in time before ``now`` (``place``), and fold it into
    the person's session; the number stored.

    Flushes only. ``EventsLimited`` when the batch would pass ``per_minute`` for the person or the device."""
    if not events:
        return 0
    take_event_rate(user_id, device, len(events), per_minute, now)
    placed = fold_session(user_id, events, now)
    _insert_events(user_id, device, placed)
    return len(events)


EVENT_COLUMNS = ("user_id", "device", "kind", "product_id", "dwell_ms", "detail", "at")


def _insert_events(user_id: int, device: str | None, events: Sequence[tuple[Event, datetime]]) -> None:
    """One multi-row INSERT (a batch is at most 100 events, ``models.sql``'s chunk)."""
    rows = []
    for event, at in events:
        detail = event.detail[:DETAIL_CHARS] if event.detail is not None else None
        row = (user_id, device, int(event.kind), event.product_id, event.dwell_ms, detail, at)
        rows.append(dict(zip(EVENT_COLUMNS, row, strict=True)))
    insert_rows(BehaviourEvent.__table__, rows)


def _lock_session(user_id: int) -> BrowsingSession | None:
    return db.session.execute(
        select(BrowsingSession)
        .where(BrowsingSession.user_id == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


SESSION_START = {
    "first_view_at": None,
    "last_cart_at": None,
    **dict.fromkeys(COUNTERS.values(), 0),
    "dwell_ms": 0,
    "gaps": 0,
    "gap_sum_ms": 0,
    "gap_sq_sum": 0,
}


def fold(state: dict | None, events: Sequence[tuple[int, datetime, int | None]]) -> dict:
    """The session after these (kind, at, dwell_ms) events, in order; ``state`` is the session's columns or None.

    A gap over ``SESSION_GAP`` since the last event starts a new session (its counters, start, first view
    and entry kind); ``events_total`` counts every session's events. A gap is counted in milliseconds
    (``gap_sum_ms``) and its square in ms² (``gap_sq_sum``), exactly, for the gaps' variance. A BIGINT
    holds it: every gap of a session is at most ``SESSION_GAP`` (1.8e6 ms), so the sum of squares is at
    most 1.8e6 × the session's length in ms, and reaching 9.2e18 would take a session of 160 years without
    a 30-minute pause (the event rate only makes the gaps shorter)."""
    s = dict(state) if state is not None else None
    for kind, at, dwell_ms in events:
        if s is None or at - s["last_at"] > SESSION_GAP:
            total = s["events_total"] if s is not None else 0
            s = {**SESSION_START, "started_at": at, "entry_kind": int(kind), "events_total": total}
        else:
            gap_ms = max(0, (at - s["last_at"]) // timedelta(milliseconds=1))
            s["gaps"] += 1
            s["gap_sum_ms"] += gap_ms
            s["gap_sq_sum"] += gap_ms * gap_ms
        s[COUNTERS[EventKind(kind)]] += 1
        s["dwell_ms"] += dwell_ms or 0
        if kind == EventKind.VIEW and s["first_view_at"] is None:
            s["first_view_at"] = at
        if kind == EventKind.CART_ADD:
            s["last_cart_at"] = at
        s["last_at"] = at
        s["events_total"] += 1
    return s


SESSION_COLUMNS = tuple(c.name for c in BrowsingSession.__table__.columns if c.name != "user_id")


def fold_session(
    user_id: int, events: Sequence[tuple[Event, datetime | None]], now: datetime
) -> list[tuple[Event, datetime]]:
    """Place the batch (``place``, never before the session's last event) and fold it into the person's
    session: one locking read and one write (a first session: an insert). The placed events, in time order.

    Two batches of one person at once: the second waits for the first's row lock (PostgreSQL) or for the
    database (SQLite's ``BEGIN IMMEDIATE``) and folds on top of it, so no count is lost. A first session
    inserted by both at once: the loser finds the winner's row and places and folds on top of it."""
    row = _lock_session(user_id)
    if row is None:
        placed = place(events, now)
        new = fold(None, _folded(placed))
        if insert_ignoring(BrowsingSession.__table__, [{"user_id": user_id, **new}], ("user_id",), ("user_id",)):
            return placed
        row = _lock_session(user_id)  # a concurrent first batch won the insert
    placed = place(events, now, row.last_at)
    state = fold({c: getattr(row, c) for c in SESSION_COLUMNS}, _folded(placed))
    for column, value in state.items():
        setattr(row, column, value)
    db.session.flush()
    return placed


def _folded(placed: Sequence[tuple[Event, datetime]]) -> list[tuple[int, datetime, int | None]]:
    return [(event.kind, at, event.dwell_ms) for event, at in placed]


# -- retention -----------------------------------------------------------------------------


def purge_events(now: datetime, keep_days: int, batch: int = 5000, *, commit: Callable[[], None] | None = None) -> int:
    """Delete events older than ``keep_days``, ``batch`` rows a statement along the ``at`` index; how many.

    Each batch is ``DELETE … WHERE id IN (the oldest ``batch`` ids before the cut)``: a short statement
    that locks few rows. A job passes ``commit`` (``db.session.commit``) to end the transaction after
    each batch, so the purge never holds a long transaction; without it the caller commits once."""
    table = BehaviourEvent.__table__
    return delete_in_batches(table, table.c.at < now - timedelta(days=keep_days), table.c.at, batch, commit)
