"""Held rebate money that will never be paid is a dated ``cancelled`` adjustment (migration 0041), so the reports stop
counting it as a campaign's cost: a reviewer's revocation, a condition that expired, what the feedback quality
withheld, and what a refund released from a held rebate. Each counts as ``rebates_cancelled`` on the Beijing day it
happened; ``rebates_net_fen`` and the cost ratio leave it out; the person reads "cancelled (held, never paid)" and
never a reviewer's note.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from insights.reports import campaign_report
from insights.rollups import beijing_day, roll_up_day
from jobs.insights import insights_rollup_job
from models import AdjustmentKind, Campaign, Order, RebateAdjustment, db, utcnow
from models.base import BEIJING
from rebate import create_order, issue_packet
from rebate.milestones import expire_held_rebates, report_milestone
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.review_helpers import cash, hold_for_review, paid_order, rebates_of
from tests.test_review_cases import CONSUMER, ISSUER, PACKET, committed, decide


def adjustments(rebate_id: int) -> list[RebateAdjustment]:
    return list(
        db.session.execute(
            select(RebateAdjustment).where(RebateAdjustment.rebate_id == rebate_id).order_by(RebateAdjustment.id)
        ).scalars()
    )


def today_totals(campaign_id: int) -> dict:
    insights_rollup_job()
    today = datetime.now(BEIJING).date()
    since = today - timedelta(days=1)  # the events may straddle a Beijing midnight
    return campaign_report(db.session.get(Campaign, campaign_id), since, today)["totals"]


def test_a_reviewers_revocation_is_cancelled_not_a_cost(
    client, make_operator, make_user, make_product, make_campaign, pay, user_headers
):
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order)
    _, finance = make_operator("finance")
    assert decide(client, finance, case.id, "revoke", "click farm behind these orders").status_code == 200
    got = rebates_of(order.id)
    for role, held in (("issuer", ISSUER), ("consumer", CONSUMER)):
        (adj,) = adjustments(got[role].id)
        assert (adj.kind, adj.amount_fen, adj.recovered_fen, adj.receivable_fen) == ("cancelled", held, held, 0)
        assert "click farm" not in adj.reason  # the person reads it: no reviewer's note
    assert committed(campaign.id) == PACKET and (cash(buyer.id), cash(issuer.id)) == (0, 0)
    totals = today_totals(campaign.id)
    assert totals["rebates_awarded_fen"] == ISSUER + CONSUMER
    assert (totals["rebates_cancelled"], totals["rebates_cancelled_fen"]) == (2, ISSUER + CONSUMER)
    assert totals["rebates_clawed_back_fen"] == 0 and totals["rebates_net_fen"] == 0
    # the buyer's own list says it was never paid, and why in plain words
    body = client.get("/api/v1/me/rebates", headers=user_headers(buyer)).get_json()
    (mine,) = [r for r in body["items"] if r["role"] == "consumer"]
    assert "4.50 yuan cancelled (held, never paid)" in mine["explanation"]
    assert "click farm" not in mine["explanation"]


def test_a_claw_back_decision_cancels_what_was_held_and_claws_back_what_was_paid(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order, roles=("consumer",))  # the issuer's 9.00 was paid, the buyer's 4.50 is held
    _, admin = make_operator("admin")
    assert decide(client, admin, case.id, "claw_back", "shared device").status_code == 200
    got = rebates_of(order.id)
    assert [(a.kind, a.amount_fen) for a in adjustments(got["issuer"].id)] == [("clawback", ISSUER)]
    assert [(a.kind, a.amount_fen) for a in adjustments(got["consumer"].id)] == [("cancelled", CONSUMER)]
    totals = today_totals(campaign.id)
    assert (totals["rebates_clawed_back_fen"], totals["rebates_cancelled_fen"]) == (ISSUER, CONSUMER)
    assert totals["rebates_net_fen"] == 0


CONDITIONAL = {
    "roles": [
        {
            "role": "consumer",
            "rate_bps": 1000,
            "form": "balance",
            "cap_fen": 50_00,
            "condition": {"milestones": ["lessons_10", "test_passed"], "window_days": 30},
        }
    ]
}
QUALITY = {
    "roles": [
        {
            "role": "consumer",
            "rate_bps": 1000,
            "form": "balance",
            "cap_fen": 50_00,
            "condition": {"milestones": ["feedback"], "window_days": 14, "quality_scaled": True},
        }
    ]
}


@pytest.fixture
def held(make_merchant, make_product, make_campaign, make_user, pay):
    """A paid 100.00 order with a 10.00 packet whose buyer's 10 % (9.00) waits for a condition."""

    def made(rules):
        merchant = make_merchant()
        product = make_product(merchant, price_fen=100_00)
        campaign = make_campaign(
            rules,
            budget_limit_fen=1_000_00,
            packet_amount_fen=10_00,
            issuer_type="merchant",
            issuer_merchant_id=merchant.id,
            funder_type="merchant_deposit",
            funder_merchant_id=merchant.id,
        )
        user = make_user()
        packet = issue_packet(campaign, user, source="t", source_ref="1", now=utcnow())
        db.session.commit()
        order = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
        db.session.commit()
        pay(order)
        (rebate,) = rebates_of(order.id).values()
        assert (rebate.status, rebate.held_fen) == ("held", 9_00)
        return campaign, order, rebate

    return made


