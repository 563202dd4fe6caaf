"""Probe 18b: WeChat's message push (official account, mini-program), the WeCom robot's callback, chat-tool cards."""

from __future__ import annotations

import dataclasses
import time

import pytest
from sqlalchemy import func, select

from models import InboundMessage, db
from web.push import push_settings
from wechat.push import build_push


def _push(client, source, fields, *, json_format=False, args=None, body=None):
    settings = dataclasses.replace(push_settings(source), json_format=json_format)
    built = build_push(settings, fields)
    return client.post(f"/wechat/{source}/push", query_string=args or built.args, data=body or built.body)


def _stored() -> int:
    db.session.expire_all()
    return db.session.execute(select(func.count()).select_from(InboundMessage)).scalar_one()


# -- a subscribe event whose List item holds a structure for TemplateId or its status: refused at the door -----------


@pytest.mark.parametrize("json_format", [True, False])
@pytest.mark.parametrize("name", ["TemplateId", "SubscribeStatusString"])
@pytest.mark.parametrize("event", ["subscribe_msg_popup_event", "subscribe_msg_change_event"])
def test_a_subscribe_event_whose_item_holds_a_structure_is_refused_and_stores_nothing(
    app, client, name, event, json_format
):
    """A List item's TemplateId or SubscribeStatusString given twice (XML) or as an object (JSON) is no answer to a
    popup WeChat sends: the README refuses an unreadable List at the door with a 400. It was answered "success" and
    stored, for the messages job to read a consent for a template named "['a', 'b']" (or an unknown status)."""
    odd = {"a": "1"} if json_format else ["a", "b"]
    item = {"TemplateId": "sim-tmpl-rebate-landed", "SubscribeStatusString": "accept", name: odd}
    fields = {
        "ToUserName": "gh_mp",
        "FromUserName": "oMP-someone",
        "CreateTime": int(time.time()),
        "MsgType": "event",
        "Event": event,
        "List": [item, {"TemplateId": "sim-tmpl-other", "SubscribeStatusString": "accept"}],
    }
    answer = _push(client, "mp", fields, json_format=json_format)
    assert answer.status_code == 400, answer.text
    assert _stored() == 0


@pytest.mark.parametrize("json_format", [True, False])
@pytest.mark.parametrize("name", ["TemplateId", "MsgID", "ErrorCode"])
def test_a_sent_event_whose_item_holds_a_structure_is_refused_and_stores_nothing(app, client, name, json_format):
    """The same for a subscribe message's sent event: its MsgID, ErrorCode and TemplateId are read as text by the
    job (the delivery recorded against our message); a structure there is no report WeChat sends."""
    odd = {"a": "1"} if json_format else ["1", "2"]
    item = {"TemplateId": "sim-tmpl-rebate-landed", "MsgID": "7788", "ErrorCode": "0", "ErrorStatus": "success"}
    fields = {
        "ToUserName": "gh_mp",
        "FromUserName": "oMP-someone",
        "CreateTime": int(time.time()),
        "MsgType": "event",
        "Event": "subscribe_msg_sent_event",
        "List": {**item, name: odd},
    }
    answer = _push(client, "mp", fields, json_format=json_format)
    assert answer.status_code == 400, answer.text
    assert _stored() == 0


# -- a card event whose code is a structure or longer than a payout keeps: refused at the door, not a job failing ----


@pytest.mark.parametrize(
    ("name", "odd"),
    [
        ("UserCardCode", ["110201201245", "110201201246"]),  # <UserCardCode> twice
        ("UserCardCode", "1" * 65),  # longer than payouts.wechat_ref (64) keeps
        ("OuterStr", ["a", "b"]),
        ("CardId", ["pCARD0001", "pCARD0002"]),
        ("IsGiveByFriend", ["0", "1"]),
    ],
)
def test_a_card_event_whose_field_cannot_be_read_is_refused_and_changes_nothing(app, client, make_user, name, odd):
    """A signed user_get_card for a card payout we offered whose UserCardCode (or OuterStr, CardId, IsGiveByFriend)
    is given twice, or whose code is longer than a payout's wechat_ref keeps, was answered "success" and stored: the
    job then delivered the payout with the code "['110201201245', '110201201246']" (or, on PostgreSQL, failed on the
    too-long code eight times and ended as an alert, the payout never delivered). Such a push is refused 400 at
    the door, as an unreadable subscribe List is, and nothing is written."""
    from jobs.messages import apply_messages
    from models import Payout
    from tests.test_card_codes import fund_card_payout, offered
    from tests.test_message_push import card_event

    payout = offered(fund_card_payout(make_user()))
    fields = {**card_event("user_get_card", payout.external_no, at=int(time.time())), name: odd}
    answer = _push(client, "oa", fields)
    assert answer.status_code == 400, answer.text
    assert _stored() == 0
    assert apply_messages() == {}
    db.session.expire_all()
    assert (db.session.get(Payout, payout.id).status, db.session.get(Payout, payout.id).wechat_ref) == (
        "waiting_user_confirm",
        None,
    )


