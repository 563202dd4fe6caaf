"""What an operator may see: platform roles see everything, merchant staff only their own merchant's.

Anything outside an operator's scope is ``NotFound`` (404, not 403), so merchant staff cannot learn
what exists. A campaign belongs to the merchant whose deposit funds it.
"""

from __future__ import annotations

from sqlalchemy import select

from models import Campaign, Merchant, Operator, Order, db
from models.operators import merchant_scope
from rebate.errors import NotFound


def visible_merchant(operator: Operator, merchant_id: int) -> Merchant:
    scope = merchant_scope(operator)
    merchant = db.session.get(Merchant, merchant_id)
    if merchant is None or (scope is not None and scope != merchant_id):
        raise NotFound(f"merchant {merchant_id} not found")
    return merchant


def visible_order(operator: Operator, order_id: int) -> Order:
    """An order the operator may see: any for platform roles, their own merchant's for merchant staff."""
    order = db.session.get(Order, order_id)
    scope = merchant_scope(operator)
    if order is None or (scope is not None and order.merchant_id != scope):
        raise NotFound(f"order {order_id} not found")
    return order


def visible_campaign(operator: Operator, campaign_id: int, *, lock: bool = False) -> Campaign:
    """A campaign the operator may see; ``lock``: row-locked, its counters read as they are now."""
    stmt = select(Campaign).where(Campaign.id == campaign_id)
    if lock:  # and see the counters as they are now, not as this session last read them. FOR NO KEY UPDATE, as
        # every other campaign lock (budgets, reviews): a FOR UPDATE on a row this transaction already holds
        # that way waits on the key-share locks of payments inserting rebates, which wait on us: a deadlock.
        stmt = stmt.with_for_update(key_share=True).execution_options(populate_existing=True)
    campaign = db.session.execute(stmt).scalar_one_or_none()
    scope = merchant_scope(operator)
    if campaign is None or (scope is not None and campaign.funder_merchant_id != scope):
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign
