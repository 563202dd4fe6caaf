"""The backtest: a draft replayed over planted orders and labels (counts, changes, precision and recall
worked out by hand below), campaign overrides merged as payments merge them, batches, and no writes."""

from __future__ import annotations

from datetime import timedelta
from itertools import count as counter

import pytest
from sqlalchemy import event, func, select

from models import Order, Rebate, ReviewCase, RiskRuleSet, db, utcnow
from risk import backtest as backtests
from tests.concurrency import writer_meanwhile

BACKTEST = "/admin/api/risk/rules/backtest"
RULES = "/admin/api/risk/rules"
_n = counter(1)

# review a fast payer, block a very high score, but allow an old account whatever else
DRAFT = [
    {"name": "allow_old", "action": "allow", "when": [["account_age_hours", ">=", 1000]]},
    {"name": "block_top", "action": "block", "when": [["score", ">=", 80]]},
    {"name": "review_fast", "action": "review", "when": [["seconds_from_first_view", "<", 20]]},
]


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


@pytest.fixture
def plant(make_user, make_merchant):
    """plant(score, label=None, days_ago=1, campaigns=(), rebate_campaigns=(), **values) → order id."""
    user, merchant = make_user(), make_merchant()

    def make(score, label=None, days_ago=1.0, campaigns=(), rebate_campaigns=(), paid=True, decision=None, **values):
        n = next(_n)
        paid_at = utcnow() - timedelta(days=days_ago, seconds=n)  # newer planted orders are older: ids differ
        order = Order(
            out_trade_no=f"bt-{n}",
            user_id=user.id,
            merchant_id=merchant.id,
            status="paid" if paid else "created",
            total_fen=100_00,
            payable_fen=100_00,
            paid_fen=100_00 if paid else None,
            paid_at=paid_at if paid else None,
            time_expire=paid_at + timedelta(hours=2),
            risk_score=score,
            risk_decision=decision,
            risk=None
            if score is None
            else {
                "values": values,
                "features": [],
                "campaigns": {str(c): {"action": "allow", "rule": None, "words": "no rule matched"} for c in campaigns},
            },
        )
        db.session.add(order)
        db.session.flush()
        for c in rebate_campaigns:
            db.session.add(
                Rebate(
                    order_id=order.id, campaign_id=c, rules_version=1, role="consumer", form="cash",
                    status="skipped", reason_code="test",
                )
            )  # fmt: skip
        if label:
            db.session.add(ReviewCase(kind="order", order_id=order.id, user_id=user.id, status="decided", label=label))
        db.session.commit()
        return order.id

    return make


@pytest.fixture
def planted(plant):
    """Orders 1-7, 11, 12 of the worked example (the rules active: the defaults, block >= 90, review >= 60).

    order  score first-view age    label   draft    active
    o1     95    5          10     fraud   block    block
    o2     85    100        5000   legit   allow    review   (allow_old wins: Radar's precedence)
    o3     30    10         50     fraud   review   allow
    o4     70    300        50     legit   allow    review
    o5     10    8          20     legit   review   allow
    o6     20    -          20     -       allow    allow
    o7     65    -          20     fraud   allow    review
    o11    40    3          10     fraud   review   allow
    o12    15    2          30     legit   review   allow
    and, not counted: one paid 40 days ago, one never paid, one paid but never scored (unscored: 1)."""
    ids = {
        "o1": plant(95, "fraud", seconds_from_first_view=5, account_age_hours=10, decision="block"),
        "o2": plant(85, "legit", seconds_from_first_view=100, account_age_hours=5000, decision="review"),
        "o3": plant(30, "fraud", seconds_from_first_view=10, account_age_hours=50, decision="allow"),
        "o4": plant(70, "legit", seconds_from_first_view=300, account_age_hours=50, decision="review"),
        "o5": plant(10, "legit", seconds_from_first_view=8, account_age_hours=20, decision="allow"),
        "o6": plant(20, account_age_hours=20, decision="allow"),
        "o7": plant(65, "fraud", account_age_hours=20, decision="review"),
        "o11": plant(40, "fraud", seconds_from_first_view=3, account_age_hours=10, decision="allow"),
        "o12": plant(15, "legit", seconds_from_first_view=2, account_age_hours=30, decision="allow"),
    }
    plant(99, "fraud", days_ago=40, seconds_from_first_view=1)
    plant(99, paid=False, seconds_from_first_view=1)
    plant(None)
    return ids


