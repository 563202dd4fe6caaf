"""The seeded risk simulation: the metrics on a hand-made set, a small run end to end, the same run for a seed.

The runs build their own throw-away database: a SQLite file, or a schema of its own in
TEST_DATABASE_URL's PostgreSQL database when the suite runs on PostgreSQL.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app import create_app
from tests.conftest import PG_URL
from web import risk_simulation
from web.risk_cli import simulate_command
from web.risk_simulation import START, SimClock, SimConfig, cheapest_at_least, metrics, run

SMALL = SimConfig(seed=7, honest=8, farm_accounts=5, rings=1, ring_members=3, sybils=6, days=3, database_url=PG_URL)
# PostgreSQL: one run (a throw-away database takes ~20 s to drop on a busy machine); the seed's second run on SQLite


def test_metrics_on_a_hand_made_set():
    # given: 4 planted (2 ring, 1 sybil, 1 click farm) and 6 honest paid orders
    decisions = {
        "r1": "review",  # ring, flagged: TP
        "r2": "allow",  # ring, missed: FN
        "s1": "block",  # sybil, flagged: TP
        "c1": None,  # click farm, never scored: FN, not flagged
        "h1": "allow",
        "h2": "allow",
        "h3": "review",  # honest, flagged: FP
        "h4": None,  # honest, unscored: TN
        "h5": "allow",
        "h6": "allow",
    }
    planted = {"r1": "ring", "r2": "ring", "s1": "sybil", "c1": "click_farm", "never-paid": "sybil"}
    # when
    m = metrics(decisions, planted)
    # then
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 2, 5)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 4)
    assert m.honest_false_positive_rate == pytest.approx(1 / 6)
    assert m.recall_by_kind == {"click_farm": 0.0, "ring": 0.5, "sybil": 1.0}
    assert (m.paid, m.planted_paid, m.honest_paid, m.unscored) == (10, 4, 6, 2)
    assert m.decisions == {"review": 2, "allow": 5, "block": 1, "None": 2}
    assert not m.passed()


def test_metrics_pass_only_on_both_goals_and_say_nothing_when_nothing_is_flagged():
    planted = {f"p{i}": "ring" for i in range(10)}
    honest = {f"h{i}": "allow" for i in range(10)}
    nine_of_ten = {**{f"p{i}": "review" for i in range(9)}, "p9": "allow", **honest}
    assert metrics(nine_of_ten, planted).passed()  # precision 1.0, recall 0.9
    two_false = {**nine_of_ten, "h0": "review", "h1": "block"}
    assert metrics(two_false, planted).precision == pytest.approx(9 / 11)
    assert not metrics(two_false, planted).passed()  # 0.818 < 0.9
    nothing = metrics({**{f"p{i}": "allow" for i in range(10)}, **honest}, planted)
    assert nothing.precision is None and nothing.recall == 0.0 and not nothing.passed()


def test_the_smallest_basket_at_or_above_a_minimum():
    products = [{"id": 1, "price_fen": 30_00}, {"id": 2, "price_fen": 45_00}, {"id": 3, "price_fen": 70_00}]
    assert cheapest_at_least(products, 60_00) == [(1, 2)]  # 60.00 exactly
    assert cheapest_at_least(products, 74_00) == [(1, 1), (2, 1)]  # 75.00
    assert cheapest_at_least(products, 100_00) == [(1, 1), (3, 1)]  # 100.00


def test_the_clock_stands_in_for_the_apps_now_and_goes_back():
    import wechat.sim.pay  # noqa: F401 - loaded, as the app factory loads it in simulator mode
    from models import utcnow

    clock = SimClock(START)
    with clock.installed():
        clock.advance(90)
        assert utcnow() == START + timedelta(seconds=90)
    assert utcnow() < START  # the real clock again (START is in 2030)


def _observed(app, sim) -> dict:
    """What the database holds at the end: the ledger's check, the span of simulated time, dwell before paying."""
    from ledger import check_ledger
    from models import Order, db

    with app.app_context():
        first, last = db.session.execute(select(func.min(Order.created_at), func.max(Order.paid_at))).one()
        rows = db.session.execute(select(Order.created_at, Order.paid_at).where(Order.paid_at.is_not(None))).all()
        report = check_ledger()
        db.session.remove()
    return {
        "ledger_ok": report.ok,
        "violations": report.violations,
        "span": last - first,
        "paid_before_created": sum(1 for created, paid in rows if paid < created),
    }


