"""One-time subscribe-message consents, counted exactly once per tap (docs/architecture.md §14).

A person's tap on ``wx.requestSubscribeMessage`` reaches us twice: the mini-program reports its result
(``POST /api/v1/me/subscriptions``, :func:`record_client_results`) and WeChat pushes
``subscribe_msg_popup_event`` (:func:`apply_push_event`). Either may come first, or only one of them.
Each report is kept once (its ``ref``: the client's request_id, the push's openid + CreateTime); an accept
pairs with the oldest unpaired accept from the *other* source for the same person and template within
``PAIR_WINDOW``, and only an accept left unpaired adds a consent. Two taps make two client reports and two
pushes: each push pairs with one client report, so two consents. Every report for a person + template first
locks that pair's ``notice_consents`` row (created on first use), so two reports at once are counted one after
the other (PostgreSQL row lock; SQLite runs one writer at a time).

A send takes one consent with a single conditional UPDATE (``remaining > 0``): :func:`take_consent`.
``subscribe_msg_change_event`` with reject, and WeChat's 43101 on a send, zero the pair (:func:`drop_consents`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update

from models import ConsentReport, ConsentSource, Notice, NoticeConsent, NoticeStatus, db, utcnow
from models.messages import person_of_openid
from models.sql import insert_ignoring

log = logging.getLogger(__name__)
PAIR_WINDOW = timedelta(minutes=5)  # the client's report and WeChat's push of one tap arrive within this
ACCEPT = "accept"
CLIENT_STATUSES = frozenset({"accept", "reject", "ban", "filter"})
POPUP, CHANGE, SENT = "subscribe_msg_popup_event", "subscribe_msg_change_event", "subscribe_msg_sent_event"
PUSH_EVENTS = frozenset({POPUP, CHANGE, SENT})
# The dispatcher's note on a notice kept in the inbox because WeChat may have sent it (``notices.dispatch``); such a
# notice keeps in ``lease_until`` when its call was made, so WeChat's sent event, handled later, can still settle it.
OUTCOME_UNKNOWN = "outcome unknown"
SENT_EVENT_WITHIN = timedelta(minutes=10)  # WeChat pushes the sent event right after it sends


def _lock_pair(user_id: int, template_id: str) -> NoticeConsent:
    insert_ignoring(
        NoticeConsent.__table__,
        [{"user_id": user_id, "template_id": template_id, "remaining": 0, "updated_at": utcnow()}],
        ("user_id", "template_id"),
    )
    return db.session.execute(
        select(NoticeConsent)
        .where(NoticeConsent.user_id == user_id, NoticeConsent.template_id == template_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()


def _report(
    user_id: int, template_id: str, source: str, ref: str, status: str, at: datetime, event: str | None = None
) -> bool:
    """Record one report (once per person + source + ref + template); True when it added a consent."""
    pair = _lock_pair(user_id, template_id)
    row = {
        "user_id": user_id,
        "template_id": template_id,
        "source": source,
        "ref": ref[:128],
        "status": status[:16],
        "event": event,
        "counted": False,
        "paired_with": None,
        "created_at": at,
    }
    written = insert_ignoring(
        ConsentReport.__table__, [row], ("user_id", "source", "ref", "template_id"), returning=("id",)
    )
    counts = status == ACCEPT and (source == ConsentSource.CLIENT or event == POPUP)
    if not written or not counts:
        return False
    report_id = written[0][0]
    other = db.session.execute(
        select(ConsentReport)
        .where(
            ConsentReport.user_id == user_id,
            ConsentReport.template_id == template_id,
            ConsentReport.source != source,
            ConsentReport.status == ACCEPT,
            ConsentReport.event.is_(None) if source == ConsentSource.PUSH else ConsentReport.event == POPUP,  # a tap
            ConsentReport.paired_with.is_(None),
            ConsentReport.created_at >= at - PAIR_WINDOW,
            ConsentReport.created_at <= at + PAIR_WINDOW,
        )
        .order_by(ConsentReport.created_at, ConsentReport.id)
        .limit(1)
    ).scalar_one_or_none()
    if other is not None:  # the same tap, told by the other source first: already counted
        other.paired_with = report_id
        db.session.execute(update(ConsentReport).where(ConsentReport.id == report_id).values(paired_with=other.id))
        db.session.flush()
        return False
    db.session.execute(update(ConsentReport).where(ConsentReport.id == report_id).values(counted=True))
    pair.remaining += 1
    pair.updated_at = utcnow()
    db.session.flush()
    return True


def record_client_results(user_id: int, request_id: str, results: Mapping[str, str], at: datetime) -> int:
    """The client's ``wx.requestSubscribeMessage`` result; how many consents it added (0 when repeated)."""
    added = 0
    for template_id in sorted(results):  # pairs locked in one order by everyone
        added += _report(user_id, template_id, ConsentSource.CLIENT, request_id, results[template_id], at)
    return added


