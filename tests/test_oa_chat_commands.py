"""Challenge commands said to the official account one to one (jobs/chat_commands.py): applied by the message
worker after the push was answered, the answer sent as a customer-service text with no transaction open."""

from __future__ import annotations

import time

from sqlalchemy import select

from challenges import bindings
from jobs.chat_commands import send_chat_replies
from jobs.messages import apply_messages
from models import Challenge, ChatReply, db
from tests.challenge_helpers import cash, fund, staked
from tests.test_message_push import push
from tests.test_wecom_bot import RecordingOps, ops  # noqa: F401 - the real game, its calls recorded
from wechat.sim.messages import OA_OPENID_PREFIX

OPENID = OA_OPENID_PREFIX + "alice"


def text_push(content: str, msg_id: str) -> dict:
    return {
        "ToUserName": "gh_oa",
        "FromUserName": OPENID,
        "CreateTime": int(time.time()),
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }


def sent_texts(app) -> list[str]:
    sim = app.extensions["wechat"].simulator
    return [m["text"] for m in sorted(sim.sent_messages.values(), key=lambda m: m["at"]) if m["kind"] == "custom_text"]


def test_an_unbound_person_gets_a_code_binds_and_plays(app, client, user_headers, make_user, ops):  # noqa: F811
    alice = make_user()
    fund(alice.id, 10_00)
    db.session.commit()
    assert push(client, "oa", text_push("加入 3", "1001")).data == b"success"
    assert push(client, "oa", text_push("绑定", "1002")).data == b"success"
    apply_messages()
    assert send_chat_replies()["sent"] == 2
    first, second = sent_texts(app)
    assert "还没有绑定" in first and "绑定码" in second
    code = second.split("：", 1)[1].split("\n", 1)[0]
    kept = db.session.execute(select(ChatReply.text).order_by(ChatReply.id)).scalars().all()
    assert not any(code in text for text in kept)  # sent to the person, not kept in the outbox
    assert client.post("/api/v1/me/chat-bindings", json={"code": code}, headers=user_headers(alice)).status_code == 201
    push(client, "oa", text_push("发起阅读挑战 5天 每人2元", "1003"))
    push(client, "oa", text_push("发起阅读挑战 5天 每人2元", "1003"))  # WeChat's retry: one challenge
    apply_messages()
    send_chat_replies()
    assert ops.calls == [("create", alice.id, "reading", 5, 200, None)]
    challenge = db.session.execute(select(Challenge)).scalar_one()
    assert (challenge.group_id, challenge.stake) == (None, 2_00)
    assert (cash(alice.id), staked(alice.id)) == (8_00, 2_00)
    assert f"#{challenge.id} 阅读挑战 5天 每人2元" in sent_texts(app)[-1]
    assert send_chat_replies() == {}  # nothing sent twice
    statuses = db.session.execute(select(ChatReply.status)).scalars().all()
    assert statuses == ["sent"] * 3
    assert bindings.bound_user(bindings.Speaker("oa", app.config["WECHAT_OA_APPID"], OPENID)) == alice.id


def test_text_that_is_no_command_is_left_alone(app, client, ops):  # noqa: F811
    from models import InboundMessage, MessageStatus

    push(client, "oa", text_push("你们几点开门？", "2001"))
    apply_messages()
    assert db.session.execute(select(InboundMessage.status)).scalar_one() == MessageStatus.IGNORED
    assert db.session.execute(select(ChatReply)).first() is None and ops.calls == []


def test_an_answer_a_crashed_sender_left_sending_is_marked_failed_not_sent_again(app, client, ops):  # noqa: F811
    """Sent at most once, and no longer hidden: after ten minutes an operator sees it failed, outcome unknown."""
    from datetime import timedelta

    from jobs.chat_commands import OUTCOME_UNKNOWN
    from models import utcnow

    push(client, "oa", text_push("绑定", "3001"))
    push(client, "oa", text_push("帮助", "3002"))
    apply_messages()
    first, second = db.session.execute(select(ChatReply).order_by(ChatReply.id)).scalars().all()
    first.status, second.status = "sending", "sending"  # a sender claimed both, then died before WeChat answered
    first.created_at = utcnow() - timedelta(minutes=11)
    db.session.commit()
    first_id, second_id = first.id, second.id
    assert send_chat_replies() == {"unknown": 1}
    assert sent_texts(app) == []  # neither sent (again)
    db.session.expire_all()
    old, recent = db.session.get(ChatReply, first_id), db.session.get(ChatReply, second_id)
    assert (old.status, old.last_error) == ("failed", OUTCOME_UNKNOWN)
    assert old.text == bindings_code_not_kept() and recent.status == "sending"  # the binding code is not kept


def bindings_code_not_kept() -> str:
    from challenges import bot

    return bot.CODE_NOT_KEPT
