"""Friends' challenges in the mini-program (docs/architecture.md §16).

* ``POST /api/v1/challenges``: a ``ChallengeSpec``; the caller joins at once and their stake is reserved from
  their balance or points (``Idempotency-Key`` required: it moves money). 201 with the standings.
* ``POST /api/v1/challenges/<id>/join``: join (again: the same participation, nothing moves twice).
* ``GET /api/v1/challenges/<id>``: the standings, for a participant. Anyone signed in may read an *open*
  challenge's terms (its id is the invitation shared in a group) without the people in it; a running or
  finished challenge of others answers 404, as does one that does not exist.
* ``POST /api/v1/chat-tool/groups/<opengid>/challenges``: a ``ChallengeSpec`` started in a chat-tool group the
  caller is bound in (``POST /api/v1/me/chat-tool/groups``; else 404); its group card is made and kept up to
  date by a job (``jobs/challenge_posts.update_chat_tool_cards``). ``GET /api/v1/challenges/<id>/card``: the
  card's activity id for a participant to share (404 until the job made it).
* ``GET /api/v1/me/challenges``: the caller's challenges, newest first.
* ``POST /api/v1/me/werun``: ``{encryptedData, iv}`` from ``wx.getWeRunData``, decrypted with the caller's
  current session_key (appid and freshness of the watermark checked); the answer says which days were taken,
  refused (a closed day never decreases) or flagged (implausible: counted as zero).
* ``POST /api/v1/me/reading-checkins``: a reading check-in at the server's time (interval and daily cap: 429).
* ``GET /api/v1/challenges/<id>/quiz``: the questions without their answers; the first read starts the
  caller's one attempt and its clock. ``POST /api/v1/challenges/<id>/quiz/answers``: the answers, once, in time.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app
from pydantic import Field, StrictInt, StringConstraints
from sqlalchemy import select

from challenges import (
    ChallengeSpec,
    answer_quiz,
    challenges_of,
    check_in_reading,
    create_challenge,
    get_challenge,
    is_participant,
    join_challenge,
    record_steps,
    standings,
    start_quiz,
)
from challenges.cards import card_of
from challenges.quiz import questions_of
from models import ChallengeStatus, ChatBinding, Transport, db, utcnow
from web.api import endpoint
from web.auth import current_user
from web.errors import NotFound, ValidationFailed
from web.schemas import Id, Model
from wechat.werun import WeRunError, decrypt_werun

bp = Blueprint("challenges_api", __name__, url_prefix="/api/v1")
Base64 = Annotated[str, StringConstraints(min_length=4, max_length=20_000, pattern=r"^[A-Za-z0-9+/=]+$")]


class WeRunUpload(Model):
    encryptedData: Base64  # noqa: N815 - WeChat's own field names, as wx.getWeRunData gives them
    iv: Annotated[str, StringConstraints(min_length=4, max_length=64, pattern=r"^[A-Za-z0-9+/=]+$")]


class Answer(Model):
    question_id: Id
    choice: Annotated[StrictInt, Field(ge=0, le=20)]


class QuizAnswers(Model):
    answers: Annotated[list[Answer], Field(min_length=1, max_length=20)]


def _summary(challenge) -> dict:
    return {
        "id": challenge.id,
        "kind": challenge.kind,
        "title": challenge.title,
        "status": challenge.status,
        "start_day": challenge.start_day.isoformat(),
        "days": challenge.days,
        "stake_source": challenge.stake_source,
        "stake": challenge.stake,
        "participants": challenge.participants,
        "join_deadline": challenge.join_deadline.isoformat(),
        "report_deadline": challenge.report_deadline.isoformat(),
    }


def _readable(challenge_id: int, user_id: int) -> dict:
    """The standings for a participant; an open challenge's terms for anyone; else 404."""
    challenge = get_challenge(challenge_id)
    if is_participant(challenge_id, user_id):
        return standings(challenge_id, utcnow()).as_json()
    if challenge.status == ChallengeStatus.OPEN and utcnow() < challenge.join_deadline:
        table = standings(challenge_id, utcnow()).as_json()
        table.update(rows=[], waiting=[], winners=[], outcome=None, group=None)  # the terms: no people, no group
        return table
    raise NotFound("no such challenge", code="challenge_not_found")


@endpoint(bp, "/challenges", methods=["POST"], body=ChallengeSpec, idempotent=True, require_key=True, status=201)
def create(body: ChallengeSpec):
    """Start a challenge; the caller joins and stakes at once."""
    user = current_user()
    challenge = create_challenge(user.id, body, utcnow())
    return standings(challenge.id, utcnow()).as_json()


