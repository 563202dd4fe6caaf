"""Two reviewers deciding one case at once: exactly one outcome is carried out (the case row is locked first).

On SQLite and PostgreSQL alike (tests/concurrency.py)."""

from __future__ import annotations

from sqlalchemy import func, select

from models import AuditLog, Campaign, ReviewCase, db
from tests.concurrency import post_together
from tests.review_helpers import cash, hold_for_review, paid_order, rebates_of

HELD = 9_00 + 4_50
PACKET = 10_00


def decisions(case_id: int, outcomes: list[str], headers: list[dict]) -> list[tuple[str, dict, dict]]:
    path = f"/admin/api/reviews/{case_id}/decide"
    pairs = enumerate(zip(outcomes, headers, strict=True))
    return [(path, h, {"outcome": o, "reason": f"reviewer {i}"}) for i, (o, h) in pairs]


def test_release_and_revoke_at_once_carry_out_exactly_one(
    app, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case_id = hold_for_review(order).id
    heads = [make_operator("admin")[1], make_operator("support")[1]]

    results = post_together(app, decisions(case_id, ["release", "revoke"], heads))

    assert sorted(status for status, _ in results) == [200, 409], results
    assert [code for status, code in results if status == 409] == ["case_decided"]
    db.session.expire_all()
    case = db.session.get(ReviewCase, case_id)
    committed = db.session.get(Campaign, campaign.id).budget_committed_fen
    statuses = {r.status for r in rebates_of(order.id).values()}
    if case.outcome == "release":
        assert (statuses, cash(buyer.id), cash(issuer.id), committed) == ({"awarded"}, 4_50, 9_00, PACKET + HELD)
    else:
        assert (statuses, cash(buyer.id), cash(issuer.id), committed) == ({"revoked"}, 0, 0, PACKET)
    decided = select(func.count()).select_from(AuditLog).where(AuditLog.action == "review.decide")
    assert db.session.execute(decided).scalar_one() == 1


def test_the_same_release_twice_at_once_pays_once(app, make_operator, make_user, make_product, make_campaign, pay):
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case_id = hold_for_review(order).id
    heads = [make_operator("admin")[1], make_operator("finance")[1]]

    results = post_together(app, decisions(case_id, ["release", "release"], heads))

    assert [status for status, _ in results] == [200, 200], results
    db.session.expire_all()
    assert (cash(buyer.id), cash(issuer.id)) == (4_50, 9_00)
    assert db.session.get(Campaign, campaign.id).budget_committed_fen == PACKET + HELD
    decided = select(func.count()).select_from(AuditLog).where(AuditLog.action == "review.decide")
    assert db.session.execute(decided).scalar_one() == 1
