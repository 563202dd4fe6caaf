"""WeCom (企业微信): the intelligent robot's callback (智能机器人, API mode) and the group webhook sender.

**The robot's callback** (developer.work.weixin.qq.com path/101033, 101039, 101031). WeCom signs and encrypts
every callback as its apps do, with receiveid ``""`` for a company's own robot:

- GET ``?msg_signature&timestamp&nonce&echostr``: the URL check; ``echostr`` is ciphertext, we answer its
  plaintext;
- POST the same query with the JSON body ``{"encrypt": ...}``; ``msg_signature`` = SHA1 of the sorted
  [token, timestamp, nonce, encrypt]; the plaintext is JSON ``{msgid, aibotid, chatid, chattype
  ("group"/"single"), from: {userid}, response_url, msgtype, text: {content}}``;
- the passive reply is JSON ``{"encrypt", "msgsignature", "timestamp", "nonce"}`` around a plaintext reply: a
  finished ``stream`` (markdown-capable text) or a ``template_card`` for a message; ``text`` only for the
  enter-chat event.

Ciphertext: base64(AES-256-CBC(key = base64(EncodingAESKey + "="), iv = key[:16], PKCS#7 to 32 bytes,
16 random bytes + 4-byte big-endian length + message + receiveid)). Encryption is wechatpy's
``PrpCrypto`` (the same core ``wechat.push`` uses). Decryption is written here: wechatpy's checks neither
the padding nor the length field, and with receiveid ``""`` its receiveid check passes on any garbage, so a
wrong key would decrypt to noise instead of a clear refusal.

**The group webhook** (消息推送, ex 群机器人; path/91770): ``POST /cgi-bin/webhook/send?key=KEY`` with text (at
most 2,048 bytes) or markdown (4,096); at most 20 messages a minute per robot, errcode 130101 beyond that (a
retry later, never now). :class:`WebhookSender` asks ``take_turn(key)`` before every post (the shell
gives it a window shared through Redis, so no process ever exceeds the 20).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.crypto import PrpCrypto

from wechat.errors import NotificationRejected, WeChatBusinessError, WeChatRateLimited, WeChatUnavailable
from wechat.text import json_text, loads_strict, storable

MAX_CALLBACK_BYTES = 64 * 1024  # a robot callback is a few KiB (a text is at most 2,048 bytes)
MAX_ENCRYPT_CHARS = 48 * 1024
AES_KEY_CHARS = 43
BLOCK = 32  # WeCom's PKCS#7 pads to 32 bytes (not AES's 16)
RECEIVE_ID = ""  # a company's own intelligent robot
CHAT_TYPES = ("group", "single")
WEBHOOK_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
WEBHOOK_TEXT_BYTES = 2048
WEBHOOK_MARKDOWN_BYTES = 4096
WEBHOOK_PER_MINUTE = 20
WEBHOOK_BUSY = 130101
STREAM_CONTENT_BYTES = 20480
MAX_NESTING = 16  # a callback nests three or four levels (a mixed message's items); more is not WeCom
SIGNATURE = re.compile(r"[0-9a-fA-F]{40}")  # SHA1 in hex: compare_digest takes ASCII only (TypeError, a 500)


class CallbackRejected(NotificationRejected):
    """A callback that failed verification (403) or is not one WeCom could have sent (400)."""

    def __init__(self, reason: str, message: str = "", *, http_status: int = 400) -> None:
        super().__init__(reason, message, http_status=http_status)


def aes_key_bytes(encoding_aes_key: str) -> bytes:
    if not isinstance(encoding_aes_key, str) or len(encoding_aes_key) != AES_KEY_CHARS:
        raise ValueError(f"an EncodingAESKey is {AES_KEY_CHARS} characters")
    try:
        raw = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("an EncodingAESKey is base64") from None
    if len(raw) != 32:
        raise ValueError("an EncodingAESKey decodes to 32 bytes")
    return raw


def sign(token: str, timestamp: str, nonce: str, encrypt: str) -> str:
    """``msg_signature``: SHA1 of the four strings sorted and joined."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce, encrypt])).encode()).hexdigest()  # noqa: S324


def encrypt(encoding_aes_key: str, plaintext: str, receive_id: str = RECEIVE_ID) -> str:
    """The base64 ciphertext of ``plaintext`` as WeCom makes it (wechatpy's PrpCrypto: random 16 bytes first)."""
    return PrpCrypto(aes_key_bytes(encoding_aes_key)).encrypt(plaintext, receive_id).decode()


