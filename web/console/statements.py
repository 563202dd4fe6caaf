"""Console page: a merchant's monthly statement (``console.statements``) and its pending deposit top-ups.

The statement is ``GET /admin/api/merchants/<id>/statement`` through its own view (``web.statements_api``):
merchant staff open their own merchant's (another merchant's is the API's 404), and the CSV downloads are the
API's CSVs (the statement's, and each figure's postings). Every part of the statement is shown with what it
reads: the fee invoice with the credit it gave back and what it carried forward, and the profit-sharing lines
(shared, returned to the merchant, owed by persons, unfrozen, held, in flight, the frozen money's balances).
The deposit top-ups waiting for a second operator are listed with approve / reject forms for the roles that
may decide them (``web.billing_api``); the proposer's own approval is the API's 409.
"""

from __future__ import annotations

from flask import abort, g, redirect, request, url_for

from models import utcnow
from models.operators import merchant_scope
from rebate.fees import month_of
from web.billing_api import approve_top_up, list_proposals, reject_top_up
from web.console import act, allowed, bp, form_data, may, read, render, whole_number
from web.guards import MAX_ID
from web.statements_api import (
    IN_FLIGHT_LINES,
    INVOICE_LINES,
    PROFIT_SHARE_LINES,
    SUMMARY_LINES,
    get_statement,
)


def in_order(known: dict, part: dict) -> list[tuple[str, dict]]:
    """The amount lines of a statement part (those with ``fen``): the known ones in their order, then any other."""
    lines = {name: v for name, v in part.items() if isinstance(v, dict) and "fen" in v}
    return [(n, lines[n]) for n in known if n in lines] + [(n, v) for n, v in lines.items() if n not in known]


def _merchant_id() -> int | None:
    raw = request.args.get("merchant_id", "").strip()
    if not raw:
        return merchant_scope(g.operator)
    number = whole_number(raw, MAX_ID)
    if not number:
        abort(404)
    return number


@bp.route("/statements")
def statements():
    """Pick a merchant and a Beijing month; see the statement, download it (or one figure's postings) as CSV."""
    allowed(get_statement)
    merchant_id = _merchant_id()
    month = request.args.get("month", "").strip() or month_of(utcnow())
    if merchant_id is None:
        return render("console/statements.html", statement=None, merchant_id=None, month=month, proposals=[])
    query = {"month": month}
    if request.args.get("format") == "csv":
        figure = request.args.get("figure")  # a figure's postings, as the API lists them (a bad name: its 422)
        extra = {"figure": figure, "entries": "1"} if figure is not None else {}
        return read(get_statement, query={**query, **extra, "format": "csv"}, merchant_id=merchant_id)
    statement = read(get_statement, query=query, merchant_id=merchant_id)
    proposals = read(list_proposals, query={"status": "pending", "merchant_id": merchant_id})["items"]
    return render(
        "console/statements.html",
        statement=statement,
        merchant_id=merchant_id,
        month=month,
        proposals=proposals,
        may_decide=may(approve_top_up),
        in_order=in_order,
        lines={
            "summary": SUMMARY_LINES,
            "invoice": INVOICE_LINES,
            "profit_shares": PROFIT_SHARE_LINES,
            "in_flight": IN_FLIGHT_LINES,
        },
    )


@bp.route("/deposit-proposals/<int:proposal_id>/<any(approve, reject):verb>", methods=["POST"])
def deposit_decide(proposal_id: int, verb: str):
    view = approve_top_up if verb == "approve" else reject_top_up
    allowed(view)
    form = form_data()
    done = "已批准 Approved: the money is booked" if verb == "approve" else "已拒绝 Rejected"
    act(view, body={"reason": form.get("reason", "").strip()}, done=done, proposal_id=proposal_id)
    back = {"merchant_id": form.get("merchant_id", ""), "month": form.get("month", "")}
    return redirect(url_for("console.statements", **{k: v for k, v in back.items() if v}))
