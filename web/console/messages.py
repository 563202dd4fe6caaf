"""Console pages: what WeChat pushed to us (``console.messages``, ``console.message``) — counts by status and
kind, the queue's failures, one message with what WeChat sent, and an admin's retry of a failed one, all
through ``web.messages_api`` (no query of its own)."""

from __future__ import annotations

import json
import re

from flask import g, redirect, request, url_for

from web.console import act, allowed, bp, form_data, may, page_offset, read, render
from web.messages_api import get_message, list_messages, retry_message

PAGE = 50
STATUSES = ("", "failed", "queued", "done", "ignored")
SOURCES = ("", "oa", "mp")
EVENT = re.compile(r"^[A-Za-z_]{1,64}$")


def _offset() -> int:
    return page_offset()


@bp.route("/messages")
def messages():
    allowed(list_messages)
    filters = {name: request.args.get(name, "").strip() for name in ("status", "source", "event")}
    filters["status"] = filters["status"] if filters["status"] in STATUSES else ""
    filters["source"] = filters["source"] if filters["source"] in SOURCES else ""
    filters["event"] = filters["event"] if EVENT.fullmatch(filters["event"]) else ""
    offset = _offset()
    data = read(list_messages, query={**filters, "limit": PAGE, "offset": offset})
    return render(
        "console/ops_messages.html",
        data=data,
        filters=filters,
        statuses=STATUSES,
        sources=SOURCES,
        offset=offset,
        page=PAGE,
    )


def _message_page(message_id: int, status: int = 200):
    message = read(get_message, message_id=message_id)
    payload = json.dumps(message.get("payload"), ensure_ascii=False, indent=2)  # Chinese as written
    return render("console/ops_message.html", m=message, payload=payload, may_retry=may(retry_message)), status


@bp.route("/messages/<int:message_id>")
def message(message_id: int):
    return _message_page(message_id)


@bp.route("/messages/<int:message_id>/retry", methods=["POST"])
def message_retry(message_id: int):
    allowed(retry_message)
    body = {"reason": form_data().get("reason", "").strip()}
    done = f"消息 #{message_id} 已重新排队 Queued again: the jobs apply it within seconds"
    if act(retry_message, body=body, done=done, message_id=message_id) is None:
        return _message_page(message_id, g.refused_status)
    return redirect(url_for("console.message", message_id=message_id))
