"""``insights`` only reads: a trace and a what-if on a populated database send no write, flush or commit.

docs/architecture.md §2: insights sits above the engine and never writes. The web tests check the
endpoints; these call the package's functions directly, so a write hidden behind the shell's own
transaction handling cannot pass unseen, and scan its source for the verbs that write.
"""

from __future__ import annotations

import ast
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event

from insights.simulate import simulate
from insights.trace import trace_order, trace_packet
from insights.trace_people import trace_user
from models import Campaign, Order, RedPacket, User, db, utcnow
from rebate import apply_refund, begin_refund, create_order
from rebate.orders import LineRequest
from rebate.rules import parse_rules
from tests.money_helpers import app_money

INSIGHTS = Path(__file__).resolve().parent.parent / "insights"
WRITES = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "UPSERT", "CREATE", "DROP", "ALTER", "TRUNCATE"}
DRAFT = {
    "roles": [
        {
            "role": "issuer",
            "rate_bps": 1500,
            "form": "balance",
            "cap_fen": 300_00,
            "condition": {"milestones": ["lessons_10", "test_passed"], "window_days": 180, "release": "parts"},
        }
    ]
}


@contextmanager
def watched():
    """Every statement sent to the database, and every flush or commit the session was asked for."""
    seen = {"statements": [], "flushes": 0, "commits": 0}

    def on_execute(conn, cursor, statement, *args):
        seen["statements"].append(statement.lstrip().split(None, 1)[0].upper())

    def on_flush(session, context, instances):
        seen["flushes"] += 1

    def on_commit(session):
        seen["commits"] += 1

    event.listen(db.engine, "before_cursor_execute", on_execute)
    event.listen(db.session, "before_flush", on_flush)
    event.listen(db.session, "before_commit", on_commit)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)
        event.remove(db.session, "before_flush", on_flush)
        event.remove(db.session, "before_commit", on_commit)


@pytest.fixture
def history(education, pay):
    """The reverse story paid and then refunded in part: rebates held, taken back, payouts and all."""
    school, course, teacher, campaign, student, packet = education
    order = create_order(student, [LineRequest(course.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    begin_refund(order, "R-ro-1", 500_00)
    apply_refund(order.out_trade_no, "R-ro-1", 500_00, utcnow(), money=app_money())
    db.session.commit()
    return {
        "order": order.id,
        "packet": packet.id,
        "teacher": teacher.id,
        "student": student.id,
        "campaign": campaign.id,
    }


def read_everything(ids: dict) -> list[dict]:
    words = {"below_minimum": "the order was below the rule's minimum"}
    now = utcnow() + timedelta(minutes=1)
    campaign = db.session.get(Campaign, ids["campaign"])
    return [
        trace_order(db.session.get(Order, ids["order"]), words),
        trace_packet(db.session.get(RedPacket, ids["packet"]), words, now),
        trace_user(db.session.get(User, ids["student"]), words),
        trace_user(db.session.get(User, ids["teacher"]), words, merchant_id=campaign.funder_merchant_id),
        simulate(campaign, parse_rules(DRAFT, budgeted=True), days=30, now=now, budget_limit_fen=100_00),
    ]


def test_trace_and_what_if_send_no_write(history):
    # given: a fresh session over the committed history (nothing pending of the set-up)
    db.session.expire_all()

    # when: every insight is read straight from the package
    with watched() as seen:
        answers = read_everything(history)

    # then: real answers, read with SELECTs only; no flush, no commit, nothing left pending
    assert answers[0]["campaigns"] and answers[4]["draft"]["orders"] == 1
    assert "SELECT" in seen["statements"]
    assert not WRITES & set(seen["statements"]), seen["statements"]
    assert (seen["flushes"], seen["commits"]) == (0, 0)
    assert not (db.session.new or db.session.dirty or db.session.deleted)


def test_the_watch_sees_a_write(history):
    """The check above can fail: a write made inside the watch is seen."""
    with watched() as seen:
        db.session.get(User, history["student"]).nickname = "changed"
        db.session.flush()
    assert "UPDATE" in seen["statements"] and seen["flushes"] == 1
    db.session.rollback()


def writing_calls(tree: ast.AST) -> list[str]:
    """Session verbs that write (``db.session.add(...)``) and SQLAlchemy's write constructs, by name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"import {a.name}" for a in node.names if a.name in {"insert", "update", "delete"}]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = ast.unparse(node.func.value)
            if receiver.endswith("session") and node.func.attr in SESSION_WRITES:
                found.append(f"{receiver}.{node.func.attr}")
    return found


SESSION_WRITES = {"add", "add_all", "delete", "merge", "flush", "commit", "bulk_save_objects", "begin"}


def test_insights_source_names_no_writing_verb():
    modules = sorted(INSIGHTS.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "trace.py", "trace_people.py", "simulate.py"}
    for module in modules:
        found = writing_calls(ast.parse(module.read_text(encoding="utf-8")))
        assert found == [], f"insights/{module.name}: {found}"


def test_the_scan_sees_a_writing_verb():
    source = "from sqlalchemy import select, update\ndef f(x):\n    db.session.add(x)\n    db.session.commit()\n"
    assert writing_calls(ast.parse(source)) == ["import update", "db.session.add", "db.session.commit"]
