"""Service-provider (普通服务商) mode: the few places where a partner request differs from a direct one.

One client, one code path: :class:`wechat.pay.PayClient` takes an optional
:class:`SubMerchant` on every order, refund and bill call, and the helpers here
turn it into the partner shape (``None`` keeps the direct shape):

=================  ===========================================  ==============================================
call               direct                                       partner (``sub`` given)
=================  ===========================================  ==============================================
prepay             ``/v3/pay/transactions/jsapi``               ``/v3/pay/partner/transactions/jsapi``
                   ``appid, mchid, payer.openid``               ``sp_appid, sp_mchid, sub_mchid, sub_appid?,
                                                                payer.sp_openid | payer.sub_openid``
query              ``…/out-trade-no/{no}?mchid=``               ``…/partner/…/out-trade-no/{no}?sp_mchid=&sub_mchid=``
close              ``{"mchid"}``                                ``{"sp_mchid", "sub_mchid"}``
refund             ``/v3/refund/domestic/refunds``              the same, with ``sub_mchid`` in the body
refund query       ``…/refunds/{no}``                           ``…/refunds/{no}?sub_mchid=``
trade bill         ``/v3/bill/tradebill?bill_date=…``           the same, with ``sub_mchid``
=================  ===========================================  ==============================================

``sub_appid`` is sent when the app that calls ``wx.requestPayment`` is the sub-merchant's own (the payer is
then its ``sub_openid``, and the pay parameters are signed for ``sub_appid`` with our service-provider key);
paying in our own mini-program, the payer is the ``sp_openid`` and nothing names ``sub_appid``.

Sources: the partner JSAPI page (pay.weixin.qq.com doc/v3/partner/4012523579), the partner refund page
(4012709253), and ``wechatpayv3``'s ``partner_mode`` (cross-checked by the tests). A sub_openid payer needs
``sub_appid``; ``settle_info.profit_sharing`` (never a top-level ``profit_sharing``: PARAM_ERROR) freezes the
order's money at the sub-merchant until it is shared or unfrozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wechat.errors import WeChatInvalidRequest

# A sub-merchant number (特约商户号) is digits: the documents' examples have 10 (1900000109) and 11
# (19000000001), the trade-bill query gives it as string(12) with "最小字符长度为8"; so 8 to 12 digits.
# An appid is "wx" + 16 lowercase hex chars (wxfdc955f7104ad557; the docs' "wxd678efh567hg6999" is a placeholder).
SUB_MCHID_PATTERN = r"^[0-9]{8,12}$"
SUB_APPID_PATTERN = r"^wx[0-9a-f]{16}$"
_SUB_MCHID = re.compile(SUB_MCHID_PATTERN)
_SUB_APPID = re.compile(SUB_APPID_PATTERN)


def valid_sub_mchid(value: object) -> bool:
    return isinstance(value, str) and bool(_SUB_MCHID.fullmatch(value))


def valid_sub_appid(value: object) -> bool:
    return isinstance(value, str) and bool(_SUB_APPID.fullmatch(value))


@dataclass(frozen=True)
class SubMerchant:
    """The sub-merchant an order is paid to; ``sub_appid`` when its own app is named (sub_openid payers)."""

    sub_mchid: str
    sub_appid: str | None = None

    def __post_init__(self) -> None:
        if not valid_sub_mchid(self.sub_mchid):
            raise WeChatInvalidRequest("sub_mchid must be 8 to 12 digits", code="BAD_SUB_MCHID")
        if self.sub_appid is not None and not valid_sub_appid(self.sub_appid):
            raise WeChatInvalidRequest("sub_appid must be wx followed by 16 hex digits", code="BAD_SUB_APPID")


def transactions_path(sub: SubMerchant | None) -> str:
    return "/v3/pay/partner/transactions" if sub else "/v3/pay/transactions"


def payee_fields(appid: str, mchid: str, sub: SubMerchant | None) -> dict[str, str]:
    """Who is paid, in a prepay body: ours (direct), or ours as the service provider plus the sub-merchant."""
    if sub is None:
        return {"appid": appid, "mchid": mchid}
    fields = {"sp_appid": appid, "sp_mchid": mchid, "sub_mchid": sub.sub_mchid}
    if sub.sub_appid:
        fields["sub_appid"] = sub.sub_appid
    return fields


def payer_field(openid: str, sub: SubMerchant | None, sub_openid: bool) -> dict[str, str]:
    """``openid`` (direct); ``sp_openid`` under our appid, or ``sub_openid`` under the sub-merchant's."""
    if sub is None:
        if sub_openid:
            raise WeChatInvalidRequest("a sub_openid payer needs a sub-merchant", code="SUB_OPENID_WITHOUT_SUB")
        return {"openid": openid}
    if sub_openid and not sub.sub_appid:
        raise WeChatInvalidRequest("a sub_openid payer needs sub_appid", code="SUB_OPENID_WITHOUT_SUB_APPID")
    return {"sub_openid" if sub_openid else "sp_openid": openid}


def mchid_fields(mchid: str, sub: SubMerchant | None) -> dict[str, str]:
    """An order's query parameters and close body: ``mchid``, or ``sp_mchid`` and ``sub_mchid``."""
    return {"mchid": mchid} if sub is None else {"sp_mchid": mchid, "sub_mchid": sub.sub_mchid}


def sub_fields(sub: SubMerchant | None) -> dict[str, Any]:
    """What a refund (body), a refund query or a trade bill (query) adds in partner mode."""
    return {} if sub is None else {"sub_mchid": sub.sub_mchid}
