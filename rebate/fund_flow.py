"""Service-provider fund flow (``FUND_FLOW=service_provider``): who is paid for an order, and what may not pool.

In that mode each merchant is a WeChat Pay sub-merchant and its orders are paid
to its own ``sub_mchid`` through the partner JSAPI, so the money is the
merchant's from the first fen and the platform never holds it (二清). Three
rules follow, kept here:

- an order is paid to its merchant's ``sub_mchid``, snapshotted on the order; a
  merchant without one cannot sell (409, nothing written);
- the order is opened with ``settle_info.profit_sharing`` when a merchant-funded
  campaign may pay a person cash on it (its spent packets' campaigns, and the
  merchant's running campaigns that award without a packet or attribute later
  orders): that cash leaves the merchant's own order money by profit sharing;
- a packet discount on the order must be the merchant's own (it simply charges
  less). A discount funded by anyone else would be the platform paying part of
  a merchant's order outside WeChat, i.e. settling money to the merchant itself:
  refused, at activation and again at order time. The compliant ways for the
  platform to fund a discount are WeChat's own: a platform coupon stock usable at
  the sub-merchants (代金券, WeChat settles it), or 平台收付通 补差
  (``/v3/ecommerce/subsidies/create``) where the platform is a 平台收付通 platform.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import Campaign, CampaignStatus, FunderType, Merchant, Order, OrderPacket, RedPacket, db
from rebate.campaigns import rules_of
from rebate.errors import Invalid, StateConflict
from rebate.rules import CASH_FORMS

PERSON_ROLES = ("consumer", "inviter")  # the issuer is a person only when a user issued the campaign
COMPLIANT_DISCOUNT = (
    "in service-provider mode the platform may not pay part of a merchant's order outside WeChat (二清); "
    "fund the discount with a platform WeChat Pay coupon stock usable at the sub-merchants, or with a "
    "平台收付通 补差 subsidy, or let the merchant fund the packet"
)


def pay_to_sub_merchant(order: Order) -> None:
    """Route a just-created order to its merchant's sub-merchant number (flushes nothing new but the order)."""
    merchant = db.session.get(Merchant, order.merchant_id)
    if not merchant.sub_mchid:
        raise StateConflict(
            f"merchant {merchant.id} has no WeChat Pay sub-merchant number (sub_mchid) yet; it cannot take "
            "payments in service-provider mode",
            code="merchant_without_sub_mchid",
        )
    spent = _spent_campaigns(order)
    for campaign in spent:
        refuse_foreign_discount(campaign, order.merchant_id)
    order.sub_mchid = merchant.sub_mchid
    order.profit_sharing = any(_pays_person_cash(c) for c in spent + _running_awarders(order.merchant_id))


def refuse_foreign_discount(campaign: Campaign, merchant_id: int | None) -> None:
    """A packet campaign's discount must be funded by the merchant whose order it discounts.

    ``merchant_id`` None (activation): the campaign's own merchant, if it funds it. Raises 409
    ``discount_would_pool_money`` naming the compliant alternatives.
    """
    if campaign.packet_amount_fen is None:
        return  # awards only, no discount: platform-funded rebates leave the platform's own account
    funded_by_merchant = campaign.funder_type == FunderType.MERCHANT_DEPOSIT and campaign.funder_merchant_id
    if funded_by_merchant and (merchant_id is None or campaign.funder_merchant_id == merchant_id):
        return
    raise StateConflict(
        f"campaign {campaign.id}'s packet discount is not funded by the merchant whose order it discounts: "
        + COMPLIANT_DISCOUNT,
        code="discount_would_pool_money",
    )


def _spent_campaigns(order: Order) -> list[Campaign]:
    return list(
        db.session.execute(
            select(Campaign)
            .join(RedPacket, RedPacket.campaign_id == Campaign.id)
            .join(OrderPacket, OrderPacket.packet_id == RedPacket.id)
            .where(OrderPacket.order_id == order.id)
            .order_by(Campaign.id)
        ).scalars()
    )


def _running_awarders(merchant_id: int) -> list[Campaign]:
    """The merchant's own active campaigns that can award on an order without a packet spent on it."""
    rows = db.session.execute(
        select(Campaign).where(
            Campaign.status == CampaignStatus.ACTIVE,
            Campaign.funder_type == FunderType.MERCHANT_DEPOSIT,
            Campaign.funder_merchant_id == merchant_id,
        )
    ).scalars()
    return [c for c in rows if c.packet_amount_fen is None or rules_of(c).attribution_days]


def _pays_person_cash(campaign: Campaign) -> bool:
    """A merchant-funded campaign with a rule that can pay a person cash (now, or when a rail falls back)."""
    if campaign.funder_type != FunderType.MERCHANT_DEPOSIT:
        return False
    roles = PERSON_ROLES + (("issuer",) if campaign.issuer_user_id is not None else ())
    return any(
        rule.role in roles
        and (rule.rate_bps > 0 or any(t.rate_bps > 0 for t in rule.tiers))
        and (rule.form in CASH_FORMS or rule.fallback_form in CASH_FORMS)
        for rule in rules_of(campaign).roles
    )


def set_sub_merchant(merchant: Merchant, sub_mchid: str | None, sub_appid: str | None) -> Merchant:
    """Record (or clear) a merchant's WeChat Pay sub-merchant number and app; flushes only.

    Validated by the caller's schema (``wechat.partner`` patterns). Another merchant holding the number is a
    409 (also when two requests race: the unique index decides). Orders already made keep the number they
    were made with.
    """
    if sub_appid is not None and sub_mchid is None:
        raise Invalid("sub_appid needs a sub_mchid", code="sub_appid_without_sub_mchid")
    holder = db.session.execute(
        select(Merchant.id).where(Merchant.sub_mchid == sub_mchid, Merchant.id != merchant.id)
    ).scalar()
    if sub_mchid is not None and holder is not None:
        raise StateConflict(f"sub_mchid {sub_mchid} belongs to merchant {holder}", code="sub_mchid_taken")
    merchant.sub_mchid, merchant.sub_appid = sub_mchid, sub_appid
    try:
        with db.session.begin_nested():
            db.session.flush()
    except IntegrityError:
        raise StateConflict(f"sub_mchid {sub_mchid} belongs to another merchant", code="sub_mchid_taken") from None
    return merchant
