"""Subscribe-message consents: one tap counted once (client report and WeChat's popup event, either order),
exact under concurrency, taken one per send, gone on a reject."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from models import ConsentReport, NoticeConsent, db, utcnow
from notices.consents import apply_push_event, drop_consents, remaining, take_consent
from tests.concurrency import post_together, together

TMPL = "sim-tmpl-packet-received"
OTHER = "sim-tmpl-rebate-landed"


def post(client, headers, results, request_id="r1"):
    return client.post("/api/v1/me/subscriptions", headers=headers, json={"results": results, "request_id": request_id})


def popup(user, items, at=None, event="subscribe_msg_popup_event"):
    openid = user.identities[0].openid
    apply_push_event(None, openid, event, items, at or utcnow())
    db.session.commit()


def accept(tmpl=TMPL):
    return {"TemplateId": tmpl, "SubscribeStatusString": "accept", "PopupScene": "0"}


def left(user, tmpl=TMPL):
    return remaining(user.id).get(tmpl, 0)


def test_the_client_report_counts_once_per_request_id(client, make_user, user_headers):
    user = make_user()
    answer = post(client, user_headers(user), {TMPL: "accept", OTHER: "reject"})
    assert answer.status_code == 200, answer.json
    assert answer.json == {"added": 1, "remaining": {OTHER: 0, TMPL: 1}}
    again = post(client, user_headers(user), {TMPL: "accept", OTHER: "reject"})
    assert again.json["added"] == 0 and left(user) == 1
    assert post(client, user_headers(user), {TMPL: "accept"}, "r2").json["remaining"] == {TMPL: 2}
    listed = client.get("/api/v1/me/subscriptions", headers=user_headers(user)).json["items"]
    assert {"event": "packet_received", "template_id": TMPL, "remaining": 2} in listed


def test_bad_reports_are_refused_and_change_nothing(client, make_user, user_headers):
    user = make_user()
    headers = user_headers(user)
    unknown = post(client, headers, {"not-ours": "accept"})
    assert unknown.status_code == 422 and unknown.json["error"] == "unknown_template"
    six = {f"sim-tmpl-{i}": "accept" for i in range(6)}
    assert post(client, headers, six).status_code == 422
    assert post(client, headers, {TMPL: "maybe"}).status_code == 422
    assert post(client, headers, {}).status_code == 422
    assert (
        client.post("/api/v1/me/subscriptions", headers=headers, json={"results": {TMPL: "accept"}}).status_code == 422
    )
    assert (
        client.post("/api/v1/me/subscriptions", json={"results": {TMPL: "accept"}, "request_id": "x"}).status_code
        == 401
    )
    assert db.session.execute(select(ConsentReport)).first() is None and left(user) == 0


def test_client_first_then_wechat_push_of_the_same_tap_counts_once(client, make_user, user_headers):
    user = make_user()
    post(client, user_headers(user), {TMPL: "accept"})
    popup(user, [accept()])
    assert left(user) == 1


def test_wechat_push_first_then_client_of_the_same_tap_counts_once(client, make_user, user_headers):
    user = make_user()
    created = utcnow()  # the push's CreateTime: a retry carries the same one (two utcnow()s may straddle a second)
    popup(user, [accept()], created)
    assert left(user) == 1
    post(client, user_headers(user), {TMPL: "accept"})
    assert left(user) == 1
    popup(user, [accept()], created)  # WeChat retried the same push (same CreateTime): nothing more
    assert left(user) == 1


def test_two_taps_told_by_both_sources_are_two_consents(client, make_user, user_headers):
    user = make_user()
    now = utcnow()
    post(client, user_headers(user), {TMPL: "accept"}, "tap-1")
    post(client, user_headers(user), {TMPL: "accept"}, "tap-2")
    popup(user, [accept()], now)
    popup(user, [accept()], now + timedelta(seconds=3))
    assert left(user) == 2


def test_a_push_long_after_a_client_report_is_another_tap(client, make_user, user_headers):
    user = make_user()
    post(client, user_headers(user), {TMPL: "accept"})
    popup(user, [accept()], utcnow() + timedelta(minutes=30))
    assert left(user) == 2


def test_a_change_to_reject_removes_the_templates_consents(client, make_user, user_headers):
    user = make_user()
    post(client, user_headers(user), {TMPL: "accept", OTHER: "accept"})
    popup(user, [{"TemplateId": TMPL, "SubscribeStatusString": "reject"}], event="subscribe_msg_change_event")
    assert left(user) == 0 and left(user, OTHER) == 1
    popup(user, [accept()], event="subscribe_msg_change_event")  # a change to accept grants no one-time consent
    assert left(user) == 0


def test_an_unknown_openid_or_item_changes_nothing(app):
    apply_push_event(None, "nobody", "subscribe_msg_popup_event", [accept()], utcnow())
    apply_push_event(None, "nobody", "subscribe_msg_popup_event", [{"x": 1}, "junk"], utcnow())
    assert db.session.execute(select(ConsentReport)).first() is None


def test_a_send_takes_one_consent_and_never_below_zero(app, make_user):
    user = make_user()
    popup(user, [accept()])
    assert take_consent(user.id, TMPL) is True
    assert take_consent(user.id, TMPL) is False
    drop_consents(user.id, TMPL)
    db.session.commit()
    assert left(user) == 0


def test_two_reports_at_once_count_exactly(app, make_user, user_headers):
    user = make_user()
    headers = user_headers(user)
    body = {"results": {TMPL: "accept"}}
    results = post_together(
        app,
        [("/api/v1/me/subscriptions", headers, {**body, "request_id": f"tap-{i}"}) for i in range(3)]
        + [("/api/v1/me/subscriptions", headers, {**body, "request_id": "tap-0"})],
    )
    assert all(status == 200 for status, _ in results), results
    assert left(user) == 3  # tap-0 sent twice counts once


def test_the_client_and_the_push_at_once_count_once(app, make_user, user_headers):
    user = make_user()
    headers, openid, at = user_headers(user), user.identities[0].openid, utcnow()

    def one(i: int):
        if i == 0:
            return (
                app.test_client()
                .post(
                    "/api/v1/me/subscriptions", headers=headers, json={"results": {TMPL: "accept"}, "request_id": "t"}
                )
                .status_code
            )
        apply_push_event(None, openid, "subscribe_msg_popup_event", [accept()], at)
        return 200

    assert together(2, one, app=app) == [200, 200]
    assert left(user) == 1
    rows = db.session.execute(select(ConsentReport).order_by(ConsentReport.id)).scalars().all()
    assert sorted(r.counted for r in rows) == [False, True]
    assert {r.paired_with for r in rows} == {rows[0].id, rows[1].id}
    assert db.session.execute(select(NoticeConsent.remaining)).scalar_one() == 1


def test_two_people_whose_clients_use_the_same_request_id_each_get_their_consent(client, make_user, user_headers):
    """A request_id is the client's own (a counter, a timestamp): it names a tap of one person only."""
    alice, bob = make_user(), make_user()
    assert post(client, user_headers(alice), {TMPL: "accept"}, request_id="1").json["added"] == 1
    assert post(client, user_headers(bob), {TMPL: "accept"}, request_id="1").json["added"] == 1
    assert post(client, user_headers(bob), {TMPL: "accept"}, request_id="1").json["added"] == 0  # his retry
    assert (left(alice), left(bob)) == (1, 1)
