"""Probes of challenges, chat commands, message push and notices as an attacker, a group member and WeChat would
send them: each test names what it guards."""

from __future__ import annotations

import pytest
import time_machine
from sqlalchemy import func, select

from jobs.challenge_posts import post_challenge_standings
from jobs.challenges import settle_challenges
from models import Challenge, ChallengePost, db
from tests.challenge_helpers import DAY1, DAY2, NOW, at_beijing, cash
from tests.test_challenges_api import STEPS, create, entries, frozen, people  # noqa: F401 - fixtures
from tests.test_wecom_bot import bind, ops, person, robot  # noqa: F401 - the robot, the real game
from wechat.wecom import WebhookSender

KEY_A = "693a91f6-7aaa-4bc4-97a0-0ec2b1fa5aaa"
KEY_B = "11111111-2222-3333-4444-555555555555"


def sim_posts(app) -> list[dict]:
    return sorted(app.extensions["wechat"].simulator.webhook_posts.values(), key=lambda p: p["at"])


def count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


# -- group posts: one busy robot never holds back the others, and a busy post does not wait forever ----------


@pytest.fixture
def two_groups(app, client, user_headers, make_user, robot, time_machine):  # noqa: F811
    """Groups g1 (robot key A) and g2 (robot key B), each with a running two-day step challenge."""
    time_machine.move_to(NOW)
    alice, bob = person(make_user, "Alice", 20_00), person(make_user, "Bob", 20_00)
    bind(client, user_headers, robot, alice, "alice")
    bind(client, user_headers, robot, bob, "bob")
    for group, key in (("g1", KEY_A), ("g2", KEY_B)):
        robot("alice", f"设置推送 {key}", chatid=group)
        robot("alice", "发起步数挑战 2天 每人5元", chatid=group)
        robot("bob", "加入", chatid=group)
    time_machine.move_to(at_beijing(DAY1, 9))
    settle_challenges()
    db.session.expire_all()
    assert [c.status for c in db.session.execute(select(Challenge)).scalars()] == ["running", "running"]
    return alice, bob


def busy_for(app, busy_key: str) -> WebhookSender:
    """The real simulator's webhook, but robot ``busy_key`` never has a turn (its minute used by others)."""
    session = app.extensions["wechat"].session
    url = app.config["WECOM_API_BASE"].rstrip("/") + "/cgi-bin/webhook/send"
    return WebhookSender(lambda key: key != busy_key, session, url)


def test_a_busy_robot_does_not_hold_back_another_groups_post(app, two_groups, time_machine):
    time_machine.move_to(at_beijing(DAY1, 20))
    sender = busy_for(app, KEY_A)
    for _ in range(3):  # however many passes: group 2's robot is free
        post_challenge_standings(sender=sender)
    sent = sim_posts(app)
    assert [p["key"] for p in sent] == [KEY_B], sent
    statuses = dict(db.session.execute(select(ChallengePost.challenge_id, ChallengePost.status)).all())
    assert sorted(statuses.values()) == ["pending", "sent"]


def test_a_daily_post_that_never_had_a_turn_is_not_posted_on_a_later_day(app, two_groups, time_machine):
    time_machine.move_to(at_beijing(DAY1, 20))
    post_challenge_standings(sender=busy_for(app, KEY_A))  # group 1's robot busy all of day 1
    time_machine.move_to(at_beijing(DAY2, 20))
    post_challenge_standings()
    # day 2: one leaderboard per group; day 1's stale one is given up, not posted as a second "today"
    posts_a = [p for p in sim_posts(app) if p["key"] == KEY_A]
    assert len(posts_a) == 1 and "第 2/2 天" in posts_a[0]["content"], posts_a
    rows = db.session.execute(
        select(ChallengePost.day, ChallengePost.status, ChallengePost.last_error).order_by(ChallengePost.id)
    ).all()
    stale = [r for r in rows if r.day == DAY1 and r.status != "sent"]
    assert len(stale) == 1 and stale[0].status == "failed" and "day" in stale[0].last_error, rows
    assert count(ChallengePost) == 4 and not [r for r in rows if r.status == "pending"]


# -- a challenge's words are one visible line: no direction marks, no line breaks, not only invisible marks --------


@pytest.mark.parametrize(
    "title",
    [
        "\u202e\u200b",  # a direction override and a zero-width space: nothing visible
        "赢家\u202e元05付支",  # the rest shown reversed to the others
        "第一行\n第二行",  # a line break in a one-line WeChat "thing"
        "\u200b\u200d\u2060",
        "a\x07b",
    ],
)
def test_a_title_with_control_or_direction_marks_is_refused_and_nothing_moves(client, people, title):
    (alice, headers) = people["alice"]
    before = (entries(), cash(alice.id), count(Challenge))
    r = create(client, headers, body={**STEPS, "title": title}, key="k-odd")
    assert r.status_code == 422, r.json
    assert (entries(), cash(alice.id), count(Challenge)) == before


