"""A merchant's deposit covers its packets before they are issued (issue 9, item 2).

Seen: a 1-yuan deposit and three 20-yuan packets spent left the deposit at −5,900 fen — a packet's
discount comes out of its funder's deposit at payment, and nothing looked at the deposit when the
packet was issued or claimed. Now a merchant-funded packet is issued or claimed only when the deposit
covers its reservation on top of every live reservation of every campaign the merchant funds
(``deposit_exhausted``, 409 on a claim; a trigger issues nothing and keeps the refusal), under a lock on
the deposit; the campaign is paused and an operator alerted.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ledger import account, balance
from models import AccountKind, Alert, Campaign, ClaimRefusal, RedPacket, db, utcnow
from rebate import create_order, issue_packet
from rebate.errors import DepositExhausted
from rebate.orders import LineRequest
from tests.conftest import fund_deposit

CAPPED = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]}  # reserves face + 1
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def deposit(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))


def reserved(merchant_id: int) -> int:
    db.session.rollback()
    return db.session.execute(
        select(func.coalesce(func.sum(Campaign.budget_reserved_fen), 0)).where(
            Campaign.funder_merchant_id == merchant_id
        )
    ).scalar_one()


def merchant_campaign(make_campaign, shop, deposit_fen, **fields):
    fields.setdefault("packet_amount_fen", 20_00)
    fields.setdefault("trigger", {"kind": "claim"})
    fields.setdefault("claim_limits", NO_LIMITS)
    return make_campaign(
        CAPPED,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        fund_deposit_fen=deposit_fen,
        **fields,
    )


def try_issue(campaign, user, ref):
    try:
        packet = issue_packet(campaign, user, source="t", source_ref=ref, now=utcnow())
        db.session.commit()
        return packet
    except DepositExhausted as refused:
        db.session.rollback()
        return refused


def test_a_1_yuan_deposit_never_goes_negative_through_20_yuan_packets(
    make_merchant, make_product, make_user, make_campaign, pay
):
    # given: a 1-yuan deposit and a campaign of 20-yuan packets (each reserves 20 + a 1-yuan rebate cap)
    shop = make_merchant()
    product = make_product(shop, price_fen=100_00)
    campaign = merchant_campaign(make_campaign, shop, 1_00)
    buyers = [make_user() for _ in range(3)]

    # when: three packets are issued
    results = [try_issue(campaign, b, str(i)) for i, b in enumerate(buyers)]

    # then: none: the deposit cannot cover one
    assert all(isinstance(r, DepositExhausted) for r in results)
    assert results[0].code == "deposit_exhausted" and results[0].kind == "conflict"
    assert "holds 100 fen" in str(results[0]) and "2100 fen" in str(results[0])
    assert deposit(shop.id) == 1_00 and reserved(shop.id) == 0

    # when: the merchant tops up 45 yuan (46 in all): two packets fit (2 × 21), the third not
    fund_deposit(shop.id, 45_00)
    db.session.commit()
    results = [try_issue(db.session.get(Campaign, campaign.id), b, f"again-{i}") for i, b in enumerate(buyers)]
    packets = [r for r in results if isinstance(r, RedPacket)]
    assert len(packets) == 2 and isinstance(results[2], DepositExhausted)
    assert reserved(shop.id) == 42_00

    # when: both are spent on 100-yuan orders
    for buyer, packet in zip(buyers, packets, strict=False):
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
        db.session.commit()
        assert pay(order) == "applied"

    # then: 46 − 2 × (20 + 1) = 4 yuan left, never below zero, nothing reserved
    assert deposit(shop.id) == 4_00
    assert reserved(shop.id) == 0


def test_a_refused_claim_is_409_pauses_the_campaign_and_alerts(
    client, user_headers, make_merchant, make_user, make_campaign
):
    shop = make_merchant()
    campaign = merchant_campaign(make_campaign, shop, 30_00)  # one 21-yuan packet fits
    amy, ben = make_user(), make_user()

    first = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(amy))
    second = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(ben))

    assert first.status_code == 201
    assert (second.status_code, second.get_json()["error"]) == (409, "deposit_exhausted")
    db.session.rollback()
    assert db.session.get(Campaign, campaign.id).status == "paused"
    assert db.session.execute(select(Alert.kind, Alert.subject)).all() == [
        ("deposit_exhausted", f"campaign {campaign.id}")
    ]
    assert [(r.user_id, r.code) for r in db.session.execute(select(ClaimRefusal)).scalars()] == [
        (ben.id, "deposit_exhausted")
    ]
    assert db.session.execute(select(func.count()).select_from(RedPacket)).scalar_one() == 1
    assert deposit(shop.id) == 30_00 and reserved(shop.id) == 21_00


def test_a_code_claim_the_deposit_cannot_cover_is_409(client, user_headers, make_merchant, make_user, make_campaign):
    from rebate.packets import generate_batch

    shop = make_merchant()
    campaign = merchant_campaign(make_campaign, shop, 10_00, trigger=None)
    code = generate_batch(campaign, 1, utcnow(), "b")[0].claim_code  # unclaimed packets reserve nothing
    db.session.commit()

    resp = client.post("/api/v1/red-packets/claim", json={"code": code}, headers=user_headers(make_user()))

    assert (resp.status_code, resp.get_json()["error"]) == (409, "deposit_exhausted")
    db.session.rollback()
    packet = db.session.execute(select(RedPacket)).scalar_one()
    assert (packet.status, packet.owner_id, packet.reserved_fen) == ("unclaimed", None, 0)
    assert db.session.get(Campaign, campaign.id).status == "paused"


def test_a_trigger_issues_nothing_the_deposit_cannot_cover_and_keeps_the_reason(
    client, user_headers, make_merchant, make_user, make_campaign
):
    # given: two sign-in campaigns, one funded by a merchant's 5-yuan deposit, one by the platform
    shop = make_merchant()
    short = merchant_campaign(make_campaign, shop, 5_00, packet_amount_fen=10_00, trigger={"kind": "daily_sign_in"})
    platform = make_campaign(CAPPED, packet_amount_fen=1_00, trigger={"kind": "daily_sign_in"})
    amy = make_user()

    # when: she signs in
    resp = client.post("/api/v1/sign-in", headers=user_headers(amy))

    # then: the sign-in and the platform's packet; the merchant's campaign is skipped, paused, alerted
    assert resp.status_code == 200
    db.session.rollback()
    owned = db.session.execute(select(RedPacket.campaign_id)).scalars().all()
    assert owned == [platform.id]
    assert db.session.get(Campaign, short.id).status == "paused"
    assert [r.code for r in db.session.execute(select(ClaimRefusal)).scalars()] == ["deposit_exhausted"]
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["deposit_exhausted"]
    assert deposit(shop.id) == 5_00 and reserved(shop.id) == 0


def test_reservations_of_every_campaign_the_merchant_funds_count(make_merchant, make_user, make_campaign):
    # given: two campaigns of one merchant on one 50-yuan deposit
    shop = make_merchant()
    first = merchant_campaign(make_campaign, shop, 50_00)
    second = merchant_campaign(make_campaign, shop, 0)

    # then: 21 + 21 fit, the third (on either campaign) not
    assert isinstance(try_issue(first, make_user(), "a"), RedPacket)
    assert isinstance(try_issue(second, make_user(), "b"), RedPacket)
    assert isinstance(try_issue(db.session.get(Campaign, first.id), make_user(), "c"), DepositExhausted)
    assert reserved(shop.id) == 42_00


@pytest.mark.parametrize("campaigns", [2, 8])
def test_claims_on_several_campaigns_racing_for_one_deposit_never_over_reserve(
    app, make_merchant, make_user, make_campaign, campaigns
):
    from tests.concurrency import together

    # given: campaigns of one merchant, a deposit covering exactly three 21-yuan reservations
    # (each campaign's own row serialises its claims: the deposit must serialise across them)
    shop = make_merchant()
    ids = [merchant_campaign(make_campaign, shop, 63_00 if i == 0 else 0).id for i in range(campaigns)]
    people = [make_user().id for _ in range(16)]

    def claim(i: int):
        from models import User

        campaign, user = db.session.get(Campaign, ids[i % campaigns]), db.session.get(User, people[i])
        return issue_packet(campaign, user, source="race", source_ref=str(i), now=utcnow()).id

    # when: sixteen claims spread over the campaigns at once
    results = together(16, claim, app=app)

    # then: three packets, thirteen refused for the deposit, never more reserved than it holds
    assert sum(isinstance(r, int) for r in results) == 3, results
    assert all(isinstance(r, DepositExhausted) for r in results if not isinstance(r, int)), results
    assert reserved(shop.id) == 63_00 <= deposit(shop.id)
    assert db.session.execute(select(func.count()).select_from(RedPacket)).scalar_one() == 3


@pytest.fixture
def staff(make_operator):
    return make_operator("merchant_staff")


def test_raising_a_running_campaigns_budget_needs_the_deposit_to_hold_it(client, staff, make_operator):
    staff_op, headers = staff
    merchant_id = staff_op.merchant_id
    sent = {
        "name": "spring",
        "issuer_type": "merchant",
        "issuer_merchant_id": merchant_id,
        "funder_type": "merchant_deposit",
        "funder_merchant_id": merchant_id,
        "budget_limit_fen": 100_00,
        "rules": CAPPED,
    }
    campaign_id = client.post("/admin/api/campaigns", json=sent, headers=headers).get_json()["id"]
    fund_deposit(merchant_id, 100_00)
    db.session.commit()
    go = client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "go live"}, headers=headers)
    assert go.status_code == 200

    # when: the budget is raised past the deposit while it runs
    raised = client.patch(
        f"/admin/api/campaigns/{campaign_id}", json={"budget_limit_fen": 150_00, "reason": "more"}, headers=headers
    )
    # then: 409 deposit_exhausted, the budget unchanged
    assert (raised.status_code, raised.get_json()["error"]) == (409, "deposit_exhausted")
    db.session.rollback()
    assert db.session.get(Campaign, campaign_id).budget_limit_fen == 100_00

    # when: lowered, or raised within the deposit after a top-up
    lowered = client.patch(
        f"/admin/api/campaigns/{campaign_id}", json={"budget_limit_fen": 80_00, "reason": "less"}, headers=headers
    )
    fund_deposit(merchant_id, 50_00)
    db.session.commit()
    again = client.patch(
        f"/admin/api/campaigns/{campaign_id}", json={"budget_limit_fen": 150_00, "reason": "more"}, headers=headers
    )
    assert lowered.status_code == 200 and again.status_code == 200
    assert again.get_json()["budget_limit_fen"] == 150_00


def test_an_unreserved_award_leaves_the_live_packets_covered(
    make_merchant, make_product, make_user, make_campaign, pay
):
    # given: one merchant funds a 10 % referral campaign (no reservation: it pays on any order) and a packet
    # campaign whose one live packet reserved 21 of the deposit's 25 yuan
    referral = {"applies_to": "referral", "roles": [{"role": "inviter", "rate_bps": 1000, "form": "balance"}]}
    shop = make_merchant()
    packets = merchant_campaign(make_campaign, shop, 25_00)
    make_campaign(referral, funder_type="merchant_deposit", funder_merchant_id=shop.id, fund_deposit_fen=0)
    holder = make_user()
    packet = try_issue(packets, holder, "held")
    assert isinstance(packet, RedPacket)
    buyer = make_user(inviter=make_user())

    # when: an invited buyer pays 100 yuan (10 yuan due to the inviter)
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], None, utcnow())
    db.session.commit()
    pay(order)

    # then: the inviter gets only the 4 yuan beyond the live packet's 21; the packet stays covered
    from models import Rebate

    db.session.rollback()
    (rebate,) = db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars()
    assert (rebate.amount_fen, rebate.reason_code) == (4_00, "deposit_exhausted")
    assert deposit(shop.id) == 21_00 == reserved(shop.id)

    # when: the packet is spent on a 100-yuan order: its 20-yuan discount and 1-yuan rebate
    spend = create_order(holder, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(spend)

    # then: the deposit ends at zero, never below
    assert deposit(shop.id) == 0 and reserved(shop.id) == 0


@pytest.mark.parametrize("then", ["nothing", "operator_pause", "merchant_ban"])
def test_a_packet_claimed_before_the_deposit_ran_dry_still_earns_its_rebate(
    client, user_headers, make_merchant, make_product, make_user, make_campaign, make_operator, pay, then
):
    """Found by an outside probe: the claim the deposit could not cover paused the campaign, and the packets already
    out (their rebates reserved in the deposit at their claims) then earned nothing. A dry deposit stops issuing
    only; an operator's pause (or a ban of the merchant) still stops awarding too."""
    from rebate import create_order
    from rebate.orders import LineRequest
    from tests.review_helpers import rebates_of

    shop = make_merchant()
    product = make_product(shop, price_fen=100_00)
    campaign = merchant_campaign(make_campaign, shop, 30_00)  # one 21-yuan packet fits
    amy, ben = make_user(), make_user()
    first = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(amy))
    assert client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(ben)).status_code == 409
    db.session.rollback()
    paused = db.session.get(Campaign, campaign.id)
    assert (paused.status, paused.paused_for_deposit) == ("paused", True)
    _, admin = make_operator("admin")
    if then == "operator_pause":
        answer = client.post(f"/admin/api/campaigns/{campaign.id}/pause", json={"reason": "stop it all"}, headers=admin)
        assert answer.status_code == 200, answer.json
    elif then == "merchant_ban":
        body = {"subject": "merchant", "value": str(shop.id), "reason": "fraud ring"}
        assert client.post("/admin/api/bans", json=body, headers=admin).status_code == 201
    # when: amy spends her packet on a 100-yuan order
    order = create_order(amy, [LineRequest(product.id, 1)], first.json["id"], utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    # then: 5 % of the 80 yuan paid, capped at 1 yuan, as her claim reserved — unless an operator stopped it
    rebate = rebates_of(order.id)["consumer"]
    if then == "nothing":
        assert (rebate.amount_fen, rebate.status) == (1_00, "awarded"), rebate.reason_code
        assert deposit(shop.id) == 30_00 - 20_00 - 1_00
    else:
        assert (rebate.amount_fen, rebate.reason_code) == (0, "campaign_not_running")
    assert reserved(shop.id) == 0


def test_a_campaign_paused_for_its_deposit_is_still_paused_by_a_spike_and_says_what_it_does(
    client, user_headers, make_merchant, make_user, make_campaign, make_operator
):
    """Paused for its deposit it still awards the packets out, so the spike auto-pause, the console's Pause and the
    public status words treat it as still running those (review of 2026-12-02)."""
    from insights.campaign_rules import DEPOSIT_PAUSE_WORDS, _status_words
    from jobs.risk import pause_spiking
    from risk.spikes import Spike
    from tests.console_helpers import sign_in

    shop = make_merchant()
    campaign = merchant_campaign(make_campaign, shop, 30_00, spike_auto_pause=True)
    assert client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(make_user())).status_code == 201
    assert client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(make_user())).status_code == 409
    db.session.rollback()
    paused = db.session.get(Campaign, campaign.id)
    assert paused.paused_for_deposit and _status_words(paused) == DEPOSIT_PAUSE_WORDS
    sign_in(client, make_operator("admin")[1])
    page = client.get(f"/console/campaigns/{campaign.id}").get_data(as_text=True)
    assert 'id="pause"' in page and "the packets out still earn" in page

    spike = Spike(f"campaign:{campaign.id}:rebates", utcnow(), 99, 1.0, 0.5, "rebates 99 in an hour")
    assert pause_spiking([spike]) == [campaign.id]
    db.session.commit()
    db.session.rollback()
    stopped = db.session.get(Campaign, campaign.id)
    assert (stopped.status, stopped.paused_for_deposit) == ("paused", False)
