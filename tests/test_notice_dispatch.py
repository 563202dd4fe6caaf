"""The notices dispatcher: channels in the person's order of reach, WeChat's answers, never twice, anti-spam."""

from __future__ import annotations

from datetime import timedelta

import pytest
import responses
from sqlalchemy import select

from jobs.notices import Senders, dispatch_pass
from models import Alert, Notice, OaFollower, UserIdentity, db, transaction_open, utcnow
from notices import NoticeEvent, enqueue
from notices.consents import apply_push_event, remaining
from notices.dispatch import NoticeSettings
from wechat.errors import WeChatUnavailable

TMPL = "sim-tmpl-packet-received"
FACTS = {"packet_id": 1, "amount_fen": 1230, "issuer": "Noodle House", "expires_at": "2026-11-30T06:00:00+00:00"}
LANDED = {"amount_fen": 500, "form": "balance"}


@pytest.fixture
def person(app, make_user):
    """A mini-program user; ``follows=True``: they follow the official account (as message push records it)."""

    def make(follows: bool = False):
        user = make_user(appid=app.config["WECHAT_APPID"])
        if follows:
            oa_appid, openid = app.config["WECHAT_OA_APPID"], f"sim-oa-openid-{user.id}"
            db.session.add(UserIdentity(user_id=user.id, appid=oa_appid, openid=openid))
            db.session.add(
                OaFollower(appid=oa_appid, openid=openid, user_id=user.id, following=True, changed_at=utcnow())
            )
            db.session.commit()
        return user

    return make


def sim(app):
    return app.extensions["wechat"].simulator


def consent(app, user, tmpl=TMPL, times=1):
    """The person taps accept: the phone (simulator) and our record (WeChat's popup event) both learn it."""
    openid = user.identities[0].openid
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


def notify(user, key="n1", event=NoticeEvent.PACKET_RECEIVED, facts=FACTS, **kw):
    enqueue(user.id, event, key, facts, **kw)
    db.session.commit()


def run(app, send=None, take=lambda channel: True, clock=utcnow, **settings):
    cfg = NoticeSettings.from_config(app.config)
    cfg = NoticeSettings(**{**cfg.__dict__, **settings})
    senders = Senders(app.config, app.extensions["wechat"], cfg)
    return dispatch_pass(app.extensions["notice_templates"], cfg, send or senders.send, take, clock)


def the(key="n1") -> Notice:
    db.session.expire_all()
    return db.session.execute(select(Notice).where(Notice.key == key)).scalar_one()


def messages(app):
    return sorted(sim(app).sent_messages.values(), key=lambda m: m["at"])


def test_a_consent_sends_one_subscribe_message_and_is_used_up(app, person):
    user = person()
    consent(app, user)
    notify(user)
    assert run(app)["ok"] == 1
    notice = the()
    assert (notice.status, notice.channel, notice.template_id) == ("sent", "subscribe", TMPL)
    assert notice.wechat_msgid and notice.sent_at
    [message] = messages(app)
    assert message["touser"] == user.identities[0].openid and message["page"] == "pages/packets/index"
    assert message["data"]["amount2"] == {"value": "¥12.30"}
    assert remaining(user.id)[TMPL] == 0


def test_no_consent_and_no_oa_leaves_it_in_the_inbox(app, person):
    user = person()
    notify(user)
    run(app)
    assert (the().status, the().channel) == ("inbox", "inbox")
    assert messages(app) == []


def test_the_oa_template_message_when_no_consent_is_left(app, person):
    user = person(follows=True)
    notify(user)
    assert run(app)["ok"] == 1
    assert (the().status, the().channel, the().template_id) == ("sent", "oa_template", "sim-oa-packet-received")
    [message] = messages(app)
    assert message["kind"] == "oa_template" and message["touser"] == f"sim-oa-openid-{user.id}"


def test_43101_drops_the_consents_and_falls_through_to_the_oa(app, person):
    user = person(follows=True)
    apply_push_event(
        user.id,
        user.identities[0].openid,
        "subscribe_msg_popup_event",
        [{"TemplateId": TMPL, "SubscribeStatusString": "accept"}],
        utcnow(),
    )
    apply_push_event(
        user.id,
        user.identities[0].openid,
        "subscribe_msg_popup_event",
        [{"TemplateId": TMPL, "SubscribeStatusString": "accept"}],
        utcnow() + timedelta(seconds=9),
    )
    db.session.commit()  # we count two consents, but WeChat has none (the person revoked it in settings)
    notify(user)
    assert run(app)["consent_gone"] == 1
    assert remaining(user.id)[TMPL] == 0 and the().status == "pending"
    assert run(app)["ok"] == 1
    assert (the().status, the().channel) == ("sent", "oa_template")


