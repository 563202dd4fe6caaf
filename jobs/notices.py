"""The notices dispatcher job: claim, call WeChat with no transaction open, record (docs/architecture.md §14).

Each pass commits its claim (leases, consents taken), then for each claimed notice waits for its channel's turn
in ``NOTICE_RATE_LIMITS`` (calls per second: the moving window of the payouts dispatcher, on Redis when
``REDIS_URL`` is set, so every process shares it; in memory otherwise), calls WeChat (the shared session
refuses a call inside a transaction) and commits the answer. A notice whose channel had no turn before half
its lease is put back unsent.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from flask import current_app

from jobs.payouts import MovingWindow, job_context
from models import unit_of_work, utcnow
from notices.dispatch import Answer, ChannelName, Claimed, NoticeSettings, claim_batch, record, release
from notices.templates import Templates, load_templates
from wechat.errors import WeChatError, WeChatRateLimited
from wechat.messages import MessageClient, WeChatConsentRefused, WeChatMessageRefused

log = logging.getLogger(__name__)
RUN_SECONDS = 30.0


class Senders:
    """The two message clients over the app's WeChat wiring (shared session and token store)."""

    def __init__(self, cfg, wx, settings: NoticeSettings) -> None:
        session, store, base = wx.session, wx.token_store, cfg["WECHAT_API_BASE"]
        self.settings = settings
        self.mp = MessageClient(cfg["WECHAT_APPID"], cfg["WECHAT_APP_SECRET"], store, base, session)
        self.oa = None
        if cfg.get("WECHAT_OA_APPID") and cfg.get("WECHAT_OA_SECRET"):
            self.oa = MessageClient(cfg["WECHAT_OA_APPID"], cfg["WECHAT_OA_SECRET"], store, base, session)

    def send(self, job: Claimed) -> str:
        if job.channel == ChannelName.SUBSCRIBE:
            return self.mp.send_subscribe(
                job.touser, job.template_id, job.data, job.page, self.settings.miniprogram_state
            )
        if self.oa is None:
            raise WeChatMessageRefused("no official account configured", code="NO_OA")
        return self.oa.send_template(job.touser, job.template_id, job.data, self.settings.mp_appid, job.page)


def call(send: Callable[[Claimed], str], job: Claimed) -> tuple[Answer, str, str]:
    """One call (no database): WeChat's answer as (answer, detail, msgid)."""
    try:
        return Answer.OK, "", send(job)
    except WeChatConsentRefused as exc:
        return Answer.CONSENT_GONE, exc.message, ""
    except WeChatMessageRefused as exc:
        return Answer.REFUSED, f"{exc.code}: {exc.message}", ""
    except WeChatRateLimited as exc:
        return Answer.RETRY, f"{exc.code}: {exc.message}", ""
    except WeChatError as exc:
        # Sent again only when WeChat certainly did not send it: its own "system busy" (-1), or no connection
        # made. A read timeout, a 5xx or an unreadable answer may follow a message WeChat took: not resent.
        if exc.code == "-1" or (exc.retryable and not exc.outcome_unknown):
            return Answer.RETRY, f"{exc.code}: {exc.message}", ""
        if exc.outcome_unknown:
            return Answer.UNKNOWN, f"{exc.code}: {exc.message}", ""
        return Answer.REFUSED, f"{exc.code}: {exc.message}", ""


@functools.cache
def _window(redis_url: str | None) -> MovingWindow:
    return MovingWindow(redis_url)


def channel_limiter(rates: dict[str, int], redis_url: str | None, max_wait_s: float, appid: str = ""):
    """``take(channel) -> bool``: a turn within ``max_wait_s`` (True), or none (False: do not call)."""
    window = _window(redis_url)

    def take(channel: str) -> bool:
        deadline = time.monotonic() + max_wait_s
        while True:
            turn = window.try_take(f"notice-rate:{appid}:{channel}", max(1, int(rates.get(channel, 20))))
            if not turn.wait:
                return True
            if time.monotonic() + turn.wait > deadline:
                return False
            time.sleep(turn.wait)

    return take


def dispatch_pass(
    templates: Templates,
    settings: NoticeSettings,
    send: Callable[[Claimed], str],
    take_turn: Callable[[str], bool],
    clock: Callable[[], datetime] = utcnow,
) -> Counter:
    """One claim and its calls: each call with no transaction open, each answer committed after it."""
    outcomes: Counter = Counter()
    with unit_of_work():
        jobs, rows = claim_batch(clock(), templates, settings)
    uncalled = list(reversed(jobs))
    try:
        while uncalled:
            job = uncalled[-1]
            if not take_turn(job.channel):
                with unit_of_work():
                    release(uncalled.pop())
                outcomes["released"] += 1
                continue
            uncalled.pop()
            answer, detail, msgid = call(send, job)
            with unit_of_work():
                record(job, answer, detail, clock(), settings, msgid)
            outcomes[answer] += 1
    except Exception:
        # The pass broke (the rate window's Redis, the database): the notices not called yet are put back as they
        # were due. Left sending, their leases would lapse into "outcome unknown" and never reach WeChat.
        try:
            with unit_of_work():
                for job in uncalled:
                    release(job)
        except Exception:  # noqa: BLE001 - the database is down too: their leases lapse; the first error is raised
            log.exception(
                "notices not called could not be put back", extra={"notices": [j.notice_id for j in uncalled]}
            )
        raise
    outcomes["rows"] += rows
    return outcomes


def dispatch_notices() -> Counter:
    """The scheduled job: passes while there is work, for at most RUN_SECONDS."""
    app = current_app._get_current_object()
    cfg = app.config
    settings = NoticeSettings.from_config(cfg)
    senders = Senders(cfg, job_context(app).wechat, settings)
    take = channel_limiter(
        cfg.get("NOTICE_RATE_LIMITS") or {},
        cfg.get("REDIS_URL"),
        settings.lease.total_seconds() / 2,
        cfg["WECHAT_APPID"],
    )
    # checked at start-up by the app factory; read again here (jobs reach nothing the web wiring keeps)
    templates = load_templates(cfg.get("NOTICE_TEMPLATES"), simulator=cfg["WECHAT_MODE"] == "simulator")
    total: Counter = Counter()
    started = time.monotonic()
    while time.monotonic() - started < RUN_SECONDS:
        outcomes = dispatch_pass(templates, settings, senders.send, take)
        total.update(outcomes)
        if not outcomes["rows"]:
            break
    return total
