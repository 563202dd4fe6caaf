"""Operators over what WeChat pushed (``web/messages_api.py``, ``web/console/messages.py``): counts, a message
with what WeChat sent, and an admin's retry of a failed one — once, audited, and refused for any other state."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs import messages as worker
from jobs.messages import apply_messages
from models import AuditLog, InboundMessage, db, utcnow
from tests.console_helpers import post
from tests.console_helpers import sign_in as console_sign_in
from tests.test_message_push import push

TEXT = {"ToUserName": "gh", "FromUserName": "oOA-carol", "CreateTime": 1_700_000_000, "MsgType": "text"}


@pytest.fixture
def failed(app, client, monkeypatch):
    """A text message every attempt failed on (its handler broke), and one applied."""
    app.config["MESSAGES_MAX_ATTEMPTS"] = 1

    def broken(message, now):
        raise RuntimeError("the command parser broke")

    monkeypatch.setattr(worker, "TEXT_HANDLERS", [broken])
    push(client, "oa", {**TEXT, "Content": "加入", "MsgId": 1})
    assert apply_messages() == {"failed": 1}
    monkeypatch.setattr(worker, "TEXT_HANDLERS", [])
    push(client, "oa", {**TEXT, "Content": "你好", "MsgId": 2})
    apply_messages()
    db.session.expire_all()
    return db.session.execute(select(InboundMessage).order_by(InboundMessage.id)).scalars().all()


def test_the_api_counts_filters_and_shows_what_wechat_sent(client, make_operator, failed):
    _, headers = make_operator("support")
    answer = client.get("/admin/api/messages", headers=headers).get_json()
    assert answer["counts"]["status"] == {"failed": 1, failed[1].status: 1} and answer["counts"]["kind"] == {"text": 2}
    only = client.get("/admin/api/messages?status=failed", headers=headers).get_json()["items"]
    assert [m["id"] for m in only] == [failed[0].id] and "broke" in only[0]["last_error"] and "payload" not in only[0]
    one = client.get(f"/admin/api/messages/{failed[0].id}", headers=headers).get_json()
    assert one["payload"]["fields"]["Content"] == "加入"
    assert client.get("/admin/api/messages/999999", headers=headers).status_code == 404
    assert client.get("/admin/api/messages?status=lost", headers=headers).status_code == 422
    assert client.get("/admin/api/messages?event=a%27%20or%201=1", headers=headers).status_code == 422


def test_an_admin_retries_a_failed_message_once_and_it_is_applied_then(client, make_operator, failed, monkeypatch):
    _, support = make_operator("support")
    _, admin = make_operator("admin")
    url = f"/admin/api/messages/{failed[0].id}/retry"
    assert client.post(url, json={"reason": "parser fixed"}, headers=support).status_code == 403
    assert client.post(url, json={}, headers=admin).status_code == 422
    answer = client.post(url, json={"reason": "parser fixed"}, headers=admin)
    assert answer.status_code == 200 and answer.get_json()["status"] == "queued"
    assert client.post(url, json={"reason": "again"}, headers=admin).status_code == 409  # queued: not failed
    done = client.post(f"/admin/api/messages/{failed[1].id}/retry", json={"reason": "again"}, headers=admin)
    assert done.status_code == 409  # applied once: never again
    seen = []
    monkeypatch.setattr(
        worker, "TEXT_HANDLERS", [lambda message, now: seen.append(message.payload["fields"]["Content"]) or True]
    )
    assert apply_messages(clock=lambda: utcnow() + timedelta(seconds=1)) == {"done": 1}
    assert seen == ["加入"]
    assert db.session.execute(select(AuditLog.action)).scalars().all() == ["message.retry"]


def test_the_console_pages_list_show_and_retry(client, make_operator, failed):
    _, headers = make_operator("admin")
    csrf = console_sign_in(client, headers)
    page = client.get("/console/messages?status=failed").get_data(as_text=True)
    assert f'data-message="{failed[0].id}"' in page and f'data-message="{failed[1].id}"' not in page
    detail = client.get(f"/console/messages/{failed[0].id}").get_data(as_text=True)
    assert "加入" in detail and 'id="retry"' in detail
    assert post(client, f"/console/messages/{failed[0].id}/retry", {"reason": ""}, csrf).status_code == 422
    assert post(client, f"/console/messages/{failed[0].id}/retry", {"reason": "parser fixed"}, csrf).status_code == 302
    db.session.expire_all()
    assert db.session.get(InboundMessage, failed[0].id).status == "queued"
    assert client.get("/console/messages/424242").status_code == 404
