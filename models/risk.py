"""Risk: the behaviour trail, per-person aggregates kept as they happen, bans, rules, review cases, communities.

Scoring reads aggregates, never raw history: ``BrowsingSession`` (the person's current browsing session,
folded in as events arrive), ``RiskProfile`` (their orders so far), ``RiskIdentifier`` (which devices and
network addresses each person or merchant has used) and ``RiskPair`` (how often an issuer's packets were
spent by one buyer at one merchant). Raw events (``BehaviourEvent``) are compact rows kept for a retention
period, for review and for rebuilding.
"""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum, StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow

# A big table's key: BIGINT on PostgreSQL, SQLite's INTEGER (its rowid, so it counts up by itself).
BigId = BigInteger().with_variant(Integer, "sqlite")


class EventKind(IntEnum):
    """What the mini-program reports; stored as a small number (compact rows)."""

    VIEW = 1  # a product page
    SEARCH = 2
    COMPARE = 3
    CART_ADD = 4
    CART_REMOVE = 5
    PAGE = 6  # any other page, with its dwell
    SHARE = 7


class BehaviourEvent(Base):
    """One event of the behaviour trail, stamped with the server's time."""

    __tablename__ = "behaviour_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    device: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[int] = mapped_column(SmallInteger)
    product_id: Mapped[int | None] = mapped_column(Integer)
    dwell_ms: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(String(64))  # search words, page path (truncated)
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_behaviour_events_user_at", "user_id", "at"),
        Index("ix_behaviour_events_at", "at"),
        CheckConstraint("kind between 1 and 7", name="kind"),
    )


class BrowsingSession(Base):
    """A person's current browsing session, folded in as events arrive (a gap of 30 minutes starts another)."""

    __tablename__ = "browsing_sessions"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
    first_view_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_cart_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    entry_kind: Mapped[int] = mapped_column(SmallInteger)  # the session's first event
    views: Mapped[int] = mapped_column(default=0)
    searches: Mapped[int] = mapped_column(default=0)
    compares: Mapped[int] = mapped_column(default=0)
    cart_adds: Mapped[int] = mapped_column(default=0)
    cart_removes: Mapped[int] = mapped_column(default=0)
    pages: Mapped[int] = mapped_column(default=0)
    shares: Mapped[int] = mapped_column(default=0)
    dwell_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    gaps: Mapped[int] = mapped_column(default=0)  # inter-event gaps seen (events - 1)
    gap_sum_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # The sum of the squared gaps in ms² (exact). A BIGINT holds it: each gap is at most the 30-minute session gap,
    # so the sum is at most 1.8e6 ms × the session's length in ms: 9.2e18 is 160 years of unbroken browsing.
    gap_sq_sum: Mapped[int] = mapped_column(BigInteger, default=0)
    events_total: Mapped[int] = mapped_column(BigInteger, default=0)  # every session's, lifetime


class RiskIdentifier(Base):
    """A device or network address (an IPv4 /24 or IPv6 /48) seen with a person or a merchant's staff."""

    __tablename__ = "risk_identifiers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))  # device | net
    value: Mapped[str] = mapped_column(String(64))
    owner_type: Mapped[str] = mapped_column(String(8))  # user | merchant
    owner_id: Mapped[int] = mapped_column(BigInteger)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("kind", "value", "owner_type", "owner_id"),
        Index("ix_risk_identifiers_owner", "owner_type", "owner_id"),
        CheckConstraint("kind in ('device', 'net')", name="kind"),
        CheckConstraint("owner_type in ('user', 'merchant')", name="owner_type"),
    )


class RiskProfile(Base):
    """A person's orders so far, kept as they happen (the payment and refunds update it)."""

    __tablename__ = "risk_profiles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    paid_orders: Mapped[int] = mapped_column(default=0)
    packet_orders: Mapped[int] = mapped_column(default=0)
    rebated_orders: Mapped[int] = mapped_column(default=0)
    refunded_after_rebate: Mapped[int] = mapped_column(default=0)
    night_orders: Mapped[int] = mapped_column(default=0)  # paid 00:00-06:00 Beijing time
    first_order_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_order_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The paid times of the last 8 orders, newest noted first: comma-separated epoch milliseconds, 13 digits each
    # (fixed width, so the upsert keeps the last 8 with substr). orders_in_10_min counts those in the window.
    recent_paid_at: Mapped[str | None] = mapped_column(String(111))


class RiskPair(Base):
    """How often one issuer's packets were spent by one buyer at one merchant (the triangle repeat count)."""

    __tablename__ = "risk_pairs"

    issuer_type: Mapped[str] = mapped_column(String(8), primary_key=True)
    issuer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    merchant_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    orders: Mapped[int] = mapped_column(default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)


class BanSubject(StrEnum):
    USER = "user"
    DEVICE = "device"
    MERCHANT = "merchant"
    NET = "net"  # a network address (an IPv4 /24 or IPv6 /48, as ``risk_identifiers`` keeps them) or one IP


