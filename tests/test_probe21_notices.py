"""Probe 21, notices a WeChat user would call spam: a subscribe message at 03:00 Beijing time, a reminder of something
over by the time it could decently be read, two dispatchers sending the morning's deferred notice twice, the pick of
due notices scanning the whole table.

WeChat's message endpoints are mocked with ``responses``; each call is recorded with the dispatcher's clock, so the
tests say exactly which messages went out and when."""

from __future__ import annotations

import json
import time as time_module
from datetime import UTC, datetime, timedelta

import pytest
import responses
from sqlalchemy import select

from config import ConfigError, load_config
from jobs.notices import dispatch_pass
from models import Notice, db, utcnow
from models.base import BEIJING
from notices import NoticeEvent, enqueue
from notices.consents import apply_push_event, remaining
from notices.dispatch import NoticeSettings, _due, held_until
from rebate import issue_packet
from tests.conftest import on_postgres
from tests.test_notice_hooks import QUIET
from wechat.messages import MessageClient
from wechat.mp import MemoryTokenStore

BASE = "https://api.weixin.qq.com"
LANDED = {"amount_fen": 500, "form": "balance"}
LANDED_TMPL = "sim-tmpl-rebate-landed"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def beijing_at(hour: int, minute: int = 0, *, after: datetime | None = None) -> datetime:
    """The first instant at ``hour:minute`` Beijing time after ``after`` (now), in UTC."""
    after = after or utcnow()
    local = after.astimezone(BEIJING)
    at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at <= local + timedelta(minutes=1):
        at += timedelta(days=1)
    return at.astimezone(UTC)


