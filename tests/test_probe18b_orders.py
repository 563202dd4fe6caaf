"""Probe 18b: creating orders as a demanding shopper would (stacked packets over overlapping categories). Both
databases."""

from __future__ import annotations

import pytest

from models import Order, OrderPacket, PacketStatus, RedPacket, User, db, utcnow
from rebate import close_order, create_order, issue_packet
from rebate.orders import LineRequest, lock_order
from rebate.wallet import WalletAsk
from tests.concurrency import together
from tests.test_wallet import fund, wallet_of

CASHBACK = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}


def give(campaign, user, ref):
    packet = issue_packet(campaign, user, source="t", source_ref=ref, now=utcnow())
    db.session.commit()
    return packet


def stackable(make_campaign, face_fen, categories):
    return make_campaign(
        CASHBACK,
        budget_limit_fen=1_000_00,
        packet_amount_fen=face_fen,
        max_packets_per_order=3,
        packet_categories=categories,
    )


def given_on(order) -> dict[int, int]:
    rows = db.session.query(OrderPacket.packet_id, OrderPacket.discount_fen).filter_by(order_id=order.id).all()
    return dict(rows)


@pytest.mark.parametrize("coffee_line_first", [True, False])
def test_three_stacked_category_packets_take_all_they_can_whatever_the_lines_order(
    coffee_line_first, make_campaign, make_user, make_merchant, make_product
):
    # given: a 6-yuan coffee, a 6-yuan sandwich and a 2-yuan biscuit; stackable packets of 3 yuan for coffee or
    # food, 1 yuan for biscuits or food, and 7 yuan for biscuits or coffee
    shop = make_merchant()
    coffee = make_product(shop, price_fen=6_00, category="coffee")
    sandwich = make_product(shop, price_fen=6_00, category="food")
    biscuit = make_product(shop, price_fen=2_00, category="biscuits")
    alice = make_user()
    three = give(stackable(make_campaign, 3_00, ["coffee", "food"]), alice, "3")
    one = give(stackable(make_campaign, 1_00, ["biscuits", "food"]), alice, "1")
    seven = give(stackable(make_campaign, 7_00, ["biscuits", "coffee"]), alice, "7")
    lines = [LineRequest(coffee.id, 1), LineRequest(sandwich.id, 1), LineRequest(biscuit.id, 1)]
    if not coffee_line_first:
        lines = [lines[1], lines[0], lines[2]]

    # when: she spends all three
    order = create_order(alice, lines, [three.id, one.id, seven.id], utcnow())
    db.session.commit()

    # then: each packet gives its whole face (the 3 from the sandwich, the 1 from the sandwich or the biscuit, the
    # 7 from the coffee and the biscuit): 11 yuan off, whichever line the mini-program listed first (listed
    # coffee first, the 3-yuan packet took the coffee and left the 7-yuan one 5 yuan: 2 yuan lost)
    assert (order.discount_fen, order.payable_fen) == (11_00, 3_00)
    assert given_on(order) == {three.id: 3_00, one.id: 1_00, seven.id: 7_00}


def test_one_packet_on_orders_placed_at_once_is_held_by_one_and_comes_back_when_it_closes(
    app, make_campaign, make_user, make_merchant, make_product
):
    # given: a 10-yuan packet (stackable with another) and 6 yuan of balance; two products
    shop = make_merchant()
    first, second = make_product(shop, price_fen=30_00), make_product(shop, price_fen=40_00)
    alice = make_user()
    ten = give(stackable(make_campaign, 10_00, []), alice, "ten")
    five = give(stackable(make_campaign, 5_00, []), alice, "five")
    fund(alice, cash_fen=6_00)
    user_id, ten_id, five_id, product_ids = alice.id, ten.id, five.id, [first.id, second.id]

    def place(i: int) -> int:
        user = db.session.get(User, user_id)
        packets = [ten_id, five_id] if i % 2 else [five_id, ten_id]
        lines = [LineRequest(product_ids[i % 2], 1)]
        return create_order(user, lines, packets, utcnow(), wallet=WalletAsk(balance_fen=3_00)).id

    # when: six orders name both packets at the same instant, in either order
    results = together(6, place, app=app)

    # then: one holds them, the others are refused for the packets; the balance is held once
    made = [r for r in results if not isinstance(r, Exception)]
    assert len(made) == 1, results
    assert sorted(getattr(r, "code", repr(r)) for r in results if isinstance(r, Exception)) == ["packet_locked"] * 5
    db.session.rollback()
    order = db.session.get(Order, made[0])
    assert (order.discount_fen, order.balance_used_fen) == (15_00, 3_00)
    assert wallet_of(alice) == (3_00, 3_00, 0, 0)

    # when: it closes unpaid
    close_order(lock_order(order.out_trade_no), utcnow())
    db.session.commit()

    # then: both packets and the balance are back, each once
    assert {p.status for p in db.session.query(RedPacket)} == {PacketStatus.ISSUED}
    assert wallet_of(alice) == (6_00, 0, 0, 0)
