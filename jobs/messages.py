"""Applying what WeChat pushed (``inbound_messages``, recorded by ``web.push``): the message worker.

``apply_messages`` (every few seconds) claims due queued rows with ``FOR UPDATE SKIP LOCKED`` and a
lease (SQLite: one writer anyway) and commits the claim; each row is then applied in a transaction of its
own: read, call WeChat if its handler needs to (no transaction open), then lock the row again, check it
is still queued, apply and mark it ``done`` / ``ignored`` in the same transaction. So a message is
applied once however many workers run, and a worker that dies mid-way leaves the row queued (its lease
runs out and another worker applies it). A failure rolls the application back and schedules the row
again with backoff; after ``MESSAGES_MAX_ATTEMPTS`` it is ``failed`` and an operator is alerted.

Handlers, by (MsgType, Event):
- card ``user_get_card`` / ``user_consume_card`` / ``user_del_card`` → ``payouts.card_rail.apply_card_event``
  (a card payout delivered, redeemed, deleted; an unknown ``OuterStr`` changes nothing);
- official-account ``subscribe`` / ``unsubscribe`` → ``models.messages.record_follow`` (linked to the
  person by the unionid of ``/cgi-bin/user/info``);
- ``subscribe_msg_popup_event`` / ``_change_event`` / ``_sent_event`` → ``notices.consents.apply_push_event``;
- official-account ``TEMPLATESENDJOBFINISH`` → ``notices.dispatch.apply_template_finish`` (the template message's
  delivery kept on its notice);
- text → :data:`TEXT_HANDLERS` (the first that answers True took it; none: stored, ignored).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import or_, select

from jobs.payouts import job_context
from models import (
    InboundMessage,
    MessageSource,
    MessageStatus,
    db,
    raise_alert,
    unit_of_work,
    utcnow,
)
from models.messages import person_of_openid, record_follow
from payouts.card_rail import CARD_EVENTS, CardEventOutcome, apply_card_event, card_key
from payouts.record import DispatchSettings
from wechat.errors import WeChatBusinessError
from wechat.mp import fetch_oa_user_info
from wechat.push import SUBSCRIBE_MSG_EVENTS, TEMPLATE_SENT_EVENT

log = logging.getLogger(__name__)

BATCH = 50
LEASE = timedelta(minutes=2)
BACKOFF_BASE_S, BACKOFF_CAP_S = 10.0, 3600.0
FOLLOW_EVENTS = {"subscribe": True, "subscribe_scan": True, "unsubscribe": False}
# /cgi-bin/user/info's answers that no retry changes: the openid (40003), the API not granted to this account
# (48001: an unverified subscription account), the person's authorisation (50001 / 50002)
USER_INFO_REFUSALS = frozenset({"40003", "48001", "50001", "50002"})


@dataclass(frozen=True)
class Claimed:
    """A claimed row, as plain values (nothing lazy-loads while WeChat is called)."""

    id: int
    source: str
    msg_type: str
    event: str | None
    openid: str
    payload: dict
    attempts: int


TextHandler = Callable[[Claimed, datetime], bool]
# The challenge issue registers its command parser here: called in the row's transaction, True when it
# took the message (the row is then done), False to let the next one look.
TEXT_HANDLERS: list[TextHandler] = []


def _backoff(attempts: int) -> timedelta:
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not secrecy


def claim(now: datetime, batch: int = BATCH) -> list[Claimed]:
    """Due queued rows, leased to this worker (the caller commits before applying any)."""
    stmt = (
        select(InboundMessage)
        .where(
            InboundMessage.status == MessageStatus.QUEUED,
            InboundMessage.next_attempt_at <= now,
            or_(InboundMessage.lease_until.is_(None), InboundMessage.lease_until < now),
        )
        .order_by(InboundMessage.id)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    claimed = []
    for row in db.session.execute(stmt).scalars():
        row.lease_until, row.attempts = now + LEASE, row.attempts + 1
        claimed.append(
            Claimed(row.id, row.source, row.msg_type, row.event, row.openid, dict(row.payload), row.attempts)
        )
    db.session.flush()
    return claimed


def _locked_if_queued(message_id: int) -> InboundMessage | None:
    row = db.session.execute(
        select(InboundMessage)
        .where(InboundMessage.id == message_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    return row if row is not None and row.status == MessageStatus.QUEUED else None


def said_at(message: Claimed) -> datetime:
    """When the person said it: WeChat's CreateTime (checked at intake: present, 1970 to 2100)."""
    return datetime.fromtimestamp(int(message.payload.get("create_time") or 0), UTC)