@pytest.fixture
def wechat():
    """WeChat's subscribe and template endpoints, mocked: ``sent`` lists (clock time, template_id, touser)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(f"{BASE}/cgi-bin/stable_token", json={"access_token": "TOKEN", "expires_in": 7200})
        calls: list[tuple[datetime, str, str]] = []
        clock = Clock(utcnow())

        def answer(request):
            body = json.loads(request.body)
            calls.append((clock.now, body["template_id"], body["touser"]))
            return 200, {}, json.dumps({"errcode": 0, "errmsg": "ok", "msgid": len(calls)})

        for path in ("/cgi-bin/message/subscribe/send", "/cgi-bin/message/template/send"):
            mock.add_callback(responses.POST, f"{BASE}{path}", callback=answer)
        client = MessageClient("wxlive", "secret", MemoryTokenStore())

        def send(job) -> str:
            return client.send_subscribe(job.touser, job.template_id, job.data, job.page)

        yield type("WeChat", (), {"sent": calls, "clock": clock, "send": staticmethod(send)})


def settings(app, quiet: str | None = "22:00-08:00", **fields) -> NoticeSettings:
    cfg = NoticeSettings.from_config({**app.config, "NOTICE_QUIET_HOURS": quiet})
    return NoticeSettings(**{**cfg.__dict__, **fields})


def run(app, wechat, at: datetime, cfg: NoticeSettings):
    wechat.clock.now = at
    return dispatch_pass(app.extensions["notice_templates"], cfg, wechat.send, lambda channel: True, wechat.clock)


def consent(user, tmpl: str, times: int = 1) -> None:
    openid = user.identities[0].openid
    for i in range(times):
        accept = [{"TemplateId": tmpl, "SubscribeStatusString": "accept"}]
        apply_push_event(user.id, openid, "subscribe_msg_popup_event", accept, utcnow() + timedelta(seconds=i))
    db.session.commit()


def the(key: str) -> Notice:
    db.session.expire_all()
    return db.session.execute(select(Notice).where(Notice.key == key)).scalar_one()


@pytest.fixture
def person(app, make_user):
    def make():
        return make_user(appid=app.config["WECHAT_APPID"])

    return make


# -- 1. quiet hours -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("server_tz", ["UTC", "America/Los_Angeles"])
def test_a_rebate_landed_at_three_in_the_morning_beijing_is_sent_at_eight_once(
    app, person, wechat, monkeypatch, server_tz
):
    """A rebate lands at 03:00 Beijing time: the person's phone lit up with "返利已到账" in the middle of the night.
    It waits for the end of NOTICE_QUIET_HOURS (08:00 Beijing, whatever the server's own time zone), is in the inbox
    meanwhile, and goes out once then — not again on the next pass."""
    monkeypatch.setenv("TZ", server_tz)
    time_module.tzset()
    try:
        user = person()
        consent(user, LANDED_TMPL)
        enqueue(user.id, NoticeEvent.REBATE_LANDED, "landed-at-night", LANDED)
        db.session.commit()
        night = beijing_at(3)
        morning = held_until(beijing_at(8, after=night), NoticeEvent.REBATE_LANDED)  # 08:00, its rank's seconds on
        cfg = settings(app)
        run(app, wechat, night, cfg)
        assert wechat.sent == []  # nobody woken
        notice = the("landed-at-night")
        assert (notice.status, notice.next_attempt_at) == ("pending", morning)
        assert remaining(user.id)[LANDED_TMPL] == 1  # its consent is not spent on a message not sent
        run(app, wechat, morning - timedelta(minutes=1), cfg)
        assert wechat.sent == []
        run(app, wechat, morning, cfg)
        run(app, wechat, morning + timedelta(minutes=5), cfg)
        assert wechat.sent == [(morning, LANDED_TMPL, user.identities[0].openid)]
        assert the("landed-at-night").status == "sent"
    finally:
        monkeypatch.undo()
        time_module.tzset()


def test_in_the_evening_and_after_the_quiet_hours_a_notice_goes_out_at_once(app, person, wechat):
    user = person()
    consent(user, LANDED_TMPL, times=2)
    cfg = settings(app)
    for key, at in (("evening", beijing_at(21, 59)), ("morning", beijing_at(8))):
        enqueue(user.id, NoticeEvent.REBATE_LANDED, key, LANDED)
        db.session.commit()
        run(app, wechat, at, cfg)
        assert wechat.sent[-1][0] == at and the(key).status == "sent"
    assert len(wechat.sent) == 2


def test_a_transfer_waiting_for_confirmation_is_not_held_back_at_night(app, person, wechat):
    """The person just paid and a change transfer waits for their tap (WeChat closes it unconfirmed): it is the
    message they are looking at right now, so quiet hours do not hold it."""
    from models import Payout, PayoutStatus

    user = person()
    consent(user, "sim-tmpl-transfer-to-confirm")
    night = beijing_at(23, 30)
    payout = Payout(
        user_id=user.id,
        amount_fen=400,
        rail="wechat_change",
        status=PayoutStatus.WAITING_USER_CONFIRM,
        external_no="T1",
    )
    db.session.add(payout)
    db.session.commit()
    facts = {"payout_id": payout.id, "amount_fen": 400, "closes_at": (night + timedelta(hours=24)).isoformat()}
    enqueue(user.id, NoticeEvent.TRANSFER_TO_CONFIRM, "confirm", facts)
    db.session.commit()
    run(app, wechat, night, settings(app))
    assert wechat.sent == [(night, "sim-tmpl-transfer-to-confirm", user.identities[0].openid)]


def test_a_packet_expiring_before_morning_is_not_sent_at_night_nor_in_the_morning(app, person, wechat, make_campaign):
    """ "Your packet expires at 03:30", due at 02:00: waking the person for a packet of a shop that is closed is
    spam, and at 08:00 it is over. It stays in the inbox (no WeChat message, its consent kept); a packet that lasts
    past the morning is told then."""
    user = person()
    consent(user, "sim-tmpl-packet-expiring", times=2)
    campaign = make_campaign(QUIET, packet_amount_fen=5_00, packet_valid_days=30)
    night = beijing_at(2)
    morning = held_until(beijing_at(8, after=night), NoticeEvent.PACKET_EXPIRING)
    short = issue_packet(campaign, user, source="test", source_ref="short", now=utcnow())
    long = issue_packet(campaign, user, source="test", source_ref="long", now=utcnow())
    short.expires_at, long.expires_at = night + timedelta(minutes=90), morning + timedelta(hours=10)
    db.session.commit()
    for packet in (short, long):
        facts = {"packet_id": packet.id, "amount_fen": 5_00, "expires_at": packet.expires_at.isoformat()}
        enqueue(user.id, NoticeEvent.PACKET_EXPIRING, f"expiring-{packet.id}", facts)
    db.session.commit()
    cfg = settings(app)
    run(app, wechat, night, cfg)
    run(app, wechat, morning, cfg)
    assert wechat.sent == [(morning, "sim-tmpl-packet-expiring", user.identities[0].openid)]
    assert the(f"expiring-{long.id}").status == "sent"
    stale = the(f"expiring-{short.id}")
    assert stale.status == "inbox" and "quiet hours" in stale.last_error
    assert remaining(user.id)["sim-tmpl-packet-expiring"] == 1


def test_a_retry_waiting_on_its_consent_is_held_back_too_and_sent_once_in_the_morning(app, person, wechat):
    """WeChat was busy at 21:58 (-1): the retry falls due at night. It keeps the consent it took and goes out at
    08:00, once."""
    user = person()
    consent(user, LANDED_TMPL)
    enqueue(user.id, NoticeEvent.REBATE_LANDED, "busy", LANDED)
    db.session.commit()
    evening = beijing_at(21, 58)
    morning = held_until(beijing_at(8, after=evening), NoticeEvent.REBATE_LANDED)
    cfg = settings(app, backoff=timedelta(minutes=10))
    wechat.clock.now = evening

    def busy_once(job):
        if not getattr(busy_once, "done", False):
            busy_once.done = True
            from wechat.errors import WeChatUnavailable

            raise WeChatUnavailable("system busy", code="-1", retryable=True, outcome_unknown=False)
        return wechat.send(job)

    dispatch_pass(app.extensions["notice_templates"], cfg, busy_once, lambda c: True, wechat.clock)
    assert the("busy").status == "pending" and remaining(user.id)[LANDED_TMPL] == 0
    run(app, wechat, evening + timedelta(minutes=15), cfg)  # its retry, at 22:13
    assert wechat.sent == [] and the("busy").next_attempt_at == morning
    run(app, wechat, morning, cfg)
    assert wechat.sent == [(morning, LANDED_TMPL, user.identities[0].openid)]
    assert remaining(user.id)[LANDED_TMPL] == 0


def test_two_dispatchers_in_the_morning_send_each_deferred_notice_once(app, person, wechat):
    from tests.concurrency import together

    users = [person() for _ in range(6)]
    for i, user in enumerate(users):
        consent(user, LANDED_TMPL)
        enqueue(user.id, NoticeEvent.REBATE_LANDED, f"night-{i}", LANDED)
    db.session.commit()
    night = beijing_at(3)
    morning = held_until(beijing_at(8, after=night), NoticeEvent.REBATE_LANDED)
    cfg = settings(app, batch=2)
    run(app, wechat, night, cfg)
    assert wechat.sent == []
    wechat.clock.now = morning

    def dispatcher(_: int) -> int:
        sent = 0
        while (
            outcomes := dispatch_pass(
                app.extensions["notice_templates"], cfg, wechat.send, lambda c: True, wechat.clock
            )
        )["rows"]:
            sent += outcomes["ok"]
        return sent

    assert sum(together(2, dispatcher, app=app)) == 6
    assert sorted(to for _, _, to in wechat.sent) == sorted(u.identities[0].openid for u in users)


def test_quiet_hours_are_a_setting_checked_at_start_up():
    """NOTICE_QUIET_HOURS: Beijing "HH:MM-HH:MM" (across midnight allowed), "off" for none; anything else refused."""
    sim = {"WECHAT_MODE": "simulator"}
    assert load_config({"NOTICE_QUIET_HOURS": "23:30-07:00"}, environ=sim)["NOTICE_QUIET_HOURS"] == "23:30-07:00"
    parsed = load_config(environ={**sim, "NOTICE_QUIET_HOURS": " 22:00 - 08:00 "})["NOTICE_QUIET_HOURS"]
    assert parsed == "22:00-08:00"
    assert load_config(environ={**sim, "NOTICE_QUIET_HOURS": "OFF"})["NOTICE_QUIET_HOURS"] == "off"
    for bad in ("25:00-08:00", "22:00", "22-8", "08:00-08:00"):
        with pytest.raises(ConfigError, match="NOTICE_QUIET_HOURS"):
            load_config(environ={**sim, "NOTICE_QUIET_HOURS": bad})
        with pytest.raises(ConfigError, match="NOTICE_QUIET_HOURS"):
            load_config({"NOTICE_QUIET_HOURS": bad}, environ=sim)
    live = NoticeSettings.from_config({"WECHAT_MODE": "live", "NOTICE_QUIET_HOURS": None})
    assert live.quiet is not None and live.quiet.covers(beijing_at(3)) and not live.quiet.covers(beijing_at(12))
    assert NoticeSettings.from_config({"WECHAT_MODE": "live", "NOTICE_QUIET_HOURS": "off"}).quiet is None


def test_quiet_hours_off_send_at_night(app, person, wechat):
    user = person()
    consent(user, LANDED_TMPL)
    enqueue(user.id, NoticeEvent.REBATE_LANDED, "off", LANDED)
    db.session.commit()
    night = beijing_at(3)
    run(app, wechat, night, settings(app, quiet="off"))
    assert wechat.sent == [(night, LANDED_TMPL, user.identities[0].openid)]


# -- 2. the pick of due notices -------------------------------------------------------------------------------------


def test_the_pick_of_due_notices_reads_the_due_index_not_the_whole_table(app, person):
    """Sent notices pile up (180 days of them); the dispatcher's pick every few seconds must not read them all."""
    user = person()
    now = utcnow()
    db.session.add_all(
        Notice(user_id=user.id, event="rebate_landed", key=f"old-{i}", facts=LANDED, status="sent", sent_at=now)
        for i in range(300)
    )
    db.session.commit()
    statement = _due(now, 50)
    with db.engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        params = compiled.params
        if on_postgres():
            conn.exec_driver_sql("ANALYZE notices")
            conn.exec_driver_sql("SET enable_seqscan = off")
            plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + str(compiled), params))
        else:
            text = str(compiled)
            ordered = tuple(params[name] for name in compiled.positiontup)
            plan = " | ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + text, ordered))
    assert "ix_notices_due" in plan, plan
    assert "Seq Scan" not in plan and "SCAN notices" not in plan, plan


