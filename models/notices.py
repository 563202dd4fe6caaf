"""Notices: the user-notification outbox (beside payouts: both outboxes).

A notice row is written in the same transaction as the event it tells of
(``notices.enqueue``), keyed by an idempotency key (one notice per event, however
often the event's code runs); a dispatcher sends it later through the best channel
the person can be reached on (mini-program subscribe message with a recorded
consent, official-account template message when they follow the OA) and always
keeps it in the in-app inbox. Terminal states never change.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class NoticeStatus(StrEnum):
    PENDING = "pending"  # waiting for the dispatcher (at next_attempt_at)
    SENDING = "sending"  # a dispatcher holds it under lease_until; its answer is not recorded yet
    SENT = "sent"  # WeChat accepted it on ``channel``
    INBOX = "inbox"  # no outside channel could take it: the in-app inbox only
    CANCELLED = "cancelled"  # no longer true when its turn came (e.g. the transfer was confirmed)


NOTICE_TERMINAL = frozenset({NoticeStatus.SENT, NoticeStatus.INBOX, NoticeStatus.CANCELLED})


class Notice(Base):
    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    event: Mapped[str] = mapped_column(String(32))  # notices.events.NoticeEvent
    key: Mapped[str] = mapped_column(String(160), unique=True)  # one notice per event
    facts: Mapped[dict] = mapped_column(JSON, default=dict)  # amounts in fen, times ISO-8601 UTC, names
    page: Mapped[str | None] = mapped_column(String(256))  # the mini-program page it opens
    status: Mapped[str] = mapped_column(String(16), default=NoticeStatus.PENDING)
    channel: Mapped[str | None] = mapped_column(String(16))  # subscribe | oa_template | inbox
    template_id: Mapped[str | None] = mapped_column(String(64))
    wechat_msgid: Mapped[str | None] = mapped_column(String(64), index=True)  # WeChat's sent event finds it
    delivery: Mapped[str | None] = mapped_column(String(64))  # WeChat's subscribe_msg_sent_event: success / failed
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # sending: the lease; in the inbox with "outcome unknown": about when it was called (a sent event still settles it)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("status in ('pending', 'sending', 'sent', 'inbox', 'cancelled')", name="status"),
        Index("ix_notices_due", "status", "next_attempt_at"),
        Index("ix_notices_user", "user_id", "created_at"),
    )


class ConsentSource(StrEnum):
    CLIENT = "client"  # the mini-program reported wx.requestSubscribeMessage's result (POST /me/subscriptions)
    PUSH = "push"  # WeChat pushed subscribe_msg_popup_event / _change_event


class NoticeConsent(Base):
    """One-time subscribe-message consents a person has left for one template: one consent, one send."""

    __tablename__ = "notice_consents"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    template_id: Mapped[str] = mapped_column(String(64))
    remaining: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("user_id", "template_id"),
        CheckConstraint("remaining >= 0", name="remaining"),
    )


class ConsentReport(Base):
    """One answer to one template from one source (the client's report, or WeChat's popup event).

    The same tap reaches us twice (the client and WeChat): an accept pairs with the other source's unpaired
    accept for the same person and template within ``notices.consents.PAIR_WINDOW``; only an unpaired accept
    adds a consent (``counted``). ``ref`` makes each report once: the client's request_id, or the push's
    openid + CreateTime."""

    __tablename__ = "notice_consent_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    template_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(8))
    ref: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # accept | reject | ban | filter | …
    event: Mapped[str | None] = mapped_column(String(32))  # the push's event (popup / change); None: the client
    counted: Mapped[bool] = mapped_column(default=False)
    paired_with: Mapped[int | None] = mapped_column()  # the other source's report of the same tap
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("user_id", "source", "ref", "template_id"),  # a request_id is the client's own: per person
        Index("ix_notice_consent_reports_pairing", "user_id", "template_id", "created_at"),
    )
