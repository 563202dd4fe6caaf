"""Challenges among friends: the challenge, who joined, the measures, and what settlement moved.

A ``Challenge`` runs over Beijing days ``start_day`` … ``start_day + days - 1``. Its lifecycle:
``open`` (joining, until ``join_deadline``) → ``running`` → ``settled``, or ``cancelled`` (fewer than
two joined by the join deadline: every stake released). ``participants`` counts the joined rows and
moves only by a conditional UPDATE (``participants < max_participants``), so a full challenge never
takes one more. A ``ChallengeParticipant`` is unique per (challenge, person): joining twice is one
participation and one stake reservation. ``ChallengePrize`` rows are settlement's outputs, unique per
(challenge, payer, payee): a loser's packet to a winner (or, for a quiz, a winner's to a loser), or a
sponsor's packet to a winner.

Measures are per person, not per challenge (one WeRun upload counts in every step challenge the
person is in): ``StepDay`` (one row per person and Beijing day; a day uploaded after it ended is
closed and never decreases), ``ReadingCheckIn`` (server times), and the quiz's questions, attempts
and answers (one attempt per person and challenge, one answer per question).
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, CheckConstraint, Date, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow
from models.payouts import InApp


class ChallengeKind(StrEnum):
    STEPS = "steps"
    READING = "reading"
    QUIZ = "quiz"


class ChallengeStatus(StrEnum):
    OPEN = "open"
    RUNNING = "running"
    SETTLED = "settled"
    CANCELLED = "cancelled"


class WinRule(StrEnum):
    HIGHEST_TOTAL = "highest_total"
    FIRST_TO_GOAL = "first_to_goal"


class StakeSource(StrEnum):
    """Where a stake comes from: what the person holds with us, or a sponsor's campaign. Never fresh cash."""

    BALANCE = InApp.BALANCE.value  # the person's rebate balance (fen)
    POINTS = InApp.POINTS.value  # the person's points
    SPONSOR = "sponsor"  # a merchant's or the platform's campaign pays the prize


class Direction(StrEnum):
    LOSER_TO_WINNER = "loser_to_winner"
    WINNER_TO_LOSER = "winner_to_loser"  # the quiz: the one who knows more rewards the one who learns


class Challenge(Base):
    __tablename__ = "challenges"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(64))
    creator_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=ChallengeStatus.OPEN)
    rule: Mapped[str] = mapped_column(String(16), default=WinRule.HIGHEST_TOTAL)
    goal: Mapped[int | None] = mapped_column(BigInteger)
    start_day: Mapped[date] = mapped_column(Date)
    days: Mapped[int]
    max_participants: Mapped[int]
    participants: Mapped[int] = mapped_column(default=0)
    stake_source: Mapped[str] = mapped_column(String(16))
    stake: Mapped[int] = mapped_column(BigInteger)  # per person: fen (balance), points, or 0 (sponsor)
    sponsor_campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    prize_fen: Mapped[int] = mapped_column(BigInteger, default=0)  # sponsor: the prize, split among winners
    direction: Mapped[str] = mapped_column(String(24))
    join_deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    report_deadline: Mapped[datetime] = mapped_column(UTCDateTime)
    group_transport: Mapped[str | None] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(String(128))
    quiz_seconds: Mapped[int | None]  # the time one quiz attempt may take
    outcome: Mapped[dict | None] = mapped_column(JSON)  # settlement's summary: winners, totals, prizes
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("kind in ('steps', 'reading', 'quiz')", name="kind"),
        CheckConstraint("status in ('open', 'running', 'settled', 'cancelled')", name="status"),
        CheckConstraint("rule in ('highest_total', 'first_to_goal')", name="rule"),
        CheckConstraint("stake_source in ('balance', 'points', 'sponsor')", name="stake_source"),
        CheckConstraint("direction in ('loser_to_winner', 'winner_to_loser')", name="direction"),
        CheckConstraint("stake >= 0 and prize_fen >= 0 and days > 0", name="amounts"),
        CheckConstraint("participants >= 0 and participants <= max_participants", name="capacity"),
        CheckConstraint("(group_transport is null) = (group_id is null)", name="group_pair"),
        Index("ix_challenges_due", "status", "join_deadline"),
        Index("ix_challenges_group", "group_transport", "group_id"),
        Index("ix_challenges_created", "created_at"),  # the operators' list, newest first and `since`
        Index("ix_challenges_sponsor", "sponsor_campaign_id"),  # a merchant's staff see their sponsored ones
    )


class ChallengeParticipant(Base):
    __tablename__ = "challenge_participants"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(ForeignKey("challenges.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    stake: Mapped[int] = mapped_column(BigInteger)  # reserved when joining (fen or points, by the challenge)
    joined_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    total: Mapped[int | None] = mapped_column(BigInteger)  # the counted total, written at settlement
    result: Mapped[str | None] = mapped_column(String(8))  # won | lost | tied (a share of the win)

    __table_args__ = (UniqueConstraint("challenge_id", "user_id"),)


class ChallengePrize(Base):
    """What settlement gave: ``amount`` from ``payer_user_id``'s stake (None: the sponsor) to ``payee_user_id``."""

    __tablename__ = "challenge_prizes"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(ForeignKey("challenges.id"))  # served by the unique index it begins
    payer_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    payee_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    amount: Mapped[int] = mapped_column(BigInteger)  # fen (a packet) or points (a transfer)
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    packet_id: Mapped[int | None] = mapped_column(ForeignKey("red_packets.id"), index=True)
    # The part of a stake-funded packet that went back to its payer once the packet ended (expired, revoked,
    # or spent for less than its face, or its order refunded): see challenges.sweep.
    returned_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    closed: Mapped[bool] = mapped_column(default=False)  # nothing more can come back
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("challenge_id", "payer_user_id", "payee_user_id"),
        CheckConstraint("amount > 0 and returned_fen >= 0", name="amounts"),
        Index("ix_challenge_prizes_open", "closed", "packet_id"),
    )


class StepDay(Base):
    """A person's WeRun steps on one Beijing day, as last uploaded. ``closed``: uploaded after the day ended."""

    __tablename__ = "challenge_step_days"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    steps: Mapped[int] = mapped_column(BigInteger)
    closed: Mapped[bool] = mapped_column(default=False)
    flagged: Mapped[str | None] = mapped_column(String(32))  # why the day is not counted (risk), if it is not
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("steps >= 0", name="steps"),)


class ReadingCheckIn(Base):
    __tablename__ = "challenge_reading_checkins"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    day: Mapped[date] = mapped_column(Date)  # Beijing
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # server time

    __table_args__ = (Index("ix_challenge_reading_checkins_user_day", "user_id", "day"),)


class QuizQuestion(Base):
    __tablename__ = "challenge_quiz_questions"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(ForeignKey("challenges.id"))
    position: Mapped[int]
    prompt: Mapped[str] = mapped_column(String(200))
    choices: Mapped[list] = mapped_column(JSON)
    answer: Mapped[int]  # index into choices; never sent to a client

    __table_args__ = (UniqueConstraint("challenge_id", "position"),)


class QuizAttempt(Base):
    """One per person and challenge: started when they first fetch the questions; answers count until ``ends_at``."""

    __tablename__ = "challenge_quiz_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    challenge_id: Mapped[int] = mapped_column(ForeignKey("challenges.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    score: Mapped[int] = mapped_column(default=0)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("challenge_id", "user_id"),)
