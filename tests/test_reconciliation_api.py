"""The reconciliation admin API: runs, mismatches, and an operator's resolution (web/reconciliation_api.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import AuditLog, db, utcnow
from models.reconciliation import ReconciliationMismatch, ReconciliationRun

RUNS = "/admin/api/reconciliation/runs"
MISMATCHES = "/admin/api/reconciliation/mismatches"


def make_run(bill_date: str = "2024-05-01", kind: str = "trade", **extra) -> ReconciliationRun:
    run = ReconciliationRun(bill_date=bill_date, kind=kind, status="done", finished_at=utcnow(), **extra)
    db.session.add(run)
    db.session.flush()
    return run


def make_mismatch(run: ReconciliationRun, ref: str, kind: str = "amount_differs", **extra) -> ReconciliationMismatch:
    row = ReconciliationMismatch(
        run_id=run.id,
        kind=kind,
        subject_type="order" if run.kind == "trade" else "payout",
        subject_ref=ref,
        ours_fen=extra.pop("ours_fen", 100_00),
        theirs_fen=extra.pop("theirs_fen", 99_00),
        detail=extra.pop("detail", "WeChat settled 99.00, we recorded 100.00"),
        **extra,
    )
    db.session.add(row)
    db.session.flush()
    return row


@pytest.fixture
def found():
    """Two days of runs: three mismatches, one already resolved."""
    trade = make_run("2024-05-01", "trade", lines_read=10, matched=8, mismatches=2)
    fund = make_run("2024-05-02", "fundflow", lines_read=3, matched=2, mismatches=1)
    a = make_mismatch(trade, "T0001")
    b = make_mismatch(trade, "T0002", kind="missing_here", ours_fen=None)
    c = make_mismatch(fund, "P0001", kind="missing_there", resolved_at=utcnow(), resolution="sent again")
    db.session.commit()
    return trade, fund, a, b, c


def resolve(client, headers, mismatch_id, **body):
    return client.post(f"{MISMATCHES}/{mismatch_id}/resolve", json=body, headers=headers)


def test_runs_newest_day_first_and_paged(client, make_operator, found):
    trade, fund, *_ = found
    _, headers = make_operator("finance")
    answer = client.get(RUNS, headers=headers)
    assert answer.status_code == 200
    assert [r["id"] for r in answer.json["items"]] == [fund.id, trade.id]
    assert (
        answer.json["items"][1].items()
        >= {"bill_date": "2024-05-01", "kind": "trade", "lines_read": 10, "matched": 8}.items()
    )
    assert [r["id"] for r in client.get(RUNS + "?limit=1&offset=1", headers=headers).json["items"]] == [trade.id]
    assert [r["id"] for r in client.get(RUNS + "?kind=fundflow", headers=headers).json["items"]] == [fund.id]


def test_mismatches_by_status_kind_and_run(client, make_operator, found):
    trade, fund, a, b, c = found
    _, headers = make_operator("admin")

    def ids(query: str = "") -> list[int]:
        answer = client.get(MISMATCHES + query, headers=headers)
        assert answer.status_code == 200, answer.json
        return [m["id"] for m in answer.json["items"]]

    assert ids() == [a.id, b.id]  # open by default
    assert ids("?status=resolved") == [c.id]
    assert ids("?status=all") == [a.id, b.id, c.id]
    assert ids("?status=all&kind=missing_here") == [b.id]
    assert ids(f"?status=all&run_id={fund.id}") == [c.id]
    assert ids("?limit=1&offset=1") == [b.id]
    first = client.get(MISMATCHES, headers=headers).json["items"][0]
    assert (
        first.items()
        >= {"bill_date": "2024-05-01", "bill_kind": "trade", "subject_ref": "T0001", "status": "open"}.items()
    )
    assert (first["ours_fen"], first["theirs_fen"]) == (100_00, 99_00)


@pytest.mark.parametrize(
    "query", ["?status=closed", "?kind=nonsense", "?run_id=0", "?run_id=abc", "?limit=0", "?offset=-1", "?x=1"]
)
def test_bad_filters_are_422(client, make_operator, found, query):
    _, headers = make_operator("admin")
    assert client.get(MISMATCHES + query, headers=headers).status_code == 422


def test_resolving_records_who_when_and_what_and_is_audited(client, make_operator, found):
    *_, a, b, c = found
    operator, headers = make_operator("finance")
    answer = resolve(client, headers, a.id, resolution="WeChat charged a fee; booked", reason="bill line 4")
    assert answer.status_code == 200, answer.json
    assert (
        answer.json.items()
        >= {"status": "resolved", "resolved_by": operator.id, "resolution": "WeChat charged a fee; booked"}.items()
    )
    db.session.expire_all()
    row = db.session.get(ReconciliationMismatch, a.id)
    assert (row.resolved_by, row.resolution) == (operator.id, "WeChat charged a fee; booked")
    assert row.resolved_at is not None
    [line] = db.session.execute(select(AuditLog).where(AuditLog.action == "reconciliation.resolve")).scalars().all()
    assert (line.operator_id, line.target_id, line.reason) == (operator.id, str(a.id), "bill line 4")
    assert line.details["resolution"] == "WeChat charged a fee; booked"
    # without a reason the resolution is the audit line's reason
    assert resolve(client, headers, b.id, resolution="order was paid twice at WeChat").status_code == 200


def test_a_second_resolve_is_409_and_changes_nothing(client, make_operator, found):
    *_, c = found
    _, headers = make_operator("admin")
    answer = resolve(client, headers, c.id, resolution="something else")
    assert (answer.status_code, answer.json["error"]) == (409, "already_resolved")
    db.session.expire_all()
    assert db.session.get(ReconciliationMismatch, c.id).resolution == "sent again"
    assert db.session.execute(select(AuditLog).where(AuditLog.action == "reconciliation.resolve")).first() is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"resolution": ""},
        {"resolution": "ok"},
        {"resolution": 42},
        {"resolution": "x" * 2001},
        {"resolution": "fine then", "reason": "x"},
        {"resolution": "fine then", "extra": 1},
    ],  # fmt: skip
)
def test_bad_bodies_are_422_and_change_nothing(client, make_operator, found, body):
    *_, a, _b, _c = found
    _, headers = make_operator("admin")
    assert resolve(client, headers, a.id, **body).status_code == 422
    db.session.expire_all()
    assert db.session.get(ReconciliationMismatch, a.id).resolved_at is None


def test_unknown_mismatch_is_404(client, make_operator, found):
    _, headers = make_operator("admin")
    assert resolve(client, headers, 999_999, resolution="nothing here").status_code == 404
    assert resolve(client, headers, 2**31, resolution="nothing here").status_code == 404


@pytest.mark.parametrize("role", ["support", "merchant_staff"])
def test_only_admin_and_finance(client, make_operator, make_merchant, found, role):
    *_, a, _b, _c = found
    _, headers = make_operator(role, make_merchant() if role == "merchant_staff" else None)
    assert client.get(RUNS, headers=headers).status_code == 403
    assert client.get(MISMATCHES, headers=headers).status_code == 403
    assert resolve(client, headers, a.id, resolution="not mine to say").status_code == 403
    assert client.get(RUNS).status_code == 401
    db.session.expire_all()
    assert db.session.get(ReconciliationMismatch, a.id).resolved_at is None


def test_the_query_literals_are_the_models_kinds():
    from typing import get_args

    from models.reconciliation import BillKind, MismatchKind
    from web.reconciliation_api import MismatchQuery, RunQuery

    def allowed(model) -> set[str]:
        return set(get_args(get_args(model.model_fields["kind"].annotation)[0]))

    assert allowed(RunQuery) == {k.value for k in BillKind}
    assert allowed(MismatchQuery) == {k.value for k in MismatchKind}


def test_two_operators_resolving_one_mismatch_at_once_resolve_it_once(app, make_operator, found):
    """On both databases: the row lock (PostgreSQL) or the one writer (SQLite) lets one win; the other is 409."""
    from tests.concurrency import post_together

    a_id = found[2].id
    (_, one), (_, two) = make_operator("finance"), make_operator("admin")
    path = f"{MISMATCHES}/{a_id}/resolve"
    answers = post_together(
        app, [(path, one, {"resolution": "matched by hand"}), (path, two, {"resolution": "written off"})]
    )
    assert sorted(status for status, _ in answers) == [200, 409]
    db.session.rollback()
    assert db.session.get(ReconciliationMismatch, a_id).resolution in ("matched by hand", "written off")
    lines = db.session.execute(select(AuditLog).where(AuditLog.action == "reconciliation.resolve")).scalars().all()
    assert len(lines) == 1
