"""Console pages: friends' challenges (``console.challenges``, ``console.challenge``) — the list with its filters
and counts by status, and one challenge: its participants with the day grid (arrived / partial / missing /
flagged by risk), the quiz attempts, the prizes with their packets and what came back, the settlement, the
ledger entries and notices it wrote, with links into the lookup trace. Every read is
``web.challenges_admin``'s own view (no query here): merchant staff see only the challenges their merchant's
campaigns sponsor (another is the API's 404) and the people as ids.
"""

from __future__ import annotations

from flask import flash, g, request

from challenges.operations import TRANSPORTS as GROUP_TRANSPORTS
from insights.challenges import NO_GROUP
from models import ChallengeKind, ChallengeStatus, StakeSource
from web.challenges_admin import get_one_challenge, list_all_challenges
from web.console import ConsoleError, allowed, bp, day_field, invoke, page_offset, read, render

PAGE = 50
STATUSES = tuple(s.value for s in ChallengeStatus)
KINDS = tuple(k.value for k in ChallengeKind)
TRANSPORTS = (*sorted(GROUP_TRANSPORTS), NO_GROUP)
SOURCES = tuple(s.value for s in StakeSource)
FILTERS = ("status", "kind", "transport", "stake_source", "from", "user_id", "campaign_id")
WORDS = {
    "steps": "步数 Steps",
    "reading": "阅读 Reading",
    "quiz": "问答 Quiz",
    "open": "报名中 Open",
    "running": "进行中 Running",
    "settled": "已结算 Settled",
    "cancelled": "已取消 Cancelled",
    "wecom": "企业微信群 WeCom group",
    "chattool": "小程序群聊 Chat tool",
    "oa": "公众号 Official account",
    "mp": "小程序 Mini-program",
    "none": "无群 No group",
    StakeSource.BALANCE: "余额 Balance",
    StakeSource.POINTS: "积分 Points",
    StakeSource.SPONSOR: "赞助 Sponsor",
    "highest_total": "总数最高 Highest total",
    "first_to_goal": "先达目标 First to the goal",
    "loser_to_winner": "输家给赢家 Loser → winner",
    "winner_to_loser": "赢家给输家 Winner → loser",
    "won": "获胜 Won",
    "lost": "未获胜 Lost",
    "tied": "并列 Tied",
    "arrived": "已到 Arrived",
    "partial": "未完 Partial",
    "missing": "缺失 Missing",
    "flagged": "风控标记 Flagged",
}


def _offset() -> int:
    return page_offset()


@bp.route("/challenges")
def challenges():
    allowed(list_all_challenges)
    filters = {name: request.args.get(name, "").strip() for name in FILTERS}
    offset = _offset()
    query = {k: v for k, v in filters.items() if k != "from"} | {"since": day_field(filters["from"])}
    status = 200
    try:
        data = invoke(list_all_challenges, query={**query, "limit": PAGE, "offset": offset})
    except ConsoleError as exc:
        if exc.status != 422:
            raise
        problems = "; ".join(f"{field}: {problem}" for field, problem in exc.field_errors.items())
        flash(f"筛选条件有误 A filter is not valid — {problems}", "error")
        g.form_errors = {("from" if k == "since" else k): v for k, v in exc.field_errors.items()}
        data, status = None, 422
    return render(
        "console/challenges.html",
        data=data,
        filters=filters,
        args={k: v for k, v in filters.items() if v},
        others={k: v for k, v in filters.items() if v and k != "status"},
        offset=offset,
        page=PAGE,
        statuses=STATUSES,
        kinds=KINDS,
        transports=TRANSPORTS,
        sources=SOURCES,
        words=WORDS,
    ), status


@bp.route("/challenges/<int:challenge_id>")
def challenge(challenge_id: int):
    detail = read(get_one_challenge, challenge_id=challenge_id)
    return render("console/challenge.html", d=detail, c=detail["challenge"], words=WORDS)
