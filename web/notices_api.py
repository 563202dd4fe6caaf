"""Notices for people: the inbox, subscribe-message consents, and the operators' view (docs/architecture.md §14).

* ``GET /api/v1/me/notices``: the caller's notices, newest first, with the unread count; title and body
  rendered from the notice's facts by ``NOTICE_TEMPLATES``.
* ``POST /api/v1/me/notices/read``: ``{"ids": [...]}`` or ``{"all": true}``; ids of other people's notices
  (or none at all) are ignored: the answer says how many of the caller's own were marked.
* ``GET /api/v1/me/subscriptions``: consents left, per event (one consent = one subscribe message).
* ``POST /api/v1/me/subscriptions``: the client's ``wx.requestSubscribeMessage`` result, once per request_id.
* ``GET /admin/api/notices``: counts by status / channel / event, the latest failures, a person's notices.
"""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, current_app
from pydantic import Field, StringConstraints, field_validator, model_validator
from sqlalchemy import func, select, update

from models import Notice, NoticeStatus, User, db, utcnow
from notices.consents import record_client_results, remaining
from notices.templates import Templates, inbox_text
from web.admin import PLATFORM
from web.api import endpoint
from web.auth import current_user
from web.errors import ValidationFailed
from web.guards import MAX_ID
from web.schemas import Id, Instant, Model, Page

bp = Blueprint("notices_api", __name__)
TemplateId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w\-]+$")]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[\w\-.:]+$")]


def templates() -> Templates:
    return current_app.extensions["notice_templates"]


class InboxPage(Page):
    unread: bool = False


class MarkRead(Model):
    ids: Annotated[list[Id], Field(min_length=1, max_length=200)] | None = None
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def one_of(self):
        if (self.ids is None) == (self.all is None):
            raise ValueError('send {"ids": [...]} or {"all": true}')
        return self


SUBSCRIBE_OK = "requestSubscribeMessage:ok"


class SubscribeResults(Model):
    results: Annotated[
        dict[TemplateId, Literal["accept", "reject", "ban", "filter"]], Field(min_length=1, max_length=5)
    ]
    request_id: RequestId

    @field_validator("results", mode="before")
    @classmethod
    def as_wechat_answered(cls, value):
        """``wx.requestSubscribeMessage``'s result as the mini-program got it: its ``errMsg`` is read, not a
        template (``requestSubscribeMessage:ok``, else the tap failed and records nothing)."""
        if isinstance(value, dict) and "errMsg" in value:
            if value["errMsg"] != SUBSCRIBE_OK:
                raise ValueError(f"errMsg is not {SUBSCRIBE_OK!r}: the request failed, nothing to record")
            value = {key: answer for key, answer in value.items() if key != "errMsg"}
        return value


def notice_json(notice: Notice, tmpl: Templates) -> dict:
    title, body = inbox_text(tmpl[notice.event], notice.facts or {})
    return {
        "id": notice.id,
        "event": notice.event,
        "title": title,
        "body": body,
        "page": notice.page or tmpl[notice.event].page,
        "created_at": notice.created_at.isoformat(),
        "read_at": notice.read_at.isoformat() if notice.read_at else None,
    }


HIDDEN = (NoticeStatus.CANCELLED,)  # a notice cancelled before its turn (no longer true) is not shown


def shown_to(user_id: int) -> list:
    """A person's inbox: their notices not cancelled and already due (a reminder is dated when it is due and
    shows from then; cancelled at its turn if no longer true, it never shows)."""
    return [Notice.user_id == user_id, Notice.status.notin_(HIDDEN), Notice.created_at <= utcnow()]


@endpoint(bp, "/api/v1/me/notices", query=InboxPage)
def my_notices(query: InboxPage):
    """The caller's notices (the in-app inbox), newest first, and how many are unread."""
    user = current_user()
    mine = shown_to(user.id)
    rows = select(Notice).where(*mine)
    if query.unread:
        rows = rows.where(Notice.read_at.is_(None))
    items = db.session.execute(
        rows.order_by(Notice.created_at.desc(), Notice.id.desc()).limit(query.limit).offset(query.offset)
    ).scalars()
    unread = db.session.execute(
        select(func.count()).select_from(Notice).where(*mine, Notice.read_at.is_(None))
    ).scalar_one()
    tmpl = templates()
    return {"unread": unread, "items": [notice_json(n, tmpl) for n in items]}


