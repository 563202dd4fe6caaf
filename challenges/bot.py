"""Running a parsed command for a speaker: the one place every transport (WeCom robot, official-account chat,
chat tool) turns a :mod:`challenges.commands` value into the game's operations and a reply.

The game is reached through one seam, :class:`Ops` (the real one, :class:`GameOps`, resolves the
``challenges`` package's functions when first called; tests pass a fake). Rules of the bot itself:

- ``帮助`` works for anyone; every other command needs the speaker bound to a user (:mod:`challenges.bindings`),
  else the reply says how to bind;
- ``绑定`` is answered with a code only in a 1:1 chat: in a group everyone would see it;
- in a group, ``加入`` without a number joins the group's one open challenge (with several open it asks which:
  joining the newest would stake in a game the person may not mean), ``排行榜`` shows the latest;
- a refusal of the game (``ChallengeError``: stake above the balance, someone else's challenge, closed…) is
  answered with its safe message, and nothing else is done (the command runs in a savepoint, rolled back on a
  refusal: a challenge whose creator cannot cover the stake is not left behind).

Functions only flush: the transport's handler commits once, after ``execute`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy import select

from challenges import bindings
from challenges.commands import (
    KIND_NAMES,
    Command,
    JoinChallenge,
    Kind,
    ListMine,
    Mistake,
    RequestBinding,
    SetWebhook,
    ShowHelp,
    ShowStandings,
    StartChallenge,
    help_text,
    yuan_text,
)
from models import StakeSource, User, db

MAX_LISTED = 10


@dataclass(frozen=True)
class Reply:
    text: str
    code: str = "ok"  # "ok", or why nothing was done (tests, logs)
    secret: bool = False  # a one-time binding code: sent to the speaker, never stored as it is

    @property
    def ok(self) -> bool:
        return self.code == "ok"

    @property
    def kept(self) -> str:
        """What may be stored of the reply (the callback's record, an outbox row once sent)."""
        return CODE_NOT_KEPT if self.secret else self.text


CODE_NOT_KEPT = "（一次性绑定码已发给本人，不保存）"


@dataclass(frozen=True)
class Context:
    """Who speaks, where: their binding (``user_id`` None: unbound) and the group (None: a 1:1 chat)."""

    speaker: bindings.Speaker
    user_id: int | None
    group_id: str | None = None

    @property
    def in_group(self) -> bool:
        return self.group_id is not None

    @property
    def group(self) -> tuple[str, str] | None:
        return (str(self.speaker.transport), self.group_id) if self.group_id else None


class Ops(Protocol):
    """The game's operations the bot uses (the ``challenges`` package's public functions)."""

    error: type[Exception]  # ChallengeError: ``code`` and a safe message

    def spec(self, kind: Kind, days: int, stake_fen: int) -> Any: ...
    def create_challenge(self, creator_id: int, spec: Any, now: datetime, *, group: tuple[str, str] | None) -> Any: ...
    def join_challenge(self, challenge_id: int, user_id: int, now: datetime) -> Any: ...
    def standings(self, challenge_id: int, now: datetime) -> Any: ...
    def challenges_of(self, user_id: int) -> Sequence[Any]: ...
    def group_challenges(self, transport: str, group_id: str) -> Sequence[Any]: ...


class GameOps:
    """The real game: ``challenges.create_challenge`` and friends, resolved at the first call (the game's package
    imports nothing of the bot, and the bot never runs before the app is built)."""

    @property
    def _game(self):
        import challenges

        return challenges

    @property
    def error(self) -> type[Exception]:
        return self._game.ChallengeError

    def spec(self, kind: Kind, days: int, stake_fen: int) -> Any:
        """A stake from the rebate balance (what a chat command can say); a quiz needs its questions, which a chat
        message cannot carry: it is started in the mini-program."""
        game = self._game
        if kind == Kind.QUIZ:
            raise game.ChallengeInvalid(
                "a quiz challenge is started in the mini-program, with its questions",
                zh="答题挑战需要题目，请在小程序里发起",
                code="quiz_in_mini_program",
            )
        try:
            return game.ChallengeSpec(kind=str(kind), days=days, stake=stake_fen)
        except ValidationError as exc:
            problem = "; ".join(str(e["msg"]) for e in exc.errors())
            raise game.ChallengeInvalid(problem, zh="挑战设置有误") from None

    def create_challenge(self, creator_id, spec, now, *, group=None):
        return self._game.create_challenge(creator_id, spec, now, group=group)

    def join_challenge(self, challenge_id, user_id, now):
        return self._game.join_challenge(challenge_id, user_id, now)

    def standings(self, challenge_id, now):
        return self._game.standings(challenge_id, now)

    def challenges_of(self, user_id):
        return self._game.challenges_of(user_id)

    def group_challenges(self, transport, group_id):
        return self._game.group_challenges(transport, group_id)


OPS: Ops = GameOps()  # the one indirection: tests replace it (or pass ``ops``)


# -- describing ----------------------------------------------------------------------------------------

STATUS_WORDS = {"open": "报名中", "running": "进行中", "settled": "已结算", "cancelled": "已取消"}


def stake_text(challenge: Any) -> str:
    """What each person stakes, in the challenge's own unit: ``每人5元`` / ``每人50积分`` / ``奖金20元（赞助）``."""
    source = str(getattr(challenge, "stake_source", StakeSource.BALANCE))
    if source == StakeSource.SPONSOR:
        return f"奖金{yuan_text(int(getattr(challenge, 'prize_fen', 0) or 0))}元（赞助）"
    stake = int(getattr(challenge, "stake", 0) or 0)
    return f"每人{stake}积分" if source == StakeSource.POINTS else f"每人{yuan_text(stake)}元"


def describe(challenge: Any) -> str:
    """``#12 步数挑战 3天 每人5元（进行中）``."""
    kind = str(challenge.kind)
    name = KIND_NAMES[Kind(kind)] if kind in tuple(Kind) else kind
    status = str(getattr(challenge, "status", "") or "")
    tail = f"（{STATUS_WORDS.get(status, status)}）" if status else ""
    return f"#{challenge.id} {name}挑战 {challenge.days}天 {stake_text(challenge)}{tail}"


def standings_text(challenge_id: int, standings: Any) -> str:
    rows = list(standings.rows)
    if not rows:
        return f"#{challenge_id} 还没有人的成绩。"
    lines = [f"#{challenge_id} 排行榜："]
    for row in rows[:20]:
        name = row.name or f"用户{row.user_id}"
        lines.append(f"{row.rank}. {name}  {row.total}（已计 {row.days_counted} 天）")
    return "\n".join(lines)


def how_to_bind(ctx: Context) -> str:
    where = "请先私聊我" if ctx.in_group else "请"
    return f"你还没有绑定账号。{where}发送「绑定」，拿到一次性绑定码后在小程序「我的 → 聊天绑定」里输入确认。"


# -- executing -----------------------------------------------------------------------------------------


def execute(
    command: Command | Mistake,
    ctx: Context,
    now: datetime,
    *,
    binding: bindings.BindingSettings | None = None,
    ops: Ops | None = None,
) -> Reply:
    """Run one command for ``ctx``; the reply to send back. Flushes only."""
    ops = ops or OPS
    if isinstance(command, Mistake):
        return Reply(command.reply_text(), command.code)
    if isinstance(command, ShowHelp):
        return Reply(help_text())
    if isinstance(command, RequestBinding):
        return _bind(ctx, now, binding)
    if ctx.user_id is None:
        return Reply(how_to_bind(ctx), "unbound")
    try:
        with db.session.begin_nested():  # a refusal undoes what the command began (a challenge row, a slot)
            return _run(command, ctx, ctx.user_id, now, ops)
    except ops.error as exc:
        return Reply(f"没办成：{exc}", str(getattr(exc, "code", "refused")))


def _bind(ctx: Context, now: datetime, settings: bindings.BindingSettings | None) -> Reply:
    if ctx.in_group:
        return Reply("绑定码只能私聊发给你：请私聊我发送「绑定」。", "private_only")
    if ctx.user_id is not None:
        return Reply("你已经绑定了账号。要换账号，先在小程序「我的 → 聊天绑定」里解绑。", "already_bound")
    if settings is None:
        return Reply("现在还不能绑定，请稍后再试。", "unavailable")
    code = bindings.request_code(settings, ctx.speaker, now)
    minutes = int(settings.ttl.total_seconds() // 60)
    return Reply(
        f"你的绑定码：{code}\n请在 {minutes} 分钟内打开小程序「我的 → 聊天绑定」输入它，只能用一次。"
        "不要把它发给任何人：拿到它的人能以你的身份参加挑战。",
        secret=True,
    )


def _run(command: Command, ctx: Context, user_id: int, now: datetime, ops: Ops) -> Reply:
    match command:
        case StartChallenge(kind, days, stake_fen):
            _one_at_a_time(user_id)  # a resend arriving with the first: it waits, then finds the first started
            again = _just_started(ctx, user_id, str(kind), days, stake_fen, now, ops)
            if again is not None:  # the same message sent twice (a resend on a poor network): one challenge, one stake
                return Reply(
                    f"你刚刚已经发起了这个挑战：{describe(again)}\n想参加的朋友发送「加入 {again.id}」。"
                    "要再发起一个一样的，请稍后再发。",
                    "already_started",
                )
            challenge = ops.create_challenge(user_id, ops.spec(kind, days, stake_fen), now, group=ctx.group)
            return Reply(f"挑战已发起：{describe(challenge)}\n想参加的朋友发送「加入 {challenge.id}」。")
        case JoinChallenge(challenge_id):
            open_now = _group_open(ctx, ops) if challenge_id is None else []
            if len(open_now) > 1:  # two games taking people: joining the newest would stake in one not meant
                return _which_open(open_now)
            target = challenge_id or (open_now[0].id if open_now else _group_latest(ctx, ops))
            if target is None:
                return _which(ctx, "加入")
            if ctx.in_group and target not in _group_ids(ctx, ops):  # another group's game is not this group's
                return Reply(f"本群没有这个挑战（#{target}）。", "not_this_group")
            ops.join_challenge(target, user_id, now)
            return Reply(f"你已加入 #{target}。发送「排行榜 {target}」看成绩。")
        case ShowStandings(challenge_id):
            # in a group: the group's latest only (another chat's names and totals are not this group's to see)
            target = challenge_id or (_group_latest(ctx, ops) if ctx.in_group else _my_latest(user_id, ops))
            if target is None:
                return _which(ctx, "排行榜")
            if challenge_id and not _may_see(challenge_id, ctx, user_id, ops):  # names and totals are private
                return Reply(f"#{challenge_id} 不是本群或你参加的挑战。", "not_yours")
            return Reply(standings_text(target, ops.standings(target, now)))
        case ListMine():
            mine = list(ops.challenges_of(user_id))
            if not mine:
                return Reply("你还没有参加挑战。发送「帮助」看怎么发起。")
            lines = [describe(c) for c in sorted(mine, key=lambda c: c.id, reverse=True)[:MAX_LISTED]]
            return Reply("你的挑战：\n" + "\n".join(lines))
        case SetWebhook(key):
            return _set_webhook(ctx, key, user_id, now)
    raise TypeError(f"not a command: {command!r}")


WEBHOOK_SAID = {
    "set": "已设置本群的排行榜推送：进行中的挑战每天发一次排行，结算后发结果。webhook 已加密保存，不会再显示。",
    "replaced": "已更换本群的排行榜推送地址（已加密保存，不会再显示）。",
    "cleared": "已关闭本群的排行榜推送。",
    "none": "本群没有设置排行榜推送。",
}


def _set_webhook(ctx: Context, key: str | None, user_id: int, now: datetime) -> Reply:
    """A group's webhook for its leaderboard posts (:mod:`challenges.posts`): said in that group; never echoed."""
    from challenges import posts  # posts describes challenges with this module's words

    if ctx.group is None:
        return Reply("请在要接收排行榜的企业微信群里 @我 发送「设置推送 <群机器人 webhook 地址>」。", "group_only")
    return Reply(WEBHOOK_SAID[posts.set_group_webhook(ctx.group, key, user_id, now)])


REPEAT_WINDOW = timedelta(minutes=2)  # the same start said again this soon is the same start (a resend)


def _one_at_a_time(user_id: int) -> None:
    """The speaker's row locked (as joining takes it) until the command's transaction ends: two starts of one person
    take turns, so the second reads what the first started (PostgreSQL reads committed rows only)."""
    db.session.execute(select(User.id).where(User.id == user_id).with_for_update()).first()


def _just_started(ctx: Context, user_id: int, kind: str, days: int, stake_fen: int, now: datetime, ops: Ops):
    """The challenge this speaker started in this chat less than ``REPEAT_WINDOW`` ago with the same kind, days and
    stake, or None. WeChat's own retries carry the same message id (recorded once); a person resending the message
    (the first looked lost) sends a new one, which would have started a second game and reserved a second stake."""
    group = ctx.group or (None, None)
    for c in ops.challenges_of(user_id):
        same = (
            getattr(c, "creator_id", None) == user_id
            and (getattr(c, "group_transport", None), getattr(c, "group_id", None)) == group
            and (str(getattr(c, "kind", "")), getattr(c, "days", None), getattr(c, "stake", None))
            == (kind, days, stake_fen)
        )
        created, live = getattr(c, "created_at", None), getattr(c, "status", "open") in ("open", "running")
        if same and live and created is not None and timedelta(0) <= now - created < REPEAT_WINDOW:
            return c
    return None


def _group_latest(ctx: Context, ops: Ops) -> int | None:
    if not ctx.in_group:
        return None
    found = list(ops.group_challenges(str(ctx.speaker.transport), ctx.group_id))
    return max((c.id for c in found), default=None)


def _group_open(ctx: Context, ops: Ops) -> list[Any]:
    """The group's challenges still taking people (status open), newest first; none outside a group."""
    if not ctx.in_group:
        return []
    found = ops.group_challenges(str(ctx.speaker.transport), ctx.group_id)
    return sorted((c for c in found if str(getattr(c, "status", "")) == "open"), key=lambda c: c.id, reverse=True)


def _which_open(challenges: list[Any]) -> Reply:
    """「加入」 alone is for a group with one open game (the help says so): with several, the person says which."""
    lines = [describe(c) for c in challenges[:MAX_LISTED]]
    return Reply(
        "本群有几个挑战正在报名，请说加入哪一个：\n" + "\n".join(lines) + f"\n例如「加入 {challenges[0].id}」",
        "which_challenge",
    )


def _group_ids(ctx: Context, ops: Ops) -> set[int]:
    return {c.id for c in ops.group_challenges(str(ctx.speaker.transport), ctx.group_id)} if ctx.in_group else set()


def _may_see(challenge_id: int, ctx: Context, user_id: int, ops: Ops) -> bool:
    """A challenge's standings go to its own group, or privately to one of its participants (as in the
    mini-program). In a group the answer is read by everyone there: another group's names and totals (or those of
    a game started elsewhere) are not shown in it, even when the one asking plays in that game."""
    if ctx.in_group:
        return challenge_id in _group_ids(ctx, ops)
    return challenge_id in {c.id for c in ops.challenges_of(user_id)}


def _my_latest(user_id: int, ops: Ops) -> int | None:
    return max((c.id for c in ops.challenges_of(user_id)), default=None)


def _which(ctx: Context, verb: str) -> Reply:
    if ctx.in_group:
        return Reply("这个群还没有挑战。发送「发起步数挑战 3天 每人5元」发起一个。", "no_challenge")
    return Reply(f"请说是哪个挑战，例如「{verb} 12」（发送「我的挑战」看编号）。", "which_challenge")
