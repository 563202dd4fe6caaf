"""Admin API over what WeChat pushed to us (``inbound_messages``, docs/architecture.md §13).

* ``GET /admin/api/messages?status=&source=&event=&openid=&since=``: counts by status and by kind, and the
  matching messages newest first (platform roles);
* ``GET /admin/api/messages/<id>``: one message with everything WeChat sent (decrypted);
* ``POST /admin/api/messages/<id>/retry`` ``{"reason"}`` (admins): a message every attempt failed on goes
  back to the queue with fresh attempts, once its cause is fixed; audited. Any other state answers 409:
  a message applied (or ignored) is never applied again.
"""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint
from pydantic import StringConstraints
from sqlalchemy import func, select

from models import InboundMessage, OperatorRole, db, utcnow
from models.messages import requeue_failed
from models.operators import audit
from web.admin import PLATFORM, actor
from web.api import endpoint
from web.errors import Conflict, NotFound
from web.schemas import Instant, Model, Page, Reason

bp = Blueprint("messages_api", __name__)


class MessageFilter(Page):
    status: Literal["queued", "done", "failed", "ignored"] | None = None
    source: Literal["oa", "mp"] | None = None
    event: Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z_]+$")] | None = None
    openid: Annotated[str, StringConstraints(max_length=64, pattern=r"^[\w\-]+$")] | None = None
    since: Instant | None = None


class Retry(Model):
    reason: Reason


def message_json(m: InboundMessage, payload: bool = False) -> dict:
    found = {
        "id": m.id,
        "source": m.source,
        "msg_type": m.msg_type,
        "event": m.event,
        "openid": m.openid,
        "status": m.status,
        "attempts": m.attempts,
        "last_error": m.last_error,
        "received_at": m.received_at.isoformat(),
        "processed_at": m.processed_at.isoformat() if m.processed_at else None,
        "next_attempt_at": m.next_attempt_at.isoformat() if m.status == "queued" else None,
    }
    if payload:
        found["payload"] = m.payload
    return found


@endpoint(bp, "/admin/api/messages", auth="operator", roles=PLATFORM, query=MessageFilter, tags=("messages",))
def list_messages(query: MessageFilter):
    """What WeChat pushed: counts by status and kind, and the matching messages, newest first."""
    where = []
    for column, value in (
        (InboundMessage.status, query.status),
        (InboundMessage.source, query.source),
        (InboundMessage.openid, query.openid),
    ):
        if value is not None:
            where.append(column == value)
    if query.event is not None:
        where.append(func.coalesce(InboundMessage.event, InboundMessage.msg_type) == query.event)
    if query.since is not None:
        where.append(InboundMessage.received_at >= query.since)
    kind = func.coalesce(InboundMessage.event, InboundMessage.msg_type)
    counts = db.session.execute(
        select(InboundMessage.status, kind, func.count()).where(*where).group_by(InboundMessage.status, kind)
    ).all()
    totals: dict[str, dict[str, int]] = {"status": {}, "kind": {}}
    for status, what, n in counts:
        totals["status"][status] = totals["status"].get(status, 0) + n
        totals["kind"][what] = totals["kind"].get(what, 0) + n
    items = db.session.execute(
        select(InboundMessage).where(*where).order_by(InboundMessage.id.desc()).limit(query.limit).offset(query.offset)
    ).scalars()
    return {"counts": totals, "items": [message_json(m) for m in items]}


@endpoint(bp, "/admin/api/messages/<int:message_id>", auth="operator", roles=PLATFORM, tags=("messages",))
def get_message(message_id: int):
    """One pushed message with everything WeChat sent (decrypted)."""
    message = db.session.get(InboundMessage, message_id)
    if message is None:
        raise NotFound(f"message {message_id} not found")
    return message_json(message, payload=True)


@endpoint(
    bp,
    "/admin/api/messages/<int:message_id>/retry",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN,),
    body=Retry,
    tags=("messages",),
)
def retry_message(message_id: int, body: Retry):
    """A failed message back to the queue with fresh attempts (its cause fixed); audited."""
    message, requeued = requeue_failed(message_id, utcnow())
    if message is None:
        raise NotFound(f"message {message_id} not found")
    if not requeued:
        raise Conflict(f"message {message_id} is {message.status}: only a failed message is retried")
    audit(actor(), "message.retry", "inbound_message", message.id, body.reason, kind=message.event or message.msg_type)
    return message_json(message)


__all__ = ["bp"]