def _fields(message: Claimed) -> dict[str, Any]:
    return message.payload.get("fields") or {}


# -- handlers: (fetch with no transaction open) → apply in the row's transaction → the row's status ----------


def _fetch_nothing(message: Claimed) -> None:
    return None


def _apply_card(message: Claimed, _: None, now: datetime) -> str:
    cfg = current_app.config
    settings = DispatchSettings.from_config(cfg)
    key, holder = card_key(cfg["SECRET_KEY"]), oa_person(cfg.get("WECHAT_OA_APPID"), message.openid)
    outcome, payout = apply_card_event(message.event or "", _fields(message), now, settings, key, holder)
    if outcome == CardEventOutcome.UNKNOWN:
        log.info(
            "card event for no payout of ours ignored",
            extra={"event": message.event, "outer_str": _fields(message).get("OuterStr"), "message_id": message.id},
        )
        return MessageStatus.IGNORED
    log.info("card event applied", extra={"event": message.event, "outcome": outcome, "payout_id": payout.id})
    return MessageStatus.DONE


def oa_person(oa_appid: str | None, openid: str) -> int | None:
    """The person an official-account openid stands for (``models.messages.person_of_openid``); None without an
    official account configured."""
    return person_of_openid(openid, oa_appid) if oa_appid else None


def _fetch_unionid(message: Claimed) -> str | None:
    """The follower's unionid (``/cgi-bin/user/info``), asked with no transaction open; only on a follow."""
    if not FOLLOW_EVENTS.get(message.event or ""):
        return None
    cfg, wx = current_app.config, job_context().wechat
    if not cfg.get("WECHAT_OA_SECRET"):
        return None
    try:
        info = fetch_oa_user_info(
            wx.session,
            message.openid,
            token_store=wx.token_store,
            appid=cfg["WECHAT_OA_APPID"],
            secret=cfg["WECHAT_OA_SECRET"],
            api_base=cfg["WECHAT_API_BASE"],
        )
    except WeChatBusinessError as exc:
        if exc.code not in USER_INFO_REFUSALS:
            raise
        # WeChat will not say who this is (an account without the user-info API, an openid it no longer knows):
        # the follow itself still counts (linked by an identity we hold), rather than failing on every retry
        log.warning("follow recorded without its unionid", extra={"message_id": message.id, "code": exc.code})
        return None
    return info.get("unionid") or None


def _apply_follow(message: Claimed, unionid: str | None, now: datetime) -> str:
    appid = current_app.config["WECHAT_OA_APPID"]
    record_follow(appid, message.openid, FOLLOW_EVENTS[message.event or ""], said_at(message), unionid)
    return MessageStatus.DONE


def _apply_subscribe_msg(message: Claimed, _: None, now: datetime) -> str:
    try:
        from notices import consents
    except ImportError as exc:  # the consent ledger is another part of issue 14: retried until it is there
        raise RuntimeError("notices.consents is not installed: subscribe-message events wait for it") from exc
    from wechat.push import PushMessage, subscribe_items

    p = message.payload
    pushed = PushMessage(p["msg_type"], p["event"], p["from_user"], p["to_user"], p["create_time"], None, p["fields"])
    appid = current_app.config["WECHAT_APPID" if message.source == MessageSource.MP else "WECHAT_OA_APPID"]
    user_id = person_of_openid(message.openid, appid) if appid else None
    consents.apply_push_event(user_id, message.openid, message.event, subscribe_items(pushed), said_at(message))
    return MessageStatus.DONE


