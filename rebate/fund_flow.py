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
- a merchant-funded campaign activated in this mode is funded from the
  merchant's own sales (``Campaign.funded_from_sales``): no deposit (the
  platform may not take one), and only the rebate forms that leave the order
  money by profit sharing (WeChat change, cash red packet). A balance, points,
  coupon or marketing-credit rebate would turn the merchant's money into a
  platform liability: refused (409 ``rebate_would_pool_money``) at activation
  and on every new rules version;
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

from models import Campaign, CampaignStatus, FunderType, IssuerType, Merchant, Order, OrderPacket, RedPacket, db
from rebate.campaigns import rules_of
from rebate.errors import Invalid, StateConflict
from rebate.rules import CASH_FORMS, SHAREABLE_FORMS, RuleSet, max_rate_bps

PERSON_ROLES = ("consumer", "inviter")  # the issuer is a person only when a user issued the campaign
COMPLIANT_DISCOUNT = (
    "in service-provider mode the platform may not pay part of a merchant's order outside WeChat (二清); "
    "fund the discount with a platform WeChat Pay coupon stock usable at the sub-merchants, or with a "
    "平台收付通 补差 subsidy, or let the merchant fund the packet"
)


def pay_to_sub_merchant(order: Order) -> None:
    """Route a just-created order to its merchant's sub-merchant number (flushes nothing new but the order)."""
    merchant = _sub_merchant(order.merchant_id, "it cannot take payments in service-provider mode")
    spent = _spent_campaigns(order)
    for campaign in spent:
        refuse_foreign_discount(campaign, order.merchant_id)
    order.sub_mchid = merchant.sub_mchid
    order.profit_sharing = any(_pays_person_cash(c) for c in spent + _running_awarders(order.merchant_id))


def refuse_sales_funded_packets(order: Order) -> None:
    """Direct mode: a just-created order may not spend a packet of a campaign funded from its merchant's sales
    (activated in service-provider mode): the platform takes the payment, and that campaign has no deposit to
    pay the discount from. 409 ``campaign_funded_from_sales``, nothing written (the caller's transaction)."""
    for campaign in _spent_campaigns(order):
        refuse_deposit_campaign_in_direct_mode(campaign)


def fund_from_sales(campaign: Campaign) -> None:
    """Activation in service-provider mode: a merchant-funded campaign pays from its merchant's own sales.

    Refused (409, nothing changed): a merchant without a sub-merchant number; a campaign that already spent
    from a deposit in direct mode; rules paying a form that does not leave by profit sharing."""
    if campaign.funder_type != FunderType.MERCHANT_DEPOSIT:
        return
    _sub_merchant(
        campaign.funder_merchant_id, "its campaigns are paid from its own sales at WeChat, which it cannot take yet"
    )
    if not campaign.funded_from_sales and campaign.budget_reserved_fen + campaign.budget_committed_fen:
        raise StateConflict(
            f"campaign {campaign.id} has spent from its merchant's marketing deposit (direct mode); in "
            "service-provider mode a merchant's campaigns are paid from its own sales: end it and create a new one",
            code="campaign_funded_by_deposit",
        )
    refuse_pooling_forms(campaign, rules_of(campaign))
    campaign.funded_from_sales = True


def _sub_merchant(merchant_id: int, consequence: str) -> Merchant:
    """The merchant, which must have its WeChat Pay sub-merchant number (409 ``merchant_without_sub_mchid``)."""
    merchant = db.session.get(Merchant, merchant_id)
    if not merchant.sub_mchid:
        raise StateConflict(
            f"merchant {merchant.id} has no WeChat Pay sub-merchant number (sub_mchid) yet; {consequence}",
            code="merchant_without_sub_mchid",
        )
    return merchant