def test_an_expired_condition_is_cancelled_on_the_day_it_expired(held):
    campaign, order, rebate = held(CONDITIONAL)
    assert expire_held_rebates(utcnow() + timedelta(days=31)) == 1
    db.session.commit()
    (adj,) = adjustments(rebate.id)
    assert (adj.kind, adj.amount_fen, adj.refund_id) == ("cancelled", 9_00, None)
    assert "expired" in adj.reason
    # dated by the expiry: moved to 31 days after the award here, it leaves the award's day and counts on its own
    adj.created_at = rebate.created_at + timedelta(days=31)
    db.session.commit()
    award_day, expiry_day = beijing_day(rebate.created_at), beijing_day(adj.created_at)
    key = (order.merchant_id, campaign.id, "rebates_cancelled", "")
    assert roll_up_day(award_day).counters.get(key) is None
    assert roll_up_day(award_day).counters[(order.merchant_id, campaign.id, "rebates_awarded", "")] == [1, 9_00]
    assert roll_up_day(expiry_day).counters[key] == [1, 9_00]
    assert roll_up_day(expiry_day).counters[(order.merchant_id, campaign.id, "rebates_cancelled", "consumer:balance")]


def test_what_the_feedback_quality_withholds_is_cancelled(held):
    campaign, order, rebate = held(QUALITY)
    report_milestone(db.session.get(Order, order.id), "feedback", 60, utcnow(), money=app_money())
    db.session.commit()
    db.session.refresh(rebate)
    assert (rebate.status, rebate.amount_fen, rebate.held_fen) == ("awarded", 5_40, 0)
    (adj,) = adjustments(rebate.id)
    assert (adj.kind, adj.amount_fen) == ("cancelled", 3_60)
    assert "quality 60/100" in adj.reason
    totals = today_totals(campaign.id)
    assert (totals["rebates_awarded_fen"], totals["rebates_cancelled_fen"], totals["rebates_paid_fen"]) == (
        9_00,
        3_60,
        5_40,
    )
    assert totals["rebates_net_fen"] == 5_40


def test_a_full_quality_release_cancels_nothing(held):
    campaign, order, rebate = held(QUALITY)
    report_milestone(db.session.get(Order, order.id), "feedback", 100, utcnow(), money=app_money())
    db.session.commit()
    assert adjustments(rebate.id) == []
    assert today_totals(campaign.id)["rebates_net_fen"] == 9_00


def test_a_refund_releasing_a_held_part_cancels_it_on_the_refunds_day(held):
    from rebate import apply_refund, begin_refund

    campaign, order, rebate = held(CONDITIONAL)
    begin_refund(order, "R-cancel-1", 45_00)
    apply_refund(order.out_trade_no, "R-cancel-1", 45_00, datetime.now(UTC), money=app_money())
    db.session.commit()
    (adj,) = adjustments(rebate.id)
    assert (adj.kind, adj.receivable_fen) == ("cancelled", 0) and adj.refund_id is not None
    assert adj.reason.startswith("refund R-cancel-1: the part still held is cancelled")
    totals = today_totals(campaign.id)
    assert totals["rebates_cancelled_fen"] == adj.amount_fen > 0
    assert totals["rebates_clawed_back_fen"] == 0
    assert totals["rebates_net_fen"] == 9_00 - adj.amount_fen


def test_a_cancelled_part_owes_nothing_back(held):
    _, _, rebate = held(CONDITIONAL)
    bad = RebateAdjustment(
        rebate_id=rebate.id,
        amount_fen=1_00,
        recovered_fen=50,
        receivable_fen=50,
        reason="x",
        kind=AdjustmentKind.CANCELLED,
    )
    db.session.add(bad)
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()
    plain = RebateAdjustment(rebate_id=rebate.id, amount_fen=1_00, recovered_fen=1_00, receivable_fen=0, reason="y")
    db.session.add(plain)
    db.session.flush()
    assert adjustments(rebate.id)[0].kind == "clawback"  # the default, as every row made before migration 0041
    db.session.rollback()
