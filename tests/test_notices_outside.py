"""Notices tried from outside: as the person told, as WeChat answering the dispatcher, as a rebate's rail."""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import timedelta

import pytest
import responses
from sqlalchemy import func, select

from jobs.notices import Senders, dispatch_pass
from models import InboundMessage, Notice, Payout, PayoutStatus, Rail, db, utcnow
from notices import NoticeEvent, enqueue
from notices.consents import apply_push_event, remaining
from notices.dispatch import NoticeSettings
from notices.outbox import enqueue_many
from notices.templates import DEFAULT_TEMPLATES, TemplateError, load_templates, render_data
from notices.watch import DEFAULTS, drafts_for
from wechat.errors import WeChatUnavailable

CHINESE = re.compile(r"^[\u4e00-\u9fff]{1,5}$")
TRANSFER_TMPL = "sim-tmpl-transfer-to-confirm"
LANDED_TMPL = "sim-tmpl-rebate-landed"


def sim(app):
    return app.extensions["wechat"].simulator


def consent(app, user, tmpl: str, times: int = 1) -> None:
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


def run(app, send=None, clock=utcnow):
    cfg = NoticeSettings.from_config(app.config)
    senders = Senders(app.config, app.extensions["wechat"], cfg)
    return dispatch_pass(app.extensions["notice_templates"], cfg, send or senders.send, lambda channel: True, clock)


def the(key: str) -> Notice:
    db.session.expire_all()
    return db.session.execute(select(Notice).where(Notice.key == key)).scalar_one()


def sent(app) -> list[dict]:
    return sorted(sim(app).sent_messages.values(), key=lambda m: m["at"])


@pytest.fixture
def person(app, make_user):
    return lambda: make_user(appid=app.config["WECHAT_APPID"])


# -- a consent held for a retry is WeChat's still: a notice cancelled (or sent elsewhere) gives it back -----------


def test_a_consent_held_for_a_retry_comes_back_when_the_reminder_is_cancelled(app, person):
    user = person()
    consent(app, user, TRANSFER_TMPL)
    payout = Payout(
        user_id=user.id,
        amount_fen=100,
        rail=Rail.WECHAT_CHANGE,
        status=PayoutStatus.WAITING_USER_CONFIRM,
        external_no="OUT-HELD-1",
    )
    db.session.add(payout)
    db.session.commit()
    facts = {"payout_id": payout.id, "amount_fen": 100, "closes_at": (utcnow() + timedelta(hours=20)).isoformat()}
    enqueue(user.id, NoticeEvent.TRANSFER_REMINDER, "reminder", facts)
    db.session.commit()

    def busy(job):  # WeChat's own "system busy": certainly not sent, so the consent is kept for the retry
        raise WeChatUnavailable("system error", code="-1")

    assert run(app, send=busy)["retry"] == 1
    assert (the("reminder").status, the("reminder").channel) == ("pending", "subscribe")
    assert remaining(user.id)[TRANSFER_TMPL] == 0  # held by the notice

    payout = db.session.get(Payout, payout.id)
    payout.status = PayoutStatus.SUCCEEDED  # the person confirmed meanwhile: the reminder is noise now
    db.session.commit()
    later = the("reminder").next_attempt_at + timedelta(seconds=1)
    run(app, clock=lambda: later)
    assert the("reminder").status == "cancelled"
    assert sent(app) == []
    # WeChat never used the consent: it still counts one, and so must we (else the next notice loses it)
    assert remaining(user.id)[TRANSFER_TMPL] == 1
    assert sim(app).subscribe_consents[f"{user.identities[0].openid} {TRANSFER_TMPL}"] == 1

    other = Payout(
        user_id=user.id,
        amount_fen=200,
        rail=Rail.WECHAT_CHANGE,
        status=PayoutStatus.WAITING_USER_CONFIRM,
        external_no="OUT-HELD-2",
    )
    db.session.add(other)
    db.session.commit()
    facts = {"payout_id": other.id, "amount_fen": 200, "closes_at": (later + timedelta(hours=20)).isoformat()}
    enqueue(user.id, NoticeEvent.TRANSFER_TO_CONFIRM, "to-confirm", facts)
    db.session.commit()
    assert run(app, clock=lambda: later)["ok"] == 1
    assert (the("to-confirm").status, the("to-confirm").channel) == ("sent", "subscribe")
    assert remaining(user.id)[TRANSFER_TMPL] == 0


# -- a merchant-funded rebate split to the person (profit sharing) is told in words WeChat takes ------------------


