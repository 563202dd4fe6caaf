"""Console pages: audiences (see web/console/__init__.py).

The list (newest first, a page at a time, as the other console lists) with a define form (a definition as JSON,
checked with its preview count before saving), an audience's page (its preview count now, its runs, and a form to
run a campaign's batch on it with a holdout) and a run's page (status, counts and the lift table). Every page reads
and acts through the admin API's own views (``web/audiences_api.py``): roles, merchant scoping (another merchant's
audience or run answers 404), validation, audit and the one commit are the API's.
"""

from __future__ import annotations

import json

from flask import redirect, request, url_for

from web.audiences_api import (
    create_audience,
    get_audience,
    get_run,
    list_audiences,
    preview_audience,
    start_run,
)
from web.campaign_admin import list_campaigns
from web.console import allowed, bp, form_data, may, page_offset, read, render
from web.console.campaigns import Form, _act, _refuse

EXAMPLE = {
    "kind": "all_of",
    "clauses": [
        {"kind": "lapsed", "days": 30},
        {"kind": "spent_at_least", "amount_fen": 20000, "days": 365},
    ],
}
LIFT_ROWS = (  # (field, label, kind)
    ("members", "人数 Members", "count"),
    ("buyers", "下单人数 Buyers", "count"),
    ("buyer_share_bps", "下单率 Buyer share", "bps"),
    ("orders", "订单 Orders", "count"),
    ("sales_fen", "净销售额 Net sales", "fen"),
    ("sales_per_member_fen", "人均销售 Sales per member", "fen"),
)
PAGE = 50  # audiences a page of the list shows (older ones on the next pages)


def _definition_form(data=None) -> dict:
    defaults = {"name": "", "definition": json.dumps(EXAMPLE, indent=2), "merchant_id": ""}
    return {**defaults, **{k: v for k, v in (data or {}).items() if k in defaults}}


def _list_page(form_values: dict, preview: dict | None = None):
    offset = page_offset()  # as every list page: past 10,000,000 (or not a whole number) is the first page
    answer = read(list_audiences, query={"limit": PAGE, "offset": offset})
    return render(
        "console/audiences.html",
        items=answer["items"],
        offset=offset,
        page=PAGE,
        form=form_values,
        preview=preview,
        may_define=may(create_audience),
    )


@bp.route("/audiences", methods=["GET", "POST"])
def audiences():
    """Audiences, and the form to define one (``check`` answers the preview count without saving)."""
    if request.method == "GET":
        return _list_page(_definition_form())
    allowed(create_audience)
    data = form_data()
    form = Form(data)
    definition = form.json_object("definition")
    merchant_id = form.integer("merchant_id")
    preview = None
    if form.problems:
        _refuse(form.problems)
    elif "check" in data:
        preview = _act(preview_audience, body={"definition": definition, "merchant_id": merchant_id})
    else:
        body = {"name": form.text("name") or "", "definition": definition, "merchant_id": merchant_id}
        done = "已创建人群 · Audience defined."
        created = _act(create_audience, body=body, done=done)
        if created is not None:
            return redirect(url_for("console.audience", audience_id=created["id"]))
    return _list_page(_definition_form(data), preview)


def _audience_page(audience_id: int, run_form: dict | None = None):
    audience = read(get_audience, audience_id=audience_id)
    campaigns = []
    if may(start_run):
        campaigns = [c for c in read(list_campaigns, query={"limit": 500})["items"] if c["status"] == "active"]
    return render(
        "console/audience.html",
        a=audience,
        definition=json.dumps(audience["definition"], indent=2, ensure_ascii=False),
        campaigns=campaigns,
        run_form=run_form or {"campaign_id": "", "holdout_bps": "1000"},
        may_run=may(start_run),
    )


@bp.route("/audiences/<int:audience_id>")
def audience(audience_id: int):
    return _audience_page(audience_id)


@bp.route("/audiences/<int:audience_id>/runs", methods=["POST"])
def audience_run(audience_id: int):
    """Run a campaign's batch on the audience: small ones at once, larger ones by the job."""
    allowed(start_run)
    data = form_data()
    form = Form(data)
    body = {"campaign_id": form.integer("campaign_id"), "holdout_bps": form.integer("holdout_bps")}
    if form.problems:
        _refuse(form.problems)
    else:
        body["reason"] = form.text("reason")
        body = {k: v for k, v in body.items() if v is not None}
        run = _act(start_run, body=body, done="已开始发放 · Batch started.", audience_id=audience_id)
        if run is not None:
            return redirect(url_for("console.audience_run_page", run_id=run["id"]))
    return _audience_page(audience_id, dict(data))


@bp.route("/audiences/runs/<int:run_id>")
def audience_run_page(run_id: int):
    """A run's status, counts and lift (treated against holdout)."""
    form = Form(request.args)
    days = form.integer("window_days") or 14
    run = read(get_run, run_id=run_id, query={"window_days": days})
    return render("console/audience_run.html", run=run, lift=run["lift"], rows=LIFT_ROWS, window_days=days)
