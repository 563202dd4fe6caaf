"""A group's daily leaderboard and result, posted to its WeCom webhook (challenges/posts.py, jobs/challenge_posts.py).

The webhook is set in the group with ``设置推送`` by a bound member (key encrypted, never echoed); the job posts
each running challenge's standings once per Beijing day from ``CHALLENGE_POST_HOUR`` and the result once after
settlement, through the simulator's webhook (20 a minute, 130101), never twice (two nodes, a busy robot).
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from challenges import record_steps
from challenges.commands import SetWebhook, parse
from challenges.posts import fit
from jobs.challenge_posts import post_challenge_standings
from jobs.challenges import settle_challenges
from models import Challenge, ChallengePost, GroupWebhook, db
from tests.challenge_helpers import DAY1, DAY2, DAY3, NOW, at_beijing, cash, staked
from tests.test_wecom_bot import bind, ops, person, robot  # noqa: F401 - the robot, the real game
from wechat.wecom import WebhookSender

KEY = "693a91f6-7aaa-4bc4-97a0-0ec2b1fa5aaa"
URL = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={KEY}"


def sim_posts(app) -> list[dict]:
    posts = app.extensions["wechat"].simulator.webhook_posts.values()
    return sorted(posts, key=lambda p: p["at"])


def count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.fixture
def friends(app, client, user_headers, make_user, robot, time_machine):  # noqa: F811
    time_machine.move_to(NOW)
    alice, bob = person(make_user, "Alice", 20_00), person(make_user, "Bob", 10_00)
    bind(client, user_headers, robot, alice, "alice")
    bind(client, user_headers, robot, bob, "bob")
    return alice, bob


def test_the_webhook_is_set_in_the_group_encrypted_and_never_echoed(app, friends, robot, make_user):  # noqa: F811
    alice, bob = friends
    _, said = robot("alice", f"@挑战机器人 设置推送 {URL}", chatid="g1")
    assert "已设置本群的排行榜推送" in said and KEY not in said
    row = db.session.execute(select(GroupWebhook)).scalar_one()
    assert (row.transport, row.group_id, row.key, row.set_by) == ("wecom", "g1", KEY, alice.id)
    stored = db.session.execute(text("select key from group_webhooks")).scalar_one()
    assert KEY not in stored  # encrypted at rest
    # someone else in the group cannot redirect the group's posts; the one who set it can
    _, said = robot("bob", "设置推送 11111111-2222-3333-4444-555555555555", chatid="g1")
    assert "只有设置推送的人" in said and db.session.execute(select(GroupWebhook.key)).scalar_one() == KEY
    _, said = robot("alice", "设置推送 11111111-2222-3333-4444-555555555555", chatid="g1")
    assert "已更换" in said and "1111" not in said
    _, said = robot("alice", "关闭推送", chatid="g1")
    assert "已关闭" in said and count(GroupWebhook) == 0


@pytest.mark.parametrize(
    "said, code",
    [
        ("设置推送 https://evil.example.com/cgi-bin/webhook/send?key=" + KEY, "bad_webhook"),
        ("设置推送 http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=" + KEY, "bad_webhook"),
        ("设置推送 https://qyapi.weixin.qq.com/cgi-bin/other?key=" + KEY, "bad_webhook"),
        ("设置推送 https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=a&key=" + KEY, "bad_webhook"),
        ("设置推送", "bad_webhook"),
        ("设置推送 short", "bad_webhook"),
    ],
)
def test_a_bad_webhook_is_refused_and_nothing_stored(app, friends, robot, said, code):  # noqa: F811
    _, reply = robot("alice", said, chatid="g1")
    assert "webhook" in reply and KEY not in reply and count(GroupWebhook) == 0


def test_the_webhook_only_in_a_group_and_only_for_the_bound(app, friends, robot):  # noqa: F811
    _, said = robot("alice", f"设置推送 {KEY}")
    assert "群里" in said and count(GroupWebhook) == 0
    _, said = robot("carol", f"设置推送 {KEY}", chatid="g1")
    assert "还没有绑定" in said and count(GroupWebhook) == 0


def test_parse_keeps_the_key_out_of_repr():
    command = parse(f"设置推送 {URL}")
    assert command == SetWebhook(KEY) and KEY not in repr(command)
    assert parse("ＷＥＢＨＯＯＫ　" + KEY) == SetWebhook(KEY)  # full-width


def play(app, robot, friends, time_machine):  # noqa: F811
    alice, bob = friends
    robot("alice", f"设置推送 {URL}", chatid="g1")
    robot("alice", "发起步数挑战 2天 每人5元", chatid="g1")
    robot("bob", "加入", chatid="g1")
    challenge = db.session.execute(select(Challenge)).scalar_one()
    time_machine.move_to(at_beijing(DAY1, 9))
    settle_challenges()  # joining closed: running
    db.session.expire_all()
    assert db.session.get(Challenge, challenge.id).status == "running"
    return challenge


def test_one_leaderboard_a_day_and_one_result(app, friends, robot, time_machine):  # noqa: F811
    alice, bob = friends
    challenge = play(app, robot, friends, time_machine)
    assert post_challenge_standings() == {}  # before the posting hour
    time_machine.move_to(
        at_beijing(
            DAY1,
            20,
        )
    )
    assert post_challenge_standings() == {"queued": 1, "sent": 1}
    assert post_challenge_standings() == {}  # once a day
    (first,) = sim_posts(app)
    assert first["key"] == KEY and first["msgtype"] == "text"
    assert f"【今日排行】#{challenge.id} 步数挑战 2天 每人5元（进行中）" in first["content"]
    assert "第 1/2 天" in first["content"] and "Alice" in first["content"] and "Bob" in first["content"]
    time_machine.move_to(at_beijing(DAY2, 21))
    assert post_challenge_standings()["sent"] == 1 and len(sim_posts(app)) == 2
    # the steps arrive, the challenge settles: its result, once
    morning = at_beijing(DAY3, 8)
    time_machine.move_to(morning)
    record_steps(alice.id, [(DAY1, 12_000), (DAY2, 9_000)], morning)
    record_steps(bob.id, [(DAY1, 8_000), (DAY2, 7_000)], morning)
    db.session.commit()
    settle_challenges()
    assert post_challenge_standings() == {"queued": 1, "sent": 1}
    assert post_challenge_standings() == {}
    result = sim_posts(app)[-1]["content"]
    assert f"【挑战结果】#{challenge.id}" in result and "（已结算）" in result
    assert "1. Alice  21000" in result and "胜" in result and "Bob → Alice：5元红包" in result
    assert (cash(alice.id), staked(alice.id)) == (20_00, 0)
    statuses = db.session.execute(select(ChallengePost.kind, ChallengePost.status).order_by(ChallengePost.id)).all()
    assert statuses == [("daily", "sent"), ("daily", "sent"), ("final", "sent")]


def test_a_busy_robot_leaves_the_post_for_the_next_pass(app, friends, robot, time_machine):  # noqa: F811
    play(app, robot, friends, time_machine)
    time_machine.move_to(at_beijing(DAY1, 20))
    session = app.extensions["wechat"].session
    url = app.config["WECOM_API_BASE"].rstrip("/") + "/cgi-bin/webhook/send"
    busy = WebhookSender(lambda key: False, session, url)  # our minute window is used up
    assert post_challenge_standings(sender=busy) == {"queued": 1, "busy": 1}
    assert db.session.execute(select(ChallengePost.status)).scalar_one() == "pending" and sim_posts(app) == []
    assert post_challenge_standings() == {"sent": 1} and len(sim_posts(app)) == 1


def test_a_group_without_a_webhook_gets_no_post(app, friends, robot, time_machine):  # noqa: F811
    play(app, robot, friends, time_machine)
    robot("alice", "关闭推送", chatid="g1")
    time_machine.move_to(at_beijing(DAY1, 20))
    assert post_challenge_standings() == {} and count(ChallengePost) == 0


def test_two_nodes_post_once(app, friends, robot, time_machine):  # noqa: F811
    from tests.concurrency import together

    play(app, robot, friends, time_machine)
    time_machine.move_to(at_beijing(DAY1, 20))
    together(2, lambda i: post_challenge_standings(), app=app)
    assert len(sim_posts(app)) == 1 and count(ChallengePost) == 1


def test_a_long_leaderboard_is_cut_to_2048_bytes():
    rows = [f"{i}. 很长的名字很长的名字很长的名字  {i * 1000}（已计 3 天）" for i in range(1, 200)]
    out = fit(["【今日排行】#1 步数挑战"], rows, ["发送「排行榜 1」随时查看。"])
    assert len(out.encode()) <= 2048 and out.endswith("随时查看。") and "…另有" in out
