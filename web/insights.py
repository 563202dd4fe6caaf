"""Admin insights: the "why (no) rebate" trace and the what-if simulation of a campaign's rules.

Both only read. Merchant staff see only their own merchant's orders, packets
and customers, and simulate only their own campaigns; anything else answers
404. The simulation writes nothing, not even an audit row.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, g
from pydantic import Field, StrictInt

from insights.simulate import simulate
from insights.trace import trace_order, trace_packet
from insights.trace_people import merchant_sees_packet, merchant_sees_user, trace_user
from models import OperatorRole, RedPacket, User, db, utcnow
from models.operators import merchant_scope
from rebate.campaigns import rules_of
from rebate.rules import RuleError, parse_rules
from rebate.scope import visible_campaign, visible_order
from web.admin import long_reads
from web.api import endpoint
from web.campaign_admin import RulesIn
from web.errors import NotFound, ValidationFailed
from web.schemas import Model, PositiveFen
from web.views import PLAIN_REASONS

bp = Blueprint("insights", __name__, url_prefix="/admin/api")
TRACERS = (OperatorRole.ADMIN, OperatorRole.SUPPORT, OperatorRole.FINANCE, OperatorRole.MERCHANT_STAFF)
SIMULATORS = (OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF)


class TracePage(Model):
    limit: int = Field(20, ge=1, le=100)


class Simulation(Model):
    rules: RulesIn
    days: Annotated[StrictInt, Field(ge=1, le=365)]
    budget_limit_fen: PositiveFen | None = None


@endpoint(bp, "/trace/orders/<int:order_id>", auth="operator", roles=TRACERS, tags=("trace",))
def trace_an_order(order_id: int):
    """Which campaigns and rules were evaluated for an order, what each decided and why."""
    scope = merchant_scope(g.operator)  # a merchant's staff see that risk held an order, never why, and their
    # own campaigns' rebates only
    order = visible_order(g.operator, order_id)
    return trace_order(order, PLAIN_REASONS, risk_details=scope is None, merchant_id=scope)


@endpoint(bp, "/trace/packets/<int:packet_id>", auth="operator", roles=TRACERS, tags=("trace",))
def trace_a_packet(packet_id: int):
    """A red packet's history, its order and the rebates it triggered."""
    packet = db.session.get(RedPacket, packet_id)
    scope = merchant_scope(g.operator)
    if packet is None or (scope is not None and not merchant_sees_packet(packet, scope)):
        raise NotFound(f"red packet {packet_id} not found")
    return trace_packet(packet, PLAIN_REASONS, utcnow(), risk_details=scope is None, merchant_id=scope)


@endpoint(bp, "/trace/users/<int:user_id>", auth="operator", roles=TRACERS, query=TracePage, tags=("trace",))
def trace_a_user(user_id: int, query: TracePage):
    """A person's packets, orders and rebate decisions, newest first (merchant staff: at their shop only)."""
    user = db.session.get(User, user_id)
    scope = merchant_scope(g.operator)
    if user is None or (scope is not None and not merchant_sees_user(user.id, scope)):
        raise NotFound(f"user {user_id} not found")
    return trace_user(user, PLAIN_REASONS, limit=query.limit, merchant_id=scope)


@endpoint(
    bp,
    "/campaigns/<int:campaign_id>/simulate",
    methods=["POST"],
    auth="operator",
    roles=SIMULATORS,
    body=Simulation,
    tags=("campaign_admin",),
    reads=True,
)
def simulate_rules(campaign_id: int, body: Simulation):
    """Replay draft rules over the past N days of the campaign's paid orders, against its current rules."""
    campaign = visible_campaign(g.operator, campaign_id)
    limit = body.budget_limit_fen if body.budget_limit_fen is not None else campaign.budget_limit_fen
    try:
        draft = parse_rules(body.rules, budgeted=limit is not None)
    except RuleError as exc:
        raise ValidationFailed(str(exc), code="invalid_rules") from None
    current_applies_to = rules_of(campaign).applies_to
    if draft.applies_to != current_applies_to:
        raise ValidationFailed(
            f"the draft applies to {draft.applies_to} orders but the campaign's rules apply to "
            f"{current_applies_to} orders: the replay compares over the same orders",
            code="applies_to_changed",
        )
    # a read only: the orders are read apart from the request's transaction (on SQLite it holds the one write lock)
    with long_reads():
        return simulate(
            campaign, draft, days=body.days, now=utcnow(), budget_limit_fen=body.budget_limit_fen, apart=True
        )
