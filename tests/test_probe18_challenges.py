"""Probe of the challenge bots, round 18: digits of other scripts that look like a point read into a stake, and
letters to the official account that begin like a command answered by the challenge bot instead of people."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from challenges import bot
from challenges.bindings import Speaker
from challenges.commands import JoinChallenge, Mistake, StartChallenge, parse
from models import Challenge, ChatReply, db
from tests.challenge_helpers import NOW, cash, fund, staked
from tests.test_wecom_bot import ops  # noqa: F401 - the real game, its calls recorded

# -- a digit of another script is no digit of a stake -----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "发起步数挑战 3天 每人1۰5元",  # U+06F0 (extended Arabic-Indic zero) looks like a point: 1.5? 105 was read
        "发起步数挑战 3天 每人0٠5元",  # U+0660 (Arabic-Indic zero) looks like a point: 0.5? 5 was read
        "发起步数挑战 3天 每人1߀5元",  # U+07C0 (NKo zero), a dot-like mark: 105 was read
        "发起步数挑战 3天 每人5٠元",  # 5. yuan? 50 was read
        "发起步数挑战 3天 每人৫元",  # a Bengali five
    ],
)
def test_a_digit_of_another_script_in_the_stake_is_refused_not_read(text):
    """The README: a point or mark between two digits other than ``.`` is refused (``0·5元``), as are superscript
    digits; a zero of another script drawn as a dot was read as a digit, so ``1۰5元`` (seen: 1.5 yuan) was 105."""
    found = parse(text)
    assert isinstance(found, Mistake) and found.code == "bad_stake", found


def test_full_width_and_plain_digits_are_still_read():
    assert parse("发起步数挑战 ３天 每人１.５元") == StartChallenge("steps", 3, 1_50)
    assert parse("加入 １２") == JoinChallenge(12)


def test_a_dot_like_digit_said_to_the_bot_reserves_nothing(make_user):
    """Said in a group, ``每人1۰5元`` reserved 105 yuan of the speaker's balance where they saw 1.5."""
    speaker = make_user().id
    fund(speaker, 200_00)
    db.session.commit()
    ctx = bot.Context(Speaker("wecom", "bot", "confused"), speaker, "group-A")
    reply = bot.execute(parse("发起步数挑战 3天 每人1۰5元"), ctx, NOW)
    db.session.commit()  # as the callback does
    assert reply.code == "bad_stake", reply
    assert (cash(speaker), staked(speaker)) == (200_00, 0)
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 0


# -- a letter to the official account is left to people ---------------------------------------------------------


@pytest.mark.parametrize(
    "letter",
    [
        "开发票怎么开",  # how do I get an invoice: answered 「要说是哪种挑战」
        "开始退款了吗",
        "新建门店怎么弄",
        "加入会员有什么好处",  # answered 「「会员有什么好处」不是挑战编号」
        "参加活动需要什么条件",
        "报名截止了吗",
        "排名怎么算的",
        "来个阅读推荐",  # answered 「要说挑战几天」
        "绑定手机号怎么操作",  # was sent a one-time binding code
    ],
)
def test_a_letter_that_begins_like_a_command_is_left_to_people(app, client, ops, letter):  # noqa: F811
    """The README: to the official account, text that is no command is left to people (a letter, not a command).
    A customer's question beginning with 开 / 加入 / 参加 / 报名 / 排名 / 绑定 was answered by the challenge bot and
    marked done: nobody read it."""
    from jobs.messages import apply_messages
    from models import InboundMessage, MessageStatus
    from tests.test_message_push import push
    from tests.test_oa_chat_commands import text_push

    assert push(client, "oa", text_push(letter, "4001")).data == b"success"
    apply_messages()
    assert db.session.execute(select(InboundMessage.status)).scalar_one() == MessageStatus.IGNORED
    assert db.session.execute(select(ChatReply)).first() is None and ops.calls == []


@pytest.mark.parametrize(
    ("said", "answer"),
    [
        ("绑定", "绑定码"),
        ("加入 12", "还没有绑定"),
        ("加入 12号吧", "不是挑战编号"),  # a command with a mistake: answered with the example
        ("发起步数挑战 3天", "要说输的人每人出多少"),
        ("发起挑战", "要说是哪种挑战"),
        ("发起步数 3天 每人", "要说输的人每人出多少"),
        ("帮助", "挑战机器人的命令"),
    ],
)
def test_a_command_or_a_mistaken_command_to_the_official_account_is_still_answered(
    app,
    client,
    ops,  # noqa: F811
    said,
    answer,
):
    from jobs.messages import apply_messages
    from tests.test_message_push import push
    from tests.test_oa_chat_commands import text_push

    push(client, "oa", text_push(said, "4002"))
    apply_messages()
    texts = db.session.execute(select(ChatReply.text)).scalars().all()
    assert len(texts) == 1 and answer in texts[0], texts
