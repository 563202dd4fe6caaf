"""A demanding WeChat user's journey through the mini-program API (outside probes, area B): packets stacked on one
order, invite codes as people paste them, and the times a refusal names. Both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models import Order, OrderPacket, RedPacket, User, db, utcnow
from rebate import create_order, issue_packet
from rebate.errors import RebateError
from rebate.orders import LineRequest

CASHBACK = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}


def give(campaign, user, ref):
    packet = issue_packet(campaign, user, source="t", source_ref=ref, now=utcnow())
    db.session.commit()
    return packet


@pytest.mark.parametrize("general_first", [True, False])
def test_a_general_packet_listed_first_leaves_a_category_packet_its_own_lines(
    general_first, make_campaign, make_user, make_merchant, make_product
):
    # given: a 100-yuan packet for anything and a 50-yuan packet for food, stackable; 100 of food, 100 of drink
    shop = make_merchant()
    anything = make_campaign(CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=100_00, max_packets_per_order=2)
    food_only = make_campaign(
        CASHBACK,
        budget_limit_fen=1_000_00,
        packet_amount_fen=50_00,
        max_packets_per_order=2,
        packet_categories=["food"],
    )
    alice = make_user()
    general, food_packet = give(anything, alice, "g"), give(food_only, alice, "f")
    food = make_product(shop, price_fen=100_00, category="food")
    drink = make_product(shop, price_fen=100_00, category="drink")
    ids = [general.id, food_packet.id] if general_first else [food_packet.id, general.id]

    # when: alice spends both, in either order the mini-program lists them
    order = create_order(alice, [LineRequest(food.id, 1), LineRequest(drink.id, 1)], ids, utcnow())
    db.session.commit()

    # then: both packets take their whole face (the food packet on food, the general one on the rest): 150 off
    assert (order.discount_fen, order.payable_fen) == (150_00, 50_00)
    given = dict(db.session.query(OrderPacket.packet_id, OrderPacket.discount_fen).filter_by(order_id=order.id).all())
    assert given == {general.id: 100_00, food_packet.id: 50_00}


@pytest.mark.parametrize("general_first", [True, False])
def test_when_the_last_fen_is_reached_the_general_packet_is_cut_short_not_the_food_packet_refused(
    general_first, make_campaign, make_user, make_product
):
    # given: the same two packets (100 for anything, 50 for food) on an order of 100 of food only
    anything = make_campaign(CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=100_00, max_packets_per_order=2)
    food_only = make_campaign(
        CASHBACK,
        budget_limit_fen=1_000_00,
        packet_amount_fen=50_00,
        max_packets_per_order=2,
        packet_categories=["food"],
    )
    alice = make_user()
    general, food_packet = give(anything, alice, "g"), give(food_only, alice, "f")
    food = make_product(price_fen=100_00, category="food")
    ids = [general.id, food_packet.id] if general_first else [food_packet.id, general.id]

    # when
    order = create_order(alice, [LineRequest(food.id, 1)], ids, utcnow())
    db.session.commit()

    # then: 1 fen is paid; the food packet gives its 50, the general one the 49.99 left, in either listing
    assert (order.discount_fen, order.payable_fen) == (99_99, 1)
    given = dict(db.session.query(OrderPacket.packet_id, OrderPacket.discount_fen).filter_by(order_id=order.id).all())
    assert given == {general.id: 49_99, food_packet.id: 50_00}


def test_a_packet_not_valid_yet_names_its_start_in_beijing_time(make_campaign, make_user, make_product):
    # given: packets valid from 2099-03-10 00:00 Beijing time (16:00 UTC the day before)
    start = datetime(2099, 3, 9, 16, 0, tzinfo=UTC)
    campaign = make_campaign(
        CASHBACK,
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        packet_valid_from=start,
        packet_valid_until=start + timedelta(days=3),
    )
    alice = make_user()
    packet = give(campaign, alice, "early")

    # when: alice tries to spend it today
    with pytest.raises(RebateError) as refused:
        create_order(alice, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.rollback()

    # then: the refusal names the day and hour on her own clock, the one the campaign's rules page shows
    assert refused.value.code == "packet_not_yet_valid"
    assert "2099-03-10 00:00 Beijing time" in str(refused.value), str(refused.value)
    assert db.session.query(Order).count() == 0 and db.session.get(RedPacket, packet.id).status == "issued"


def test_a_friend_at_the_end_of_a_long_chain_of_invites_can_still_be_invited(client, user_headers, make_user):
    # given: a viral chain: each of 60 people invited the next one
    last = make_user()
    for _ in range(60):
        last = make_user(inviter=last)
    newbie = make_user()
    code = client.get("/api/v1/me/invite", headers=user_headers(last)).get_json()["invite_code"]

    # when: a newcomer binds the code of the last one
    resp = client.post("/api/v1/referrals/bind", json={"code": code}, headers=user_headers(newbie))

    # then: bound; there is no cycle (the newcomer invited nobody), so no "referral_cycle" refusal
    assert resp.status_code == 201, resp.get_json()
    db.session.rollback()
    assert db.session.get(User, newbie.id).inviter_id == last.id


def test_a_cycle_at_the_top_of_a_long_chain_is_still_refused(client, user_headers, make_user):
    # given: a newcomer (no inviter) at the top of a chain of 60 people they invited, directly or not
    top = make_user()
    last = top
    for _ in range(60):
        last = make_user(inviter=last)
    code = client.get("/api/v1/me/invite", headers=user_headers(last)).get_json()["invite_code"]

    # when: the top binds the code of the bottom
    resp = client.post("/api/v1/referrals/bind", json={"code": code}, headers=user_headers(top))

    # then: 409 referral_cycle, nothing written
    assert (resp.status_code, resp.get_json()["error"]) == (409, "referral_cycle")
    db.session.rollback()
    assert db.session.get(User, top.id).inviter_id is None


def test_a_packet_held_by_an_unpaid_order_says_which_order_and_until_when(make_campaign, make_user, make_product):
    # given: alice's packet is in an order she opened and left unpaid (it closes 30 minutes later)
    campaign = make_campaign(CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    alice = make_user()
    packet = give(campaign, alice, "held")
    product = make_product(price_fen=100_00)
    opened = utcnow().replace(second=0, microsecond=0) + timedelta(minutes=1)
    closes = (opened + timedelta(minutes=30, hours=8)).strftime("%Y-%m-%d %H:%M")  # Beijing is UTC+8
    unpaid = create_order(alice, [LineRequest(product.id, 1)], packet.id, opened)
    db.session.commit()

    # when: she tries the packet on a second order
    with pytest.raises(RebateError) as refused:
        create_order(alice, [LineRequest(product.id, 1)], packet.id, opened + timedelta(minutes=5))
    db.session.rollback()

    # then: 409 packet_locked, in words she can act on: which order holds it and when it comes back (Beijing)
    assert refused.value.code == "packet_locked"
    words = str(refused.value)
    assert unpaid.out_trade_no in words and f"{closes} Beijing time" in words, words
    assert "is locked" not in words
    assert db.session.query(Order).count() == 1


def test_a_used_packet_is_refused_in_words_not_by_its_state_name(make_campaign, make_user, make_product, pay):
    campaign = make_campaign(CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    alice = make_user()
    packet = give(campaign, alice, "spent")
    product = make_product(price_fen=100_00)
    pay(create_order(alice, [LineRequest(product.id, 1)], packet.id, utcnow()))

    with pytest.raises(RebateError) as refused:
        create_order(alice, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.rollback()

    assert refused.value.code == "packet_used"
    assert str(refused.value) == "this red packet has been spent on an order already"


def test_a_rebate_form_she_cannot_receive_is_refused_in_words_she_can_act_on(app, client, user_headers, make_user):
    # given: a person signed in through the mini-program only; coupon stocks are not configured here
    person = make_user(appid=app.config["WECHAT_APPID"])
    url = "/api/v1/me/preferences"

    # when: she reads her choices and asks for a cash red packet, then for a coupon
    choices = {c["form"]: c for c in client.get(url, headers=user_headers(person)).get_json()["choices"]}
    red = client.put(url, json={"rebate_form": "cash_red_packet"}, headers=user_headers(person))
    coupon = client.put(url, json={"rebate_form": "wechat_coupon"}, headers=user_headers(person))

    # then: 409 with what to do, in words, never the internal names of the forms or of a "rail"
    assert (red.status_code, red.get_json()["error"]) == (409, "rebate_form_unavailable")
    assert (coupon.status_code, coupon.get_json()["error"]) == (409, "rebate_form_unavailable")
    words = [red.get_json()["message"], coupon.get_json()["message"]]
    words += [choices["cash_red_packet"]["why_not"], choices["wechat_coupon"]["why_not"]]
    for text in words:
        assert "cash_red_packet" not in text and "wechat_coupon" not in text and "rail" not in text, text
    assert "sign in there once" in red.get_json()["message"], words
    assert "WeChat Pay coupons" in coupon.get_json()["message"], words


def test_the_packet_list_never_shows_usable_a_packet_an_order_refuses_as_expired(
    client, user_headers, make_campaign, make_user, make_product
):
    campaign = make_campaign(CASHBACK, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    alice = make_user()
    packet = give(campaign, alice, "lapsed")
    packet.expires_at = utcnow() - timedelta(seconds=1)  # it lapsed a second ago; the expiry job has not run
    db.session.commit()
    listed = client.get("/api/v1/me/red-packets", headers=user_headers(alice)).get_json()["items"][0]
    product = make_product(price_fen=100_00)
    order = client.post(
        "/api/v1/orders",
        json={"lines": [{"product_id": product.id, "quantity": 1}], "red_packet_id": packet.id},
        headers=user_headers(alice),
    )
    assert (order.status_code, order.get_json()["error"]) == (409, "packet_expired")
    assert listed["status"] == "expired"


def test_a_rebates_explanation_names_its_form_in_words(app, make_user, make_product, make_campaign, pay):
    """The explanation a customer-service agent reads out says "as WeChat change", never the form's code."""
    from models import Rebate
    from web.views import explain

    rules = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}]}
    campaign = make_campaign(rules, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="t", source_ref="w", now=utcnow())
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    rebate = db.session.query(Rebate).filter_by(order_id=order.id).one()
    assert explain(rebate) == "Consumer rebate of 9.00 yuan as WeChat change."
