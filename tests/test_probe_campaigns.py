"""Probe: campaign administration (activation against a shared deposit, changes, the what-if, the trace).

A merchant's campaigns share its marketing deposit: each claim is covered on top of the live reservations of
every campaign the merchant funds. Activation (and raising a running campaign's budget) needs the deposit to
hold what the budget may still commit: money already promised to the other campaigns' live packets is not
held for this one, so it is counted out (their unspent budgets are not: claims share the deposit under its lock).
"""

from __future__ import annotations

from sqlalchemy import func, select

from ledger import account, balance
from models import AccountKind, Alert, Campaign, Rebate, db, utcnow
from rebate import issue_packet

CAPPED = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]}  # reserves face + 1
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def _running_with_two_packets_out(make_campaign, make_user, merchant_id: int) -> Campaign:
    """A running campaign of the merchant on a 63-yuan deposit, two of its 21-yuan reservations out (42 yuan)."""
    campaign = make_campaign(
        CAPPED,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant_id,
        issuer_type="merchant",
        issuer_merchant_id=merchant_id,
        fund_deposit_fen=63_00,
        packet_amount_fen=20_00,
        trigger={"kind": "claim"},
        claim_limits=NO_LIMITS,
    )
    for ref in ("a", "b"):
        issue_packet(db.session.get(Campaign, campaign.id), make_user(), source="t", source_ref=ref, now=utcnow())
        db.session.commit()
    return campaign


def _draft(client, headers, merchant_id: int, budget_fen: int) -> int:
    sent = {
        "name": "second",
        "issuer_type": "merchant",
        "issuer_merchant_id": merchant_id,
        "funder_type": "merchant_deposit",
        "funder_merchant_id": merchant_id,
        "budget_limit_fen": budget_fen,
        "packet_amount_fen": 20_00,
        "trigger": {"kind": "claim"},
        "claim_limits": NO_LIMITS,
        "rules": CAPPED,
    }
    created = client.post("/admin/api/campaigns", json=sent, headers=headers)
    assert created.status_code == 201, created.get_json()
    return created.get_json()["id"]


def test_activation_counts_what_the_merchants_other_campaigns_packets_already_reserved(
    client, make_operator, make_campaign, make_user, user_headers
):
    # given: 42 of the merchant's 63-yuan deposit reserved by another campaign's live packets
    staff_op, staff = make_operator("merchant_staff")
    merchant_id = staff_op.merchant_id
    _running_with_two_packets_out(make_campaign, make_user, merchant_id)
    second = _draft(client, staff, merchant_id, 42_00)

    # when: a second campaign with a 42-yuan budget is activated on the same deposit (21 yuan free)
    refused = client.post(f"/admin/api/campaigns/{second}/activate", json={"reason": "go live"}, headers=staff)

    # then: 409 deposit_exhausted naming what is promised, still a draft (it used to go "active" and its
    # first claim was refused and paused it, alerting an operator)
    assert (refused.status_code, refused.get_json()["error"]) == (409, "deposit_exhausted")
    assert "4200 fen of it promised" in refused.get_json()["message"]
    db.session.rollback()
    assert db.session.get(Campaign, second).status == "draft"

    # when: its budget is lowered to what is free, it runs and its claim is covered
    lowered = client.patch(
        f"/admin/api/campaigns/{second}", json={"budget_limit_fen": 21_00, "reason": "fit"}, headers=staff
    )
    assert lowered.status_code == 200
    allowed = client.post(f"/admin/api/campaigns/{second}/activate", json={"reason": "go live"}, headers=staff)
    assert (allowed.status_code, allowed.get_json()["status"]) == (200, "active")
    claimed = client.post(f"/api/v1/campaigns/{second}/claim", headers=user_headers(make_user()))
    assert claimed.status_code == 201, claimed.get_json()
    db.session.rollback()
    assert db.session.get(Campaign, second).status == "active"
    assert db.session.execute(select(Alert.kind)).scalars().all() == []

    # and: raising its budget past what the deposit holds beyond the others' packets is refused, unchanged
    raised = client.patch(
        f"/admin/api/campaigns/{second}", json={"budget_limit_fen": 42_00, "reason": "more"}, headers=staff
    )
    assert (raised.status_code, raised.get_json()["error"]) == (409, "deposit_exhausted")
    db.session.rollback()
    assert db.session.get(Campaign, second).budget_limit_fen == 21_00
    deposit = balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))
    assert deposit == 63_00


def test_a_campaign_whose_own_packets_are_reserved_still_activates_again_on_its_deposit(
    client, make_operator, make_campaign, make_user
):
    # given: a running campaign (no budget) whose two packets reserve 42 of its 63-yuan deposit, then paused
    staff_op, staff = make_operator("merchant_staff")
    campaign = _running_with_two_packets_out(make_campaign, make_user, staff_op.merchant_id)
    url = f"/admin/api/campaigns/{campaign.id}"
    assert client.post(f"{url}/pause", json={"reason": "lunch"}, headers=staff).status_code == 200

    # when: activated again: its own reservations are not counted against it
    again = client.post(f"{url}/activate", json={"reason": "back"}, headers=staff)

    # then: it runs
    assert (again.status_code, again.get_json()["status"]) == (200, "active")


