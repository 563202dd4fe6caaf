"""Request body of the 2025 merchant transfer (商家转账, scene 1000), validated
before anything is sent: exactly two report items, allowed perception texts,
and an RSA-OAEP encrypted ``user_name`` (required from 2,000 yuan)."""

from __future__ import annotations

import re
from typing import Any

from wechat import crypto
from wechat.errors import WeChatInvalidRequest
from wechat.keys import VerifierKeys

SCENE_CASH_MARKETING = "1000"
SCENE_1000_INFO_TYPES = ("活动名称", "奖励说明")
PERCEPTIONS_SCENE_1000 = frozenset({"现金奖励", "活动奖励"})
USER_NAME_REQUIRED_FROM_FEN = 200_000
USER_NAME_ALLOWED_FROM_FEN = 30
MIN_TRANSFER_FEN = 10  # WeChat's smallest transfer (0.1 yuan); below it WeChat answers 400 INVALID_REQUEST
_OUT_BILL_NO = re.compile(r"^[0-9A-Za-z]{1,32}$")


def build_transfer_body(
    appid: str,
    keys: VerifierKeys,
    out_bill_no: str,
    openid: str,
    amount_fen: int,
    remark: str,
    scene_report_infos: list[dict[str, str]],
    notify_url: str,
    user_name: str | None = None,
    user_recv_perception: str = "现金奖励",
) -> tuple[dict[str, Any], str | None]:
    """(body, Wechatpay-Serial to send or None)."""
    _check_basics(out_bill_no, amount_fen, remark, user_recv_perception)
    body: dict[str, Any] = {
        "appid": appid,
        "out_bill_no": out_bill_no,
        "transfer_scene_id": SCENE_CASH_MARKETING,
        "openid": openid,
        "transfer_amount": amount_fen,
        "transfer_remark": remark,
        "notify_url": notify_url,
        "user_recv_perception": user_recv_perception,
        "transfer_scene_report_infos": _report_infos(scene_report_infos),
    }
    if amount_fen >= USER_NAME_REQUIRED_FROM_FEN and not user_name:
        raise WeChatInvalidRequest("user_name is required from 2,000 yuan", code="USER_NAME_REQUIRED")
    if not user_name or amount_fen < USER_NAME_ALLOWED_FROM_FEN:
        return body, None
    serial, key = keys.encryption_key()
    body["user_name"] = crypto.rsa_oaep_encrypt(user_name, key)
    return body, serial


def _check_basics(out_bill_no: str, amount_fen: int, remark: str, perception: str) -> None:
    if not _OUT_BILL_NO.match(out_bill_no or ""):
        raise WeChatInvalidRequest("out_bill_no must be 1-32 letters or digits")
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise WeChatInvalidRequest("amount_fen must be a positive integer of fen")
    if amount_fen < MIN_TRANSFER_FEN:
        raise WeChatInvalidRequest(f"transfers start at {MIN_TRANSFER_FEN} fen", code="BELOW_MINIMUM")
    if not remark or len(remark) > 32:
        raise WeChatInvalidRequest("transfer remark must be 1-32 characters")
    if perception not in PERCEPTIONS_SCENE_1000:
        raise WeChatInvalidRequest("user_recv_perception must be 现金奖励 or 活动奖励")


def _report_infos(infos: list[dict[str, str]]) -> list[dict[str, str]]:
    types = tuple(i.get("info_type") for i in infos)
    if sorted(types) != sorted(SCENE_1000_INFO_TYPES) or len(infos) != 2:
        raise WeChatInvalidRequest("scene 1000 needs exactly 活动名称 and 奖励说明", code="BAD_REPORT_INFOS")
    for info in infos:
        content = info.get("info_content") or ""
        if not content or len(content) > 32:
            raise WeChatInvalidRequest("info_content must be 1-32 characters", code="BAD_REPORT_INFOS")
    return [{"info_type": i["info_type"], "info_content": i["info_content"]} for i in infos]