# -- the WeCom robot: a stream refresh is answered with the stream it names, or nothing ---------------------------


def _refresh(settings, userid, stream_id, *, chatid="g-refresh"):
    """WeCom's stream refresh (流式消息刷新): a callback of msgtype ``stream`` naming the stream it asks about."""
    import secrets

    return {
        "msgid": secrets.token_hex(16),
        "aibotid": settings.bot_id,
        "chatid": chatid,
        "chattype": "group",
        "from": {"userid": userid},
        "msgtype": "stream",
        "stream": {"id": stream_id},
    }


def _bot_post(client, settings, message):
    from wechat import wecom

    built = wecom.build_callback(settings, message)
    return client.post("/wechat/wecom/bot", query_string=built.args, data=built.body, content_type="application/json")


def _bot_rows() -> int:
    from models import BotCallback

    db.session.expire_all()
    return db.session.execute(select(func.count()).select_from(BotCallback)).scalar_one()


def test_a_stream_refresh_for_a_stream_we_never_made_is_answered_with_nothing_and_writes_nothing(app, client):
    """WeCom refreshes a stream it was told is unfinished by a callback of msgtype "stream" naming its id. One naming a
    stream we never made was taken for a message that is not text: recorded, and answered "我只看得懂文字命令" in a
    new stream (an id WeCom did not ask about), once per refresh."""
    from web.wecom_bot import bot_settings
    from wechat import wecom

    settings = bot_settings()
    answer = _bot_post(client, settings, _refresh(settings, "alice", "never-made-1"))
    assert (answer.status_code, answer.data) == (200, b"")
    assert _bot_rows() == 0
    # an event was answered by a text (or nothing), never a stream: a refresh naming it gets nothing either
    for event in ("enter_chat", "feedback_event"):
        _bot_post(client, settings, wecom.event_message(settings.bot_id, "alice", event, msgid=f"ev-{event}"))
        answer = _bot_post(client, settings, _refresh(settings, "alice", f"ev-{event}"))
        assert (answer.status_code, answer.data) == (200, b"")
    assert _bot_rows() == 2


def test_a_stream_refresh_for_our_stream_gets_its_finished_reply_under_its_id(app, client):
    """A refresh naming a stream we answered (its id is the message's msgid) gets that stream again, finished, with
    the reply recorded for it; the same id from another speaker gets nothing (a reply is its speaker's)."""
    from web.wecom_bot import bot_settings
    from wechat import wecom

    settings = bot_settings()
    said = wecom.text_message(settings.bot_id, "alice", "帮助", chatid="g-refresh", msgid="m-help-1")
    first = wecom.open_reply(settings, _bot_post(client, settings, said).get_json())
    assert first["stream"]["id"] == "m-help-1" and first["stream"]["finish"] is True

    again = _bot_post(client, settings, _refresh(settings, "alice", "m-help-1"))
    assert again.status_code == 200
    assert wecom.open_reply(settings, again.get_json()) == first
    other = _bot_post(client, settings, _refresh(settings, "mallory", "m-help-1"))
    assert (other.status_code, other.data) == (200, b"")
    assert _bot_rows() == 1


# -- the WeCom robot: a signature that is not hex is a 403, not a 500 ----------------------------------------------


@pytest.mark.parametrize("forged", ["\u00e9" * 40, "\uff10" * 40, "g" * 40])
def test_a_robot_signature_of_forty_non_hex_characters_is_refused_403_not_a_500(app, client, forged):
    """Anyone may call the robot's URL: a msg_signature of 40 characters that are not ASCII reached
    ``secrets.compare_digest``, which raises TypeError on such a string: the URL check and the callback answered
    500 (an alert, and WeCom retries a 5xx) instead of refusing the forgery. Nothing is written either way."""
    from web.wecom_bot import bot_settings
    from wechat import wecom

    settings = bot_settings()
    handshake = {**wecom.build_handshake(settings, "echo-1"), "msg_signature": forged}
    check = client.get("/wechat/wecom/bot", query_string=handshake)
    assert check.status_code == 403 and "echo-1" not in check.text
    built = wecom.build_callback(settings, wecom.text_message(settings.bot_id, "alice", "帮助"))
    answer = client.post("/wechat/wecom/bot", query_string={**built.args, "msg_signature": forged}, data=built.body)
    assert answer.status_code == 403
    assert _bot_rows() == 0