def refuse_pooling_forms(campaign: Campaign, rules: RuleSet) -> None:
    """Every paying side of a campaign funded from sales pays a person, only in forms that leave by profit
    sharing (a merchant issuer's side would be marketing credit the platform holds, paid from its own sales)."""
    campaign_id = campaign.id
    for rule in rules.roles:
        if max_rate_bps(rule) <= 0:  # its rate, tiers and category rates all pay nothing
            continue
        if rule.condition is not None:  # released after its milestones: after the share has left, stranded
            raise StateConflict(
                f"campaign {campaign_id}'s {rule.role} side waits for milestones: in service-provider mode its "
                "rebate would be released after the order's share, when its money is already the merchant's; "
                "drop the condition",
                code="rebate_would_pool_money",
            )
        if rule.role == "issuer" and campaign.issuer_type == IssuerType.MERCHANT:
            raise StateConflict(
                f"campaign {campaign_id}'s issuer is a merchant: its issuer side would pay the merchant marketing "
                "credit out of its own sales, held by the platform (二清); in service-provider mode set the "
                "issuer side's rate to 0, or let a person issue the packets",
                code="rebate_would_pool_money",
            )
        offered = {*rule.allowed_forms, *([rule.fallback_form] if rule.fallback_form else [])}
        pooled = sorted(f.value for f in offered if f not in SHAREABLE_FORMS)
        if pooled:
            raise StateConflict(
                f"campaign {campaign_id}'s {rule.role} side pays {', '.join(pooled)}: in service-provider mode a "
                "merchant-funded rebate leaves the merchant's own order money by profit sharing, so only "
                f"{' or '.join(f.value for f in SHAREABLE_FORMS)}; any other form would make the platform hold "
                "the merchant's money (二清)",
                code="rebate_would_pool_money",
            )


def refuse_deposit_campaign_in_direct_mode(campaign: Campaign) -> None:
    """A campaign funded from sales has no deposit: it runs only in service-provider mode."""
    if campaign.funded_from_sales:
        raise StateConflict(
            f"campaign {campaign.id} is paid from its merchant's sales by profit sharing (service-provider mode); "
            "with FUND_FLOW=direct it has no deposit to pay from",
            code="campaign_funded_from_sales",
        )


def refuse_foreign_discount(campaign: Campaign, merchant_id: int | None) -> None:
    """A packet campaign's discount must be funded by the merchant whose order it discounts.

    ``merchant_id`` None (activation): the campaign's own merchant, if it funds it. Raises 409
    ``discount_would_pool_money`` naming the compliant alternatives.
    """
    funded_by_merchant = campaign.funder_type == FunderType.MERCHANT_DEPOSIT and campaign.funder_merchant_id
    if campaign.packet_amount_fen is None and not funded_by_merchant:
        return  # awards only, no discount: platform-funded rebates leave the platform's own account
    if funded_by_merchant and (merchant_id is None or campaign.funder_merchant_id == merchant_id):
        return
    if campaign.packet_amount_fen is None:  # a merchant's rebates come from its own order money, not another's
        raise StateConflict(
            f"campaign {campaign.id} is funded by merchant {campaign.funder_merchant_id}: its rebates are shared "
            f"from that merchant's own orders, not from merchant {merchant_id}'s",
            code="rebate_would_pool_money",
        )
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
    """A merchant-funded campaign with a rule that can pay a person cash: its default form, any form the person
    may choose instead (``forms``), or its fallback when a rail refuses. Only a campaign funded from the
    merchant's sales: one still on a deposit (activated in direct mode) pays from the deposit, which the
    platform already holds, by the form's own rail — sharing it too would charge the merchant twice."""
    if campaign.funder_type != FunderType.MERCHANT_DEPOSIT or not campaign.funded_from_sales:
        return False
    roles = PERSON_ROLES + (("issuer",) if campaign.issuer_user_id is not None else ())
    return any(
        rule.role in roles
        and max_rate_bps(rule) > 0
        and any(form in CASH_FORMS for form in (*rule.allowed_forms, rule.fallback_form))
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
