"""Admin API for audiences: define one (answered with its preview count), list, read, run a batch, its lift.

A definition is ``rebate.audiences.Definition`` (a tree of clauses; 422 naming the field, schema in
/openapi.json). Merchant staff define audiences of their own merchant's buyers only, see only those, and
run them only on their own campaigns (anything else answers 404). A run issues one packet of the campaign
to every treated member and keeps ``holdout_bps`` of the audience (0–5000) back: when the audience has
at most ``AUDIENCE_RUN_INLINE_MAX`` members the request works the whole run (one commit) and answers it
``done``; a larger one answers ``pending`` and the ``audience_runs_job`` works it off, a chunk per
transaction. Starting a run issues money's worth, so it needs an ``Idempotency-Key`` (a retry answers the
same run). ``GET …/runs/<id>`` answers the run's status, counts and lift (``insights.lift``).
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app, g
from pydantic import Field, StrictInt
from sqlalchemy import select

from insights.lift import run_lift
from models import Audience, AudienceRun, OperatorRole, RunStatus, db, utcnow
from models.operators import merchant_scope
from rebate import audiences
from rebate.audiences import Definition
from rebate.scope import visible_campaign
from web.admin import actor, long_reads
from web.api import endpoint
from web.guards import MAX_ID
from web.schemas import Id, Model, Name, Page, Reason

bp = Blueprint("audiences", __name__, url_prefix="/admin/api/audiences")
MANAGERS = (OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF)
READERS = (OperatorRole.ADMIN, OperatorRole.FINANCE, OperatorRole.SUPPORT, OperatorRole.MERCHANT_STAFF)
TAGS = ("audiences",)


class CreateAudience(Model):
    name: Name
    definition: Definition
    merchant_id: Id | None = Field(None, description="Only this merchant's buyers (merchant staff: always theirs).")
    reason: Reason | None = None


class StartRun(Model):
    campaign_id: Id
    holdout_bps: Annotated[StrictInt, Field(ge=0, le=5000, description="The share held out, in basis points.")]
    reason: Reason | None = None


class LiftQuery(Model):
    window_days: int = Field(14, ge=1, le=365, description="Orders paid this many days from the run's start count.")


class CampaignRunsQuery(LiftQuery):
    campaign_id: int = Field(gt=0, le=MAX_ID, description="The campaign whose runs to show.")
    limit: int = Field(5, ge=1, le=20, description="The newest runs, each with its lift.")


def audience_json(audience: Audience, preview: int | None = None) -> dict:
    body = {
        "id": audience.id,
        "name": audience.name,
        "definition": audience.definition,
        "merchant_id": audience.merchant_id,
        "created_by": audience.created_by,
        "created_at": audience.created_at.isoformat(),
    }
    return body if preview is None else {**body, "preview_count": preview}


def run_json(run: AudienceRun) -> dict:
    return {
        "id": run.id,
        "audience_id": run.audience_id,
        "campaign_id": run.campaign_id,
        "holdout_bps": run.holdout_bps,
        "status": run.status,
        "members": run.members,
        "treated": run.treated,
        "holdout": run.holdout,
        "issued": run.issued,
        "refused": run.refused,
        "created_at": run.created_at.isoformat(),
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def _preview(audience: Audience) -> int:
    return audiences.preview_count(audiences.definition_of(audience), audience.merchant_id, utcnow())


def _counted_apart(definition, merchant_id: int | None) -> int:
    """A read-only request's count, apart from its transaction (``audiences.preview_count``), a long read of the
    operator's (one at a time, ``LONG_READS_AT_ONCE`` in all)."""
    with long_reads():
        return audiences.preview_count(definition, merchant_id, utcnow(), apart=True)


@endpoint(
    bp,
    "",
    methods=["POST"],
    auth="operator",
    roles=MANAGERS,
    body=CreateAudience,
    idempotent=True,
    status=201,
    tags=TAGS,
)
def create_audience(body: CreateAudience):
    """Define an audience; answers it with how many people are in it now (``preview_count``)."""
    audience = audiences.create_audience(actor(), body.name, body.definition, body.merchant_id, body.reason)
    return audience_json(audience, _preview(audience)), 201


class PreviewAudience(Model):
    definition: Definition
    merchant_id: Id | None = Field(None, description="Only this merchant's buyers (merchant staff: always theirs).")


