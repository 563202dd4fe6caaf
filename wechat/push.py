"""WeChat message push (消息推送) for the official account and the mini-program, through wechatpy 1.8.18.

What WeChat POSTs to our push URL: a message or an event from a user, as XML (the official
account, and the mini-program by default) or as JSON (a mini-program configured for JSON), in
plaintext mode or in safe mode (安全模式: the message AES-256-CBC encrypted with the EncodingAESKey,
signed with ``msg_signature``). The URL is first checked by WeChat with a GET carrying ``echostr``,
signed with the token (plain in every mode).

Every XML body is checked with defusedxml (no DTD, no entity, no external reference) before
xmltodict (inside wechatpy) sees it, and the decrypted XML again. The signature is checked with
``wechatpy.utils.check_signature`` (plain) or inside ``WeChatCrypto.decrypt_message`` (safe mode),
decryption tries the current EncodingAESKey and then the previous one (rotation), and
``wechatpy.parse_message`` reads the message. The answer is a :class:`PushMessage`: a plain,
normalized dict-like value (``msg_type``, ``event``, ``from_user``, ``to_user``, ``create_time``,
``msg_id``, ``fields``: everything WeChat sent). Failures raise :class:`PushRejected` with the HTTP
status to answer (403 signature, 400 malformed).

The functions at the end build a push exactly as WeChat does (``WeChatCrypto.encrypt_message``) for
the simulator and the tests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException
from wechatpy.utils import WeChatSigner, check_signature

from wechat.errors import NotificationRejected
from wechat.text import json_text, loads_strict, storable

MAX_PUSH_BYTES = 64 * 1024  # WeChat's pushes are a few KiB; a text message is at most 2,048 characters
AES_KEY_CHARS = 43
MAX_NESTING = 16  # WeChat's pushes nest three levels (a subscribe event's List items); more is not WeChat
MAX_DEDUPE_KEY = 200  # inbound_messages.dedupe_key is VARCHAR(200)
LATEST_CREATE_TIME = 4_102_444_800  # 2100-01-01 UTC, in seconds: later ones overflow where they are turned into times
TEMPLATE_SENT_EVENT = "templatesendjobfinish"  # the official account's word on a template message it sent
SUBSCRIBE_MSG_EVENTS = {
    "subscribe_msg_popup_event": "SubscribeMsgPopupEvent",
    "subscribe_msg_change_event": "SubscribeMsgChangeEvent",
    "subscribe_msg_sent_event": "SubscribeMsgSentEvent",
}
CARD_EVENTS = frozenset({"user_get_card", "user_consume_card", "user_del_card"})
CARD_FIELDS = ("OuterStr", "UserCardCode", "CardId", "IsGiveByFriend")  # what the job reads (payouts.card_rail)
MAX_CARD_CODE = 64  # payouts.wechat_ref is VARCHAR(64); WeChat's card codes are at most 20 digits
# the fields of a List item the messages job reads (notices.consents): each one scalar
SUBSCRIBE_ITEM_FIELDS = ("TemplateId", "SubscribeStatusString", "MsgID", "ErrorCode", "ErrorStatus")


class PushRejected(NotificationRejected):
    """A push that failed verification (403) or is not a message WeChat could have sent (400)."""

    def __init__(self, reason: str, message: str = "", *, http_status: int = 400) -> None:
        super().__init__(reason, message, http_status=http_status)


def check_aes_key(key: str) -> bytes:
    """The 32 AES bytes of an EncodingAESKey (43 characters of base64, no padding); ValueError if it is not one."""
    if not isinstance(key, str) or len(key) != AES_KEY_CHARS:
        raise ValueError(f"an EncodingAESKey is {AES_KEY_CHARS} characters")
    try:
        raw = base64.b64decode(key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an EncodingAESKey is base64 (A-Z, a-z, 0-9, + and /)") from None
    if len(raw) != 32:
        raise ValueError("an EncodingAESKey decodes to 32 bytes")
    return raw


def new_aes_key() -> str:
    """A fresh EncodingAESKey, as the WeChat admin page would generate one."""
    return base64.b64encode(secrets.token_bytes(32)).decode()[:-1]


@dataclass(frozen=True)
class PushSettings:
    """One push URL's settings: its token, its appid (the id inside safe-mode ciphertext), its AES keys."""

    token: str
    appid: str
    aes_key: str | None = None  # set: safe mode, plaintext pushes are refused
    previous_aes_key: str | None = None  # kept while WeChat may still use it (rotation)
    json_format: bool = False  # a mini-program configured for JSON (else XML)

    @property
    def safe_mode(self) -> bool:
        return bool(self.aes_key)

    def cryptos(self) -> list[WeChatCrypto]:
        keys = [k for k in (self.aes_key, self.previous_aes_key) if k]
        return [WeChatCrypto(self.token, k, self.appid) for k in keys]


