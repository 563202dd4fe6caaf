"""Reconciliation for operators: the daily runs against WeChat's bills, what they found, and a resolution.

``GET /admin/api/reconciliation/runs`` (newest bill day first), ``GET /admin/api/reconciliation/mismatches``
``?status=open|resolved|all&kind=&run_id=`` (oldest first: the queue to work through) and
``POST /admin/api/reconciliation/mismatches/<id>/resolve`` ``{resolution, reason?}``: admin and finance
only. A mismatch is resolved once (again: 409), with the operator and the time; the audit log keeps it.
The runs themselves are ``payouts.reconcile`` (the daily job).
"""

from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, g
from pydantic import Field
from sqlalchemy import select

from models import OperatorRole, db, utcnow
from models.operators import audit
from models.reconciliation import ReconciliationMismatch, ReconciliationRun
from payouts.reconcile import resolve_mismatch
from web.admin import actor
from web.api import endpoint
from web.guards import MAX_ID
from web.schemas import Model, Page, Reason, shown_line

bp = Blueprint("reconciliation", __name__, url_prefix="/admin/api/reconciliation")

RECONCILERS = (OperatorRole.ADMIN, OperatorRole.FINANCE)
Resolution = shown_line(3, 2000)  # one line operators read (the console's input is one line)


class RunQuery(Page):
    kind: Literal["trade", "fundflow"] | None = None  # BillKind


class MismatchQuery(Page):
    status: Literal["open", "resolved", "all"] = "open"
    kind: Literal["missing_here", "missing_there", "amount_differs", "status_differs"] | None = None  # MismatchKind
    run_id: Annotated[int, Field(gt=0, le=MAX_ID)] | None = None


class ResolveMismatch(Model):
    resolution: Resolution
    reason: Reason | None = None


def _at(value) -> str | None:
    return value.isoformat() if value else None


def run_json(run: ReconciliationRun) -> dict:
    return {
        "id": run.id,
        "bill_date": run.bill_date,
        "kind": run.kind,
        "sub_mchid": run.sub_mchid or None,  # service-provider mode: the sub-merchant whose trade bill it read
        "status": run.status,
        "started_at": _at(run.started_at),
        "finished_at": _at(run.finished_at),
        "lines_read": run.lines_read,
        "matched": run.matched,
        "mismatches": run.mismatches,
        "error": run.error,
    }


def mismatch_json(m: ReconciliationMismatch, run: ReconciliationRun) -> dict:
    return {
        "id": m.id,
        "run_id": m.run_id,
        "bill_date": run.bill_date,
        "bill_kind": run.kind,
        "bill_sub_mchid": run.sub_mchid or None,
        "kind": m.kind,
        "subject_type": m.subject_type,
        "subject_ref": m.subject_ref,
        "ours_fen": m.ours_fen,
        "theirs_fen": m.theirs_fen,
        "detail": m.detail,
        "found_at": _at(m.found_at),
        "status": "resolved" if m.resolved_at is not None else "open",
        "resolved_at": _at(m.resolved_at),
        "resolved_by": m.resolved_by,
        "resolution": m.resolution,
    }


@endpoint(bp, "/runs", auth="operator", roles=RECONCILERS, query=RunQuery, tags=("reconciliation",))
def list_runs(query: RunQuery):
    """The reconciliation runs, newest bill day first, with what each read, matched and found."""
    stmt = select(ReconciliationRun).order_by(ReconciliationRun.bill_date.desc(), ReconciliationRun.id.desc())
    if query.kind is not None:
        stmt = stmt.where(ReconciliationRun.kind == query.kind)
    rows = db.session.execute(stmt.limit(query.limit).offset(query.offset)).scalars()
    return {"items": [run_json(r) for r in rows]}


@endpoint(bp, "/mismatches", auth="operator", roles=RECONCILERS, query=MismatchQuery, tags=("reconciliation",))
def list_mismatches(query: MismatchQuery):
    """What the runs found, oldest first; open ones by default."""
    stmt = select(ReconciliationMismatch, ReconciliationRun).join(
        ReconciliationRun, ReconciliationRun.id == ReconciliationMismatch.run_id
    )
    if query.status == "open":
        stmt = stmt.where(ReconciliationMismatch.resolved_at.is_(None))
    elif query.status == "resolved":
        stmt = stmt.where(ReconciliationMismatch.resolved_at.is_not(None))
    if query.kind is not None:
        stmt = stmt.where(ReconciliationMismatch.kind == query.kind)
    if query.run_id is not None:
        stmt = stmt.where(ReconciliationMismatch.run_id == query.run_id)
    stmt = stmt.order_by(ReconciliationMismatch.id).limit(query.limit).offset(query.offset)
    return {"items": [mismatch_json(m, run) for m, run in db.session.execute(stmt).all()]}


@endpoint(
    bp,
    "/mismatches/<int:mismatch_id>/resolve",
    methods=["POST"],
    auth="operator",
    roles=RECONCILERS,
    body=ResolveMismatch,
    idempotent=True,
    tags=("reconciliation",),
)
def resolve(mismatch_id: int, body: ResolveMismatch):
    """Close a mismatch with what was found and done (once; a resolved one again is 409)."""
    row = resolve_mismatch(mismatch_id, g.operator.id, body.resolution, utcnow())
    audit(
        actor(),
        "reconciliation.resolve",
        "reconciliation_mismatch",
        row.id,
        body.reason or body.resolution,
        resolution=body.resolution,
        kind=row.kind,
        subject=f"{row.subject_type}:{row.subject_ref}",
    )
    return mismatch_json(row, db.session.get(ReconciliationRun, row.run_id))
