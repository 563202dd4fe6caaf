"""Simulator mode only: a challenge moved back in time, so ``make demo`` can play a whole challenge in seconds.

``POST /admin/api/sim/challenges/<id>/days-ago {"days": N}`` (admin) moves the challenge's period and both its
deadlines N days into the past, as if it had been started N days earlier; nothing else changes (stakes,
participants, data). The settle job then treats it as it would a real one. The blueprint is registered only
when ``WECHAT_MODE=simulator`` (live mode answers 404: it has no such route), and each use is audited.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint
from pydantic import BaseModel, ConfigDict, Field

from models import Challenge, ChallengeStatus, db
from models.operators import audit
from web.admin import actor
from web.api import endpoint
from web.errors import ApiError, NotFound

bp = Blueprint("demo_clock", __name__)


class DaysAgo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(ge=1, le=31, strict=True)


@endpoint(
    bp,
    "/admin/api/sim/challenges/<int:challenge_id>/days-ago",
    methods=["POST"],
    auth="operator",
    roles=("admin",),
    body=DaysAgo,
    tags=("simulator",),
)
def challenge_days_ago(challenge_id: int, body: DaysAgo):
    """Simulator mode only: the challenge as if started ``days`` earlier (the demo's clock)."""
    challenge = db.session.get(Challenge, challenge_id)
    if challenge is None:
        raise NotFound(f"challenge {challenge_id} not found")
    if challenge.status in (ChallengeStatus.SETTLED, ChallengeStatus.CANCELLED):
        raise ApiError(f"challenge {challenge_id} is {challenge.status}", code="challenge_finished", status=409)
    shift = timedelta(days=body.days)
    challenge.start_day -= shift
    challenge.join_deadline -= shift
    challenge.report_deadline -= shift
    audit(actor(), "sim.challenge_days_ago", "challenge", challenge_id, days=body.days)
    return {
        "id": challenge.id,
        "start_day": challenge.start_day.isoformat(),
        "join_deadline": challenge.join_deadline.isoformat(),
        "report_deadline": challenge.report_deadline.isoformat(),
    }