@endpoint(
    bp,
    "/chat-tool/groups/<opengid>/challenges",
    methods=["POST"],
    body=ChallengeSpec,
    idempotent=True,
    require_key=True,
    status=201,
)
def create_in_chat_tool_group(opengid: str, body: ChallengeSpec):
    """Start a challenge in a chat-tool group the caller is bound in; its card follows it."""
    user = current_user()
    bound = db.session.execute(
        select(ChatBinding.id).where(
            ChatBinding.user_id == user.id,
            ChatBinding.transport == Transport.CHAT_TOOL,
            ChatBinding.scope == opengid[:128],
        )
    ).first()
    if bound is None:
        raise NotFound("you are not bound in this chat-tool group", code="group_not_found")
    challenge = create_challenge(user.id, body, utcnow(), group=(Transport.CHAT_TOOL, opengid))
    return standings(challenge.id, utcnow()).as_json()


@endpoint(bp, "/challenges/<int:challenge_id>/card", methods=["GET"])
def card(challenge_id: int):
    """The chat-tool card's activity id, for a participant to share the card in the group."""
    user = current_user()
    found = card_of(challenge_id) if is_participant(challenge_id, user.id) else None
    if found is None or not found.activity_id:
        raise NotFound("no card for this challenge yet", code="card_not_found")
    return {"activity_id": found.activity_id, "expires_at": found.activity_expires_at.isoformat()}


@endpoint(bp, "/challenges/<int:challenge_id>/join", methods=["POST"], idempotent=True)
def join(challenge_id: int):
    """Join a challenge (again: the same participation); the stake is reserved."""
    user = current_user()
    join_challenge(challenge_id, user.id, utcnow())
    return standings(challenge_id, utcnow()).as_json()


@endpoint(bp, "/challenges/<int:challenge_id>")
def show(challenge_id: int):
    """A challenge's standings (a participant), or an open challenge's terms."""
    return _readable(challenge_id, current_user().id)


@endpoint(bp, "/me/challenges")
def mine():
    """The caller's challenges, newest first."""
    return {"challenges": [_summary(c) for c in challenges_of(current_user().id)]}


@endpoint(bp, "/me/werun", methods=["POST"], body=WeRunUpload)
def werun(body: WeRunUpload):
    """WeRun steps, decrypted on the server with the caller's session_key."""
    user = current_user()
    appid = current_app.config["WECHAT_APPID"]
    identity = next((i for i in user.identities if i.appid == appid and i.session_key), None)
    if identity is None:
        raise ValidationFailed("log in again: no WeChat session to decrypt with", code="werun_no_session")
    now = utcnow()
    try:
        data = decrypt_werun(
            identity.session_key, body.encryptedData, body.iv, appid, now, current_app.config["WERUN_MAX_AGE_SECONDS"]
        )
    except WeRunError as exc:
        raise ValidationFailed(str(exc), code=f"werun_{exc.code}") from None
    recorded = record_steps(user.id, data.steps, now, made=data.watermark_at)  # data fetched before midnight: no close
    return {
        "taken": [d.isoformat() for d in recorded.taken],
        "refused": recorded.refused,
        "flagged": recorded.flagged,
    }


@endpoint(bp, "/me/reading-checkins", methods=["POST"], status=201)
def reading_checkin():
    """A reading check-in now (server time)."""
    checkin = check_in_reading(current_user().id, utcnow())
    return {"id": checkin.id, "day": checkin.day.isoformat(), "at": checkin.at.isoformat()}


@endpoint(bp, "/challenges/<int:challenge_id>/quiz", writes=True)
def quiz(challenge_id: int):
    """The quiz's questions (never the answers); the first read starts the caller's attempt."""
    attempt, questions = start_quiz(challenge_id, current_user().id, utcnow())
    return {
        "started_at": attempt.started_at.isoformat(),
        "ends_at": attempt.ends_at.isoformat(),
        "submitted": attempt.submitted_at is not None,
        "questions": [{"id": q.id, "prompt": q.prompt, "choices": q.choices} for q in questions],
    }


@endpoint(bp, "/challenges/<int:challenge_id>/quiz/answers", methods=["POST"], body=QuizAnswers)
def quiz_answers(challenge_id: int, body: QuizAnswers):
    """The caller's answers, once, before their attempt's time is up; ``questions``: how many the quiz has (a
    question left unanswered counts as wrong), the score is out of that."""
    answers = {a.question_id: a.choice for a in body.answers}
    if len(answers) != len(body.answers):
        raise ValidationFailed("one answer per question", code="quiz_duplicate_answer")
    attempt = answer_quiz(challenge_id, current_user().id, answers, utcnow())
    asked = len(questions_of(challenge_id))
    return {"score": attempt.score, "questions": asked, "submitted_at": attempt.submitted_at.isoformat()}
