"""Admin API over friends' challenges (docs/architecture.md §12): read only, through ``insights.challenges``.

* ``GET /admin/api/challenges?status=&kind=&transport=&stake_source=&since=&user_id=&campaign_id=&limit=&offset=``:
  counts by status (over every filter but ``status``), the matching total and a page, newest first.
  ``transport=none``: challenges started in the mini-program, in no group.
* ``GET /admin/api/challenges/<id>``: the challenge, its participants (stake, settled total and result, the
  standing now, each day's data: arrived / partial / missing / flagged by risk / the day still open), the
  quiz attempts, the prizes with their packets, the rebates the packets triggered and what went back to the
  payer, the settlement (decided, winners, what is still awaited, the outcome), the ledger entries and
  notices keyed by the challenge, and the ids to trace (``/admin/api/trace/...``).

Platform roles read every challenge. Merchant staff read only the challenges their merchant's campaign
sponsors (any other answers 404, as everywhere in the admin API), and see the people as ids: no names, no
openids, no group ids, not why risk flagged a day, neither the ledger nor the notices. Nothing here shows a
session key or what WeRun sent: the domain keeps only the decrypted daily totals. Openids and group ids are
masked as in the logs (``web.logs.mask_value``).
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, g
from pydantic import Field

from challenges.operations import TRANSPORTS
from insights.challenges import NO_GROUP, ChallengeFilter, challenge_detail, list_challenges, merchant_sees_challenge
from models import Challenge, ChallengeKind, ChallengeStatus, StakeSource, db, utcnow
from models.operators import merchant_scope
from web.admin import ANY_OPERATOR
from web.api import endpoint
from web.errors import NotFound
from web.guards import MAX_ID
from web.logs import mask_value
from web.schemas import Instant, Page

bp = Blueprint("challenges_admin", __name__, url_prefix="/admin/api")
# Plain string choices (the query's schema is inlined into /openapi.json's parameters: no shared $defs).
Status = Literal[tuple(s.value for s in ChallengeStatus)]
Kind = Literal[tuple(k.value for k in ChallengeKind)]
Source = Literal[tuple(s.value for s in StakeSource)]
Transport = Literal[(*sorted(TRANSPORTS), NO_GROUP)]


class ChallengeQuery(Page):
    status: Status | None = None
    kind: Kind | None = None
    transport: Transport | None = Field(None, description="Where the group lives; `none`: in no group.")
    stake_source: Source | None = None
    since: Instant | None = Field(None, description="Created at or after this instant.")
    user_id: int | None = Field(None, gt=0, le=MAX_ID, description="Challenges this person joined.")
    campaign_id: int | None = Field(None, gt=0, le=MAX_ID, description="Challenges this campaign sponsors.")


@endpoint(bp, "/challenges", auth="operator", roles=ANY_OPERATOR, query=ChallengeQuery, tags=("challenges",))
def list_all_challenges(query: ChallengeQuery):
    """Challenges newest first, with counts by status (merchant staff: those their campaigns sponsor)."""
    found = ChallengeFilter(**query.model_dump())
    return list_challenges(found, merchant_id=merchant_scope(g.operator), mask=mask_value)


@endpoint(bp, "/challenges/<int:challenge_id>", auth="operator", roles=ANY_OPERATOR, tags=("challenges",))
def get_one_challenge(challenge_id: int):
    """One challenge: participants, day grid, prizes and their packets, settlement, ledger and trace ids."""
    challenge = db.session.get(Challenge, challenge_id)
    scope = merchant_scope(g.operator)
    if challenge is None or (scope is not None and not merchant_sees_challenge(challenge, scope)):
        raise NotFound(f"challenge {challenge_id} not found")
    return challenge_detail(challenge, utcnow(), platform=scope is None, mask=mask_value)


__all__ = ["bp"]