class Ban(Base):
    """A ban on a person, device, merchant or network address, until ``ends_at`` (None: until lifted)."""

    __tablename__ = "risk_bans"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(64))  # the user's or merchant's id, the device, the address
    reason: Mapped[str] = mapped_column(Text)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("review_cases.id"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lifted_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    lift_reason: Mapped[str | None] = mapped_column(Text)
    # Lifting a ban two operators made (``risk.bans.made_by_two``) is proposed by one (these three, migration 0040)
    # and carried out when another approves (``lifted_by``); a rejection clears them, an expiry leaves them be.
    lift_proposed_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    lift_proposed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lift_proposed_reason: Mapped[str | None] = mapped_column(Text)
    # A lift's release of the rebates it held (migration 0048, ``rebate.ban_ops.release_batch``): ``running`` while a
    # job walks the orders in batches (``release_after``: the last order id walked), then ``done``, or ``stopped`` by
    # the same ban put back (its own lift releases them). None: never lifted, or lifted before this was kept.
    release_state: Mapped[str | None] = mapped_column(String(8))
    release_after: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    release_orders: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # orders walked
    release_paid_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    release_moved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the last batch (a stall: none for long)

    __table_args__ = (
        Index("ix_risk_bans_subject_value", "subject", "value"),
        CheckConstraint("subject in ('user', 'device', 'merchant', 'net')", name="subject"),
        CheckConstraint("release_state in ('running', 'done', 'stopped')", name="release_state"),
        # the releases still running, for the job (a few at a time, among every ban ever made)
        Index(
            "ix_risk_bans_releasing",
            "id",
            postgresql_where=text("release_state = 'running'"),
            sqlite_where=text("release_state = 'running'"),
        ),
        # whoever proposed a lift never carries it out themselves
        CheckConstraint(
            "lifted_by is null or lift_proposed_by is null or lifted_by <> lift_proposed_by", name="lift_four_eyes"
        ),
    )


class RiskAction(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"
    REVIEW = "review"


class RuleSetStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    SUPERSEDED = "superseded"


class RiskRuleSet(Base):
    """One version of the rules of a scope: ``platform`` or ``campaign:<id>`` (overrides, by rule name)."""

    __tablename__ = "risk_rule_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(24))
    version: Mapped[int]
    rules: Mapped[list] = mapped_column(JSON)  # [{"name", "action", "when": [[feature, op, value], ...]}]
    status: Mapped[str] = mapped_column(String(12), default=RuleSetStatus.DRAFT)
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("scope", "version"),
        CheckConstraint("status in ('draft', 'active', 'superseded')", name="status"),
        # At most one active set per scope, whatever a race does (activation also locks the scope's rows).
        Index(
            "uq_risk_rule_sets_one_active",
            "scope",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )


class CaseStatus(StrEnum):
    OPEN = "open"
    AWAITING_APPROVAL = "awaiting_approval"  # one reviewer decided; the amount needs a second
    DECIDED = "decided"


class CaseOutcome(StrEnum):
    RELEASE = "release"
    REVOKE = "revoke"
    CLAW_BACK = "claw_back"
    BAN_USER = "ban_user"
    BAN_DEVICE = "ban_device"
    BAN_MERCHANT = "ban_merchant"


class ReviewCase(Base):
    """A case for a reviewer: an order whose rebates are held, or a suspicious community."""

    __tablename__ = "review_cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(12))  # order | community
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), unique=True)
    community_id: Mapped[int | None] = mapped_column(ForeignKey("risk_communities.id"), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=CaseStatus.OPEN)
    held_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # what the case holds (or concerns)
    score: Mapped[int | None] = mapped_column(SmallInteger)
    reasons: Mapped[list] = mapped_column(JSON, default=list)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    proposed_outcome: Mapped[str | None] = mapped_column(String(16))
    proposed_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    proposed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    proposed_reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str | None] = mapped_column(String(16))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_reason: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str | None] = mapped_column(String(8))  # fraud | legit: what backtests learn from
    effects: Mapped[dict] = mapped_column(JSON, default=dict)  # what the outcome did

    __table_args__ = (
        Index("ix_review_cases_status_opened", "status", "opened_at"),
        CheckConstraint("kind in ('order', 'community')", name="kind"),
        CheckConstraint("status in ('open', 'awaiting_approval', 'decided')", name="status"),
        CheckConstraint("label is null or label in ('fraud', 'legit')", name="label"),
    )


class RiskCommunity(Base):
    """A community the collusion job found and scored (``fingerprint``: its sorted members, so it opens once)."""

    __tablename__ = "risk_communities"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    members: Mapped[list] = mapped_column(JSON)  # ["user:12", "merchant:3", "device:ab…", "net:10.0.0.0/24"]
    size: Mapped[int]
    score: Mapped[float] = mapped_column(Float)
    suspicious: Mapped[bool] = mapped_column(default=False)
    reasons: Mapped[list] = mapped_column(JSON, default=list)
    found_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SpikeBaseline(Base):
    """An hourly count's running baseline (EWMA of mean and variance) for a campaign's or merchant's metric."""

    __tablename__ = "spike_baselines"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)  # "campaign:3:claims", "merchant:2:rebates"
    hour: Mapped[datetime] = mapped_column(UTCDateTime)  # the last hour folded in
    hours: Mapped[int] = mapped_column(default=0)
    mean: Mapped[float] = mapped_column(Float, default=0.0)
    var: Mapped[float] = mapped_column(Float, default=0.0)
    last_count: Mapped[int] = mapped_column(default=0)
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
