"""Merchant scoping and deposits (issue 9, item 2).

Seen: merchant staff turned their own campaign into a referral campaign, and it paid their referral
rebate on another merchant's order from their never-funded deposit (−960 fen). Now a merchant's campaign
applies only to its own orders; referral and platform-wide campaigns are platform-admin only (403); and a
merchant-funded campaign never commits more than its funder's deposit holds — activation checks it, each
payment limits its awards to it (reason ``deposit_exhausted``), and a dry deposit pauses the campaign
with an alert.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ledger import account, balance
from models import AccountKind, Alert, AuditLog, Campaign, CampaignRules, Rebate, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest
from tests.conftest import fund_deposit

K = AccountKind
REFERRAL = {"applies_to": "referral", "roles": [{"role": "inviter", "rate_bps": 1000, "form": "balance"}]}
CONSUMER = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 50_00}]}
UNCAPPED = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}


def deposit(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))


def rebates_of(order) -> list[Rebate]:
    db.session.expire_all()
    return list(db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars())


def buy(user, product, packet=None):
    order = create_order(user, [LineRequest(product.id, 1)], packet.id if packet else None, utcnow())
    db.session.commit()
    return order


def body(merchant_id: int | None, **changes) -> dict:
    """A campaign a merchant's staff might send: issued and funded by their merchant."""
    return {
        "name": "spring",
        "issuer_type": "merchant",
        "issuer_merchant_id": merchant_id,
        "funder_type": "merchant_deposit",
        "funder_merchant_id": merchant_id,
        "budget_limit_fen": 100_00,
        "rules": {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]},
        **changes,
    }


# -- who may create what -------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"rules": {**REFERRAL, "roles": [{**REFERRAL["roles"][0], "cap_fen": 5_00}]}},
        {"trigger": {"kind": "registration"}, "packet_amount_fen": 5_00},
        {"trigger": {"kind": "daily_sign_in"}, "packet_amount_fen": 1_00},
        {"trigger": {"kind": "referral_bind"}, "packet_amount_fen": 10_00},
    ],
    ids=["referral", "registration", "daily_sign_in", "referral_bind"],
)
def test_merchant_staff_cannot_create_referral_or_platform_wide_campaigns(client, make_operator, changes):
    staff_op, staff = make_operator("merchant_staff")
    _, admin = make_operator("admin")
    sent = body(staff_op.merchant_id, **changes)

    created = client.post("/admin/api/campaigns", json=sent, headers=staff)
    checked = client.post("/admin/api/campaigns/validate", json=sent, headers=staff)

    assert (created.status_code, created.get_json()["error"]) == (403, "platform_only")
    assert "platform admins" in created.get_json()["message"]
    assert checked.status_code == 403
    assert db.session.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0
    # a platform admin may (the campaign stays the merchant's: it applies to its orders only)
    assert client.post("/admin/api/campaigns", json=sent, headers=admin).status_code == 201


def test_merchant_staff_cannot_turn_their_campaign_into_a_referral_campaign(client, make_operator):
    staff_op, staff = make_operator("merchant_staff")
    campaign_id = client.post("/admin/api/campaigns", json=body(staff_op.merchant_id), headers=staff).get_json()["id"]
    rules = {**REFERRAL, "roles": [{**REFERRAL["roles"][0], "cap_fen": 5_00}]}

    resp = client.put(
        f"/admin/api/campaigns/{campaign_id}/rules", json={"rules": rules, "reason": "refer"}, headers=staff
    )

    assert (resp.status_code, resp.get_json()["error"]) == (403, "platform_only")
    db.session.rollback()
    assert db.session.get(Campaign, campaign_id).rules_version == 1
    assert db.session.execute(select(func.count()).select_from(CampaignRules)).scalar_one() == 1


