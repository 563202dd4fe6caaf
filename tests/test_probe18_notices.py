"""Probe 18: notices (subscribe / template messages, the inbox, consents, the daily cap) and WeChat's message push."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs.notices import Senders, dispatch_pass
from models import Notice, db, utcnow
from notices.consents import apply_push_event
from notices.dispatch import NoticeSettings


def sim(app):
    return app.extensions["wechat"].simulator


def consent(app, user, tmpl, times=1):
    db.session.refresh(user)
    openid = user.identity_for(app.config["WECHAT_APPID"]).openid
    for i in range(times):
        sim(app).request_subscribe(openid, [tmpl])
        apply_push_event(
            user.id,
            openid,
            "subscribe_msg_popup_event",
            [{"TemplateId": tmpl, "SubscribeStatusString": "accept"}],
            utcnow() + timedelta(seconds=i),
        )
    db.session.commit()


def run(app, send=None, clock=utcnow, **settings):
    cfg = NoticeSettings.from_config(app.config)
    cfg = NoticeSettings(**{**cfg.__dict__, **settings})
    senders = Senders(app.config, app.extensions["wechat"], cfg)
    return dispatch_pass(app.extensions["notice_templates"], cfg, send or senders.send, lambda c: True, clock)


def messages(app):
    return sorted(sim(app).sent_messages.values(), key=lambda m: m["at"])


def notices_of(user) -> list[Notice]:
    db.session.expire_all()
    return db.session.execute(select(Notice).where(Notice.user_id == user.id).order_by(Notice.id)).scalars().all()


# -- points alone back in the wallet: the subscribe message's amount is what they are worth, not ¥0.00 ------------

RETURNED_TMPL = "sim-tmpl-wallet-returned"


@pytest.mark.parametrize(
    ("cash_fen", "points", "amount"),
    [(0, 40, "¥1.20"), (3_00, 40, "¥4.20"), (3_00, 0, "¥3.00")],
)
def test_a_wallet_return_tells_on_wechat_the_worth_of_the_points_that_came_back(
    app, make_user, make_product, cash_fen, points, amount
):
    """An order paid with 40 points (3 fen each) closes unpaid: the points come back. The inbox says "使用的 40
    积分已退回", but the subscribe message read "¥0.00 / 未支付已关闭 / 积分已退回": the person sees nothing came back.
    Its amount is what came back is worth: the balance plus the points' value (as a points rebate is told)."""
    from rebate import close_order
    from tests.test_wallet import buy, fund

    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user, cash_fen=5_00, points=100)
    order = buy(user, make_product(price_fen=10_00), balance_fen=cash_fen, points=points, point_value_fen=3)
    consent(app, user, RETURNED_TMPL)
    close_order(order, utcnow())
    db.session.commit()
    run(app)
    (sent,) = messages(app)
    assert sent["template_id"] == RETURNED_TMPL
    assert sent["data"]["amount1"] == {"value": amount}
    assert sent["data"]["thing2"] == {"value": "未支付已关闭"}
    (notice,) = notices_of(user)
    assert notice.status == "sent"