def test_counts_changes_precision_and_recall_by_hand(client, admin, planted):
    response = client.post(BACKTEST, json={"rules": DRAFT}, headers=admin)
    assert response.status_code == 200, response.json
    found = response.json
    assert (found["scope"], found["orders"], found["unscored"], found["truncated"]) == ("platform", 9, 1, False)
    draft = found["draft"]
    assert {k: draft[k] for k in ("allow", "review", "block", "flagged")} == {
        "allow": 4,
        "review": 4,
        "block": 1,
        "flagged": 5,
    }
    # labelled and flagged: o1, o3, o11 fraud (TP), o5, o12 legit (FP); fraud allowed: o7 (FN); o2, o4 (TN)
    assert draft["confusion"] == {"true_positive": 3, "false_positive": 2, "false_negative": 1, "true_negative": 2}
    assert (draft["precision"], draft["recall"]) == (0.6, 0.75)
    assert set(draft["examples"]["block"]) == {planted["o1"]}
    assert set(draft["examples"]["review"]) == {planted[o] for o in ("o3", "o5", "o11", "o12")}
    assert len(draft["examples"]["allow"]) == 4

    active = found["active"]
    assert (active["allow"], active["review"], active["block"], active["defaults"]) == (5, 3, 1, True)
    # flagged and labelled: o1, o7 fraud; o2, o4 legit; fraud o3, o11 allowed
    assert (active["precision"], active["recall"]) == (0.5, 0.5)
    assert found["recorded"] == {"allow": 5, "review": 3, "block": 1}

    changed = found["changed"]
    assert (changed["orders"], changed["allow->review"], changed["review->allow"]) == (7, 4, 3)
    assert set(changed["examples"]) <= {planted[o] for o in ("o2", "o3", "o4", "o5", "o7", "o11", "o12")}
    assert len(changed["examples"]) == 5
    assert found["labelled"] == {"orders": 8, "fraud": 4, "legit": 4}


def test_a_stored_version_backtests_like_its_rules(client, admin, planted):
    created = client.post(RULES, json={"scope": "platform", "rules": DRAFT, "reason": "try it"}, headers=admin).json
    by_id = client.post(BACKTEST, json={"rule_set_id": created["id"]}, headers=admin).json
    by_rules = client.post(BACKTEST, json={"rules": DRAFT}, headers=admin).json
    assert by_id["rule_set_id"] == created["id"]
    assert {**by_id, "rule_set_id": None, "from": None, "to": None} == {**by_rules, "from": None, "to": None}


def test_precision_is_null_when_nothing_is_flagged_and_recall_when_no_fraud_is_labelled(client, admin, plant):
    plant(95, "legit", account_age_hours=1)
    plant(20, account_age_hours=1)
    never = [{"name": "never", "action": "block", "when": [["score", ">", 100]]}]
    found = client.post(BACKTEST, json={"rules": never}, headers=admin).json
    assert found["draft"]["flagged"] == 0
    assert (found["draft"]["precision"], found["draft"]["recall"]) == (None, None)
    assert found["active"]["flagged"] == 1  # the defaults block 95
    assert (found["active"]["precision"], found["active"]["recall"]) == (0.0, None)


def test_a_window_and_a_limit(client, admin, planted):
    now = utcnow()
    week = {"rules": DRAFT, "from": (now - timedelta(days=60)).isoformat(), "to": now.isoformat()}
    assert client.post(BACKTEST, json=week, headers=admin).json["orders"] == 10  # the 40-day-old one too
    old = {"rules": DRAFT, "from": (now - timedelta(days=60)).isoformat(), "to": (now - timedelta(days=30)).isoformat()}
    assert client.post(BACKTEST, json=old, headers=admin).json["orders"] == 1
    limited = client.post(BACKTEST, json={"rules": DRAFT, "limit": 3}, headers=admin).json
    assert (limited["orders"], limited["truncated"]) == (3, True)
    # newest first: o1, o2, o3 were paid last
    examples = limited["draft"]["examples"]
    assert sorted(examples["allow"] + examples["review"] + examples["block"]) == sorted(
        [planted["o1"], planted["o2"], planted["o3"]]
    )


def test_a_platform_draft_keeps_each_campaigns_active_overrides(client, admin, plant, make_campaign):
    c1, c2 = make_campaign({}), make_campaign({})
    off = client.post(
        RULES,
        json={"scope": f"campaign:{c1.id}", "rules": [{"name": "block_top", "off": True}], "reason": "VIP shop"},
        headers=admin,
    ).json
    assert client.post(f"{RULES}/{off['id']}/activate", json={"reason": "agreed"}, headers=admin).status_code == 200
    only_c1 = plant(95, campaigns=[c1.id])  # block_top is off for c1: allowed
    no_campaign = plant(95)  # the platform's rules: blocked
    both = plant(95, campaigns=[c1.id], rebate_campaigns=[c2.id])  # c2 blocks: the most severe wins
    found = client.post(BACKTEST, json={"rules": DRAFT}, headers=admin).json
    assert found["orders"] == 3
    assert found["draft"]["examples"]["allow"] == [only_c1]
    assert sorted(found["draft"]["examples"]["block"]) == sorted([no_campaign, both])


