"""The inbox API (own notices only, read / unread), the admin notices API and console page, and simulator mode
end to end: a tap's consent, a notice, the dispatcher, the message on /_sim/, the inbox."""

from __future__ import annotations

from sqlalchemy import select

from jobs.notices import dispatch_notices
from models import Notice, db, utcnow
from notices import NoticeEvent, enqueue

FACTS = {"packet_id": 1, "amount_fen": 1230, "issuer": "Noodle House", "expires_at": "2026-11-30T06:00:00+00:00"}


def notify(user, key, event=NoticeEvent.PACKET_RECEIVED, facts=FACTS):
    enqueue(user.id, event, key, facts)
    db.session.commit()


def test_the_inbox_shows_the_callers_notices_newest_first_with_unread(client, make_user, user_headers):
    me, other = make_user(), make_user()
    notify(me, "a")
    notify(me, "b", NoticeEvent.REBATE_LANDED, {"amount_fen": 500, "form": "points"})
    notify(other, "c")
    answer = client.get("/api/v1/me/notices", headers=user_headers(me))
    assert answer.status_code == 200
    assert answer.json["unread"] == 2
    first, second = answer.json["items"]
    assert (first["event"], first["title"], first["body"]) == (
        "rebate_landed",
        "返利已到账",
        "¥5.00 返利已以积分形式到账。",
    )
    assert second["body"] == "Noodle House 送你一个 ¥12.30 的红包，请在 2026年11月30日 14:00 前使用。"
    assert second["page"] == "pages/packets/index" and second["read_at"] is None
    page = client.get("/api/v1/me/notices?limit=1&offset=1", headers=user_headers(me)).json["items"]
    assert [n["id"] for n in page] == [second["id"]]


def test_marking_read_touches_only_the_callers_own(client, make_user, user_headers):
    me, other = make_user(), make_user()
    notify(me, "a")
    notify(me, "b")
    notify(other, "c")
    theirs = db.session.execute(select(Notice.id).where(Notice.key == "c")).scalar_one()
    mine = db.session.execute(select(Notice.id).where(Notice.key == "a")).scalar_one()
    answer = client.post("/api/v1/me/notices/read", headers=user_headers(me), json={"ids": [mine, theirs, 999999]})
    assert answer.status_code == 200 and answer.json == {"marked": 1, "unread": 1}
    assert client.get("/api/v1/me/notices", headers=user_headers(other)).json["unread"] == 1
    unread = client.get("/api/v1/me/notices?unread=true", headers=user_headers(me)).json["items"]
    assert [n["id"] for n in unread] != [mine] and len(unread) == 1
    assert client.post("/api/v1/me/notices/read", headers=user_headers(me), json={"all": True}).json == {
        "marked": 1,
        "unread": 0,
    }


def test_bad_read_requests_are_refused(client, make_user, user_headers):
    me = make_user()
    headers = user_headers(me)
    for body in ({}, {"ids": []}, {"ids": ["x"]}, {"ids": [0]}, {"all": False}, {"ids": [1], "all": True}, [1]):
        answer = client.post("/api/v1/me/notices/read", headers=headers, json=body)
        assert answer.status_code in (400, 422), body
        assert answer.json["error"]
    assert client.get("/api/v1/me/notices?limit=0", headers=headers).status_code == 422
    assert client.get("/api/v1/me/notices").status_code == 401


def test_operators_see_counts_failures_and_a_person(client, make_user, make_operator):
    user = make_user()
    notify(user, "a")
    notify(user, "b")
    db.session.execute(
        Notice.__table__.update()
        .where(Notice.key == "b")
        .values(status="inbox", channel="subscribe", last_error="47003")
    )
    db.session.commit()
    _, headers = make_operator("support")
    answer = client.get(f"/admin/api/notices?user_id={user.id}", headers=headers)
    assert answer.status_code == 200
    assert answer.json["counts"]["status"] == {"pending": 1, "inbox": 1}
    assert [n["last_error"] for n in answer.json["failures"]] == ["47003"]
    assert answer.json["person"] == {"user_id": user.id, "consents": {}}
    assert client.get("/admin/api/notices?status=nope", headers=headers).status_code == 422
    _, staff = make_operator("merchant_staff")
    assert client.get("/admin/api/notices", headers=staff).status_code == 403