def test_a_refund_giving_points_back_tells_their_worth_on_wechat(app, make_user, make_product, pay):
    """The same on a refund: a third of a 10-yuan order paid with 7 points (3 fen each) gives 2 points back."""
    from tests.test_wallet import buy, fund, refund

    user = make_user(appid=app.config["WECHAT_APPID"])
    fund(user, points=7)
    order = buy(user, make_product(price_fen=10_00), points=7, point_value_fen=3)
    pay(order)
    db.session.refresh(order)
    consent(app, user, RETURNED_TMPL)
    refund(order, "R1", order.payable_fen // 3)
    run(app)
    (sent,) = [m for m in messages(app) if m["template_id"] == RETURNED_TMPL]
    assert sent["data"]["amount1"] == {"value": "¥0.06"}
    assert sent["data"]["thing3"] == {"value": "积分已退回"}


# -- a follower of the official account before they ever signed in: reached by unionid, and so is WeChat's word ---


def _template_finished(app, client, openid: str, msgid: str, status: str) -> dict:
    import time

    from jobs.messages import apply_messages
    from web.push import push_settings
    from wechat.push import build_push

    fields = {
        "ToUserName": "gh_oa",
        "FromUserName": openid,
        "CreateTime": int(time.time()),
        "MsgType": "event",
        "Event": "TEMPLATESENDJOBFINISH",
        "MsgID": msgid,
        "Status": status,
    }
    built = build_push(push_settings("oa"), fields)
    answer = client.post("/wechat/oa/push", query_string=built.args, data=built.body)
    assert (answer.status_code, answer.text) == (200, "success")
    return apply_messages()


def _follower_before_sign_in(app, make_user):
    """Followed the official account first (nobody knew them: the follower is kept unlinked, with its unionid),
    signed in to the mini-program later with the same unionid: no official-account identity of theirs is held."""
    from models import OaFollower

    user = make_user(unionid=f"union-{utcnow().timestamp()}", appid=app.config["WECHAT_APPID"])
    openid = f"sim-oa-openid-early-{user.id}"
    db.session.add(
        OaFollower(
            appid=app.config["WECHAT_OA_APPID"],
            openid=openid,
            unionid=user.unionid,
            user_id=None,
            following=True,
            changed_at=utcnow(),
            followed_at=utcnow(),
        )
    )
    db.session.commit()
    return user, openid


def test_a_template_sent_event_for_a_follower_known_by_unionid_records_its_delivery(app, client, make_user):
    """The dispatcher reaches a follower by their unionid (``following_openid``) and sends them the OA's template
    message; WeChat's TEMPLATESENDJOBFINISH from that openid was ignored (the push worker looked for an identity
    only): the person blocking the account's messages never showed, the delivery stayed empty."""
    from notices import NoticeEvent, enqueue

    user, openid = _follower_before_sign_in(app, make_user)
    enqueue(user.id, NoticeEvent.REBATE_LANDED, "landed-early", {"amount_fen": 500, "form": "balance"})
    db.session.commit()
    run(app)
    (notice,) = notices_of(user)
    assert (notice.status, notice.channel) == ("sent", "oa_template")
    assert _template_finished(app, client, openid, notice.wechat_msgid, "failed:user block") == {"done": 1}
    (notice,) = notices_of(user)
    assert notice.delivery == "failed:user block"


def test_a_template_sent_event_settles_a_lost_answer_for_a_follower_known_by_unionid(app, client, make_user):
    """README: a TEMPLATESENDJOBFINISH "whose answer our process lost settles that notice as sent (never sent
    again)". For a follower known by unionid only, it was ignored: the notice ended "outcome unknown"."""
    from notices import NoticeEvent, enqueue

    user, openid = _follower_before_sign_in(app, make_user)
    enqueue(user.id, NoticeEvent.REBATE_LANDED, "lost-early", {"amount_fen": 500, "form": "balance"})
    db.session.commit()

    class Crash(BaseException):
        pass

    def lost(job):
        raise Crash

    with pytest.raises(Crash):
        run(app, send=lost)
    assert notices_of(user)[0].status == "sending"
    assert _template_finished(app, client, openid, "556677", "success") == {"done": 1}
    (notice,) = notices_of(user)
    assert (notice.status, notice.wechat_msgid, notice.delivery) == ("sent", "556677", "success")


# -- probes that held (kept as guards) ------------------------------------------------------------------------


def _oa_follower(app, make_user):
    from models import OaFollower, UserIdentity

    user = make_user(appid=app.config["WECHAT_APPID"])
    oa_appid, openid = app.config["WECHAT_OA_APPID"], f"sim-oa-openid-{user.id}"
    db.session.add(UserIdentity(user_id=user.id, appid=oa_appid, openid=openid))
    db.session.add(OaFollower(appid=oa_appid, openid=openid, user_id=user.id, following=True, changed_at=utcnow()))
    db.session.commit()
    return user


def test_the_daily_cap_starts_again_at_beijing_midnight_not_utc_midnight(app, make_user):
    from datetime import UTC, datetime

    from notices import NoticeEvent, enqueue

    user = _oa_follower(app, make_user)
    landed = {"amount_fen": 500, "form": "balance"}
    # 23:59:30 Beijing = 15:59:30 UTC; 00:00:30 Beijing = 16:00:30 UTC (the same UTC day)
    before, after = datetime(2031, 3, 4, 15, 59, 30, tzinfo=UTC), datetime(2031, 3, 4, 16, 0, 30, tzinfo=UTC)
    for key, at in (("a", before), ("b", before), ("c", after)):
        enqueue(user.id, NoticeEvent.REBATE_LANDED, key, landed)
        db.session.commit()
        run(app, clock=lambda at=at: at, daily_cap=1)
    by_key = {n.key: (n.status, n.channel) for n in notices_of(user)}
    assert by_key == {"a": ("sent", "oa_template"), "b": ("inbox", "inbox"), "c": ("sent", "oa_template")}


def test_one_event_enqueued_twice_at_once_is_one_notice(app, make_user):
    from notices import NoticeEvent, enqueue
    from tests.concurrency import together

    user = make_user()
    user_id = user.id
    wrote = together(
        2, lambda i: enqueue(user_id, NoticeEvent.REBATE_LANDED, "twice", {"amount_fen": 1, "form": "balance"}), app
    )
    assert sorted(wrote) == [False, True], wrote
    assert len(db.session.execute(select(Notice).where(Notice.key == "twice")).scalars().all()) == 1


def test_the_inbox_marks_only_ones_own_notices_and_two_marks_at_once_count_each_once(
    app, client, make_user, user_headers
):
    from notices import NoticeEvent, enqueue
    from tests.concurrency import post_together

    me, other = make_user(), make_user()
    for i in range(3):
        enqueue(me.id, NoticeEvent.REBATE_LANDED, f"mine-{i}", {"amount_fen": 100 + i, "form": "balance"})
    enqueue(other.id, NoticeEvent.REBATE_LANDED, "theirs", {"amount_fen": 9, "form": "balance"})
    db.session.commit()
    theirs = db.session.execute(select(Notice.id).where(Notice.key == "theirs")).scalar_one()
    answer = client.post("/api/v1/me/notices/read", json={"ids": [theirs]}, headers=user_headers(me))
    assert (answer.status_code, answer.json["marked"], answer.json["unread"]) == (200, 0, 3)
    page = [client.get(f"/api/v1/me/notices?limit=1&offset={i}", headers=user_headers(me)).json for i in range(4)]
    assert [len(p["items"]) for p in page] == [1, 1, 1, 0]
    assert len({p["items"][0]["id"] for p in page[:3]}) == 3 and theirs not in {p["items"][0]["id"] for p in page[:3]}
    headers = user_headers(me)
    results = post_together(app, [("/api/v1/me/notices/read", headers, {"all": True})] * 2)
    assert [status for status, _ in results] == [200, 200], results
    assert db.session.execute(select(Notice).where(Notice.key == "theirs")).scalar_one().read_at is None


# -- a subscribe event's List whose TemplateId is a number, or a structure: applied, never a job failing for ever --

LANDED_TMPL = "sim-tmpl-rebate-landed"


def _push(client, source, fields, json_format=False):
    import dataclasses

    from web.push import push_settings
    from wechat.push import build_push

    settings = dataclasses.replace(push_settings(source), json_format=json_format)
    built = build_push(settings, fields)
    return client.post(f"/wechat/{source}/push", query_string=built.args, data=built.body)


@pytest.mark.parametrize(
    ("odd", "json_format"),
    [
        (5, True),  # JSON: a number beside a string (sorting the two was a TypeError)
        ({"a": "1"}, True),  # JSON: an object
        (["x", "y"], False),  # XML: <TemplateId> twice in one <List>
    ],
)
def test_a_popup_event_with_an_odd_template_id_counts_the_good_one_and_the_worker_finishes(
    app, client, make_user, odd, json_format
):
    """A signed popup event whose List holds an item with a TemplateId no template has (a number, a structure) next
    to a real accept. The worker sorted the items by TemplateId: a number beside a string raised TypeError on every
    attempt (8 tries, then failed with an alert, the real accept never counted); a structure was stored as a
    consent for the template "{'a': '1'}"."""
    import time

    from jobs.messages import apply_messages
    from models import InboundMessage, NoticeConsent

    user = make_user(appid=app.config["WECHAT_APPID"])
    openid = user.identity_for(app.config["WECHAT_APPID"]).openid
    fields = {
        "ToUserName": "gh_mp",
        "FromUserName": openid,
        "CreateTime": int(time.time()),
        "MsgType": "event",
        "Event": "subscribe_msg_popup_event",
        "List": [
            {"TemplateId": odd, "SubscribeStatusString": "accept"},
            {"TemplateId": LANDED_TMPL, "SubscribeStatusString": "accept"},
        ],
    }
    answer = _push(client, "mp", fields, json_format=json_format)
    consents = lambda: {  # noqa: E731
        c.template_id: c.remaining for c in db.session.execute(select(NoticeConsent)).scalars() if c.remaining
    }
    if answer.status_code == 400:  # refused at the door: nothing written
        assert db.session.execute(select(InboundMessage)).scalars().all() == []
        return
    assert (answer.status_code, answer.text) == (200, "success")
    assert apply_messages() == {"done": 1}
    db.session.expire_all()
    counted = consents()
    assert counted[LANDED_TMPL] == 1
    assert not [t for t in counted if t.startswith(("{", "["))], counted


# -- a person who unfollows between the claim and the call: their choice, recorded, and no alert that hides ours -----


def test_an_unfollow_between_claim_and_call_is_recorded_without_an_alert_that_would_hide_a_real_refusal(app, make_user):
    """The person unfollowed the official account after the dispatcher chose it (the unfollow push not applied yet):
    WeChat answers 43004. That is recorded (the next notice does not knock again) and the notice stays in the inbox.
    It also raised "notice_refused" for the template, an alert raised once while open: a later 47003 on the same
    template (our data refused: every such message lost) raised nothing new, hidden behind a person's unfollow."""
    from sqlalchemy import func

    from models import Alert, OaFollower
    from notices import NoticeEvent, enqueue

    user = _oa_follower(app, make_user)
    enqueue(user.id, NoticeEvent.REBATE_LANDED, "unfollowed", {"amount_fen": 500, "form": "balance"})
    db.session.commit()
    sim(app).inject_fault("/cgi-bin/message/template/send", 200, "43004", "require subscribe")
    run(app)
    (notice,) = notices_of(user)
    assert (notice.status, notice.channel) == ("inbox", "oa_template") and "43004" in notice.last_error
    follower = db.session.execute(select(OaFollower).where(OaFollower.user_id == user.id)).scalar_one()
    assert follower.following is False
    assert db.session.execute(select(func.count()).select_from(Alert)).scalar_one() == 0
    # a refusal that is ours is still alerted
    other = _oa_follower(app, make_user)
    enqueue(other.id, NoticeEvent.REBATE_LANDED, "bad-data", {"amount_fen": 500, "form": "balance"})
    db.session.commit()
    sim(app).inject_fault("/cgi-bin/message/template/send", 200, "47003", "argument invalid!")
    run(app)
    alerts = db.session.execute(select(Alert)).scalars().all()
    assert [(a.kind, "47003" in a.message) for a in alerts] == [("notice_refused", True)]