def test_a_small_population_runs_end_to_end_on_simulated_time_and_the_same_seed_plays_the_same_run():
    # when
    seen: list[dict] = []
    first = run(SMALL, create_app, hook=lambda app, sim: seen.append(_observed(app, sim)))
    second = run(replace(SMALL, database_url=None), create_app)
    # then: every population ordered and paid through the API, and the planted orders are the ground truth
    m = first.metrics
    kinds = set(first.truth.planted.values())
    assert {"ring", "sybil", "click_farm"} <= kinds
    assert m.planted_paid == len(first.truth.planted) > 0
    assert m.honest_paid == len(first.truth.honest) > 0
    assert m.paid == m.planted_paid + m.honest_paid
    assert len(first.truth.rings) == 1 and len(first.truth.rings[0].user_ids) == 3
    assert first.tally.orders[("honest", "paid")] == len(first.truth.honest)
    assert sum(first.tally.claims.values()) > 0
    # the limits refused some fraud: counted, not fatal
    refused = sum(n for (population, what), n in first.tally.claims.items() if what.startswith("refused"))
    refused += sum(n for (population, what), n in first.tally.registration_packets.items() if what == "refused")
    assert refused > 0
    # days of simulated time passed, in order; the money balanced
    [observed] = seen
    assert observed["ledger_ok"], observed["violations"]
    assert first.ledger_violations == []
    assert observed["span"] > timedelta(days=1)
    assert observed["paid_before_created"] == 0
    # and the same seed played the same run
    assert second.truth.script == first.truth.script
    assert second.tally.as_json() == first.tally.as_json()
    assert second.metrics.decisions == first.metrics.decisions


def test_flask_risk_simulate_prints_json_for_machines(app):
    args = ["--seed", "3", "--honest", "4", "--farm", "3", "--rings", "1", "--ring-members", "2", "--sybils", "3"]
    args += ["--days", "2", "--json"]  # on SQLite: the PostgreSQL path is the end-to-end test's
    # when
    result = app.test_cli_runner().invoke(simulate_command, args)
    # then
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)  # nothing but the document on stdout
    assert answer["config"]["seed"] == 3
    assert set(answer["metrics"]) >= {"precision", "recall", "recall_by_kind", "honest_false_positive_rate"}
    assert answer["goals"] == {"precision": 0.9, "recall": 0.8}
    assert answer["pass"] in (True, False)
    assert answer["communities"]["available"] in (True, False)


def test_a_ring_is_found_only_in_one_suspicious_community_holding_its_shop_and_every_member(monkeypatch):
    # given: a collusion job that makes two communities: every person (suspicious, but without the shops), and
    # every person with every shop (not suspicious)
    from models import Merchant, RiskCommunity, User, db

    def find_communities(now, settings):
        people = [f"user:{u}" for u in db.session.execute(select(User.id)).scalars()]
        shops = [f"merchant:{m}" for m in db.session.execute(select(Merchant.id)).scalars()]
        for n, (members, suspicious) in enumerate([(people, True), (people + shops, False)]):
            db.session.add(
                RiskCommunity(
                    fingerprint=f"f{n}",
                    members=members,
                    size=len(members),
                    score=1.0,
                    suspicious=suspicious,
                    found_at=now,
                )
            )
        db.session.flush()

    monkeypatch.setattr(risk_simulation, "find_communities", find_communities)
    # when
    result = run(replace(SMALL, database_url=None, honest=3, farm_accounts=2, sybils=2), create_app)
    # then
    assert result.communities.available
    assert result.communities.rings == ["together"]
    assert result.communities.every_ring_found is False


def test_with_no_ring_planted_no_ring_is_said_to_be_found():
    from web.risk_simulation import Communities

    assert Communities(available=True, note="", rings=[]).every_ring_found is None  # was True: all([]) of nothing
    assert Communities(available=True, note="", rings=["suspicious"]).every_ring_found is True
    assert Communities(available=True, note="", rings=["suspicious", "apart"]).every_ring_found is False
    assert Communities(available=False, note="", rings=["suspicious"]).every_ring_found is None
