"""Switching FUND_FLOW back from service_provider to direct: a campaign activated in service-provider mode is
funded from its merchant's own sales (profit sharing out of frozen order money), which a direct order, paid to
the platform, does not have. Its packets are refused on new orders (409 ``campaign_funded_from_sales``, as its
activation would be) and its rebates are not awarded on a direct order (the reason says why): never booked
against the merchant's sales claim, never queued on the profit-sharing rail for an order without sharing.
(Found by a probe: the rebate went to a profit-sharing payout that could never leave.)"""

from __future__ import annotations

from sqlalchemy import func, select

from ledger import account, balance, check_ledger
from models import AccountKind, Order, Payout, Rebate, db, utcnow
from rebate import issue_packet

RULES = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}]}


def sales_funded(make_merchant, make_campaign):
    shop = make_merchant()
    shop.sub_mchid = f"19{shop.id:08d}"
    campaign = make_campaign(
        RULES,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        funded_from_sales=True,
        fund_deposit_fen=0,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
        budget_limit_fen=1_000_00,
    )
    return shop, campaign


def own_sales(shop_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_OWN_SALES, "merchant", shop_id))


def test_a_new_direct_order_spending_its_packet_is_refused_and_writes_nothing(
    client, make_user, make_merchant, make_product, make_campaign, user_headers
):
    shop, campaign = sales_funded(make_merchant, make_campaign)
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="p1", now=utcnow())
    product = make_product(shop, price_fen=100_00)
    db.session.commit()
    body = {"lines": [{"product_id": product.id, "quantity": 1}], "red_packet_id": packet.id}
    response = client.post("/api/v1/orders", json=body, headers=user_headers(buyer, **{"Idempotency-Key": "o1"}))
    assert (response.status_code, response.json["error"]) == (409, "campaign_funded_from_sales"), response.json
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Order)).scalar_one() == 0
    assert db.session.get(type(packet), packet.id).status == "issued"
    # the same product without the packet still sells
    plain = client.post(
        "/api/v1/orders",
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
        headers=user_headers(buyer, **{"Idempotency-Key": "o2"}),
    )
    assert plain.status_code == 201, plain.json


def test_its_rebates_are_not_awarded_on_a_direct_order_and_nothing_is_queued(
    make_user, make_merchant, make_product, make_campaign, pay
):
    # given: a direct order opened with its packet before that refusal existed (``create_order`` left to route it)
    from tests.test_worked_examples import buy

    shop, campaign = sales_funded(make_merchant, make_campaign)
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="p2", now=utcnow())
    db.session.commit()
    order = buy(buyer, make_product(shop, price_fen=100_00), packet=packet)
    # when
    assert pay(order) == "applied"
    # then: no rebate paid, the reason said, no payout on any rail
    db.session.rollback()
    rebates = db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars().all()
    assert rebates and all(r.amount_fen == 0 for r in rebates)
    assert all(r.reason_code == "campaign_funded_from_sales" for r in rebates), [r.reason_code for r in rebates]
    assert db.session.execute(select(func.count()).select_from(Payout)).scalar_one() == 0
    assert own_sales(shop.id) == -10_00  # only the packet's face: the merchant's own discount on its own sale
    assert check_ledger().ok
