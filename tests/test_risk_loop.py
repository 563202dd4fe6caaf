"""The risk loop end to end (issue 12): a payment scored and held for review, the person told only "under review",
the case in the queue, a reviewer's release paying what was held, the outcome a label the backtest reads; and the
risk jobs on the schedule (timed bans lifted, old behaviour events purged)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from jobs.risk import lift_expired_bans_job, purge_behaviour_events_job
from jobs.scheduler import DAILY_JOBS, JOBS
from models import Ban, BehaviourEvent, Order, Payout, ReviewCase, User, db, utcnow
from tests.test_review_cases import decide
from tests.test_risk_payment import cash, fresh_rules, rebates_of, shop  # noqa: F401 - fixtures

RULES = [{"name": "review_from_60", "action": "review", "when": [["score", ">=", 60]]}]


def test_a_held_payment_is_released_by_a_reviewer_and_becomes_a_label(client, shop, pay, make_operator, user_headers):
    # given: a click farm's order, paid: every rebate held, one case
    order, people, campaign, referral = shop(farm=True)
    pay(order)
    consumer = db.session.get(User, people["consumer"].id)
    # then: the person sees "under review", never the score, the features or the rule
    mine = client.get("/api/v1/me/rebates", headers=user_headers(consumer))
    assert mine.status_code == 200
    text = mine.get_data(as_text=True)
    assert "review" in text
    assert "score" not in text and "accounts on this device" not in text and "review_high_score" not in text
    # and: the case waits in the queue with the order's score and reasons
    _, admin = make_operator("admin")
    queue = client.get("/admin/api/reviews?status=open", headers=admin).get_json()["items"]
    assert [c["order_id"] for c in queue] == [order.id]
    case_id = queue[0]["id"]

    # when: a reviewer releases it
    answer = decide(client, admin, case_id, "release", "a farmer's family phone: checked")

    # then: everything held is paid, the change payout queued, the label is legit
    assert answer.status_code == 200, answer.get_json()
    got = rebates_of(order)
    assert {r: (g.status, g.amount_fen, g.held_fen) for r, g in got.items()} == {
        "issuer": ("awarded", 9_00, 0),
        "consumer": ("awarded", 9_00, 0),
        "inviter": ("awarded", 2_70, 0),
    }
    assert cash(people["issuer"].id) == 9_00 and cash(people["inviter"].id) == 2_70
    assert db.session.execute(select(func.count(Payout.id)).where(Payout.order_id == order.id)).scalar_one() == 1
    assert db.session.execute(select(ReviewCase.label)).scalar_one() == "legit"

    # and: the backtest counts it as a labelled order the draft flags wrongly (precision 0, no fraud to recall)
    paid_at = db.session.get(Order, order.id).paid_at
    window = {"from": (paid_at - timedelta(days=1)).isoformat(), "to": (paid_at + timedelta(days=1)).isoformat()}
    backtest = client.post("/admin/api/risk/rules/backtest", json={"rules": RULES, **window}, headers=admin)
    assert backtest.status_code == 200, backtest.get_json()
    body = backtest.get_json()
    assert body["labelled"] == {"orders": 1, "fraud": 0, "legit": 1}, body
    assert (body["draft"]["review"], body["draft"]["precision"], body["draft"]["recall"]) == (1, 0, None), body


def test_a_blocked_payment_opens_no_case_and_moves_nothing_to_anyone(shop, pay):
    order, people, campaign, referral = shop(farm=True, shares_issuer_device=True)
    pay(order)
    assert db.session.get(Order, order.id).risk_decision == "block"
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 0
    assert cash(people["issuer"].id) == cash(people["consumer"].id) == cash(people["inviter"].id) == 0


def test_the_risk_jobs_are_on_the_schedule():
    scheduled = {job.__name__ for job, _ in JOBS} | {job.__name__ for job, _ in DAILY_JOBS}
    assert {"collusion_job", "spike_job", "lift_expired_bans_job", "purge_behaviour_events_job"} <= scheduled


def test_the_ban_job_lifts_what_ended(client, make_operator, make_user):
    amy = make_user()
    _, admin = make_operator("admin")
    made = client.post(
        "/admin/api/bans",
        json={"subject": "user", "value": str(amy.id), "reason": "cooling off", "days": 1},
        headers=admin,
    )
    assert made.status_code == 201, made.get_json()
    assert db.session.get(User, amy.id).status == "banned"
    assert lift_expired_bans_job()["lifted"] == 0
    # when: its day is over
    ban = db.session.get(Ban, made.get_json()["id"])
    ban.ends_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    # then
    assert lift_expired_bans_job()["lifted"] == 1
    db.session.expire_all()
    assert db.session.get(User, amy.id).status == "active"
    assert lift_expired_bans_job()["lifted"] == 0


def test_the_purge_job_deletes_only_events_past_the_retention(app, make_user):
    amy = make_user()
    keep = app.config["RISK_EVENTS_KEEP_DAYS"]
    now = utcnow()
    for days in (keep + 2, keep + 1, keep - 1, 0):
        db.session.add(BehaviourEvent(user_id=amy.id, kind=1, product_id=1, at=now - timedelta(days=days)))
    db.session.commit()
    assert purge_behaviour_events_job()["purged"] == 2
    left = db.session.execute(select(BehaviourEvent.at).order_by(BehaviourEvent.at)).scalars().all()
    assert [round((now - at).total_seconds() / 86_400) for at in left] == [keep - 1, 0]