@endpoint(
    bp, "/preview", methods=["POST"], auth="operator", roles=MANAGERS, body=PreviewAudience, tags=TAGS, reads=True
)
def preview_audience(body: PreviewAudience):
    """How many people a definition holds now, without saving it."""
    merchant_id = audiences.scoped_merchant(actor(), body.merchant_id)
    # a read only: counted apart from the request's transaction (on SQLite it holds the one write lock)
    return {
        "preview_count": _counted_apart(body.definition, merchant_id),
        "merchant_id": merchant_id,
    }


@endpoint(bp, "", auth="operator", roles=READERS, query=Page, tags=TAGS)
def list_audiences(query: Page):
    """Audiences, newest first (merchant staff: their merchant's)."""
    stmt = select(Audience).order_by(Audience.id.desc()).limit(query.limit).offset(query.offset)
    scope = merchant_scope(g.operator)
    if scope is not None:
        stmt = stmt.where(Audience.merchant_id == scope)
    return {"items": [audience_json(a) for a in db.session.execute(stmt).scalars()]}


@endpoint(bp, "/<int:audience_id>", auth="operator", roles=READERS, tags=TAGS)
def get_audience(audience_id: int):
    """One audience with its preview count now, and its runs (newest first)."""
    audience = audiences.visible_audience(g.operator, audience_id)
    runs = db.session.execute(
        select(AudienceRun).where(AudienceRun.audience_id == audience.id).order_by(AudienceRun.id.desc()).limit(50)
    ).scalars()
    answer = {**audience_json(audience), "runs": [run_json(r) for r in runs]}  # read before the count ends the
    # request's transaction (a read only: counted apart from it; on SQLite it holds the one write lock)
    return {**answer, "preview_count": _counted_apart(audiences.definition_of(audience), audience.merchant_id)}


@endpoint(
    bp,
    "/<int:audience_id>/runs",
    methods=["POST"],
    auth="operator",
    roles=MANAGERS,
    body=StartRun,
    idempotent=True,
    require_key=True,
    status=201,
    tags=TAGS,
)
def start_run(audience_id: int, body: StartRun):
    """Issue one packet of a campaign to every member not held out (a small audience at once, else by the job)."""
    now = utcnow()
    run = audiences.start_run(actor(), audience_id, body.campaign_id, body.holdout_bps, now, body.reason)
    inline_max = current_app.config["AUDIENCE_RUN_INLINE_MAX"]
    audience = db.session.get(Audience, run.audience_id)
    # counted only as far as the answer needs: this request writes, and on SQLite it holds every other writer
    small = audiences.preview_count(audiences.definition_of(audience), audience.merchant_id, now, at_most=inline_max)
    if small <= inline_max:
        chunk = current_app.config["AUDIENCE_RUN_CHUNK"]
        while audiences.work_run(run.id, now, chunk) not in (RunStatus.DONE, None):
            pass
        db.session.refresh(run)
    return run_json(run), 201


@endpoint(bp, "/runs/<int:run_id>", auth="operator", roles=READERS, query=LiftQuery, tags=TAGS)
def get_run(run_id: int, query: LiftQuery):
    """A run's status and counts, and its lift: treated against holdout over the window."""
    run = audiences.visible_run(g.operator, run_id)
    return {**run_json(run), "lift": run_lift(run, utcnow(), query.window_days)}


@endpoint(bp, "/runs", auth="operator", roles=READERS, query=CampaignRunsQuery, tags=TAGS)
def campaign_runs(query: CampaignRunsQuery):
    """A campaign's newest audience runs, each with its lift (the campaign's effect report shows them). A campaign
    merchant staff may not see: 404, as for its report."""
    visible_campaign(g.operator, query.campaign_id)
    stmt = (
        select(AudienceRun)
        .join(Audience, Audience.id == AudienceRun.audience_id)
        .where(AudienceRun.campaign_id == query.campaign_id)
        .order_by(AudienceRun.id.desc())
        .limit(query.limit)
    )
    scope = merchant_scope(g.operator)
    if scope is not None:  # merchant staff: runs of their own merchant's audiences only
        stmt = stmt.where(Audience.merchant_id == scope)
    now = utcnow()
    runs = db.session.execute(stmt).scalars().all()
    return {"items": [{**run_json(r), "lift": run_lift(r, now, query.window_days)} for r in runs]}
