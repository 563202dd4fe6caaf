"""Probe 17: the what-if replay pays what the engine pays, fen by fen, for the same orders and rules."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from models import Rebate, db, utcnow
from rebate import create_order
from rebate.orders import LineRequest
from tests.test_simulate import NOW, admin, at, simulate  # noqa: F401 - fixtures


def _engine_awarded(campaign_id: int) -> dict[str, int]:
    rows = db.session.execute(
        select(Rebate.role, func.sum(Rebate.original_fen))
        .where(Rebate.campaign_id == campaign_id, Rebate.original_fen > 0)
        .group_by(Rebate.role)
    ).all()
    return {role: int(fen) for role, fen in rows}


def test_referral_campaign_with_a_paid_order_trigger_replays_the_orders_the_engine_paid(
    client,
    admin,
    make_campaign,
    make_user,
    make_product,
    pay,  # noqa: F811
):
    # given: a referral campaign issuing on paid orders from 50 yuan: the buyer gets 5 %, the inviter 10 %
    rules = {
        "applies_to": "referral",
        "roles": [
            {"role": "consumer", "rate_bps": 500, "form": "balance"},
            {"role": "inviter", "rate_bps": 1000, "form": "balance"},
        ],
    }
    campaign = make_campaign(rules, trigger={"kind": "order_paid", "min_order_fen": 50_00})
    small, big = make_product(price_fen=30_00), make_product(price_fen=60_00)
    with at(NOW - timedelta(days=5)):
        invitee = make_user(inviter=make_user())
        loner = make_user()
    with at(NOW - timedelta(days=2)):
        for buyer in (invitee, loner):
            for product in (small, big):
                order = create_order(buyer, [LineRequest(product.id, 1)], None, utcnow())
                db.session.commit()
                pay(order, at=utcnow())

    # when: the current rules are replayed
    body = simulate(client, campaign.id, admin, rules=rules, days=30).json

    # then: fen by fen what the engine paid
    engine = _engine_awarded(campaign.id)
    replayed = {role: r["amount_fen"] for role, r in body["current"]["by_role"].items() if r["amount_fen"]}
    assert replayed == engine, (replayed, engine)


def test_stacked_packets_of_two_campaigns_replay_the_cash_room_the_first_left(
    client,
    admin,
    make_campaign,
    make_merchant,
    make_user,
    make_product,
    pay,  # noqa: F811
):
    # given: two platform campaigns' packets stacked on one order; each gives the buyer 60 % as balance, and a
    # cash rebate never exceeds what the buyer paid: the second campaign's is cut to what the first left
    from rebate import issue_packet

    rules = {"roles": [{"role": "consumer", "rate_bps": 6000, "form": "balance"}]}
    shop = make_merchant("stack shop")
    first, second = (
        make_campaign(rules, packet_amount_fen=10_00, max_packets_per_order=2, packet_merchant_id=shop.id)
        for _ in range(2)
    )
    with at(NOW - timedelta(days=2)):
        buyer = make_user()
        packets = [issue_packet(c, buyer, source="test", source_ref=f"s{c.id}", now=utcnow()) for c in (first, second)]
        db.session.commit()
        order = create_order(
            buyer, [LineRequest(make_product(shop, price_fen=120_00).id, 1)], [p.id for p in packets], utcnow()
        )
        db.session.commit()
        pay(order, at=utcnow())

    # when: each campaign's current rules are replayed
    for campaign in (first, second):
        body = simulate(client, campaign.id, admin, rules=rules, days=30).json
        # then: fen by fen what the engine paid
        engine = _engine_awarded(campaign.id)
        replayed = {role: r["amount_fen"] for role, r in body["current"]["by_role"].items() if r["amount_fen"]}
        assert replayed == engine, (campaign.id, replayed, engine)


def _engine_standing(campaign_id: int) -> dict[str, int]:
    """What each role's rebates stand at now (paid and still held), after the refunds took their part back."""
    rows = db.session.execute(
        select(Rebate.role, func.sum(Rebate.amount_fen + Rebate.held_fen))
        .where(Rebate.campaign_id == campaign_id)
        .group_by(Rebate.role)
    ).all()
    return {role: int(fen) for role, fen in rows if fen}