def test_merchant_staff_cannot_run_a_referral_campaign_an_admin_made_on_their_deposit(
    client, make_operator, make_campaign
):
    staff_op, staff = make_operator("merchant_staff")
    campaign = make_campaign(
        REFERRAL, status="draft", funder_type="merchant_deposit", funder_merchant_id=staff_op.merchant_id
    )
    activate = client.post(f"/admin/api/campaigns/{campaign.id}/activate", json={"reason": "go live"}, headers=staff)
    change = client.patch(f"/admin/api/campaigns/{campaign.id}", json={"name": "x", "reason": "go live"}, headers=staff)
    assert [activate.status_code, change.status_code] == [403, 403]


# -- a merchant's campaign applies to its own orders only -----------------------------------


def test_a_merchants_referral_campaign_never_pays_on_another_merchants_order(
    make_merchant, make_product, make_user, make_campaign, pay
):
    # given: merchant A's referral campaign (10 % to the inviter, from A's deposit), a buyer with an inviter
    shop_a, shop_b = make_merchant(), make_merchant()
    make_campaign(REFERRAL, funder_type="merchant_deposit", funder_merchant_id=shop_a.id, fund_deposit_fen=100_00)
    inviter = make_user()
    buyer = make_user(inviter=inviter)

    # when: the buyer pays a 96-yuan order at merchant B
    at_b = buy(buyer, make_product(shop_b, price_fen=96_00))
    pay(at_b)

    # then: A's campaign pays nothing there, and A's deposit is untouched
    assert rebates_of(at_b) == []
    assert deposit(shop_a.id) == 100_00

    # when: the buyer pays the same at merchant A
    at_a = buy(buyer, make_product(shop_a, price_fen=96_00))
    pay(at_a)

    # then: the inviter earns 9.60 from A's deposit
    assert [(r.role, r.amount_fen, r.beneficiary_id) for r in rebates_of(at_a)] == [("inviter", 9_60, inviter.id)]
    assert deposit(shop_a.id) == 100_00 - 9_60


def test_a_merchants_packet_cannot_be_spent_at_another_merchant(
    client, user_headers, make_merchant, make_product, make_user, make_campaign
):
    shop_a, shop_b = make_merchant(), make_merchant()
    campaign = make_campaign(
        CONSUMER, funder_type="merchant_deposit", funder_merchant_id=shop_a.id, packet_amount_fen=10_00
    )
    amy = make_user()
    packet = issue_packet(campaign, amy, source="test", source_ref="1", now=utcnow())
    db.session.commit()

    resp = client.post(
        "/api/v1/orders",
        json={"lines": [{"product_id": make_product(shop_b).id, "quantity": 1}], "red_packet_id": packet.id},
        headers=user_headers(amy),
    )

    assert (resp.status_code, resp.get_json()["error"]) == (422, "packet_wrong_merchant")


def test_a_merchants_order_paid_trigger_does_not_fire_on_another_merchants_order(
    make_merchant, make_product, make_user, make_campaign, pay
):
    shop_a, shop_b = make_merchant(), make_merchant()
    make_campaign(
        CONSUMER,
        funder_type="merchant_deposit",
        funder_merchant_id=shop_a.id,
        packet_amount_fen=20_00,
        trigger={"kind": "order_paid", "min_order_fen": 0},
    )
    amy = make_user()
    pay(buy(amy, make_product(shop_b)))
    pay(buy(amy, make_product(shop_a)))
    from models import RedPacket

    assert db.session.execute(select(func.count()).select_from(RedPacket)).scalar_one() == 1


# -- the deposit ---------------------------------------------------------------------------


