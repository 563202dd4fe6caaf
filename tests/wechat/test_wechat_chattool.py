"""Chat-tool mode and open data (wechat/chattool.py): real AES keys, WeChat's HTTP through ``responses``."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import responses

from wechat.chattool import ChatToolClient, GroupEnterInfo, OpenDataRefused, decrypt_open_data, encrypt_open_data
from wechat.mp import MemoryTokenStore

APPID = "wx-test-app"


@pytest.fixture
def session_key():
    return base64.b64encode(os.urandom(16)).decode()


def test_group_enter_info_and_werun_data_open_with_the_session_key(session_key):
    encrypted, iv = encrypt_open_data(session_key, APPID, {"opengid": "G1", "group_openid": "go-alice", "chat_type": 1})
    info = GroupEnterInfo.of(decrypt_open_data(session_key, iv, encrypted, APPID, max_age_s=300))
    assert info == GroupEnterInfo("G1", "go-alice", 1)
    steps = {"stepInfoList": [{"timestamp": 1700000000, "step": 8123}]}
    encrypted, iv = encrypt_open_data(session_key, APPID, steps)
    assert decrypt_open_data(session_key, iv, encrypted, APPID)["stepInfoList"] == steps["stepInfoList"]


def test_another_key_another_app_or_an_old_watermark_is_refused(session_key):
    encrypted, iv = encrypt_open_data(session_key, APPID, {"opengid": "G1", "group_openid": "g"}, timestamp=1)
    other = base64.b64encode(os.urandom(16)).decode()
    for args in ((other, iv, encrypted, APPID), (session_key, iv, encrypted, "wx-other")):
        with pytest.raises(OpenDataRefused):
            decrypt_open_data(*args)
    with pytest.raises(OpenDataRefused, match="too old"):
        decrypt_open_data(session_key, iv, encrypted, APPID, now=time.time(), max_age_s=300)


@responses.activate
def test_activity_id_and_card_update():
    base = "https://api.example.test"
    responses.add(responses.GET, f"{base}/cgi-bin/stable_token", json={"access_token": "T", "expires_in": 7200})
    responses.add(responses.POST, f"{base}/cgi-bin/stable_token", json={"access_token": "T", "expires_in": 7200})
    responses.add(
        responses.POST,
        f"{base}/cgi-bin/message/wxopen/activityid/create",
        json={"errcode": 0, "activity_id": "A1", "expiration_time": 1700086400},
    )
    responses.add(responses.POST, f"{base}/cgi-bin/message/wxopen/chattoolmsg/send", json={"errcode": 0})
    client = ChatToolClient(APPID, "secret", MemoryTokenStore(), base)
    assert client.create_activity_id(openid="o1") == ("A1", 1700086400)
    client.update_card("A1", 1, "tmpl", [("go-alice", 1)], "trial")
    body = json.loads(responses.calls[-1].request.body)
    assert body == {
        "activity_id": "A1",
        "target_state": 1,
        "template_id": "tmpl",
        "participator_info_list": [{"group_openid": "go-alice", "state": 1}],
        "version_type": "trial",
    }


def test_the_simulator_makes_werun_data_under_the_persons_session_key():
    from wechat.sim.state import SimulatorState

    data = SimulatorState.werun_data(SimulatorState, "alice", APPID, [(1700000000, 9000)])
    opened = decrypt_open_data(SimulatorState.session_key("alice"), data["iv"], data["encryptedData"], APPID)
    assert opened["stepInfoList"] == [{"timestamp": 1700000000, "step": 9000}]