def test_a_refused_message_goes_to_the_inbox_with_an_alert_and_is_never_retried(app, person):
    user = person()
    consent(app, user)
    notify(user, facts={**FACTS, "expires_at": "2026-11-30T06:00:00+00:00"})
    sim(app).inject_fault("/cgi-bin/message/subscribe/send", 200, "47003", "argument invalid!")
    outcomes = run(app)
    assert outcomes["refused"] == 1, outcomes
    assert the().status == "inbox" and "47003" in the().last_error
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["notice_refused"]
    assert run(app)["rows"] == 0
    assert remaining(user.id)[TMPL] == 1  # not sent: WeChat did not use the consent, and neither do we


def test_a_busy_wechat_is_retried_later_on_the_same_consent(app, person):
    user = person()
    consent(app, user)
    notify(user)
    calls = []

    def busy(job):
        calls.append(job)
        raise WeChatUnavailable("system error", code="-1")

    assert run(app, send=busy)["retry"] == 1
    notice = the()
    assert (notice.status, notice.channel, notice.attempts) == ("pending", "subscribe", 1)
    assert notice.next_attempt_at > utcnow() + timedelta(seconds=20)
    assert run(app)["rows"] == 0  # not due yet
    later = notice.next_attempt_at + timedelta(seconds=1)
    assert run(app, clock=lambda: later)["ok"] == 1
    assert the().status == "sent" and the().attempts == 2 and len(messages(app)) == 1


def test_retries_give_up_into_the_inbox(app, person):
    user = person()
    notify(user)
    consent(app, user)

    def busy(job):
        raise WeChatUnavailable("connection refused", code="CONNECT_ERROR", outcome_unknown=False)

    start = utcnow()
    for i in range(3):
        run(app, send=busy, clock=lambda i=i: start + timedelta(hours=2 * i), max_attempts=3)
    assert the().status == "inbox" and "gave up after 3" in the().last_error
    assert remaining(user.id)[TMPL] == 1  # never reached WeChat: the consent is still there


@pytest.mark.parametrize("follows", [False, True])
def test_an_answer_lost_after_wechat_took_the_message_is_never_sent_again(app, person, follows):
    """A read timeout (or a 5xx) after WeChat took the message: sending again would send it twice (and, on the
    subscribe channel, spend a second consent — or, with none left, go out again on the official account)."""
    user = person(follows=follows)
    consent(app, user, times=2)
    notify(user)
    senders = Senders(app.config, app.extensions["wechat"], NoticeSettings.from_config(app.config))

    def taken_then_timeout(job):
        senders.send(job)
        raise WeChatUnavailable("POST …/subscribe/send: ReadTimeout", code="NETWORK_ERROR")

    run(app, send=taken_then_timeout)
    notice = the()
    assert (notice.status, notice.channel) == ("inbox", "subscribe") and "outcome unknown" in notice.last_error
    later = utcnow() + timedelta(hours=3)
    run(app, clock=lambda: later)
    assert len(messages(app)) == 1 and the().status == "inbox"


def test_an_official_account_that_says_they_no_longer_follow_is_not_knocked_at_again(app, person):
    """WeChat answers 43004 (not following) when the person unfollowed and the unfollow push was lost: that is
    recorded, so the next notice goes to the inbox at once instead of another refused call (and alert) each."""
    from wechat.messages import WeChatMessageRefused

    user = person(follows=True)
    notify(user, key="n1")
    calls = []

    def not_following(job):
        calls.append(job.channel)
        raise WeChatMessageRefused("require subscribe", code="43004")

    run(app, send=not_following)
    assert (the("n1").status, calls) == ("inbox", ["oa_template"])
    follower = db.session.execute(select(OaFollower)).scalar_one()
    assert (follower.following, follower.unfollowed_at is not None) == (False, True)
    notify(user, key="n2")
    run(app, send=not_following)
    assert (the("n2").status, calls) == ("inbox", ["oa_template"])  # no second call
    # a follow pushed later sets it back
    from models.messages import record_follow

    record_follow(follower.appid, follower.openid, True, utcnow() + timedelta(seconds=5))
    db.session.commit()
    notify(user, key="n3")
    assert run(app)["ok"] == 1 and the("n3").channel == "oa_template"


