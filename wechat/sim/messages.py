"""Simulated subscribe messages and OA template messages (``/cgi-bin/message/subscribe/send``,
``/cgi-bin/message/template/send``) and the phone's ``wx.requestSubscribeMessage``.

A person's one-time consents are counted per openid + template: ``request_subscribe`` (the phone, after a tap)
adds one per accepted template; each subscribe send takes one, and with none left WeChat's 43101 answers. A
template message goes only to an official-account openid (``sim-oa-openid-…``: the person follows the OA),
else 43004. Field values are checked as WeChat does (thing ≤ 20 characters, …: 47003). Every message taken is
remembered and shown on ``/_sim/``.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from wechat.sim.errors import SimError
from wechat.sim.store import Collection

RULES = {"thing": 20, "number": 32, "character_string": 32, "phrase": 5, "name": 10, "amount": 11}
_KEY = re.compile(r"^([a-z_]+?)\d+$")
_TIME = re.compile(r"^\d{4}(年\d{2}月\d{2}日|-\d{2}-\d{2})( \d{2}:\d{2}(:\d{2})?)?$")
_AMOUNT = re.compile(r"^[¥￥$]?\d{1,10}(\.\d{1,2})?元?$")
OA_OPENID_PREFIX = "sim-oa-openid-"
CHOICES = frozenset({"accept", "reject", "ban", "filter"})


class MessagesMixin:
    _msgids = itertools.count(int(time.time() * 1000) % 10**9 * 1000)

    @property
    def subscribe_consents(self) -> Collection:
        """ "openid template_id" → one-time consents left."""
        return self.store.collection("subscribe_consents")

    @property
    def sent_messages(self) -> Collection:
        """msgid → {kind, touser, template_id, page, data, at}."""
        return self.store.collection("sent_messages")

    def request_subscribe(self, openid: str, tmpl_ids: list[str], choice: str = "accept") -> dict[str, Any]:
        """``wx.requestSubscribeMessage`` on the phone: the person's choice for each template (at most 5)."""
        if not openid or not isinstance(tmpl_ids, list) or not 0 < len(tmpl_ids) <= 5 or choice not in CHOICES:
            raise SimError(200, "10002", "requestSubscribeMessage:fail invalid args")
        answer: dict[str, Any] = {"errMsg": "requestSubscribeMessage:ok"}
        answer.update(self.count_consents(openid, tmpl_ids, choice))
        if choice in ("accept", "reject"):  # and WeChat tells the app's push URL, as it does after a popup
            self.push_popup(openid, [str(t) for t in tmpl_ids], choice)
        return answer

    def count_consents(self, openid: str, tmpl_ids: list[str], choice: str) -> dict[str, str]:
        """WeChat's own count of one-time consents (a send without one answers 43101)."""
        answer = {}
        with self.lock:
            for tmpl in tmpl_ids:
                key = f"{openid} {tmpl}"
                if choice == "accept":
                    self.subscribe_consents[key] = int(self.subscribe_consents.get(key) or 0) + 1
                elif choice in ("reject", "ban"):
                    self.subscribe_consents[key] = 0
                answer[str(tmpl)] = choice
        return answer

    def _check_data(self, data: Any) -> None:
        if not isinstance(data, dict) or not data:
            raise SimError(200, "47003", "argument invalid! data is empty")
        for key, item in data.items():
            value = item.get("value") if isinstance(item, dict) else None
            match = _KEY.match(str(key))
            if not isinstance(value, str) or not match:
                raise SimError(200, "47003", f"argument invalid! data.{key}.value invalid")
            kind = match.group(1)
            if kind in ("time", "date") and not _TIME.match(value):
                raise SimError(200, "47003", f"argument invalid! data.{key}.value invalid")
            if kind == "amount" and not _AMOUNT.match(value):
                raise SimError(200, "47003", f"argument invalid! data.{key}.value invalid")
            if kind in RULES and len(value) > RULES[kind]:
                raise SimError(200, "47003", f"argument invalid! data.{key}.value exceeds the limit")

    def _remember(self, kind: str, body: dict[str, Any], page: str | None) -> dict[str, Any]:
        msgid = str(next(self._msgids))
        self.sent_messages[msgid] = {
            "kind": kind,
            "touser": body.get("touser"),
            "template_id": body.get("template_id"),
            "page": page,
            "data": body.get("data"),
            "at": time.time(),
        }
        return {"errcode": 0, "errmsg": "ok", "msgid": int(msgid)}

    def send_subscribe_message(self, body: dict[str, Any]) -> dict[str, Any]:
        touser, tmpl, page = body.get("touser"), body.get("template_id"), body.get("page")
        if not touser or not tmpl:
            raise SimError(200, "47003", "argument invalid! touser and template_id are required")
        if page is not None and (not isinstance(page, str) or page.startswith(("/", "http"))):
            raise SimError(200, "41030", "invalid page")
        if body.get("miniprogram_state", "formal") not in ("formal", "trial", "developer"):
            raise SimError(200, "47003", "argument invalid! miniprogram_state")
        self._check_data(body.get("data"))
        key = f"{touser} {tmpl}"
        with self.lock:
            left = int(self.subscribe_consents.get(key) or 0)
            if left < 1:
                raise SimError(200, "43101", "user refuse to accept the msg")
            self.subscribe_consents[key] = left - 1
            return self._remember("subscribe", body, page)

    def send_template_message(self, body: dict[str, Any]) -> dict[str, Any]:
        touser, tmpl = str(body.get("touser") or ""), body.get("template_id")
        if not tmpl:
            raise SimError(200, "40037", "invalid template_id")
        if not touser.startswith(OA_OPENID_PREFIX):
            raise SimError(200, "43004", "require subscribe")
        self._check_data(body.get("data"))
        mini = body.get("miniprogram") or {}
        with self.lock:
            return self._remember("oa_template", body, mini.get("pagepath") if isinstance(mini, dict) else None)

    def send_custom_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """A customer-service message (``/cgi-bin/message/custom/send``): text to an OA openid, remembered."""
        touser, text = str(body.get("touser") or ""), body.get("text")
        if body.get("msgtype") != "text" or not isinstance(text, dict) or not isinstance(text.get("content"), str):
            raise SimError(200, "47001", "data format error")
        if not touser.startswith(OA_OPENID_PREFIX):
            raise SimError(200, "40003", "invalid openid")
        if len(text["content"].encode()) > 2048:
            raise SimError(200, "45002", "content size out of limit")
        with self.lock:
            msgid = str(next(self._msgids))
            self.sent_messages[msgid] = {
                "kind": "custom_text",
                "touser": touser,
                "text": text["content"],
                "at": time.time(),
            }
            return {"errcode": 0, "errmsg": "ok"}

    def werun_data(self, name: str, appid: str, steps: list[tuple[int, int]]) -> dict[str, str]:
        """``wx.getWeRunData`` on the phone of sim person ``name``: ``{encryptedData, iv}`` under their session
        key, ``steps`` as (Unix time of the day's start, steps)."""
        from wechat.chattool import encrypt_open_data

        data = {"stepInfoList": [{"timestamp": int(t), "step": int(n)} for t, n in steps]}
        encrypted, iv = encrypt_open_data(self.session_key(name), appid, data)
        return {"encryptedData": encrypted, "iv": iv}
