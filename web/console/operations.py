"""Console pages: operations (see web/console/__init__.py).

* ``console.payouts`` / ``console.payout``: payouts that need an operator, one payout with its attempts, and the
  operator's hand (resend, cancel, approve as the second operator, resolve from evidence) — ``web.payouts_api``.
  The payouts page also shows the WeChat Pay coupon stocks paused for a spent budget, each with its resume form
  (``console.stock_resume``) — ``web.payouts_api.list_rails`` / ``resume_stock``.
* ``console.reconciliation``: the bill runs and open mismatches, resolved with what was found —
  ``web.reconciliation_api``.
* ``console.lookup``: customer service's trace of a user, order or red packet, in sentences — ``web.insights``
  (merchant staff: their own merchant only; anything else is the API's 404).
* ``console.audit``: the audit log — ``web.admin``.
* ``console.reviews`` / ``console.review``: the review queue and a case with the decision form (above the
  second-approval threshold the first decision is a proposal, which another reviewer may reject or its proposer
  withdraw: ``console.review_proposal_reject``) — ``web.reviews_api``.
* ``console.bans``: bans by subject, a new ban, lifting one — ``web.bans_api``.
* ``console.operators``: operator accounts, those waiting for a second admin's confirmation first, and the
  confirmation; disabling an account (its tokens revoked, its sessions ended) — ``web.admin``.

No query and no change here: every read and action is the admin API's own view (``read`` / ``act``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import abort, flash, g, redirect, request, url_for

from models import CaseOutcome, Rail
from models.reconciliation import BillKind, MismatchKind
from web.admin import confirm_operator, disable_operator, list_audit_log, list_operators
from web.bans_api import approve_ban_lift, create_ban, lift_ban, list_bans, reject_ban_lift
from web.console import act, allowed, bp, day_field, form_data, may, page_offset, read, render, whole_number
from web.guards import MAX_ID
from web.insights import trace_a_packet, trace_a_user, trace_an_order
from web.payouts_api import act_on_payout, get_payout, list_payouts, list_rails, resolve_payout, resume_stock
from web.reconciliation_api import list_mismatches, list_runs
from web.reconciliation_api import resolve as resolve_mismatch
from web.reviews_api import decide_review, get_review, list_reviews, reject_review_proposal

PAGE = 50
LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?")
# The payout states an operator looks at first; "" lists every state.
PAYOUT_STATES = ("needs_operator", "held", "unknown", "waiting_user_confirm", "pending", "failed", "cancelled", "")
PAYOUT_ACTIONS = {
    "resend": "已重新发送 Resent: the dispatcher takes it again (same number)",
    "cancel": "已取消 Cancelled",
    "approve": "已批准 Approved: it goes to the dispatcher",
}
TRACES: dict[str, tuple[Callable, str]] = {
    "user": (trace_a_user, "user_id"),
    "order": (trace_an_order, "order_id"),
    "packet": (trace_a_packet, "packet_id"),
}


def _offset() -> int:
    return page_offset()


def _args(*names: str) -> dict:
    return {name: request.args.get(name, "").strip() for name in names}


def _reason() -> str:
    return form_data().get("reason", "").strip()


# -- payouts ---------------------------------------------------------------------------------------


def _payouts_page(status: int = 200):
    filters = {"status": request.args.get("status", "needs_operator").strip(), "rail": request.args.get("rail", "")}
    offset = _offset()
    items = read(list_payouts, query={**filters, "limit": PAGE, "offset": offset})["items"]
    body = render(
        "console/ops_payouts.html",
        items=items,
        filters=filters,
        states=PAYOUT_STATES,
        rails=[r.value for r in Rail],
        paused_stocks=read(list_rails)["paused_stocks"],
        may_resume=may(resume_stock),
        offset=offset,
        page=PAGE,
    )
    return body, status


@bp.route("/payouts")
def payouts():
    return _payouts_page()


@bp.route("/rails/wechat_coupon/stocks/<stock_id>/resume", methods=["POST"])
def stock_resume(stock_id: str):
    """A coupon stock paused for a spent budget, resumed once it is raised at WeChat (the API's own view and checks:
    a stock not paused 409, an id no stock has 422, shown on the payouts page)."""
    allowed(resume_stock)
    answer = act(resume_stock, body={"reason": _reason()}, stock_id=stock_id)
    if answer is None:
        return _payouts_page(g.refused_status)
    flash(f"批次 {answer['stock_id']} 已恢复 Stock resumed: {answer['released']} payout(s) due now", "ok")
    return redirect(url_for("console.payouts"))


def _payout_page(payout_id: int, status: int = 200):
    payout = read(get_payout, payout_id=payout_id)
    body = render(
        "console/ops_payout.html",
        payout=payout,
        may_act=may(act_on_payout),
        awaiting_approval=bool(payout.get("awaiting_approval")),
    )
    return body, status


@bp.route("/payouts/<int:payout_id>")
def payout(payout_id: int):
    return _payout_page(payout_id)


@bp.route("/payouts/<int:payout_id>/<any(resend, cancel, approve):action>", methods=["POST"])
def payout_action(payout_id: int, action: str):
    allowed(act_on_payout)
    body = {"reason": _reason()}
    if act(act_on_payout, body=body, done=PAYOUT_ACTIONS[action], payout_id=payout_id, action=action) is None:
        return _payout_page(payout_id, g.refused_status)
    return redirect(url_for("console.payout", payout_id=payout_id))


@bp.route("/payouts/<int:payout_id>/resolve", methods=["POST"])
def payout_resolve(payout_id: int):
    allowed(resolve_payout)
    form = form_data()
    body = {"outcome": form.get("outcome", ""), "reason": form.get("reason", "").strip()}
    if act(resolve_payout, body=body, done=f"已处理 Resolved as {body['outcome']}", payout_id=payout_id) is None:
        return _payout_page(payout_id, g.refused_status)
    return redirect(url_for("console.payout", payout_id=payout_id))


# -- reconciliation --------------------------------------------------------------------------------


def _reconciliation_page(status: int = 200):
    filters = {"status": request.args.get("status", "open"), **_args("kind", "run_id")}
    offset = _offset()
    runs = read(list_runs, query={"limit": 14})["items"]
    mismatches = read(list_mismatches, query={**filters, "limit": PAGE, "offset": offset})["items"]
    body = render(
        "console/ops_reconciliation.html",
        runs=runs,
        mismatches=mismatches,
        filters=filters,
        kinds=[k.value for k in MismatchKind],
        bill_kinds=[k.value for k in BillKind],
        offset=offset,
        page=PAGE,
    )
    return body, status


@bp.route("/reconciliation")
def reconciliation():
    return _reconciliation_page()


@bp.route("/reconciliation/mismatches/<int:mismatch_id>/resolve", methods=["POST"])
def reconciliation_resolve(mismatch_id: int):
    allowed(resolve_mismatch)
    form = form_data()
    body = {"resolution": form.get("resolution", "").strip(), "reason": form.get("reason", "").strip() or None}
    if act(resolve_mismatch, body=body, done=f"差异 #{mismatch_id} 已解决 Resolved", mismatch_id=mismatch_id) is None:
        return _reconciliation_page(g.refused_status)
    return redirect(url_for("console.reconciliation"))


# -- customer-service lookup -----------------------------------------------------------------------


@bp.route("/lookup")
def lookup():
    kind, raw = request.args.get("kind", "order"), request.args.get("id", "").strip()
    trace = None
    if raw:
        if kind not in TRACES:
            abort(404)
        number = whole_number(raw, MAX_ID)
        if not number:
            flash("编号应为正整数 The id is a positive whole number", "error")
            return render("console/ops_lookup.html", kind=kind, id=raw, trace=None, kinds=tuple(TRACES)), 422
        view, name = TRACES[kind]
        trace = read(view, **{name: number})  # another merchant's (or no such) thing: the API's 404
    return render("console/ops_lookup.html", kind=kind, id=raw, trace=trace, kinds=tuple(TRACES))


# -- audit log -------------------------------------------------------------------------------------


AUDIT_FILTERS = ("operator_id", "action", "target_type", "target_id", "from", "to")


@bp.route("/audit")
def audit():
    """The audit log with the API's filters: operator, action (``campaign.`` for every campaign action),
    target, and a span of Beijing days."""
    filters = _args(*AUDIT_FILTERS)
    offset = _offset()
    query = {k: filters[k] for k in ("operator_id", "action", "target_type", "target_id")}
    query |= {"since": day_field(filters["from"]), "until": day_field(filters["to"], 1)}
    items = read(list_audit_log, query={**query, "limit": PAGE, "offset": offset})["items"]
    return render("console/ops_audit.html", items=items, filters=filters, offset=offset, page=PAGE)


# -- reviews ---------------------------------------------------------------------------------------


@bp.route("/reviews")
def reviews():
    filters = _args("status", "kind")
    offset = _offset()
    items = read(list_reviews, query={**filters, "limit": PAGE, "offset": offset})["items"]
    return render("console/ops_reviews.html", items=items, filters=filters, offset=offset, page=PAGE)


@bp.route("/reviews/<int:case_id>", methods=["GET", "POST"])
def review(case_id: int):
    status = 200
    if request.method == "POST":
        allowed(decide_review)
        form = form_data()
        body = {"outcome": form.get("outcome", ""), "reason": form.get("reason", "").strip()}
        if form.get("ban_days", "").strip():
            body["ban_days"] = form["ban_days"].strip()
        decided = act(decide_review, body=body, case_id=case_id)
        if decided is not None:
            if decided["status"] == "awaiting_approval":
                flash(
                    f"已提议 Proposal recorded: {decided['proposed_outcome']} — a second operator must agree "
                    "(the same outcome) before anything moves",
                    "ok",
                )
            else:
                flash(f"已决定 Decided: {decided['outcome']}", "ok")
            return redirect(url_for("console.review", case_id=case_id))
        status = g.refused_status
    return _review_page(case_id, status)


def _review_page(case_id: int, status: int = 200):
    case = read(get_review, case_id=case_id)
    outcomes = [o.value for o in CaseOutcome]
    return render("console/ops_review.html", case=case, outcomes=outcomes, may_decide=may(decide_review)), status


@bp.route("/reviews/<int:case_id>/proposal/reject", methods=["POST"])
def review_proposal_reject(case_id: int):
    """A reviewer who disagrees with the proposal (or its proposer withdrawing it): the case is open again."""
    allowed(reject_review_proposal)
    body = {"reason": form_data().get("reason", "").strip()}
    done = f"提议已驳回 Proposal rejected: case #{case_id} is open again, nothing moved"
    if act(reject_review_proposal, body=body, done=done, case_id=case_id) is None:
        return _review_page(case_id, g.refused_status)
    return redirect(url_for("console.review", case_id=case_id))


# -- bans ------------------------------------------------------------------------------------------


def _bans_page(status: int = 200, form: dict | None = None):
    filters = _args("subject", "value", "active")
    offset = _offset()
    items = read(list_bans, query={**filters, "limit": PAGE, "offset": offset})["items"]
    body = render(
        "console/ops_bans.html",
        items=items,
        filters=filters,
        form=form or {},
        may_ban=may(create_ban),
        offset=offset,
        page=PAGE,
    )
    return body, status


@bp.route("/bans", methods=["GET", "POST"])
def bans():
    if request.method == "GET":
        return _bans_page()
    allowed(create_ban)
    form = form_data()
    body: dict = {k: form.get(k, "").strip() for k in ("subject", "value", "reason")}
    if form.get("days", "").strip():
        body["days"] = form["days"].strip()
    ends_at = form.get("ends_at", "").strip()
    if ends_at:  # a datetime-local field: Beijing time without an offset
        body["ends_at"] = ends_at + "+08:00" if LOCAL_TIME.fullmatch(ends_at) else ends_at
    if act(create_ban, body=body, done="已封禁 Banned") is None:
        return _bans_page(422, form=dict(form))
    return redirect(url_for("console.bans"))


@bp.route("/bans/<int:ban_id>/lift", methods=["POST"])
def ban_lift(ban_id: int):
    """Lift a ban; one two operators made is only proposed here, for another operator to approve."""
    allowed(lift_ban)
    answer = act(lift_ban, body={"reason": _reason()}, ban_id=ban_id)
    if answer is None:
        return _bans_page(g.refused_status)
    if answer["lift_pending"]:
        flash(f"封禁 #{ban_id} 解除待批准 Lift proposed: another operator approves it", "ok")
    else:
        flash(f"封禁 #{ban_id} 已解除 Lifted", "ok")
    return redirect(url_for("console.bans"))


@bp.route("/bans/<int:ban_id>/lift/approve", methods=["POST"])
def ban_lift_approve(ban_id: int):
    """A second operator approves the proposed lift of a ban two operators made: lifted now."""
    return _decide_lift(approve_ban_lift, ban_id, f"封禁 #{ban_id} 已解除 Lifted (approved)")


@bp.route("/bans/<int:ban_id>/lift/reject", methods=["POST"])
def ban_lift_reject(ban_id: int):
    """Reject (its proposer: withdraw) the proposed lift: the ban stays in force."""
    return _decide_lift(reject_ban_lift, ban_id, f"封禁 #{ban_id} 解除已驳回 Lift rejected: the ban stays")


def _decide_lift(view, ban_id: int, done: str):
    allowed(view)
    if act(view, body={"reason": _reason()}, done=done, ban_id=ban_id) is None:
        return _bans_page(g.refused_status)
    return redirect(url_for("console.bans"))


# -- operators ------------------------------------------------------------------------------------


def _operators_page(status: int = 200):
    offset = _offset()
    waiting = read(list_operators, query={"unconfirmed": True, "limit": PAGE})["items"]
    everyone = read(list_operators, query={"limit": PAGE, "offset": offset})["items"]
    body = render(
        "console/ops_operators.html",
        waiting=waiting,
        items=everyone,
        may_confirm=may(confirm_operator),
        may_disable=may(disable_operator),
        offset=offset,
        page=PAGE,
    )
    return body, status


@bp.route("/operators")
def operators():
    allowed(list_operators)
    return _operators_page()


@bp.route("/operators/<int:operator_id>/confirm", methods=["POST"])
def operator_confirm(operator_id: int):
    allowed(confirm_operator)
    done = f"操作员 #{operator_id} 已确认 Confirmed: their token works now"
    if act(confirm_operator, body={"reason": _reason()}, done=done, operator_id=operator_id) is None:
        return _operators_page(g.refused_status)
    return redirect(url_for("console.operators"))


@bp.route("/operators/<int:operator_id>/disable", methods=["POST"])
def operator_disable(operator_id: int):
    """Disable an account: its tokens are revoked and its sessions end at once (not one's own: another admin's)."""
    allowed(disable_operator)
    done = f"操作员 #{operator_id} 已停用 Disabled: their tokens and sessions no longer work"
    if act(disable_operator, body={"reason": _reason()}, done=done, operator_id=operator_id) is None:
        return _operators_page(g.refused_status)
    return redirect(url_for("console.operators"))
