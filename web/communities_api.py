"""Collusion communities for the platform's risk team: what the collusion job found, scored and opened.

``GET /admin/api/risk/communities?suspicious=&limit=&offset=`` lists them newest first, each with its
members, score, reasons and its review case (id and status) when it opened one;
``GET /admin/api/risk/communities/<id>`` shows one. Platform roles only (a community spans merchants).
"""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import select

from models import ReviewCase, RiskCommunity, db
from web.admin import PLATFORM
from web.api import endpoint
from web.errors import NotFound
from web.schemas import Page

bp = Blueprint("communities", __name__)


class CommunityQuery(Page):
    suspicious: bool | None = None


def case_json(case: ReviewCase | None) -> dict | None:
    if case is None:
        return None
    return {
        "id": case.id,
        "status": case.status,
        "outcome": case.outcome,
        "merchant_id": case.merchant_id,
        "concerned_fen": case.held_fen,
        "opened_at": case.opened_at.isoformat(),
    }


def community_json(community: RiskCommunity, case: ReviewCase | None) -> dict:
    return {
        "id": community.id,
        "fingerprint": community.fingerprint,
        "members": community.members,
        "size": community.size,
        "score": community.score,
        "suspicious": community.suspicious,
        "reasons": community.reasons,
        "found_at": community.found_at.isoformat(),
        "case": case_json(case),
    }


@endpoint(bp, "/admin/api/risk/communities", auth="operator", roles=PLATFORM, query=CommunityQuery, tags=("risk",))
def list_communities(query: CommunityQuery):
    """Collusion communities, newest first (``suspicious`` filters), with their review cases."""
    stmt = select(RiskCommunity, ReviewCase).outerjoin(ReviewCase, ReviewCase.community_id == RiskCommunity.id)
    if query.suspicious is not None:
        stmt = stmt.where(RiskCommunity.suspicious.is_(query.suspicious))
    rows = db.session.execute(stmt.order_by(RiskCommunity.id.desc()).limit(query.limit).offset(query.offset)).all()
    return {"items": [community_json(c, case) for c, case in rows]}


@endpoint(bp, "/admin/api/risk/communities/<int:community_id>", auth="operator", roles=PLATFORM, tags=("risk",))
def get_community(community_id: int):
    """One collusion community with its members, score, reasons and review case."""
    row = db.session.execute(
        select(RiskCommunity, ReviewCase)
        .outerjoin(ReviewCase, ReviewCase.community_id == RiskCommunity.id)
        .where(RiskCommunity.id == community_id)
    ).first()
    if row is None:
        raise NotFound(f"community {community_id} not found")
    return community_json(*row)
