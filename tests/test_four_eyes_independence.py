"""Four eyes are two people: an operator the proposer created recently (directly, or through operators they
created) does not approve the proposer's manual payout, deposit top-up, fee payment or review decision.

Found acting as an insider (2026-12-02): one admin created a finance operator, proposed a 15,000-yuan manual
payout and approved it with the new operator's token; likewise a deposit top-up of 10^13 fen.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from ledger import account, balance
from models import AccountKind, Operator, Payout, db
from models.operators import NEW_OPERATOR_COOLING
from tests.test_deposits_four_eyes import decide, propose


def created_by(client, headers, role: str = "finance") -> tuple[int, dict]:
    """An operator the caller creates through the API: (id, their headers)."""
    body = {"username": f"sock-{uuid.uuid4().hex[:8]}", "display_name": "a second pair of hands", "role": role}
    made = client.post("/admin/api/operators", json={**body, "reason": "need a hand"}, headers=headers)
    assert made.status_code == 201, made.json
    operator = db.session.get(Operator, made.json["id"])
    if operator.confirmed_at is None:  # as if a second admin confirmed it (tests/test_operator_confirmation.py)
        operator.confirmed_at = operator.created_at
        db.session.commit()
    return made.json["id"], {"Authorization": f"Bearer {made.json['token']}"}


def age(operator_id: int, by: timedelta) -> None:
    operator = db.session.get(Operator, operator_id)
    operator.created_at -= by
    db.session.commit()


def manual_payout(client, headers, user, amount_fen: int = 50_000) -> int:
    body = {"user_id": user.id, "amount_fen": amount_fen, "reason": "goodwill for a late delivery"}
    made = client.post("/admin/api/payouts", json=body, headers={"Idempotency-Key": uuid.uuid4().hex, **headers})
    assert (made.status_code, made.json["status"]) == (201, "needs_operator"), made.json
    return made.json["id"]


def approve_payout(client, headers, payout_id: int):
    return client.post(f"/admin/api/payouts/{payout_id}/approve", json={"reason": "checked"}, headers=headers)


def test_a_payout_is_not_approved_by_an_operator_its_proposer_just_created(app, client, make_operator, make_user):
    admin, admin_h = make_operator("admin")
    puppet, puppet_h = created_by(client, admin_h)
    payout_id = manual_payout(client, admin_h, make_user(appid=app.config["WECHAT_APPID"]))
    refused = approve_payout(client, puppet_h, payout_id)
    assert (refused.status_code, refused.json["error"]) == (403, "approver_not_independent"), refused.json
    assert "making" in refused.json["message"]
    db.session.expire_all()
    payout = db.session.get(Payout, payout_id)
    assert (payout.status, payout.approved_by_operator_id) == ("needs_operator", None)
    # an operator somebody else made approves at once; the puppet, once its account is past the cooling
    _, other_h = make_operator("finance")
    second = manual_payout(client, admin_h, make_user(appid=app.config["WECHAT_APPID"]))
    assert approve_payout(client, other_h, second).status_code == 200
    age(puppet, NEW_OPERATOR_COOLING + timedelta(minutes=1))
    later = approve_payout(client, puppet_h, payout_id)
    assert later.status_code == 200, later.json


def test_a_chain_of_fresh_operators_is_still_the_proposer(app, client, make_operator, make_user):
    """A makes admin B, B makes finance C: C does not approve A's payout (B, made long ago, would)."""
    _, a_h = make_operator("admin")
    b, b_h = created_by(client, a_h, role="admin")
    _, c_h = created_by(client, b_h)
    payout_id = manual_payout(client, a_h, make_user(appid=app.config["WECHAT_APPID"]))
    refused = approve_payout(client, c_h, payout_id)
    assert (refused.status_code, refused.json["error"]) == (403, "approver_not_independent")
    age(b, NEW_OPERATOR_COOLING * 2)  # B is an old colleague now: C was made by B, not by A
    assert approve_payout(client, c_h, payout_id).status_code == 200


def test_a_deposit_top_up_is_not_approved_by_an_operator_its_proposer_just_created(
    client, make_operator, make_merchant
):
    _, admin_h = make_operator("admin")
    _, puppet_h = created_by(client, admin_h)
    shop = make_merchant()
    proposed = propose(client, admin_h, shop.id, amount_fen=10**13)
    refused = decide(client, puppet_h, proposed.json["id"])
    assert (refused.status_code, refused.json["error"]) == (409, "approver_not_independent"), refused.json
    db.session.rollback()
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)) == 0
    _, other_h = make_operator("finance")
    assert decide(client, other_h, proposed.json["id"]).status_code == 200