def test_a_never_funded_deposit_pays_nothing_and_the_campaign_pauses_with_an_alert(
    make_merchant, make_product, make_user, make_campaign, pay
):
    # given: the seen attack's shape: a merchant referral campaign on a deposit that never got money
    shop = make_merchant()
    campaign = make_campaign(REFERRAL, funder_type="merchant_deposit", funder_merchant_id=shop.id, fund_deposit_fen=0)
    buyer = make_user(inviter=make_user())

    # when: the buyer pays 96 yuan there
    order = buy(buyer, make_product(shop, price_fen=96_00))
    pay(order)

    # then: no rebate (deposit exhausted, said in words), the deposit never goes negative, the campaign pauses
    (rebate,) = rebates_of(order)
    assert (rebate.status, rebate.amount_fen, rebate.reason_code) == ("skipped", 0, "deposit_exhausted")
    assert any("deposit" in why for why in rebate.reasons)
    assert deposit(shop.id) == 0
    db.session.refresh(campaign)
    assert (campaign.status, campaign.budget_committed_fen) == ("paused", 0)
    alerts = db.session.execute(select(Alert).where(Alert.kind == "deposit_exhausted")).scalars().all()
    assert [a.subject for a in alerts] == [f"campaign {campaign.id}"]


def test_each_payment_commits_at_most_what_the_deposit_holds(
    make_merchant, make_product, make_user, make_campaign, pay
):
    # given: 5 yuan in the deposit, a 10 % inviter reward
    shop = make_merchant()
    campaign = make_campaign(
        REFERRAL, funder_type="merchant_deposit", funder_merchant_id=shop.id, fund_deposit_fen=5_00
    )
    inviter = make_user()
    buyer = make_user(inviter=inviter)

    # when: a 100-yuan order (10 yuan due), then another
    first = buy(buyer, make_product(shop, price_fen=100_00))
    pay(first)
    second = buy(buyer, make_product(shop, price_fen=100_00))
    pay(second)

    # then: the first pays the 5 yuan the deposit held (reason deposit_exhausted) and pauses the campaign
    (got,) = rebates_of(first)
    assert (got.amount_fen, got.reason_code) == (5_00, "deposit_exhausted")
    assert deposit(shop.id) == 0
    assert balance(account(K.USER_CASH, "user", inviter.id)) == 5_00
    db.session.refresh(campaign)
    assert (campaign.status, campaign.budget_committed_fen) == ("paused", 5_00)
    # and the second pays nothing: the campaign is paused until the deposit is topped up
    assert rebates_of(second) == []
    assert deposit(shop.id) == 0


def test_activation_needs_the_deposit_to_hold_the_budget_then_a_top_up_lets_it_run(
    client, make_operator, make_campaign
):
    staff_op, staff = make_operator("merchant_staff")
    _, finance = make_operator("finance")
    merchant_id = staff_op.merchant_id
    campaign_id = client.post("/admin/api/campaigns", json=body(merchant_id), headers=staff).get_json()["id"]

    # when: activated with an empty deposit
    refused = client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "go live"}, headers=staff)

    # then: 409 deposit_exhausted, still a draft
    assert (refused.status_code, refused.get_json()["error"]) == (409, "deposit_exhausted")
    assert "100 fen" not in refused.get_json()["message"] and "10000 fen" in refused.get_json()["message"]
    db.session.rollback()
    assert db.session.get(Campaign, campaign_id).status == "draft"

    # when: finance proposes a 60-yuan top-up (not the whole 100-yuan budget yet) and an admin approves it
    _, admin = make_operator("admin")
    top_up = f"/admin/api/merchants/{merchant_id}/deposit/top-ups"
    key = {**finance, "Idempotency-Key": "topup-1"}
    first = client.post(
        top_up, json={"amount_fen": 60_00, "reason": "bank transfer 1", "transfer_ref": "TR-1"}, headers=key
    )
    again = client.post(
        top_up, json={"amount_fen": 60_00, "reason": "bank transfer 1", "transfer_ref": "TR-1"}, headers=key
    )
    assert first.status_code == 201 and first.get_json() == again.get_json()
    assert first.get_json()["status"] == "pending" and deposit(merchant_id) == 0  # nothing moves before approval

    def approve(proposal_id: int):
        url = f"/admin/api/deposit-proposals/{proposal_id}/approve"
        return client.post(url, json={"reason": "bank slip checked"}, headers=admin)

    approved = approve(first.get_json()["id"])
    assert approved.status_code == 200 and approved.get_json()["deposit_fen"] == 60_00
    assert approve(first.get_json()["id"]).status_code == 409  # approved once: a second approval moves nothing
    assert deposit(merchant_id) == 60_00
    short = client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "go live"}, headers=staff)
    assert short.status_code == 409

    # when: 40 more
    more = {**finance, "Idempotency-Key": "topup-2"}
    second = client.post(
        top_up, json={"amount_fen": 40_00, "reason": "bank transfer 2", "transfer_ref": "TR-2"}, headers=more
    )
    assert second.status_code == 201 and approve(second.get_json()["id"]).status_code == 200
    allowed = client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "go live"}, headers=staff)

    # then: it runs; staff see their deposit; the top-ups are audited
    assert allowed.status_code == 200 and allowed.get_json()["status"] == "active"
    assert client.get(f"/admin/api/merchants/{merchant_id}/deposit", headers=staff).get_json()["deposit_fen"] == 100_00
    audited = db.session.execute(select(AuditLog.action).where(AuditLog.action == "merchant.deposit_top_up"))
    assert len(audited.all()) == 2


