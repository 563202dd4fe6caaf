"""Review cases (issue 12): each outcome's money effects, idempotency, the second approval, who may see and decide.

The ledger check runs after every test (tests/conftest.py); balances, budgets and packet states are asserted here.
"""

from __future__ import annotations

from sqlalchemy import func, select

from models import AuditLog, Ban, Campaign, LedgerEntry, Merchant, Payout, RedPacket, ReviewCase, db, utcnow
from rebate import issue_packet
from tests.review_helpers import (
    DEVICE,
    cash,
    community_case,
    hold_for_review,
    paid_order,
    rebates_of,
    status_of,
)

ISSUER, CONSUMER = 9_00, 4_50  # 10 % and 5 % of the 90.00 paid on a 100.00 order with a 10.00 packet
PACKET = 10_00


def decide(client, headers, case_id, outcome, reason="checked the trail", **extra):
    return client.post(
        f"/admin/api/reviews/{case_id}/decide", json={"outcome": outcome, "reason": reason, **extra}, headers=headers
    )


def committed(campaign_id: int) -> int:
    db.session.expire_all()
    return db.session.get(Campaign, campaign_id).budget_committed_fen


def count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def setup(make_user, make_product, make_campaign, pay, **kw):
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay, **kw)
    case = hold_for_review(order)
    return order, buyer, issuer, campaign, case


def test_the_held_state_pays_nothing_and_keeps_the_budget_committed(make_user, make_product, make_campaign, pay):
    order, buyer, issuer, campaign, case = setup(make_user, make_product, make_campaign, pay)
    got = rebates_of(order.id)
    assert {r: (got[r].status, got[r].amount_fen, got[r].held_fen) for r in got} == {
        "issuer": ("review", 0, ISSUER),
        "consumer": ("review", 0, CONSUMER),
    }
    assert (cash(buyer.id), cash(issuer.id), case.held_fen) == (0, 0, ISSUER + CONSUMER)
    assert committed(campaign.id) == PACKET + ISSUER + CONSUMER


