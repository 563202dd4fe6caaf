"""The WeCom intelligent robot's callback, ``GET/POST /wechat/wecom/bot``: challenge commands in groups and 1:1 chats.

GET is WeCom's URL check (the plaintext of ``echostr`` when the signature over it matches). POST is a message:
the signature is checked first (403), the body decrypted and parsed by ``wechat.wecom`` (400 malformed, 413
too large; 404 while the robot is not configured), a signed timestamp further than
``WECOM_BOT_MAX_AGE_SECONDS`` from our clock refused (403), then the callback is recorded once by (robot,
msgid) — WeCom's retry, or a replay, gets the reply recorded the first time and changes nothing — the
command parsed (:mod:`challenges.commands`), the speaker's binding looked up, the command executed
(:mod:`challenges.bot`) and the reply recorded, all in one transaction committed before answering. No call
to WeChat is made here: the reply is the HTTP answer itself, encrypted. Our streams are finished at once; a
stream refresh (msgtype ``stream``) is answered with the recorded reply of the stream it names, when that was
this speaker's, else with nothing: it runs nothing and writes nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import func, select, update

from challenges import bindings, bot
from challenges.commands import help_text, parse
from models import BotCallback, Transport, db, utcnow
from models.sql import insert_ignoring
from web.errors import busy_text, is_busy
from web.openapi import WECHAT_FAIL, documented
from wechat.wecom import (
    MAX_CALLBACK_BYTES,
    BotMessage,
    BotSettings,
    CallbackRejected,
    encrypted_reply,
    read_callback,
    stream_reply,
    text_reply,
    verify_url,
)

log = logging.getLogger(__name__)
ENTER_CHAT = "enter_chat"
STREAM_REFRESH = "stream"
STREAM_ID_CHARS = 64  # a reply's stream id is its message's msgid cut to this
EVENT_OUTCOMES = ("welcome", "event")  # the outcomes answer() records for an event
bp = Blueprint("wecom_bot", __name__, url_prefix="/wechat")

TEXT = {"text/plain": {"schema": {"type": "string"}}}
JSON_REPLY = {"application/json": {"schema": {"type": "object"}}}
SIGNED_QUERY = [
    {"name": name, "in": "query", "required": name != "echostr", "schema": {"type": "string"}}
    for name in ("msg_signature", "timestamp", "nonce", "echostr")
]
BOT_DOC = {
    "tags": ["wechat"],
    "responses": {
        "200": {
            "description": "the encrypted reply (POST), empty for a callback already answered, or echostr's plaintext",
            "content": {**JSON_REPLY, **TEXT},
        },
        "4XX": {
            "description": "refused: bad signature or stale timestamp (403), malformed (400), too large (413), "
            "robot not configured (404); nothing written",
            "content": {**TEXT, **WECHAT_FAIL["content"]},
        },
        "503": {"description": "database busy; WeCom retries", "content": TEXT},
    },
}


def bot_settings() -> BotSettings | None:
    cfg = current_app.config
    token, key = cfg.get("WECOM_BOT_TOKEN"), cfg.get("WECOM_BOT_ENCODING_AES_KEY")
    if not token or not key:
        return None
    return BotSettings(token, key, cfg.get("WECOM_BOT_ENCODING_AES_KEY_PREVIOUS"), cfg.get("WECOM_BOT_ID"))


def binding_settings() -> bindings.BindingSettings:
    from datetime import timedelta

    cfg = current_app.config
    return bindings.BindingSettings(
        secret=str(cfg["SECRET_KEY"]).encode(),
        ttl=timedelta(minutes=cfg["CHAT_BINDING_CODE_MINUTES"]),
        max_failures=cfg["CHAT_BINDING_MAX_FAILURES"],
    )


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _body() -> bytes:
    too_large = CallbackRejected("TOO_LARGE", f"body larger than {MAX_CALLBACK_BYTES} bytes", http_status=413)
    if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
        raise too_large
    raw = request.stream.read(MAX_CALLBACK_BYTES + 1)
    if len(raw) > MAX_CALLBACK_BYTES:
        raise too_large
    return raw


def _check_fresh(args: dict[str, str], now: datetime) -> None:
    age = abs(now.timestamp() - int(args["timestamp"]))
    if age > current_app.config["WECOM_BOT_MAX_AGE_SECONDS"]:
        raise CallbackRejected("STALE", "the signed timestamp is too old (or in the future)", http_status=403)


@bp.route("/wecom/bot", methods=["GET", "POST"])
@documented(
    summary="WeCom intelligent robot callback (GET: URL check; POST: a message)", parameters=SIGNED_QUERY, **BOT_DOC
)
def wecom_bot() -> Response:
    """Challenge commands said to the WeCom robot; the reply is this request's encrypted answer."""
    settings = bot_settings()
    if settings is None:
        return _text("the WeCom robot is not configured", 404)
    args = request.args.to_dict()
    now = utcnow()
    try:
        if request.method == "GET":
            return _text(verify_url(settings, args))
        message = read_callback(settings, args, _body())
        _check_fresh(args, now)
    except CallbackRejected as exc:
        log.warning("robot callback refused", extra={"reason": exc.reason})
        return _text(exc.reason, exc.http_status or 400)
    try:
        if message.msgtype == STREAM_REFRESH:  # not a message: nothing to run or record
            reply = refreshed(message)
            db.session.rollback()
            if not reply:  # a stream we never made (or another speaker's): nothing to say
                return _text("")
            return jsonify(encrypted_reply(settings, stream_reply(reply, stream_id=message.stream_id)))
        reply = answer(message, now)
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        if is_busy(exc):
            return busy_text()
        raise
    if not reply:
        return _text("")  # nothing to say, or answered elsewhere: WeCom takes an empty answer
    if message.msgtype == "event":  # the enter-chat welcome: a text (a stream answers messages only)
        return jsonify(encrypted_reply(settings, text_reply(reply)))
    return jsonify(encrypted_reply(settings, stream_reply(reply, stream_id=message.msgid[:STREAM_ID_CHARS])))


