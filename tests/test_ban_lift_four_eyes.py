"""Lifting a ban two operators made takes two as well: a review case's ban a second reviewer approved is lifted by a
proposal (``DELETE /admin/api/bans/<id>``, 202) that a different operator approves (``…/lift/approve``) or anyone
rejects (``…/lift/reject``); a ban one operator made is lifted by one; a timed ban's expiry needs nobody.

On SQLite and PostgreSQL alike (the races: tests/concurrency.py)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from models import AuditLog, Ban, Merchant, Payout, db, utcnow
from rebate.ban_ops import lift_expired_bans
from tests.concurrency import post_together, together, wait_until_a_backend_waits_on_a_lock
from tests.conftest import on_postgres
from tests.money_helpers import app_money
from tests.review_helpers import community_case, status_of
from tests.test_dispatch import ScriptedRail, funded_payout, ok, run  # noqa: F401 - fixture

ABOVE = 300_00  # more than RISK_SECOND_APPROVAL_FEN (200.00): the case is decided by two reviewers


def decide(client, headers, case_id, outcome, reason="checked the ring", **extra):
    return client.post(
        f"/admin/api/reviews/{case_id}/decide", json={"outcome": outcome, "reason": reason, **extra}, headers=headers
    )


def lift(client, headers, ban_id, reason="appeal granted"):
    return client.delete(f"/admin/api/bans/{ban_id}", json={"reason": reason}, headers=headers)


def approve(client, headers, ban_id, reason="appeal checked"):
    return client.post(f"/admin/api/bans/{ban_id}/lift/approve", json={"reason": reason}, headers=headers)


def reject(client, headers, ban_id, reason="the ring is real"):
    return client.post(f"/admin/api/bans/{ban_id}/lift/reject", json={"reason": reason}, headers=headers)


def audits(action: str) -> list[AuditLog]:
    db.session.expire_all()
    return list(db.session.execute(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)).scalars())


def audit_count() -> int:
    return db.session.execute(select(func.count()).select_from(AuditLog)).scalar_one()


def ban_row(ban_id: int) -> Ban:
    db.session.expire_all()
    return db.session.get(Ban, ban_id)


def error(resp) -> tuple[int, str | None]:
    return resp.status_code, (resp.get_json(silent=True) or {}).get("error")


@pytest.fixture
def admins(make_operator):
    """Three platform operators: two reviewers and an admin (the support reviewer may lift bans too)."""
    return make_operator("support"), make_operator("admin"), make_operator("admin")


def two_person_ban(client, reviewers, members: list[str], outcome: str = "ban_user", **extra) -> int:
    """A community case above the threshold banned by two reviewers (the first proposes, the second approves)."""
    case = community_case(members, concerned_fen=ABOVE)
    (_, first), (_, second) = reviewers
    assert decide(client, first, case.id, outcome, **extra).get_json()["status"] == "awaiting_approval"
    decided = decide(client, second, case.id, outcome, **extra)
    assert decided.status_code == 200, decided.get_json()
    (ban_id,) = decided.get_json()["effects"]["bans"]
    return ban_id


def test_a_two_person_ban_is_lifted_only_when_a_second_operator_approves_and_the_payouts_wait_till_then(
    client, admins, make_user, funded_payout
):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    waiting, _ = funded_payout()
    ban_id = two_person_ban(client, [(sup_op, sup), (b_op, b)], [f"user:{waiting.user_id}"])
    rail = ScriptedRail(ok("bill-1"))

    # when: one admin lifts it: a proposal, the ban still holds
    proposed = lift(client, a, ban_id, "appeal: a shared office")
    assert proposed.status_code == 202, proposed.get_json()
    body = proposed.get_json()
    assert (body["active"], body["lift_needs_approval"], body["lift_pending"]) == (True, True, True)
    assert (body["lift_proposed_by"], body["lift_proposed_reason"], body["lifted_at"]) == (
        a_op.id,
        "appeal: a shared office",
        None,
    )
    assert status_of(waiting.user_id) == "banned"
    run(rail)
    assert rail.calls == [] and db.session.get(Payout, waiting.id).status == "pending"  # still waits
    [line] = audits("ban.lift_propose")
    assert (line.operator_id, line.target_id, line.reason) == (a_op.id, str(ban_id), "appeal: a shared office")
    assert audits("ban.lift") == []

    # the proposer cannot approve their own: nothing changes
    before = audit_count()
    assert error(approve(client, a, ban_id)) == (403, "same_operator")
    assert (status_of(waiting.user_id), ban_row(ban_id).lifted_at, audit_count()) == ("banned", None, before)

    # a different operator approves: lifted now, the person active, the payout goes
    approved = approve(client, sup, ban_id, "the office checks out")
    assert approved.status_code == 200, approved.get_json()
    body = approved.get_json()
    assert (body["active"], body["lift_pending"], body["lifted_by"], body["lift_reason"]) == (
        False,
        False,
        sup_op.id,
        "the office checks out",
    )
    assert body["lift_proposed_by"] == a_op.id  # who proposed it stays on the ban
    assert status_of(waiting.user_id) == "active"
    [line] = audits("ban.lift")
    assert (line.operator_id, line.reason) == (sup_op.id, "the office checks out")
    assert (line.details["proposed_by"], line.details["proposed_reason"]) == (a_op.id, "appeal: a shared office")
    run(rail)
    assert db.session.get(Payout, waiting.id).status == "succeeded"

    # again: the same answer, nothing done twice (an approval, a lift)
    assert approve(client, b, ban_id).get_json() == body
    assert lift(client, b, ban_id).get_json() == body
    assert len(audits("ban.lift")) == 1


def test_a_two_person_merchant_ban_keeps_the_merchant_suspended_until_approved(
    client, admins, make_merchant, make_campaign
):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    merchant = make_merchant()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"merchant:{merchant.id}"], "ban_merchant")
    db.session.expire_all()
    assert db.session.get(Merchant, merchant.id).status == "suspended"

    assert lift(client, b, ban_id).status_code == 202
    db.session.expire_all()
    assert db.session.get(Merchant, merchant.id).status == "suspended"

    assert approve(client, a, ban_id).status_code == 200  # one of the two who banned it may approve its lift
    db.session.expire_all()
    assert db.session.get(Merchant, merchant.id).status == "active"


def test_a_second_proposal_while_one_waits_is_409_and_changes_nothing(client, admins, make_user):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    assert lift(client, a, ban_id, "first").status_code == 202
    before = audit_count()

    for who in (b, a):  # another operator, or the proposer again
        refused = lift(client, who, ban_id, "second")
        assert error(refused) == (409, "lift_pending")
        assert f"operator {a_op.id}" in refused.get_json()["message"]

    row = ban_row(ban_id)
    assert (row.lift_proposed_by, row.lift_proposed_reason, row.lifted_at) == (a_op.id, "first", None)
    assert (audit_count(), status_of(amy.id)) == (before, "banned")


def test_a_rejected_or_withdrawn_proposal_leaves_the_ban_and_a_new_one_may_follow(client, admins, make_user):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])

    assert error(reject(client, b, ban_id)) == (409, "no_lift_proposed")  # nothing waits yet
    assert lift(client, a, ban_id, "appeal").status_code == 202

    rejected = reject(client, b, ban_id, "the ring is real")
    assert rejected.status_code == 200, rejected.get_json()
    body = rejected.get_json()
    assert (body["active"], body["lift_pending"], body["lift_proposed_by"]) == (True, False, None)
    assert status_of(amy.id) == "banned"
    [line] = audits("ban.lift_reject")
    assert (line.operator_id, line.reason, line.details) == (
        b_op.id,
        "the ring is real",
        {"withdrawn": False, "proposed_by": a_op.id, "proposed_reason": "appeal"},
    )
    assert error(approve(client, sup, ban_id)) == (409, "no_lift_proposed")  # nothing left to approve

    # a new proposal, withdrawn by its proposer
    assert lift(client, b, ban_id, "new evidence").status_code == 202
    assert reject(client, b, ban_id, "my mistake").status_code == 200
    assert audits("ban.lift_reject")[-1].details["withdrawn"] is True
    assert (status_of(amy.id), ban_row(ban_id).lift_proposed_by) == ("banned", None)


def test_bans_one_operator_made_are_lifted_by_one(client, admins, make_user):
    """From the bans screen, or of a case one reviewer decided alone (below the threshold)."""
    (sup_op, sup), (a_op, a), _ = admins
    amy, ben = make_user(), make_user()
    manual = client.post(
        "/admin/api/bans", json={"subject": "user", "value": str(amy.id), "reason": "sybils"}, headers=a
    ).get_json()
    small = community_case([f"user:{ben.id}"], concerned_fen=50_00)
    decided = decide(client, sup, small.id, "ban_user")
    assert decided.get_json()["status"] == "decided"
    (case_ban,) = decided.get_json()["effects"]["bans"]

    listed = {b["id"]: b["lift_needs_approval"] for b in client.get("/admin/api/bans", headers=a).get_json()["items"]}
    assert listed == {manual["id"]: False, case_ban: False}
    assert error(approve(client, sup, manual["id"])) == (409, "no_lift_proposed")

    for ban_id, user in ((manual["id"], amy), (case_ban, ben)):
        lifted = lift(client, a, ban_id)
        assert lifted.status_code == 200 and lifted.get_json()["active"] is False
        assert status_of(user.id) == "active"
    assert audits("ban.lift_propose") == []


def test_the_list_tells_which_bans_need_a_second_operator_to_lift(client, admins, make_user):
    (sup_op, sup), (a_op, a), _ = admins
    amy, ben = make_user(), make_user()
    two = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    one = client.post(
        "/admin/api/bans", json={"subject": "user", "value": str(ben.id), "reason": "sybils"}, headers=a
    ).get_json()["id"]
    lift(client, a, two)

    items = {b["id"]: b for b in client.get("/admin/api/bans", headers=sup).get_json()["items"]}
    assert {i: (b["lift_needs_approval"], b["lift_pending"]) for i, b in items.items()} == {
        two: (True, True),
        one: (False, False),
    }


def test_a_timed_two_person_ban_still_expires_on_its_own_with_a_proposal_waiting(client, admins, make_user):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"], ban_days=3)
    assert lift(client, b, ban_id).status_code == 202

    assert lift_expired_bans(utcnow() + timedelta(days=4), money=app_money()) == 1
    db.session.commit()
    row = ban_row(ban_id)
    assert (row.lifted_by, row.lift_reason.startswith("expired"), status_of(amy.id)) == (None, True, "active")

    # the proposal is moot: approving answers the ban as it is, rejecting finds nothing waiting
    before = audit_count()
    answer = approve(client, sup, ban_id)
    assert (answer.status_code, answer.get_json()["lifted_by"], answer.get_json()["lift_pending"]) == (200, None, False)
    assert error(reject(client, sup, ban_id)) == (409, "no_lift_proposed")
    assert audit_count() == before


def test_an_approver_of_the_proposers_own_making_is_refused(client, admins, make_operator, make_user):
    (sup_op, sup), (a_op, a), _ = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    sock_op, sock = make_operator("admin")
    sock_op.created_by_operator_id = a_op.id  # made by the proposer an hour ago: the proposer's hands
    db.session.commit()

    assert lift(client, a, ban_id).status_code == 202
    assert error(approve(client, sock, ban_id)) == (403, "approver_not_independent")
    assert (status_of(amy.id), ban_row(ban_id).lifted_at) == ("banned", None)


def test_bad_lift_requests_are_refused_and_change_nothing(client, admins, make_operator, make_user):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    _, finance = make_operator("finance")
    _, staff = make_operator("merchant_staff")
    before = audit_count()

    assert lift(client, finance, ban_id).status_code == 403
    assert lift(client, staff, ban_id).status_code == 403
    assert client.delete(f"/admin/api/bans/{ban_id}", json={"reason": " "}, headers=a).status_code == 422
    assert lift(client, a, ban_id).status_code == 202
    before = audit_count()
    for send in (approve, reject):
        path = f"/admin/api/bans/{ban_id}/lift/{send.__name__}"
        assert client.post(path, json={}, headers=b).status_code == 422
        assert client.post(path, json={"reason": "ok", "extra": 1}, headers=b).status_code == 422
        assert error(send(client, b, 999_999)) == (404, "not_found")
        assert send(client, finance, ban_id).status_code == 403
        assert send(client, staff, ban_id).status_code == 403
    row = ban_row(ban_id)
    assert (row.lifted_at, row.lift_proposed_by, audit_count(), status_of(amy.id)) == (None, a_op.id, before, "banned")


def test_the_database_refuses_a_lift_by_its_own_proposer(client, admins, make_user):
    (sup_op, sup), (a_op, a), _ = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    assert lift(client, a, ban_id).status_code == 202
    row = ban_row(ban_id)
    row.lifted_at, row.lifted_by, row.lift_reason = utcnow(), a_op.id, "by hand"
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()


def test_two_operators_proposing_at_once_make_one_proposal(app, client, admins, make_user):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    heads = [a, b]

    def propose(i: int):
        resp = app.test_client().delete(f"/admin/api/bans/{ban_id}", json={"reason": f"admin {i}"}, headers=heads[i])
        return error(resp)

    results = together(2, propose, app=app)

    assert sorted(results) == [(202, None), (409, "lift_pending")], results
    assert len(audits("ban.lift_propose")) == 1
    assert (ban_row(ban_id).lifted_at, status_of(amy.id)) == (None, "banned")


def test_two_operators_approving_at_once_lift_once(app, client, admins, make_user):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    assert lift(client, a, ban_id).status_code == 202
    path = f"/admin/api/bans/{ban_id}/lift/approve"

    results = post_together(app, [(path, sup, {"reason": "one"}), (path, b, {"reason": "two"})])

    assert [status for status, _ in results] == [200, 200], results
    assert len(audits("ban.lift")) == 1
    assert ban_row(ban_id).lifted_by in (sup_op.id, b_op.id) and status_of(amy.id) == "active"


def test_an_approval_and_a_rejection_at_once_do_one_of_them(app, client, admins, make_user):
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    assert lift(client, a, ban_id).status_code == 202

    results = post_together(
        app,
        [
            (f"/admin/api/bans/{ban_id}/lift/approve", sup, {"reason": "approved"}),
            (f"/admin/api/bans/{ban_id}/lift/reject", b, {"reason": "rejected"}),
        ],
    )

    row = ban_row(ban_id)
    if row.lifted_at is not None:  # approved first: the rejection finds nothing waiting
        assert results == [(200, None), (409, "no_lift_proposed")]
        assert status_of(amy.id) == "active"
    else:  # rejected first: the approval finds nothing to approve
        assert results == [(409, "no_lift_proposed"), (200, None)]
        assert (status_of(amy.id), row.lift_proposed_by) == ("banned", None)


@pytest.mark.skipif(not on_postgres(), reason="row locks: PostgreSQL (SQLite serialises its transactions)")
def test_a_proposal_waits_for_one_in_flight_and_then_answers_409(app, client, admins, make_user):
    """Another operator's proposal, written and not yet committed, holds the ban's row: a second proposal waits for
    it (it reads the ban under that row's lock) and then answers 409, never overwriting the first."""
    (sup_op, sup), (a_op, a), (b_op, b) = admins
    amy = make_user()
    ban_id = two_person_ban(client, [(sup_op, sup), (a_op, a)], [f"user:{amy.id}"])
    db.session.commit()
    holder = db.engine.connect()
    holder.begin()
    holder.execute(
        update(Ban)
        .where(Ban.id == ban_id)
        .values(lift_proposed_by=a_op.id, lift_proposed_at=utcnow(), lift_proposed_reason="first")
    )
    answers: list = []

    def propose():
        answers.append(
            error(app.test_client().delete(f"/admin/api/bans/{ban_id}", json={"reason": "second"}, headers=b))
        )

    proposing = threading.Thread(target=propose)
    proposing.start()
    probe = db.engine.connect()
    try:
        wait_until_a_backend_waits_on_a_lock(probe)
        holder.commit()
        proposing.join(timeout=30)
    finally:
        holder.close()
        probe.close()
    assert answers == [(409, "lift_pending")]
    row = ban_row(ban_id)
    assert (row.lift_proposed_by, row.lift_proposed_reason) == (a_op.id, "first")
