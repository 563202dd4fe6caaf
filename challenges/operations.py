"""Creating, joining and finding challenges. Functions flush and never commit (the caller owns the commit).

Lock order: the person's row, then the challenge's (a join), as a withdrawal takes the person's row; the
settlement takes only the challenge's row and credits people without debiting them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app, has_app_context
from sqlalchemy import select, update

from challenges import stakes
from challenges.days import day_end, day_start, today
from challenges.errors import AlreadySettled, ChallengeClosed, ChallengeFull, ChallengeInvalid, ChallengeNotFound
from challenges.spec import ChallengeSettings, ChallengeSpec
from models import (
    Campaign,
    Challenge,
    ChallengeKind,
    ChallengeParticipant,
    ChallengeStatus,
    IssuerType,
    QuizQuestion,
    StakeSource,
    User,
    UserStatus,
    db,
)
from models.triggers import TriggerKind
from rebate.campaigns import is_running
from rebate.packets import top_face_fen

TRANSPORTS = frozenset({"wecom", "chattool", "oa", "mp"})  # where a group lives (the bot's transports)
MAX_GROUP_ID = 128


def current_settings() -> ChallengeSettings:
    """The app's configured settings (``app.extensions["challenge_settings"]``, built by app.py), or defaults."""
    if has_app_context():
        found = current_app.extensions.get("challenge_settings")
        if found is not None:
            return found
    return ChallengeSettings()


def create_challenge(
    creator_id: int,
    spec: ChallengeSpec,
    now: datetime,
    *,
    group: tuple[str, str] | None = None,
    settings: ChallengeSettings | None = None,
) -> Challenge:
    """A new open challenge; its creator joins at once (their stake reserved) or nothing is written (a savepoint:
    a caller that answers the refusal and commits, as the bot does, must not keep an empty challenge)."""
    with db.session.begin_nested():
        return _create_challenge(creator_id, spec, now, group, settings)


def _create_challenge(
    creator_id: int,
    spec: ChallengeSpec,
    now: datetime,
    group: tuple[str, str] | None,
    settings: ChallengeSettings | None,
) -> Challenge:
    settings = settings or current_settings()
    start_day = spec.start_day or today(now) + timedelta(days=1)
    _check_spec(spec, start_day, now, group, settings)
    last_day = start_day + timedelta(days=spec.days - 1)
    challenge = Challenge(
        kind=spec.kind,
        title=spec.title or _default_title(spec),
        creator_id=creator_id,
        status=ChallengeStatus.OPEN,
        rule=spec.rule,
        goal=spec.goal,
        start_day=start_day,
        days=spec.days,
        max_participants=spec.max_participants or settings.max_participants,
        participants=0,
        stake_source=spec.stake_source,
        stake=spec.stake,
        sponsor_campaign_id=spec.sponsor_campaign_id,
        prize_fen=spec.prize_fen,
        direction=spec.direction,
        join_deadline=day_start(start_day),
        report_deadline=day_end(last_day) + timedelta(hours=settings.report_grace_hours),
        group_transport=group[0] if group else None,
        group_id=group[1] if group else None,
        quiz_seconds=settings.quiz_seconds if spec.kind == ChallengeKind.QUIZ else None,
        created_at=now,
    )
    db.session.add(challenge)
    db.session.flush()
    for position, q in enumerate(spec.questions):
        db.session.add(
            QuizQuestion(
                challenge_id=challenge.id, position=position, prompt=q.prompt, choices=q.choices, answer=q.answer
            )
        )
    join_challenge(challenge.id, creator_id, now)
    return challenge


def _default_title(spec: ChallengeSpec) -> str:
    names = {ChallengeKind.STEPS: "步数挑战", ChallengeKind.READING: "阅读打卡挑战", ChallengeKind.QUIZ: "知识问答"}
    return f"{spec.days}天{names[spec.kind]}"


def _check_spec(
    spec: ChallengeSpec, start_day, now: datetime, group: tuple[str, str] | None, settings: ChallengeSettings
) -> None:
    if start_day <= today(now):
        raise ChallengeInvalid("the first day must be after today (Beijing)", zh="挑战最早从明天开始")
    if start_day > today(now) + timedelta(days=settings.max_lead_days):
        raise ChallengeInvalid(
            f"the first day must be at most {settings.max_lead_days} days after today (Beijing): stakes are held until"
            " it starts",
            zh=f"挑战最晚在 {settings.max_lead_days} 天内开始",
        )
    if spec.days > settings.max_days:
        raise ChallengeInvalid(f"at most {settings.max_days} days", zh=f"挑战最多 {settings.max_days} 天")
    if spec.max_participants is not None and spec.max_participants > settings.max_participants:
        raise ChallengeInvalid(
            f"at most {settings.max_participants} participants", zh=f"最多 {settings.max_participants} 人"
        )
    if group is not None:
        transport, group_id = group
        if transport not in TRANSPORTS or not (0 < len(group_id) <= MAX_GROUP_ID):
            raise ChallengeInvalid("unknown group", zh="群信息有误")
    if spec.stake_source == StakeSource.SPONSOR:
        _check_sponsor(spec, now)


