"""Deposit top-ups with four eyes (issue 16): one operator proposes, a different one approves.

The proposer cannot approve; approval posts the ledger entry exactly once (also when two approvers race);
a rejected or decided proposal moves nothing more. In FUND_FLOW=service_provider there are no top-ups (二清).
A merchant-funded campaign still cannot commit beyond what the deposit holds.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ledger import account, balance
from models import AccountKind, AuditLog, Campaign, LedgerEntry, db, utcnow
from rebate import issue_packet
from rebate.errors import DepositExhausted


def deposit(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))


def propose(client, headers, merchant_id: int, amount_fen: int = 100_00, key: str = "k1"):
    return client.post(
        f"/admin/api/merchants/{merchant_id}/deposit/top-ups",
        json={"amount_fen": amount_fen, "reason": "bank transfer", "transfer_ref": f"TR-{key}"},
        headers={**headers, "Idempotency-Key": key},
    )


def decide(client, headers, proposal_id: int, verb: str = "approve"):
    return client.post(
        f"/admin/api/deposit-proposals/{proposal_id}/{verb}", json={"reason": "checked"}, headers=headers
    )


def top_up_entries() -> int:
    return db.session.execute(
        select(func.count()).where(LedgerEntry.idempotency_key.like("deposit:%:proposal:%"))
    ).scalar_one()


def test_the_proposer_cannot_approve_and_a_second_operator_posts_it_once(client, make_operator, make_merchant):
    finance, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    shop = make_merchant()

    # when: finance proposes 100 yuan
    proposed = propose(client, finance_h, shop.id)

    # then: pending, nothing in the deposit
    assert proposed.status_code == 201 and proposed.json["status"] == "pending"
    assert proposed.json["proposed_by"] == finance.id and deposit(shop.id) == 0
    pid = proposed.json["id"]

    # when: the proposer tries to approve their own
    own = decide(client, finance_h, pid)

    # then: 409, still pending, nothing posted
    assert (own.status_code, own.json["error"]) == (409, "second_operator_required")
    assert deposit(shop.id) == 0 and top_up_entries() == 0

    # when: an admin approves, then approves again
    approved = decide(client, admin_h, pid)
    again = decide(client, admin_h, pid)

    # then: posted once
    assert approved.status_code == 200 and approved.json["status"] == "approved"
    assert approved.json["deposit_fen"] == 100_00
    assert (again.status_code, again.json["error"]) == (409, "proposal_decided")
    assert deposit(shop.id) == 100_00 and top_up_entries() == 1
    actions = [a for (a,) in db.session.execute(select(AuditLog.action).order_by(AuditLog.id))]
    assert actions == ["merchant.deposit_propose", "merchant.deposit_top_up"]


def test_a_rejected_proposal_moves_nothing_and_cannot_be_approved(client, make_operator, make_merchant):
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    shop = make_merchant()
    pid = propose(client, finance_h, shop.id).json["id"]

    rejected = decide(client, admin_h, pid, "reject")
    late = decide(client, admin_h, pid)

    assert rejected.status_code == 200 and rejected.json["status"] == "rejected"
    assert late.status_code == 409 and deposit(shop.id) == 0


def test_the_proposer_may_withdraw_their_own_proposal(client, make_operator, make_merchant):
    finance, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    shop = make_merchant()
    pid = propose(client, finance_h, shop.id).json["id"]

    withdrawn = decide(client, finance_h, pid, "reject")
    late = decide(client, admin_h, pid)

    assert withdrawn.status_code == 200, withdrawn.json
    assert (withdrawn.json["status"], withdrawn.json["decided_by"]) == ("rejected", None)
    assert late.status_code == 409 and deposit(shop.id) == 0
    audit = db.session.execute(select(AuditLog).where(AuditLog.action == "merchant.deposit_reject")).scalar_one()
    assert audit.operator_id == finance.id


def test_pending_proposals_are_listed_and_merchant_staff_see_their_own_only(client, make_operator, make_merchant):
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    staff_op, staff_h = make_operator("merchant_staff")
    other = make_merchant()
    mine = propose(client, finance_h, staff_op.merchant_id, key="a").json["id"]
    theirs = propose(client, finance_h, other.id, key="b").json["id"]
    done = propose(client, finance_h, other.id, key="c").json["id"]
    decide(client, admin_h, done)

    pending = client.get("/admin/api/deposit-proposals?status=pending", headers=admin_h).json["items"]
    seen_by_staff = client.get("/admin/api/deposit-proposals", headers=staff_h).json["items"]

    assert [p["id"] for p in pending] == [theirs, mine]
    assert [p["id"] for p in seen_by_staff] == [mine]
    assert decide(client, staff_h, mine).status_code == 403  # staff neither approve…
    assert propose(client, staff_h, staff_op.merchant_id, key="d").status_code == 403  # …nor propose


def test_another_merchants_proposal_is_not_found_for_its_staff(app, make_operator, make_merchant):
    from models.operators import Actor
    from rebate.deposit_ops import reject_top_up
    from rebate.errors import NotFound

    finance, _ = make_operator("finance")
    staff, _ = make_operator("merchant_staff")
    other = make_merchant()
    from rebate.deposit_ops import propose_top_up

    proposal = propose_top_up(Actor(finance), other.id, 1_00, "paid", "direct")
    db.session.commit()
    with pytest.raises(NotFound):
        reject_top_up(Actor(staff), proposal.id, "not mine")


@pytest.mark.parametrize(
    "sent, status",
    [({"amount_fen": 0, "reason": "zero"}, 422), ({"amount_fen": -1, "reason": "neg"}, 422), ({"amount_fen": 5}, 422)],
)
def test_bad_proposals_are_refused(client, make_operator, make_merchant, sent, status):
    _, finance_h = make_operator("finance")
    shop = make_merchant()
    resp = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/top-ups", json=sent, headers={**finance_h, "Idempotency-Key": "k"}
    )
    assert resp.status_code == status
    assert client.get("/admin/api/deposit-proposals", headers=finance_h).json["items"] == []


def test_unknown_proposal_and_merchant_are_404(client, make_operator):
    _, admin_h = make_operator("admin")
    assert decide(client, admin_h, 999_999).status_code == 404
    assert propose(client, admin_h, 999_999).status_code == 404


def test_service_provider_mode_refuses_top_ups_explaining_why(app, client, make_operator, make_merchant):
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    shop = make_merchant()
    pid = propose(client, finance_h, shop.id, key="before").json["id"]  # proposed while still direct
    app.config["FUND_FLOW"] = "service_provider"

    refused = propose(client, finance_h, shop.id, key="after")
    late = decide(client, admin_h, pid)

    assert (refused.status_code, refused.json["error"]) == (409, "deposits_not_in_service_provider_mode")
    assert "二清" in refused.json["message"]
    assert (late.status_code, late.json["error"]) == (409, "deposits_not_in_service_provider_mode")
    assert deposit(shop.id) == 0
    assert client.get("/admin/api/deposit-proposals?status=pending", headers=admin_h).json["items"][0]["id"] == pid


def test_two_approvers_at_once_post_the_top_up_once(app, client, make_operator, make_merchant):
    from tests.concurrency import post_together

    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    _, admin2_h = make_operator("admin")
    shop = make_merchant()
    pid = propose(client, finance_h, shop.id).json["id"]
    path = f"/admin/api/deposit-proposals/{pid}/approve"

    results = post_together(app, [(path, admin_h, {"reason": "checked"}), (path, admin2_h, {"reason": "checked"})])

    assert sorted(results) == [(200, None), (409, "proposal_decided")], results
    assert deposit(shop.id) == 100_00 and top_up_entries() == 1


def test_a_merchant_funded_campaign_cannot_commit_beyond_the_approved_deposit(
    client, make_operator, make_merchant, make_campaign, make_user
):
    # given: a 30-yuan deposit, approved; packets of 20 yuan (each reserves 20 + a 1-yuan rebate cap)
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    shop = make_merchant()
    decide(client, admin_h, propose(client, finance_h, shop.id, amount_fen=30_00).json["id"])
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]},
        fund_deposit_fen=0,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=20_00,
        trigger={"kind": "claim"},
        claim_limits={"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None},
    )

    # when: two packets are issued
    first = issue_packet(campaign, make_user(), source="t", source_ref="1", now=utcnow())
    db.session.commit()
    with pytest.raises(DepositExhausted):
        issue_packet(campaign, make_user(), source="t", source_ref="2", now=utcnow())
    db.session.rollback()

    # then: only the first: 21 of 30 reserved, the second would take 42
    assert first.reserved_fen == 21_00
    assert db.session.get(Campaign, campaign.id).budget_reserved_fen == 21_00
    assert deposit(shop.id) == 30_00