def test_a_connection_never_made_is_retried_and_sent_once(app, person):
    user = person()
    consent(app, user)
    notify(user)

    def refused(job):
        raise WeChatUnavailable("connection refused", code="CONNECT_ERROR", outcome_unknown=False)

    assert run(app, send=refused)["retry"] == 1
    later = the().next_attempt_at + timedelta(seconds=1)
    assert run(app, clock=lambda: later)["ok"] == 1
    assert len(messages(app)) == 1 and the().status == "sent"


def test_a_crash_between_wechats_ok_and_the_record_never_sends_twice(app, person):
    user = person()
    consent(app, user, times=2)
    notify(user)
    senders = Senders(app.config, app.extensions["wechat"], NoticeSettings.from_config(app.config))

    class Crash(BaseException):
        pass

    def sent_then_crash(job):
        senders.send(job)
        raise Crash

    with pytest.raises(Crash):
        run(app, send=sent_then_crash)
    assert the().status == "sending" and len(messages(app)) == 1
    after_lease = utcnow() + timedelta(minutes=5)
    run(app, clock=lambda: after_lease)
    notice = the()
    assert notice.status == "inbox" and "not sent again" in notice.last_error
    assert len(messages(app)) == 1 and remaining(user.id)[TMPL] == 1


def test_wechats_sent_event_settles_a_notice_whose_answer_was_lost(app, person):
    user = person()
    consent(app, user)
    notify(user)

    class Crash(BaseException):
        pass

    def lost(job):
        raise Crash

    with pytest.raises(Crash):
        run(app, send=lost)
    openid = user.identities[0].openid
    apply_push_event(
        None,
        openid,
        "subscribe_msg_sent_event",
        [{"TemplateId": TMPL, "MsgID": "7788", "ErrorCode": "0", "ErrorStatus": "success"}],
        utcnow(),
    )
    db.session.commit()
    notice = the()
    assert (notice.status, notice.wechat_msgid, notice.delivery) == ("sent", "7788", "success")
    assert run(app, clock=lambda: utcnow() + timedelta(minutes=5))["rows"] == 0


def test_a_sent_event_that_could_be_either_of_two_lost_answers_marks_neither(app, person):
    """Two notices of one template to one person, both answers lost in a crash: WeChat's sent event names a MsgID
    we never recorded, so it cannot tell which one was sent. Neither is marked sent (the first by id was, before):
    both end in the inbox as "outcome unknown", never sent again."""
    user = person()
    consent(app, user, times=2)
    notify(user, key="n1")
    notify(user, key="n2")
    sent = []

    class Crash(BaseException):
        pass

    def lost(job):  # the pass claimed both; the process dies at its first call
        sent.append(job)
        raise Crash

    with pytest.raises(Crash):
        run(app, send=lost)
    assert len(sent) == 1
    db.session.expire_all()
    notices = db.session.execute(select(Notice).order_by(Notice.id)).scalars().all()
    assert [n.status for n in notices] == ["sending", "sending"]
    apply_push_event(
        None,
        user.identities[0].openid,
        "subscribe_msg_sent_event",
        [{"TemplateId": TMPL, "MsgID": "9911", "ErrorCode": "0", "ErrorStatus": "success"}],
        utcnow(),
    )
    db.session.commit()
    db.session.expire_all()
    assert [(n.status, n.wechat_msgid) for n in notices] == [("sending", None), ("sending", None)]
    run(app, clock=lambda: utcnow() + timedelta(minutes=5))
    db.session.expire_all()
    assert [n.status for n in notices] == ["inbox", "inbox"] and len(messages(app)) == 0


def test_the_sent_event_records_delivery_by_msgid(app, person):
    user = person()
    consent(app, user)
    notify(user)
    run(app)
    msgid = the().wechat_msgid
    apply_push_event(
        None,
        user.identities[0].openid,
        "subscribe_msg_sent_event",
        [{"TemplateId": TMPL, "MsgID": msgid, "ErrorCode": "10005", "ErrorStatus": "fail"}],
        utcnow(),
    )
    db.session.commit()
    assert the().delivery == "fail"