def _check_sponsor(spec: ChallengeSpec, now: datetime) -> None:
    """A sponsor offers a running self-serve campaign (trigger ``claim``: its packets are anyone's to take)
    of a merchant or the platform; the whole prize is at most one of its packets. A person cannot make a
    sponsor pay more than the sponsor already offers everybody."""
    campaign = db.session.get(Campaign, spec.sponsor_campaign_id)
    if (
        campaign is None
        or campaign.issuer_type == IssuerType.USER
        or campaign.trigger_kind != TriggerKind.CLAIM
        or not is_running(campaign, now)
    ):
        raise ChallengeInvalid("the sponsor's campaign does not sponsor challenges", zh="赞助活动不可用")
    if spec.prize_fen > top_face_fen(campaign):
        raise ChallengeInvalid(
            f"the prize is at most {top_face_fen(campaign)} fen, one of the sponsor's packets", zh="奖品超过赞助上限"
        )


def join_challenge(challenge_id: int, user_id: int, now: datetime) -> ChallengeParticipant:
    """Join, reserving the stake; joining again returns the same participation (one reservation). A refusal
    writes nothing (a savepoint: the place taken before a stake is refused is given back even when the caller
    commits its answer, as the bot does)."""
    person = stakes.lock_person(user_id)  # first: one join of this person at a time, whatever the challenge
    with db.session.begin_nested():
        return _join(challenge_id, user_id, person, now)


def _join(challenge_id: int, user_id: int, person: User, now: datetime) -> ChallengeParticipant:
    challenge = db.session.get(Challenge, challenge_id)
    if challenge is None:
        raise ChallengeNotFound()
    existing = _participation(challenge_id, user_id)
    if existing is not None:
        return existing
    if person.status != UserStatus.ACTIVE:
        raise ChallengeClosed("this account cannot join challenges", zh="账号受限，不能参加挑战", code="banned")
    _take_slot(challenge, now)
    if challenge.stake_source != StakeSource.SPONSOR:
        stakes.reserve(challenge.id, challenge.stake_source, user_id, challenge.stake)
    participant = ChallengeParticipant(challenge_id=challenge.id, user_id=user_id, stake=challenge.stake, joined_at=now)
    db.session.add(participant)
    db.session.flush()
    return participant


def _participation(challenge_id: int, user_id: int) -> ChallengeParticipant | None:
    return db.session.execute(
        select(ChallengeParticipant).where(
            ChallengeParticipant.challenge_id == challenge_id, ChallengeParticipant.user_id == user_id
        )
    ).scalar_one_or_none()


def _take_slot(challenge: Challenge, now: datetime) -> None:
    """One more participant, by a conditional UPDATE: never past the maximum, never after the deadline."""
    taken = db.session.execute(
        update(Challenge)
        .where(
            Challenge.id == challenge.id,
            Challenge.status == ChallengeStatus.OPEN,
            Challenge.join_deadline > now,
            Challenge.participants < Challenge.max_participants,
        )
        .values(participants=Challenge.participants + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(challenge)
    if taken == 1:
        return
    if challenge.status in (ChallengeStatus.SETTLED, ChallengeStatus.CANCELLED):
        raise AlreadySettled()
    if challenge.status != ChallengeStatus.OPEN or challenge.join_deadline <= now:
        raise ChallengeClosed()
    raise ChallengeFull()


def is_participant(challenge_id: int, user_id: int) -> bool:
    return _participation(challenge_id, user_id) is not None


def get_challenge(challenge_id: int) -> Challenge:
    challenge = db.session.get(Challenge, challenge_id)
    if challenge is None:
        raise ChallengeNotFound()
    return challenge


def challenges_of(user_id: int) -> list[Challenge]:
    """The challenges a person joined, newest first."""
    return list(
        db.session.execute(
            select(Challenge)
            .join(ChallengeParticipant, ChallengeParticipant.challenge_id == Challenge.id)
            .where(ChallengeParticipant.user_id == user_id)
            .order_by(Challenge.id.desc())
        ).scalars()
    )


def group_challenges(transport: str, group_id: str) -> list[Challenge]:
    """A group's challenges, newest first."""
    return list(
        db.session.execute(
            select(Challenge)
            .where(Challenge.group_transport == transport, Challenge.group_id == group_id)
            .order_by(Challenge.id.desc())
        ).scalars()
    )


def participants_of(challenge_id: int) -> list[ChallengeParticipant]:
    return list(
        db.session.execute(
            select(ChallengeParticipant)
            .where(ChallengeParticipant.challenge_id == challenge_id)
            .order_by(ChallengeParticipant.user_id)
        ).scalars()
    )


def display_names(user_ids: list[int]) -> dict[int, str | None]:
    if not user_ids:
        return {}
    rows = db.session.execute(select(User.id, User.nickname).where(User.id.in_(user_ids))).all()
    return dict(rows)
