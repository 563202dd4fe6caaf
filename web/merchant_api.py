"""Merchant-reported milestones that release conditional rebates (lessons done, test passed, feedback).

Merchant staff report on their own merchant's orders only (others: 404);
admins on any. ``Idempotency-Key`` is honoured and a repeated milestone
changes nothing.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app, g
from pydantic import Field, StrictInt

from models import OperatorRole, utcnow
from models.operators import audit
from payouts import MoneySettings
from rebate.milestones import report_milestone
from rebate.scope import visible_order
from web.admin import actor
from web.api import endpoint
from web.schemas import Model
from web.views import rebate_json

bp = Blueprint("merchant_api", __name__, url_prefix="/admin/api")


class Milestone(Model):
    name: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")]
    quality: Annotated[StrictInt, Field(ge=0, le=100)] | None = None


@endpoint(
    bp,
    "/orders/<int:order_id>/milestones",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF),
    body=Milestone,
    idempotent=True,
    status=201,
)
def post_milestone(order_id: int, body: Milestone):
    """Report a milestone of an order; answers the rebates it released."""
    order = visible_order(g.operator, order_id)
    money = MoneySettings.from_config(current_app.config)
    released = report_milestone(order, body.name, body.quality, utcnow(), operator_id=g.operator.id, money=money)
    audit(actor(), "order.milestone", "order", order.id, None, name=body.name, quality=body.quality)
    return {"order_id": order.id, "milestone": body.name, "released": [rebate_json(r) for r in released]}, 201
