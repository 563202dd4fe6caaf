"""Console page: notices (``console.notices``) — counts by status, channel and event, the latest failures, and
one person's notices and consents, all read through ``web.notices_api.list_notices`` (no query of its own)."""

from __future__ import annotations

from flask import flash, request

from web.console import allowed, bp, read, render, whole_number
from web.guards import MAX_ID
from web.notices_api import list_notices

PAGE = 50
STATUSES = ("", "pending", "sending", "sent", "inbox", "cancelled")


@bp.route("/notices")
def notices():
    allowed(list_notices)
    raw_user, status = request.args.get("user_id", "").strip(), request.args.get("status", "").strip()
    query: dict = {"limit": PAGE}
    if raw_user:
        user_id = whole_number(raw_user, MAX_ID)
        if not user_id:
            flash("用户编号应为正整数 The user id is a positive whole number", "error")
            return render(
                "console/ops_notices.html", data=None, user_id=raw_user, status=status, statuses=STATUSES
            ), 422
        query["user_id"] = user_id  # the number the page read (full-width digits, leading zeros), not the text
    if status in STATUSES[1:]:
        query["status"] = status
    data = read(list_notices, query=query)
    return render("console/ops_notices.html", data=data, user_id=raw_user, status=status, statuses=STATUSES)