def test_a_partly_refunded_order_replays_no_more_than_the_payment_awarded(
    client,
    admin,
    make_campaign,
    make_merchant,
    make_user,
    make_product,
    pay,  # noqa: F811
):
    # given: the buyer gets 30 % of the order total from 80 yuan, the inviter 30 % of it, both as balance; a
    # 60-yuan packet on a 100-yuan order leaves 40 paid, so the inviter got only the 10 yuan the buyer's 30 left
    from rebate import apply_refund, begin_refund, issue_packet
    from tests.money_helpers import app_money

    rules = {
        "roles": [
            {"role": "consumer", "rate_bps": 3000, "form": "balance", "base": "order_total", "min_order_fen": 80_00},
            {"role": "inviter", "rate_bps": 3000, "form": "balance", "base": "order_total"},
        ]
    }
    shop = make_merchant("refund shop")
    campaign = make_campaign(rules, packet_amount_fen=60_00, packet_merchant_id=shop.id)
    with at(NOW - timedelta(days=3)):
        buyer = make_user(inviter=make_user())
        packet = issue_packet(campaign, buyer, source="test", source_ref="refund", now=utcnow())
        db.session.commit()
        order = create_order(buyer, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], packet.id, utcnow())
        db.session.commit()
        pay(order, at=utcnow())
        assert _engine_standing(campaign.id) == {"consumer": 30_00, "inviter": 10_00}
    # half of the payment is refunded: 50 yuan of goods left, below the buyer's minimum; the inviter's 30 % of
    # them (15 yuan) is more than the payment gave, so the inviter keeps the 10
    with at(NOW - timedelta(days=2)):
        begin_refund(order, "PROBE17-R1", 20_00)
        apply_refund(order.out_trade_no, "PROBE17-R1", 20_00, utcnow(), refund_id="wx-PROBE17-R1", money=app_money())
        db.session.commit()
    engine = _engine_standing(campaign.id)
    assert engine == {"inviter": 10_00}

    # when: the current rules are replayed
    body = simulate(client, campaign.id, admin, rules=rules, days=30).json

    # then: what the engine left standing, fen by fen
    replayed = {role: r["amount_fen"] for role, r in body["current"]["by_role"].items() if r["amount_fen"]}
    assert replayed == engine


def test_a_merchants_referral_campaign_page_says_its_rebates_count_only_at_that_merchant(
    client, make_campaign, make_merchant, make_user, make_product, pay
):
    # given: a shop's own referral campaign (its deposit pays inviters 10 %), issuing no packets
    shop, other = make_merchant("noodle bar"), make_merchant("other shop")
    rules = {"applies_to": "referral", "roles": [{"role": "inviter", "rate_bps": 1000, "form": "balance"}]}
    campaign = make_campaign(rules, funder_type="merchant_deposit", funder_merchant_id=shop.id)
    # the engine pays on the shop's orders only
    buyer = make_user(inviter=make_user())
    for merchant in (shop, other):
        order = create_order(buyer, [LineRequest(make_product(merchant, price_fen=50_00).id, 1)], None, utcnow())
        db.session.commit()
        pay(order)
    assert _engine_awarded(campaign.id) == {"inviter": 5_00}

    # when: a buyer reads its public rules
    limits = client.get(f"/api/v1/campaigns/{campaign.id}/rules").json["restrictions"]

    # then: they are not told "any merchant"; the one merchant is named
    assert not any("any merchant" in words for words in limits["words"]), limits["words"]
    assert limits["merchants"]["merchants"] == [{"merchant_id": shop.id, "name": "noodle bar"}]
    assert any("noodle bar" in words for words in limits["words"])