def decrypt(encoding_aes_key: str, ciphertext: str, receive_id: str = RECEIVE_ID) -> str:
    """The plaintext inside ``ciphertext``; ValueError when it is not one made with this key and receiveid."""
    key = aes_key_bytes(encoding_aes_key)
    try:
        raw = base64.b64decode(ciphertext, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if not raw or len(raw) % 16:
        raise ValueError("not whole AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(raw) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise ValueError("bad padding")
    content = plain[16:-pad]
    if len(content) < 4:
        raise ValueError("too short")
    (length,) = struct.unpack(">I", content[:4])
    if length > len(content) - 4:
        raise ValueError("length beyond the message")
    message, rest = content[4 : 4 + length], content[4 + length :]
    if rest.decode("utf-8", "replace") != receive_id:
        raise ValueError("another receiveid")
    return message.decode("utf-8")


@dataclass(frozen=True)
class BotSettings:
    token: str
    aes_key: str
    previous_aes_key: str | None = None  # kept during a key change
    bot_id: str | None = None  # when set, a callback for another robot is refused

    def aes_keys(self) -> list[str]:
        return [k for k in (self.aes_key, self.previous_aes_key) if k]


def _signed_query(args: dict[str, str]) -> tuple[str, str, str]:
    signature, timestamp, nonce = (args.get(k) or "" for k in ("msg_signature", "timestamp", "nonce"))
    if not (signature and timestamp and nonce):
        raise CallbackRejected("SIGNATURE_MISSING", "msg_signature, timestamp and nonce are required", http_status=403)
    if len(timestamp) > 12 or not timestamp.isdecimal() or len(nonce) > 64 or not SIGNATURE.fullmatch(signature):
        raise CallbackRejected("SIGNATURE_MISSING", "malformed signed query", http_status=403)
    return signature, timestamp, nonce


def _opened(settings: BotSettings, args: dict[str, str], ciphertext: str) -> str:
    signature, timestamp, nonce = _signed_query(args)
    if not secrets.compare_digest(sign(settings.token, timestamp, nonce, ciphertext), signature):
        raise CallbackRejected("BAD_SIGNATURE", "msg_signature does not match", http_status=403)
    for key in settings.aes_keys():  # the current key, then the previous one
        try:
            return decrypt(key, ciphertext)
        except (ValueError, UnicodeDecodeError):
            continue
    raise CallbackRejected("UNDECRYPTABLE", "does not decrypt under the configured keys")


def verify_url(settings: BotSettings, args: dict[str, str]) -> str:
    """The GET check: the plaintext of ``echostr`` when the signature over it matches."""
    echostr = args.get("echostr") or ""
    if not echostr or len(echostr) > 1024:
        raise CallbackRejected("ECHOSTR_MISSING", "echostr is required")
    return _opened(settings, args, echostr)


@dataclass(frozen=True)
class BotMessage:
    """One decrypted callback, normalized."""

    msgid: str
    aibotid: str
    chatid: str  # "" in a 1:1 chat
    chattype: str  # group | single
    userid: str  # the WeCom member who spoke
    msgtype: str
    content: str  # text.content ("" for other message types)
    response_url: str = ""
    event_type: str = ""  # event.eventtype of an event ("enter_chat": a person opened the 1:1 chat today)
    stream_id: str = ""  # stream.id of a stream refresh (msgtype "stream"): the stream WeCom asks about
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def in_group(self) -> bool:
        return self.chattype == "group"


def _field(data: dict[str, Any], name: str, limit: int, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise CallbackRejected("MALFORMED", f"{name} is missing or not a string")
    text = str(value)
    if (required and not text) or len(text) > limit:
        raise CallbackRejected("MALFORMED", f"{name} is empty or longer than WeCom sends")
    return text


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects or arrays deeper than ``limit``, walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_message(plaintext: str) -> BotMessage:
    try:
        data = loads_strict(plaintext)
    except (ValueError, RecursionError):
        raise CallbackRejected("MALFORMED_JSON", "the decrypted message is not JSON") from None
    if not isinstance(data, dict):
        raise CallbackRejected("MALFORMED_JSON", "the decrypted message is not an object")
    if _deeper_than(data, MAX_NESTING):  # before storable(), which recurses: a few hundred deep was a 500
        raise CallbackRejected("MALFORMED_JSON", f"nested deeper than {MAX_NESTING} levels: not a message WeCom sends")
    if not storable(data):
        raise CallbackRejected("MALFORMED_JSON", "the decrypted message holds a NUL or a lone surrogate")
    sender = data.get("from")
    if not isinstance(sender, dict):
        raise CallbackRejected("MALFORMED", "from is not an object")
    chattype = _field(data, "chattype", 16)
    if chattype not in CHAT_TYPES:
        raise CallbackRejected("MALFORMED", "chattype is group or single")
    msgtype = _field(data, "msgtype", 32)
    text = data.get("text") if msgtype == "text" else None
    content = ""
    if msgtype == "text":
        if not isinstance(text, dict):
            raise CallbackRejected("MALFORMED", "a text message without text")
        content = _field(text, "content", 8192, required=False)
    event_type = ""
    if msgtype == "event":
        event = data.get("event")
        if not isinstance(event, dict):
            raise CallbackRejected("MALFORMED", "an event without event")
        event_type = _field(event, "eventtype", 64)
    stream_id = ""
    if msgtype == "stream":  # WeCom asking for more of a stream it takes for unfinished
        stream = data.get("stream")
        if not isinstance(stream, dict):
            raise CallbackRejected("MALFORMED", "a stream refresh without stream")
        stream_id = _field(stream, "id", 128)
    return BotMessage(
        event_type=event_type,
        stream_id=stream_id,
        msgid=_field(data, "msgid", 128),
        aibotid=_field(data, "aibotid", 64),  # a binding's scope (chat_bindings.scope) when WECOM_BOT_ID is unset
        chatid=_field(data, "chatid", 128, required=chattype == "group"),
        chattype=chattype,
        userid=_field(sender, "userid", 128),
        msgtype=msgtype,
        content=content,
        response_url=_field(data, "response_url", 1024, required=False),
        raw=data,
    )


def read_callback(settings: BotSettings, args: dict[str, str], body: bytes) -> BotMessage:
    """Verify, decrypt and parse one POSTed callback (signature first: a forged one is 403 before anything)."""
    if len(body) > MAX_CALLBACK_BYTES:
        raise CallbackRejected("TOO_LARGE", f"body larger than {MAX_CALLBACK_BYTES} bytes", http_status=413)
    _signed_query(args)
    try:
        envelope = loads_strict(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CallbackRejected("MALFORMED_JSON", "the body is not JSON") from None
    ciphertext = envelope.get("encrypt") if isinstance(envelope, dict) else None
    if not isinstance(ciphertext, str) or not ciphertext or len(ciphertext) > MAX_ENCRYPT_CHARS:
        raise CallbackRejected("MALFORMED", 'the body is not {"encrypt": ...}')
    message = parse_message(_opened(settings, args, ciphertext))
    if settings.bot_id and message.aibotid != settings.bot_id:
        raise CallbackRejected("WRONG_BOT", "the message is for another robot", http_status=403)
    return message


# -- replies ------------------------------------------------------------------------------------------


def _cut(text: str, limit: int) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[: limit - 3].decode("utf-8", "ignore") + "…"


def stream_reply(text: str, stream_id: str | None = None) -> dict[str, Any]:
    """A finished stream: the reply to a message (its content renders markdown)."""
    return {
        "msgtype": "stream",
        "stream": {
            "id": stream_id or secrets.token_hex(8),
            "finish": True,
            "content": _cut(text, STREAM_CONTENT_BYTES),
        },
    }


def text_reply(text: str) -> dict[str, Any]:
    """A text reply: accepted only for the enter-chat event."""
    return {"msgtype": "text", "text": {"content": _cut(text, WEBHOOK_TEXT_BYTES)}}


def encrypted_reply(
    settings: BotSettings, reply: dict[str, Any], *, nonce: str | None = None, timestamp: int | None = None
) -> dict[str, Any]:
    """The JSON WeCom takes as a passive reply: the plaintext encrypted under the current key and signed."""
    timestamp_s, nonce = str(timestamp or int(time.time())), nonce or secrets.token_hex(8)
    ciphertext = encrypt(settings.aes_key, json.dumps(reply, ensure_ascii=False))
    return {
        "encrypt": ciphertext,
        "msgsignature": sign(settings.token, timestamp_s, nonce, ciphertext),
        "timestamp": int(timestamp_s),
        "nonce": nonce,
    }


def open_reply(settings: BotSettings, answer: dict[str, Any]) -> dict[str, Any]:
    """The plaintext of our encrypted reply, its signature checked (WeCom's side: the simulator and tests)."""
    timestamp, nonce = str(answer.get("timestamp", "")), str(answer.get("nonce", ""))
    ciphertext = str(answer.get("encrypt", ""))
    if not secrets.compare_digest(sign(settings.token, timestamp, nonce, ciphertext), str(answer.get("msgsignature"))):
        raise CallbackRejected("BAD_SIGNATURE", "the reply's msgsignature does not match", http_status=403)
    return json.loads(decrypt(settings.aes_key, ciphertext))


# -- building callbacks as WeCom does (simulator, tests) ------------------------------------------------


@dataclass(frozen=True)
class BuiltCallback:
    args: dict[str, str]
    body: bytes


def build_callback(settings: BotSettings, message: dict[str, Any], *, timestamp: int | None = None) -> BuiltCallback:
    timestamp_s, nonce = str(timestamp or int(time.time())), str(secrets.randbelow(10**10))
    ciphertext = encrypt(settings.aes_key, json_text(message))
    args = {
        "msg_signature": sign(settings.token, timestamp_s, nonce, ciphertext),
        "timestamp": timestamp_s,
        "nonce": nonce,
    }
    return BuiltCallback(args, json.dumps({"encrypt": ciphertext}).encode())


def build_handshake(settings: BotSettings, echo: str, *, timestamp: int | None = None) -> dict[str, str]:
    timestamp_s, nonce = str(timestamp or int(time.time())), str(secrets.randbelow(10**10))
    echostr = encrypt(settings.aes_key, echo)
    return {
        "msg_signature": sign(settings.token, timestamp_s, nonce, echostr),
        "timestamp": timestamp_s,
        "nonce": nonce,
        "echostr": echostr,
    }


def event_message(bot_id: str, userid: str, event_type: str, *, msgid: str | None = None) -> dict[str, Any]:
    """An event callback's plaintext (``enter_chat``: the member opened the 1:1 chat, first time today)."""
    return {
        "msgid": msgid or secrets.token_hex(16),
        "create_time": int(time.time()),
        "aibotid": bot_id,
        "chattype": "single",
        "from": {"userid": userid},
        "msgtype": "event",
        "event": {"eventtype": event_type, event_type: {}},
    }


def text_message(
    bot_id: str, userid: str, content: str, *, chatid: str = "", msgid: str | None = None
) -> dict[str, Any]:
    """A text callback's plaintext as WeCom sends it (a group's ``chatid``, or none for a 1:1 chat)."""
    message: dict[str, Any] = {
        "msgid": msgid or secrets.token_hex(16),
        "aibotid": bot_id,
        "chattype": "group" if chatid else "single",
        "from": {"userid": userid},
        "response_url": "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=" + secrets.token_hex(8),
        "msgtype": "text",
        "text": {"content": content},
    }
    if chatid:
        message["chatid"] = chatid
    return message


# -- the group webhook ---------------------------------------------------------------------------------


class WebhookBusy(WeChatRateLimited):
    """130101, or our own share of the 20 a minute used up: send later (nothing was posted, or WeCom refused)."""

    default_code = str(WEBHOOK_BUSY)


class WebhookSender:
    """Posts to one or more group webhooks, never more than 20 a minute per robot key (``take_turn``)."""

    def __init__(
        self,
        take_turn: Callable[[str], bool],
        session: requests.Session | None = None,
        url: str = WEBHOOK_URL,
        timeout: tuple[float, float] = (3.05, 10),
    ) -> None:
        self.take_turn, self.session, self.url, self.timeout = take_turn, session or requests.Session(), url, timeout

    def send_text(self, key: str, content: str, mentioned: list[str] | None = None) -> None:
        text: dict[str, Any] = {"content": _cut(content, WEBHOOK_TEXT_BYTES)}
        if mentioned:
            text["mentioned_list"] = mentioned
        self._post(key, {"msgtype": "text", "text": text})

    def send_markdown(self, key: str, content: str) -> None:
        self._post(key, {"msgtype": "markdown", "markdown": {"content": _cut(content, WEBHOOK_MARKDOWN_BYTES)}})

    def _post(self, key: str, body: dict[str, Any]) -> None:
        if not key or len(key) > 128:
            raise ValueError("a webhook key is required")
        if not self.take_turn(key):
            raise WebhookBusy("this robot's 20 messages a minute are used: later", code="LIMIT_LOCAL")
        try:
            response = self.session.post(
                self.url, params={"key": key}, json=body, timeout=self.timeout, allow_redirects=False
            )  # a redirect followed carried the robot's key to any host (wechat.http)
        except requests.RequestException as exc:
            raise WeChatUnavailable(f"webhook not reached: {exc.__class__.__name__}", code="NETWORK") from exc
        if response.status_code >= 500 or 300 <= response.status_code < 400:
            raise WeChatUnavailable(f"webhook answered {response.status_code}", code=str(response.status_code))
        try:
            answer = response.json()
        except ValueError:
            raise WeChatUnavailable("webhook answer is not JSON", code="UNPARSEABLE_RESPONSE") from None
        errcode = answer.get("errcode", -1) if isinstance(answer, dict) else -1
        if isinstance(errcode, bool) or not re.fullmatch(r"-?\d{1,12}", str(errcode)):
            # null, a list, a word: no outcome we can read (int() raised TypeError out of the job's whole pass)
            raise WeChatUnavailable("webhook answer has no errcode", code="UNPARSEABLE_RESPONSE")
        errcode = int(errcode)
        if errcode == WEBHOOK_BUSY:
            raise WebhookBusy(str(answer.get("errmsg", "freq limit")), code=str(WEBHOOK_BUSY))
        if errcode != 0:
            raise WeChatBusinessError(f"webhook refused: {str(answer)[:200]}", code=str(errcode))