def apply_push_event(user_id: int | None, openid: str, event: str, items: list[dict], created_at: datetime) -> None:
    """WeChat's subscribe-message push (called by the message-push worker, in its transaction; flushes only).

    popup: each accept counts unless the client already reported that tap; change with reject: the template's
    consents are gone; sent: the delivery result recorded on the notice by MsgID.
    """
    if event not in PUSH_EVENTS:
        raise ValueError(f"not a subscribe-message event: {event!r}")
    user_id = user_id if user_id is not None else person_of_openid(openid)
    if user_id is None:
        log.info("subscribe event for an unknown openid", extra={"event": event})
        return
    ref = f"{openid}:{int(created_at.timestamp())}"
    named = sorted(((_template_id(i), i) for i in items if isinstance(i, dict)), key=lambda pair: pair[0] or "")
    for template_id, item in named:
        if template_id is None:  # no template's id (a structure): nothing of ours to count or settle
            continue
        if event == SENT:
            _record_delivery(user_id, template_id, item, created_at)
            continue
        status = str(item.get("SubscribeStatusString", "")).lower()
        _report(user_id, template_id, ConsentSource.PUSH, ref, status, created_at, event)
        if event == CHANGE and status != ACCEPT:
            drop_consents(user_id, template_id)


def _template_id(item: Mapping[str, Any]) -> str | None:
    """An item's ``TemplateId`` as text (a JSON number as XML would carry it); None when it holds none (empty, or a
    structure: an element given twice, an object), which no template of ours has."""
    value = item.get("TemplateId")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip()[:64] or None


def _record_delivery(user_id: int, template_id: str, item: Mapping[str, Any], at: datetime) -> None:
    msgid = str(item.get("MsgID", ""))[:64]
    if not msgid:
        return
    code = str(item.get("ErrorCode", "0"))
    delivery = (str(item.get("ErrorStatus") or "") or ("success" if code == "0" else f"failed {code}"))[:64]
    record_delivery(user_id, msgid, delivery, at, Notice.template_id == template_id)


def record_delivery(user_id: int, msgid: str, delivery: str, at: datetime, same_kind: ColumnElement[bool]) -> bool:
    """WeChat's word on one message it sent (``delivery``: success or why not) on the notice it names by ``msgid``;
    ``same_kind`` says which of the person's notices it can be when our record of the msgid is missing (a subscribe
    message's template; a template message's channel). Whether a notice took it (flushes only)."""
    notice = db.session.execute(  # msgids of subscribe and template messages are counted apart by WeChat
        select(Notice).where(Notice.wechat_msgid == msgid, Notice.user_id == user_id, same_kind).with_for_update()
    ).scalar_one_or_none()
    if notice is None:
        # Our record of the answer may be missing (a crash between WeChat's ok and the record): the one notice of
        # this person and kind still sending without a msgid is the one WeChat sent. Of two or more, WeChat's
        # event cannot tell which: none is marked (each ends "outcome unknown" in the inbox, never sent again).
        # A notice whose answer was lost may already be in the inbox ("outcome unknown": the push worker runs after
        # the dispatcher recorded the lost answer, or after another pass found its lease lapsed): one called about
        # when WeChat sent is a candidate too.
        unknown = and_(
            Notice.status == NoticeStatus.INBOX,
            Notice.last_error.startswith(OUTCOME_UNKNOWN, autoescape=True),
            Notice.lease_until >= at - SENT_EVENT_WITHIN,
            Notice.lease_until <= at + SENT_EVENT_WITHIN,
        )
        candidates = (
            db.session.execute(
                select(Notice)
                .where(
                    Notice.user_id == user_id,
                    same_kind,
                    or_(Notice.status == NoticeStatus.SENDING, unknown),
                    Notice.wechat_msgid.is_(None),
                )
                .order_by(Notice.id)
                .limit(2)
                .with_for_update()
            )
            .scalars()
            .all()
        )
        if len(candidates) != 1:
            return False
        notice = candidates[0]
        notice.wechat_msgid, notice.status, notice.sent_at, notice.lease_until = msgid, NoticeStatus.SENT, at, None
    notice.delivery = delivery[:64]
    db.session.flush()
    return True


def take_consent(user_id: int, template_id: str) -> bool:
    """One consent for one send: a single conditional UPDATE, so two senders never take the same one."""
    taken = db.session.execute(
        update(NoticeConsent)
        .where(
            NoticeConsent.user_id == user_id,
            NoticeConsent.template_id == template_id,
            NoticeConsent.remaining > 0,
        )
        .values(remaining=NoticeConsent.remaining - 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return taken.rowcount == 1


def give_back_consent(user_id: int, template_id: str) -> None:
    """A consent taken for a send WeChat certainly did not make (refused as invalid, or never reached): WeChat
    still counts it, so we do too."""
    db.session.execute(
        update(NoticeConsent)
        .where(NoticeConsent.user_id == user_id, NoticeConsent.template_id == template_id)
        .values(remaining=NoticeConsent.remaining + 1, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def drop_consents(user_id: int, template_id: str) -> None:
    """The person refused (43101, or a change to reject): nothing left to send on for this template."""
    db.session.execute(
        update(NoticeConsent)
        .where(NoticeConsent.user_id == user_id, NoticeConsent.template_id == template_id)
        .values(remaining=0, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def remaining(user_id: int) -> dict[str, int]:
    rows = db.session.execute(
        select(NoticeConsent.template_id, NoticeConsent.remaining).where(NoticeConsent.user_id == user_id)
    )
    return dict(rows.tuples().all())