@dataclass(frozen=True)
class PushMessage:
    """One message or event, normalized. ``fields`` holds everything WeChat sent, as strings / dicts / lists."""

    msg_type: str
    event: str | None
    from_user: str
    to_user: str
    create_time: int
    msg_id: str | None
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "msg_type": self.msg_type,
            "event": self.event,
            "from_user": self.from_user,
            "to_user": self.to_user,
            "create_time": self.create_time,
            "msg_id": self.msg_id,
            "fields": self.fields,
        }

    def dedupe_key(self, source: str) -> str:
        """WeChat's own rule: MsgId for a message; sender + CreateTime (+ the event, + a card event's code) for an
        event. A key longer than its column (every field at its own limit) is the same key hashed: never a 500."""
        key = self._dedupe_key(source)
        if len(key) <= MAX_DEDUPE_KEY:
            return key
        return f"{source}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"

    def _dedupe_key(self, source: str) -> str:
        if self.msg_id:
            return f"{source}:msg:{self.msg_id}"
        key = f"{source}:event:{self.from_user}:{self.create_time}:{self.event or ''}"
        # several cards taken (or redeemed) in one second are several events: each names its own code
        card_code = str(self.fields.get("UserCardCode") or "")[:64]
        if card_code:
            return f"{key}:{card_code}"
        if self.event == "subscribe_msg_sent_event":
            # two of our messages to one person in one second are two sent events: each names the messages it
            # reports (WeChat's retry of one names the same)
            ids = sorted(str(item.get("MsgID", "")) for item in subscribe_items(self))
            return f"{key}:{hashlib.sha256('|'.join(ids).encode()).hexdigest()[:16]}"
        if self.event == TEMPLATE_SENT_EVENT:  # as above: each names the template message it reports
            return f"{key}:{_text(self.fields.get('MsgID'))[:64]}"
        return key


# -- verification ----------------------------------------------------------------------


def verify_url(token: str, args: dict[str, str]) -> str:
    """The GET handshake: ``echostr`` when ``signature`` = SHA1(sort(token, timestamp, nonce)), else PushRejected."""
    _check_plain_signature(token, args)
    echostr = args.get("echostr") or ""
    if not echostr or len(echostr) > 256:
        raise PushRejected("ECHOSTR_MISSING", "echostr is required")
    return echostr


def _check_plain_signature(token: str, args: dict[str, str]) -> None:
    signature, timestamp, nonce = args.get("signature") or "", args.get("timestamp") or "", args.get("nonce") or ""
    if not (signature and timestamp and nonce):
        raise PushRejected("SIGNATURE_MISSING", "signature, timestamp and nonce are required", http_status=403)
    try:
        check_signature(token, signature, timestamp, nonce)
    except InvalidSignatureException:
        raise PushRejected("BAD_SIGNATURE", "signature does not match", http_status=403) from None


def checked_xml(text: str) -> None:
    """defusedxml first: a DTD, an entity or an external reference is refused before any other parser runs."""
    try:
        root = defused_fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise PushRejected("HOSTILE_XML", f"XML refused: {exc.__class__.__name__}") from None
    except (ParseError, ValueError) as exc:
        raise PushRejected("MALFORMED_XML", f"not well-formed XML: {exc}") from None
    if root.tag != "xml":
        raise PushRejected("MALFORMED_XML", "the root element is not <xml>")