def test_no_transaction_is_open_during_the_call(app, person):
    user = person(follows=True)
    notify(user)
    seen = []
    senders = Senders(app.config, app.extensions["wechat"], NoticeSettings.from_config(app.config))

    def watch(job):
        seen.append(transaction_open())
        return senders.send(job)

    run(app, send=watch)
    assert seen == [False] and the().status == "sent"


def test_a_channel_without_a_turn_puts_the_notice_back_unsent(app, person):
    user = person()
    consent(app, user)
    notify(user)
    assert run(app, take=lambda channel: False)["released"] == 1
    notice = the()
    assert (notice.status, notice.attempts, notice.channel) == ("pending", 0, "subscribe")
    assert remaining(user.id)[TMPL] == 0  # the consent it took stays with it
    assert run(app)["ok"] == 1 and len(messages(app)) == 1


def test_the_rate_window_allows_no_more_than_its_rate(app):
    from jobs.notices import channel_limiter

    take = channel_limiter({"subscribe": 2}, None, 0.0, appid="rate-test")
    assert [take("subscribe") for _ in range(3)] == [True, True, False]


def test_at_most_the_daily_cap_through_wechat_except_money_critical(app, person):
    user = person(follows=True)
    for i in range(4):
        notify(user, f"landed-{i}", NoticeEvent.REBATE_LANDED, LANDED)
    notify(
        user,
        "confirm",
        NoticeEvent.TRANSFER_TO_CONFIRM,
        {"payout_id": 0, "amount_fen": 100, "closes_at": "2026-12-01T00:00:00+00:00"},
    )
    run(app, daily_cap=2)
    by_key = {n.key: (n.status, n.channel) for n in db.session.execute(select(Notice)).scalars()}
    sent = [k for k, v in by_key.items() if v[0] == "sent"]
    assert len([k for k in sent if k.startswith("landed")]) == 2
    assert by_key["confirm"] == ("sent", "oa_template")
    assert sorted(v for k, v in by_key.items() if k.startswith("landed") and v[0] != "sent") == [("inbox", "inbox")] * 2


def test_a_notice_no_longer_true_is_cancelled(app, person):
    from models import Payout, PayoutStatus

    user = person(follows=True)
    done = Payout(
        user_id=user.id, amount_fen=100, rail="wechat_change", status=PayoutStatus.SUCCEEDED, external_no="N1"
    )
    waiting = Payout(
        user_id=user.id,
        amount_fen=100,
        rail="wechat_change",
        status=PayoutStatus.WAITING_USER_CONFIRM,
        external_no="N2",
    )
    db.session.add_all([done, waiting])
    db.session.commit()
    closes = (utcnow() + timedelta(hours=20)).isoformat()
    closed = (utcnow() - timedelta(minutes=1)).isoformat()  # WeChat closed the bill: nothing left to confirm
    notify(user, "done", NoticeEvent.TRANSFER_REMINDER, {"payout_id": done.id, "amount_fen": 100, "closes_at": closes})
    notify(
        user,
        "waiting",
        NoticeEvent.TRANSFER_REMINDER,
        {"payout_id": waiting.id, "amount_fen": 100, "closes_at": closes},
    )
    late = {"payout_id": waiting.id, "amount_fen": 100, "closes_at": closed}
    notify(user, "past closing", NoticeEvent.TRANSFER_TO_CONFIRM, late)
    notify(
        user, "expiring", NoticeEvent.PACKET_EXPIRING, {"packet_id": 999999, "amount_fen": 100, "expires_at": closes}
    )
    run(app)
    assert the("done").status == "cancelled" and the("expiring").status == "cancelled"
    assert the("past closing").status == "cancelled"
    assert the("waiting").status == "sent" and len(messages(app)) == 1