def test_a_rebate_landed_by_profit_sharing_is_told_as_wechat_change_not_as_a_rail_code(
    app, person, client, user_headers
):
    user = person()
    consent(app, user, LANDED_TMPL)
    payout = Payout(
        id=987_654,
        user_id=user.id,
        rebate_id=1,
        amount_fen=321,
        rail=Rail.PROFIT_SHARING,
        status=PayoutStatus.SUCCEEDED,
    )
    [draft] = drafts_for([payout], DEFAULTS, utcnow())  # what the payout watcher writes when the split succeeds
    assert draft.event == NoticeEvent.REBATE_LANDED
    enqueue_many([draft])
    db.session.commit()

    assert run(app)["ok"] == 1
    [message] = sent(app)
    phrase = message["data"]["phrase2"]["value"]
    assert CHINESE.match(phrase), phrase  # a phrase is Chinese only: "profi…" is WeChat's 47003 on every send
    assert phrase == "微信零钱"
    inbox = client.get("/api/v1/me/notices", headers=user_headers(user)).get_json()
    [item] = inbox["items"]
    assert "profit_sharing" not in item["body"] and "微信零钱" in item["body"], item["body"]


def test_a_phrase_that_is_not_chinese_is_never_handed_to_wechat():
    templates = load_templates(DEFAULT_TEMPLATES, simulator=True)
    channel = templates[NoticeEvent.REBATE_LANDED].subscribe
    for form in ("merchant_credit", "gift-card", "现金红包哦哦哦"):
        with pytest.raises(TemplateError):
            render_data(channel, {"amount_fen": 100, "form": form})
    assert render_data(channel, {"amount_fen": 100, "form": "points"})["phrase2"] == {"value": "积分"}


# -- message push: a signed body WeChat would never send is a clean 400, never a 500, and writes nothing ----------