def refreshed(message: BotMessage) -> str | None:
    """The reply recorded for the stream a refresh names (its id: the msgid of the message it answered, cut), when
    that message was this speaker's to this robot; None otherwise. Our streams are finished: this is the same answer
    again, never a command run."""
    if len(message.stream_id) > STREAM_ID_CHARS:
        return None
    return db.session.execute(
        select(BotCallback.reply)
        .where(
            BotCallback.bot_id == message.aibotid,
            BotCallback.userid == message.userid,
            # (a msgid shorter than a stream id's cut is the id itself: read by the robot's msgid index)
            BotCallback.msgid == message.stream_id
            if len(message.stream_id) < STREAM_ID_CHARS
            else func.substr(BotCallback.msgid, 1, STREAM_ID_CHARS) == message.stream_id,
            BotCallback.outcome.not_in(EVENT_OUTCOMES),  # an event was answered by a text, not a stream
        )
        .order_by(BotCallback.id)
        .limit(1)
    ).scalar_one_or_none()


def answer(message: BotMessage, now: datetime) -> str | None:
    """Record the callback once and run its command; the reply's text (None: a replay, answered before)."""
    new = insert_ignoring(
        BotCallback.__table__,
        [
            {
                "bot_id": message.aibotid,
                "msgid": message.msgid,
                "userid": message.userid,
                "chatid": message.chatid or None,
                "received_at": now,
            }
        ],
        ("bot_id", "msgid"),
        ("id",),
    )
    if not new:  # WeCom's retry, or a replay: the first answer again (None while that one is still running)
        log.info("robot callback already answered", extra={"msgid": message.msgid})
        return db.session.execute(
            select(BotCallback.reply).where(BotCallback.bot_id == message.aibotid, BotCallback.msgid == message.msgid)
        ).scalar_one_or_none()
    if message.msgtype == "event":
        welcome = message.event_type == ENTER_CHAT
        reply = bot.Reply(help_text() if welcome else "", "welcome" if welcome else "event")
    elif message.msgtype != "text":
        reply = bot.Reply("我只看得懂文字命令。发送「帮助」查看。", "not_text")
    else:
        speaker = bindings.Speaker(Transport.WECOM, message.aibotid, message.userid)
        ctx = bot.Context(speaker, bindings.bound_user(speaker), message.chatid if message.in_group else None)
        reply = bot.execute(parse(message.content), ctx, now, binding=binding_settings())
    db.session.execute(
        update(BotCallback).where(BotCallback.id == new[0][0]).values(outcome=reply.code, reply=reply.kept)
    )
    log.info("robot command answered", extra={"outcome": reply.code, "group": message.in_group})
    return reply.text
