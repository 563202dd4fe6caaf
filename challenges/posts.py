"""What the bots post to a group on their own: the daily leaderboard and the final result through the group's
WeCom webhook (the shell's job sends; this module decides what, when, and keeps it once).

- A group's webhook is set with ``设置推送`` by a bound member in that group (:func:`set_group_webhook`): the
  first one sets it; replacing or clearing it is for whoever set it or a creator of one of the group's
  challenges (someone else could otherwise send the group's leaderboard elsewhere). The key is stored
  encrypted and never shown.
- :func:`queue_due_posts` writes ``pending`` rows, unique per (challenge, kind, Beijing day): each running
  challenge of a group with a webhook once a day from ``post_hour`` (Beijing), and each settled one once.
- :func:`claim_post` moves one ``pending`` row to ``sending`` by a conditional UPDATE and returns the key and
  the text; the caller commits before calling WeCom and records the outcome with :func:`record_post` (WeCom
  busy: ``pending`` again; any other failure: ``failed``, never posted twice). A post still pending when it
  means nothing any more (a daily leaderboard after its day, a result after ``FINAL_WITHIN``) is ``failed``
  at its claim: a robot busy for ever does not keep it for ever.

Functions flush only.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, exists, select, update

from challenges import bot
from challenges.days import today
from challenges.errors import ChallengeError
from challenges.standings import Standings, standings
from models import (
    Challenge,
    ChallengePost,
    ChallengeStatus,
    GroupWebhook,
    PostKind,
    StakeSource,
    Transport,
    db,
)
from models.sql import insert_ignoring

MAX_POST_BYTES = 2048  # a WeCom webhook text
FINAL_WITHIN = timedelta(days=3)  # a result older than this (a webhook set later) is not posted
BATCH = 20  # the posts one pass sends: at most one robot's minute


class WebhookRefused(ChallengeError):
    code, kind, zh, en = "webhook_refused", "conflict", "只有设置推送的人或本群挑战的发起人能更改推送", "not yours"


def set_group_webhook(group: tuple[str, str], key: str | None, user_id: int, now: datetime) -> str:
    """Set, replace or clear (``key`` None) a group's webhook: ``set``, ``replaced``, ``cleared`` or ``none``."""
    transport, group_id = group
    if transport != Transport.WECOM:
        raise ChallengeError("only a WeCom group posts through a webhook", zh="只有企业微信群能设置推送")
    row = db.session.execute(
        select(GroupWebhook).where(GroupWebhook.transport == transport, GroupWebhook.group_id == group_id)
    ).scalar_one_or_none()
    if row is None:
        if key is None:
            return "none"
        new = insert_ignoring(
            GroupWebhook.__table__,
            [{"transport": transport, "group_id": group_id, "key": key, "set_by": user_id, "set_at": now}],
            ("transport", "group_id"),
            ("id",),
        )
        if new:
            return "set"
        row = db.session.execute(  # set meanwhile by someone else: the rules for replacing apply
            select(GroupWebhook).where(GroupWebhook.transport == transport, GroupWebhook.group_id == group_id)
        ).scalar_one()
    if row.set_by != user_id and not _creates_in(group, user_id):
        raise WebhookRefused()
    if key is None:
        db.session.delete(row)
        db.session.flush()
        return "cleared"
    row.key, row.set_by, row.set_at = key, user_id, now
    db.session.flush()
    return "replaced"


def _creates_in(group: tuple[str, str], user_id: int) -> bool:
    return (
        db.session.execute(
            select(Challenge.id)
            .where(
                Challenge.group_transport == group[0], Challenge.group_id == group[1], Challenge.creator_id == user_id
            )
            .limit(1)
        ).first()
        is not None
    )


# -- which posts are due ------------------------------------------------------------------------------------


def _with_webhook():
    return exists().where(
        GroupWebhook.transport == Challenge.group_transport, GroupWebhook.group_id == Challenge.group_id
    )


def _not_posted(kind: str, day):
    return ~exists().where(
        ChallengePost.challenge_id == Challenge.id, ChallengePost.kind == kind, ChallengePost.day == day
    )


def queue_due_posts(now: datetime, post_hour: int) -> int:
    """Write the posts due now (``pending``, once per challenge, kind and day); how many were new."""
    day = today(now)
    rows = []
    if (now + timedelta(hours=8)).hour >= post_hour:  # Beijing is UTC+8 all year
        running = db.session.execute(
            select(Challenge.id).where(
                Challenge.status == ChallengeStatus.RUNNING,
                Challenge.group_transport == Transport.WECOM,
                _with_webhook(),
                _not_posted(PostKind.DAILY, day),
            )
        ).scalars()
        rows += [{"challenge_id": cid, "kind": PostKind.DAILY, "day": day} for cid in running]
    settled = db.session.execute(
        select(Challenge.id, Challenge.settled_at).where(
            Challenge.status == ChallengeStatus.SETTLED,
            Challenge.settled_at >= now - FINAL_WITHIN,
            Challenge.group_transport == Transport.WECOM,
            _with_webhook(),
            ~exists().where(and_(ChallengePost.challenge_id == Challenge.id, ChallengePost.kind == PostKind.FINAL)),
        )
    ).all()
    rows += [{"challenge_id": cid, "kind": PostKind.FINAL, "day": today(at)} for cid, at in settled]
    for row in rows:
        row.update(status="pending", attempts=0, created_at=now)
    return len(insert_ignoring(ChallengePost.__table__, rows, ("challenge_id", "kind", "day"), ("id",)))


