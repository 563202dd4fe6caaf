"""The bots' command language (challenges/commands.py): Chinese first, forgiving, never crashing."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from challenges.commands import (
    MAX_DAYS,
    MAX_STAKE_FEN,
    JoinChallenge,
    Kind,
    ListMine,
    Mistake,
    RequestBinding,
    SetWebhook,
    ShowHelp,
    ShowStandings,
    StartChallenge,
    canonical,
    cn_number,
    parse,
)

STEPS_3_5 = StartChallenge(Kind.STEPS, 3, 500)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("发起步数挑战 3天 每人5元", STEPS_3_5),
        ("步数挑战 3 天 输的人 5 块", STEPS_3_5),
        ("@挑战机器人 发起步数挑战 三天 每人五块钱", STEPS_3_5),
        ("＠挑战机器人　发起步数挑战　３天　每人５元", STEPS_3_5),  # full-width everything
        ("start steps 3 days 5 yuan", STEPS_3_5),
        ("发起阅读挑战 七天 每人两块", StartChallenge(Kind.READING, 7, 200)),
        ("答题挑战 十天 ¥1.5", StartChallenge(Kind.QUIZ, 10, 150)),
        # a decimal is read whole, in digits or in words (零点三元 is 0.30 yuan, never 3 yuan)
        ("发起步数挑战 1天 每人零点三元", StartChallenge(Kind.STEPS, 1, 30)),
        ("发起步数挑战 1天 每人一点五元", StartChallenge(Kind.STEPS, 1, 150)),
        ("发起步数挑战 1天 每人3点5元", StartChallenge(Kind.STEPS, 1, 350)),
        ("发起步数挑战 1天 每人0.05元", StartChallenge(Kind.STEPS, 1, 5)),
        ("start steps 2 days 0.15 yuan", StartChallenge(Kind.STEPS, 2, 15)),
        ("发起步数挑战 3天 每人一块五", StartChallenge(Kind.STEPS, 3, 150)),  # yuan and jiao
        ("发起步数挑战 3天 每人2块5毛", StartChallenge(Kind.STEPS, 3, 250)),
        ("发起步数挑战 3天 每人5元5角", StartChallenge(Kind.STEPS, 3, 550)),
        ("发起步数挑战 每人5块 3天", StartChallenge(Kind.STEPS, 3, 500)),  # 块 then the days: not 5.3
        ("发起步数挑战，3天，每人5元", StartChallenge(Kind.STEPS, 3, 500)),
        ("发起步数挑战 3天 每人一块零五", StartChallenge(Kind.STEPS, 3, 105)),  # 块零五: 0 jiao 5 fen
        ("发起步数挑战 3天 每人两块零八", StartChallenge(Kind.STEPS, 3, 208)),
        ("发起步数挑战 3天 每人5块50", StartChallenge(Kind.STEPS, 3, 550)),
        ("发起步数挑战 3天 每人五元五", StartChallenge(Kind.STEPS, 3, 550)),
        ("发起步数挑战 3天 每人1块半", StartChallenge(Kind.STEPS, 3, 150)),
        ("发起步数挑战 3天 每人十块零五毛", StartChallenge(Kind.STEPS, 3, 1050)),
        ("发起步数挑战 每人1块5 3天", StartChallenge(Kind.STEPS, 3, 150)),  # jiao before the days
        ("加入 12.", JoinChallenge(12)),  # a full stop after the id
        ("加入12…", JoinChallenge(12)),
        ("排行榜 12.", ShowStandings(12)),
        ("加入", JoinChallenge()),
        ("@bot 加入 12", JoinChallenge(12)),
        ("加入 12 @挑战机器人", JoinChallenge(12)),
        ("参加 #７", JoinChallenge(7)),
        ("join 3", JoinChallenge(3)),
        ("排行榜", ShowStandings()),
        ("排行 十二", ShowStandings(12)),
        ("rank 4", ShowStandings(4)),
        ("我的挑战", ListMine()),
        ("mine", ListMine()),
        ("绑定", RequestBinding()),
        ("帮助", ShowHelp()),
        ("？", ShowHelp()),
        ("@机器人", ShowHelp()),
    ],
)
def test_commands_are_read_forgivingly(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("你好", "unknown_command"),
        ("步数挑战 3天", "missing_stake"),
        ("步数挑战 每人5元", "missing_days"),
        ("发起挑战 3天 5元", "missing_kind"),
        ("步数挑战 40天 5元", "bad_days"),
        ("步数挑战 1.5天 5元", "bad_days"),
        ("步数挑战 3天 5000元", "bad_stake"),
        # more than two decimals is not an amount of fen: refused, never read as its tail (0.199元 was 199元)
        ("步数挑战 3天 每人0.001元", "bad_stake"),
        ("步数挑战 3天 每人0.199元", "bad_stake"),
        ("步数挑战 3天 每人0.050元", "bad_stake"),
        ("start steps 3 days 0.150 yuan", "bad_stake"),
        ("步数挑战 3天 ¥0.001", "bad_stake"),
        ("步数挑战 3天 每人零点零零一元", "bad_stake"),
        ("步数挑战 3天 每人" + "9" * 40 + "元", "bad_stake"),
        ("步数挑战 1.05天 5元", "bad_days"),
        # digit groups and 万/千 are refused, never read in part (0,5元 was read as 5元, ¥1,000 as 1元)
        ("步数挑战 3天 每人0,5元", "bad_stake"),
        ("步数挑战 3天 每人0，5元", "bad_stake"),
        ("步数挑战 3天 每人1,000.5元", "bad_stake"),
        ("步数挑战 3天 ¥1,000", "bad_stake"),
        ("步数挑战 3天 每人3万点5元", "bad_stake"),
        ("步数挑战 3天 每人十万点五元", "bad_stake"),
        ("步数挑战 3天 每人3千元", "bad_stake"),
        # a decimal point lost or unknown is refused, never read without it (0。3元 reserved 3 yuan)
        ("发起步数挑战 1天 每人0。3元", "bad_stake"),
        ("步数挑战 3天 每人.5元", "bad_stake"),
        ("步数挑战 3天 每人0｡5元", "bad_stake"),
        ("步数挑战 3天 每人0·5元", "bad_stake"),
        ("步数挑战 3天 每人0:5元", "bad_stake"),
        ("步数挑战 3天 每人0 5元", "bad_stake"),
        ("步数挑战 3天 每人〇.5元", "bad_stake"),
        ("步数挑战 3天 每人2. 5元", "bad_stake"),
        ("步数挑战 3天 每人0٫5元", "bad_stake"),
        ("步数挑战 3天 每人5²元", "bad_stake"),  # NFKC would read 52
        ("步数挑战 3天 每人5元50分", "bad_stake"),
        # a number after 元/块 that is not the days is not guessed at (5元 2组 was read 5.20)
        ("发起步数挑战 3天 每人5元 2组", "bad_stake"),
        ("发起步数挑战 3天 5元 8点开始", "bad_stake"),
        ("发起步数挑战 3天 每人五元一次", "bad_stake"),
        ("发起步数挑战 3天 每人10元 50步", "bad_stake"),
        ("发起步数挑战 3天 每人5块 10人", "bad_stake"),
        ("start steps 5元 2 people 3 days", "bad_stake"),
        ("步数挑战 " + "1" * 40 + "天 5元", "bad_days"),
        ("步数挑战 3天 4天 5元", "ambiguous_days"),
        ("加入 abc", "bad_id"),
        ("加入 99999999999", "bad_id"),
        ("x" * 501, "too_long"),
    ],
)
def test_a_mistake_says_what_was_wrong_with_an_example(text, code):
    mistake = parse(text)
    assert isinstance(mistake, Mistake) and mistake.code == code
    assert "例如" in mistake.reply_text() and mistake.example


def test_small_chinese_numerals():
    assert [cn_number(w) for w in ("三", "十", "十五", "二十", "两百", "一百零五", "九十九")] == [
        3,
        10,
        15,
        20,
        200,
        105,
        99,
    ]
    assert cn_number("三五") is None


@given(st.text(max_size=600))
def test_parse_never_raises_on_any_text(text):
    assert parse(text) is not None


commands = st.one_of(
    st.builds(
        StartChallenge,
        st.sampled_from(list(Kind)),
        st.integers(1, MAX_DAYS),
        st.integers(1, MAX_STAKE_FEN),
    ),
    st.builds(JoinChallenge, st.none() | st.integers(1, 2**31 - 1)),
    st.builds(ShowStandings, st.none() | st.integers(1, 2**31 - 1)),
    st.just(ListMine()),
    st.just(RequestBinding()),
    st.just(ShowHelp()),
    st.builds(SetWebhook, st.none() | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{15,63}", fullmatch=True)),
)


def fullwidth(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else ("\u3000" if c == " " else c) for c in text)


@given(commands, st.sampled_from(["", "@挑战机器人 ", "@bot\u3000", "  "]), st.booleans())
def test_canonical_forms_round_trip(command, mention, wide):
    text = canonical(command)
    assert parse(text) == command
    spoken = mention + (fullwidth(text) if wide else text)
    assert unicodedata.normalize("NFKC", spoken)  # sanity
    assert parse(spoken) == command
