"""Profit sharing (分账) for a service provider's sub-merchants, over the Pay v3 client's signed transport.

Partner-mode endpoints (pay.weixin.qq.com/docs/partner/apis/profit-sharing): ``receivers/add``, ``orders``
(request a share), ``orders/{out_order_no}`` (query), ``orders/unfreeze`` and ``merchant-configs/{sub_mchid}``
(the sub-merchant's maximum ratio, in basis points: WeChat's ``max_ratio`` is 万分比). Bodies are validated
here before anything is sent: at most 50 receivers per request, each amount a positive integer of fen,
``out_order_no`` of WeChat's alphabet. A person's name is never needed (for ``PERSONAL_OPENID`` /
``PERSONAL_SUB_OPENID`` it is optional and only checked when given); a ``MERCHANT_ID`` receiver's name is
encrypted with WeChat's public key and sent with its ``Wechatpay-Serial``.

Errors are the transport's typed errors: a 400 ``INVALID_REQUEST`` (e.g. 分账金额超出最大分账比例) or
``PARAM_ERROR`` refuses the request, ``NOT_ENOUGH`` (可分账金额不足: not settled yet, or refunded) may
succeed later, ``FREQUENCY_LIMITED`` (频率超限) waits, ``RESOURCE_NOT_EXISTS`` on a query means WeChat never
saw the number, and a timeout or 5xx is outcome-unknown: query with the same number before anything else.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from wechat import crypto
from wechat.errors import WeChatInvalidRequest, WeChatUnavailable
from wechat.pay import PayClient

MAX_RECEIVERS = 50  # per request (and at most 50 requests per order)
RECEIVER_TYPES = frozenset({"MERCHANT_ID", "PERSONAL_OPENID", "PERSONAL_SUB_OPENID"})
RELATION_TYPES = frozenset(
    {
        "STORE",
        "STAFF",
        "STORE_OWNER",
        "PARTNER",
        "HEADQUARTER",
        "BRAND",
        "DISTRIBUTOR",
        "USER",
        "SUPPLIER",
        "CUSTOM",
    }
)
RESULTS = frozenset({"PENDING", "SUCCESS", "CLOSED"})  # a receiver's result in a share
_OUT_ORDER_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")


class ProfitSharingClient:
    """Profit sharing calls of one service provider (``pay``: its Pay v3 client, ``sp_appid``: its appid)."""

    def __init__(self, pay: PayClient, sp_appid: str) -> None:
        self.pay, self.sp_appid = pay, sp_appid

    # -- receivers ---------------------------------------------------------------
    def add_receiver(
        self,
        sub_mchid: str,
        receiver_type: str,
        account: str,
        relation_type: str = "USER",
        *,
        sub_appid: str | None = None,
        name: str | None = None,
        custom_relation: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v3/profitsharing/receivers/add``. Adding a receiver that exists is answered as a success."""
        body, serial = self.receiver_body(
            sub_mchid,
            receiver_type,
            account,
            relation_type,
            sub_appid=sub_appid,
            name=name,
            custom_relation=custom_relation,
        )
        headers = {"Wechatpay-Serial": serial} if serial else None
        return self.pay.request("POST", "/v3/profitsharing/receivers/add", json_body=body, extra_headers=headers).data

    def receiver_body(
        self,
        sub_mchid: str,
        receiver_type: str,
        account: str,
        relation_type: str = "USER",
        *,
        sub_appid: str | None = None,
        name: str | None = None,
        custom_relation: str | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        _check_receiver(receiver_type, account, sub_appid)
        if relation_type not in RELATION_TYPES:
            raise WeChatInvalidRequest(f"relation_type must be one of {sorted(RELATION_TYPES)}")
        if (relation_type == "CUSTOM") != bool(custom_relation):
            raise WeChatInvalidRequest("custom_relation goes with relation_type CUSTOM, and only with it")
        if receiver_type == "MERCHANT_ID" and not name:
            raise WeChatInvalidRequest("a MERCHANT_ID receiver needs the merchant's full name")
        body: dict[str, Any] = {"sub_mchid": _required(sub_mchid, "sub_mchid"), "appid": self.sp_appid}
        if sub_appid:
            body["sub_appid"] = sub_appid
        body.update({"type": receiver_type, "account": account, "relation_type": relation_type})
        if custom_relation:
            body["custom_relation"] = custom_relation
        serial = None
        if name:
            serial, key = self.pay.config.keys.encryption_key()
            body["name"] = crypto.rsa_oaep_encrypt(name, key)
        return body, serial

    # -- shares ------------------------------------------------------------------
    def order_body(
        self,
        sub_mchid: str,
        transaction_id: str,
        out_order_no: str,
        receivers: list[dict[str, Any]],
        *,
        unfreeze_unsplit: bool = True,
        sub_appid: str | None = None,
    ) -> dict[str, Any]:
        """The body of a share request, validated: fixed once by the caller and resent verbatim."""
        _check_order_no(out_order_no)
        if not 1 <= len(receivers) <= MAX_RECEIVERS:
            raise WeChatInvalidRequest(f"a share has 1 to {MAX_RECEIVERS} receivers")
        seen, clean = set(), []
        for receiver in receivers:
            _check_receiver(receiver.get("type"), receiver.get("account"), sub_appid)
            amount = receiver.get("amount")
            if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
                raise WeChatInvalidRequest("each receiver's amount must be a positive integer of fen")
            description = receiver.get("description")
            if not description or len(description) > 80:
                raise WeChatInvalidRequest("each receiver needs a description of at most 80 characters")
            key = (receiver["type"], receiver["account"])
            if key in seen:
                raise WeChatInvalidRequest("a receiver appears once per share")
            seen.add(key)
            clean.append(
                {"type": receiver["type"], "account": receiver["account"], "amount": amount, "description": description}
            )
        body: dict[str, Any] = {"sub_mchid": _required(sub_mchid, "sub_mchid"), "appid": self.sp_appid}
        if sub_appid:
            body["sub_appid"] = sub_appid
        body.update(
            {
                "transaction_id": _required(transaction_id, "transaction_id"),
                "out_order_no": out_order_no,
                "receivers": clean,
                "unfreeze_unsplit": bool(unfreeze_unsplit),
            }
        )
        return body

    def post_order(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v3/profitsharing/orders`` with a body from :meth:`order_body`."""
        return self.pay.request("POST", "/v3/profitsharing/orders", json_body=body).data

    def query_order(self, sub_mchid: str, transaction_id: str, out_order_no: str) -> dict[str, Any]:
        """``GET /v3/profitsharing/orders/{out_order_no}?sub_mchid=&transaction_id=``."""
        _check_order_no(out_order_no)
        params = {"sub_mchid": _required(sub_mchid, "sub_mchid"), "transaction_id": transaction_id}
        return self.pay.request("GET", f"/v3/profitsharing/orders/{quote(out_order_no, safe='')}", params=params).data

    def unfreeze_body(self, sub_mchid: str, transaction_id: str, out_order_no: str, description: str) -> dict:
        _check_order_no(out_order_no)
        if not description or len(description) > 80:
            raise WeChatInvalidRequest("description must be 1 to 80 characters")
        return {
            "sub_mchid": _required(sub_mchid, "sub_mchid"),
            "transaction_id": _required(transaction_id, "transaction_id"),
            "out_order_no": out_order_no,
            "description": description,
        }

    def unfreeze(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v3/profitsharing/orders/unfreeze`` with a body from :meth:`unfreeze_body`."""
        return self.pay.request("POST", "/v3/profitsharing/orders/unfreeze", json_body=body).data

    def max_ratio_bps(self, sub_mchid: str) -> int:
        """``GET /v3/profitsharing/merchant-configs/{sub_mchid}``: ``max_ratio`` in basis points (万分比)."""
        path = f"/v3/profitsharing/merchant-configs/{quote(_required(sub_mchid, 'sub_mchid'), safe='')}"
        data = self.pay.request("GET", path).data
        ratio = data.get("max_ratio") if isinstance(data, dict) else None
        if not isinstance(ratio, int) or isinstance(ratio, bool) or not 0 <= ratio <= 10_000:
            raise WeChatUnavailable(
                "merchant-configs answer has no max_ratio of 0 to 10000", code="UNPARSEABLE_RESPONSE"
            )
        return ratio


def _check_receiver(receiver_type: Any, account: Any, sub_appid: str | None) -> None:
    if receiver_type not in RECEIVER_TYPES:
        raise WeChatInvalidRequest(f"receiver type must be one of {sorted(RECEIVER_TYPES)}")
    if not isinstance(account, str) or not 1 <= len(account) <= 64:
        raise WeChatInvalidRequest("a receiver's account is 1 to 64 characters")
    if receiver_type == "PERSONAL_SUB_OPENID" and not sub_appid:
        raise WeChatInvalidRequest("a PERSONAL_SUB_OPENID receiver needs the sub_appid")


def _check_order_no(out_order_no: str) -> None:
    if not isinstance(out_order_no, str) or not _OUT_ORDER_NO.match(out_order_no):
        raise WeChatInvalidRequest("out_order_no must be 1-64 of 0-9 A-Z a-z _ - | * @")


def _required(value: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise WeChatInvalidRequest(f"{name} is required")
    return value
