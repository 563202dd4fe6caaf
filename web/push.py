"""WeChat message push: ``GET/POST /wechat/oa/push`` (official account) and ``/wechat/mp/push`` (mini-program).

GET is WeChat's URL check (``echostr`` back when the token's signature matches). POST is a message or an
event: verified (``signature``, and ``msg_signature`` in safe mode), decrypted (the current EncodingAESKey,
then the previous one), parsed (defusedxml before any XML parser; XML or JSON) by ``wechat.push``, then
recorded once in ``inbound_messages`` (a retry of the same MsgId, or of the same sender + CreateTime for
an event, writes nothing) and committed; the answer is ``success`` at once. The work is done later by the
jobs (``jobs.messages``), so WeChat's 5 seconds are never at risk and nothing is lost if this process dies
after answering. A bad signature is 403, a malformed or hostile body 400, a body too large 413: nothing is
written. WeChat retries any answer that is not a 2xx.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request

from models import MessageSource, db, utcnow
from models.messages import record_message
from web.errors import busy_text, is_busy
from web.openapi import WECHAT_FAIL, documented
from wechat.push import MAX_PUSH_BYTES, PushRejected, PushSettings, read_push, verify_url

log = logging.getLogger(__name__)
bp = Blueprint("push", __name__, url_prefix="/wechat")

TEXT = {"text/plain": {"schema": {"type": "string"}}}
# the app's own guards (NUL in the query, an unknown path) answer in WeChat's JSON under /wechat
REFUSED = {**TEXT, **WECHAT_FAIL["content"]}
SIGNED_QUERY = [
    {"name": name, "in": "query", "required": name != "echostr", "schema": {"type": "string"}}
    for name in ("signature", "timestamp", "nonce", "echostr")
]
PUSH_DOC = {
    "tags": ["wechat"],
    "responses": {
        "200": {"description": "`success` (recorded, or already recorded), or the echostr", "content": TEXT},
        "4XX": {
            "description": "refused: bad signature (403), malformed or hostile (400), too large (413), "
            "push not configured (404); nothing written",
            "content": REFUSED,
        },
        "503": {"description": "database busy; WeChat retries", "content": REFUSED},
    },
}


def push_settings(source: str) -> PushSettings | None:
    """The push settings of ``oa`` or ``mp``; None when its token is not configured."""
    cfg, side = current_app.config, source.upper()
    token = cfg.get(f"WECHAT_{side}_PUSH_TOKEN")
    if not token:
        return None
    appid = cfg.get("WECHAT_OA_APPID" if source == MessageSource.OA else "WECHAT_APPID") or ""
    return PushSettings(
        token=token,
        appid=appid,
        aes_key=cfg.get(f"WECHAT_{side}_ENCODING_AES_KEY"),
        previous_aes_key=cfg.get(f"WECHAT_{side}_ENCODING_AES_KEY_PREVIOUS"),
    )


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _body() -> bytes:
    if request.content_length is not None and request.content_length > MAX_PUSH_BYTES:
        raise PushRejected("TOO_LARGE", f"body larger than {MAX_PUSH_BYTES} bytes", http_status=413)
    raw = request.stream.read(MAX_PUSH_BYTES + 1)
    if len(raw) > MAX_PUSH_BYTES:
        raise PushRejected("TOO_LARGE", f"body larger than {MAX_PUSH_BYTES} bytes", http_status=413)
    return raw


def _check_fresh(args: dict[str, str]) -> None:
    """After the signature: a push whose signed timestamp is further than ``WECHAT_PUSH_MAX_AGE_SECONDS`` from our
    clock is a replay (WeChat's plain signature does not cover the body; its retries come within seconds)."""
    try:
        signed = int(args.get("timestamp") or "")
    except ValueError:
        raise PushRejected("STALE", "the signed timestamp is not a number of seconds", http_status=403) from None
    if abs(utcnow().timestamp() - signed) > current_app.config["WECHAT_PUSH_MAX_AGE_SECONDS"]:
        raise PushRejected("STALE", "the signed timestamp is too old (or in the future)", http_status=403)


@bp.route("/<any(oa, mp):source>/push", methods=["GET", "POST"])
@documented(
    summary="WeChat message push (GET: URL check; POST: a message or event)", parameters=SIGNED_QUERY, **PUSH_DOC
)
def push(source: str) -> Response:
    """WeChat's message push for the official account (``oa``) or the mini-program (``mp``)."""
    settings = push_settings(source)
    if settings is None:
        return _text(f"message push for {source} is not configured", 404)
    args = request.args.to_dict()
    try:
        if request.method == "GET":
            return _text(verify_url(settings.token, args))
        message = read_push(settings, args, _body())
        _check_fresh(args)
    except PushRejected as exc:
        log.warning("push refused", extra={"source": source, "reason": exc.reason})
        return _text(exc.reason, exc.http_status or 400)
    try:
        new = record_message(
            source,
            message.dedupe_key(source),
            message.msg_type,
            message.event,
            message.from_user,
            message.as_dict(),
        )
        db.session.commit()
    except Exception as exc:
        db.session.rollback()
        if is_busy(exc):
            return busy_text()
        raise
    if not new:
        log.info("push already recorded", extra={"source": source, "msg_type": message.msg_type})
    return _text("success")