def test_a_large_review_decision_is_not_approved_by_an_operator_its_proposer_just_created(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    from tests.review_helpers import rebates_of
    from tests.test_review_cases import decide as decide_case
    from tests.test_review_cases import setup

    order, *_, case = setup(make_user, make_product, make_campaign, pay, price_fen=5_000_00)  # above 200.00 held
    _, admin_h = make_operator("admin")
    _, puppet_h = created_by(client, admin_h, role="support")
    assert decide_case(client, admin_h, case.id, "release").json["status"] == "awaiting_approval"
    refused = decide_case(client, puppet_h, case.id, "release")
    assert (refused.status_code, refused.json["error"]) == (403, "second_reviewer_required"), refused.json
    assert "making" in refused.json["message"]
    assert {r.status for r in rebates_of(order.id).values()} == {"review"}
    _, other_h = make_operator("admin")
    assert decide_case(client, other_h, case.id, "release").json["status"] == "decided"


def test_the_creator_does_not_approve_what_their_new_account_proposed(app, client, make_operator, make_user):
    _, admin_h = make_operator("admin")
    _, puppet_h = created_by(client, admin_h)  # the admin holds its first token
    payout_id = manual_payout(client, puppet_h, make_user(appid=app.config["WECHAT_APPID"]))
    refused = approve_payout(client, admin_h, payout_id)
    assert (refused.status_code, refused.json["error"]) == (403, "approver_not_independent"), refused.json


def test_two_new_accounts_of_one_admin_do_not_approve_each_other(app, client, make_operator, make_user):
    _, admin_h = make_operator("admin")
    _, one_h = created_by(client, admin_h)
    _, two_h = created_by(client, admin_h)
    payout_id = manual_payout(client, one_h, make_user(appid=app.config["WECHAT_APPID"]))
    refused = approve_payout(client, two_h, payout_id)
    assert (refused.status_code, refused.json["error"]) == (403, "approver_not_independent"), refused.json


def test_waiting_does_not_make_a_fresh_account_independent_of_the_proposal(app, make_operator):
    """Freshness is measured at the proposal: a proposal left for 73 h is still approved by its proposer's new
    account only if that account was made 72 h before the proposal."""
    from datetime import timedelta

    from models import utcnow
    from models.operators import approval_refused_because

    creator, _ = make_operator("admin")
    puppet = Operator(username="sock-late", display_name="x", role="finance", created_by_operator_id=creator.id)
    db.session.add(puppet)
    db.session.flush()
    proposed_at = puppet.created_at + timedelta(hours=1)
    later = proposed_at + NEW_OPERATOR_COOLING * 2
    assert approval_refused_because(puppet, creator.id, proposed_at, later) is not None
    puppet.created_at -= NEW_OPERATOR_COOLING  # made long before the proposal: a colleague by then
    assert approval_refused_because(puppet, creator.id, proposed_at, later) is None
    assert approval_refused_because(creator, creator.id, proposed_at, utcnow()) is not None  # themselves, ever


def test_fresh_accounts_of_one_admin_share_the_manual_payout_limit(app, client, make_operator, make_user):
    """Split over two new accounts and two people, 2 × 300 yuan no second operator approved is still one person's
    600 yuan: the second waits for approval (review of 2026-12-02)."""
    _, admin_h = make_operator("admin")
    _, one_h = created_by(client, admin_h)
    _, two_h = created_by(client, admin_h)
    body = {"amount_fen": 30_000, "reason": "goodwill for a late delivery"}
    answers = []
    for headers in (one_h, two_h):
        user = make_user(appid=app.config["WECHAT_APPID"])
        made = client.post(
            "/admin/api/payouts",
            json={**body, "user_id": user.id},
            headers={"Idempotency-Key": uuid.uuid4().hex, **headers},
        )
        answers.append((made.status_code, made.json["status"]))
    assert answers == [(201, "pending"), (201, "needs_operator")]
    _, stranger_h = make_operator("finance")  # an account nobody made lately has a limit of its own
    made = client.post(
        "/admin/api/payouts",
        json={**body, "user_id": make_user(appid=app.config["WECHAT_APPID"]).id},
        headers={"Idempotency-Key": uuid.uuid4().hex, **stranger_h},
    )
    assert (made.status_code, made.json["status"]) == (201, "pending")
