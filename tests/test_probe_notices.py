"""Probe findings in the notices pipeline: WeChat's word arriving after the dispatcher gave the outcome up."""

from __future__ import annotations

from datetime import timedelta

from notices.consents import apply_push_event, remaining
from tests.test_notice_dispatch import TMPL, consent, notify, person, run, the  # noqa: F401 - fixture
from tests.test_notice_hooks import held_packets  # noqa: F401 - fixture
from wechat.errors import WeChatUnavailable


def sent_event(user, msgid, at, code="0", status="success"):
    apply_push_event(
        None,
        user.identities[0].openid,
        "subscribe_msg_sent_event",
        [{"TemplateId": TMPL, "MsgID": msgid, "ErrorCode": code, "ErrorStatus": status}],
        at,
    )


def test_a_sent_event_processed_after_a_lost_answer_was_recorded_settles_the_notice(app, person):  # noqa: F811
    """A read timeout after WeChat took the message: the notice is kept in the inbox as "outcome unknown". WeChat's
    subscribe_msg_sent_event is handled by the message-push worker, usually after that record: it still says the
    message went out (README: "unless WeChat's sent event arrives"), so the notice is sent, with its delivery."""
    from models import db, utcnow

    user = person()
    consent(app, user)
    notify(user)

    def timeout(job):
        raise WeChatUnavailable("POST …/subscribe/send: ReadTimeout", code="NETWORK_ERROR")

    called = utcnow()
    run(app, send=timeout, clock=lambda: called)
    assert the().status == "inbox" and "outcome unknown" in the().last_error
    sent_event(user, "5566", called + timedelta(seconds=2))
    db.session.commit()
    notice = the()
    assert (notice.status, notice.wechat_msgid, notice.delivery) == ("sent", "5566", "success")
    assert remaining(user.id)[TMPL] == 0


def test_a_sent_event_after_a_lapsed_lease_settles_the_notice(app, person):  # noqa: F811
    """The worker died between WeChat's ok and its record; another pass put the notice in the inbox ("outcome
    unknown") before the push worker reached WeChat's sent event: the event still settles it."""
    from models import db, utcnow

    user = person()
    consent(app, user)
    notify(user)

    class Crash(BaseException):
        pass

    def lost(job):
        raise Crash

    called = utcnow()
    try:
        run(app, send=lost, clock=lambda: called)
    except Crash:
        pass
    run(app, clock=lambda: called + timedelta(minutes=2))
    assert the().status == "inbox" and "outcome unknown" in the().last_error
    sent_event(user, "7788", called + timedelta(seconds=1))
    db.session.commit()
    assert (the().status, the().wechat_msgid) == ("sent", "7788")


def test_an_old_unknown_notice_is_not_taken_for_a_new_sent_event(app, person):  # noqa: F811
    """An outcome-unknown notice is not what a sent event a week later (a MsgID never recorded) speaks of."""
    from models import db, utcnow

    user = person()
    consent(app, user)
    notify(user)

    def timeout(job):
        raise WeChatUnavailable("ReadTimeout", code="NETWORK_ERROR")

    run(app, send=timeout)
    sent_event(user, "9999", utcnow() + timedelta(days=7))
    db.session.commit()
    assert (the().status, the().wechat_msgid) == ("inbox", None)


def test_wechats_ok_after_the_lease_lapsed_records_the_notice_sent(app, person):  # noqa: F811
    """A call slower than its lease (a turn waited for, a token fetched, a slow answer): another pass put the notice
    in the inbox as "outcome unknown"; WeChat's ok, arriving then, says it was sent, with the msgid its sent event
    will name."""
    from models import db, unit_of_work, utcnow
    from notices.dispatch import Answer, NoticeSettings, claim, record

    user = person()
    consent(app, user)
    notify(user)
    settings = NoticeSettings.from_config(app.config)
    templates = app.extensions["notice_templates"]
    called = utcnow()
    with unit_of_work():
        [job] = claim(called, templates, settings)
    run(app, clock=lambda: called + timedelta(minutes=2))  # the lease lapsed: kept in the inbox
    assert the().status == "inbox"
    with unit_of_work():
        record(job, Answer.OK, "", called + timedelta(minutes=2, seconds=5), settings, "4321")
    notice = the()
    assert (notice.status, notice.wechat_msgid) == ("sent", "4321") and notice.last_error is None
    sent_event(user, "4321", called + timedelta(seconds=30))
    db.session.commit()
    assert the().delivery == "success"


def test_a_packet_expiring_notice_whose_packet_expired_meanwhile_is_cancelled(app, held_packets):  # noqa: F811
    """The expiring job does not tell a packet already past its expiry that the sweep (every 5 minutes) has not
    marked yet; the dispatcher, reaching a notice after its packet's expiry (WeChat busy, a backlog, a pause), must
    not tell "your packet expires soon" either: it is cancelled, like a reminder of a packet already used."""
    from sqlalchemy import select

    from jobs.expiring import tell_expiring_packets
    from models import Notice, RedPacket, db

    _, made = held_packets()
    tell_expiring_packets()
    expires = db.session.get(RedPacket, made["due_too"]).expires_at  # in an hour; "due" in twenty
    run(app, clock=lambda: expires + timedelta(minutes=1))
    db.session.expire_all()
    status = dict(db.session.execute(select(Notice.key, Notice.status)).tuples().all())
    assert status[f"packet:{made['due_too']}:expiring"] == "cancelled"
    assert status[f"packet:{made['due']}:expiring"] == "inbox"
