"""The challenge bots' own posts to groups: the daily leaderboard and the final result through each group's WeCom
webhook (:mod:`challenges.posts` decides what and keeps each post once).

One pass: queue the posts due now (a ``challenge_posts`` row per challenge, kind and Beijing day, unique), then
for each pending one: claim it (a conditional UPDATE to ``sending``) and commit, post with no transaction open
(``jobs.chat_commands.webhook_sender``: at most ``WECOM_WEBHOOK_PER_MINUTE`` a minute per robot key, shared by
every process), and record the outcome. ``WebhookBusy`` (our window full, or WeCom's 130101) leaves the post
pending for the next pass, with that robot's other posts (the other groups' posts go on); a post still waiting
once it means nothing (a leaderboard after its day) is given up at its claim (``challenges.posts``). Any other
failure marks it failed (a webhook has no query API: a post whose answer was lost is not posted again). Two
nodes, or a crash between claim and post, never post twice; a post a crash left ``sending`` is marked failed
(outcome unknown) after ten minutes.

``update_chat_tool_cards``: a chat-tool group challenge's card (:mod:`challenges.cards`) brought up to the
challenge — an activity id made at first need, then ``chattoolmsg/send`` with the phase (started / ended) and
each participant's ``group_openid`` — each card claimed and committed before WeChat is called.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from flask import current_app

from challenges import cards, posts
from jobs.chat_commands import fail_stuck_sending, webhook_sender
from jobs.payouts import job_context
from models import ChallengePost, unit_of_work, utcnow
from wechat.chattool import ChatToolClient
from wechat.errors import WeChatError
from wechat.wecom import WebhookBusy, WebhookSender

log = logging.getLogger(__name__)


def post_challenge_standings(sender: WebhookSender | None = None, clock: Callable[[], datetime] = utcnow) -> Counter:
    """The job: queue the due posts, then send each claimed one; counts of sent, busy, failed."""
    cfg = current_app.config
    outcomes: Counter = Counter()
    with unit_of_work():
        outcomes["unknown"] += fail_stuck_sending(ChallengePost, clock())
        outcomes["queued"] = posts.queue_due_posts(clock(), cfg["CHALLENGE_POST_HOUR"])
    with unit_of_work():
        if not posts.due_post_ids(limit=1):
            return +outcomes
    sender = sender or webhook_sender(cfg)
    busy: set[str] = set()  # robots whose minute is used: their posts wait, the other groups' go on
    after = 0
    while True:
        with unit_of_work():
            due = posts.due_post_ids(after=after)
        if not due:
            break
        after = due[-1]
        for post_id in due:
            with unit_of_work():
                claimed = posts.claim_post(post_id, clock())
            if claimed is None:
                continue
            key, text = claimed
            error, retry = None, False
            if key in busy:
                error, retry = "busy: its robot had no turn in this pass", True
            else:
                try:
                    sender.send_text(key, text)  # no transaction is open here
                except WebhookBusy as exc:
                    error, retry = f"{exc.code}: {exc}", True
                    busy.add(key)
                except (WeChatError, ValueError) as exc:
                    error = f"{getattr(exc, 'code', 'refused')}: {exc}"
                    log.warning("challenge post not sent", extra={"post_id": post_id, "error": error[:300]})
            with unit_of_work():
                posts.record_post(post_id, clock(), error, retry=retry)
            outcomes["busy" if retry else "failed" if error else "sent"] += 1
    return +outcomes


def update_chat_tool_cards(client: ChatToolClient | None = None, clock: Callable[[], datetime] = utcnow) -> Counter:
    """The job: update each chat-tool challenge card that is behind its challenge; counts of updated, failed."""
    cfg = current_app.config
    template = cfg.get("CHATTOOL_CARD_TEMPLATE_ID")
    outcomes: Counter = Counter()
    if not template:
        return outcomes
    with unit_of_work():
        due = cards.due_cards()
    if not due:
        return outcomes
    if client is None:
        wx = job_context().wechat
        client = ChatToolClient(
            cfg["WECHAT_APPID"], cfg["WECHAT_APP_SECRET"], wx.token_store, cfg["WECHAT_API_BASE"], wx.session
        )
    for challenge_id in due:
        with unit_of_work():
            work = cards.claim_card(challenge_id, clock(), cfg["WECHAT_APPID"])
        if work is None:
            continue
        activity, error = None, None
        try:  # no transaction is open here
            activity_id = work.activity_id
            if activity_id is None:
                made, expires = client.create_activity_id(openid=work.creator_openid)
                activity, activity_id = (made, datetime.fromtimestamp(expires, UTC)), made
            client.update_card(activity_id, work.state, template, work.members)
        except WeChatError as exc:
            error = f"{exc.code}: {exc}"
            log.warning("chat-tool card not updated", extra={"challenge_id": challenge_id, "error": error[:300]})
        with unit_of_work():
            cards.record_card(work, clock(), activity=activity, error=error)
        outcomes["failed" if error else "updated"] += 1
    return outcomes