@responses.activate
def test_live_mode_against_a_fake_wechat(app, person):
    """The message clients speak WeChat's wire format: token, body, errcode mapping (43101, 47003, -1)."""
    from wechat.messages import MessageClient, WeChatConsentRefused, WeChatMessageRefused
    from wechat.mp import MemoryTokenStore

    base = "https://api.weixin.qq.com"
    responses.post(f"{base}/cgi-bin/stable_token", json={"access_token": "TOKEN", "expires_in": 7200})
    sends = responses.post(f"{base}/cgi-bin/message/subscribe/send", json={"errcode": 0, "errmsg": "ok", "msgid": 42})
    client = MessageClient("wxlive", "secret", MemoryTokenStore())
    data = {"thing1": {"value": "红包"}}
    assert client.send_subscribe("oid", "T1", data, "pages/a/b") == "42"
    import json

    body = json.loads(sends.calls[0].request.body)
    assert body == {
        "touser": "oid",
        "template_id": "T1",
        "data": data,
        "page": "pages/a/b",
        "miniprogram_state": "formal",
        "lang": "zh_CN",
    }
    assert "access_token=TOKEN" in sends.calls[0].request.url
    for errcode, error in (
        (43101, WeChatConsentRefused),
        (47003, WeChatMessageRefused),
        (41030, WeChatMessageRefused),
        (-1, WeChatUnavailable),
    ):
        responses.replace(
            responses.POST, f"{base}/cgi-bin/message/subscribe/send", json={"errcode": errcode, "errmsg": "x"}
        )
        with pytest.raises(error):
            client.send_subscribe("oid", "T1", data)
    tmpl = responses.post(f"{base}/cgi-bin/message/template/send", json={"errcode": 0, "errmsg": "ok", "msgid": 7})
    assert client.send_template("oa-oid", "OA1", data, "wxmini", "pages/x") == "7"
    assert json.loads(tmpl.calls[0].request.body)["miniprogram"] == {"appid": "wxmini", "pagepath": "pages/x"}


def test_two_dispatchers_at_once_send_each_notice_once(app, person):
    from tests.concurrency import together

    users = [person(follows=True) for _ in range(6)]
    for i, user in enumerate(users):
        notify(user, f"n{i}")
    cfg = NoticeSettings(**{**NoticeSettings.from_config(app.config).__dict__, "batch": 2})

    def dispatcher(_: int):
        senders = Senders(app.config, app.extensions["wechat"], cfg)
        total = 0
        while (outcomes := dispatch_pass(app.extensions["notice_templates"], cfg, senders.send, lambda c: True))[
            "rows"
        ]:
            total += outcomes["ok"]
        return total

    results = together(2, dispatcher, app=app)
    assert sum(results) == 6, results
    assert len(messages(app)) == 6
    assert sorted(m["touser"] for m in messages(app)) == sorted(f"sim-oa-openid-{u.id}" for u in users)


def test_a_fact_that_cannot_be_rendered_goes_to_the_inbox_with_one_alert(app, person, client, user_headers):
    user = person(follows=True)
    notify(user, "bad-1", facts={**FACTS, "expires_at": "next tuesday"})
    notify(user, "bad-2", facts={**FACTS, "expires_at": "soon"})
    run(app)
    assert the("bad-1").status == "inbox" and "expires_at" in the("bad-1").last_error
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["notice_facts"]
    assert messages(app) == []
    inbox = client.get("/api/v1/me/notices", headers=user_headers(user))
    assert inbox.status_code == 200 and "请在  前使用" in inbox.json["items"][0]["body"]


def test_an_oa_identity_without_a_follow_is_not_reached_through_the_official_account(app, person):
    """Signed in through the OA once, but not following it (or unfollowed since): the inbox, not a template."""
    from notices.dispatch import follows_official_account

    follower, stranger = person(follows=True), person()
    oa_appid = app.config["WECHAT_OA_APPID"]
    db.session.add(UserIdentity(user_id=stranger.id, appid=oa_appid, openid=f"sim-oa-openid-{stranger.id}"))
    db.session.commit()
    assert follows_official_account(follower.id, oa_appid) == f"sim-oa-openid-{follower.id}"
    assert follows_official_account(stranger.id, oa_appid) is None
    db.session.query(OaFollower).filter_by(user_id=follower.id).update({"following": False})
    db.session.commit()
    assert follows_official_account(follower.id, oa_appid) is None


def test_two_dispatchers_at_once_keep_one_persons_daily_cap(app, person):
    """Each dispatcher counts what the person was sent today, its own claims in flight included; two claiming for
    one person at the same moment take turns on the person's row (before, both counted none and both sent)."""
    import time

    from notices.dispatch import claim_batch
    from tests.concurrency import together

    user = person(follows=True)
    for i in range(2):
        notify(user, f"landed-{i}", NoticeEvent.REBATE_LANDED, LANDED)
    cfg = NoticeSettings(**{**NoticeSettings.from_config(app.config).__dict__, "batch": 1, "daily_cap": 1})

    def claim_one(_: int) -> int:
        claimed = claim_batch(utcnow(), app.extensions["notice_templates"], cfg)[0]
        time.sleep(0.5)  # still in the claim's transaction: the other dispatcher claims meanwhile
        return len(claimed)

    assert sorted(together(2, claim_one, app)) == [0, 1]
    statuses = sorted(n.status for n in db.session.execute(select(Notice)).scalars())
    assert statuses == ["inbox", "sending"]


