"""Chat bindings: a person on a chat transport (a WeCom member of our robot, an official-account openid, a
mini-program chat-tool group_openid) linked to one of our users, only through a one-time code the person
confirms while signed in to the mini-program, never by a name.

A code is asked for in a 1:1 chat with the bot, kept only as an HMAC (``code_hash``), expires soon, is used
once (a conditional UPDATE of ``used_at``); asking again voids the speaker's earlier codes. Wrong codes are
kept per signed-in person (``chat_binding_failures``) so guessing stops after a few tries.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class Transport(StrEnum):
    WECOM = "wecom"  # a WeCom intelligent robot; external id: the member's userid; scope: the robot's id
    OA = "oa"  # the official account's 1:1 chat; external id: the openid; scope: the OA appid
    CHAT_TOOL = "chattool"  # the mini-program chat tool; external id: group_openid; scope: the group's opengid


TRANSPORTS = tuple(t.value for t in Transport)
_TRANSPORT_CHECK = "transport in ('wecom', 'oa', 'chattool')"


class ChatBinding(Base):
    __tablename__ = "chat_bindings"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))  # served by the unique index it begins
    transport: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint(_TRANSPORT_CHECK, name="transport"),
        UniqueConstraint("transport", "scope", "external_id", name="uq_chat_bindings_speaker"),
        UniqueConstraint("user_id", "transport", "scope", name="uq_chat_bindings_user"),
    )


class ChatBindingCode(Base):
    __tablename__ = "chat_binding_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)  # HMAC-SHA256 of the code, hex
    transport: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # used, or voided by a newer code
    used_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    __table_args__ = (
        CheckConstraint(_TRANSPORT_CHECK, name="transport"),
        Index("ix_chat_binding_codes_speaker", "transport", "scope", "external_id"),
    )


class ChatBindingFailure(Base):
    """A wrong code entered by a signed-in person (kept in its own commit: the attempt limit counts them)."""

    __tablename__ = "chat_binding_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_chat_binding_failures_user", "user_id", "at"),)


class BotCallback(Base):
    """One robot callback, recorded once by (robot, msgid): WeCom's retry of it is answered with the same reply
    and changes nothing."""

    __tablename__ = "bot_callbacks"

    id: Mapped[int] = mapped_column(primary_key=True)
    bot_id: Mapped[str] = mapped_column(String(128))
    msgid: Mapped[str] = mapped_column(String(128))
    userid: Mapped[str] = mapped_column(String(128))
    chatid: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str | None] = mapped_column(String(32))  # the reply's code ("ok", "unbound", …)
    reply: Mapped[str | None] = mapped_column(Text)  # the reply's plaintext (re-encrypted for a retry)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("bot_id", "msgid", name="uq_bot_callbacks_msgid"),)


class ChatReply(Base):
    """A bot's answer to send through a transport that cannot answer in the request (the official account's
    customer-service message): written in the transaction that ran the command, sent after it by a job."""

    __tablename__ = "chat_replies"

    id: Mapped[int] = mapped_column(primary_key=True)
    transport: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    secret: Mapped[bool] = mapped_column(default=False)  # a binding code: the text is dropped once sent
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending, sending, sent, failed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status in ('pending', 'sending', 'sent', 'failed')", name="status"),
        Index("ix_chat_replies_due", "status", "id"),
    )
