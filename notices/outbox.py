"""``enqueue``: a notice row in the caller's transaction, once per event key (flushes only).

``enqueue_many`` writes several in one statement (a payment's notices cost one round trip).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from models.base import utcnow
from models.notices import Notice, NoticeStatus
from models.sql import insert_ignoring
from notices.events import FACTS, NoticeEvent

KEY_MAX = 160


class NoticeError(ValueError):
    code = "notice_invalid"
    kind = "invalid"


@dataclass(frozen=True)
class Draft:
    """One notice to write: ``key`` names the event itself (``payout:12:to_confirm``), so a retried
    operation or a second node writes nothing more; ``send_after``: not sent before then (a reminder)."""

    user_id: int
    event: NoticeEvent
    key: str
    facts: Mapping[str, Any] = field(default_factory=dict)
    page: str | None = None
    send_after: datetime | None = None


def _row(draft: Draft, now: datetime) -> dict[str, Any]:
    event = NoticeEvent(draft.event)
    missing = FACTS[event] - set(draft.facts)
    if missing:
        raise NoticeError(f"a {event} notice needs {', '.join(sorted(missing))}")
    if not draft.key or len(draft.key) > KEY_MAX:
        raise NoticeError(f"a notice key is 1 to {KEY_MAX} characters")
    return {
        "user_id": draft.user_id,
        "event": str(event),
        "key": draft.key,
        "facts": dict(draft.facts),
        "page": draft.page,
        "status": str(NoticeStatus.PENDING),
        "attempts": 0,
        "next_attempt_at": draft.send_after or now,
        # a scheduled notice (a reminder) is dated when it is due: the inbox shows it from then, in its place
        "created_at": max(now, draft.send_after) if draft.send_after else now,
    }


def enqueue_many(drafts: Sequence[Draft]) -> int:
    """Write every draft whose key is new, in one statement (per 100); how many were written."""
    if not drafts:
        return 0
    now = utcnow()
    return len(insert_ignoring(Notice.__table__, [_row(d, now) for d in drafts], ("key",), returning=("id",)))


def enqueue(
    user_id: int,
    event: NoticeEvent,
    key: str,
    facts: Mapping[str, Any],
    *,
    page: str | None = None,
    send_after: datetime | None = None,
) -> bool:
    """Write the notice for ``event`` unless one with ``key`` exists; True when this call wrote it."""
    return enqueue_many([Draft(user_id, event, key, facts, page, send_after)]) == 1
