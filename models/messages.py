"""Messages in: what WeChat pushes to us (``inbound_messages``), and who follows the official account.

A pushed message is recorded once, by WeChat's own dedupe rule (``dedupe_key``: the source and MsgId, or
for an event the source, sender, CreateTime and event), in the request that received it, and answered
``success`` at once; a job applies it later (``jobs.messages``): rows are claimed with ``SKIP LOCKED``
and a lease, applied each in its own transaction, retried with backoff, and ``failed`` after the last
attempt. A row leaves ``queued`` exactly once, in the transaction that applied it.

``oa_followers`` is the following state of an official-account openid (follow / unfollow events,
ordered by WeChat's CreateTime: an older event never overwrites a newer one), linked to a person by
unionid when WeChat gives one.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, db, utcnow


class MessageSource(StrEnum):
    OA = "oa"  # the official account's push URL
    MP = "mp"  # the mini-program's push URL


class MessageStatus(StrEnum):
    QUEUED = "queued"  # waiting for the worker (at next_attempt_at)
    DONE = "done"  # applied
    FAILED = "failed"  # every attempt failed: an operator was alerted
    IGNORED = "ignored"  # nothing to do (a message type we do not handle, a payout we do not know)


MESSAGE_TERMINAL = frozenset({MessageStatus.DONE, MessageStatus.FAILED, MessageStatus.IGNORED})


class InboundMessage(Base):
    __tablename__ = "inbound_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(8))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    msg_type: Mapped[str] = mapped_column(String(32))
    event: Mapped[str | None] = mapped_column(String(64))
    openid: Mapped[str] = mapped_column(String(64))  # FromUserName
    payload: Mapped[dict] = mapped_column(JSON)  # every field WeChat sent (decrypted)
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("source in ('oa', 'mp')", name="source"),
        CheckConstraint("status in ('queued', 'done', 'failed', 'ignored')", name="status"),
        Index("ix_inbound_messages_due", "status", "next_attempt_at"),
        Index("ix_inbound_messages_openid", "openid", "received_at"),
    )


class OaFollower(Base):
    """An official-account openid's following state, and the person it belongs to once known (by unionid)."""

    __tablename__ = "oa_followers"

    id: Mapped[int] = mapped_column(primary_key=True)
    appid: Mapped[str] = mapped_column(String(32))
    openid: Mapped[str] = mapped_column(String(64))
    unionid: Mapped[str | None] = mapped_column(String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    following: Mapped[bool] = mapped_column(default=False)
    followed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unfollowed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)  # WeChat's CreateTime of the latest event applied

    __table_args__ = (UniqueConstraint("appid", "openid"),)


def record_message(source: str, dedupe_key: str, msg_type: str, event: str | None, openid: str, payload: dict) -> bool:
    """Queue one pushed message unless it is already recorded (WeChat's retry). Flushes only; True when new."""
    from models.sql import insert_ignoring

    now = utcnow()
    row = {
        "source": source,
        "dedupe_key": dedupe_key,
        "msg_type": msg_type,
        "event": event,
        "openid": openid,
        "payload": payload,
        "status": MessageStatus.QUEUED,
        "attempts": 0,
        "next_attempt_at": now,
        "received_at": now,
    }
    return bool(insert_ignoring(InboundMessage.__table__, [row], ("dedupe_key",), ("id",)))


