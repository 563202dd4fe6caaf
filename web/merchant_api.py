"""Merchant-reported milestones that release conditional rebates (lessons done, test passed, feedback), and
a merchant's WeChat Pay sub-merchant identity (service-provider fund flow).

Merchant staff report on their own merchant's orders only (others: 404);
admins on any. ``Idempotency-Key`` is honoured and a repeated milestone
changes nothing. Only platform admins set a merchant's ``sub_mchid`` /
``sub_appid`` (audited with a reason): a wrong number would send a merchant's
sales to someone else.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app, g
from pydantic import Field, StrictInt

from models import Merchant, OperatorRole, db, utcnow
from models.operators import audit
from payouts import MoneySettings
from rebate.fund_flow import set_sub_merchant
from rebate.milestones import report_milestone
from rebate.scope import visible_order
from web.admin import actor
from web.api import endpoint
from web.errors import NotFound
from web.schemas import Model, Reason
from web.views import rebate_json
from wechat.partner import SUB_APPID_PATTERN, SUB_MCHID_PATTERN

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


class SubMerchantIds(Model):
    """``null`` clears: the merchant then cannot take payments in service-provider mode."""

    sub_mchid: Annotated[str, Field(pattern=SUB_MCHID_PATTERN)] | None
    sub_appid: Annotated[str, Field(pattern=SUB_APPID_PATTERN)] | None = None
    reason: Reason


def wechat_pay_json(merchant: Merchant) -> dict:
    return {"merchant_id": merchant.id, "sub_mchid": merchant.sub_mchid, "sub_appid": merchant.sub_appid}


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/wechat-pay",
    methods=["PUT"],
    auth="operator",
    roles=(OperatorRole.ADMIN,),
    body=SubMerchantIds,
    idempotent=True,
)
def put_wechat_pay(merchant_id: int, body: SubMerchantIds):
    """Set a merchant's WeChat Pay sub-merchant number (``sub_mchid``, 8-12 digits) and its own appid
    (``sub_appid``, optional). 409 ``sub_mchid_taken`` when another merchant has the number."""
    merchant = db.session.get(Merchant, merchant_id, with_for_update=True)
    if merchant is None:
        raise NotFound(f"merchant {merchant_id} not found")
    before = wechat_pay_json(merchant)
    set_sub_merchant(merchant, body.sub_mchid, body.sub_appid)
    audit(actor(), "merchant.wechat_pay", "merchant", merchant.id, body.reason, before=before)
    return wechat_pay_json(merchant)


@endpoint(bp, "/merchants/<int:merchant_id>/wechat-pay", auth="operator", roles=(OperatorRole.ADMIN,))
def get_wechat_pay(merchant_id: int):
    """A merchant's WeChat Pay sub-merchant identity."""
    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None:
        raise NotFound(f"merchant {merchant_id} not found")
    return wechat_pay_json(merchant)
