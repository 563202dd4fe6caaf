"""Probe of the challenges, round 19: Chinese numerals said the way people say them (一百五 is 150, not 105), and
what the bots and settlement do at the edges."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from challenges import bot
from challenges.bindings import Speaker
from challenges.commands import JoinChallenge, Mistake, StartChallenge, cn_number, parse
from models import Challenge, db
from tests.challenge_helpers import NOW, cash, fund, staked

# -- 一百五 is a hundred and fifty -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("一百五", 150),  # 一百五(十): the digit after 百 is the tens, as 一千五 is 1,500
        ("两百五", 250),
        ("一百二", 120),
        ("一百零五", 105),  # 零 says the tens are empty
        ("一百五十", 150),
        ("一百", 100),
        ("十五", 15),
        ("二十", 20),
    ],
)
def test_a_digit_after_a_hundred_is_its_tens(word, value):
    assert cn_number(word) == value


@pytest.mark.parametrize("word", ["五十五十", "二十二十", "十百", "十十"])
def test_units_that_do_not_go_down_are_no_numeral(word):
    """五十五十 (a number said twice) was read as 100, 十十 as 20: not a numeral, so the stake is refused."""
    assert cn_number(word) is None


def test_a_stake_of_one_hundred_and_fifty_is_never_read_as_one_hundred_and_five():
    """``每人一百五元`` reserved 105 yuan; the person meant 150 (said like 一块五, 1.50)."""
    assert parse("发起步数挑战 3天 每人一百五元") == StartChallenge("steps", 3, 150_00)
    assert parse("发起步数挑战 3天 每人一百二块") == StartChallenge("steps", 3, 120_00)
    found = parse("发起步数挑战 3天 每人五十五十元")
    assert isinstance(found, Mistake) and found.code in ("bad_stake", "missing_stake"), found


def test_joining_challenge_one_hundred_and_twenty_joins_that_one():
    """``加入 一百二`` joined (and staked in) challenge 102."""
    assert parse("加入 一百二") == JoinChallenge(120)


def test_a_stake_said_as_one_hundred_and_fifty_reserves_that_or_nothing(make_user):
    speaker = make_user().id
    fund(speaker, 200_00)
    db.session.commit()
    ctx = bot.Context(Speaker("wecom", "bot", "hundred"), speaker, "group-H")
    reply = bot.execute(parse("发起步数挑战 3天 每人一百五元"), ctx, NOW)
    db.session.commit()
    assert reply.ok, reply
    assert (cash(speaker), staked(speaker)) == (50_00, 150_00)
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 1


@pytest.mark.parametrize(
    "text", ["发起步数挑战 三天半 每人5元", "发起步数挑战 3天半 每人5元", "发起阅读挑战 两日半 每人5元"]
)
def test_three_and_a_half_days_are_refused_not_read_as_three(text):
    """``3.5天`` is refused (a whole number of days); ``3天半`` (the same said in words) started a 3-day challenge, as
    ``5元半`` is 5.50 yuan, not 5."""
    found = parse(text)
    assert isinstance(found, Mistake) and found.code == "bad_days", found


# -- 「加入」 in a group with two games open ---------------------------------------------------------------------


def _in_group(user_id: int, group: str = "group-J") -> bot.Context:
    return bot.Context(Speaker("wecom", "bot", f"u{user_id}"), user_id, group)


def test_join_without_a_number_asks_which_when_the_group_has_two_games_open(make_user):
    """The help says 「群里只有一个进行中的挑战时可以只说「加入」」: with Alice's 5-yuan step game and Dave's 50-yuan
    reading game both open in the group, Carol's 「加入」 staked 50 yuan in Dave's (the newest) without a word."""
    alice, dave, carol = (make_user().id for _ in range(3))
    for uid in (alice, dave, carol):
        fund(uid, 100_00)
    db.session.commit()
    steps = bot.execute(parse("发起步数挑战 3天 每人5元"), _in_group(alice), NOW)
    reading = bot.execute(parse("发起阅读挑战 3天 每人50元"), _in_group(dave), NOW)
    db.session.commit()
    assert steps.ok and reading.ok
    first, second = db.session.execute(select(Challenge.id).order_by(Challenge.id)).scalars().all()
    reply = bot.execute(JoinChallenge(), _in_group(carol), NOW)
    db.session.commit()
    assert reply.code == "which_challenge", reply
    assert f"#{first}" in reply.text and f"#{second}" in reply.text
    assert (cash(carol), staked(carol)) == (100_00, 0)  # nothing reserved until she says which
    assert bot.execute(JoinChallenge(first), _in_group(carol), NOW).ok
    db.session.commit()
    assert (cash(carol), staked(carol)) == (95_00, 5_00)


def test_join_without_a_number_joins_the_one_open_game_of_the_group(make_user):
    """One open game (an older one settled or cancelled, or none): 「加入」 still joins it, as before."""
    alice, carol = make_user().id, make_user().id
    for uid in (alice, carol):
        fund(uid, 100_00)
    db.session.commit()
    assert bot.execute(parse("发起步数挑战 3天 每人5元"), _in_group(alice), NOW).ok
    db.session.commit()
    only = db.session.execute(select(Challenge.id)).scalar_one()
    reply = bot.execute(JoinChallenge(), _in_group(carol), NOW)
    db.session.commit()
    assert reply.ok and f"#{only}" in reply.text
    assert (cash(carol), staked(carol)) == (95_00, 5_00)


# -- races ------------------------------------------------------------------------------------------------------


def test_the_same_start_resent_at_the_same_moment_is_one_challenge_and_one_stake(app, make_user):
    """The resend arriving while the first is still being run (two nodes, two message ids): one game, one stake."""
    from tests.concurrency import together

    speaker = make_user().id
    fund(speaker, 20_00)
    db.session.commit()
    start = parse("发起步数挑战 3天 每人5元")

    def say(i: int) -> str:
        return bot.execute(start, bot.Context(Speaker("wecom", "bot", "twice"), speaker, "group-R"), NOW).code

    codes = together(2, say, app=app)
    assert sorted(codes) == ["already_started", "ok"], codes
    assert (cash(speaker), staked(speaker)) == (15_00, 5_00)
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 1


def test_two_people_saying_join_alone_at_once_in_a_group_with_one_place_left(app, make_user):
    """Two friends say 「加入」 at once for the last place: one joins, the other is told it is full; the ledger moves
    one stake."""
    from challenges import ChallengeSpec, create_challenge
    from tests.concurrency import together

    alice, bob, carol = (make_user().id for _ in range(3))
    for uid in (alice, bob, carol):
        fund(uid, 10_00)
    spec = ChallengeSpec(kind="steps", days=1, stake=3_00, max_participants=2)
    cid = create_challenge(alice, spec, NOW, group=("wecom", "group-L")).id
    db.session.commit()
    people = [bob, carol]

    def say(i: int) -> str:
        return bot.execute(JoinChallenge(), _in_group(people[i], "group-L"), NOW).code

    codes = together(2, say, app=app)
    assert sorted(codes) == ["challenge_full", "ok"], codes
    assert db.session.get(Challenge, cid).participants == 2
    assert sorted([staked(bob), staked(carol)]) == [0, 3_00]
    assert sorted([cash(bob), cash(carol)]) == [7_00, 10_00]


# -- the group webhook's odd answers ----------------------------------------------------------------------------


class _Answer:
    status_code = 200

    def __init__(self, body):
        self.body = body

    def json(self):
        return self.body


class _Session:
    def __init__(self, body):
        self.body = body

    def post(self, *args, **kwargs):
        return _Answer(self.body)


@pytest.mark.parametrize("errcode", [None, [0], {"code": 0}])
def test_a_webhook_answer_with_an_errcode_that_is_no_number_is_a_wechat_error(errcode):
    """``{"errcode": null}`` raised TypeError out of the sender: the job's pass stopped there (the other groups'
    posts with it) and the post waited ten minutes in ``sending`` to be called unknown."""
    from wechat.errors import WeChatError
    from wechat.wecom import WebhookSender

    sender = WebhookSender(
        lambda key: True, _Session({"errcode": errcode, "errmsg": "?"}), "https://wecom.invalid/send"
    )
    with pytest.raises(WeChatError):
        sender.send_text("k" * 20, "排行榜")


def test_a_chat_tool_group_id_longer_than_a_binding_holds_is_refused_not_cut():
    # given: decrypted group data whose ids are longer than the binding's columns (a 500 on PostgreSQL before)
    from wechat.chattool import MAX_GROUP_OPENID, MAX_OPENGID, GroupEnterInfo, OpenDataRefused

    # then: refused whole, never cut short (two long ids sharing a start would become one group)
    with pytest.raises(OpenDataRefused):
        GroupEnterInfo.of({"opengid": "g" * (MAX_OPENGID + 1), "group_openid": "member"})
    with pytest.raises(OpenDataRefused):
        GroupEnterInfo.of({"opengid": "group", "group_openid": "m" * (MAX_GROUP_OPENID + 1)})
    assert GroupEnterInfo.of({"opengid": "g" * MAX_OPENGID, "group_openid": "m" * MAX_GROUP_OPENID}).opengid == (
        "g" * MAX_OPENGID
    )
