"""Probe findings on review cases and bans (each test failed before its fix).

The ledger check runs after every test (tests/conftest.py).
"""

from __future__ import annotations

from models import Ban, db, utcnow
from tests.review_helpers import hold_for_review, paid_order, rebates_of, status_of


def decide(client, headers, case_id, outcome, reason="checked the trail", **extra):
    return client.post(
        f"/admin/api/reviews/{case_id}/decide", json={"outcome": outcome, "reason": reason, **extra}, headers=headers
    )


def big_case(make_user, make_product, make_campaign, pay):
    """A 5,000-yuan order held for review: above the default RISK_SECOND_APPROVAL_FEN."""
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay, price_fen=5_000_00)
    case = hold_for_review(order)
    assert case.held_fen > 200_00
    return order, buyer, case


def test_a_second_reviewer_approves_the_ban_length_proposed_not_another(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    # given: the first reviewer proposes banning the buyer for 7 days
    order, buyer, case = big_case(make_user, make_product, make_campaign, pay)
    _, first = make_operator("support")
    _, second = make_operator("admin")
    proposed = decide(client, first, case.id, "ban_user", "sybil", ban_days=7)
    assert (proposed.status_code, proposed.get_json()["status"]) == (200, "awaiting_approval")
    assert proposed.get_json()["proposed_ban_days"] == 7

    # when: the second reviewer "approves" a ban with no end, or another length
    forever = decide(client, second, case.id, "ban_user", "agreed")
    longer = decide(client, second, case.id, "ban_user", "agreed", ban_days=3650)

    # then: neither is the proposal: refused, nothing moved, nobody banned
    for resp in (forever, longer):
        assert (resp.status_code, resp.get_json()["error"]) == (409, "proposal_differs"), resp.get_json()
        assert "7 days" in resp.get_json()["message"]
    assert db.session.query(Ban).count() == 0
    assert status_of(buyer.id) == "active"
    assert {r.status for r in rebates_of(order.id).values()} == {"review"}

    # when: the second reviewer approves what was proposed: a 7-day ban
    approved = decide(client, second, case.id, "ban_user", "agreed", ban_days=7)
    assert approved.status_code == 200, approved.get_json()
    (ban_id,) = approved.get_json()["effects"]["bans"]
    ban = db.session.get(Ban, ban_id)
    assert 6 <= (ban.ends_at - utcnow()).days <= 7
    assert status_of(buyer.id) == "banned"


def test_a_proposed_ban_until_lifted_is_not_approved_as_a_one_day_ban(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, case = big_case(make_user, make_product, make_campaign, pay)
    _, first = make_operator("support")
    _, second = make_operator("admin")
    assert decide(client, first, case.id, "ban_user", "sybil").status_code == 200

    shorter = decide(client, second, case.id, "ban_user", "agreed", ban_days=1)

    assert (shorter.status_code, shorter.get_json()["error"]) == (409, "proposal_differs")
    assert db.session.query(Ban).count() == 0
    approved = decide(client, second, case.id, "ban_user", "agreed")
    assert approved.status_code == 200, approved.get_json()
    (ban_id,) = approved.get_json()["effects"]["bans"]
    assert db.session.get(Ban, ban_id).ends_at is None


def test_another_outcome_on_a_decided_case_names_both_in_plain_words(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order)
    _, support = make_operator("support")
    assert decide(client, support, case.id, "claw_back", "ring").status_code == 200

    resp = decide(client, support, case.id, "revoke", "ring")

    assert (resp.status_code, resp.get_json()["error"]) == (409, "case_decided")
    message = resp.get_json()["message"]
    assert "CaseOutcome" not in message and "<" not in message
    assert "'claw_back'" in message and "'revoke'" in message


def test_a_ban_length_that_is_not_a_whole_number_is_refused_and_bans_no_one(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    _, admin = make_operator("admin")
    person = make_user()
    for days in (True, False, 1.5, "one"):
        body = {"subject": "user", "value": str(person.id), "reason": "sybil", "days": days}
        resp = client.post("/admin/api/bans", json=body, headers=admin)
        assert resp.status_code == 422, (days, resp.get_json())
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order)
    for days in (True, False):
        resp = decide(client, admin, case.id, "ban_user", "sybil", ban_days=days)
        assert resp.status_code == 422, (days, resp.get_json())
    assert db.session.query(Ban).count() == 0
    assert status_of(person.id) == status_of(buyer.id) == "active"
    assert {r.status for r in rebates_of(order.id).values()} == {"review"}
