"""``enqueue``: a notice row in the caller's transaction, once per event key (flushes only)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from models.base import utcnow
from models.notices import Notice, NoticeStatus
from models.sql import insert_ignoring
from notices.events import FACTS, NoticeEvent


class NoticeError(ValueError):
    code = "notice_invalid"
    kind = "invalid"


def enqueue(
    user_id: int,
    event: NoticeEvent,
    key: str,
    facts: Mapping[str, Any],
    *,
    page: str | None = None,
    send_after: datetime | None = None,
) -> bool:
    """Write the notice for ``event`` unless one with ``key`` exists; True when this call wrote it.

    ``key`` names the event itself (``payout:12:to_confirm``), so a retried operation or a second
    node writes nothing more. ``send_after``: not sent before then (a reminder)."""
    event = NoticeEvent(event)
    missing = FACTS[event] - set(facts)
    if missing:
        raise NoticeError(f"a {event} notice needs {', '.join(sorted(missing))}")
    if not key or len(key) > 160:
        raise NoticeError("a notice key is 1 to 160 characters")
    now = utcnow()
    row = {
        "user_id": user_id,
        "event": str(event),
        "key": key,
        "facts": dict(facts),
        "page": page,
        "status": str(NoticeStatus.PENDING),
        "attempts": 0,
        "next_attempt_at": send_after or now,
        "created_at": now,
    }
    return bool(insert_ignoring(Notice.__table__, [row], ("key",), returning=("id",)))