def record_follow(appid: str, openid: str, following: bool, at: datetime, unionid: str | None = None) -> OaFollower:
    """An official-account follow (``following``) or unfollow at WeChat's time ``at``. Flushes only.

    Events are applied in WeChat's order: one older than the state already recorded changes nothing. The
    openid is linked to a person: the one its identity already belongs to, else the one with this unionid
    (an official-account identity is added for them). A follower nobody knows yet stays unlinked.
    """
    from sqlalchemy import select

    from models.people import User, UserIdentity
    from models.sql import insert_ignoring

    insert_ignoring(
        OaFollower.__table__,
        [{"appid": appid, "openid": openid, "following": False, "changed_at": at}],
        ("appid", "openid"),
    )
    follower = db.session.execute(
        select(OaFollower)
        .where(OaFollower.appid == appid, OaFollower.openid == openid)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()
    if unionid:
        follower.unionid = unionid
    fresh = follower.followed_at is None and follower.unfollowed_at is None
    if fresh or at >= follower.changed_at:
        follower.following, follower.changed_at = following, at
        if following:
            follower.followed_at = at
        else:
            follower.unfollowed_at = at
    if follower.user_id is None:
        identity = db.session.execute(
            select(UserIdentity).where(UserIdentity.appid == appid, UserIdentity.openid == openid)
        ).scalar_one_or_none()
        user_id = identity.user_id if identity else None
        if user_id is None and follower.unionid:
            user_id = db.session.execute(select(User.id).where(User.unionid == follower.unionid)).scalar_one_or_none()
            if user_id is not None:
                insert_ignoring(
                    UserIdentity.__table__,
                    [
                        {
                            "user_id": user_id,
                            "appid": appid,
                            "openid": openid,
                            "channel": "official_account",
                            "created_at": utcnow(),
                        }
                    ],
                    ("appid", "openid"),
                )
        follower.user_id = user_id
    db.session.flush()
    return follower


def follows_oa(user_id: int) -> bool:
    """Whether this person follows the official account now (an OA template message can reach them): a
    follower linked to them, or one with their unionid (they signed in after following)."""
    return following_openid(user_id) is not None


def following_openid(user_id: int, appid: str | None = None) -> str | None:
    """The person's official-account openid while they follow it (of ``appid`` when given), else None."""
    from sqlalchemy import or_, select

    from models.people import User

    unionid = select(User.unionid).where(User.id == user_id).scalar_subquery()
    mine = or_(OaFollower.user_id == user_id, OaFollower.unionid == unionid)
    stmt = select(OaFollower.openid).where(mine, OaFollower.following.is_(True))
    if appid is not None:
        stmt = stmt.where(OaFollower.appid == appid)
    return db.session.execute(stmt.order_by(OaFollower.changed_at.desc()).limit(1)).scalar_one_or_none()


def person_of_openid(openid: str, appid: str | None = None) -> int | None:
    """The person an openid of ``appid`` (of any app when None) stands for, the inverse of ``following_openid``: who
    signed in with it, else the official-account follower's person, else the person holding the follower's unionid
    (they followed before they signed in: the follower was kept unlinked). None: nobody we know.

    The one resolver of every message WeChat pushes about an openid: a card's events, subscribe-message and
    template-send reports."""
    from sqlalchemy import select

    from models.people import User, UserIdentity

    if not openid:
        return None
    signed_in = select(UserIdentity.user_id).where(UserIdentity.openid == openid)
    follower = select(OaFollower.user_id).where(OaFollower.openid == openid, OaFollower.user_id.is_not(None))
    by_unionid = select(User.id).join(OaFollower, OaFollower.unionid == User.unionid).where(OaFollower.openid == openid)
    if appid is not None:
        signed_in = signed_in.where(UserIdentity.appid == appid)
        follower = follower.where(OaFollower.appid == appid)
        by_unionid = by_unionid.where(OaFollower.appid == appid)
    for stmt in (signed_in, follower, by_unionid):
        found = db.session.execute(stmt.order_by(stmt.selected_columns[0]).limit(1)).scalar_one_or_none()
        if found is not None:
            return found
    return None


def requeue_failed(message_id: int, now: datetime) -> tuple[InboundMessage | None, bool]:
    """An operator's retry of a message every attempt failed on (the cause fixed): queued again with fresh
    attempts, under its row lock. The message (None: no such message) and whether it was failed and is now
    queued again. Flushes only."""
    from sqlalchemy import select

    message = db.session.execute(
        select(InboundMessage).where(InboundMessage.id == message_id).with_for_update()
    ).scalar_one_or_none()
    if message is None or message.status != MessageStatus.FAILED:
        return message, False
    message.status, message.attempts, message.next_attempt_at = MessageStatus.QUEUED, 0, now
    message.lease_until, message.processed_at = None, None
    db.session.flush()
    return message, True