# -- the official account's TEMPLATESENDJOBFINISH: whether a template message reached the person ------------------


def _template_finished(app, client, user, msgid: str, status: str, create_time: int | None = None):
    """WeChat pushes the official account's TEMPLATESENDJOBFINISH (signed as it does) and the push worker runs."""
    import time

    from jobs.messages import apply_messages
    from web.push import push_settings
    from wechat.push import build_push

    fields = {
        "ToUserName": "gh_oa",
        "FromUserName": f"sim-oa-openid-{user.id}",
        "CreateTime": create_time or int(time.time()),
        "MsgType": "event",
        "Event": "TEMPLATESENDJOBFINISH",
        "MsgID": msgid,
        "Status": status,
    }
    built = build_push(push_settings("oa"), fields)
    answer = client.post("/wechat/oa/push", query_string=built.args, data=built.body)
    assert (answer.status_code, answer.text) == (200, "success")
    return apply_messages()


@pytest.mark.parametrize("status", ["success", "failed:user block", "failed: system failed"])
def test_the_template_sent_event_records_its_delivery_on_the_notice(app, client, person, status):
    # given: a notice sent as the official account's template message (no consent left: the OA's turn)
    user = person(follows=True)
    notify(user)
    run(app)
    notice = the()
    assert (notice.status, notice.channel, notice.delivery) == ("sent", "oa_template", None)
    # when: WeChat says what became of it
    assert _template_finished(app, client, user, notice.wechat_msgid, status) == {"done": 1}
    # then: kept on the notice, as a subscribe message's sent event is (it had been ignored: an operator saw "sent"
    # for a message the person had blocked)
    assert (the().status, the().delivery) == ("sent", status)


def test_a_template_sent_event_settles_a_notice_whose_answer_was_lost(app, client, person):
    # given: the OA's template message went out, and the process died before our record of WeChat's answer
    user = person(follows=True)
    notify(user)

    class Crash(BaseException):
        pass

    def lost(job):
        raise Crash

    with pytest.raises(Crash):
        run(app, send=lost)
    assert the().status == "sending"
    # when: WeChat's TEMPLATESENDJOBFINISH names its msgid
    assert _template_finished(app, client, user, "556677", "success") == {"done": 1}
    # then: that notice was the one sent; the next pass never sends it again
    notice = the()
    assert (notice.status, notice.wechat_msgid, notice.delivery) == ("sent", "556677", "success")
    assert run(app, clock=lambda: utcnow() + timedelta(minutes=5))["rows"] == 0
    assert messages(app) == []  # the test's send died before the simulator: nothing sent again either


def test_a_template_sent_event_of_no_notice_of_ours_changes_nothing(app, client, person):
    # given: a subscribe message sent to the same person under the same number (WeChat counts the two apart)
    user = person(follows=True)
    consent(app, user)
    notify(user)
    run(app)
    notice = the()
    assert notice.channel == "subscribe"
    # when: the OA reports a template message of that number (sent by another system on the same account), and one
    # for a person unknown here; and WeChat retries the first push
    assert _template_finished(app, client, user, notice.wechat_msgid, "failed:user block") == {"ignored": 1}
    stranger = type("Stranger", (), {"id": 999_999})()
    assert _template_finished(app, client, stranger, "1", "success") == {"ignored": 1}
    # then: the subscribe message's notice is untouched
    assert (the().status, the().delivery) == ("sent", None)


def test_a_template_sent_event_retried_by_wechat_is_applied_once(app, client, person):
    from models import InboundMessage

    user = person(follows=True)
    notify(user, key="n1")
    notify(user, key="n2")
    run(app)
    first, second = the("n1").wechat_msgid, the("n2").wechat_msgid
    # two reports in the same second (two messages), then WeChat's retry of the first
    assert _template_finished(app, client, user, first, "success", create_time=1_900_000_000) == {"done": 1}
    assert _template_finished(app, client, user, second, "failed:user block", create_time=1_900_000_000) == {"done": 1}
    assert _template_finished(app, client, user, first, "success", create_time=1_900_000_000) == {}
    assert db.session.query(InboundMessage).count() == 2
    assert (the("n1").delivery, the("n2").delivery) == ("success", "failed:user block")
