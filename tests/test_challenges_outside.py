"""Friends' challenges tried from outside: a confused user's stake typed oddly, a cheating friend group
(area P probe). Money is held and returned exactly once; a stake is read whole or refused."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from challenges import bot, join_challenge
from challenges.bindings import Speaker
from challenges.commands import Mistake, StartChallenge, parse
from models import Challenge, db
from tests.challenge_helpers import NOW, cash, fund, staked


@pytest.mark.parametrize(
    "text",
    [
        "发起步数挑战 3天 每人-5元",  # a minus sign: 5 yuan was reserved
        "发起步数挑战 3天 每人 −5元",  # U+2212 minus
        "发起步数挑战 3天 每人－5元",  # full-width hyphen-minus
        "发起步数挑战 3天 每人负五元",  # "minus five yuan" in words
        "发起步数挑战 3天 每人5-10元",  # a range: 10 yuan was reserved
        "发起步数挑战 3天 每人1/2元",  # half a yuan? 2 yuan was reserved
        "发起步数挑战 3天 每人1e3元",  # 1000 yuan? 3 yuan was reserved
        "发起步数挑战 3天 每人x5元",
        "发起步数挑战 3天 ¥-5元",
        "start steps 3 days 2+3 yuan",  # 3 yuan was reserved
    ],
)
def test_a_stake_with_a_sign_operator_or_letter_glued_to_it_is_refused_not_read_in_part(text):
    found = parse(text)
    assert isinstance(found, Mistake) and found.code == "bad_stake", found


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("发起步数挑战 3天 rmb5", 5_00),  # rmb is a unit, not a letter glued to the amount
        ("发起步数挑战 3天 ¥5", 5_00),
        ("start steps 3 days 5 yuan", 5_00),
        ("发起步数挑战3天每人5元", 5_00),
        ("发起步数挑战 3天 每人 5 元", 5_00),
        ("发起步数挑战 3天 输的人负责5元", 5_00),  # 负 of 负责 (is responsible for) is no sign
    ],
)
def test_ordinary_stakes_are_still_read(text, fen):
    found = parse(text)
    assert isinstance(found, StartChallenge) and found.stake_fen == fen, found


def test_a_minus_stake_said_to_the_bot_reserves_nothing(make_user):
    """Said in a group, ``每人-5元`` reserved 5 yuan of the speaker's balance for a challenge they never meant."""
    speaker = make_user().id
    fund(speaker, 10_00)
    db.session.commit()
    ctx = bot.Context(Speaker("wecom", "bot", "confused"), speaker, "group-A")
    reply = bot.execute(parse("发起步数挑战 3天 每人-5元"), ctx, NOW)
    db.session.commit()  # as the callback does
    assert reply.code == "bad_stake", reply
    assert (cash(speaker), staked(speaker)) == (10_00, 0)
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 0


@pytest.mark.parametrize(
    "text",
    [
        "发起步数挑战 -3天 每人5元",
        "发起步数挑战 1e3天 每人5元",
        "发起步数挑战 负三天 每人5元",
        "start steps 2-3 days 5 yuan",
    ],
)
def test_days_with_a_sign_or_letter_glued_to_them_are_refused_not_read_in_part(text):
    """``-3天`` started a 3-day challenge, ``1e3天`` (a thousand?) a 3-day one, ``2-3 days`` a 3-day one."""
    found = parse(text)
    assert isinstance(found, Mistake) and found.code == "bad_days", found


def test_a_late_join_racing_the_cancellation_for_too_few_never_strands_a_stake(app, make_user):
    """A web node whose clock is a second behind takes Bob's join as the jobs node cancels the challenge (only its
    creator by the deadline): either Bob is in and the challenge runs, or it is cancelled and Bob reserved nothing."""
    from datetime import timedelta

    from challenges import AlreadySettled, ChallengeClosed, ChallengeSpec, create_challenge, settle_challenge
    from challenges.days import day_start
    from tests.challenge_helpers import DAY1
    from tests.concurrency import together

    alice, bob = make_user().id, make_user().id
    fund(alice, 10_00)
    fund(bob, 10_00)
    cid = create_challenge(alice, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW).id
    db.session.commit()
    deadline = day_start(DAY1)

    def work(i: int):
        if i == 0:
            return join_challenge(cid, bob, deadline - timedelta(seconds=1)).id
        return settle_challenge(cid, deadline)

    joined, settled = together(2, work, app=app)
    challenge = db.session.get(Challenge, cid)
    db.session.refresh(challenge)
    if isinstance(joined, Exception):
        assert isinstance(joined, (AlreadySettled, ChallengeClosed)), joined
        assert challenge.status == "cancelled" and settled is True
        assert (cash(alice), staked(alice), cash(bob), staked(bob)) == (10_00, 0, 10_00, 0)
    else:
        # the settlement started it, or skipped it while the join held its row (the next pass starts it): neither
        # settles nor cancels it (started, a challenge is settled once its data decide it)
        assert challenge.status in ("open", "running") and challenge.participants == 2, (challenge.status, settled)
        assert settled is False
        assert (staked(alice), staked(bob)) == (3_00, 3_00)


def test_the_same_start_sent_twice_is_one_challenge_and_one_stake(make_user):
    """A person whose first message looked lost sends it again (a new message id: WeChat's own retries are recorded
    once): one challenge, one stake reserved, and the reply names it. Later, or in another group, it is a new one."""
    from datetime import timedelta

    speaker = make_user().id
    fund(speaker, 20_00)
    db.session.commit()
    in_a = bot.Context(Speaker("wecom", "bot", "keen"), speaker, "group-A")
    start = parse("发起步数挑战 3天 每人5元")
    first = bot.execute(start, in_a, NOW)
    db.session.commit()
    again = bot.execute(start, in_a, NOW + timedelta(seconds=30))
    db.session.commit()
    assert first.code == "ok" and again.code == "already_started", (first, again)
    assert (staked(speaker), db.session.execute(select(func.count()).select_from(Challenge)).scalar_one()) == (5_00, 1)
    in_b = bot.Context(Speaker("wecom", "bot", "keen"), speaker, "group-B")
    assert bot.execute(start, in_b, NOW + timedelta(seconds=40)).code == "ok"  # another group's game
    assert bot.execute(start, in_a, NOW + timedelta(minutes=3)).code == "ok"  # later: meant
    db.session.commit()
    assert (staked(speaker), db.session.execute(select(func.count()).select_from(Challenge)).scalar_one()) == (15_00, 3)
