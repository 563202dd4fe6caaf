"""The WeCom robot's callback end to end (web/wecom_bot.py) and chat bindings (challenges/bindings.py).

Callbacks are built as WeCom builds them (``wechat.wecom.build_callback`` under the app's own token and key);
the game is the real one (``challenges``), reached through :class:`challenges.bot.GameOps` with each call
recorded; people hold real rebate balances and bind through the real code flow; money is asserted in the ledger.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from challenges import bindings, bot
from models import BotCallback, Challenge, ChatBinding, ChatBindingCode, Transport, db, utcnow
from tests.challenge_helpers import cash, fund, staked
from web.wecom_bot import bot_settings
from wechat import wecom
from wechat.push import new_aes_key


class RecordingOps(bot.GameOps):
    """The real game, each call recorded: for tests about the transport (what reached the game, and how often)."""

    def __init__(self):
        self.calls = []

    def create_challenge(self, creator_id, spec, now, *, group=None):
        self.calls.append(("create", creator_id, spec.kind, spec.days, spec.stake, group))
        return super().create_challenge(creator_id, spec, now, group=group)

    def join_challenge(self, challenge_id, user_id, now):
        self.calls.append(("join", challenge_id, user_id))
        return super().join_challenge(challenge_id, user_id, now)


@pytest.fixture
def ops(monkeypatch):
    recording = RecordingOps()
    monkeypatch.setattr(bot, "OPS", recording)
    return recording


def person(make_user, name: str, fen: int = 0):
    """A user called ``name`` holding ``fen`` of earlier rebates (committed)."""
    user = make_user()
    user.nickname = name
    if fen:
        fund(user.id, fen)
    db.session.commit()
    return user


@pytest.fixture
def robot(app, client):
    settings = bot_settings()

    def say(userid, content, *, chatid="", msgid=None, timestamp=None, settings_=None):
        message = wecom.text_message(settings.bot_id, userid, content, chatid=chatid, msgid=msgid)
        built = wecom.build_callback(settings_ or settings, message, timestamp=timestamp)
        response = client.post(
            "/wechat/wecom/bot", query_string=built.args, data=built.body, content_type="application/json"
        )
        if response.status_code == 200 and response.data:
            return response, wecom.open_reply(settings, response.get_json())["stream"]["content"]
        return response, None

    return say


def bind(client, user_headers, robot, user, userid):
    _, text = robot(userid, "绑定")
    code = text.split("：", 1)[1].split("\n", 1)[0]
    response = client.post("/api/v1/me/chat-bindings", json={"code": code}, headers=user_headers(user))
    assert response.status_code == 201, response.get_json()
    return code


def counts():
    return tuple(
        db.session.execute(select(func.count()).select_from(t)).scalar_one()
        for t in (BotCallback, ChatBinding, ChatBindingCode, Challenge)
    )


def test_url_check(client, app):
    args = wecom.build_handshake(bot_settings(), "echo-9")
    assert client.get("/wechat/wecom/bot", query_string=args).data == b"echo-9"


def test_two_friends_start_and_join_a_step_challenge_in_a_group(client, user_headers, make_user, robot, ops):
    alice, bob = person(make_user, "Alice", 20_00), person(make_user, "Bob", 10_00)
    bind(client, user_headers, robot, alice, "alice")
    bind(client, user_headers, robot, bob, "bob")
    _, text = robot("alice", "@挑战机器人 发起步数挑战 3天 每人5元", chatid="g1")
    challenge = db.session.execute(select(Challenge)).scalar_one()
    assert f"#{challenge.id} 步数挑战 3天 每人5元（报名中）" in text and f"加入 {challenge.id}" in text
    assert (challenge.creator_id, challenge.group_transport, challenge.group_id) == (alice.id, "wecom", "g1")
    assert (challenge.kind, challenge.days, challenge.stake, challenge.stake_source) == ("steps", 3, 5_00, "balance")
    assert (cash(alice.id), staked(alice.id)) == (15_00, 5_00)  # the creator's stake reserved at once
    _, text = robot("bob", "@挑战机器人 加入", chatid="g1")  # the group's latest
    assert f"你已加入 #{challenge.id}" in text and ops.calls[-1] == ("join", challenge.id, bob.id)
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)
    _, again = robot("bob", "加入", chatid="g1")  # joining twice: one participation, one reservation
    assert f"你已加入 #{challenge.id}" in again and (cash(bob.id), staked(bob.id)) == (5_00, 5_00)
    assert db.session.get(Challenge, challenge.id).participants == 2
    _, text = robot("bob", "@挑战机器人 排行榜", chatid="g1")
    assert f"#{challenge.id} 排行榜" in text and "Alice" in text and "Bob" in text
    _, text = robot("bob", "我的挑战")
    assert f"#{challenge.id} 步数挑战 3天 每人5元（报名中）" in text
    _, text = robot("alice", f"排行榜 {challenge.id}")
    assert "Alice" in text and "Bob" in text


def test_a_replayed_msgid_gets_the_first_answer_and_changes_nothing(client, user_headers, make_user, robot, ops):
    alice = person(make_user, "Alice", 20_00)
    bind(client, user_headers, robot, alice, "alice")
    _, first = robot("alice", "发起步数挑战 3天 每人5元", chatid="g1", msgid="msg-1")
    before, money = counts(), (cash(alice.id), staked(alice.id))
    assert money == (15_00, 5_00)
    response, again = robot("alice", "发起步数挑战 3天 每人5元", chatid="g1", msgid="msg-1")
    assert response.status_code == 200 and again == first
    assert len([c for c in ops.calls if c[0] == "create"]) == 1 and counts() == before
    assert (cash(alice.id), staked(alice.id)) == money


def test_forged_signature_stale_timestamp_and_huge_body_are_refused_and_nothing_changes(client, app, robot, ops):
    before = counts()
    settings = bot_settings()
    forged = wecom.BotSettings(settings.token, new_aes_key(), bot_id=settings.bot_id)
    assert robot("alice", "绑定", settings_=forged)[0].status_code == 400  # signed right, another key: undecryptable
    wrong_token = wecom.BotSettings("otherToken", settings.aes_key, bot_id=settings.bot_id)
    assert robot("alice", "绑定", settings_=wrong_token)[0].status_code == 403
    assert robot("alice", "绑定", timestamp=int(time.time()) - 3600)[0].status_code == 403
    built = wecom.build_callback(settings, wecom.text_message(settings.bot_id, "alice", "帮助"))
    huge = client.post(
        "/wechat/wecom/bot", query_string=built.args, data=b"{" + b" " * 70000 + b"}", content_type="application/json"
    )
    assert huge.status_code == 413
    bad = client.post("/wechat/wecom/bot", query_string=built.args, data=b"<xml/>", content_type="application/json")
    assert bad.status_code == 400
    unsigned = client.post("/wechat/wecom/bot", data=built.body, content_type="application/json")
    assert unsigned.status_code == 403
    assert counts() == before and ops.calls == []


def test_unconfigured_robot_is_404(client, app):
    app.config["WECOM_BOT_TOKEN"] = None
    assert client.post("/wechat/wecom/bot", data=b"{}").status_code == 404


def test_unknown_command_unbound_speaker_and_wrong_chat_type(client, user_headers, make_user, robot, ops):
    before = counts()
    _, text = robot("alice", "@挑战机器人 你好", chatid="g1")
    assert "没看懂" in text and "例如" in text
    _, text = robot("alice", "@挑战机器人 加入 3", chatid="g1")
    assert "还没有绑定" in text and "私聊" in text
    _, text = robot("alice", "@挑战机器人 发起步数挑战 3天 每人5元", chatid="g1")
    assert "还没有绑定" in text
    _, text = robot("alice", "@挑战机器人 绑定", chatid="g1")
    assert "私聊" in text and "绑定码：" not in text
    assert db.session.execute(select(func.count()).select_from(ChatBindingCode)).scalar_one() == 0
    assert ops.calls == [] and counts()[1:] == before[1:]


def test_a_stake_above_the_balance_is_refused_and_nothing_is_reserved(client, user_headers, make_user, robot, ops):
    alice = person(make_user, "Alice", 10_00)
    bind(client, user_headers, robot, alice, "alice")
    _, text = robot("alice", "发起步数挑战 3天 每人50元", chatid="g1")
    assert text.startswith("没办成") and "不足" in text
    assert (cash(alice.id), staked(alice.id)) == (10_00, 0)
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 0
    outcome = db.session.execute(select(BotCallback.outcome).order_by(BotCallback.id.desc())).scalars().first()
    assert outcome == "stake_above_held"
    # a friend who cannot cover a challenge's stake is refused joining it, and nothing is reserved
    bob = person(make_user, "Bob", 2_00)
    bind(client, user_headers, robot, bob, "bob")
    _, started = robot("alice", "发起步数挑战 3天 每人5元", chatid="g1")
    _, text = robot("bob", "加入", chatid="g1")
    assert "不足" in text and (cash(bob.id), staked(bob.id)) == (2_00, 0)
    assert db.session.execute(select(Challenge.participants)).scalar_one() == 1


def test_unknown_and_finished_challenges_are_refused(client, app, user_headers, make_user, robot, ops, time_machine):
    from jobs.challenges import settle_challenges

    alice, bob = person(make_user, "Alice", 20_00), person(make_user, "Bob", 20_00)
    bind(client, user_headers, robot, alice, "alice")
    bind(client, user_headers, robot, bob, "bob")
    _, text = robot("bob", "加入 999", chatid="g1")  # in a group: only that group's challenges
    assert "本群没有这个挑战" in text and (cash(bob.id), staked(bob.id)) == (20_00, 0)
    _, text = robot("bob", "加入 999")  # privately: no such challenge at all
    assert "没有找到这个挑战" in text and (cash(bob.id), staked(bob.id)) == (20_00, 0)
    _, text = robot("bob", "排行榜 999")  # standings: only a participant's, or the group's own
    assert "不是本群或你参加的挑战" in text
    robot("alice", "发起步数挑战 2天 每人5元", chatid="g1")
    challenge = db.session.execute(select(Challenge)).scalar_one()
    # nobody joins before the first day: the challenge is cancelled and Alice's stake released
    time_machine.move_to(challenge.join_deadline + timedelta(minutes=1))
    settle_challenges()
    db.session.expire_all()
    assert db.session.get(Challenge, challenge.id).status == "cancelled"
    assert (cash(alice.id), staked(alice.id)) == (20_00, 0)
    _, text = robot("bob", f"加入 {challenge.id}", chatid="g1")
    assert text.startswith("没办成") and "已结束" in text
    assert (cash(bob.id), staked(bob.id)) == (20_00, 0)
    _, text = robot("alice", "我的挑战")
    assert f"#{challenge.id} 步数挑战 2天 每人5元（已取消）" in text


def test_quiz_and_too_many_days_are_refused_from_chat(client, app, user_headers, make_user, robot, ops, monkeypatch):
    from challenges import ChallengeSettings

    alice = person(make_user, "Alice", 20_00)
    bind(client, user_headers, robot, alice, "alice")
    _, text = robot("alice", "发起答题挑战 1天 每人1元", chatid="g1")
    assert "小程序" in text and "答题" in text
    _, text = robot("alice", "发起步数挑战 40天 每人1元", chatid="g1")  # beyond what WeRun keeps: the parser
    assert "1 到 30" in text
    monkeypatch.setitem(app.extensions, "challenge_settings", ChallengeSettings(max_days=7))
    _, text = robot("alice", "发起步数挑战 10天 每人1元", chatid="g1")  # beyond the configured maximum: the game
    assert "挑战最多 7 天" in text
    outcomes = db.session.execute(select(BotCallback.outcome).order_by(BotCallback.id)).scalars().all()[-3:]
    assert outcomes == ["quiz_in_mini_program", "bad_days", "challenge_invalid"]
    assert (cash(alice.id), staked(alice.id)) == (20_00, 0)
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 0


# -- bindings -------------------------------------------------------------------------------------------


def test_a_code_is_used_once(client, user_headers, make_user, robot):
    alice, mallory = make_user(), make_user()
    code = bind(client, user_headers, robot, alice, "alice")
    again = client.post("/api/v1/me/chat-bindings", json={"code": code}, headers=user_headers(mallory))
    assert again.status_code == 422 and again.get_json()["error"] == "wrong_code"
    assert bindings.bound_user(bindings.Speaker(Transport.WECOM, bot_settings().bot_id, "alice")) == alice.id


def test_an_expired_code_and_a_voided_code_are_refused(client, app, user_headers, make_user, robot, time_machine):
    alice = make_user()
    _, text = robot("alice", "绑定")
    old = text.split("：", 1)[1].split("\n", 1)[0]
    _, text = robot("alice", "绑定")  # a new code voids the old one
    new = text.split("：", 1)[1].split("\n", 1)[0]
    assert client.post("/api/v1/me/chat-bindings", json={"code": old}, headers=user_headers(alice)).status_code == 422
    time_machine.move_to(utcnow() + timedelta(minutes=app.config["CHAT_BINDING_CODE_MINUTES"] + 1))
    response = client.post("/api/v1/me/chat-bindings", json={"code": new}, headers=user_headers(alice))
    assert response.status_code == 422 and response.get_json()["error"] == "wrong_code"
    assert db.session.execute(select(func.count()).select_from(ChatBinding)).scalar_one() == 0


def test_wrong_codes_are_limited(client, app, user_headers, make_user):
    mallory = make_user()
    for _ in range(app.config["CHAT_BINDING_MAX_FAILURES"]):
        answer = client.post("/api/v1/me/chat-bindings", json={"code": "ABCD-EFGH"}, headers=user_headers(mallory))
        assert answer.status_code == 422
    answer = client.post("/api/v1/me/chat-bindings", json={"code": "ABCD-EFGH"}, headers=user_headers(mallory))
    assert answer.status_code == 429 and answer.get_json()["error"] == "too_many_attempts"


def test_codes_are_hashed_at_rest(client, robot):
    _, text = robot("alice", "绑定")
    code = text.split("：", 1)[1].split("\n", 1)[0]
    stored = db.session.execute(select(ChatBindingCode.code_hash)).scalar_one()
    assert code.replace("-", "") not in stored and len(stored) == 64


def test_someone_elses_binding_cannot_be_seen_or_removed(client, user_headers, make_user, robot):
    alice, mallory = make_user(), make_user()
    bind(client, user_headers, robot, alice, "alice")
    binding_id = client.get("/api/v1/me/chat-bindings", headers=user_headers(alice)).get_json()["items"][0]["id"]
    assert client.get("/api/v1/me/chat-bindings", headers=user_headers(mallory)).get_json() == {"items": []}
    assert client.delete(f"/api/v1/me/chat-bindings/{binding_id}", headers=user_headers(mallory)).status_code == 404
    assert client.delete(f"/api/v1/me/chat-bindings/{binding_id}", headers=user_headers(alice)).status_code == 200
    assert client.get("/api/v1/me/chat-bindings", headers=user_headers(alice)).get_json() == {"items": []}


def test_a_speaker_bound_to_someone_cannot_be_bound_again(client, user_headers, make_user, robot):
    alice, bob = make_user(), make_user()
    bind(client, user_headers, robot, alice, "alice")
    _, text = robot("alice", "绑定")
    assert "已经绑定" in text and "绑定码" not in text
    del bob


# -- the chat tool ------------------------------------------------------------------------------------------


def test_a_chat_tool_group_identity_is_bound_from_data_opened_with_the_callers_session_key(
    app, client, user_headers, make_user
):
    import base64
    import os

    from models import UserIdentity
    from wechat.chattool import encrypt_open_data

    alice, mallory = make_user(appid=app.config["WECHAT_APPID"]), make_user(appid=app.config["WECHAT_APPID"])
    keys = {}
    for person in (alice, mallory):
        keys[person.id] = base64.b64encode(os.urandom(16)).decode()
        identity = db.session.execute(select(UserIdentity).where(UserIdentity.user_id == person.id)).scalar_one()
        identity.session_key = keys[person.id]
    db.session.commit()
    info = {"opengid": "G-friends", "group_openid": "go-alice", "chat_type": 1}
    encrypted, iv = encrypt_open_data(keys[alice.id], app.config["WECHAT_APPID"], info)
    body = {"encryptedData": encrypted, "iv": iv}
    answer = client.post("/api/v1/me/chat-tool/groups", json=body, headers=user_headers(alice))
    assert answer.status_code == 201 and answer.get_json()["opengid"] == "G-friends"
    again = client.post("/api/v1/me/chat-tool/groups", json=body, headers=user_headers(alice))
    assert again.status_code == 201  # idempotent
    # someone else posting alice's data: it does not open under their session key
    stolen = client.post("/api/v1/me/chat-tool/groups", json=body, headers=user_headers(mallory))
    assert stolen.status_code == 422 and stolen.get_json()["error"] == "bad_group_data"
    old, old_iv = encrypt_open_data(keys[mallory.id], app.config["WECHAT_APPID"], info, timestamp=1)
    replayed = client.post(
        "/api/v1/me/chat-tool/groups", json={"encryptedData": old, "iv": old_iv}, headers=user_headers(mallory)
    )
    assert replayed.status_code == 422
    assert db.session.execute(select(func.count()).select_from(ChatBinding)).scalar_one() == 1


# -- races ----------------------------------------------------------------------------------------------------


def test_one_code_confirmed_by_two_people_at_once_binds_one(app, client, user_headers, make_user, robot):
    from tests.concurrency import together

    people = [make_user(), make_user()]
    headers = [user_headers(p) for p in people]
    _, text = robot("alice", "绑定")
    code = text.split("：", 1)[1].split("\n", 1)[0]

    def confirm(i):
        return app.test_client().post("/api/v1/me/chat-bindings", json={"code": code}, headers=headers[i]).status_code

    statuses = sorted(together(2, confirm))
    assert statuses[0] == 201 and statuses[1] in (409, 422, 503)
    assert db.session.execute(select(func.count()).select_from(ChatBinding)).scalar_one() == 1


def test_the_same_callback_twice_at_once_runs_its_command_once(app, client, user_headers, make_user, robot, ops):
    from tests.concurrency import together

    alice = person(make_user, "Alice", 20_00)
    bind(client, user_headers, robot, alice, "alice")
    settings = bot_settings()
    built = wecom.build_callback(
        settings, wecom.text_message(settings.bot_id, "alice", "发起步数挑战 3天 每人5元", chatid="g1", msgid="race-1")
    )

    def post(_):
        return app.test_client().post("/wechat/wecom/bot", query_string=built.args, data=built.body).status_code

    assert set(together(3, post)) <= {200, 503}
    assert len([c for c in ops.calls if c[0] == "create"]) == 1
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 1
    assert (cash(alice.id), staked(alice.id)) == (15_00, 5_00)
    assert db.session.execute(select(func.count()).select_from(BotCallback)).scalar_one() == 2  # bind + race-1


def test_enter_chat_gets_a_text_welcome_and_other_events_an_empty_answer(client, app, ops):
    settings = bot_settings()
    for event, expect in (("enter_chat", "挑战机器人的命令"), ("feedback_event", None)):
        built = wecom.build_callback(settings, wecom.event_message(settings.bot_id, "alice", event))
        response = client.post("/wechat/wecom/bot", query_string=built.args, data=built.body)
        assert response.status_code == 200
        if expect is None:
            assert response.data == b""
        else:
            answer = wecom.open_reply(settings, response.get_json())
            assert answer["msgtype"] == "text" and expect in answer["text"]["content"]


def test_one_person_confirming_two_speakers_codes_at_once_gets_one_binding(app, client, user_headers, make_user, robot):
    from tests.concurrency import together

    alice = make_user()
    headers = user_headers(alice)
    codes = [robot(name, "绑定")[1].split("：", 1)[1].split("\n", 1)[0] for name in ("alice-phone", "alice-pc")]

    def confirm(i):
        return app.test_client().post("/api/v1/me/chat-bindings", json={"code": codes[i]}, headers=headers).status_code

    assert sorted(together(2, confirm)) in ([201, 409], [201, 503])  # 503: SQLite's lock wait, retried by the client
    assert db.session.execute(select(func.count()).select_from(ChatBinding)).scalar_one() == 1


@pytest.mark.parametrize(
    "where", ["userid", "content", "msgid"], ids=["a lone surrogate in the sender", "a NUL in the text", "in msgid"]
)
def test_a_signed_message_holding_text_no_database_can_store_is_refused_and_changes_nothing(client, robot, ops, where):
    before = counts()
    odd = {"userid": "al\ud800ice", "content": "帮\x00助", "msgid": "m\ud800"}[where]
    words = {"userid": "alice", "content": "帮助", "msgid": "msg-odd", where: odd}
    response, _ = robot(words["userid"], words["content"], msgid=words["msgid"])
    assert response.status_code == 400
    assert counts() == before and ops.calls == []


def test_a_robot_id_longer_than_a_binding_keeps_is_refused_and_changes_nothing(client, app, ops, monkeypatch):
    """Without ``WECOM_BOT_ID`` every robot's callback is taken: its ``aibotid`` becomes a binding's scope (64
    characters). A longer one was accepted and written (a 500 on PostgreSQL when 绑定 stored it)."""
    monkeypatch.setitem(app.config, "WECOM_BOT_ID", None)
    settings = bot_settings()
    before = counts()
    message = wecom.text_message("b" * 65, "alice", "绑定", msgid="msg-long-bot")
    built = wecom.build_callback(settings, message)
    response = client.post(
        "/wechat/wecom/bot", query_string=built.args, data=built.body, content_type="application/json"
    )
    assert response.status_code == 400
    assert counts() == before and ops.calls == []
    fits = wecom.build_callback(settings, wecom.text_message("b" * 64, "alice", "绑定", msgid="msg-bot-64"))
    answered = client.post("/wechat/wecom/bot", query_string=fits.args, data=fits.body, content_type="application/json")
    assert answered.status_code == 200 and db.session.execute(select(func.count(ChatBindingCode.id))).scalar_one() == 1
