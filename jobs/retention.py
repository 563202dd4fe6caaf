"""Nightly purge of what is kept for a while only: pushed messages applied or ignored (``MESSAGES_KEEP_DAYS``) and
notices done with (``NOTICES_KEEP_DAYS``, the person's inbox included).

Safe to forget: a message is recorded once by its dedupe key so that WeChat's retries of it write nothing, and
those come within seconds; a push signed more than ``WECHAT_PUSH_MAX_AGE_SECONDS`` ago is refused before it is
recorded (``web.push``), so a purged message cannot be taken anew. A notice is made once per event, near the event;
a pending or sending one is never purged, nor a failed message (an operator's queue). Deleted in batches, each its
own short transaction (several nodes at once delete disjoint or already-gone rows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from jobs.payouts import job_context
from models import InboundMessage, MessageStatus, Notice, db, utcnow
from models.notices import NOTICE_TERMINAL
from models.sql import delete_in_batches

BATCH = 5000


def purge_kept_rows_job() -> Counter:
    """The nightly purge of old messages and notices (this module's rules), each batch committed."""
    try:
        cfg = job_context().config
        now = utcnow()
        return Counter(
            messages=purge_messages(now, cfg["MESSAGES_KEEP_DAYS"], commit=db.session.commit),
            notices=purge_notices(now, cfg["NOTICES_KEEP_DAYS"], commit=db.session.commit),
        )
    except BaseException:
        db.session.rollback()
        raise


def purge_messages(
    now: datetime, keep_days: int, batch: int = BATCH, *, commit: Callable[[], None] | None = None
) -> int:
    """Pushed messages applied or ignored before ``keep_days`` ago, deleted; how many."""
    table = InboundMessage.__table__
    old = (table.c.received_at < now - timedelta(days=keep_days)) & table.c.status.in_(
        [MessageStatus.DONE.value, MessageStatus.IGNORED.value]
    )
    return delete_in_batches(table, old, table.c.id, batch, commit)


def purge_notices(
    now: datetime, keep_days: int, batch: int = BATCH, *, commit: Callable[[], None] | None = None
) -> int:
    """Notices done with (sent, in the inbox, cancelled) made before ``keep_days`` ago, deleted; how many."""
    table = Notice.__table__
    old = (table.c.created_at < now - timedelta(days=keep_days)) & table.c.status.in_(
        [status.value for status in NOTICE_TERMINAL]
    )
    return delete_in_batches(table, old, table.c.id, batch, commit)
