"""A chat-tool group challenge's card (the mini-program's dynamic message in the group): kept in step with the
challenge by the shell's job, after commit, never inside a transaction (``chattool_cards``).

The card shows a phase — ``STARTED`` while the challenge is open or running, ``ENDED`` once settled or
cancelled — and who joined (each participant's ``group_openid`` in that group, from their chat-tool binding,
with the state ``JOINED``). A card is due when the challenge's participants or phase moved past what the card
last showed (``shown_participants``, ``shown_state``): the domain is read, not hooked. :func:`claim_card`
marks it busy (``busy_since``, a conditional UPDATE; a claim older than ``STALE`` is taken again: setting a
card's state twice shows the same card) and says what to send; the job calls WeChat with no transaction open
and records the result with :func:`record_card`. The activity id is made at first need (the creator's openid)
and lasts about a day: an expired one is replaced, which makes a new card (the old one keeps its last state).

Functions flush only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update

from models import (
    Challenge,
    ChallengeParticipant,
    ChallengeStatus,
    ChatBinding,
    ChatToolCard,
    Transport,
    UserIdentity,
    db,
)
from models.sql import insert_ignoring

STARTED, ENDED = 1, 2  # the card's phase (target_state)
JOINED = 1  # a participant's state on the card
STALE = timedelta(minutes=10)
MAX_ATTEMPTS = 5
ACTIVITY_MARGIN = timedelta(hours=1)  # an activity id closer than this to its expiry is replaced
BATCH = 20


def phase(status: str) -> int:
    return ENDED if status in (ChallengeStatus.SETTLED, ChallengeStatus.CANCELLED) else STARTED


@dataclass(frozen=True)
class CardWork:
    challenge_id: int
    activity_id: str | None  # None: make one first (for ``creator_openid``)
    creator_openid: str | None
    state: int
    participants: int
    members: list[tuple[str, int]]  # (group_openid, state)


def due_cards(limit: int = BATCH) -> list[int]:
    """Chat-tool group challenges whose card is behind the challenge."""
    ended = Challenge.status.in_([ChallengeStatus.SETTLED, ChallengeStatus.CANCELLED])
    behind = or_(
        ChatToolCard.challenge_id.is_(None),
        ChatToolCard.shown_participants != Challenge.participants,
        and_(ended, ChatToolCard.shown_state != ENDED),
        and_(~ended, ChatToolCard.shown_state != STARTED),
    )
    rows = db.session.execute(
        select(Challenge.id)
        .outerjoin(ChatToolCard, ChatToolCard.challenge_id == Challenge.id)
        .where(
            Challenge.group_transport == Transport.CHAT_TOOL,
            behind,
            or_(ChatToolCard.attempts.is_(None), ChatToolCard.attempts < MAX_ATTEMPTS),
        )
        .order_by(Challenge.id)
        .limit(limit)
    ).scalars()
    return list(rows)


def claim_card(challenge_id: int, now: datetime, mini_program_appid: str) -> CardWork | None:
    """Take a card to update (None: taken elsewhere, or nothing to do)."""
    insert_ignoring(
        ChatToolCard.__table__,
        [{"challenge_id": challenge_id, "shown_participants": 0, "shown_state": 0, "attempts": 0, "updated_at": now}],
        ("challenge_id",),
    )
    taken = db.session.execute(
        update(ChatToolCard)
        .where(
            ChatToolCard.challenge_id == challenge_id,
            or_(ChatToolCard.busy_since.is_(None), ChatToolCard.busy_since < now - STALE),
        )
        .values(busy_since=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        return None
    card = db.session.get(ChatToolCard, challenge_id)
    db.session.refresh(card)
    challenge = db.session.get(Challenge, challenge_id)
    db.session.refresh(challenge)
    if (card.shown_participants, card.shown_state) == (challenge.participants, phase(challenge.status)):
        # another node updated it between our list and our claim: nothing left to show; let it go
        card.busy_since = None
        db.session.flush()
        return None
    members = db.session.execute(
        select(ChatBinding.external_id)
        .join(ChallengeParticipant, ChallengeParticipant.user_id == ChatBinding.user_id)
        .where(
            ChallengeParticipant.challenge_id == challenge_id,
            ChatBinding.transport == Transport.CHAT_TOOL,
            ChatBinding.scope == challenge.group_id,
        )
        .order_by(ChallengeParticipant.id)
    ).scalars()
    activity = card.activity_id
    if activity and (card.activity_expires_at is None or card.activity_expires_at < now + ACTIVITY_MARGIN):
        activity = None
    creator_openid = db.session.execute(
        select(UserIdentity.openid).where(
            UserIdentity.user_id == challenge.creator_id, UserIdentity.appid == mini_program_appid
        )
    ).scalar_one_or_none()
    db.session.flush()
    return CardWork(
        challenge_id,
        activity,
        creator_openid,
        phase(challenge.status),
        challenge.participants,
        [(g, JOINED) for g in members],
    )


def record_card(
    work: CardWork,
    now: datetime,
    *,
    activity: tuple[str, datetime] | None = None,
    error: str | None = None,
) -> None:
    card = db.session.get(ChatToolCard, work.challenge_id)
    card.busy_since, card.updated_at = None, now
    if activity is not None:
        card.activity_id, card.activity_expires_at = activity
    if error:
        card.attempts, card.last_error = card.attempts + 1, error[:2000]
    else:
        card.shown_participants, card.shown_state, card.attempts, card.last_error = (
            work.participants,
            work.state,
            0,
            None,
        )
    db.session.flush()


def card_of(challenge_id: int) -> ChatToolCard | None:
    return db.session.get(ChatToolCard, challenge_id)
