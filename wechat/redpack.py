"""v2 cash red packet (``sendredpack`` / ``gethbinfo``) over mutual TLS.

``mch_billno`` is the idempotency key: the result's ``action`` tells the caller
whether the same number may be retried, must be queried, or has definitively
failed (only then may a new number be used). Unparseable/unsafe answers raise
:class:`WeChatUnavailable` — never "failed".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum

import requests

from wechat.errors import WeChatConfigError, WeChatInvalidRequest, WeChatSignatureError, WeChatUnavailable
from wechat.v2sign import parse_xml, to_xml, v2_sign, v2_sign_matches

SCENE_REQUIRED_BELOW_FEN = 100
SCENE_REQUIRED_ABOVE_FEN = 20_000


class RedpackAction(StrEnum):
    SUCCEEDED = "succeeded"
    RETRY_SAME_NUMBER = "retry_same_number"
    QUERY_LATER = "query_later"
    DEFER_UNTIL_8AM = "defer_until_8am"
    PAUSE_RAIL_NOTENOUGH = "pause_rail_notenough"
    FAILED_NEW_NUMBER_OK = "failed_new_number_ok"
    GIVE_UP_FOR_USER = "give_up_for_user"
    CONFIG_ERROR = "config_error"
    REFUNDED = "refunded"
    UNKNOWN = "unknown"


ERR_CODE_ACTIONS: dict[str, RedpackAction] = {
    "SYSTEMERROR": RedpackAction.RETRY_SAME_NUMBER,
    "PROCESSING": RedpackAction.QUERY_LATER,
    "NOTENOUGH": RedpackAction.PAUSE_RAIL_NOTENOUGH,
    "FREQ_LIMIT": RedpackAction.RETRY_SAME_NUMBER,
    "SECOND_OVER_LIMITED": RedpackAction.RETRY_SAME_NUMBER,
    "DAY_OVER_LIMITED": RedpackAction.RETRY_SAME_NUMBER,
    "SENDNUM_LIMIT": RedpackAction.GIVE_UP_FOR_USER,
    # the daily amounts set in the merchant's API security settings, per person and per merchant: the next morning
    "RCVDAMOUNT_LIMIT": RedpackAction.DEFER_UNTIL_8AM,
    "SENDAMOUNT_LIMIT": RedpackAction.DEFER_UNTIL_8AM,
    "MONEY_LIMIT": RedpackAction.CONFIG_ERROR,
    "SEND_FAILED": RedpackAction.FAILED_NEW_NUMBER_OK,
    "TIME_LIMITED": RedpackAction.DEFER_UNTIL_8AM,
    "FATAL_ERROR": RedpackAction.CONFIG_ERROR,
    "NO_AUTH": RedpackAction.GIVE_UP_FOR_USER,
    "OPENID_ERROR": RedpackAction.CONFIG_ERROR,
    "ILLEGAL_APPID": RedpackAction.CONFIG_ERROR,
    "PARAM_ERROR": RedpackAction.CONFIG_ERROR,
    "XML_ERROR": RedpackAction.CONFIG_ERROR,
    "SIGN_ERROR": RedpackAction.CONFIG_ERROR,
    "CA_ERROR": RedpackAction.CONFIG_ERROR,
    # gethbinfo: "record not found" may mean still processing.
    "NOT_FOUND": RedpackAction.QUERY_LATER,
}

STATUS_ACTIONS: dict[str, RedpackAction] = {
    "SENDING": RedpackAction.QUERY_LATER,
    "SENT": RedpackAction.SUCCEEDED,
    "RECEIVED": RedpackAction.SUCCEEDED,
    "FAILED": RedpackAction.FAILED_NEW_NUMBER_OK,
    "RFUND_ING": RedpackAction.REFUNDED,
    "REFUND": RedpackAction.REFUNDED,
}


@dataclass(frozen=True)
class RedpackResult:
    return_code: str
    result_code: str
    err_code: str
    err_code_des: str
    action: RedpackAction
    status: str = ""
    fields: dict[str, object] = field(default_factory=dict, repr=False)


def action_for(fields: dict[str, object]) -> RedpackAction:
    """Map an answer's return/result/err codes (and query status) to an action."""
    ok = fields.get("return_code") == "SUCCESS" and fields.get("result_code") == "SUCCESS"
    if ok:
        status = str(fields.get("status", ""))
        return STATUS_ACTIONS.get(status, RedpackAction.UNKNOWN) if status else RedpackAction.SUCCEEDED
    return ERR_CODE_ACTIONS.get(str(fields.get("err_code", "")), RedpackAction.UNKNOWN)


