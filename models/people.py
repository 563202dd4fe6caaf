"""People (one user across the mini-program and the official account), merchants, products."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, EncryptedText, UTCDateTime, db, utcnow


class UserStatus(StrEnum):
    ACTIVE = "active"
    BANNED = "banned"


class User(Base):
    """A person. Caps and limits count per person, not per openid."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    unionid: Mapped[str | None] = mapped_column(String(64), unique=True)
    inviter_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    invited_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The region the person says they are in (``PUT /api/v1/me/region``), matched exactly against a campaign's
    # ``regions``; ``region_set_at``: when they last set it (a change waits 30 days after it: migration 0044).
    region: Mapped[str | None] = mapped_column(String(32))
    region_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.ACTIVE)
    banned_reason: Mapped[str | None] = mapped_column(String(200))
    nickname: Mapped[str | None] = mapped_column(String(64))
    invite_code: Mapped[str | None] = mapped_column(String(16), unique=True)
    real_name: Mapped[str | None] = mapped_column(EncryptedText)
    phone: Mapped[str | None] = mapped_column(EncryptedText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Until when a packet this person spent may attribute their later orders to its issuer (set when a
    # packet whose rules attribute is used; None: none does). A hint: the payment looks only when it is ahead.
    attribution_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "Sign out everywhere" moves it on: a token carries the generation it was issued under (``web.auth``), and one
    # of another generation is refused (migration 0043).
    token_generation: Mapped[int] = mapped_column(default=0, server_default="0")

    identities: Mapped[list[UserIdentity]] = relationship(back_populates="user")

    __table_args__ = (
        CheckConstraint("status in ('active', 'banned')", name="status"),
        CheckConstraint("inviter_id is null or inviter_id <> id", name="no_self_invite"),
    )

    @property
    def is_active(self) -> bool:
        return self.status == UserStatus.ACTIVE

    def identity_for(self, appid: str) -> UserIdentity | None:
        return next((i for i in self.identities if i.appid == appid), None)


class UserIdentity(Base):
    """An openid under one appid (mini-program or official account)."""

    __tablename__ = "user_identities"

    id: Mapped[int] = mapped_column(primary_key=True)
    # (found by user_id through the unique (user_id, appid) index below: no index of its own, migration 0050)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    appid: Mapped[str] = mapped_column(String(32))
    openid: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(24), default="mini_program")
    session_key: Mapped[str | None] = mapped_column(EncryptedText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="identities")

    # One openid per person and app: WeChat gives a person one openid per appid (migration 0047).
    __table_args__ = (UniqueConstraint("appid", "openid"), UniqueConstraint("user_id", "appid"))


class Merchant(Base):
    __tablename__ = "merchants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    # Service-provider fund flow (FUND_FLOW=service_provider): the merchant's own WeChat Pay sub-merchant
    # number, and the sub-merchant's appid when its own mini-program pays (then payers are sub_openids).
    sub_mchid: Mapped[str | None] = mapped_column(String(32), unique=True)
    sub_appid: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (CheckConstraint("status in ('active', 'suspended')", name="status"),)


def merchant_name(merchant_id: int | None) -> str | None:
    """A merchant's name for display; from the session's identity map when the caller loaded the merchants
    first (a list: one query for all)."""
    merchant = db.session.get(Merchant, merchant_id) if merchant_id is not None else None
    return merchant.name if merchant is not None else None


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"))  # served by the unique index it begins
    name: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(32))
    price_fen: Mapped[int] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        CheckConstraint("price_fen > 0", name="price_positive"),
        UniqueConstraint("merchant_id", "name"),
    )