def read_push(settings: PushSettings, args: dict[str, str], body: bytes) -> PushMessage:
    """Verify, decrypt and parse one POSTed push. ``args``: the query string WeChat signed."""
    if len(body) > MAX_PUSH_BYTES:
        raise PushRejected("TOO_LARGE", f"body larger than {MAX_PUSH_BYTES} bytes", http_status=413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PushRejected("MALFORMED", "body is not UTF-8") from None
    if not text.strip():
        raise PushRejected("MALFORMED", "empty body")
    encrypted = (args.get("encrypt_type") or "raw").lower() == "aes"
    if settings.safe_mode and not encrypted:
        _check_plain_signature(settings.token, args)  # a forged plaintext push must not read as a bad body
        raise PushRejected("PLAINTEXT_REFUSED", "safe mode: only encrypted pushes are accepted", http_status=403)
    if encrypted and not settings.safe_mode:
        raise PushRejected("NO_AES_KEY", "an encrypted push, but no EncodingAESKey is configured", http_status=403)
    is_json = text.lstrip().startswith("{")
    if encrypted:
        _check_plain_signature(settings.token, args)  # WeChat signs the query in every mode
        envelope = _json_object(text) if is_json else _xml_envelope(text)
        text = _decrypt(settings, envelope, args)
        is_json = text.lstrip().startswith("{")
    else:
        _check_plain_signature(settings.token, args)
    return _parse_json(text) if is_json else _parse_xml(text)


def _xml_envelope(text: str) -> dict[str, Any]:
    checked_xml(text)
    root = defused_fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    values = {child.tag: (child.text or "") for child in root}
    if not values.get("Encrypt"):
        raise PushRejected("MALFORMED", "no Encrypt element")
    return values


def _decrypt(settings: PushSettings, envelope: dict[str, Any], args: dict[str, str]) -> str:
    encrypt = envelope.get("Encrypt")
    if not isinstance(encrypt, str) or not encrypt or len(encrypt) > MAX_PUSH_BYTES:
        raise PushRejected("MALFORMED", "no Encrypt field")
    msg_signature, timestamp, nonce = args.get("msg_signature") or "", args.get("timestamp"), args.get("nonce")
    if not msg_signature:
        raise PushRejected("SIGNATURE_MISSING", "msg_signature is required in safe mode", http_status=403)
    last: PushRejected | None = None
    for crypto in settings.cryptos():  # the current key, then the previous one (rotation)
        try:
            return crypto.decrypt_message({"Encrypt": encrypt}, msg_signature, timestamp, nonce)
        except InvalidSignatureException:
            raise PushRejected("BAD_SIGNATURE", "msg_signature does not match", http_status=403) from None
        except InvalidAppIdException:
            last = PushRejected("WRONG_APPID", "the message is for another appid", http_status=403)
        except Exception:  # noqa: BLE001 - bad base64, block size, padding or length: not under this key
            last = PushRejected("UNDECRYPTABLE", "the message does not decrypt under the configured keys")
    raise last or PushRejected("UNDECRYPTABLE", "no EncodingAESKey configured")


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = loads_strict(text)
    except (ValueError, RecursionError):
        raise PushRejected("MALFORMED_JSON", "not JSON (or a number NaN or Infinity)") from None
    if not isinstance(data, dict):
        raise PushRejected("MALFORMED_JSON", "not a JSON object")
    return data


def _parse_xml(text: str) -> PushMessage:
    checked_xml(text)
    try:
        message = parse_message(text)
    except Exception as exc:  # noqa: BLE001 - xmltodict / wechatpy on a shape WeChat never sends
        raise PushRejected("MALFORMED_XML", f"not a WeChat message: {exc.__class__.__name__}") from None
    if message is None:
        raise PushRejected("MALFORMED_XML", "empty message")
    return _normalized(dict(message._data))


def _parse_json(text: str) -> PushMessage:
    return _normalized(_json_object(text))


def _shape_problem(value: Any) -> str | None:
    """What makes ``value`` no message WeChat sends (None: nothing), walked without recursion: nesting thousands deep
    (a RecursionError further on), or a number no JSON column keeps (``1e400`` reads as infinity)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "a number out of range"
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > MAX_NESTING:
            return f"nested deeper than {MAX_NESTING} levels"
        stack.extend((child, depth + 1) for child in children)
    return None


def _normalized(raw: dict[str, Any]) -> PushMessage:
    problem = _shape_problem(raw)
    if problem:
        raise PushRejected("MALFORMED", f"{problem}: not a message WeChat sends")
    if not storable(raw):
        raise PushRejected("MALFORMED", "a field holds a NUL or a lone surrogate")
    msg_type = _text(raw.get("MsgType")).lower()
    from_user, to_user = _text(raw.get("FromUserName")), _text(raw.get("ToUserName"))
    if not msg_type or not from_user or not to_user:
        raise PushRejected("MALFORMED", "MsgType, FromUserName and ToUserName are required")
    try:
        create_time = int(_text(raw.get("CreateTime")))
    except ValueError:
        raise PushRejected("MALFORMED", "CreateTime is not a number") from None
    if not 0 <= create_time < LATEST_CREATE_TIME:
        raise PushRejected("MALFORMED", f"CreateTime {create_time} is not a time WeChat sends")
    event = (_text(raw.get("Event")).lower() or None) if msg_type == "event" else None
    msg_id = _text(raw.get("MsgId") or raw.get("MsgID")) or None
    if event in ("subscribe_msg_sent_event", TEMPLATE_SENT_EVENT):
        msg_id = None  # the MsgID inside names the message we sent, not this push
    if len(from_user) > 64 or len(to_user) > 64 or (msg_id and len(msg_id) > 64) or len(msg_type) > 32:
        raise PushRejected("MALFORMED", "a field is longer than WeChat ever sends")
    if event and len(event) > 64:
        raise PushRejected("MALFORMED", "Event is longer than WeChat ever sends")
    message = PushMessage(msg_type, event, from_user, to_user, create_time, msg_id, raw)
    if event == TEMPLATE_SENT_EVENT and (len(_text(raw.get("MsgID"))) > 64 or len(_text(raw.get("Status"))) > 64):
        raise PushRejected("MALFORMED", "MsgID or Status is longer than WeChat ever sends")
    if event in CARD_EVENTS:  # as below: what the job reads of a card event is one short text each
        card = {name: _text(raw.get(name)) for name in CARD_FIELDS}
        if len(card["UserCardCode"]) > MAX_CARD_CODE:
            raise PushRejected("MALFORMED", "UserCardCode is longer than WeChat ever sends")
    if event in SUBSCRIBE_MSG_EVENTS:
        subscribe_items(message)  # its List is read by the job later: a shape it cannot read is refused now
    return message


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value).strip()
    raise PushRejected("MALFORMED", "a scalar field holds a structure")


def subscribe_items(message: PushMessage) -> list[dict[str, Any]]:
    """The ``List`` of a subscribe-message event as a list of dicts, from XML or JSON.

    XML: ``<SubscribeMsgPopupEvent><List>…</List><List>…</List></SubscribeMsgPopupEvent>``; JSON: ``List``
    at the top level. In both, one item arrives as an object and several as an array.
    """
    container = message.fields.get(SUBSCRIBE_MSG_EVENTS.get(message.event or "", ""), message.fields)
    items = container.get("List") if isinstance(container, dict) else None
    if items is None:
        return []
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise PushRejected("MALFORMED", "List is not an object or an array of objects")
    for item in items:  # what the job reads of an item is text (or a JSON number): an element twice is no answer
        for name in SUBSCRIBE_ITEM_FIELDS:
            _text(item.get(name))
    return [dict(i) for i in items]


# -- building pushes as WeChat does (simulator, tests) ---------------------------------


def signature(*values: str) -> str:
    signer = WeChatSigner()
    signer.add_data(*values)
    return signer.signature


def message_xml(fields: dict[str, Any]) -> str:
    """A push's XML: scalars as elements (text in CDATA, numbers bare), lists of dicts repeated, dicts nested."""

    def render(name: str, value: Any) -> str:
        if isinstance(value, dict):
            return f"<{name}>{''.join(render(k, v) for k, v in value.items())}</{name}>"
        if isinstance(value, list):
            return "".join(render(name, item) for item in value)
        if isinstance(value, int) and not isinstance(value, bool):
            return f"<{name}>{value}</{name}>"
        text = str(value)
        if "]]>" in text:
            return f"<{name}>{escape(text)}</{name}>"
        return f"<{name}><![CDATA[{text}]]></{name}>"

    return "<xml>" + "".join(render(k, v) for k, v in fields.items()) + "</xml>"


@dataclass(frozen=True)
class BuiltPush:
    """What WeChat sends: the query string and the body."""

    args: dict[str, str]
    body: bytes


def build_push(settings: PushSettings, fields: dict[str, Any], *, timestamp: int | None = None) -> BuiltPush:
    """``fields`` pushed as WeChat would with these settings: XML or JSON, plain or encrypted and signed."""
    timestamp_s, nonce = str(timestamp or int(time.time())), str(secrets.randbelow(10**10))
    args = {"signature": signature(settings.token, timestamp_s, nonce), "timestamp": timestamp_s, "nonce": nonce}
    if fields.get("FromUserName"):
        args["openid"] = str(fields["FromUserName"])
    plain = json_text(fields) if settings.json_format else message_xml(fields)
    if not settings.safe_mode:
        return BuiltPush(args, plain.encode())
    envelope_xml = settings.cryptos()[0].encrypt_message(plain, nonce, timestamp_s)
    root = defused_fromstring(envelope_xml)
    encrypt, msg_signature = root.findtext("Encrypt"), root.findtext("MsgSignature")
    args.update(encrypt_type="aes", msg_signature=msg_signature)
    if settings.json_format:
        body = json.dumps({"ToUserName": fields.get("ToUserName", ""), "Encrypt": encrypt}).encode()
    else:
        to_user = escape(str(fields.get("ToUserName", "")))
        body = f"<xml><ToUserName><![CDATA[{to_user}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        body = body.encode()
    return BuiltPush(args, body)


def build_handshake(token: str, echostr: str, *, timestamp: int | None = None) -> dict[str, str]:
    """The GET query WeChat sends to check a push URL."""
    timestamp_s, nonce = str(timestamp or int(time.time())), str(secrets.randbelow(10**10))
    return {
        "signature": signature(token, timestamp_s, nonce),
        "timestamp": timestamp_s,
        "nonce": nonce,
        "echostr": echostr,
    }
