"""The quiz: one attempt per person and challenge, started when they first fetch the questions, with
``quiz_seconds`` to answer; answers are checked here (the client never sees the right ones) and taken once."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update

from challenges.days import day_end, day_start
from challenges.errors import ChallengeClosed, MeasureRefused, NotParticipant
from challenges.operations import get_challenge, is_participant
from models import Challenge, ChallengeKind, ChallengeStatus, QuizAttempt, QuizQuestion, db
from models.sql import insert_ignoring


def questions_of(challenge_id: int) -> list[QuizQuestion]:
    return list(
        db.session.execute(
            select(QuizQuestion).where(QuizQuestion.challenge_id == challenge_id).order_by(QuizQuestion.position)
        ).scalars()
    )


def start_quiz(challenge_id: int, user_id: int, now: datetime) -> tuple[QuizAttempt, list[QuizQuestion]]:
    """The person's attempt (begun now if it was not) and the questions; only while the quiz is on."""
    challenge = get_challenge(challenge_id)
    if challenge.kind != ChallengeKind.QUIZ or not is_participant(challenge_id, user_id):
        raise NotParticipant()
    attempt = _attempt(challenge_id, user_id)
    if attempt is None:
        last = challenge.start_day + timedelta(days=challenge.days - 1)
        if challenge.status in (ChallengeStatus.SETTLED, ChallengeStatus.CANCELLED) or now >= day_end(last):
            raise ChallengeClosed("the quiz is over", zh="问答已结束", code="quiz_over")
        if now < day_start(challenge.start_day):
            raise ChallengeClosed("the quiz has not begun", zh="问答尚未开始", code="quiz_not_begun")
        # Two fetches at once (a double tap): one attempt starts, the other reads it (no unique-key error).
        row = {
            "challenge_id": challenge_id,
            "user_id": user_id,
            "started_at": now,
            "ends_at": min(now + timedelta(seconds=challenge.quiz_seconds or 300), day_end(last)),
            "score": 0,
        }
        insert_ignoring(QuizAttempt.__table__, [row], ("challenge_id", "user_id"))
        attempt = _attempt(challenge_id, user_id)
    return attempt, questions_of(challenge_id)


def _attempt(challenge_id: int, user_id: int) -> QuizAttempt | None:
    return db.session.execute(
        select(QuizAttempt).where(QuizAttempt.challenge_id == challenge_id, QuizAttempt.user_id == user_id)
    ).scalar_one_or_none()


def answer_quiz(challenge_id: int, user_id: int, answers: dict[int, int], now: datetime) -> QuizAttempt:
    """Score the answers (question id → choice index) once, before the attempt's time is up, and only while the
    challenge is unsettled. Its row is locked first: a settlement under way (which skips a locked challenge, to
    find the answers in on its next pass) finishes first, and answers that came after it are refused, not taken
    as if they still counted (a request sent just before its time was up, taken just after the settle job
    scored the attempt 0)."""
    challenge = db.session.execute(
        select(Challenge)
        .where(Challenge.id == challenge_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if challenge is None or not is_participant(challenge_id, user_id):
        raise NotParticipant()
    if challenge.status in (ChallengeStatus.SETTLED, ChallengeStatus.CANCELLED):
        raise ChallengeClosed("the quiz is over", zh="问答已结束", code="quiz_over")
    attempt = _attempt(challenge_id, user_id)
    if attempt is None:
        raise MeasureRefused("fetch the questions first", zh="请先开始答题", code="quiz_not_started")
    if attempt.submitted_at is not None:
        raise MeasureRefused("the answers were already taken", zh="已经交过答案了", code="quiz_answered")
    if now > attempt.ends_at:
        raise MeasureRefused("the time for this quiz is up", zh="答题时间已过", code="quiz_late")
    questions = {q.id: q for q in questions_of(challenge_id)}
    unknown = set(answers) - set(questions)
    if unknown:
        raise MeasureRefused(f"unknown questions {sorted(unknown)}", zh="题目不存在", code="quiz_unknown_question")
    no_such = sorted(qid for qid, choice in answers.items() if not 0 <= choice < len(questions[qid].choices))
    if no_such:  # refused before the attempt is taken: a typo must not spend the one try the stakes ride on
        raise MeasureRefused(f"questions {no_such} have no such choice", zh="选项不存在", code="quiz_no_such_choice")
    score = sum(1 for qid, choice in answers.items() if questions[qid].answer == choice)
    taken = db.session.execute(
        update(QuizAttempt)
        .where(QuizAttempt.id == attempt.id, QuizAttempt.submitted_at.is_(None))
        .values(score=score, submitted_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:  # a twin request took them a moment ago
        raise MeasureRefused("the answers were already taken", zh="已经交过答案了", code="quiz_answered")
    db.session.refresh(attempt)
    return attempt


def quiz_data(challenge_id: int, user_ids: list[int], now: datetime) -> dict[int, tuple[int, bool]]:
    """user_id → (score, arrived): arrived once submitted or the attempt's time is up."""
    rows = db.session.execute(select(QuizAttempt).where(QuizAttempt.challenge_id == challenge_id)).scalars()
    found = {a.user_id: a for a in rows}
    out = {}
    for uid in user_ids:
        a = found.get(uid)
        out[uid] = (0, False) if a is None else (a.score, a.submitted_at is not None or now > a.ends_at)
    return out