def test_a_budget_cut_below_one_packets_reservation_is_refused_as_at_create(client, make_operator, make_campaign):
    # given: a running platform campaign of 20-yuan packets with a 1-yuan cap (one claim reserves 21 yuan),
    # nothing claimed yet
    _, admin = make_operator("admin")
    campaign = make_campaign(CAPPED, packet_amount_fen=20_00, budget_limit_fen=100_00, trigger={"kind": "claim"})

    # when: its budget is cut to 10 yuan (create and a new rules version refuse such a budget)
    answer = client.patch(
        f"/admin/api/campaigns/{campaign.id}", json={"budget_limit_fen": 10_00, "reason": "cut"}, headers=admin
    )

    # then: 422 budget_below_one_packet naming the fields, the budget unchanged (it used to answer 200, and every
    # claim then found the untouched budget "exhausted")
    assert (answer.status_code, answer.get_json()["error"]) == (422, "budget_below_one_packet")
    assert "budget_limit_fen" in answer.get_json()["message"]
    db.session.rollback()
    assert db.session.get(Campaign, campaign.id).budget_limit_fen == 100_00
    # exactly one packet's reservation fits
    fits = client.patch(
        f"/admin/api/campaigns/{campaign.id}", json={"budget_limit_fen": 21_00, "reason": "cut"}, headers=admin
    )
    assert fits.status_code == 200, fits.get_json()


REFERRAL = {
    "applies_to": "referral",
    "roles": [{"role": "inviter", "rate_bps": 1000, "form": "balance", "cap_fen": 50_00}],
}


def test_the_what_if_of_a_merchants_referral_campaign_replays_only_that_merchants_orders(
    client, make_operator, make_merchant, make_product, make_user, make_campaign, pay
):
    from rebate import create_order
    from rebate.orders import LineRequest

    # given: a referral campaign funded by shop A's deposit (an admin's): it pays only on A's orders
    shop, other = make_merchant(), make_merchant()
    staff_op, staff = make_operator("merchant_staff", merchant=shop)
    campaign = make_campaign(
        REFERRAL, funder_type="merchant_deposit", funder_merchant_id=shop.id, issuer_type="platform"
    )
    # and an invited buyer who paid 100 yuan at A and 300 yuan at another shop
    buyer = make_user(inviter=make_user())
    for merchant, price in ((shop, 100_00), (other, 300_00)):
        product = make_product(merchant, price_fen=price)
        order = create_order(buyer, [LineRequest(product.id, 1)], None, utcnow())
        db.session.commit()
        assert pay(order) == "applied"

    # when: A's staff replay the same rules over the past week
    answer = client.post(
        f"/admin/api/campaigns/{campaign.id}/simulate", json={"rules": REFERRAL, "days": 7}, headers=staff
    )

    # then: only A's order, as the payment engine paid it (10% of 100 yuan): the other shop's sales are neither
    # counted nor shown to A's staff
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["current"]["orders"], body["current"]["rebates_fen"]) == (1, 10_00)
    assert (body["draft"]["orders"], body["draft"]["rebates_fen"]) == (1, 10_00)
    paid = select(func.sum(Rebate.amount_fen)).where(Rebate.campaign_id == campaign.id)
    assert db.session.execute(paid).scalar_one() == 10_00


def test_the_trace_calls_a_stacked_packets_rebates_packet_rebates_not_attribution(
    client, make_operator, make_campaign, make_user, make_product, pay
):
    from rebate import create_order
    from rebate.orders import LineRequest

    # given: two campaigns allowing two packets per order; one 100-yuan order spends a packet of each
    cashback = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}
    ten, five = (
        make_campaign(cashback, budget_limit_fen=1_000_00, packet_amount_fen=face, max_packets_per_order=2)
        for face in (10_00, 5_00)
    )
    alice = make_user()
    a, b = (issue_packet(c, alice, source="t", source_ref=ref, now=utcnow()) for c, ref in ((ten, "a"), (five, "b")))
    db.session.commit()
    order = create_order(alice, [LineRequest(make_product(price_fen=100_00).id, 1)], [a.id, b.id], utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    _, admin = make_operator("admin")

    # when: an operator traces the order
    body = client.get(f"/admin/api/trace/orders/{order.id}", headers=admin).get_json()

    # then: both campaigns evaluated it as packet campaigns (the second packet was spent on it too)
    assert sorted((c["id"], c["evaluated_as"]) for c in body["campaigns"]) == [(ten.id, "packet"), (five.id, "packet")]
    assert not any("attribution" in line for line in body["lines"])


def test_merchant_staff_trace_a_platform_packet_stacked_second_on_their_order(
    client, make_operator, make_campaign, make_merchant, make_user, make_product, pay
):
    from rebate import create_order
    from rebate.orders import LineRequest

    # given: two platform packets stacked on one order at the shop (the second is not orders.packet_id)
    shop = make_merchant()
    _, staff = make_operator("merchant_staff", merchant=shop)
    cashback = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}
    ten, five = (
        make_campaign(cashback, budget_limit_fen=1_000_00, packet_amount_fen=face, max_packets_per_order=2)
        for face in (10_00, 5_00)
    )
    alice = make_user()
    a, b = (issue_packet(c, alice, source="t", source_ref=ref, now=utcnow()) for c, ref in ((ten, "a"), (five, "b")))
    db.session.commit()
    order = create_order(alice, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], [a.id, b.id], utcnow())
    db.session.commit()
    assert pay(order) == "applied"

    # when: the shop's staff trace each packet spent on their order
    first = client.get(f"/admin/api/trace/packets/{a.id}", headers=staff)
    second = client.get(f"/admin/api/trace/packets/{b.id}", headers=staff)

    # then: both are theirs to read (the order's trace already shows both packets' rebates)
    assert first.status_code == 200, first.get_json()
    assert second.status_code == 200, second.get_json()
    assert second.get_json()["order"]["id"] == order.id
