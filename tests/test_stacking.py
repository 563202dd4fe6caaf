"""Stacking: one red packet per order unless every campaign involved allows more."""

from __future__ import annotations

import pytest

from ledger import account, balance
from models import AccountKind, Campaign, Order, OrderPacket, Rebate, RedPacket, db, utcnow
from rebate import apply_refund, begin_refund, close_order, create_order, issue_packet
from rebate.errors import RebateError
from rebate.orders import LineRequest
from tests.money_helpers import app_money

CASHBACK = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}


@pytest.fixture
def stackable(make_campaign):
    def make(face_fen=10_00, per_order=2, **fields):
        return make_campaign(
            CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=face_fen, max_packets_per_order=per_order, **fields
        )

    return make


def give(campaign, user, ref):
    packet = issue_packet(campaign, user, source="t", source_ref=ref, now=utcnow())
    db.session.commit()
    return packet


def budget(campaign):
    c = db.session.get(Campaign, campaign.id)
    db.session.refresh(c)
    return c.budget_reserved_fen, c.budget_committed_fen


def test_two_packets_of_a_stacking_campaign_combine_and_settle_once(stackable, make_user, make_product, pay):
    # given: a campaign allowing 2 packets per order; alice holds a 10 and a 5
    ten, five = stackable(), stackable(face_fen=5_00)
    five.max_packets_per_order = 2
    alice = make_user()
    a, b = give(ten, alice, "a"), give(five, alice, "b")
    # when: a 100-yuan order spends both
    order = create_order(alice, [LineRequest(make_product(price_fen=100_00).id, 1)], [a.id, b.id], utcnow())
    db.session.commit()
    assert (order.discount_fen, order.payable_fen, order.packet_id) == (15_00, 85_00, a.id)
    assert [(r.packet_id, r.discount_fen) for r in db.session.query(OrderPacket).order_by(OrderPacket.packet_id)] == [
        (a.id, 10_00),
        (b.id, 5_00),
    ]
    pay(order)
    # then: both packets used; each campaign paid its own discount and its 5 % once; budgets settled
    assert {p.status for p in db.session.query(RedPacket)} == {"used"}
    assert sorted(r.amount_fen for r in db.session.query(Rebate).filter_by(order_id=order.id)) == [4_25, 4_25]
    assert budget(ten) == (0, 10_00 + 4_25) and budget(five) == (0, 5_00 + 4_25)
    assert balance(account(AccountKind.PLATFORM_MARKETING_FUND)) == -(15_00 + 8_50)
    assert balance(account(AccountKind.USER_CASH, "user", alice.id)) == 8_50


def test_stacking_refusals_change_nothing(stackable, make_campaign, make_user, make_product):
    single = make_campaign(CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=10_00)  # one per order
    double = stackable()
    alice = make_user()
    s1, d1, d2, d3 = (
        give(single, alice, "s1"),
        give(double, alice, "d1"),
        give(double, alice, "d2"),
        give(double, alice, "d3"),
    )
    product = make_product(price_fen=100_00)
    cases = [
        ([s1.id, d1.id], "stacking_not_allowed"),
        ([d1.id, d2.id, d3.id], "stacking_not_allowed"),
        ([d1.id, d1.id], "packet_repeated"),
    ]
    for ids, code in cases:
        with pytest.raises(RebateError) as refused:
            create_order(alice, [LineRequest(product.id, 1)], ids, utcnow())
        db.session.rollback()
        assert refused.value.code == code
    assert db.session.query(Order).count() == 0
    assert {p.status for p in db.session.query(RedPacket)} == {"issued"}


def test_stacked_packets_never_discount_the_same_line_twice(stackable, make_user, make_merchant, make_product):
    # given: two 30-yuan packets for food; the order has 50 of food and 20 of drink
    shop = make_merchant()
    food_packets = stackable(face_fen=30_00, packet_categories=["food"])
    alice = make_user()
    a, b = give(food_packets, alice, "a"), give(food_packets, alice, "b")
    food, drink = (
        make_product(shop, price_fen=50_00, category="food"),
        make_product(shop, price_fen=20_00, category="drink"),
    )
    # when
    order = create_order(alice, [LineRequest(food.id, 1), LineRequest(drink.id, 1)], [a.id, b.id], utcnow())
    # then: the second packet only gets the 20 of food left
    assert (order.discount_fen, order.payable_fen) == (50_00, 20_00)


def test_closing_unlocks_and_a_full_refund_returns_every_packet_to_its_funder(stackable, make_user, make_product, pay):
    campaign = stackable()
    alice = make_user()
    product = make_product(price_fen=100_00)
    a, b = give(campaign, alice, "a"), give(campaign, alice, "b")
    unpaid = create_order(alice, [LineRequest(product.id, 1)], [a.id, b.id], utcnow())
    db.session.commit()
    close_order(unpaid, utcnow())
    db.session.commit()
    assert {p.status for p in db.session.query(RedPacket)} == {"issued"}
    paid = create_order(alice, [LineRequest(product.id, 1)], [a.id, b.id], utcnow())
    db.session.commit()
    pay(paid)
    begin_refund(paid, "R-stack", paid.payable_fen)
    apply_refund(paid.out_trade_no, "R-stack", paid.payable_fen, utcnow(), money=app_money())
    db.session.commit()
    assert balance(account(AccountKind.PLATFORM_MARKETING_FUND)) == 0
    assert balance(account(AccountKind.USER_CASH, "user", alice.id)) == 0
    assert budget(campaign) == (0, 0)


def test_the_order_api_takes_a_list_of_packets_but_not_both_forms(
    client, stackable, make_user, make_product, user_headers
):
    campaign = stackable()
    alice = make_user()
    a, b = give(campaign, alice, "a"), give(campaign, alice, "b")
    product = make_product(price_fen=100_00)
    both = client.post(
        "/api/v1/orders",
        headers=user_headers(alice),
        json={"lines": [{"product_id": product.id, "quantity": 1}], "red_packet_id": a.id, "red_packet_ids": [b.id]},
    )
    assert both.status_code == 422
    assert db.session.query(Order).count() == 0
    ok = client.post(
        "/api/v1/orders",
        headers=user_headers(alice),
        json={"lines": [{"product_id": product.id, "quantity": 1}], "red_packet_ids": [a.id, b.id]},
    )
    assert ok.status_code == 201, ok.json
    assert ok.json["discount_fen"] == 20_00
    assert ok.json["red_packets"] == [{"id": a.id, "discount_fen": 10_00}, {"id": b.id, "discount_fen": 10_00}]