@pytest.mark.parametrize(
    "sent, headers_extra, status, error",
    [
        ({"amount_fen": 0, "reason": "top up"}, {"Idempotency-Key": "k"}, 422, None),
        ({"amount_fen": -5, "reason": "top up"}, {"Idempotency-Key": "k"}, 422, None),
        ({"amount_fen": "100", "reason": "top up"}, {"Idempotency-Key": "k"}, 422, None),
        ({"amount_fen": 100}, {"Idempotency-Key": "k"}, 422, None),
        ({"amount_fen": 100, "reason": "top up", "transfer_ref": "TR-0001"}, {}, 422, "idempotency_key_required"),
    ],
)
def test_bad_top_ups_are_refused_and_change_nothing(
    client, make_operator, make_merchant, sent, headers_extra, status, error
):
    _, admin = make_operator("admin")
    shop = make_merchant()
    resp = client.post(f"/admin/api/merchants/{shop.id}/deposit/top-ups", json=sent, headers={**admin, **headers_extra})
    assert resp.status_code == status
    if error:
        assert resp.get_json()["error"] == error
    assert deposit(shop.id) == 0


def test_merchant_staff_cannot_top_up_and_cannot_see_another_merchants_deposit(client, make_operator, make_merchant):
    staff_op, staff = make_operator("merchant_staff")
    other = make_merchant()
    key = {**staff, "Idempotency-Key": "k"}
    own = client.post(
        f"/admin/api/merchants/{staff_op.merchant_id}/deposit/top-ups",
        json={"amount_fen": 100, "reason": "top up"},
        headers=key,
    )
    peek = client.get(f"/admin/api/merchants/{other.id}/deposit", headers=staff)
    assert own.status_code == 403 and peek.status_code == 404
    assert deposit(staff_op.merchant_id) == 0


def test_fund_deposit_helper_is_a_balanced_top_up(make_merchant):
    shop = make_merchant()
    fund_deposit(shop.id, 1_00)
    db.session.commit()
    assert deposit(shop.id) == 1_00


