"""Review cases: the queue, one case with what it holds, and a reviewer's decision.

``GET /admin/api/reviews`` and ``GET /admin/api/reviews/<id>``: the platform's roles only. A case carries
the evidence (the score, every feature, the rules, devices and addresses, other people's rebates, a
community's members), and a merchant may be the suspect: merchant staff see in their trace that an order's
rebates wait for a review, never why.
``POST /admin/api/reviews/<id>/decide`` {outcome, reason, ban_days?}: admin, support and finance (a
reviewer may be any of them; above ``RISK_SECOND_APPROVAL_FEN`` held, two different ones must agree).
``POST /admin/api/reviews/<id>/proposal/reject`` {reason}: a reviewer who disagrees with the proposal a case awaits
(or its proposer withdrawing it) opens the case again; nothing moves (nothing awaiting: 409 ``no_proposal``).
What each outcome does to the money is ``rebate.reviews``.
"""

from __future__ import annotations

from typing import Literal

from flask import Blueprint, current_app
from sqlalchemy import select

from models import CaseOutcome, Order, Rebate, ReviewCase, RiskCommunity, db, utcnow
from payouts import MoneySettings
from rebate.reviews import Review, decide, proposed_ban_days, reject_proposal
from web.admin import PLATFORM, actor
from web.api import endpoint
from web.bans_api import BanDays
from web.communities_api import community_json
from web.errors import NotFound
from web.schemas import Model, Page, Reason

bp = Blueprint("reviews", __name__, url_prefix="/admin/api")

DECIDERS = PLATFORM  # admin, finance, support


class RejectProposal(Model):
    reason: Reason


class ReviewQuery(Page):
    status: Literal["open", "awaiting_approval", "decided"] | None = None
    kind: Literal["order", "community"] | None = None


class Decide(Model):
    outcome: CaseOutcome
    reason: Reason
    ban_days: BanDays | None = None


def case_json(case: ReviewCase) -> dict:
    def at(value):
        return value.isoformat() if value else None

    return {
        "id": case.id,
        "kind": case.kind,
        "order_id": case.order_id,
        "community_id": case.community_id,
        "user_id": case.user_id,
        "merchant_id": case.merchant_id,
        "status": case.status,
        "held_fen": case.held_fen,
        "score": case.score,
        "reasons": case.reasons,
        "opened_at": at(case.opened_at),
        "proposed_outcome": case.proposed_outcome,
        "proposed_by": case.proposed_by,
        "proposed_at": at(case.proposed_at),
        "proposed_reason": case.proposed_reason,
        "proposed_ban_days": proposed_ban_days(case),
        "outcome": case.outcome,
        "decided_by": case.decided_by,
        "decided_at": at(case.decided_at),
        "decision_reason": case.decision_reason,
        "label": case.label,
        "effects": case.effects or {},
    }


def _rebate_json(r: Rebate) -> dict:
    return {
        "id": r.id,
        "campaign_id": r.campaign_id,
        "role": r.role,
        "beneficiary_type": r.beneficiary_type,
        "beneficiary_id": r.beneficiary_id,
        "form": r.form,
        "status": r.status,
        "original_fen": r.original_fen,
        "amount_fen": r.amount_fen,
        "held_fen": r.held_fen,
        "reasons": r.reasons,
    }


def _order_json(order: Order) -> dict:
    return {
        "id": order.id,
        "out_trade_no": order.out_trade_no,
        "user_id": order.user_id,
        "merchant_id": order.merchant_id,
        "status": order.status,
        "paid_fen": order.paid_fen,
        "paid_at": order.paid_at.isoformat() if order.paid_at else None,
        "device": order.device,
        "ip": order.ip,
        "risk_score": order.risk_score,
        "risk_decision": order.risk_decision,
        "risk": order.risk,
    }


def _visible_case(case_id: int) -> ReviewCase:
    case = db.session.get(ReviewCase, case_id)
    if case is None:
        raise NotFound(f"review case {case_id} not found")
    return case


@endpoint(bp, "/reviews", auth="operator", roles=PLATFORM, query=ReviewQuery, tags=("reviews",))
def list_reviews(query: ReviewQuery):
    """The review queue, oldest first."""
    stmt = select(ReviewCase).order_by(ReviewCase.opened_at, ReviewCase.id).limit(query.limit).offset(query.offset)
    if query.status is not None:
        stmt = stmt.where(ReviewCase.status == query.status)
    if query.kind is not None:
        stmt = stmt.where(ReviewCase.kind == query.kind)
    return {"items": [case_json(c) for c in db.session.execute(stmt).scalars()]}


@endpoint(bp, "/reviews/<int:case_id>", auth="operator", roles=PLATFORM, tags=("reviews",))
def get_review(case_id: int):
    """One case: its order and the order's rebates (held ones in status ``review``), or its community's members."""
    case = _visible_case(case_id)
    body = case_json(case)
    if case.order_id is not None:
        order = db.session.get(Order, case.order_id)
        body["order"] = _order_json(order)
        rebates = db.session.execute(select(Rebate).where(Rebate.order_id == order.id).order_by(Rebate.id)).scalars()
        body["rebates"] = [_rebate_json(r) for r in rebates]
    if case.community_id is not None:
        community = db.session.get(RiskCommunity, case.community_id)
        body["community"] = community_json(community, None)  # the case is the body itself
    return body


@endpoint(
    bp,
    "/reviews/<int:case_id>/decide",
    methods=["POST"],
    auth="operator",
    roles=DECIDERS,
    body=Decide,
    idempotent=True,
    tags=("reviews",),
)
def decide_review(case_id: int, body: Decide):
    """Decide a case: release, revoke, claw_back, ban_user, ban_device or ban_merchant, with a reason.

    The same outcome again answers the decided case; another is 409. Above RISK_SECOND_APPROVAL_FEN held, the
    first decision is a proposal (``awaiting_approval``) and a different operator's same outcome carries it out."""
    cfg = current_app.config
    case = decide(
        actor(),
        case_id,
        Review(body.outcome, body.reason, body.ban_days),
        utcnow(),
        money=MoneySettings.from_config(cfg),
        second_approval_fen=cfg["RISK_SECOND_APPROVAL_FEN"],
        graph_days=cfg["RISK_GRAPH_DAYS"],
    )
    return case_json(case)


@endpoint(
    bp,
    "/reviews/<int:case_id>/proposal/reject",
    methods=["POST"],
    auth="operator",
    roles=DECIDERS,
    body=RejectProposal,
    idempotent=True,
    tags=("reviews",),
)
def reject_review_proposal(case_id: int, body: RejectProposal):
    """Reject (or, its proposer, withdraw) the proposal a case awaits: the case is open again and nothing moved."""
    return case_json(reject_proposal(actor(), case_id, body.reason, utcnow()))