def _encrypted_post(client, source: str, plain: str):
    """``plain`` (XML or JSON text, as is) pushed in safe mode under the app's own token and EncodingAESKey."""
    from defusedxml.ElementTree import fromstring

    from web.push import push_settings
    from wechat.push import signature

    settings = push_settings(source)
    timestamp, nonce = str(int(time.time())), "4242"
    envelope = fromstring(settings.cryptos()[0].encrypt_message(plain, nonce, timestamp))
    args = {
        "signature": signature(settings.token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "encrypt_type": "aes",
        "msg_signature": envelope.findtext("MsgSignature"),
    }
    encrypt = envelope.findtext("Encrypt")
    body = f"<xml><ToUserName><![CDATA[gh]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    return client.post(f"/wechat/{source}/push", query_string=args, data=body.encode())


def _queued() -> int:
    db.session.expire_all()
    return db.session.execute(select(func.count()).select_from(InboundMessage)).scalar_one()


def _xml_text(now: int, extra: str) -> str:
    head = "<ToUserName>gh</ToUserName><FromUserName>oMP-eve</FromUserName>"
    body = f"<CreateTime>{now}</CreateTime><MsgType>text</MsgType><Content>hi</Content><MsgId>77</MsgId>"
    return f"<xml>{head}{body}{extra}</xml>"


def _json_text(now: int, extra: str) -> str:
    head = '"ToUserName":"gh","FromUserName":"oMP-eve","MsgType":"text","Content":"hi","MsgId":77'
    return f'{{{head},"CreateTime":{now},{extra}}}'


@pytest.mark.parametrize(
    "shape",
    [
        lambda now: _xml_text(now, "<Extra>" + "<a>" * 6000 + "x" + "</a>" * 6000 + "</Extra>"),
        lambda now: _json_text(now, '"Extra":' + '{"a":' * 900 + "1" + "}" * 900),
    ],
    ids=["xml", "json"],
)
def test_a_push_nested_thousands_deep_is_a_400_not_a_500_and_writes_nothing(client, shape):
    response = _encrypted_post(client, "mp", shape(int(time.time())))
    assert response.status_code == 400, response.data[:200]
    assert _queued() == 0
    good = _encrypted_post(client, "mp", _xml_text(int(time.time()), ""))
    assert (good.status_code, good.text, _queued()) == (200, "success", 1)


@pytest.mark.parametrize("number", ["1e400", "-1e999"])
def test_a_json_push_with_a_number_no_json_column_keeps_is_a_400_and_writes_nothing(client, number):
    # Python reads 1e400 as infinity (no NaN / Infinity literal needed); PostgreSQL refuses it inside the insert:
    # refused where the JSON is read, as NaN is
    response = _encrypted_post(client, "mp", _json_text(int(time.time()), f'"Extra":{number}'))
    assert response.status_code == 400, response.data[:200]
    assert response.text == "MALFORMED_JSON"
    assert _queued() == 0


# -- no access token (an IP not on WeChat's allow-list, a wrong secret, the token API's quota) is no refusal -------


@responses.activate
@pytest.mark.parametrize(
    "code, message", [("40164", "invalid ip, not in whitelist"), ("40125", "invalid appsecret"), ("45009", "quota")]
)
def test_no_access_token_is_retried_later_on_the_same_consent_not_given_up_as_refused(app, person, code, message):
    from wechat.messages import MessageClient
    from wechat.mp import MemoryTokenStore

    base = "https://api.weixin.qq.com"
    client = MessageClient("wxlive", "secret", MemoryTokenStore(), base)

    def send(job):  # the live client against WeChat's wire format
        return client.send_subscribe(job.touser, job.template_id, job.data, job.page)

    user = person()
    consent(app, user, "sim-tmpl-packet-received")
    facts = {"packet_id": 1, "amount_fen": 1230, "issuer": "面馆", "expires_at": "2026-11-30T06:00:00+00:00"}
    enqueue(user.id, NoticeEvent.PACKET_RECEIVED, "got", facts)
    db.session.commit()
    token = responses.post(f"{base}/cgi-bin/stable_token", json={"errcode": int(code), "errmsg": message})
    sends = responses.post(f"{base}/cgi-bin/message/subscribe/send", json={"errcode": 0, "errmsg": "ok", "msgid": 42})

    outcomes = run(app, send=send)
    # the message API never saw the message: certainly not sent, so it waits for its retry (bounded by the
    # dispatcher's attempts), keeping its consent; it is not a message WeChat refused
    assert token.call_count == 1 and sends.call_count == 0
    assert outcomes["retry"] == 1 and outcomes["refused"] == 0, outcomes
    notice = the("got")
    assert (notice.status, notice.channel) == ("pending", "subscribe"), notice.last_error
    assert remaining(user.id)["sim-tmpl-packet-received"] == 0  # held by the notice for its retry

    responses.replace(responses.POST, f"{base}/cgi-bin/stable_token", json={"access_token": "T", "expires_in": 7200})
    later = notice.next_attempt_at + timedelta(seconds=1)
    assert run(app, send=send, clock=lambda: later)["ok"] == 1
    assert the("got").status == "sent" and the("got").wechat_msgid == "42" and sends.call_count == 1


def test_a_character_string_is_never_handed_to_wechat_with_anything_but_ascii():
    raw = dict(DEFAULT_TEMPLATES)
    received = dict(raw[NoticeEvent.PACKET_RECEIVED])
    received["subscribe"] = {
        "template_id": "T-received",
        "data": {"character_string1": "{packet_id}", "character_string2": "NO-{issuer}"},
    }
    raw[NoticeEvent.PACKET_RECEIVED] = received
    channel = load_templates(raw, simulator=True)[NoticeEvent.PACKET_RECEIVED].subscribe
    facts = {"packet_id": 7 * 10**39, "amount_fen": 1, "issuer": "Noodle House", "expires_at": "2026-11-30T06:00:00"}
    data = render_data(channel, facts)
    # cut to WeChat's 32 characters without an ellipsis ("…" is no ASCII character: WeChat's 47003)
    assert data["character_string1"]["value"] == ("7" + "0" * 39)[:32]
    assert data["character_string2"]["value"] == "NO-Noodle_House"
    with pytest.raises(TemplateError):  # a Chinese name is no character_string: not sent, never refused by WeChat
        render_data(channel, {**facts, "issuer": "面馆"})


def test_one_wechat_template_filled_with_two_sets_of_keys_is_refused_at_start_up():
    raw = dict(DEFAULT_TEMPLATES)
    failed = dict(raw[NoticeEvent.PAYOUT_FAILED])
    # the rebate-landed template (amount1, phrase2, thing3) reused for failed payouts with other keys: WeChat would
    # answer 47003 to every such message, each time giving the notice up to the inbox
    failed["subscribe"] = {**failed["subscribe"], "template_id": "sim-tmpl-rebate-landed"}
    raw[NoticeEvent.PAYOUT_FAILED] = failed
    with pytest.raises(TemplateError, match="sim-tmpl-rebate-landed"):
        load_templates(raw, simulator=True)
    assert load_templates(DEFAULT_TEMPLATES, simulator=True)  # the transfer notices share one template, same keys


# -- a pass that breaks (the rate window's Redis is down) puts back what it never called -------------------------


def test_a_pass_broken_before_its_calls_puts_the_notices_back_and_they_are_sent_later(app, person):
    user = person()
    consent(app, user, "sim-tmpl-packet-received", times=2)
    for key in ("first", "second"):
        facts = {"packet_id": 1, "amount_fen": 100, "issuer": "面馆", "expires_at": "2026-11-30T06:00:00+00:00"}
        enqueue(user.id, NoticeEvent.PACKET_RECEIVED, key, facts)
    db.session.commit()

    def redis_down(channel):
        raise ConnectionError("rate window unreachable")

    cfg = NoticeSettings.from_config(app.config)
    senders = Senders(app.config, app.extensions["wechat"], cfg)
    with pytest.raises(ConnectionError):
        dispatch_pass(app.extensions["notice_templates"], cfg, senders.send, redis_down)
    assert sent(app) == []
    assert [the(k).status for k in ("first", "second")] == ["pending", "pending"]

    # once the window answers again (even after the claim's lease would have lapsed), both go out on their consents
    later = utcnow() + timedelta(minutes=5)
    assert run(app, clock=lambda: later)["ok"] == 2
    assert [the(k).status for k in ("first", "second")] == ["sent", "sent"] and len(sent(app)) == 2
    assert remaining(user.id)["sim-tmpl-packet-received"] == 0


def test_one_consent_two_notices_two_dispatchers_at_once_one_message(app, person):
    """One tap (one consent), two notices for its template, two dispatchers claiming at once: one subscribe message;
    the other notice is left to the inbox (no official account), never a second send WeChat answers 43101."""
    from tests.concurrency import together

    user = person()
    consent(app, user, "sim-tmpl-packet-received")
    for key in ("a", "b"):
        facts = {"packet_id": 1, "amount_fen": 100, "issuer": "面馆", "expires_at": "2026-11-30T06:00:00+00:00"}
        enqueue(user.id, NoticeEvent.PACKET_RECEIVED, key, facts)
    db.session.commit()
    cfg = NoticeSettings(**{**NoticeSettings.from_config(app.config).__dict__, "batch": 1})

    def dispatcher(_: int) -> Counter:
        senders = Senders(app.config, app.extensions["wechat"], cfg)
        return dispatch_pass(app.extensions["notice_templates"], cfg, senders.send, lambda c: True)

    total = sum(together(2, dispatcher, app=app), Counter())
    assert total["ok"] == 1 and total["consent_gone"] == 0, total
    assert sorted(the(k).status for k in ("a", "b")) == ["inbox", "sent"]
    assert len(sent(app)) == 1 and remaining(user.id)["sim-tmpl-packet-received"] == 0


# -- a follow WeChat will not describe (no user-info API for this account) still counts ------------------------------


@responses.activate
@pytest.mark.parametrize("errcode", [48001, 40003])
def test_a_follow_whose_user_info_wechat_refuses_is_recorded_not_failed_forever(app, client, make_user, errcode):
    from jobs.messages import apply_messages
    from models import Alert, OaFollower
    from models.messages import follows_oa
    from wechat.push import build_push

    api = "https://api.weixin.test"
    app.config["WECHAT_API_BASE"] = api
    responses.post(f"{api}/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    info = responses.get(f"{api}/cgi-bin/user/info", json={"errcode": errcode, "errmsg": "api unauthorized"})
    oa_appid = app.config["WECHAT_OA_APPID"]
    alice = make_user(appid=oa_appid)  # she signed in through the official account: we know her OA openid
    openid = alice.identities[0].openid

    from web.push import push_settings

    fields = {"ToUserName": "gh_oa", "FromUserName": openid, "CreateTime": int(time.time()), "MsgType": "event"}
    built = build_push(push_settings("oa"), {**fields, "Event": "subscribe"})
    assert client.post("/wechat/oa/push", query_string=built.args, data=built.body).text == "success"
    assert apply_messages() == {"done": 1}
    assert info.call_count == 1
    follower = db.session.execute(select(OaFollower)).scalar_one()
    assert (follower.user_id, follower.following, follower.unionid) == (alice.id, True, None)
    assert follows_oa(alice.id)
    assert db.session.execute(select(Alert)).first() is None


# -- a merchant's name is any text an operator typed: the person reads one line of it, WeChat's fields too -------


def test_a_name_with_line_breaks_control_or_direction_marks_is_told_as_one_visible_line(
    app, person, client, user_headers
):
    user = person()
    consent(app, user, "sim-tmpl-packet-received")
    issuer = "面馆\n\u202e老店\x07\t 2"  # as web.schemas.Name lets an operator name a merchant
    facts = {"packet_id": 1, "amount_fen": 100, "issuer": issuer, "expires_at": "2026-11-30T06:00:00+00:00"}
    enqueue(user.id, NoticeEvent.PACKET_RECEIVED, "named", facts)
    db.session.commit()
    assert run(app)["ok"] == 1
    [message] = sent(app)
    assert message["data"]["thing1"]["value"] == "面馆 老店 2 送你的红包"
    [item] = client.get("/api/v1/me/notices", headers=user_headers(user)).get_json()["items"]
    assert item["body"].startswith("面馆 老店 2 送你一个"), item["body"]
