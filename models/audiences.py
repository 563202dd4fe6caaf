"""Audiences: who an operator targets by purchase history, and the batches that issued packets to them.

An ``Audience`` is a definition (a JSON tree of clauses, ``rebate.audiences``) made by an operator,
optionally scoped to one merchant (it then only ever sees that merchant's buyers). An ``AudienceRun`` is
one batch issue of a campaign's packets to the audience with a random holdout that gets nothing; its
``AudienceMember`` rows are the audience as it was when the run began (one per person, unique per run),
each treated (a packet, or the reason the campaign refused one) or held out.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class Audience(Base):
    __tablename__ = "audiences"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict] = mapped_column(JSON)  # rebate.audiences.Definition, every default written out
    merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"), index=True)  # None: platform-wide
    created_by: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunStatus(StrEnum):
    PENDING = "pending"  # created; members not chosen yet
    ISSUING = "issuing"  # members chosen; treated members being issued their packets, a chunk at a time
    DONE = "done"  # every treated member has a packet or a refusal


class AudienceRun(Base):
    __tablename__ = "audience_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    audience_id: Mapped[int] = mapped_column(ForeignKey("audiences.id"), index=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    holdout_bps: Mapped[int]
    seed: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.PENDING)
    members: Mapped[int] = mapped_column(default=0)
    treated: Mapped[int] = mapped_column(default=0)
    holdout: Mapped[int] = mapped_column(default=0)
    issued: Mapped[int] = mapped_column(default=0)
    refused: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # members chosen; the lift window opens
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("status in ('pending', 'issuing', 'done')", name="status"),
        CheckConstraint("holdout_bps >= 0 and holdout_bps <= 5000", name="holdout_share"),
        Index("ix_audience_runs_open", "status"),
    )


class AudienceMember(Base):
    __tablename__ = "audience_members"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("audience_runs.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    holdout: Mapped[bool] = mapped_column(default=False)
    # Treated members: ``done`` once issued (``packet_id``) or refused (``refusal``: the campaign's code).
    done: Mapped[bool] = mapped_column(default=False)
    packet_id: Mapped[int | None] = mapped_column(BigInteger)
    refusal: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        UniqueConstraint("run_id", "user_id"),
        Index("ix_audience_members_todo", "run_id", "done"),
    )
