"""Simulated WeCom: the intelligent robot speaking to our callback, the group webhook, and the chat tool.

- ``robot_say(name, content, group=None)``: member ``sim-wecom-<name>`` says ``content`` to the robot (in group
  ``sim-group-<group>`` as an @-mention, or 1:1), signed and encrypted as WeCom does (``wechat.wecom``), POSTed
  to the app's ``/wechat/wecom/bot`` at once; our encrypted answer is opened and its signature checked. Both
  are remembered (``robot_chats``) and shown on ``/_sim/``.
- ``webhook_send(key, body)``: ``/cgi-bin/webhook/send`` (WeCom's host, served under ``/_sim/wecom``): text ≤
  2,048 bytes, markdown ≤ 4,096, at most 20 a minute per key (errcode 130101 beyond); posts remembered.
- ``create_activity_id`` / ``send_chattool_message``: the chat tool's dynamic-message API, remembered.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import requests

from wechat.sim.errors import SimError
from wechat.sim.store import Collection
from wechat.wecom import BotSettings, build_callback, open_reply, text_message

WECOM_USER, WECOM_GROUP = "sim-wecom-", "sim-group-"
WEBHOOK_PER_MINUTE = 20
RobotPost = Callable[[str, dict[str, str], bytes], tuple[int, bytes]]


def requests_robot_post(timeout_s: float = 5.0) -> RobotPost:
    session = requests.Session()

    def post(url: str, args: dict[str, str], body: bytes) -> tuple[int, bytes]:
        answer = session.post(
            url, params=args, data=body, headers={"Content-Type": "application/json"}, timeout=timeout_s
        )
        return answer.status_code, answer.content

    return post


class RobotMixin:
    store: Any
    lock: Any
    _robot_seq = itertools.count(1)
    robot_url: str | None = None
    robot_settings: BotSettings | None = None
    robot_post: RobotPost | None = None
    mp_appid: str = ""  # the mini-program's appid (WeRun data's watermark)

    def configure_robot(self, url: str, settings: BotSettings, post: RobotPost | None = None) -> None:
        self.robot_url, self.robot_settings, self.robot_post = url, settings, post

    @property
    def robot_chats(self) -> Collection:
        return self.store.collection("robot_chats")

    @property
    def webhook_posts(self) -> Collection:
        return self.store.collection("webhook_posts")

    @property
    def chattool_messages(self) -> Collection:
        return self.store.collection("chattool_messages")

    def robot_say(self, name: str, content: str, group: str | None = None) -> dict[str, Any]:
        """What the member said and the robot's answer: ``{status, reply}`` (reply None when refused or empty)."""
        settings = self.robot_settings
        if settings is None or not self.robot_url:
            raise SimError(200, "40001", "the robot's callback is not configured")
        chatid = WECOM_GROUP + group if group else ""
        said = f"@挑战机器人 {content}" if group else content
        message = text_message(settings.bot_id or "sim-bot", WECOM_USER + name, said, chatid=chatid)
        built = build_callback(settings, message)
        status, body = (self.robot_post or requests_robot_post())(self.robot_url, built.args, built.body)
        reply = None
        if status == 200 and body.strip():
            answer = open_reply(settings, json.loads(body))
            reply = (answer.get("stream") or {}).get("content") or (answer.get("text") or {}).get("content")
        record = {"name": name, "group": group, "said": content, "status": status, "reply": reply, "at": time.time()}
        with self.lock:
            self.robot_chats[f"{int(time.time() * 1000)}-{next(self._robot_seq)}"] = record
        return record

    def webhook_send(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        if not key:
            raise SimError(200, "93000", "invalid webhook url")
        kind = body.get("msgtype")
        content = (body.get(kind) or {}).get("content") if kind in ("text", "markdown") else None
        if not isinstance(content, str) or not content:
            raise SimError(200, "40008", "invalid message type")
        if len(content.encode()) > (2048 if kind == "text" else 4096):
            raise SimError(200, "45002", "content exceed max length")
        now = time.time()
        with self.lock:
            recent = [p for p in self.webhook_posts.values() if p["key"] == key and p["at"] > now - 60]
            if len(recent) >= WEBHOOK_PER_MINUTE:
                raise SimError(200, "130101", "send to group msg freq out of limit")
            self.webhook_posts[f"{int(now * 1000)}-{next(self._robot_seq)}"] = {
                "key": key,
                "msgtype": kind,
                "content": content,
                "at": now,
            }
        return {"errcode": 0, "errmsg": "ok"}

    def create_activity_id(self, body: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "errcode": 0,
            "activity_id": "sim-activity-" + secrets.token_hex(8),
            "expiration_time": int(time.time()) + 86400,
        }

    def send_chattool_message(self, body: dict[str, Any]) -> dict[str, Any]:
        activity, participants = body.get("activity_id"), body.get("participator_info_list")
        if not isinstance(activity, str) or not activity.startswith("sim-activity-"):
            raise SimError(200, "47003", "invalid activity_id")
        if not isinstance(participants, list) or not all(
            isinstance(p, dict) and p.get("group_openid") for p in participants
        ):
            raise SimError(200, "47003", "invalid participator_info_list")
        if body.get("version_type") not in ("release", "trial", "develop"):
            raise SimError(200, "47003", "invalid version_type")
        with self.lock:
            self.chattool_messages[f"{int(time.time() * 1000)}-{next(self._robot_seq)}"] = {**body, "at": time.time()}
        return {"errcode": 0, "errmsg": "ok"}