def test_simulator_mode_end_to_end(app, client, make_user, user_headers):
    user = make_user(appid=app.config["WECHAT_APPID"])
    openid, tmpl = user.identities[0].openid, "sim-tmpl-packet-received"
    phone = client.post("/_sim/subscribe/request", json={"openid": openid, "tmplIds": [tmpl]})
    assert phone.json == {"errMsg": "requestSubscribeMessage:ok", tmpl: "accept"}
    reported = client.post(
        "/api/v1/me/subscriptions",
        headers=user_headers(user),
        json={"results": {k: v for k, v in phone.json.items() if k != "errMsg"}, "request_id": "tap-1"},
    )
    assert reported.json["remaining"] == {tmpl: 1}
    notify(user, "a")
    notify(user, "b")  # a second notice: no consent left, no OA: the inbox only
    outcomes = dispatch_notices()
    assert outcomes["ok"] == 1, outcomes
    page = client.get("/_sim/").get_data(as_text=True)
    assert "Messages sent" in page and tmpl in page and "¥12.30" in page
    inbox = client.get("/api/v1/me/notices", headers=user_headers(user)).json
    assert inbox["unread"] == 2
    statuses = sorted(n.status for n in db.session.execute(select(Notice)).scalars())
    assert statuses == ["inbox", "sent"]
    items = client.get("/api/v1/me/subscriptions", headers=user_headers(user)).json["items"]
    assert {i["template_id"]: i["remaining"] for i in items}[tmpl] == 0  # the one consent is used up


def test_the_subscribe_result_is_reported_as_wechat_answered_it(app, client, make_user, user_headers):
    """``wx.requestSubscribeMessage`` answers ``{"errMsg": "requestSubscribeMessage:ok", <template>: "accept"}``:
    posted as it is, it is recorded (it was a 422: errMsg is no template); a failed request's is refused."""
    user = make_user(appid=app.config["WECHAT_APPID"])
    openid, tmpl = user.identities[0].openid, "sim-tmpl-packet-received"
    phone = client.post("/_sim/subscribe/request", json={"openid": openid, "tmplIds": [tmpl]}).json
    reported = client.post(
        "/api/v1/me/subscriptions", headers=user_headers(user), json={"results": phone, "request_id": "tap-1"}
    )
    assert reported.status_code == 200, reported.json
    assert reported.json["remaining"] == {tmpl: 1}
    failed = {"errMsg": "requestSubscribeMessage:fail cancel", tmpl: "accept"}
    refused = client.post(
        "/api/v1/me/subscriptions", headers=user_headers(user), json={"results": failed, "request_id": "tap-2"}
    )
    assert refused.status_code == 422
    items = client.get("/api/v1/me/subscriptions", headers=user_headers(user)).json["items"]
    assert {i["template_id"]: i["remaining"] for i in items}[tmpl] == 1


def test_the_console_notices_page_reads_the_admin_api(client, make_user, make_operator):
    from tests.console_helpers import sign_in

    user = make_user()
    notify(user, "a")
    _, headers = make_operator("support")
    sign_in(client, headers)
    page = client.get(f"/console/notices?user_id={user.id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "packet_received" in html and f"用户 #{user.id}" in html and "pending" in html
    assert client.get("/console/notices?user_id=abc").status_code == 422
    assert "通知 Notices" in client.get("/console/", follow_redirects=True).get_data(as_text=True)


def test_merchant_staff_cannot_open_the_notices_page(client, make_operator):
    from tests.console_helpers import sign_in

    _, headers = make_operator("merchant_staff")
    sign_in(client, headers)
    assert client.get("/console/notices").status_code == 403


def test_a_cancelled_notice_is_not_in_the_inbox(client, make_user, user_headers):
    me = make_user()
    notify(me, "a")
    notify(me, "b")
    db.session.execute(Notice.__table__.update().where(Notice.key == "b").values(status="cancelled"))
    db.session.commit()
    inbox = client.get("/api/v1/me/notices", headers=user_headers(me)).json
    assert inbox["unread"] == 1 and len(inbox["items"]) == 1


def test_a_reminder_shows_in_the_inbox_only_once_it_is_due_and_mark_all_leaves_it_unread(
    client, make_user, user_headers
):
    from datetime import timedelta

    import time_machine

    user = make_user()
    now = utcnow()
    facts = {"payout_id": 1, "amount_fen": 4000, "closes_at": (now + timedelta(hours=24)).isoformat()}
    enqueue(user.id, NoticeEvent.TRANSFER_TO_CONFIRM, "payout:1:to_confirm", facts)
    enqueue(user.id, NoticeEvent.TRANSFER_REMINDER, "payout:1:reminder", facts, send_after=now + timedelta(hours=21))
    db.session.commit()
    inbox = client.get("/api/v1/me/notices", headers=user_headers(user)).json
    assert [n["event"] for n in inbox["items"]] == ["transfer_to_confirm"] and inbox["unread"] == 1
    marked = client.post("/api/v1/me/notices/read", json={"all": True}, headers=user_headers(user)).json
    assert marked == {"marked": 1, "unread": 0}
    with time_machine.travel(now + timedelta(hours=21, minutes=1)):
        later = client.get("/api/v1/me/notices", headers=user_headers(user)).json
    assert [n["event"] for n in later["items"]] == ["transfer_reminder", "transfer_to_confirm"]
    assert later["unread"] == 1
