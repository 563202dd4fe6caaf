"""Property: whatever the rules, tiers, double windows, referral and attribution, one payment never pays more
than a budget allows or more cash than the buyer paid, and the ledger stays balanced.

Each scenario says up front whether its packet can be issued (the budget and the funder's deposit both hold
its reservation: face value + every cap) or which of the two cannot; the test checks that exactly that
happens, so no example quietly turns into a packet-less order.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from ledger import check_ledger
from models import Campaign, Merchant, Order, PacketStatus, Product, Rebate, RedPacket, User, UserIdentity, db, utcnow
from rebate import create_order, issue_packet
from rebate.errors import BudgetExhausted, DepositExhausted, Invalid
from rebate.orders import LineRequest
from rebate.rules import CASH_FORMS, Form
from tests.conftest import fund_deposit
from tests.payment_helpers import pay_as_wechat

FORMS = [Form.BALANCE, Form.WECHAT_CHANGE, Form.POINTS, Form.CASH_RED_PACKET, Form.WECHAT_COUPON]
PACKET = ["issued", "over_budget", "over_deposit"]  # what the scenario's packet meets
_seq = count(1)


def role_rule(role: str, form: str):
    return st.fixed_dictionaries(
        {
            "role": st.just(role),
            "rate_bps": st.integers(0, 3000),
            "form": st.just(form),
            "base": st.sampled_from(["paid", "order_total"]),
            "cap_fen": st.integers(1, 200_00),
            "min_order_fen": st.integers(0, 100_00),
        },
        optional={
            "tiers": st.lists(
                st.fixed_dictionaries({"min_order_fen": st.integers(0, 300_00), "rate_bps": st.integers(0, 3000)}),
                max_size=2,
                unique_by=lambda t: t["min_order_fen"],
            ),
            "fallback_form": st.sampled_from([Form.BALANCE, Form.POINTS]),
        },
    )


@st.composite
def scenario(draw):
    window = draw(st.booleans())
    consumer = draw(role_rule("consumer", draw(st.sampled_from(FORMS))))
    issuer = draw(role_rule("issuer", Form.MERCHANT_CREDIT))
    inviter = draw(role_rule("inviter", draw(st.sampled_from(FORMS))))
    if window:
        now = utcnow()
        consumer["windows"] = [
            {
                "starts_at": (now - timedelta(hours=1)).isoformat(),
                "ends_at": (now + timedelta(hours=1)).isoformat(),
                "factor_bps": 20_000,
            }
        ]
    face = draw(st.integers(1, 150_00))
    reservation = face + consumer["cap_fen"] + issuer["cap_fen"]
    packet = draw(st.sampled_from(PACKET))
    enough, short = st.integers(reservation, reservation + 1_000_00), st.integers(1, reservation - 1)
    return {
        "packet_rules": {"roles": [consumer, issuer], "attribution_days": 30},
        "referral_rules": {"applies_to": "referral", "roles": [inviter]},
        "packet": packet,
        "budget": draw(short if packet == "over_budget" else enough),
        "deposit": draw(short if packet == "over_deposit" else enough),
        "referral_budget": draw(st.integers(0, 100_00)),
        "face": face,
        "prices": draw(st.lists(st.integers(1, 300_00), min_size=2, max_size=2)),
    }


def fits(rules: dict) -> bool:
    from rebate.rules import RuleError, parse_rules

    try:
        parse_rules(rules, budgeted=True)
    except RuleError:
        return False
    return True


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=scenario())
def test_no_payment_overspends_a_budget_or_pays_more_cash_than_was_paid(app, s):
    assume(fits(s["packet_rules"]) and fits(s["referral_rules"]))  # an invalid example, never a silent pass
    n = next(_seq)
    shop = Merchant(name=f"prop-shop-{n}")
    db.session.add(shop)
    db.session.flush()
    products = [
        Product(merchant_id=shop.id, name=f"p{n}-{i}", category="c", price_fen=p) for i, p in enumerate(s["prices"])
    ]
    inviter, buyer = User(), User()
    db.session.add_all([*products, inviter, buyer])
    db.session.flush()
    buyer.inviter_id, buyer.invited_at = inviter.id, utcnow()
    db.session.add_all(
        [UserIdentity(user_id=u.id, appid="wx-prop", openid=f"prop-{n}-{u.id}") for u in (inviter, buyer)]
    )
    campaign = Campaign(
        name=f"prop-{n}",
        status="active",
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=s["budget"],
        packet_amount_fen=s["face"],
        packet_merchant_id=shop.id,
    )
    referral = Campaign(
        name=f"prop-ref-{n}",
        status="active",
        issuer_type="platform",
        funder_type="platform_fund",
        budget_limit_fen=s["referral_budget"] or None,
    )
    db.session.add_all([campaign, referral])
    db.session.flush()
    from models import CampaignRules

    if referral.budget_limit_fen is None:
        s["referral_rules"]["roles"][0].pop("cap_fen", None)
    db.session.add_all(
        [
            CampaignRules(campaign_id=campaign.id, version=1, rules=s["packet_rules"]),
            CampaignRules(campaign_id=referral.id, version=1, rules=s["referral_rules"]),
        ]
    )
    fund_deposit(shop.id, s["deposit"])
    db.session.commit()

    orders = []
    if s["packet"] == "issued":
        packet_ids = [issue_packet(campaign, buyer, source="prop", source_ref=str(n), now=utcnow()).id]
        db.session.commit()
    else:  # refused for exactly the reason the scenario set up; the referral and plain orders still run
        refusal = DepositExhausted if s["packet"] == "over_deposit" else BudgetExhausted
        with pytest.raises(refusal) as refused:
            issue_packet(campaign, buyer, source="prop", source_ref=str(n), now=utcnow())
        assert type(refused.value) is refusal
        db.session.rollback()
        packet_ids = None
    if packet_ids and products[0].price_fen == 1:  # WeChat's minimum is 1 fen: a packet cannot take it off
        with pytest.raises(Invalid, match="would take nothing off this order"):
            create_order(buyer, [LineRequest(products[0].id, 1)], packet_ids, utcnow())
        db.session.rollback()
        packet_ids = None
    for i, product in enumerate(products):
        order = create_order(buyer, [LineRequest(product.id, 1)], packet_ids if i == 0 else None, utcnow())
        db.session.commit()
        pay_as_wechat(order.out_trade_no, f"tx-{order.out_trade_no}", order.payable_fen, utcnow())
        db.session.commit()
        orders.append(order.id)
    if packet_ids:
        assert db.session.get(RedPacket, packet_ids[0]).status == PacketStatus.USED, "the first order spent it"

    for c in (campaign, referral):
        db.session.refresh(c)
        assert c.budget_reserved_fen >= 0 and c.budget_committed_fen >= 0
        if c.budget_limit_fen is not None:
            assert c.budget_reserved_fen + c.budget_committed_fen <= c.budget_limit_fen
    for order_id in orders:
        order = db.session.get(Order, order_id)
        cash = db.session.execute(
            select(func.coalesce(func.sum(Rebate.original_fen), 0)).where(
                Rebate.order_id == order_id, Rebate.form.in_(list(CASH_FORMS))
            )
        ).scalar_one()
        assert cash <= order.paid_fen
        assert all(r.amount_fen >= 0 for r in db.session.query(Rebate).filter_by(order_id=order_id))
    assert check_ledger().ok