def due_post_ids(limit: int = BATCH, after: int = 0) -> list[int]:
    """Pending posts after id ``after`` (page on with the last id: a busy robot's posts stay pending and first)."""
    return list(
        db.session.execute(
            select(ChallengePost.id)
            .where(ChallengePost.status == "pending", ChallengePost.id > after)
            .order_by(ChallengePost.id)
            .limit(limit)
        ).scalars()
    )


def _stale(post: ChallengePost, challenge: Challenge, now: datetime) -> str | None:
    """Why a post that never had its robot's turn is no longer worth posting: a daily leaderboard once its Beijing
    day has passed (the next day has its own), a result older than ``FINAL_WITHIN``. None: still worth it."""
    if post.kind == PostKind.DAILY and post.day < today(now):
        return "not posted: its day passed without a turn of the group's robot"
    if post.kind == PostKind.FINAL and challenge.settled_at is not None and challenge.settled_at < now - FINAL_WITHIN:
        return "not posted: the result is too old, its robot never had a turn"
    return None


def claim_post(post_id: int, now: datetime) -> tuple[str, str] | None:
    """Take a pending post (None: taken elsewhere, or its group no longer has a webhook): the key and the text."""
    taken = db.session.execute(
        update(ChallengePost)
        .where(ChallengePost.id == post_id, ChallengePost.status == "pending")
        .values(status="sending", attempts=ChallengePost.attempts + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        return None
    post = db.session.get(ChallengePost, post_id)
    challenge = db.session.get(Challenge, post.challenge_id)
    stale = _stale(post, challenge, now)
    if stale is not None:  # a busy robot's post is not retried for ever, nor posted when it means nothing
        post.status, post.last_error = "failed", stale
        db.session.flush()
        return None
    key = db.session.execute(
        select(GroupWebhook.key).where(
            GroupWebhook.transport == challenge.group_transport, GroupWebhook.group_id == challenge.group_id
        )
    ).scalar_one_or_none()
    if key is None:
        post.status, post.last_error = "failed", "the group's webhook was removed"
        db.session.flush()
        return None
    table = standings(challenge.id, now)
    text = final_text(challenge, table) if post.kind == PostKind.FINAL else daily_text(challenge, table, now)
    db.session.flush()
    return key, text


def record_post(post_id: int, now: datetime, error: str | None = None, *, retry: bool = False) -> None:
    post = db.session.get(ChallengePost, post_id)
    if retry:
        post.status, post.last_error = "pending", (error or "busy")[:2000]
    elif error:
        post.status, post.last_error = "failed", error[:2000]
    else:
        post.status, post.sent_at, post.last_error = "sent", now, None
    db.session.flush()


# -- the texts ------------------------------------------------------------------------------------------------


def fit(head: list[str], rows: list[str], tail: list[str] = (), limit: int = MAX_POST_BYTES) -> str:
    """``head``, as many ``rows`` as fit in ``limit`` bytes (then ``…另有 N 人``), and ``tail``."""
    size = lambda lines: len("\n".join(lines).encode())  # noqa: E731
    kept: list[str] = []
    for i, row in enumerate(rows):
        more = len(rows) - i - 1
        note = [f"…另有 {more} 人"] if more else []
        if size(head + kept + [row] + note + list(tail)) > limit:
            kept.append(f"…另有 {len(rows) - i} 人")
            break
        kept.append(row)
    text = "\n".join(head + kept + list(tail))
    return text.encode()[:limit].decode(errors="ignore")


def _row(row) -> str:
    return f"{row.rank}. {row.name or f'用户{row.user_id}'}  {row.total}（已计 {row.days_counted} 天）"


def daily_text(challenge: Challenge, table: Standings, now: datetime) -> str:
    day_number = min(max((today(now) - challenge.start_day).days + 1, 1), challenge.days)
    head = [f"【今日排行】{bot.describe(challenge)}", f"第 {day_number}/{challenge.days} 天"]
    tail = [f"发送「排行榜 {challenge.id}」随时查看。"]
    if not table.rows:
        return fit(head, ["还没有人的成绩。"], tail)
    return fit(head, [_row(r) for r in table.rows], tail)


def final_text(challenge: Challenge, table: Standings) -> str:
    names = {r.user_id: r.name or f"用户{r.user_id}" for r in table.rows}
    words = {"won": "胜", "lost": "负", "tied": "平"}
    head = [f"【挑战结果】{bot.describe(challenge)}"]
    rows = [_row(r) + (f" {words.get(r.result, '')}" if r.result else "") for r in table.rows]
    prizes = (challenge.outcome or {}).get("prizes") or []
    unit = "积分" if challenge.stake_source == StakeSource.POINTS else "元红包"
    tail = []
    for p in prizes[:10]:
        amount = p["amount"] if challenge.stake_source == StakeSource.POINTS else bot.yuan_text(int(p["amount"]))
        payer = "赞助商" if p.get("from") is None else names.get(p["from"], f"用户{p['from']}")
        tail.append(f"{payer} → {names.get(p['to'], '用户' + str(p['to']))}：{amount}{unit}")
    if not prizes:
        tail.append(_no_prize(challenge, table))
    return fit(head, rows, tail)


def _no_prize(challenge: Challenge, table: Standings) -> str:
    """Why a settled challenge lists no prize, in words true of it: nobody lost, or someone lost and nothing was
    paid (a share under one fen, a banned winner, a sponsor's refusal); a sponsor challenge had no stakes."""
    lost = any(r.result == "lost" for r in table.rows)
    if challenge.stake_source == StakeSource.SPONSOR:
        return "赞助奖金没有发出。" if lost else "没有输赢，没有发奖金。"
    return "没有发出奖励，挑战金已退回。" if lost else "没有输赢，挑战金已退回。"