@endpoint(bp, "/api/v1/me/notices/read", methods=["POST"], body=MarkRead)
def mark_read(body: MarkRead):
    """Mark notices read: the given ids (only the caller's own count) or all of them."""
    user = current_user()
    which = [*shown_to(user.id), Notice.read_at.is_(None)]  # a reminder not due yet stays unread
    if body.ids is not None:
        which.append(Notice.id.in_(body.ids))
    marked = db.session.execute(
        update(Notice).where(*which).values(read_at=utcnow()).execution_options(synchronize_session=False)
    ).rowcount
    unread = db.session.execute(
        select(func.count()).select_from(Notice).where(*shown_to(user.id), Notice.read_at.is_(None))
    ).scalar_one()
    return {"marked": marked, "unread": unread}


@endpoint(bp, "/api/v1/me/subscriptions")
def my_subscriptions():
    """Subscribe-message consents left, per event (each one lets one message through; ask again when 0)."""
    left = remaining(current_user().id)
    items = []
    for template_id, events in sorted(templates().subscribe_ids().items()):
        items.extend(
            {"event": str(e), "template_id": template_id, "remaining": left.get(template_id, 0)} for e in events
        )
    return {"items": sorted(items, key=lambda i: i["event"])}


@endpoint(bp, "/api/v1/me/subscriptions", methods=["POST"], body=SubscribeResults)
def record_subscriptions(body: SubscribeResults):
    """Record the client's ``wx.requestSubscribeMessage`` result (once per request_id); the consents left."""
    known = templates().subscribe_ids()
    unknown = sorted(set(body.results) - set(known))
    if unknown:
        raise ValidationFailed(
            f"not a template of this app: {', '.join(unknown)}",
            code="unknown_template",
            details=[{"field": f"results.{t}", "problem": "unknown template id"} for t in unknown],
        )
    user = current_user()
    added = record_client_results(user.id, body.request_id, body.results, utcnow())
    left = remaining(user.id)
    return {"added": added, "remaining": {t: left.get(t, 0) for t in sorted(body.results)}}


# -- operators ------------------------------------------------------------------------------------


class NoticeFilter(Page):
    user_id: int | None = Field(None, gt=0, le=MAX_ID)
    status: Literal["pending", "sending", "sent", "inbox", "cancelled"] | None = None
    event: Annotated[str, StringConstraints(max_length=32, pattern=r"^[a-z_]+$")] | None = None
    since: Instant | None = None


def _admin_notice(n: Notice) -> dict:
    return {
        "id": n.id,
        "user_id": n.user_id,
        "event": n.event,
        "status": n.status,
        "channel": n.channel,
        "template_id": n.template_id,
        "wechat_msgid": n.wechat_msgid,
        "delivery": n.delivery,
        "attempts": n.attempts,
        "last_error": n.last_error,
        "created_at": n.created_at.isoformat(),
        "sent_at": n.sent_at.isoformat() if n.sent_at else None,
        "read_at": n.read_at.isoformat() if n.read_at else None,
    }


@endpoint(bp, "/admin/api/notices", auth="operator", roles=PLATFORM, query=NoticeFilter)
def list_notices(query: NoticeFilter):
    """Notices: counts by status, channel and event; the latest failures; the matching notices, newest first."""
    where = []
    if query.user_id is not None:
        where.append(Notice.user_id == query.user_id)
    if query.status is not None:
        where.append(Notice.status == query.status)
    if query.event is not None:
        where.append(Notice.event == query.event)
    if query.since is not None:
        where.append(Notice.created_at >= query.since)
    counts = db.session.execute(
        select(Notice.status, Notice.channel, Notice.event, func.count())
        .where(*where)
        .group_by(Notice.status, Notice.channel, Notice.event)
    ).all()
    totals: dict[str, dict[str, int]] = {"status": {}, "channel": {}, "event": {}}
    for status, channel, event, n in counts:
        for name, key in (("status", status), ("channel", channel or "-"), ("event", event)):
            totals[name][key] = totals[name].get(key, 0) + n
    failures = db.session.execute(
        select(Notice).where(*where, Notice.last_error.is_not(None)).order_by(Notice.id.desc()).limit(20)
    ).scalars()
    items = db.session.execute(
        select(Notice).where(*where).order_by(Notice.id.desc()).limit(query.limit).offset(query.offset)
    ).scalars()
    person = None
    if query.user_id is not None and db.session.get(User, query.user_id) is not None:
        left = remaining(query.user_id)
        person = {"user_id": query.user_id, "consents": left}
    return {
        "counts": totals,
        "failures": [_admin_notice(n) for n in failures],
        "items": [_admin_notice(n) for n in items],
        "person": person,
    }
