"""Probe 17: WeChat message push, the WeCom robot and the challenge games driven by chat commands."""

from __future__ import annotations

from challenges import ChallengeSpec, bot, create_challenge, join_challenge
from challenges.bindings import Speaker
from models import db
from tests.challenge_helpers import DAY1, NOW, fund


def _people(make_user, n: int, fen: int = 10_00) -> list[int]:
    ids = []
    for i in range(n):
        u = make_user()
        u.nickname = f"person{i}"
        fund(u.id, fen)
        ids.append(u.id)
    db.session.commit()
    return ids


def _say(command, user_id, group):
    return bot.execute(command, bot.Context(Speaker("wecom", "bot", f"u{user_id}"), user_id, group), NOW)


def test_a_participant_cannot_post_another_groups_leaderboard_into_this_group(make_user):
    """In a group a numbered 排行榜 must name that group's own challenge (docs §17): the answer goes to everyone in
    the group, and the names and totals of group A's game are not group B's to read, even when the one asking
    plays in it (privately they may ask)."""
    a, b = _people(make_user, 2)
    spec = ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1)
    theirs = create_challenge(a, spec, NOW, group=("wecom", "group-A")).id
    join_challenge(theirs, b, NOW)
    mini = create_challenge(a, spec, NOW).id  # started in the mini-program: no group at all
    db.session.commit()

    for challenge_id in (theirs, mini):
        posted = _say(bot.ShowStandings(challenge_id), a, "group-B")
        assert not posted.ok and "person1" not in posted.text, posted.text
        assert _say(bot.ShowStandings(challenge_id), a, None).ok  # privately, a participant still sees it
    assert _say(bot.ShowStandings(theirs), b, "group-A").ok  # the group itself sees its own leaderboard


def test_a_signed_event_whose_fields_fit_their_limits_is_recorded_not_a_500(app, client):
    """Each field within what ``read_push`` takes (a 64-character openid and event, a card code kept to 64) builds
    a dedupe key longer than the column holds: PostgreSQL refused the insert with a 500 (WeChat retries a 500 for
    ever) instead of recording the event once."""
    import dataclasses

    from sqlalchemy import func, select

    from models import InboundMessage
    from web.push import push_settings
    from wechat.push import build_push

    fields = {
        "ToUserName": "gh_oa",
        "FromUserName": "o" * 64,
        "CreateTime": 1_700_000_000,
        "MsgType": "event",
        "Event": "e" * 64,
        "UserCardCode": "9" * 64,
    }
    with app.test_request_context():
        settings = dataclasses.replace(push_settings("oa"))
    import time

    for _ in range(2):  # WeChat's retry: recorded once
        built = build_push(settings, {**fields}, timestamp=int(time.time()))
        response = client.post("/wechat/oa/push", query_string=built.args, data=built.body)
        assert response.status_code == 200 and response.data == b"success"
    assert db.session.execute(select(func.count()).select_from(InboundMessage)).scalar_one() == 1


def test_the_same_start_sent_twice_at_once_starts_one_challenge_and_reserves_one_stake(app, make_user, monkeypatch):
    """A person resending "发起…" because the first looked lost (two messages, two msgids): the bot answers the
    second "you just started it" (§17) — also when the two arrive together, as a resend on a poor network does;
    both used to start a game, each reserving a stake."""
    import time

    from sqlalchemy import func, select

    from models import Challenge
    from tests.challenge_helpers import cash, staked
    from tests.concurrency import together

    (a,) = _people(make_user, 1, fen=20_00)
    game = bot.GameOps()

    class SlowOps(bot.GameOps):
        def create_challenge(self, creator_id, spec, now, *, group=None):
            time.sleep(0.3)  # the first is still being started when the second is read
            return game.create_challenge(creator_id, spec, now, group=group)

    monkeypatch.setattr(bot, "OPS", SlowOps())
    start = bot.StartChallenge(bot.Kind.STEPS, 3, 5_00)

    def say(_):
        return _say(start, a, "group-A").code

    codes = together(2, say, app=app)
    assert sorted(map(str, codes)) == ["already_started", "ok"], codes
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 1
    assert (cash(a), staked(a)) == (15_00, 5_00)
