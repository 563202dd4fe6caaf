"""Challenge commands said to the official account one to one, and the answers sent back.

``handle_oa_text`` is one of ``jobs.messages.TEXT_HANDLERS``: called in the pushed message's own transaction
(the message worker applies each once), it parses the text with the bots' one command language, runs it
for the openid's chat binding (:mod:`challenges.bot`) and writes the answer as a ``chat_replies`` row: no
WeChat call inside the transaction. A start or a join (it stakes the balance) applied more than ``STALE_COMMAND``
after it was said (retried, or requeued by an operator) is not run: the answer asks for it again.
``send_chat_replies`` (a job) claims pending answers, commits the claim, then sends each as a customer-service
text (``/cgi-bin/message/custom/send``) with no transaction open and records the outcome. A customer-service
message has no query API: one whose answer was lost is not sent again (``failed`` with the error), as with the
notices; one a crashed sender left ``sending`` is marked ``failed`` (outcome unknown) after ``STUCK_AFTER``, never
sent again (``fail_stuck_sending``, the group posts' job too).

``webhook_sender`` is the WeCom group webhook for the jobs (the daily leaderboard post): every post takes a
turn of one minute-long window per robot key, shared by every process through Redis (in-process without
it), so no robot gets more than ``WECOM_WEBHOOK_PER_MINUTE`` (≤ 20) a minute; without a turn, or on
WeCom's 130101, it raises ``WebhookBusy`` (retry later).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import case, select, update

from challenges import bindings, bot
from challenges.commands import JoinChallenge, StartChallenge, meant_as_command, parse
from jobs.messages import TEXT_HANDLERS, Claimed, said_at
from jobs.payouts import MovingWindow, job_context
from models import ChatReply, MessageSource, Transport, db, unit_of_work, utcnow
from wechat.errors import WeChatError
from wechat.messages import MessageClient
from wechat.wecom import WebhookSender

log = logging.getLogger(__name__)
BATCH = 20
STUCK_AFTER = timedelta(minutes=10)  # a send takes seconds: a row still ``sending`` after this lost its sender
# A command that stakes the person's balance (a start, a join) is run only this soon after it was said (WeChat's
# CreateTime): the worker applies a message at once, or after retries with backoff, or when an operator requeues a
# failed one, days later; a stake reserved then is one the person asked for long before (and WeChat may no longer
# deliver the answer: 45015 after 48 h). Asked again is run anew. Other commands (help, standings, bind) always run.
STALE_COMMAND = timedelta(minutes=10)
MOVES_MONEY = (StartChallenge, JoinChallenge)
OUTCOME_UNKNOWN = (
    "outcome unknown: the sender stopped between its claim and WeChat's answer; not sent again (it may have arrived)"
)


def fail_stuck_sending(model, now: datetime) -> int:
    """Rows (``ChatReply``, ``ChallengePost``) a crashed sender left ``sending`` for longer than ``STUCK_AFTER``,
    marked failed with the outcome unknown: never sent twice, and now in an operator's sight, not hidden. A sender
    still at work records its own outcome over this."""
    values = {"status": "failed", "last_error": OUTCOME_UNKNOWN}
    if model is ChatReply:  # a one-time binding code is not kept once it could not be sent
        values["text"] = case((ChatReply.secret.is_(True), bot.CODE_NOT_KEPT), else_=ChatReply.text)
    stuck = update(model).where(model.status == "sending", model.created_at < now - STUCK_AFTER).values(**values)
    done = db.session.execute(stuck.execution_options(synchronize_session=False)).rowcount
    if done:
        log.warning("sends left unfinished marked failed", extra={"table": model.__tablename__, "rows": done})
    return done


def stale_text(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    when = f"{minutes}分钟前" if minutes < 120 else f"{minutes // 60}小时前"
    return f"这条命令是{when}发的，隔得太久，为免扣错钱没有执行。还要的话请重新发送。"


def binding_settings(cfg) -> bindings.BindingSettings:
    return bindings.BindingSettings(
        secret=str(cfg["SECRET_KEY"]).encode(),
        ttl=timedelta(minutes=cfg["CHAT_BINDING_CODE_MINUTES"]),
        max_failures=cfg["CHAT_BINDING_MAX_FAILURES"],
    )


def handle_oa_text(message: Claimed, now: datetime) -> bool:
    """An official-account text: run it as a challenge command and queue the answer (True: taken; text that is
    not meant as a command — ``commands.meant_as_command`` — is left to the next handler, or ignored)."""
    cfg = current_app.config
    if message.source != MessageSource.OA or not cfg.get("WECHAT_OA_APPID"):
        return False
    content = (message.payload.get("fields") or {}).get("Content")
    if not isinstance(content, str):
        return False
    command = parse(content)
    if not meant_as_command(content, command):
        # people write to the official account for other reasons too: a letter that reads as no command, is long, or
        # only begins like one (开发票怎么开, 加入会员…) is theirs to answer; a group's robot answers it (@-mentioned)
        return False
    speaker = bindings.Speaker(Transport.OA, cfg["WECHAT_OA_APPID"], message.openid)
    ctx = bot.Context(speaker, bindings.bound_user(speaker), None)
    said = said_at(message)
    if isinstance(command, MOVES_MONEY) and now - said > STALE_COMMAND:
        reply = bot.Reply(stale_text(now - said), "stale_command")
    else:
        reply = bot.execute(command, ctx, now, binding=binding_settings(cfg))
    db.session.add(
        ChatReply(
            transport=Transport.OA, external_id=message.openid, text=reply.text, secret=reply.secret, created_at=now
        )
    )
    db.session.flush()
    log.info("official-account command answered", extra={"outcome": reply.code, "message_id": message.id})
    return True


TEXT_HANDLERS.append(handle_oa_text)


def _claim(batch: int) -> list[tuple[int, str, str]]:
    rows = db.session.execute(
        select(ChatReply)
        .where(ChatReply.status == "pending", ChatReply.transport == Transport.OA)
        .order_by(ChatReply.id)
        .limit(batch)
        .with_for_update(skip_locked=True)
    ).scalars()
    claimed = []
    for row in rows:
        row.status = "sending"
        claimed.append((row.id, row.external_id, row.text))
    return claimed


def _record(reply_id: int, error: str | None, now: datetime) -> None:
    row = db.session.get(ChatReply, reply_id)
    row.status, row.sent_at, row.last_error = ("failed", None, error[:2000]) if error else ("sent", now, None)
    if row.secret:  # a one-time binding code is kept only until it was sent (or could not be)
        row.text = bot.CODE_NOT_KEPT


def send_chat_replies(client: MessageClient | None = None, clock: Callable[[], datetime] = utcnow) -> Counter:
    """The job: send pending answers as customer-service texts, each after its claim is committed."""
    cfg = current_app.config
    if client is None:
        if not cfg.get("WECHAT_OA_APPID") or not cfg.get("WECHAT_OA_SECRET"):
            return Counter()
        wx = job_context().wechat
        client = MessageClient(
            cfg["WECHAT_OA_APPID"], cfg["WECHAT_OA_SECRET"], wx.token_store, cfg["WECHAT_API_BASE"], wx.session
        )
    outcomes: Counter = Counter()
    with unit_of_work():
        outcomes["unknown"] += fail_stuck_sending(ChatReply, clock())
        claimed = _claim(BATCH)
    for reply_id, openid, text in claimed:
        error = None
        try:
            client.send_text(openid, text)  # no transaction is open here
        except WeChatError as exc:
            error = f"{exc.code}: {exc}"
            log.warning("chat reply not sent", extra={"reply_id": reply_id, "error": error[:300]})
        with unit_of_work():
            _record(reply_id, error, clock())
        outcomes["failed" if error else "sent"] += 1
    return +outcomes


@functools.cache
def _minute_window(redis_url: str | None) -> MovingWindow:
    return MovingWindow(redis_url, window_s=60.0)


def webhook_sender(cfg, session=None, window: MovingWindow | None = None) -> WebhookSender:
    """The group webhook client with the shared 20-a-minute limit per robot key."""
    window = window or _minute_window(cfg.get("REDIS_URL"))
    per_minute = cfg["WECOM_WEBHOOK_PER_MINUTE"]

    def take_turn(key: str) -> bool:
        name = hashlib.sha256(key.encode()).hexdigest()[:32]  # the key is a credential: not in Redis as is
        return not window.try_take(f"wecom-webhook:{name}", per_minute).wait

    url = cfg["WECOM_API_BASE"].rstrip("/") + "/cgi-bin/webhook/send"
    return WebhookSender(take_turn, session or job_context().wechat.session, url)
