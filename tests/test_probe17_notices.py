"""Probe 17: notices and subscribe-message consents, as a WeChat user and as WeChat's subscribe-message API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs.notices import Senders, dispatch_pass
from models import Notice, OaFollower, UserIdentity, db, utcnow
from notices import NoticeEvent, enqueue
from notices.consents import apply_push_event, remaining
from notices.dispatch import NoticeSettings
from tests.money_helpers import app_money
from tests.test_notice_hooks import held_packets  # noqa: F401 - fixture
from wechat.errors import WeChatUnavailable

TMPL = "sim-tmpl-packet-received"
FACTS = {"packet_id": 1, "amount_fen": 1230, "issuer": "Noodle House", "expires_at": "2026-11-30T06:00:00+00:00"}
LANDED = {"amount_fen": 500, "form": "balance"}


@pytest.fixture
def person(app, make_user):
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


def notify(user, key, event=NoticeEvent.PACKET_RECEIVED, facts=FACTS, **kw):
    enqueue(user.id, event, key, facts, **kw)
    db.session.commit()


def run(app, send=None, clock=utcnow, **settings):
    cfg = NoticeSettings.from_config(app.config)
    cfg = NoticeSettings(**{**cfg.__dict__, **settings})
    senders = Senders(app.config, app.extensions["wechat"], cfg)
    return dispatch_pass(app.extensions["notice_templates"], cfg, send or senders.send, lambda c: True, clock)


def the(key) -> Notice:
    db.session.expire_all()
    return db.session.execute(select(Notice).where(Notice.key == key)).scalar_one()


def messages(app):
    return sorted(sim(app).sent_messages.values(), key=lambda m: m["at"])


# -- the daily cap: a subscribe message waiting to be retried keeps its place under the cap ----------------------


def test_a_retry_waiting_on_its_consent_counts_toward_the_daily_cap(app, person):
    """Cap 1: a subscribe message WeChat answered "system busy" (-1) waits for its retry, holding its consent. A
    second notice claimed meanwhile must not take the day's one message too: else both go out (two in a day)."""
    user = person(follows=True)
    consent(app, user)
    notify(user, "first")
    busy = []

    def system_busy(job):
        busy.append(job)
        raise WeChatUnavailable("system error", code="-1")

    assert run(app, send=system_busy, daily_cap=1)["retry"] == 1
    assert (the("first").status, the("first").channel) == ("pending", "subscribe")
    notify(user, "second", NoticeEvent.REBATE_LANDED, LANDED)
    run(app, daily_cap=1)  # the retry is not due yet; the second notice is
    later = the("first").next_attempt_at + timedelta(seconds=1)
    run(app, clock=lambda: later, daily_cap=1)
    assert the("first").status == "sent"
    assert len(messages(app)) == 1, [(m["kind"], m["template_id"]) for m in messages(app)]
    assert (the("second").status, the("second").channel) == ("inbox", "inbox")


# -- a banned person cannot use their packets: "your packet expires soon, use it" is not true for them ------------

EXPIRING_TMPL = "sim-tmpl-packet-expiring"


@pytest.fixture
def actor(make_operator):
    from models.operators import Actor

    return Actor(make_operator("admin")[0], "127.0.0.1")


def ban(actor, user):
    from rebate.ban_ops import create_ban

    create_ban(actor, "user", str(user.id), "fraud ring", utcnow())
    db.session.commit()


def test_an_expiring_reminder_for_a_person_banned_meanwhile_is_not_sent(app, held_packets, actor):
    """The reminder was written, then the person was banned (they can no longer sign in, nor spend the packet):
    WeChat must not carry "红包即将过期" to them on their consent; the consent stays theirs."""
    from jobs.expiring import tell_expiring_packets

    owner, made = held_packets()
    if owner.identity_for(app.config["WECHAT_APPID"]) is None:  # reachable on the mini-program
        db.session.add(UserIdentity(user_id=owner.id, appid=app.config["WECHAT_APPID"], openid=f"mp-{owner.id}"))
        db.session.commit()
    consent(app, owner, EXPIRING_TMPL, times=2)
    tell_expiring_packets()
    ban(actor, owner)
    run(app)
    assert messages(app) == []
    assert remaining(owner.id)[EXPIRING_TMPL] == 2
    for name in ("due", "due_too"):
        assert the(f"packet:{made[name]}:expiring").status == "cancelled"


def test_the_expiring_job_tells_a_banned_person_nothing_and_tells_them_once_the_ban_is_lifted(app, held_packets, actor):
    from jobs.expiring import tell_expiring_packets
    from models import Ban
    from rebate.ban_ops import lift_ban

    owner, made = held_packets()
    ban(actor, owner)
    assert tell_expiring_packets()["told"] == 0
    assert db.session.execute(select(Notice).where(Notice.user_id == owner.id)).scalars().all() == []
    lift_ban(actor, db.session.execute(select(Ban.id)).scalar_one(), "cleared", utcnow(), money=app_money())
    db.session.commit()
    assert tell_expiring_packets()["told"] == 2


# -- 43101 from the official account: the person refuses the OA's messages; there is no consent to drop ----------


def test_an_official_account_refusing_with_43101_is_not_asked_again_and_again(app, person):
    """WeChat answers an OA template message 43101 ("user refuse to accept the msg") when the person turned the
    official account's messages off. There is no subscribe consent to drop: falling through "at once" finds the
    same OA, so the notice must not go round the OA forever (every pass, attempts without end)."""
    from sqlalchemy import func

    from models import Alert

    user = person(follows=True)
    notify(user, "oa", NoticeEvent.REBATE_LANDED, LANDED)
    sim(app).inject_fault("/cgi-bin/message/template/send", 200, "43101", "user refuse to accept the msg", times=20)
    senders = Senders(app.config, app.extensions["wechat"], NoticeSettings.from_config(app.config))
    calls = []

    def counted(job):
        calls.append(job.channel)
        return senders.send(job)

    for _ in range(5):
        run(app, send=counted)
    notice = the("oa")
    assert calls == ["oa_template"], calls
    assert (notice.status, notice.channel) == ("inbox", "oa_template") and "43101" in notice.last_error
    assert messages(app) == []
    # the person's own choice is not a fault of ours: no alert for it
    assert db.session.execute(select(func.count()).select_from(Alert)).scalar_one() == 0


# -- "you received a packet" for a packet an operator revoked before the notice's turn ----------------------------


def test_a_received_notice_whose_packet_was_revoked_before_its_turn_is_not_sent(app, person, make_campaign):
    """An operator revokes a packet (fraud, a mistake) while its "received" notice waits (WeChat busy, a backlog): the
    person must not be told on their consent "你收到一个红包, use it before …" for a packet no longer theirs."""
    from rebate import issue_packet, tell
    from rebate.packets import revoke_packet
    from tests.test_notice_hooks import QUIET

    user = person()
    consent(app, user, times=1)
    campaign = make_campaign(QUIET, packet_amount_fen=5_00, packet_valid_days=30)
    packet = issue_packet(campaign, user, source="test", source_ref="revoked-later", now=utcnow())
    tell.packets_received([packet])
    db.session.commit()
    revoke_packet(packet.id)
    db.session.commit()
    run(app)
    assert messages(app) == []
    assert remaining(user.id)[TMPL] == 1
    assert the(f"packet:{packet.id}:received").status == "cancelled"
