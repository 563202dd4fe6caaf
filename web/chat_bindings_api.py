"""Chat bindings of the signed-in person (:mod:`challenges.bindings`).

* ``POST /api/v1/me/chat-bindings`` ``{"code": "ABCD-EFGH"}``: confirm the one-time code a bot gave the person
  in a private chat; 201 with the binding. A wrong, used or expired code is 422 ``wrong_code`` (and counts
  towards the attempt limit: 429 ``too_many_attempts``); a chat account bound already is 409.
* ``GET /api/v1/me/chat-bindings``: the caller's bindings.
* ``DELETE /api/v1/me/chat-bindings/<id>``: unbind; someone else's binding is 404.
* ``POST /api/v1/me/chat-tool/groups`` ``{encryptedData, iv}``: the chat tool's ``wx.getGroupEnterInfo`` data,
  opened with the caller's current session_key (watermark appid and age checked): binds the caller's
  ``group_openid`` in that group (``opengid``); a challenge started in the chat tool names the group by it.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from flask import Blueprint, current_app
from pydantic import BeforeValidator, Field, StringConstraints
from sqlalchemy import select

from challenges import bindings
from models import ChatBinding, UserIdentity, db, utcnow
from web.api import endpoint
from web.auth import current_user
from web.errors import ApiError, Conflict, NotFound, TooManyRequests, ValidationFailed
from web.schemas import Model
from web.wecom_bot import binding_settings
from wechat.chattool import GroupEnterInfo, OpenDataRefused, decrypt_open_data

bp = Blueprint("chat_bindings_api", __name__)
OPEN_DATA_MAX_AGE_S = 600  # wx.getGroupEnterInfo is called when the chat tool opens: older data is a replay


def _nfkc(value: object) -> object:
    """A code typed on a Chinese keyboard in full-width mode (ＡＢＣＤ－ＥＦＧＨ, an ideographic space) is the same
    code; a lookalike of another script (a Cyrillic А) stays itself and is refused by the pattern."""
    return unicodedata.normalize("NFKC", value) if isinstance(value, str) else value


class ConfirmCode(Model):
    code: Annotated[
        str,
        StringConstraints(min_length=4, max_length=20, pattern=r"^[A-Za-z0-9\- ]+$"),
        BeforeValidator(_nfkc),
    ]


def binding_json(binding: ChatBinding) -> dict:
    shown = binding.external_id if len(binding.external_id) <= 8 else binding.external_id[:4] + "…"
    return {
        "id": binding.id,
        "transport": binding.transport,
        "scope": binding.scope,
        "external_id": shown,  # a hint for the person, not the whole id
        "created_at": binding.created_at.isoformat(),
    }


def _api_error(exc: bindings.BindingError) -> ApiError:
    if exc.kind == "limited":
        return TooManyRequests(str(exc), code=exc.code, retry_after=int(bindings.FAILURE_WINDOW.total_seconds()))
    if exc.kind == "conflict":
        return Conflict(str(exc), code=exc.code)
    return ValidationFailed(str(exc), code=exc.code)


@endpoint(bp, "/api/v1/me/chat-bindings", methods=["POST"], body=ConfirmCode, status=201)
def confirm_binding(body: ConfirmCode):
    """Confirm a bot's one-time binding code: from now on that chat account speaks as the caller."""
    user, now = current_user(), utcnow()
    try:
        binding = bindings.confirm_code(binding_settings(), user.id, body.code, now)
    except bindings.BindingError as exc:
        if exc.code == "wrong_code":  # nothing written before it; the person's row stays locked until this commits
            bindings.record_failure(user.id, now)
            db.session.commit()  # the attempt counts even though the answer is an error
        raise _api_error(exc) from None
    return binding_json(binding), 201


@endpoint(bp, "/api/v1/me/chat-bindings")
def my_bindings():
    """The caller's chat bindings."""
    return {"items": [binding_json(b) for b in bindings.bindings_of(current_user().id)]}


@endpoint(bp, "/api/v1/me/chat-bindings/<int:binding_id>", methods=["DELETE"])
def remove_binding(binding_id: int):
    """Unbind one of the caller's chat bindings."""
    if not bindings.remove_binding(current_user().id, binding_id):
        raise NotFound("no such binding of yours", code="binding_not_found")
    return {"removed": binding_id}


class EncryptedGroupInfo(Model):
    encryptedData: Annotated[str, Field(min_length=16, max_length=8192)]  # noqa: N815 - WeChat's field name
    iv: Annotated[str, StringConstraints(min_length=16, max_length=32, pattern=r"^[A-Za-z0-9+/=]+$")]


@endpoint(bp, "/api/v1/me/chat-tool/groups", methods=["POST"], body=EncryptedGroupInfo, status=201)
def register_chat_tool_group(body: EncryptedGroupInfo):
    """Bind the caller's identity in a chat-tool group (``wx.getGroupEnterInfo``'s encrypted data)."""
    user, appid = current_user(), current_app.config["WECHAT_APPID"]
    session_key = db.session.execute(
        select(UserIdentity.session_key).where(UserIdentity.user_id == user.id, UserIdentity.appid == appid)
    ).scalar_one_or_none()
    if not session_key:
        raise ValidationFailed("log in again in the mini-program first", code="no_session")
    try:
        data = decrypt_open_data(session_key, body.iv, body.encryptedData, appid, max_age_s=OPEN_DATA_MAX_AGE_S)
        info = GroupEnterInfo.of(data)
    except OpenDataRefused as exc:
        raise ValidationFailed(f"group data refused: {exc}", code="bad_group_data") from None
    try:
        binding = bindings.bind_own_group_identity(user.id, info.opengid, info.group_openid, utcnow())
    except bindings.BindingError as exc:
        raise _api_error(exc) from None
    return {"binding": binding_json(binding), "opengid": info.opengid, "group_openid": info.group_openid}, 201