def test_two_payments_at_once_never_spend_more_than_the_deposit_holds(
    app, make_merchant, make_product, make_user, make_campaign
):
    from tests.concurrency import together
    from tests.payment_helpers import pay_as_wechat

    # given: two campaigns of one merchant (no campaign row in common), one deposit holding 25 yuan;
    # each buyer spends a 10-yuan packet on a 100-yuan order (pays 90) and is owed 5 % = 4.50.
    # Unbudgeted and uncapped, a packet reserves only its face (the deposit covers both: 20 of 25);
    # its rebate is limited at payment to what the deposit holds beyond the other live packet.
    shop = make_merchant()
    product = make_product(shop, price_fen=100_00)
    orders = []
    for i in range(2):
        campaign = make_campaign(
            UNCAPPED,
            funder_type="merchant_deposit",
            funder_merchant_id=shop.id,
            packet_amount_fen=10_00,
            fund_deposit_fen=25_00 if i == 0 else 0,
        )
        buyer = make_user()
        orders.append(buy(buyer, product, issue_packet(campaign, buyer, source="t", source_ref="1", now=utcnow())))
    numbers = [(o.out_trade_no, o.payable_fen) for o in orders]

    # when: both payments are applied at once, each in its own transaction
    results = together(2, lambda i: pay_as_wechat(numbers[i][0], f"tx-{i}", numbers[i][1], utcnow()), app=app)

    # then: one after the other on the deposit: 25 − 10 − 4.50, then − 10 leaves 0.50 for the second rebate
    assert [str(r) for r in results] == ["applied", "applied"], results
    db.session.rollback()
    paid = sorted(db.session.execute(select(Rebate.amount_fen)).scalars())
    assert paid == [50, 4_50] and deposit(shop.id) == 0


@pytest.mark.parametrize("paused_by", ["admin", "merchant_staff"])
def test_a_platforms_pause_is_undone_by_the_platform_only(
    client, make_operator, make_merchant, make_campaign, paused_by
):
    """Found by an outside probe: an admin paused a campaign for suspected fraud and the merchant's own staff
    activated it again. A pause by the platform (an admin, a ban, the risk jobs) sticks against the merchant."""
    staff_op, staff = make_operator("merchant_staff")
    _, admin = make_operator("admin")
    from tests.conftest import fund_deposit

    campaign_id = client.post("/admin/api/campaigns", json=body(staff_op.merchant_id), headers=staff).get_json()["id"]
    fund_deposit(staff_op.merchant_id, 1_000_00)
    db.session.commit()
    path = f"/admin/api/campaigns/{campaign_id}"
    assert client.post(f"{path}/activate", json={"reason": "go live"}, headers=staff).status_code == 200
    campaign = db.session.get(Campaign, campaign_id)
    pauser = admin if paused_by == "admin" else staff
    assert client.post(f"{path}/pause", json={"reason": "fraud suspected"}, headers=pauser).status_code == 200
    again = client.post(f"{path}/activate", json={"reason": "back on"}, headers=staff)
    if paused_by == "admin":
        assert (again.status_code, again.get_json()["error"]) == (403, "paused_by_platform"), again.get_json()
        db.session.rollback()
        assert db.session.get(Campaign, campaign.id).status == "paused"
        again = client.post(f"{path}/activate", json={"reason": "checked: fine"}, headers=admin)
    assert again.status_code == 200, again.get_json()
    db.session.rollback()
    assert (db.session.get(Campaign, campaign.id).status, db.session.get(Campaign, campaign.id).paused_by_platform) == (
        "active",
        False,
    )


@pytest.mark.parametrize(
    "path",
    [
        "/admin/api/deposit-proposals?merchant_id={other}",
        "/admin/api/profit-shares?merchant_id={other}",
        "/admin/api/audiences/runs?campaign_id={campaign}",
    ],
)
def test_a_list_filtered_on_another_merchants_id_is_404_to_merchant_staff(
    client, make_operator, make_merchant, make_campaign, path
):
    """As another merchant's own things are (outside probe: these answered 200 with an empty list)."""
    other = make_merchant()
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_000}]},
        funder_type="merchant_deposit",
        funder_merchant_id=other.id,
        issuer_type="merchant",
        issuer_merchant_id=other.id,
        serves_merchant_id=other.id,
    )
    _, staff = make_operator("merchant_staff")
    answer = client.get(path.format(other=other.id, campaign=campaign.id), headers=staff)
    assert (answer.status_code, answer.json["error"]) == (404, "not_found"), answer.json
    _, admin = make_operator("admin")
    assert client.get(path.format(other=other.id, campaign=campaign.id), headers=admin).status_code == 200
