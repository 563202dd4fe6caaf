"""A person's preferences: how they would like rebates paid where a campaign lets them choose."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class UserPreference(Base):
    """One row per person who chose something. ``rebate_form``: a ``rebate.rules.Form`` the person can
    receive (checked by ``rebate.preferences`` when set), used by a rule that allows it; None: the rule's
    default form."""

    __tablename__ = "user_preferences"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    rebate_form: Mapped[str | None] = mapped_column(String(24))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
