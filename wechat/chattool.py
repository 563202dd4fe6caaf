"""The mini-program's chat-tool mode (聊天工具模式) and WeChat's encrypted open data, server side.

- ``decrypt_open_data``: what ``wx.getGroupEnterInfo`` (``{opengid, group_openid, chat_type, …}``) and
  ``wx.getWeRunData`` (``{stepInfoList: [{timestamp, step}]}``) hand the client, opened with the person's
  current session_key (AES-128-CBC, PKCS#7, key and iv base64) by wechatpy's ``WeChatWxaCrypto``, which
  checks ``watermark.appid``; we also refuse a watermark older than ``max_age_s``.
- :class:`ChatToolClient`: ``/cgi-bin/message/wxopen/activityid/create`` (an activity id, valid ~24 h) and
  ``/cgi-bin/message/wxopen/chattoolmsg/send`` (the group card's state and each member's
  ``participator_info_list`` entry), with the shared access token.
- ``encrypt_open_data``: the same ciphertext as WeChat makes it (the simulator's WeRun data, tests).
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import requests
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.crypto import WeChatWxaCrypto

from wechat.errors import WeChatUnavailable
from wechat.mp import API_BASE, AccessTokenStore, _request_json, call_with_token

ACTIVITY_PATH = "/cgi-bin/message/wxopen/activityid/create"
CHATTOOL_SEND_PATH = "/cgi-bin/message/wxopen/chattoolmsg/send"
VERSION_TYPES = ("release", "trial", "develop")
MAX_ENCRYPTED_CHARS = 16 * 1024


class OpenDataRefused(ValueError):
    """Encrypted data that does not open under this session key, is for another app, or is too old."""


def decrypt_open_data(
    session_key: str, iv: str, encrypted: str, appid: str, *, now: float | None = None, max_age_s: int | None = None
) -> dict[str, Any]:
    if not encrypted or len(encrypted) > MAX_ENCRYPTED_CHARS or not iv or len(iv) > 32:
        raise OpenDataRefused("encryptedData and iv are required")
    try:
        data = WeChatWxaCrypto(session_key, iv, appid).decrypt_message(encrypted)
    except Exception as exc:  # noqa: BLE001 - bad base64, key, padding, JSON or appid: all one refusal
        raise OpenDataRefused(f"does not open: {exc.__class__.__name__}") from None
    if not isinstance(data, dict):
        raise OpenDataRefused("not an object")
    stamp = (data.get("watermark") or {}).get("timestamp")
    if max_age_s is not None and (not isinstance(stamp, int) or abs((now or time.time()) - stamp) > max_age_s):
        raise OpenDataRefused("the watermark is too old")
    return data


def encrypt_open_data(
    session_key: str, appid: str, data: dict[str, Any], *, timestamp: int | None = None
) -> tuple[str, str]:
    """(encryptedData, iv) for ``data`` with its watermark, as WeChat encrypts open data for the client."""
    body = {**data, "watermark": {"appid": appid, "timestamp": timestamp or int(time.time())}}
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(json.dumps(body, ensure_ascii=False).encode()) + padder.finalize()
    enc = Cipher(algorithms.AES(base64.b64decode(session_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode(), base64.b64encode(iv).decode()


@dataclass(frozen=True)
class GroupEnterInfo:
    opengid: str
    group_openid: str
    chat_type: int | None

    @classmethod
    def of(cls, data: dict[str, Any]) -> GroupEnterInfo:
        opengid, group_openid = data.get("opengid") or data.get("open_single_roomid"), data.get("group_openid")
        if not isinstance(opengid, str) or not opengid or not isinstance(group_openid, str) or not group_openid:
            raise OpenDataRefused("no group in the data")
        if len(opengid) > MAX_OPENGID or len(group_openid) > MAX_GROUP_OPENID:  # cut short, two groups could meet
            raise OpenDataRefused("the group's ids are longer than WeChat gives")
        chat_type = data.get("chat_type")
        return cls(opengid, group_openid, chat_type if isinstance(chat_type, int) else None)


MAX_ACTIVITY_ID = 128  # what chat_tool_cards.activity_id holds
LATEST_EXPIRY = 4_102_444_800  # 2100-01-01 UTC in seconds: an activity id lives about a day
MAX_OPENGID = 64  # what a chat binding's scope holds (WeChat's are about 28 characters)
MAX_GROUP_OPENID = 128  # what its external id holds


class ChatToolClient:
    def __init__(
        self,
        appid: str,
        secret: str,
        token_store: AccessTokenStore,
        api_base: str = API_BASE,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10),
    ) -> None:
        self.appid, self.secret, self.token_store = appid, secret, token_store
        self.api_base, self.session, self.timeout = api_base.rstrip("/"), session or requests.Session(), timeout

    def _call(self, path: str, body: dict[str, Any] | None, method: str = "POST") -> dict[str, Any]:
        url = self.api_base + path

        def call(token: str) -> dict[str, Any]:
            return _request_json(self.session, method, url, {"access_token": token}, self.timeout, body)

        answer = call_with_token(
            self.token_store, self.appid, self.secret, call, self.api_base, self.session, self.timeout
        )
        if not isinstance(answer, dict):
            raise WeChatUnavailable("answer is not an object", code="UNPARSEABLE_RESPONSE")
        return answer

    def create_activity_id(self, unionid: str | None = None, openid: str | None = None) -> tuple[str, int]:
        """A new activity id and its expiry (Unix time; 0 when WeChat gave none). An answer we cannot keep (no id, one
        longer than ``MAX_ACTIVITY_ID``, an expiry that is no time before 2100) is ``WeChatUnavailable``: that card
        is tried again later, the other cards go on."""
        body = {k: v for k, v in (("unionid", unionid), ("openid", openid)) if v}
        answer = self._call(ACTIVITY_PATH, body or None, "GET" if not body else "POST")
        activity_id = answer.get("activity_id")
        if not isinstance(activity_id, str) or not activity_id or len(activity_id) > MAX_ACTIVITY_ID:
            # (one longer than chat_tool_cards keeps failed the job's record of a card already sent: every pass)
            raise WeChatUnavailable("no activity_id in the answer", code="UNPARSEABLE_RESPONSE")
        expires = answer.get("expiration_time") or 0
        if isinstance(expires, str) and expires.isascii() and expires.isdecimal():
            expires = int(expires)
        if isinstance(expires, bool) or not isinstance(expires, int) or not 0 <= expires < LATEST_EXPIRY:
            # a word or a time past 2100: int() / fromtimestamp() raised out of the job's whole pass, every pass
            raise WeChatUnavailable("the activity's expiration_time is no time", code="UNPARSEABLE_RESPONSE")
        return activity_id, expires

    def update_card(
        self,
        activity_id: str,
        target_state: int,
        template_id: str,
        participants: list[tuple[str, int]],
        version_type: str = "release",
    ) -> None:
        """Set the group card's state; ``participants``: (group_openid, state) of each member who changed."""
        if version_type not in VERSION_TYPES:
            raise ValueError(f"version_type is one of {', '.join(VERSION_TYPES)}")
        body = {
            "activity_id": activity_id,
            "target_state": target_state,
            "template_id": template_id,
            "participator_info_list": [{"group_openid": g, "state": s} for g, s in participants],
            "version_type": version_type,
        }
        self._call(CHATTOOL_SEND_PATH, body)
