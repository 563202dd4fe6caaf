"""The challenge bots' own posts to groups: the daily leaderboard and the final result through each group's WeCom
webhook (:mod:`challenges.posts` decides what and keeps each post once).

One pass: queue the posts due now (a ``challenge_posts`` row per challenge, kind and Beijing day, unique), then
for each pending one: claim it (a conditional UPDATE to ``sending``) and commit, post with no transaction open
(``jobs.chat_commands.webhook_sender``: at most ``WECOM_WEBHOOK_PER_MINUTE`` a minute per robot key, shared by
every process), and record the outcome. ``WebhookBusy`` (our window full, or WeCom's 130101) leaves the post
pending for the next pass; any other failure marks it failed (a webhook has no query API: a post whose answer
was lost is not posted again). Two nodes, or a crash between claim and post, never post twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime

from flask import current_app

from challenges import posts
from jobs.chat_commands import webhook_sender
from models import unit_of_work, utcnow
from wechat.errors import WeChatError
from wechat.wecom import WebhookBusy, WebhookSender

log = logging.getLogger(__name__)


def post_challenge_standings(sender: WebhookSender | None = None, clock: Callable[[], datetime] = utcnow) -> Counter:
    """The job: queue the due posts, then send each claimed one; counts of sent, busy, failed."""
    cfg = current_app.config
    outcomes: Counter = Counter()
    with unit_of_work():
        outcomes["queued"] = posts.queue_due_posts(clock(), cfg["CHALLENGE_POST_HOUR"])
    with unit_of_work():
        due = posts.due_post_ids()
    if not due:
        return +outcomes
    sender = sender or webhook_sender(cfg)
    for post_id in due:
        with unit_of_work():
            claimed = posts.claim_post(post_id, clock())
        if claimed is None:
            continue
        key, text = claimed
        error, retry = None, False
        try:
            sender.send_text(key, text)  # no transaction is open here
        except WebhookBusy as exc:
            error, retry = f"{exc.code}: {exc}", True
        except (WeChatError, ValueError) as exc:
            error = f"{getattr(exc, 'code', 'refused')}: {exc}"
            log.warning("challenge post not sent", extra={"post_id": post_id, "error": error[:300]})
        with unit_of_work():
            posts.record_post(post_id, clock(), error, retry=retry)
        outcomes["busy" if retry else "failed" if error else "sent"] += 1
        if retry:
            break  # the robot's minute is used (or WeCom says so): the rest wait for the next pass
    return +outcomes