def _apply_template_finish(message: Claimed, _: None, now: datetime) -> str:
    from notices.dispatch import apply_template_finish

    fields = message.payload["fields"]
    user_id = oa_person(current_app.config["WECHAT_OA_APPID"], message.openid)
    msgid, status = str(fields.get("MsgID") or "").strip(), str(fields.get("Status") or "").strip()
    taken = apply_template_finish(user_id, msgid, status, said_at(message))
    return MessageStatus.DONE if taken else MessageStatus.IGNORED


def _apply_text(message: Claimed, _: None, now: datetime) -> str:
    for handler in TEXT_HANDLERS:
        if handler(message, now):
            return MessageStatus.DONE
    return MessageStatus.IGNORED


Handler = tuple[Callable[[Claimed], Any], Callable[[Claimed, Any, datetime], str]]


def handler_for(message: Claimed) -> Handler | None:
    if message.msg_type == "text":
        return _fetch_nothing, _apply_text
    if message.msg_type != "event":
        return None
    if message.event in CARD_EVENTS:
        return _fetch_nothing, _apply_card
    if message.event in FOLLOW_EVENTS and message.source == MessageSource.OA:
        return _fetch_unionid, _apply_follow
    if message.event in SUBSCRIBE_MSG_EVENTS:
        return _fetch_nothing, _apply_subscribe_msg
    if message.event == TEMPLATE_SENT_EVENT and message.source == MessageSource.OA:
        return _fetch_nothing, _apply_template_finish
    return None


# -- the worker -----------------------------------------------------------------------------------------------


def apply_one(message: Claimed, max_attempts: int, clock: Callable[[], datetime] = utcnow) -> str:
    """Apply one claimed row in its own transaction; the status it ended in (still queued: retried later)."""
    handler = handler_for(message)
    try:
        fetched = handler[0](message) if handler else None  # no transaction is open here
        with unit_of_work():
            row = _locked_if_queued(message.id)
            if row is None:  # another worker applied it meanwhile
                return "skipped"
            now = clock()
            status = handler[1](message, fetched, now) if handler else MessageStatus.IGNORED
            row.status, row.processed_at, row.lease_until, row.last_error = status, now, None, None
            return status
    except Exception as exc:  # noqa: BLE001 - recorded on the row; retried with backoff
        log.warning("message not applied", extra={"message_id": message.id, "error": repr(exc)[:300]})
        return _failed_attempt(message, exc, max_attempts, clock())


def _failed_attempt(message: Claimed, exc: Exception, max_attempts: int, now: datetime) -> str:
    with unit_of_work():
        row = _locked_if_queued(message.id)
        if row is None:
            return "skipped"
        row.last_error, row.lease_until = f"{exc.__class__.__name__}: {exc}"[:2000], None
        if row.attempts >= max_attempts:
            row.status, row.processed_at = MessageStatus.FAILED, now
            raise_alert(
                "message_failed",
                f"inbound_message {row.id}",
                f"{row.source} {row.msg_type} {row.event or ''} not applied after {row.attempts} attempts: "
                f"{row.last_error}",
            )
            return MessageStatus.FAILED
        row.next_attempt_at = now + _backoff(row.attempts)
        return MessageStatus.QUEUED


def apply_messages(clock: Callable[[], datetime] = utcnow, batch: int = BATCH) -> Counter:
    """The job: claim due messages and apply each once. Runs until a claim finds nothing (or a minute)."""
    max_attempts = current_app.config["MESSAGES_MAX_ATTEMPTS"]
    results: Counter = Counter()
    started = clock()
    while clock() - started < timedelta(minutes=1):
        with unit_of_work():
            claimed = claim(clock(), batch)
        if not claimed:
            break
        for message in claimed:
            results[apply_one(message, max_attempts, clock)] += 1
    return results


from jobs import chat_commands  # noqa: E402,F401 - registers the challenge commands (TEXT_HANDLERS)
