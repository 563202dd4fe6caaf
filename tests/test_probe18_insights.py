"""Probes of the insights (round 18): effect reports against the calendar and the rows, the trace's scoping."""

from __future__ import annotations

from datetime import UTC, date, datetime

from insights.reports import overview
from jobs.insights import rebuild
from models import db
from models.base import BEIJING
from tests.test_reports import PRODUCTS, plant_order


def bj(*args) -> datetime:
    return datetime(*args, tzinfo=BEIJING).astimezone(UTC)


# -- YoY of whole months: February against the whole February a year earlier, its 29th included ----------------


def test_yoy_of_a_whole_february_compares_with_the_whole_february_a_year_earlier(
    make_merchant, make_product, make_user
):
    # given: 100 yuan sold on 29 February 2028 (a leap day) and 100 yuan in February 2029
    shop = make_merchant()
    PRODUCTS[shop.id] = make_product(shop).id
    buyer = make_user()
    plant_order(buyer, shop, bj(2028, 2, 29, 12), [("book", 100_00)])
    plant_order(buyer, shop, bj(2029, 2, 10, 12), [("book", 100_00)])
    db.session.commit()
    rebuild([date(2028, 2, 29), date(2029, 2, 10)], bj(2029, 3, 10))
    # when: the month of February 2029 is reported
    change = overview(date(2029, 2, 1), date(2029, 2, 28), shop.id, "month")["sales_change"]
    # then: a year earlier is the whole of February 2028, as the previous month is the whole of January: +0 %
    assert change["year_ago"] == {"from": "2028-02-01", "to": "2028-02-29", "net_sales_fen": 100_00}
    assert change["yoy_bps"] == 0
    # and twelve whole months ending with it compare with the twelve before, their last February whole too
    change = overview(date(2028, 3, 1), date(2029, 2, 28), shop.id, "month")["sales_change"]
    assert change["year_ago"]["to"] == "2028-02-29" and change["year_ago"]["net_sales_fen"] == 100_00


# -- merchant staff tracing a platform packet spent at their shop, given back and spent at another shop --------


def test_merchant_staff_trace_of_a_packet_now_on_another_shops_order_names_no_order_of_that_shop(
    make_campaign, make_merchant, make_user, make_product, make_operator, client, pay, time_machine
):
    from models import Order, RedPacket
    from rebate import create_order, issue_packet
    from rebate.orders import LineRequest
    from tests.test_reports_truth import refund

    # given: a platform packet (given back on a full refund) spent at shop A, refunded, then spent at shop B
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}
    campaign = make_campaign(rules, budget_limit_fen=1_000_00, packet_amount_fen=10_00, restore_packet_on_refund=True)
    shop_a, shop_b = make_merchant(), make_merchant()
    buyer = make_user()
    time_machine.move_to(bj(2026, 3, 5, 10), tick=False)
    packet = issue_packet(campaign, buyer, source="test", source_ref="two-shops", now=bj(2026, 3, 5, 10))
    db.session.commit()
    product_a, product_b = make_product(shop_a, price_fen=110_00), make_product(shop_b, price_fen=120_00)
    at_a = create_order(buyer, [LineRequest(product_a.id, 1)], packet.id, bj(2026, 3, 5, 10))
    db.session.commit()
    assert pay(at_a, at=bj(2026, 3, 5, 10)) == "applied"
    time_machine.move_to(bj(2026, 3, 6, 11), tick=False)
    refund(db.session.get(Order, at_a.id), "R-two-shops", at_a.payable_fen, bj(2026, 3, 6, 11))
    time_machine.move_to(bj(2026, 3, 8, 9), tick=False)
    at_b = create_order(buyer, [LineRequest(product_b.id, 1)], packet.id, bj(2026, 3, 8, 9))
    db.session.commit()
    assert pay(at_b, at=bj(2026, 3, 8, 9)) == "applied"
    assert db.session.get(RedPacket, packet.id).order_id == at_b.id
    # when: shop A's staff trace the packet (they see it: it was spent on their order)
    _, staff = make_operator("merchant_staff", merchant=shop_a)
    body = client.get(f"/admin/api/trace/packets/{packet.id}", headers=staff).json
    # then: their own use is there, but nothing names shop B's order: not the order, the history, nor the packet
    assert body["order"] is None
    assert at_a.out_trade_no in "\n".join(body["lines"])
    assert body["packet"]["order_id"] is None
    assert f"(#{at_b.id})" not in "\n".join(body["lines"]) and at_b.out_trade_no not in repr(body)