# -- 3. spam: the morning's burst -----------------------------------------------------------------------------------


def burst(user) -> None:
    """Three packets' news and one clawback for ``user``, each with a consent to go out on."""
    consent(user, "sim-tmpl-packet-received", times=3)
    consent(user, "sim-tmpl-rebate-clawed-back")
    received = {"packet_id": 999_999, "amount_fen": 300, "issuer": "面馆", "expires_at": "2099-01-01T00:00:00+00:00"}
    for i in range(3):
        enqueue(user.id, NoticeEvent.PACKET_RECEIVED, f"received-{i}", received)
    clawed = {"rebate_id": 1, "amount_fen": 400, "form": "balance", "reason": "订单退款"}
    enqueue(user.id, NoticeEvent.REBATE_CLAWED_BACK, "clawed", clawed)
    db.session.commit()


def test_the_mornings_burst_keeps_the_daily_cap_for_what_matters_most(app, person, wechat):
    """Five notices wait out the night; at 08:00 they are all due at once and the daily cap (2) lets two through. The
    two packets someone sent (the oldest) took both places and "返利已收回" — money taken from the person — went to
    the inbox only. The cap's places go to money that moved first, news of a packet last."""
    burst(person())
    night = beijing_at(3)
    morning = beijing_at(8, 1, after=night)
    cfg = settings(app, daily_cap=2)
    run(app, wechat, night, cfg)
    run(app, wechat, morning, cfg)
    assert [(at, tmpl) for at, tmpl, _ in wechat.sent] == [
        (morning, "sim-tmpl-rebate-clawed-back"),
        (morning, "sim-tmpl-packet-received"),
    ]
    assert the("clawed").status == "sent"
    assert sorted(the(f"received-{i}").status for i in range(3)) == ["inbox", "inbox", "sent"]


def test_the_mornings_burst_keeps_the_cap_for_what_matters_most_across_batches(app, person, wechat):
    """Found by a reviewer: the cap's order held within one pick only; the pick's batch of 2 split one person's
    morning notices, and three packets' news took the places before the clawback's batch came."""
    burst(person())
    night = beijing_at(3)
    cfg = settings(app, daily_cap=2, batch=2)
    for _ in range(3):
        run(app, wechat, night, cfg)
    for minute in range(3):
        run(app, wechat, beijing_at(8, minute, after=night), cfg)
    assert the("clawed").status == "sent"
