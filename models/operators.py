"""Operators (named staff accounts with roles), their personal tokens, and the audit log.

An ``Actor`` is an operator at work (and the network address they act from): operations below the
shell take it explicitly to scope what they touch and to write the audit line with the action.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, UTCDateTime, db, utcnow


class OperatorRole(StrEnum):
    ADMIN = "admin"
    FINANCE = "finance"
    SUPPORT = "support"
    MERCHANT_STAFF = "merchant_staff"


class Operator(Base):
    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"))
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    tokens: Mapped[list[OperatorToken]] = relationship(back_populates="operator")

    __table_args__ = (
        CheckConstraint("role in ('admin', 'finance', 'support', 'merchant_staff')", name="role"),
        # Merchant staff are scoped to exactly one merchant; platform roles to none.
        CheckConstraint("(role = 'merchant_staff') = (merchant_id is not null)", name="merchant_scope"),
    )


class OperatorToken(Base):
    """A personal bearer token; only its SHA-256 is stored."""

    __tablename__ = "operator_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    operator: Mapped[Operator] = relationship(back_populates="tokens")


class AuditLog(Base):
    """Who did what, when and why. Written in the same transaction as the action."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[int | None] = mapped_column(ForeignKey("operators.id"), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


@dataclass(frozen=True)
class Actor:
    """Who does an operator action, and from where."""

    operator: Operator
    ip: str | None = None

    @property
    def merchant_scope(self) -> int | None:
        """The one merchant a merchant-staff operator may see; None for platform roles."""
        return merchant_scope(self.operator)


def merchant_scope(operator: Operator) -> int | None:
    """The one merchant a merchant-staff operator may see; None for platform roles."""
    return operator.merchant_id if operator.role == OperatorRole.MERCHANT_STAFF else None


def audit(actor: Actor, action: str, target_type: str, target_id: object, reason: str | None = None, **details) -> None:
    """One audit line, written in the caller's transaction (so it commits or rolls back with the action)."""
    db.session.add(
        AuditLog(
            operator_id=actor.operator.id,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            reason=reason,
            details=details,
            ip=actor.ip,
        )
    )