def test_merchant_staff_trace_of_a_packet_earned_at_another_shop_names_no_order_of_that_shop(
    make_campaign, make_merchant, make_user, make_product, make_operator, client, pay, time_machine
):
    from models import RedPacket
    from rebate import create_order
    from rebate.orders import LineRequest

    # given: a platform campaign giving a 10-yuan packet for a paid order; earned at shop B, spent at shop A
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}
    make_campaign(
        rules, budget_limit_fen=1_000_00, packet_amount_fen=10_00, trigger={"kind": "order_paid", "min_order_fen": 0}
    )
    shop_a, shop_b = make_merchant(), make_merchant()
    buyer = make_user()
    time_machine.move_to(bj(2026, 3, 5, 10), tick=False)
    at_b = create_order(buyer, [LineRequest(make_product(shop_b, price_fen=50_00).id, 1)], None, bj(2026, 3, 5, 10))
    db.session.commit()
    assert pay(at_b, at=bj(2026, 3, 5, 10)) == "applied"
    packet = db.session.query(RedPacket).filter_by(owner_id=buyer.id, source_ref=at_b.out_trade_no).one()
    at_a = create_order(buyer, [LineRequest(make_product(shop_a, price_fen=110_00).id, 1)], packet.id, bj(2026, 3, 6))
    db.session.commit()
    assert pay(at_a, at=bj(2026, 3, 6)) == "applied"
    # when: shop A's staff trace the packet spent at their shop
    _, staff = make_operator("merchant_staff", merchant=shop_a)
    body = client.get(f"/admin/api/trace/packets/{packet.id}", headers=staff).json
    # then: they read that it was spent on their order, not the number of the order shop B sold
    assert body["order"]["id"] == at_a.id
    assert at_b.out_trade_no not in repr(body)
    assert body["packet"]["source"] == "order_paid" and body["packet"]["source_ref"] is None
    # while the platform's operators read where it came from
    _, admin = make_operator("admin")
    body = client.get(f"/admin/api/trace/packets/{packet.id}", headers=admin).json
    assert body["packet"]["source_ref"] == at_b.out_trade_no and at_b.out_trade_no in body["history"][0]["line"]


# -- merchant staff tracing a challenge prize spent at their shop: the friends' challenge is not their business --


def test_merchant_staff_trace_of_a_challenge_prize_spent_at_their_shop_tells_nothing_of_the_challenge(
    make_user, make_merchant, make_product, make_operator, client, pay
):
    from datetime import timedelta

    import time_machine
    from sqlalchemy import select

    from challenges import ChallengeSpec, create_challenge, join_challenge, record_steps, settle_challenge
    from models import ChallengePrize
    from rebate import create_order
    from rebate.orders import LineRequest
    from tests.challenge_helpers import DAY1, DAY2, DAY3, NOW, at_beijing, fund

    # given: Bob lost a private step challenge to Alice; his stake is Alice's 5-yuan packet
    alice, bob = make_user(), make_user()
    fund(alice.id, 20_00)
    fund(bob.id, 10_00)
    db.session.commit()
    spec = ChallengeSpec(kind="steps", title="Bob owes me dinner", days=2, stake=5_00, start_day=DAY1)
    challenge = create_challenge(alice.id, spec, NOW, group=("wecom", "chat-1"))
    join_challenge(challenge.id, bob.id, NOW + timedelta(minutes=5))
    morning = at_beijing(DAY3, 8)
    record_steps(alice.id, [(DAY1, 12_000), (DAY2, 9_000)], morning)
    record_steps(bob.id, [(DAY1, 8_000), (DAY2, 7_000)], morning)
    assert settle_challenge(challenge.id, morning) is True
    db.session.commit()
    packet_id = db.session.execute(select(ChallengePrize.packet_id)).scalar_one()
    # Alice spends it at a tea shop, which sponsors nothing
    shop = make_merchant("tea shop")
    with time_machine.travel(morning + timedelta(hours=2), tick=False):
        order = create_order(alice, [LineRequest(make_product(shop, price_fen=20_00).id, 1)], packet_id, morning)
        db.session.commit()
        assert pay(order, at=morning + timedelta(hours=2)) == "applied"
    # when: the shop's staff trace the packet (theirs to see: spent on their order)
    _, staff = make_operator("merchant_staff", merchant=shop)
    answer = client.get(f"/admin/api/trace/packets/{packet_id}", headers=staff)
    assert answer.status_code == 200
    body = answer.json
    # then: they read the packet and their order, but not the friends' challenge: neither its title nor its people
    assert body["order"]["id"] == order.id
    assert body["challenge"] is None and body["packet"]["source_ref"] is None
    assert body["history"][0]["line"].endswith("(source challenge).")
    assert "Bob owes me dinner" not in repr(body) and f"challenge #{challenge.id}" not in "\n".join(body["lines"])
    # as the challenge's own page answers them 404 (their campaign does not sponsor it)
    assert client.get(f"/admin/api/challenges/{challenge.id}", headers=staff).status_code == 404
    # while the platform's operators read it all
    _, admin = make_operator("admin")
    assert client.get(f"/admin/api/trace/packets/{packet_id}", headers=admin).json["challenge"]["title"] == spec.title