def test_a_quiz_question_or_choice_with_a_line_break_is_refused(client, people):
    (alice, headers) = people["alice"]
    quiz = {"kind": "quiz", "stake": 1_00, "start_day": DAY1.isoformat()}
    bad_prompt = [{"prompt": "1+1?\n(答案是 2)", "choices": ["1", "2"], "answer": 1}]
    bad_choice = [{"prompt": "1+1?", "choices": ["1", "\u202e2"], "answer": 1}]
    for n, questions in enumerate((bad_prompt, bad_choice)):
        r = create(client, headers, body={**quiz, "questions": questions}, key=f"k-q{n}")
        assert r.status_code == 422, r.json
    assert count(Challenge) == 0


def test_an_emoji_title_is_taken(client, people):
    (alice, headers) = people["alice"]
    r = create(client, headers, body={**STEPS, "title": "👨\u200d👩\u200d👧 一家人走路"}, key="k-emoji")
    assert r.status_code == 201 and r.json["title"] == "👨\u200d👩\u200d👧 一家人走路"


# -- a challenge that cannot settle holds its people's stakes: an operator is told, once --------------------------


def test_a_challenge_that_cannot_settle_is_retried_and_an_operator_told_once(app, make_user, monkeypatch):
    import challenges.settle as settle_module
    from challenges import ChallengeSpec, create_challenge, join_challenge, record_steps
    from models import Alert, ChallengePrize, RedPacket
    from tests.challenge_helpers import fund, staked

    alice, bob = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    cid = create_challenge(alice.id, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW).id
    join_challenge(cid, bob.id, NOW)
    after = at_beijing(DAY1, 30)
    record_steps(alice.id, [(DAY1, 9_000)], after)
    record_steps(bob.id, [(DAY1, 1_000)], after)
    db.session.commit()
    real = settle_module.issue_packet

    def broken(*args, **kwargs):
        raise RuntimeError("the packet store is down")

    monkeypatch.setattr(settle_module, "issue_packet", broken)
    with time_machine.travel(after, tick=False):
        assert settle_challenges()["failed"] == 1
        assert settle_challenges()["failed"] == 1  # still failing: retried, told once
    db.session.expire_all()
    alerts = db.session.execute(select(Alert.kind, Alert.subject)).all()
    assert alerts == [("challenge_not_settled", f"challenge {cid}")], alerts
    assert db.session.get(Challenge, cid).status == "open" and count(ChallengePrize) == count(RedPacket) == 0
    assert (staked(alice.id), staked(bob.id)) == (3_00, 3_00)  # held, nothing half done

    monkeypatch.setattr(settle_module, "issue_packet", real)
    with time_machine.travel(after, tick=False):
        assert settle_challenges()["settled"] == 1
    db.session.expire_all()
    assert (cash(alice.id), staked(alice.id), cash(bob.id), staked(bob.id)) == (5_00, 0, 2_00, 3_00)
    assert count(ChallengePrize) == count(RedPacket) == 1


# -- a JSON push holding NaN or Infinity is a malformed body (400, nothing written), not a 500 WeChat retries ------


@pytest.mark.parametrize("odd", [float("nan"), float("inf"), float("-inf")])
def test_a_json_push_with_nan_or_infinity_is_a_400_and_writes_nothing(client, odd):
    from tests.test_message_push import push, rows

    text = {"ToUserName": "gh_mp", "FromUserName": "oMP-bob", "CreateTime": 1_700_000_000, "MsgType": "text"}
    response = push(client, "mp", {**text, "Content": "排行榜", "Score": odd, "MsgId": 8}, json_format=True)
    assert response.status_code == 400 and response.text == "MALFORMED_JSON", response.text
    assert rows() == []
    good = push(client, "mp", {**text, "Content": "排行榜", "Score": 10**40, "MsgId": 9}, json_format=True)
    assert good.status_code == 200 and good.text == "success" and len(rows()) == 1


# -- a long letter to the official account is not answered by the challenge bot --------------------------------


def test_a_long_message_to_the_official_account_is_left_to_people(app, client, ops):  # noqa: F811
    from jobs.messages import apply_messages
    from models import ChatReply, InboundMessage, MessageStatus
    from tests.test_message_push import push
    from tests.test_oa_chat_commands import text_push

    letter = "你好，我想咨询一下上周的订单退款问题。" * 40  # 760 characters: a letter, no command
    assert push(client, "oa", text_push(letter, "3001")).data == b"success"
    apply_messages()
    assert db.session.execute(select(InboundMessage.status)).scalar_one() == MessageStatus.IGNORED
    assert db.session.execute(select(ChatReply)).first() is None and ops.calls == []
    # a command is still answered
    push(client, "oa", text_push("帮助", "3002"))
    apply_messages()
    assert len(db.session.execute(select(ChatReply)).all()) == 1
