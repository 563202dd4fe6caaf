"""Probe 17: creating and paying orders as a shopper (and a double-spender) would. Both databases."""

from __future__ import annotations

import pytest

from models import OrderPacket, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest

CASHBACK = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}


def give(campaign, user, ref):
    packet = issue_packet(campaign, user, source="t", source_ref=ref, now=utcnow())
    db.session.commit()
    return packet


def stackable(make_campaign, face_fen, **fields):
    return make_campaign(
        CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=face_fen, max_packets_per_order=2, **fields
    )


def given_on(order) -> dict[int, int]:
    rows = db.session.query(OrderPacket.packet_id, OrderPacket.discount_fen).filter_by(order_id=order.id).all()
    return dict(rows)


@pytest.mark.parametrize("product_packet_first", [True, False])
def test_a_product_packet_and_a_category_packet_on_one_line_are_taken_in_either_listing(
    product_packet_first, make_campaign, make_user, make_merchant, make_product
):
    # given: a 10-yuan coffee; a 10-yuan packet for that coffee and a 2-yuan packet for drinks, stackable
    shop = make_merchant()
    coffee = make_product(shop, price_fen=10_00, category="drinks")
    for_coffee = stackable(make_campaign, 10_00, packet_products=[coffee.id])
    for_drinks = stackable(make_campaign, 2_00, packet_categories=["drinks"])
    alice = make_user()
    coffee_packet, drinks_packet = give(for_coffee, alice, "c"), give(for_drinks, alice, "d")
    ids = [coffee_packet.id, drinks_packet.id] if product_packet_first else [drinks_packet.id, coffee_packet.id]

    # when: alice spends both, in the order the mini-program happens to list them
    order = create_order(alice, [LineRequest(coffee.id, 1)], ids, utcnow())
    db.session.commit()

    # then: both are taken whichever came first (it had refused the drinks packet, packet_no_discount, when the
    # coffee packet was listed first: the coffee packet took the 9.99 and left the drinks packet nothing)
    assert (order.discount_fen, order.payable_fen) == (9_99, 1)
    given = given_on(order)
    assert set(given) == {coffee_packet.id, drinks_packet.id} and all(d > 0 for d in given.values())


@pytest.mark.parametrize("larger_first", [True, False])
def test_two_packets_for_anything_larger_than_the_order_are_taken_in_either_listing(
    larger_first, make_campaign, make_user, make_product
):
    # given: a 20-yuan order; a 30-yuan and a 10-yuan packet for anything, stackable
    big, small = stackable(make_campaign, 30_00), stackable(make_campaign, 10_00)
    alice = make_user()
    big_packet, small_packet = give(big, alice, "b"), give(small, alice, "s")
    product = make_product(price_fen=20_00)
    ids = [big_packet.id, small_packet.id] if larger_first else [small_packet.id, big_packet.id]

    # when
    order = create_order(alice, [LineRequest(product.id, 1)], ids, utcnow())
    db.session.commit()

    # then: 1 fen is paid and each packet gave something, in either listing (listed larger first, the second had
    # been refused)
    assert (order.discount_fen, order.payable_fen) == (19_99, 1)
    given = given_on(order)
    assert set(given) == {big_packet.id, small_packet.id} and all(d > 0 for d in given.values())


@pytest.mark.parametrize("food_packet_first", [True, False])
def test_a_packet_for_one_food_product_leaves_a_fen_of_it_to_a_packet_for_food(
    food_packet_first, make_campaign, make_user, make_merchant, make_product
):
    # given: a 9-yuan sandwich and a 100-yuan drink; a 9-yuan packet for the sandwich, a 1-yuan packet for food
    shop = make_merchant()
    sandwich = make_product(shop, price_fen=9_00, category="food")
    drink = make_product(shop, price_fen=100_00, category="drinks")
    for_sandwich = stackable(make_campaign, 9_00, packet_products=[sandwich.id])
    for_food = stackable(make_campaign, 1_00, packet_categories=["food"])
    alice = make_user()
    sandwich_packet, food_packet = give(for_sandwich, alice, "s"), give(for_food, alice, "f")
    ids = [food_packet.id, sandwich_packet.id] if food_packet_first else [sandwich_packet.id, food_packet.id]

    # when
    order = create_order(alice, [LineRequest(sandwich.id, 1), LineRequest(drink.id, 1)], ids, utcnow())
    db.session.commit()

    # then: the two share the sandwich's 9 yuan, in either listing
    assert order.discount_fen == 9_00
    given = given_on(order)
    assert set(given) == {sandwich_packet.id, food_packet.id} and all(d > 0 for d in given.values())
