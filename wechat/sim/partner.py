"""The simulated WeChat Pay in service-provider (普通服务商) mode: partner orders paid to sub-merchants.

The simulator's merchant number is the service provider's (``sp_mchid``). A
partner order is kept beside the direct ones (one ``orders`` collection, keyed
by ``out_trade_no``), with the body as sent, so checkout, refunds, bills and
notifications work the same; what differs is checked and shown here:

- ``POST /v3/pay/partner/transactions/jsapi``: ``sp_appid``, ``sp_mchid`` (ours),
  ``sub_mchid`` (8-12 digits), ``payer.sp_openid`` or ``payer.sub_openid`` (the
  latter needs ``sub_appid``), ``settle_info.profit_sharing`` a boolean; a
  top-level ``profit_sharing`` is refused with PARAM_ERROR, as WeChat does;
- query and close under ``/v3/pay/partner/transactions/out-trade-no/{no}`` name
  ``sp_mchid`` and ``sub_mchid`` (query string / body), which must be the order's;
- transactions and ``TRANSACTION.SUCCESS`` show ``sp_appid, sp_mchid, sub_mchid,
  sub_appid?`` and the payer as sent; ``REFUND.*`` shows ``sp_mchid, sub_mchid``;
- ``GET /v3/bill/tradebill?sub_mchid=`` is that sub-merchant's bill (its orders paid and refunds made
  that day only); a day without any is ``400 NO_STATEMENT_EXIST``, as WeChat answers. Without
  ``sub_mchid`` the bill lists every sub-merchant's (the full bill of a service provider).
"""

from __future__ import annotations

import re
from typing import Any

from wechat.sim.errors import SimError

SUB_MCHID = re.compile(r"[0-9]{8,12}")


class PartnerMixin:
    """Partner orders: the checks of the partner JSAPI and the partner views of what the simulator keeps."""

    def create_partner_jsapi(self, body: dict[str, Any]) -> dict[str, Any]:
        missing = [
            n
            for n in ("sp_appid", "sp_mchid", "sub_mchid", "description", "out_trade_no", "notify_url", "amount")
            if body.get(n) in (None, "")
        ]
        if missing:
            raise SimError(400, "PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
        if "profit_sharing" in body:
            raise SimError(400, "PARAM_ERROR", "profit_sharing 应放在 settle_info 中")
        if body["sp_mchid"] != self.mchid:
            raise SimError(400, "MCH_NOT_EXISTS", "sp_mchid does not match")
        if not SUB_MCHID.fullmatch(str(body["sub_mchid"])):
            raise SimError(400, "PARAM_ERROR", "sub_mchid 格式不正确")
        _check_payer(body)
        settle = body.get("settle_info")
        if settle is not None and not (isinstance(settle, dict) and isinstance(settle.get("profit_sharing"), bool)):
            raise SimError(400, "PARAM_ERROR", "settle_info.profit_sharing 必须是布尔值")
        return self.open_order(body)

    def partner_order(self, out_trade_no: str, sp_mchid: str | None, sub_mchid: str | None) -> dict[str, Any]:
        """A partner order named by our sp_mchid and its own sub_mchid (anything else: not found)."""
        if sp_mchid != self.mchid or not sub_mchid:
            raise SimError(400, "PARAM_ERROR", "sp_mchid 或 sub_mchid 不正确")
        order = self.find_order(out_trade_no)
        if order["request"].get("sub_mchid") != sub_mchid:
            raise SimError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def query_partner_order(self, out_trade_no: str, sp_mchid: str | None, sub_mchid: str | None) -> dict[str, Any]:
        with self.lock:
            return self.transaction_view(self.partner_order(out_trade_no, sp_mchid, sub_mchid))

    def close_partner_order(self, out_trade_no: str, sp_mchid: str | None, sub_mchid: str | None) -> None:
        with self.lock:
            self.partner_order(out_trade_no, sp_mchid, sub_mchid)
            self.close_order(out_trade_no)

    def query_partner_refund(self, out_refund_no: str, sub_mchid: str | None) -> dict[str, Any]:
        with self.lock:
            refund = self.refunds.get(out_refund_no)
            if refund is None or refund.get("sub_mchid") != sub_mchid:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return self.refund_view(refund)

    # -- views (direct orders fall through to PayMixin) -------------------------
    def apply_partner_trade_bill(
        self, bill_date: str, tar_type: str | None, download_base: str, sub_mchid: str
    ) -> dict[str, Any]:
        if not SUB_MCHID.fullmatch(sub_mchid):
            raise SimError(400, "PARAM_ERROR", "sub_mchid 格式不正确")
        if not self.paid_on(bill_date, sub_mchid) and not self.refunds_on(bill_date, sub_mchid):
            raise SimError(400, "NO_STATEMENT_EXIST", "请求的账单文件不存在")
        return self.apply_bill("trade", bill_date, tar_type, download_base, sub_mchid)

    def payee_view(self, req: dict[str, Any]) -> dict[str, Any]:
        if "sp_mchid" not in req:
            return super().payee_view(req)
        view = {"sp_appid": req["sp_appid"], "sp_mchid": req["sp_mchid"], "sub_mchid": req["sub_mchid"]}
        if req.get("sub_appid"):
            view["sub_appid"] = req["sub_appid"]
        return view

    def refund_payee_view(self, refund: dict[str, Any]) -> dict[str, Any]:
        if not refund.get("sub_mchid"):
            return super().refund_payee_view(refund)
        return {"sp_mchid": self.mchid, "sub_mchid": refund["sub_mchid"]}


def _check_payer(body: dict[str, Any]) -> None:
    payer = body.get("payer")
    if not isinstance(payer, dict) or len(payer) != 1 or not ({"sp_openid", "sub_openid"} & set(payer)):
        raise SimError(400, "PARAM_ERROR", "payer 需且仅需 sp_openid 或 sub_openid")
    if "sub_openid" in payer and not body.get("sub_appid"):
        raise SimError(400, "PARAM_ERROR", "传 sub_openid 时 sub_appid 必填")
