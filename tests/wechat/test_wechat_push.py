"""``wechat.push``: WeChat message push verified, decrypted and parsed through wechatpy, defusedxml first.

The safe-mode encryption is cross-checked against an implementation of WeChat's spec written here with
``cryptography`` alone (AES-256-CBC, IV = the key's first 16 bytes, 16 random bytes + 4-byte network-order
length + message + appid, PKCS#7 to 32-byte blocks), in both directions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from wechat.push import (
    PushRejected,
    PushSettings,
    build_handshake,
    build_push,
    check_aes_key,
    message_xml,
    new_aes_key,
    read_push,
    subscribe_items,
    verify_url,
)

TOKEN, APPID = "pushToken123", "wxoa0000000001"
EVENT = {
    "ToUserName": "gh_0123456789ab",
    "FromUserName": "oOA-alice",
    "CreateTime": 1_700_000_000,
    "MsgType": "event",
    "Event": "user_get_card",
    "CardId": "pCARD0001",
    "IsGiveByFriend": 0,
    "UserCardCode": "110201201245",
    "OuterStr": "CA000000000042",
}
TEXT = {
    "ToUserName": "gh_0123456789ab",
    "FromUserName": "oOA-alice",
    "CreateTime": 1_700_000_001,
    "MsgType": "text",
    "Content": "步数挑战 <加入> & go",
    "MsgId": 23_400_000_000_000_001,
}


# -- an independent implementation of WeChat's message encryption ------------------------


def spec_encrypt(key43: str, appid: str, message: str) -> str:
    key = base64.b64decode(key43 + "=")
    body = os.urandom(16) + struct.pack(">I", len(message.encode())) + message.encode() + appid.encode()
    pad = 32 - len(body) % 32
    body += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(body) + encryptor.finalize()).decode()


def spec_decrypt(key43: str, encrypt: str) -> tuple[str, str]:
    key = base64.b64decode(key43 + "=")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(base64.b64decode(encrypt)) + decryptor.finalize()
    pad = plain[-1]
    assert 1 <= pad <= 32 and plain[-pad:] == bytes([pad]) * pad
    plain = plain[16:-pad]
    (length,) = struct.unpack(">I", plain[:4])
    return plain[4 : 4 + length].decode(), plain[4 + length :].decode()


def spec_signature(*values: str) -> str:
    return hashlib.sha1("".join(sorted(values)).encode()).hexdigest()  # noqa: S324 - WeChat protocol


def spec_push(key43: str, appid: str, message: str, timestamp: str = "1700000000", nonce: str = "777") -> tuple:
    encrypt = spec_encrypt(key43, appid, message)
    args = {
        "signature": spec_signature(TOKEN, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "encrypt_type": "aes",
        "msg_signature": spec_signature(TOKEN, timestamp, nonce, encrypt),
    }
    body = f"<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    return args, body.encode()


def test_wechatpy_reads_a_push_encrypted_by_the_spec_implementation():
    key = new_aes_key()
    args, body = spec_push(key, APPID, message_xml(EVENT))
    message = read_push(PushSettings(TOKEN, APPID, key), args, body)
    assert (message.msg_type, message.event, message.from_user) == ("event", "user_get_card", "oOA-alice")
    assert message.fields["OuterStr"] == "CA000000000042" and message.create_time == 1_700_000_000


def test_the_spec_implementation_reads_a_push_built_through_wechatpy():
    key = new_aes_key()
    built = build_push(PushSettings(TOKEN, APPID, key), TEXT)
    encrypt = built.body.decode().split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    assert built.args["msg_signature"] == spec_signature(TOKEN, built.args["timestamp"], built.args["nonce"], encrypt)
    plain, appid = spec_decrypt(key, encrypt)
    assert (
        appid == APPID and "步数挑战 &lt;加入&gt; &amp; go" not in plain and "<![CDATA[步数挑战 <加入> & go]]>" in plain
    )


# -- handshake and signatures ---------------------------------------------------------------


def test_the_url_check_answers_echostr_only_with_the_tokens_signature():
    args = build_handshake(TOKEN, "echo-123")
    assert verify_url(TOKEN, args) == "echo-123"
    with pytest.raises(PushRejected) as bad:
        verify_url("another", args)
    assert bad.value.http_status == 403
    with pytest.raises(PushRejected):
        verify_url(TOKEN, {**args, "echostr": ""})


def test_plaintext_push_with_a_good_signature_parses_and_a_bad_one_is_403():
    settings = PushSettings(TOKEN, APPID)
    built = build_push(settings, TEXT)
    message = read_push(settings, built.args, built.body)
    assert message.msg_type == "text" and message.msg_id == "23400000000000001"
    assert message.fields["Content"] == "步数挑战 <加入> & go"
    for forged in ({**built.args, "signature": "0" * 40}, {**built.args, "timestamp": "1"}, {}):
        with pytest.raises(PushRejected) as refused:
            read_push(settings, forged, built.body)
        assert refused.value.http_status == 403


def test_safe_mode_checks_msg_signature_over_the_ciphertext():
    settings = PushSettings(TOKEN, APPID, new_aes_key())
    built = build_push(settings, EVENT)
    assert read_push(settings, built.args, built.body).event == "user_get_card"
    with pytest.raises(PushRejected) as refused:
        read_push(settings, {**built.args, "msg_signature": "f" * 40}, built.body)
    assert (refused.value.reason, refused.value.http_status) == ("BAD_SIGNATURE", 403)
    tampered = built.body.replace(b"<Encrypt><![CDATA[", b"<Encrypt><![CDATA[A")
    with pytest.raises(PushRejected) as refused:
        read_push(settings, built.args, tampered)
    assert refused.value.http_status == 403


def test_safe_mode_refuses_plaintext_and_plaintext_mode_refuses_ciphertext():
    key = new_aes_key()
    plain = build_push(PushSettings(TOKEN, APPID), TEXT)
    with pytest.raises(PushRejected) as refused:
        read_push(PushSettings(TOKEN, APPID, key), plain.args, plain.body)
    assert refused.value.reason == "PLAINTEXT_REFUSED"
    encrypted = build_push(PushSettings(TOKEN, APPID, key), TEXT)
    with pytest.raises(PushRejected) as refused:
        read_push(PushSettings(TOKEN, APPID), encrypted.args, encrypted.body)
    assert refused.value.reason == "NO_AES_KEY"


def test_a_message_for_another_appid_is_refused():
    key = new_aes_key()
    args, body = spec_push(key, "wx-someone-else", message_xml(EVENT))
    with pytest.raises(PushRejected) as refused:
        read_push(PushSettings(TOKEN, APPID, key), args, body)
    assert refused.value.reason == "WRONG_APPID"


def test_key_rotation_reads_the_current_and_the_previous_key_and_nothing_else():
    old, new = new_aes_key(), new_aes_key()
    rotating = PushSettings(TOKEN, APPID, new, previous_aes_key=old)
    for key in (old, new):
        args, body = spec_push(key, APPID, message_xml(EVENT))
        assert read_push(rotating, args, body).event == "user_get_card"
    args, body = spec_push(new_aes_key(), APPID, message_xml(EVENT))
    with pytest.raises(PushRejected) as refused:
        read_push(rotating, args, body)
    assert refused.value.reason in ("UNDECRYPTABLE", "WRONG_APPID")
    args, body = spec_push(old, APPID, message_xml(EVENT))
    with pytest.raises(PushRejected):
        read_push(PushSettings(TOKEN, APPID, new), args, body)  # rotation over: the old key is gone


# -- hostile and malformed bodies ---------------------------------------------------------------------------------

BOMB = """<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]><xml><ToUserName>&c;</ToUserName><FromUserName>x</FromUserName>
<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&c;</Content><MsgId>1</MsgId></xml>"""
EXTERNAL = """<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<xml><ToUserName>a</ToUserName><FromUserName>&x;</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>"""
DTD_ONLY = """<!DOCTYPE xml SYSTEM "http://evil.test/x.dtd"><xml><ToUserName>a</ToUserName></xml>"""


@pytest.mark.parametrize("hostile", [BOMB, EXTERNAL, DTD_ONLY])
def test_entities_and_dtds_are_refused_plain_and_inside_the_ciphertext(hostile):
    plain = PushSettings(TOKEN, APPID)
    args = build_handshake(TOKEN, "x")
    with pytest.raises(PushRejected) as refused:
        read_push(plain, args, hostile.encode())
    assert (refused.value.reason, refused.value.http_status) == ("HOSTILE_XML", 400)
    key = new_aes_key()
    args, body = spec_push(key, APPID, hostile)
    with pytest.raises(PushRejected) as refused:
        read_push(PushSettings(TOKEN, APPID, key), args, body)
    assert refused.value.reason == "HOSTILE_XML"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"<xml><ToUserName>a</ToUserName>",
        b"<notxml/>",
        b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>soon</CreateTime>"
        b"<MsgType>text</MsgType></xml>",
        b"<xml><FromUserName>b</FromUserName><CreateTime>1</CreateTime></xml>",
        b"[1, 2]",
        b'{"MsgType": {"a": 1}, "FromUserName": "b", "ToUserName": "c", "CreateTime": 1}',
    ],
)
def test_malformed_bodies_are_400(body):
    settings = PushSettings(TOKEN, APPID)
    with pytest.raises(PushRejected) as refused:
        read_push(settings, build_handshake(TOKEN, "x"), body)
    assert refused.value.http_status == 400


def test_a_body_over_the_cap_is_413():
    with pytest.raises(PushRejected) as refused:
        read_push(PushSettings(TOKEN, APPID), build_handshake(TOKEN, "x"), b"<xml>" + b" " * 70_000 + b"</xml>")
    assert refused.value.http_status == 413


# -- the mini-program's JSON format, and subscribe-message lists --------------------------------------------------

POPUP_ONE = {
    "ToUserName": "gh_mp",
    "FromUserName": "oMP-alice",
    "CreateTime": 1_700_000_100,
    "MsgType": "event",
    "Event": "subscribe_msg_popup_event",
    "List": {"TemplateId": "tpl-rebate", "SubscribeStatusString": "accept", "PopupScene": "0"},
}


def test_json_push_in_safe_mode_and_its_one_item_list_is_an_object():
    settings = PushSettings(TOKEN, APPID, new_aes_key(), json_format=True)
    built = build_push(settings, POPUP_ONE)
    assert set(json.loads(built.body)) == {"ToUserName", "Encrypt"}
    message = read_push(settings, built.args, built.body)
    assert message.event == "subscribe_msg_popup_event" and message.create_time == 1_700_000_100
    assert subscribe_items(message) == [POPUP_ONE["List"]]


def test_a_json_list_of_many_is_an_array_and_xml_lists_repeat_the_element():
    many = [
        {"TemplateId": "tpl-a", "SubscribeStatusString": "accept", "PopupScene": "0"},
        {"TemplateId": "tpl-b", "SubscribeStatusString": "reject", "PopupScene": "0"},
    ]
    json_settings = PushSettings(TOKEN, APPID, json_format=True)
    built = build_push(json_settings, {**POPUP_ONE, "List": many})
    assert subscribe_items(read_push(json_settings, built.args, built.body)) == many
    xml_settings = PushSettings(TOKEN, APPID)
    fields = {k: v for k, v in POPUP_ONE.items() if k != "List"}
    for items in (many, many[:1]):
        built = build_push(xml_settings, {**fields, "SubscribeMsgPopupEvent": {"List": items}})
        assert subscribe_items(read_push(xml_settings, built.args, built.body)) == items


def test_a_sent_event_is_deduplicated_by_sender_and_time_not_by_our_msgid():
    fields = {**POPUP_ONE, "Event": "subscribe_msg_sent_event"}
    fields["List"] = {"TemplateId": "tpl", "MsgID": "1700", "ErrorCode": "0", "ErrorStatus": "success"}
    settings = PushSettings(TOKEN, APPID, json_format=True)
    built = build_push(settings, fields)
    message = read_push(settings, built.args, built.body)
    assert message.msg_id is None
    key = message.dedupe_key("mp")
    assert key.startswith("mp:event:oMP-alice:1700000100:subscribe_msg_sent_event:")
    # WeChat's retry of it names the same messages: the same key
    rebuilt = build_push(settings, fields)
    again = read_push(settings, rebuilt.args, rebuilt.body)
    assert again.dedupe_key("mp") == key


def test_two_sent_events_for_one_person_in_one_second_are_two_events():
    """The dispatcher sends a person's notices back to back: WeChat reports each in its own sent event, often in
    the same second. Keyed by sender and time alone, the second was taken for a retry and its delivery lost."""
    settings = PushSettings(TOKEN, APPID, json_format=True)
    keys = set()
    for msgid in ("1700", "1701", "1700"):
        fields = {**POPUP_ONE, "Event": "subscribe_msg_sent_event"}
        fields["List"] = {"TemplateId": "tpl", "MsgID": msgid, "ErrorCode": "0", "ErrorStatus": "success"}
        built = build_push(settings, fields)
        keys.add(read_push(settings, built.args, built.body).dedupe_key("mp"))
    assert len(keys) == 2
    assert all(len(k) <= 200 for k in keys)  # the column's width


def test_encoding_aes_keys_are_checked():
    assert len(check_aes_key(new_aes_key())) == 32
    for bad in ("short", "*" * 43, new_aes_key() + "A"):
        with pytest.raises(ValueError):
            check_aes_key(bad)
