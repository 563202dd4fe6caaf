"""Probe 17: campaigns and the rebate engine, as a campaign operator running a promotion.

An order-paid trigger ("a paid order of at least 100 yuan earns a 5-yuan packet") limited to a region or to days
of the week: a buyer outside them pays, and the packet is not theirs to get. The payment must stand (WeChat has
the buyer's money) and simply issue no packet, as every other trigger does (``rebate.triggers._issue_one``).
``rebate.payments._issue_triggered_packets`` lets the packet's refusal (``Invalid`` outside_region,
``StateConflict`` outside_window / packet_validity_over) escape, and the whole payment fails: the callback
answers 500 for ever and the order is never paid.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from models import Campaign, Order, RedPacket, db, utcnow
from models.base import beijing
from rebate import create_order
from rebate.orders import LineRequest

QUIET = {"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]}


def _order_paid_campaign(make_campaign, shop, **audience) -> Campaign:
    return make_campaign(
        QUIET,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=5_00,
        trigger={"kind": "order_paid", "min_order_fen": 100_00},
        **audience,
    )


def _not_today() -> list[int]:
    today = beijing(utcnow()).isoweekday()
    return [d for d in range(1, 8) if d != today]


@pytest.mark.parametrize(
    ("audience", "buyer_region"),
    [
        pytest.param(lambda: {"regions": ["beijing"]}, "shanghai", id="outside_region"),
        pytest.param(lambda: {"usage_windows": {"weekdays": _not_today()}}, None, id="outside_window"),
        pytest.param(lambda: {"packet_valid_until": utcnow() - timedelta(days=1)}, None, id="validity_over"),
    ],
)
def test_an_order_paid_trigger_whose_packet_the_buyer_cannot_get_leaves_the_payment_standing(
    make_user, make_merchant, make_product, make_campaign, pay, audience, buyer_region
):
    # given: a shop's order-paid campaign whose packet this buyer cannot get (region, day, validity)
    shop = make_merchant()
    product = make_product(shop, price_fen=150_00)
    campaign = _order_paid_campaign(make_campaign, shop, **audience())
    buyer = make_user(region=buyer_region)
    order = create_order(buyer, [LineRequest(product.id, 1)], None, utcnow())
    db.session.commit()

    # when: WeChat says the 150-yuan order is paid
    outcome = pay(order)

    # then: the payment is applied and no packet is issued (it raised the packet's refusal and rolled back)
    assert outcome == "applied"
    assert db.session.get(Order, order.id).status == "paid"
    assert db.session.execute(select(RedPacket.id).where(RedPacket.campaign_id == campaign.id)).first() is None


def test_a_refusal_of_the_campaign_itself_leaves_the_payment_standing_and_tells_an_operator(
    make_user, make_merchant, make_product, make_campaign, pay, monkeypatch
):
    """Not the buyer's audience but the campaign's own fault (here its rules): no packet, the payment stands, and
    an alert says so (a buyer outside the audience raises none)."""
    from models import Alert
    from rebate import payments
    from rebate.errors import StateConflict

    shop = make_merchant()
    product = make_product(shop, price_fen=150_00)
    campaign = _order_paid_campaign(make_campaign, shop)

    def refused(*args, **kwargs):
        raise StateConflict("a budgeted campaign's rules must all have caps", code="uncapped_rule")

    monkeypatch.setattr(payments, "issue_packet", refused)
    order = create_order(make_user(), [LineRequest(product.id, 1)], None, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    alerts = db.session.execute(select(Alert).where(Alert.kind == "order_paid_packet_refused")).scalars().all()
    assert [(a.subject, "uncapped_rule" in a.message) for a in alerts] == [(f"campaign {campaign.id}", True)]
