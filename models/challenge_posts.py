"""What the challenge bots send to groups on their own: the WeCom group webhook a group's leaderboard posts go
to, each post claimed once per (challenge, kind, Beijing day), and a chat-tool group's card.

``GroupWebhook``: one per group (transport, group id), set (and replaced) by a bound member in that group with
``设置推送``; the key is a credential (anyone holding it can post to the group): encrypted at rest, never shown.
``ChallengePost``: a daily leaderboard or a final result post, unique per (challenge, kind, day); inserted
``pending``, taken by a conditional UPDATE to ``sending`` and committed before the webhook is called, so two
nodes or a crash never post it twice (a lost answer is not posted again: ``failed``); WeCom's 130101 (or our
own 20-a-minute window) puts it back to ``pending`` for the next pass.
``ChatToolCard``: a chat-tool group challenge's card (its activity id) and the state last shown on it; a job
updates the card when the challenge's participants or status moved past it.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, EncryptedText, UTCDateTime, utcnow


class PostKind:
    DAILY = "daily"  # a running challenge's standings, once per Beijing day
    FINAL = "final"  # the result, once, after settlement


class GroupWebhook(Base):
    __tablename__ = "group_webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    transport: Mapped[str] = mapped_column(String(16))
    group_id: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(EncryptedText)  # the webhook's key (a credential)
    set_by: Mapped[int] = mapped_column(ForeignKey("users.id"))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("transport", "group_id", name="uq_group_webhooks_group"),)


class ChallengePost(Base):
    __tablename__ = "challenge_posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(ForeignKey("challenges.id"))
    kind: Mapped[str] = mapped_column(String(8))
    day: Mapped[date] = mapped_column(Date)  # Beijing: the day posted (final: the day of settlement)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, sending, sent, failed
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("kind in ('daily', 'final')", name="kind"),
        CheckConstraint("status in ('pending', 'sending', 'sent', 'failed')", name="status"),
        UniqueConstraint("challenge_id", "kind", "day", name="uq_challenge_posts_once"),
        Index("ix_challenge_posts_due", "status", "id"),
    )


class ChatToolCard(Base):
    """A chat-tool group challenge's card: ``shown_participants`` / ``shown_state`` are what the card last showed
    (0: nothing yet); ``busy_since`` marks an update under way (claimed, committed, then WeChat called)."""

    __tablename__ = "chattool_cards"

    challenge_id: Mapped[int] = mapped_column(ForeignKey("challenges.id"), primary_key=True)
    activity_id: Mapped[str | None] = mapped_column(String(128))
    activity_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    shown_participants: Mapped[int] = mapped_column(default=0)
    shown_state: Mapped[int] = mapped_column(default=0)
    busy_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
