"""Nightly purge of what is kept for a while only: pushed messages applied or ignored and the WeCom robot's
callbacks (``MESSAGES_KEEP_DAYS``), notices done with (``NOTICES_KEEP_DAYS``, the person's inbox included), and rows
that are dead once past their own ``expires_at``: sign-ins' OAuth ``state`` values (``oauth_states``: a callback
refuses an expired one) and ``Idempotency-Key`` answers (``idempotency_records``, kept ``IDEMPOTENCY_TTL_HOURS``: a
request finding an expired one deletes it and runs anew), each kept an hour past its expiry (another node's clock a
little behind ours); and the limit counters that can refuse nothing again (``purge_limit_counters``: never a count
for good).

Safe to forget: a message is recorded once by its dedupe key so that WeChat's retries of it write nothing, and
those come within seconds; a push signed more than ``WECHAT_PUSH_MAX_AGE_SECONDS`` ago is refused before it is
recorded (``web.push``), so a purged message cannot be taken anew; a robot's callback the same way
(``WECOM_BOT_MAX_AGE_SECONDS``, ``web.wecom_bot``: a retry comes within seconds, a stream's refresh within
minutes). A notice is made once per event, near the event;
a pending or sending one is never purged, nor a failed message (an operator's queue). Deleted in batches, each its
own short transaction (several nodes at once delete disjoint or already-gone rows): messages, robot callbacks and
notices a range of ids at a time (no index serves their age), the expired rows by their ``expires_at`` index. Each
kind is purged on its own: one that fails (the database busy, say) is rolled back and logged, and the others are
still purged; the job then fails with that error (the scheduler logs it).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select

from jobs.payouts import job_context
from models import (
    BotCallback,
    IdempotencyRecord,
    InboundMessage,
    LimitCounter,
    MessageStatus,
    Notice,
    OAuthState,
    db,
    utcnow,
)
from models.base import beijing
from models.notices import NOTICE_TERMINAL
from models.sql import delete_in_batches
from risk.limits import ALL_TIME, INTERVAL_KEY_PATTERNS, LIMIT_MAXIMUM

log = logging.getLogger(__name__)
BATCH = 5000
EXPIRED_KEPT = timedelta(hours=1)  # a row dead by its expires_at is kept this much longer (clocks of other nodes)


def purge_kept_rows_job() -> Counter:
    """The nightly purge (this module's rules), each batch committed; each kind on its own (one failing stops none
    of the others, and is raised once they are done)."""
    cfg = job_context().config
    now = utcnow()
    purges: dict[str, Callable[[], int]] = {
        "messages": lambda: purge_messages(now, cfg["MESSAGES_KEEP_DAYS"], commit=db.session.commit),
        "bot_callbacks": lambda: purge_bot_callbacks(now, cfg["MESSAGES_KEEP_DAYS"], commit=db.session.commit),
        "notices": lambda: purge_notices(now, cfg["NOTICES_KEEP_DAYS"], commit=db.session.commit),
        "oauth_states": lambda: purge_oauth_states(now, commit=db.session.commit),
        "idempotency_keys": lambda: purge_idempotency_records(now, commit=db.session.commit),
        "limit_counters": lambda: purge_limit_counters(now, longest_interval_seconds(cfg), commit=db.session.commit),
    }
    done: Counter = Counter()
    failed: BaseException | None = None
    for kind, purge in purges.items():
        try:
            done[kind] += purge()  # a kind that purged nothing is not said
        except Exception as exc:
            db.session.rollback()
            log.warning("purge failed; the others go on", extra={"kind": kind, "error": repr(exc)[:300]})
            failed = failed or exc
        except BaseException:
            db.session.rollback()
            raise
    if failed is not None:
        log.info("purge done in part", extra={"results": dict(done)})
        raise failed
    return +done


def purge_messages(
    now: datetime, keep_days: int, batch: int = BATCH, *, commit: Callable[[], None] | None = None
) -> int:
    """Pushed messages applied or ignored before ``keep_days`` ago, deleted; how many."""
    table = InboundMessage.__table__
    old = (table.c.received_at < now - timedelta(days=keep_days)) & by_value(table.c.status).in_(
        [MessageStatus.DONE.value, MessageStatus.IGNORED.value]
    )
    return delete_by_id_ranges(table, old, batch, commit)


def purge_bot_callbacks(
    now: datetime, keep_days: int, batch: int = BATCH, *, commit: Callable[[], None] | None = None
) -> int:
    """The WeCom robot's callbacks received before ``keep_days`` ago (each with the reply it got, in plaintext),
    deleted; how many. Their one use is answering WeCom's retry and a stream's refresh, seconds or minutes later."""
    table = BotCallback.__table__
    return delete_by_id_ranges(table, table.c.received_at < now - timedelta(days=keep_days), batch, commit)


def purge_notices(
    now: datetime, keep_days: int, batch: int = BATCH, *, commit: Callable[[], None] | None = None
) -> int:
    """Notices done with (sent, in the inbox, cancelled) made before ``keep_days`` ago, deleted; how many."""
    table = Notice.__table__
    old = (table.c.created_at < now - timedelta(days=keep_days)) & by_value(table.c.status).in_(
        [status.value for status in NOTICE_TERMINAL]
    )
    return delete_by_id_ranges(table, old, batch, commit)


def purge_oauth_states(now: datetime, batch: int = BATCH, *, commit: Callable[[], None] | None = None) -> int:
    """OAuth ``state`` values past their expiry (used or not: a callback refuses them) by ``EXPIRED_KEPT``, deleted;
    how many. A new sign-in clears a few itself (``web.login``); this clears what no later sign-in came to clear."""
    table = OAuthState.__table__
    return delete_in_batches(table, table.c.expires_at <= now - EXPIRED_KEPT, table.c.expires_at, batch, commit)


def purge_idempotency_records(now: datetime, batch: int = BATCH, *, commit: Callable[[], None] | None = None) -> int:
    """``Idempotency-Key`` records past their expiry by ``EXPIRED_KEPT``, deleted; how many. An expired record answers
    nothing (a request with its key deletes it and runs anew: ``web.idempotency``); kept, it held its stored answer
    for good."""
    table = IdempotencyRecord.__table__
    return delete_in_batches(table, table.c.expires_at <= now - EXPIRED_KEPT, table.c.expires_at, batch, commit)


def longest_interval_seconds(config) -> int:
    """The longest any interval limit can be: a campaign's longest ``min_interval_seconds`` or the platform's
    ``CLAIM_*_INTERVAL_SECONDS``, whichever is longer (an interval taken longer ago than this refuses nothing)."""
    platform = ("CLAIM_IP_INTERVAL_SECONDS", "CLAIM_DEVICE_INTERVAL_SECONDS", "CLAIM_PERSON_INTERVAL_SECONDS")
    return max(LIMIT_MAXIMUM["min_interval_seconds"], *(int(config.get(name) or 0) for name in platform))


def purge_limit_counters(
    now: datetime, longest_interval: int, batch: int = BATCH, *, commit: Callable[[], None] | None = None
) -> int:
    """The ``limit_counters`` rows that can never refuse anything again, deleted; how many. Those are a count of a
    past Beijing day (window ``YYYY-MM-DD``: the claim limits, device tokens), of a past UTC minute (window
    ``YYYY-MM-DDTHH:MM``: the sign-in steps, the behaviour events' rate), and an interval (``risk.limits.
    INTERVAL_KEY_PATTERNS``) last taken longer ago than ``longest_interval`` seconds: a new claim restarts each of
    them anyway. "Past" is by ``EXPIRED_KEPT``, for a claim stamped before the turn whose statement lands after it.
    Every other row of window ``-`` is a count for good (a campaign's "one per person"): never deleted.

    No index serves the window or ``last_at``: the table is walked by its primary key, ``batch`` keys a page (one
    read of the page's first and last key, then one DELETE of the stale rows between them, its own transaction
    when ``commit`` is given): each statement reads at most ``batch`` rows, and a run makes two a page. The rows
    are locked ``SKIP LOCKED`` (PostgreSQL): a row a claim holds is left for another night (the purge never
    waits on a claim, so the two never deadlock), and two purges at once delete disjoint or already-gone rows."""
    table = LimitCounter.__table__
    key, window = table.c.key, table.c.window
    settled = now - EXPIRED_KEPT
    stale = or_(
        (func.length(window) == 10) & (window < beijing(settled).date().isoformat()),
        (func.length(window) == 16) & (window < settled.strftime("%Y-%m-%dT%H:%M")),
        (window == ALL_TIME)
        & or_(*(key.like(pattern) for pattern in INTERVAL_KEY_PATTERNS))
        & (table.c.last_at < settled - timedelta(seconds=longest_interval)),
    )
    removed, after = 0, None
    while True:
        page = select(key).order_by(key).limit(batch)
        if after is not None:
            page = page.where(key > after)
        page = page.subquery()
        first, last, rows = db.session.execute(select(func.min(page.c.key), func.max(page.c.key), func.count())).one()
        if commit is not None:
            commit()  # (the read's transaction ended: on SQLite, no write lock taken yet)
        if not rows:
            return removed
        doomed = select(key).where(key >= first, key <= last, stale).with_for_update(skip_locked=True)
        removed += db.session.execute(delete(table).where(key.in_(doomed.scalar_subquery()), stale)).rowcount
        if commit is not None:
            commit()
        if rows < batch:
            return removed
        after = last


def by_value(status):
    """``status`` compared by its value only (``status || ''``): no planner walks the due rows' index (status, …) to
    find a purge's rows, every row of the status (SQLite, without statistics, preferred it to the id range)."""
    return status + ""


def delete_by_id_ranges(table, where, batch: int, commit: Callable[[], None] | None = None) -> int:
    """Rows ``where`` deleted walking the table by its id, ``batch`` ids a statement (each its own transaction when
    ``commit`` is given), up to the highest id at the start; how many. For a table whose ``where`` no index serves
    (messages by ``received_at``, notices by ``created_at``): "the first ``batch`` matching by id" read every row of
    the statuses matched and sorted them, in every batch (on SQLite under the database's one write lock: a night's
    purge of a few million notices held the claims and payments waiting for seconds a batch); a range of ids reads
    ``batch`` rows by the primary key. The walk runs from the lowest to the highest id of the rows to delete."""
    # the ids the rows to delete lie between (one read of the table, not under a write): the walk covers those only,
    # not the whole table every night (the kept rows, the newest, lie above them)
    low, high = db.session.execute(select(func.min(table.c.id), func.max(table.c.id)).where(where)).one()
    if commit is not None:
        commit()
    removed = 0
    if low is None:
        return removed
    start = low - 1
    while start < high:
        end = min(start + batch, high)
        where_range = (table.c.id > start) & (table.c.id <= end) & where
        removed += db.session.execute(delete(table).where(where_range)).rowcount
        if commit is not None:
            commit()
        start = end
    return removed
