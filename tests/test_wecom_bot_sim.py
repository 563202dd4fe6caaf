"""The simulator speaks WeCom (wechat/sim/robot.py): the robot's callback signed and encrypted, our answer opened;
the group webhook with its 20 a minute; the chat tool's card API."""

from __future__ import annotations

import pytest
from flask import current_app
from sqlalchemy import select

from jobs.chat_commands import webhook_sender
from models import Challenge, db
from tests.challenge_helpers import cash, fund, staked
from tests.test_wecom_bot import RecordingOps, ops  # noqa: F401 - the real game, its calls recorded
from wechat.chattool import ChatToolClient
from wechat.wecom import WebhookBusy


def sim(app):
    return app.extensions["wechat"].simulator


def test_two_members_play_through_the_simulated_robot(app, client, user_headers, make_user, ops):  # noqa: F811
    alice = make_user()
    fund(alice.id, 20_00)
    db.session.commit()
    answer = client.post("/_sim/wecom/say", json={"name": "alice", "content": "帮助", "group": "friends"}).get_json()
    assert answer["status"] == 200 and "挑战机器人的命令" in answer["reply"]
    code_reply = sim(app).robot_say("alice", "绑定")["reply"]
    code = code_reply.split("：", 1)[1].split("\n", 1)[0]
    assert client.post("/api/v1/me/chat-bindings", json={"code": code}, headers=user_headers(alice)).status_code == 201
    started = sim(app).robot_say("alice", "发起步数挑战 3天 每人5元", group="friends")
    challenge = db.session.execute(select(Challenge)).scalar_one()
    assert f"#{challenge.id} 步数挑战 3天 每人5元" in started["reply"]
    assert ops.calls[0] == ("create", alice.id, "steps", 3, 500, ("wecom", "sim-group-friends"))
    assert (cash(alice.id), staked(alice.id)) == (15_00, 5_00)
    page = client.get("/_sim/").get_data(as_text=True)
    assert "WeCom robot" in page and "发起步数挑战" in page


def test_the_simulated_webhook_takes_20_a_minute_and_our_sender_never_asks_for_more(app):
    from jobs.payouts import MovingWindow

    cfg = current_app.config
    sender = webhook_sender(cfg, window=MovingWindow(None, window_s=60.0))
    for i in range(20):
        sender.send_text("robot-key", f"排行 {i}")
    with pytest.raises(WebhookBusy) as exc:
        sender.send_text("robot-key", "one too many")
    assert exc.value.code == "LIMIT_LOCAL"  # refused by our own window: WeCom was never asked
    assert len(sim(app).webhook_posts) == 20
    # another process without the shared window: WeCom's own 130101 is a retry-later
    other = webhook_sender(cfg, window=MovingWindow(None, window_s=60.0))
    with pytest.raises(WebhookBusy) as exc:
        other.send_markdown("robot-key", "**排行**")
    assert exc.value.code == "130101" and len(sim(app).webhook_posts) == 20


def test_the_chat_tool_card_is_updated_in_the_simulator(app):
    cfg, wx = current_app.config, current_app.extensions["wechat"]
    client = ChatToolClient(
        cfg["WECHAT_APPID"], cfg["WECHAT_APP_SECRET"], wx.token_store, cfg["WECHAT_API_BASE"], wx.session
    )
    activity_id, _ = client.create_activity_id(openid="sim-openid-alice")
    client.update_card(activity_id, 1, "tmpl-challenge", [("go-alice", 1)])
    (sent,) = sim(app).chattool_messages.values()
    assert sent["activity_id"] == activity_id and sent["participator_info_list"] == [
        {"group_openid": "go-alice", "state": 1}
    ]


def test_the_simulated_phone_gives_werun_data_the_server_opens_with_the_session_key(app, client):
    from wechat.chattool import decrypt_open_data
    from wechat.sim.state import SimulatorState

    data = client.post("/_sim/werun", json={"name": "alice", "steps": [[1700000000, 12345]]}).get_json()
    opened = decrypt_open_data(
        SimulatorState.session_key("alice"), data["iv"], data["encryptedData"], app.config["WECHAT_APPID"], max_age_s=60
    )
    assert opened["stepInfoList"] == [{"timestamp": 1700000000, "step": 12345}]
    assert client.post("/_sim/werun", json={"name": "alice", "steps": "many"}).get_json()["errcode"] == 40001