def test_a_campaign_draft_counts_only_that_campaigns_orders(client, admin, plant, make_campaign):
    c1, c2 = make_campaign({}), make_campaign({})
    plant(95, campaigns=[c1.id])
    plant(95)
    blocked = plant(95, campaigns=[c1.id, c2.id])
    reviewed = plant(55, rebate_campaigns=[c2.id], account_age_hours=1)  # c2's only through its rebate
    draft = [{"name": "review_mid", "action": "review", "when": [["score", ">=", 50]]}]
    found = client.post(BACKTEST, json={"rules": draft, "scope": f"campaign:{c2.id}"}, headers=admin).json
    assert (found["scope"], found["orders"]) == (f"campaign:{c2.id}", 2)
    assert found["draft"]["examples"]["block"] == [blocked]  # the platform's defaults still block 95
    assert found["draft"]["examples"]["review"] == [reviewed]
    assert (found["active"]["allow"], found["active"]["block"]) == (1, 1)
    assert found["changed"] == {"orders": 1, "allow->review": 1, "examples": [reviewed]}


def test_orders_stream_in_batches(client, admin, planted, monkeypatch, app):
    whole = client.post(BACKTEST, json={"rules": DRAFT}, headers=admin).json
    monkeypatch.setattr(backtests, "BATCH", 2)
    statements = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        batched = client.post(BACKTEST, json={"rules": DRAFT}, headers=admin).json
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert {**batched, "from": None, "to": None} == {**whole, "from": None, "to": None}
    rebate_reads = [s for s in statements if "FROM rebates" in s]
    assert len(rebate_reads) == 5  # 10 orders paid in the window (9 scored, 1 not), read 2 at a time


def test_a_backtest_writes_nothing(client, admin, planted):
    client.post(RULES, json={"scope": "platform", "rules": DRAFT, "reason": "try it"}, headers=admin)

    def snapshot():
        db.session.rollback()
        return [
            db.session.execute(select(func.count()).select_from(m)).scalar_one()
            for m in (Order, Rebate, ReviewCase, RiskRuleSet)
        ] + [db.session.execute(select(Order.risk_decision, Order.risk_score).order_by(Order.id)).all()]

    before = snapshot()
    writes = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().split(" ", 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            writes.append(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        assert client.post(BACKTEST, json={"rules": DRAFT}, headers=admin).status_code == 200
        assert client.post(BACKTEST, json={"rule_set_id": 1}, headers=admin).status_code == 200
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert writes == []
    assert snapshot() == before


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({}, 422, "validation_error"),
        ({"rules": DRAFT, "rule_set_id": 1}, 422, "validation_error"),
        ({"rules": [{"name": "x", "action": "block", "when": [["score", ">", 200]]}]}, 422, "invalid_risk_rules"),
        ({"rules": [{"name": "x", "off": True}]}, 422, "invalid_risk_rules"),  # off: a campaign's only
        ({"rules": DRAFT, "scope": "campaign:77"}, 404, "not_found"),
        ({"rules": DRAFT, "scope": "everywhere"}, 422, "invalid_risk_scope"),
        ({"rule_set_id": 77}, 404, "not_found"),
        ({"rules": DRAFT, "limit": 0}, 422, "validation_error"),
        ({"rules": DRAFT, "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, 422, "invalid_window"),
        ({"rules": DRAFT, "from": "2026-01-02T00:00:00"}, 422, "validation_error"),  # no time zone
    ],
)
def test_bad_backtests(client, admin, body, status, code):
    response = client.post(BACKTEST, json=body, headers=admin)
    assert (response.status_code, response.json["error"]) == (status, code)


def test_a_stored_version_of_another_scope_is_refused(client, admin, make_campaign):
    campaign = make_campaign({})
    created = client.post(RULES, json={"scope": "platform", "rules": DRAFT, "reason": "try it"}, headers=admin).json
    body = {"rule_set_id": created["id"], "scope": f"campaign:{campaign.id}"}
    response = client.post(BACKTEST, json=body, headers=admin)
    assert (response.status_code, response.json["error"]) == (422, "scope_mismatch")


def test_the_orders_are_read_apart_and_never_hold_the_writers(client, admin, planted):
    """On SQLite every transaction begins IMMEDIATE; a backtest (up to a minute over a million orders) read them in
    the request's and held every payment, claim and job meanwhile. While it reads, a writer commits at once."""
    reads_orders = lambda sql: "FROM orders" in sql and "review_cases" in sql  # noqa: E731
    touch = "UPDATE orders SET risk_score = risk_score WHERE id = (SELECT min(id) FROM orders)"
    db.session.commit()
    with writer_meanwhile(reads_orders, touch) as wrote_meanwhile:
        response = client.post(BACKTEST, json={"rules": DRAFT}, headers=admin)
    assert response.status_code == 200, response.json
    assert wrote_meanwhile == [True]
