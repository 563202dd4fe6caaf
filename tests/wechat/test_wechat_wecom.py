"""WeCom robot crypto and the group webhook (wechat/wecom.py), with real keys and an independent implementation.

The ``ref_*`` functions below follow WeCom's published sample (WXBizMsgCrypt) step by step with
``cryptography``: a message made by either side opens on the other.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

import pytest
import responses
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wechat import wecom
from wechat.push import new_aes_key
from wechat.wecom import BotSettings, CallbackRejected, WebhookBusy, WebhookSender


def ref_encrypt(aes_key: str, text: str, receive_id: str = "") -> str:
    key = base64.b64decode(aes_key + "=")
    body = os.urandom(16) + struct.pack(">I", len(text.encode())) + text.encode() + receive_id.encode()
    pad = 32 - len(body) % 32
    body += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(body) + enc.finalize()).decode()


def ref_decrypt(aes_key: str, ciphertext: str) -> tuple[str, str]:
    key = base64.b64decode(aes_key + "=")
    dec = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = dec.update(base64.b64decode(ciphertext)) + dec.finalize()
    plain = plain[: -plain[-1]]
    (length,) = struct.unpack(">I", plain[16:20])
    return plain[20 : 20 + length].decode(), plain[20 + length :].decode()


def ref_sign(*values: str) -> str:
    return hashlib.sha1("".join(sorted(values)).encode()).hexdigest()  # noqa: S324 - WeCom's signature


@pytest.fixture
def settings():
    return BotSettings("botToken123", new_aes_key(), bot_id="bot-1")


def test_our_ciphertext_opens_with_the_independent_one_and_back(settings):
    text = json.dumps({"msgtype": "text", "text": {"content": "排行榜 12"}}, ensure_ascii=False)
    assert ref_decrypt(settings.aes_key, wecom.encrypt(settings.aes_key, text)) == (text, "")
    assert wecom.decrypt(settings.aes_key, ref_encrypt(settings.aes_key, text)) == text
    assert wecom.sign("a", "c", "b", "d") == ref_sign("a", "b", "c", "d")


def test_a_callback_built_by_the_independent_one_is_read(settings):
    message = wecom.text_message("bot-1", "alice", "@bot 加入 3", chatid="group-9", msgid="m1")
    ciphertext = ref_encrypt(settings.aes_key, json.dumps(message))
    args = {
        "msg_signature": ref_sign(settings.token, "1700000000", "42", ciphertext),
        "timestamp": "1700000000",
        "nonce": "42",
    }
    read = wecom.read_callback(settings, args, json.dumps({"encrypt": ciphertext}).encode())
    assert (read.msgid, read.userid, read.chatid, read.in_group, read.content) == (
        "m1",
        "alice",
        "group-9",
        True,
        "@bot 加入 3",
    )


def test_our_reply_is_signed_and_opens_with_the_independent_one(settings):
    answer = wecom.encrypted_reply(settings, wecom.stream_reply("你好"), nonce="n1", timestamp=1700000000)
    assert answer["msgsignature"] == ref_sign(settings.token, "1700000000", "n1", answer["encrypt"])
    plain, receive_id = ref_decrypt(settings.aes_key, answer["encrypt"])
    assert json.loads(plain)["stream"] == {"id": json.loads(plain)["stream"]["id"], "finish": True, "content": "你好"}
    assert receive_id == ""


def test_url_check_answers_the_plaintext(settings):
    assert wecom.verify_url(settings, wecom.build_handshake(settings, "echo-123")) == "echo-123"


def test_forged_signature_wrong_key_and_wrong_bot_are_refused(settings):
    built = wecom.build_callback(settings, wecom.text_message("bot-1", "alice", "帮助"))
    forged = {**built.args, "msg_signature": "0" * 40}
    with pytest.raises(CallbackRejected) as exc:
        wecom.read_callback(settings, forged, built.body)
    assert exc.value.http_status == 403
    other = BotSettings(settings.token, new_aes_key())
    with pytest.raises(CallbackRejected, match="UNDECRYPTABLE"):
        wecom.read_callback(other, built.args, built.body)
    elsewhere = wecom.build_callback(settings, wecom.text_message("bot-2", "alice", "帮助"))
    with pytest.raises(CallbackRejected, match="WRONG_BOT"):
        wecom.read_callback(settings, elsewhere.args, elsewhere.body)


def test_the_previous_key_still_opens_during_a_change(settings):
    built = wecom.build_callback(settings, wecom.text_message("bot-1", "alice", "帮助"))
    rotated = BotSettings(settings.token, new_aes_key(), previous_aes_key=settings.aes_key, bot_id="bot-1")
    assert wecom.read_callback(rotated, built.args, built.body).content == "帮助"


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"encrypt": 5}', b'{"encrypt": ""}', b"\xff\xfe", b'{"x": "y"}']
)
def test_malformed_bodies_are_400(settings, body):
    built = wecom.build_callback(settings, wecom.text_message("bot-1", "alice", "帮助"))
    with pytest.raises(CallbackRejected) as exc:
        wecom.read_callback(settings, built.args, body)
    assert exc.value.http_status in (400, 403)


def test_a_decrypted_message_of_the_wrong_shape_is_400(settings):
    for plain in (
        "[]",
        "{}",
        json.dumps({"msgid": "1", "aibotid": "bot-1", "chattype": "room", "from": {"userid": "a"}}),
    ):
        ciphertext = wecom.encrypt(settings.aes_key, plain)
        args = {"msg_signature": wecom.sign(settings.token, "1", "2", ciphertext), "timestamp": "1", "nonce": "2"}
        with pytest.raises(CallbackRejected) as exc:
            wecom.read_callback(settings, args, json.dumps({"encrypt": ciphertext}).encode())
        assert exc.value.http_status == 400


def test_tampered_padding_is_refused(settings):
    key = base64.b64decode(settings.aes_key + "=")
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    garbage = base64.b64encode(enc.update(b"\x00" * 64) + enc.finalize()).decode()
    with pytest.raises(ValueError):
        wecom.decrypt(settings.aes_key, garbage)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@responses.activate
def test_the_webhook_never_exceeds_20_a_minute_and_130101_is_retry_later():
    from jobs.payouts import MovingWindow

    clock = FakeClock()
    window = MovingWindow(None, window_s=60.0, clock=clock, wall=clock)
    sender = WebhookSender(lambda key: not window.try_take(f"wecom-webhook:{key}", 20).wait)
    responses.add(responses.POST, wecom.WEBHOOK_URL, json={"errcode": 0, "errmsg": "ok"})
    sent, refused = 0, 0
    for second in range(0, 180, 2):  # 90 attempts over three minutes
        clock.now = 1000.0 + second
        try:
            sender.send_text("key-1", "排行榜")
            sent += 1
        except WebhookBusy:
            refused += 1
    times = [1000.0 + s for s in range(0, 180, 2)]
    assert sent == 60 and refused == 30
    assert len(responses.calls) == 60
    del times
    responses.replace(responses.POST, wecom.WEBHOOK_URL, json={"errcode": 130101, "errmsg": "freq out of limit"})
    clock.now += 120
    with pytest.raises(WebhookBusy) as exc:
        sender.send_markdown("key-1", "**排行**")
    assert exc.value.retryable and exc.value.code == "130101"
    body = json.loads(responses.calls[-1].request.body)
    assert body == {"msgtype": "markdown", "markdown": {"content": "**排行**"}}


@responses.activate
def test_webhook_text_is_cut_to_2048_bytes():
    responses.add(responses.POST, wecom.WEBHOOK_URL, json={"errcode": 0})
    WebhookSender(lambda key: True).send_text("k", "步" * 2000)
    content = json.loads(responses.calls[0].request.body)["text"]["content"]
    assert len(content.encode()) <= 2048