class RedpackClient:
    """Sends and queries normal (single) cash red packets."""

    def __init__(
        self,
        mchid: str,
        wxappid: str,
        api_v2_key: str,
        cert_path: str | None,
        key_path: str | None,
        api_base: str = "https://api.mch.weixin.qq.com",
        timeout: tuple[float, float] = (3.05, 10),
        session: requests.Session | None = None,
    ) -> None:
        if api_base.startswith("https://") and not (cert_path and key_path):
            raise WeChatConfigError("red packets need the merchant client certificate", code="NO_CLIENT_CERT")
        self.mchid, self.wxappid, self.api_v2_key = mchid, wxappid, api_v2_key
        self.cert = (cert_path, key_path) if cert_path and key_path else None
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def send(
        self,
        mch_billno: str,
        re_openid: str,
        total_amount_fen: int,
        send_name: str,
        act_name: str,
        wishing: str,
        remark: str,
        client_ip: str,
        scene_id: str | None = None,
    ) -> RedpackResult:
        _check_amount(total_amount_fen, scene_id)
        params = {
            "nonce_str": secrets.token_hex(16),
            "mch_billno": mch_billno,
            "mch_id": self.mchid,
            "wxappid": self.wxappid,
            "send_name": send_name,
            "re_openid": re_openid,
            "total_amount": total_amount_fen,
            "total_num": 1,
            "wishing": wishing,
            "client_ip": client_ip,
            "act_name": act_name,
            "remark": remark,
            "scene_id": scene_id,
        }
        return self._call("/mmpaymkttransfers/sendredpack", params)

    def query(self, mch_billno: str) -> RedpackResult:
        params = {
            "nonce_str": secrets.token_hex(16),
            "mch_billno": mch_billno,
            "mch_id": self.mchid,
            "appid": self.wxappid,
            "bill_type": "MCHT",
        }
        return self._call("/mmpaymkttransfers/gethbinfo", params)

    def _call(self, path: str, params: dict[str, object]) -> RedpackResult:
        params["sign"] = v2_sign(params, self.api_v2_key)
        body = to_xml(params).encode("utf-8")
        try:
            resp = self.session.post(
                self.api_base + path,
                data=body,
                cert=self.cert,
                timeout=self.timeout,
                headers={"Content-Type": "text/xml; charset=utf-8"},
                allow_redirects=False,  # followed, the signed body went over our certificate to any host
            )
        except requests.RequestException as exc:
            raise WeChatUnavailable(f"{path}: {exc.__class__.__name__}", code="NETWORK_ERROR") from exc
        if resp.status_code != 200:
            raise WeChatUnavailable(
                f"{path}: HTTP {resp.status_code}", code=f"HTTP_{resp.status_code}", http_status=resp.status_code
            )
        return self._result(parse_xml(resp.content))

    def _result(self, fields: dict[str, object]) -> RedpackResult:
        if "return_code" not in fields:
            raise WeChatUnavailable("answer lacks return_code", code="UNPARSEABLE_RESPONSE")
        flat = {k: v for k, v in fields.items() if isinstance(v, str)}
        if "sign" in flat and not v2_sign_matches(flat, self.api_v2_key):
            raise WeChatSignatureError("red packet answer sign does not match", code="BAD_RESPONSE_SIGN")
        return RedpackResult(
            return_code=flat.get("return_code", ""),
            result_code=flat.get("result_code", ""),
            err_code=flat.get("err_code", ""),
            err_code_des=flat.get("err_code_des", ""),
            action=action_for(fields),
            status=flat.get("status", ""),
            fields=fields,
        )


def _check_amount(total_amount_fen: int, scene_id: str | None) -> None:
    if not isinstance(total_amount_fen, int) or isinstance(total_amount_fen, bool) or total_amount_fen <= 0:
        raise WeChatInvalidRequest("total_amount_fen must be a positive integer of fen")
    outside = total_amount_fen < SCENE_REQUIRED_BELOW_FEN or total_amount_fen > SCENE_REQUIRED_ABOVE_FEN
    if outside and not scene_id:
        raise WeChatInvalidRequest("scene_id is required below 1 yuan or above 200 yuan", code="SCENE_ID_REQUIRED")