def test_release_pays_everything_held_and_labels_the_case_legit(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, issuer, campaign, case = setup(make_user, make_product, make_campaign, pay)
    _, support = make_operator("support")

    resp = decide(client, support, case.id, "release", "a regular customer")

    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert (body["status"], body["outcome"], body["label"]) == ("decided", "release", "legit")
    assert body["effects"]["released_fen"] == ISSUER + CONSUMER
    got = rebates_of(order.id)
    assert {r: (got[r].status, got[r].amount_fen, got[r].held_fen) for r in got} == {
        "issuer": ("awarded", ISSUER, 0),
        "consumer": ("awarded", CONSUMER, 0),
    }
    assert (cash(buyer.id), cash(issuer.id)) == (CONSUMER, ISSUER)
    assert committed(campaign.id) == PACKET + ISSUER + CONSUMER  # committed at payment, now spent
    keys = set(db.session.execute(select(LedgerEntry.idempotency_key)).scalars())
    assert {f"rebate:{r.id}:review_release" for r in got.values()} <= keys
    audit = db.session.execute(select(AuditLog).where(AuditLog.action == "review.decide")).scalar_one()
    assert (audit.target_id, audit.reason, audit.details["outcome"]) == (str(case.id), "a regular customer", "release")


def test_release_of_a_wechat_change_rebate_queues_its_payout(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, _, _ = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order, roles=("consumer",), form="wechat_change")
    _, admin = make_operator("admin")

    assert decide(client, admin, case.id, "release").status_code == 200

    rebate = rebates_of(order.id)["consumer"]
    payouts = db.session.execute(select(Payout).where(Payout.rebate_id == rebate.id)).scalars().all()
    assert [(p.user_id, p.amount_fen, p.status) for p in payouts] == [(buyer.id, CONSUMER, "pending")]


def test_revoke_returns_the_budget_and_revokes_the_buyers_unused_packets(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, issuer, campaign, case = setup(make_user, make_product, make_campaign, pay)
    spare = issue_packet(campaign, buyer, source="test", source_ref="spare", now=utcnow())
    db.session.commit()
    reserved_before = db.session.get(Campaign, campaign.id).budget_reserved_fen
    spare_id, spare_reserved = spare.id, spare.reserved_fen
    assert spare_reserved > 0 and reserved_before >= spare_reserved
    _, finance = make_operator("finance")

    resp = decide(client, finance, case.id, "revoke", "click farm")

    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert (body["label"], body["effects"]["revoked_fen"], body["effects"]["packets_revoked"]) == (
        "fraud",
        ISSUER + CONSUMER,
        [spare_id],
    )
    got = rebates_of(order.id)
    assert {(r.status, r.amount_fen, r.held_fen) for r in got.values()} == {("revoked", 0, 0)}
    assert all(any("click farm" in why for why in r.reasons) for r in got.values())
    assert (cash(buyer.id), cash(issuer.id)) == (0, 0)
    assert committed(campaign.id) == PACKET
    after = db.session.get(Campaign, campaign.id)
    assert after.budget_reserved_fen == reserved_before - spare_reserved
    assert db.session.get(RedPacket, spare_id).status == "revoked"


def test_claw_back_takes_paid_money_back_and_revokes_what_is_held(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    # given: the issuer's 9.00 was paid; the buyer's 4.50 is held for review
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order, roles=("consumer",))
    assert cash(issuer.id) == ISSUER
    _, admin = make_operator("admin")

    resp = decide(client, admin, case.id, "claw_back", "issuer and buyer share a device")

    assert resp.status_code == 200, resp.get_json()
    effects = resp.get_json()["effects"]
    assert (effects["clawed_back_fen"], effects["recovered_fen"], effects["revoked_fen"]) == (ISSUER, ISSUER, CONSUMER)
    got = rebates_of(order.id)
    assert (got["issuer"].status, got["issuer"].amount_fen) == ("clawed_back", 0)
    assert (got["consumer"].status, got["consumer"].held_fen) == ("revoked", 0)
    assert (cash(issuer.id), cash(buyer.id)) == (0, 0)
    assert committed(campaign.id) == PACKET


def test_ban_user_revokes_and_bans_the_buyer_for_the_days_asked(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, _, campaign, case = setup(make_user, make_product, make_campaign, pay)
    _, support = make_operator("support")

    resp = decide(client, support, case.id, "ban_user", "sybil accounts", ban_days=30)

    assert resp.status_code == 200, resp.get_json()
    (ban_id,) = resp.get_json()["effects"]["bans"]
    ban = db.session.get(Ban, ban_id)
    assert (ban.subject, ban.value, ban.case_id) == ("user", str(buyer.id), case.id)
    assert 29 <= (ban.ends_at - utcnow()).days <= 30
    assert status_of(buyer.id) == "banned"
    assert {r.status for r in rebates_of(order.id).values()} == {"revoked"}
    assert committed(campaign.id) == PACKET


def test_ban_device_bans_the_orders_device_and_without_one_is_422(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, _, _, _, case = setup(make_user, make_product, make_campaign, pay)
    _, admin = make_operator("admin")
    order.device = None
    db.session.commit()

    missing = decide(client, admin, case.id, "ban_device")
    assert (missing.status_code, missing.get_json()["error"]) == (422, "no_device")
    assert db.session.get(ReviewCase, case.id).status == "open"
    assert {r.status for r in rebates_of(order.id).values()} == {"review"}  # nothing changed

    db.session.get(type(order), order.id).device = DEVICE
    db.session.commit()
    resp = decide(client, admin, case.id, "ban_device")
    assert resp.status_code == 200, resp.get_json()
    ban = db.session.execute(select(Ban)).scalar_one()
    assert (ban.subject, ban.value, ban.ends_at) == ("device", DEVICE, None)


def test_ban_merchant_suspends_it_and_pauses_its_campaigns(
    client, make_operator, make_user, make_product, make_campaign, make_merchant, pay
):
    shop = make_merchant()
    order, _, _, _, case = setup(make_user, make_product, make_campaign, pay, merchant=shop)
    own = make_campaign(TWO_ROLES_MERCHANT, issuer_type="merchant", issuer_merchant_id=shop.id, packet_amount_fen=1_00)
    _, admin = make_operator("admin")

    resp = decide(client, admin, case.id, "ban_merchant", "orders from its own accounts")

    assert resp.status_code == 200, resp.get_json()
    db.session.expire_all()
    assert db.session.get(Merchant, shop.id).status == "suspended"
    assert db.session.get(Campaign, own.id).status == "paused"
    paused = db.session.execute(select(AuditLog).where(AuditLog.action == "campaign.pause")).scalar_one()
    assert paused.target_id == str(own.id) and "banned" in paused.reason


TWO_ROLES_MERCHANT = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}


def test_the_same_outcome_again_answers_the_same_and_another_is_409(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, _, _, case = setup(make_user, make_product, make_campaign, pay)
    _, admin = make_operator("admin")
    first = decide(client, admin, case.id, "release")
    entries, audits = count(LedgerEntry), count(AuditLog)

    again = decide(client, admin, case.id, "release", "double click")
    other = decide(client, admin, case.id, "revoke")

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.get_json() == first.get_json()
    assert (other.status_code, other.get_json()["error"]) == (409, "case_decided")
    assert (count(LedgerEntry), count(AuditLog), cash(buyer.id)) == (entries, audits, CONSUMER)


def test_above_the_threshold_a_second_reviewer_must_approve(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    # given: a 5,000-yuan order: 675.00 held, above the default 200.00
    order, buyer, issuer, campaign, case = setup(make_user, make_product, make_campaign, pay, price_fen=5_000_00)
    held = case.held_fen
    assert held > 20000
    first_op, first = make_operator("support")
    _, second = make_operator("admin")

    # when: the first reviewer decides: a proposal, nothing moves
    proposed = decide(client, first, case.id, "revoke", "ring")
    assert proposed.status_code == 200
    body = proposed.get_json()
    proposal = (body["status"], body["proposed_outcome"], body["proposed_by"])
    assert proposal == ("awaiting_approval", "revoke", first_op.id)
    assert {r.status for r in rebates_of(order.id).values()} == {"review"}
    assert committed(campaign.id) == PACKET + held

    # when: the same reviewer again, and a second one with another outcome
    self_approve = decide(client, first, case.id, "revoke")
    differs = decide(client, second, case.id, "release")
    assert (self_approve.status_code, self_approve.get_json()["error"]) == (403, "second_reviewer_required")
    assert (differs.status_code, differs.get_json()["error"]) == (409, "proposal_differs")
    assert "revoke" in differs.get_json()["message"]

    # when: the second reviewer approves the same outcome: carried out once
    approved = decide(client, second, case.id, "revoke", "agreed")
    assert approved.status_code == 200, approved.get_json()
    assert (approved.get_json()["status"], approved.get_json()["label"]) == ("decided", "fraud")
    assert {r.status for r in rebates_of(order.id).values()} == {"revoked"}
    assert committed(campaign.id) == PACKET
    actions = db.session.execute(select(AuditLog.action).order_by(AuditLog.id)).scalars().all()
    assert actions.count("review.propose") == 1 and actions.count("review.decide") == 1


def test_the_queue_and_a_case_are_the_platforms_not_merchant_staffs(
    client, make_operator, make_user, make_product, make_campaign, make_merchant, pay
):
    shop, other_shop = make_merchant(), make_merchant()
    order, _, _, _, case = setup(make_user, make_product, make_campaign, pay, merchant=shop)
    other_order, _, _, _, other_case = setup(make_user, make_product, make_campaign, pay, merchant=other_shop)
    _, admin = make_operator("admin")
    _, staff = make_operator("merchant_staff", shop)

    listed = client.get("/admin/api/reviews?status=open&kind=order", headers=admin).get_json()["items"]
    assert [c["id"] for c in listed] == [case.id, other_case.id]
    assert client.get("/admin/api/reviews?status=decided", headers=admin).get_json()["items"] == []
    assert client.get("/admin/api/reviews", headers=staff).status_code == 403  # a merchant may be the suspect

    one = client.get(f"/admin/api/reviews/{case.id}", headers=admin).get_json()
    assert (one["order"]["id"], one["score"], one["reasons"]) == (order.id, 87, ["paid 9 s after first view"])
    assert {r["role"]: (r["status"], r["held_fen"]) for r in one["rebates"]} == {
        "issuer": ("review", ISSUER),
        "consumer": ("review", CONSUMER),
    }
    assert client.get(f"/admin/api/reviews/{other_case.id}", headers=staff).status_code == 403
    assert client.get(f"/admin/api/reviews/{case.id}", headers=staff).status_code == 403
    refused = decide(client, staff, case.id, "release")
    assert refused.status_code == 403
    assert db.session.get(ReviewCase, case.id).status == "open"


def test_bad_decisions_change_nothing(client, make_operator, make_user, make_product, make_campaign, pay):
    order, _, _, campaign, case = setup(make_user, make_product, make_campaign, pay)
    _, admin = make_operator("admin")
    path = f"/admin/api/reviews/{case.id}/decide"

    cases = [
        ({"outcome": "pardon", "reason": "why not"}, 422),
        ({"outcome": "release"}, 422),  # no reason
        ({"outcome": "release", "reason": ""}, 422),
        ({"outcome": "release", "reason": "ok", "ban_days": 3}, 422),  # days go with bans
        ({"outcome": "ban_user", "reason": "ok!", "ban_days": 0}, 422),
    ]
    for body, status in cases:
        resp = client.post(path, json=body, headers=admin)
        assert resp.status_code == status, (body, resp.get_json())
        assert "error" in resp.get_json()
    assert decide(client, admin, 999_999, "release").status_code == 404
    assert db.session.get(ReviewCase, case.id).status == "open"
    assert committed(campaign.id) == PACKET + ISSUER + CONSUMER
    assert {r.status for r in rebates_of(order.id).values()} == {"review"}


def test_a_community_case_claws_back_its_members_rebates_and_bans_its_members(
    client, make_operator, make_user, make_product, make_campaign, make_merchant, pay
):
    # given: a ring at one shop: two paid orders; a community listing both buyers, the issuer and the shop
    shop = make_merchant()
    order_a, buyer_a, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay, merchant=shop)
    order_b, buyer_b, issuer_b, _ = paid_order(make_user, make_product, make_campaign, pay, merchant=shop)
    members = [f"user:{buyer_a.id}", f"user:{buyer_b.id}", f"user:{issuer.id}", f"merchant:{shop.id}"]
    case = community_case(members, concerned_fen=2 * (ISSUER + CONSUMER), merchant_id=shop.id)
    _, admin = make_operator("admin")

    detail = client.get(f"/admin/api/reviews/{case.id}", headers=admin).get_json()
    assert detail["community"]["members"] == members
    device = decide(client, admin, case.id, "ban_device")
    assert (device.status_code, device.get_json()["error"]) == (422, "no_device")

    # when: clawed back
    resp = decide(client, admin, case.id, "claw_back", "a ring")

    # then: what was paid to members on the ring's orders comes back; issuer_b is no member: keeps theirs
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["effects"]["clawed_back_fen"] == ISSUER + 2 * CONSUMER
    assert (cash(buyer_a.id), cash(buyer_b.id), cash(issuer.id), cash(issuer_b.id)) == (0, 0, 0, ISSUER)
    assert rebates_of(order_b.id)["issuer"].status == "awarded"
    assert committed(campaign.id) == PACKET


def test_a_community_ban_user_bans_every_member_and_release_dismisses(client, make_operator, make_user):
    amy, ben = make_user(), make_user()
    banned = community_case([f"user:{amy.id}", f"user:{ben.id}", f"device:{DEVICE}"])
    dismissed = community_case([f"user:{ben.id}", "net:10.1.2.0/24"])
    _, admin = make_operator("admin")

    resp = decide(client, admin, banned.id, "ban_user", "sybils")
    assert resp.status_code == 200, resp.get_json()
    assert (status_of(amy.id), status_of(ben.id)) == ("banned", "banned")
    assert len(resp.get_json()["effects"]["bans"]) == 2

    release = decide(client, admin, dismissed.id, "release", "a shared office")
    assert (release.status_code, release.get_json()["label"]) == (200, "legit")


def reject(client, headers, case_id, reason="not what the trail shows"):
    return client.post(f"/admin/api/reviews/{case_id}/proposal/reject", json={"reason": reason}, headers=headers)


def test_a_proposal_can_be_rejected_or_withdrawn_and_the_case_is_open_again(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    # given: a case above the threshold and a proposal to ban the buyer for 7 days
    order, buyer, issuer, campaign, case = setup(make_user, make_product, make_campaign, pay, price_fen=5_000_00)
    held = case.held_fen
    first_op, first = make_operator("support")
    second_op, second = make_operator("admin")
    assert decide(client, first, case.id, "ban_user", "ring", ban_days=7).status_code == 200

    # when: a second reviewer disagrees: the case is open again, nothing moved, nobody banned
    rejected = reject(client, second, case.id)
    assert rejected.status_code == 200, rejected.get_json()
    body = rejected.get_json()
    assert (body["status"], body["proposed_outcome"], body["proposed_by"], body["proposed_ban_days"]) == (
        "open",
        None,
        None,
        None,
    )
    assert {r.status for r in rebates_of(order.id).values()} == {"review"}
    assert committed(campaign.id) == PACKET + held
    assert count(Ban) == 0 and status_of(buyer.id) == "active"
    audit = db.session.execute(select(AuditLog).where(AuditLog.action == "review.proposal_reject")).scalar_one()
    assert audit.operator_id == second_op.id and audit.details["withdrawn"] is False
    assert (audit.details["proposed_outcome"], audit.details["proposed_ban_days"]) == ("ban_user", 7)

    # then: nothing is left to reject (409), and the next decision is a new proposal the rejecter may make
    again = reject(client, second, case.id)
    assert (again.status_code, again.get_json()["error"]) == (409, "no_proposal")
    proposed = decide(client, second, case.id, "release", "the trail is a family's")
    assert (proposed.get_json()["status"], proposed.get_json()["proposed_by"]) == ("awaiting_approval", second_op.id)

    # when: its proposer withdraws it: open again, recorded as withdrawn
    withdrawn = reject(client, second, case.id, "asked the merchant first")
    assert withdrawn.get_json()["status"] == "open"
    audits = db.session.execute(select(AuditLog).where(AuditLog.action == "review.proposal_reject")).scalars().all()
    assert [a.details["withdrawn"] for a in audits] == [False, True]

    # then: decided cases have no proposal to reject, and the approval path still works after a rejection
    assert decide(client, first, case.id, "revoke", "ring").get_json()["status"] == "awaiting_approval"
    assert decide(client, second, case.id, "revoke", "agreed").get_json()["status"] == "decided"
    decided = reject(client, first, case.id)
    assert (decided.status_code, decided.get_json()["error"]) == (409, "no_proposal")
    assert {r.status for r in rebates_of(order.id).values()} == {"revoked"}


def test_bad_proposal_rejections_change_nothing(client, make_operator, make_user, make_product, make_campaign, pay):
    order, buyer, issuer, campaign, case = setup(make_user, make_product, make_campaign, pay, price_fen=5_000_00)
    _, first = make_operator("support")
    _, staff = make_operator("merchant_staff")
    assert decide(client, first, case.id, "revoke", "ring").status_code == 200
    assert reject(client, first, case.id, "").status_code == 422  # a reason is needed
    assert client.post(f"/admin/api/reviews/{case.id}/proposal/reject", json={}, headers=first).status_code == 422
    assert reject(client, staff, case.id).status_code == 403
    assert reject(client, first, 999_999).status_code == 404
    db.session.expire_all()
    assert db.session.get(ReviewCase, case.id).status == "awaiting_approval"


def test_a_claw_back_of_paid_money_above_the_threshold_needs_a_second_reviewer(
    app, client, make_operator, make_user, make_product, make_campaign, pay, monkeypatch
):
    """Four eyes count what the outcome moves: a case holding 4.50 whose clawback takes back 9.00 already paid
    was decided by one reviewer when only the 4.50 held was compared with the threshold."""
    monkeypatch.setitem(app.config, "RISK_SECOND_APPROVAL_FEN", CONSUMER)  # 4.50: the held part alone is not above
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order, roles=("consumer",))
    assert case.held_fen == CONSUMER and cash(issuer.id) == ISSUER
    first_op, first = make_operator("support")
    _, second = make_operator("admin")

    proposed = decide(client, first, case.id, "claw_back", "issuer and buyer share a device")
    assert proposed.status_code == 200, proposed.get_json()
    assert (proposed.get_json()["status"], proposed.get_json()["proposed_by"]) == ("awaiting_approval", first_op.id)
    assert cash(issuer.id) == ISSUER  # nothing moved
    # while it awaits, another outcome is not decided around it, however little that one moves
    differs = decide(client, second, case.id, "revoke", "only the held part")
    assert (differs.status_code, differs.get_json()["error"]) == (409, "proposal_differs")

    approved = decide(client, second, case.id, "claw_back", "agreed")
    assert approved.get_json()["status"] == "decided"
    assert approved.get_json()["effects"]["clawed_back_fen"] == ISSUER
    assert cash(issuer.id) == 0
