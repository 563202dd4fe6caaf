"""Simulated WeChat Pay orders, refunds, bills and platform certificates."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from wechat import crypto
from wechat.sim.errors import SimError
from wechat.sim.store import Collection

BEIJING = timezone(timedelta(hours=8))
TRADE_BILL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
    "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
    "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
TRADE_SUMMARY_HEADER = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
FUND_BILL_HEADER = (
    "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额(元),账户结余(元),"
    "资金变更提交申请人,备注,业务凭证号"
)
FUND_SUMMARY_HEADER = "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额"


def yuan(amount_fen: int) -> str:
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def _now() -> datetime:
    return datetime.now(BEIJING).replace(microsecond=0)


def _fingerprint(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, ensure_ascii=False)


def _bt(values: list[str]) -> str:
    return ",".join("`" + v for v in values)


class PayMixin:
    """Orders → checkout → TRANSACTION.SUCCESS; refunds → REFUND.*; bills."""

    def __init__(self) -> None:
        self.refund_auto_succeed = True  # this process's behaviour, not a record

    @property
    def orders(self) -> Collection:
        """out_trade_no → the order."""
        return self.store.collection("orders")

    @property
    def prepay_index(self) -> Collection:
        """prepay_id → out_trade_no."""
        return self.store.collection("prepay_ids")

    @property
    def refunds(self) -> Collection:
        """out_refund_no → the refund."""
        return self.store.collection("refunds")

    def bill_file(self, token: str) -> bytes | None:
        stored = self.store.get("bill_files", token)
        return None if stored is None else base64.b64decode(stored)

    # -- orders ------------------------------------------------------------------
    def create_jsapi(self, body: dict[str, Any]) -> dict[str, Any]:
        _require(body, "appid", "mchid", "description", "out_trade_no", "notify_url", "amount", "payer")
        if body["mchid"] != self.mchid:
            raise SimError(400, "MCH_NOT_EXISTS", "mchid does not match")
        return self.open_order(body)

    def open_order(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new order (direct or partner: the body as sent is kept), or the same one asked again."""
        total = body["amount"].get("total")
        if not isinstance(total, int) or total <= 0:
            raise SimError(400, "PARAM_ERROR", "amount.total must be a positive integer")
        with self.lock:
            order = self.orders.get(body["out_trade_no"])
            if order is not None:
                return self._repeat_prepay(order, body)
            prepay_id = "wx" + _now().strftime("%d%H%M%S") + secrets.token_hex(12)
            self.orders[body["out_trade_no"]] = {
                "request": body,
                "fingerprint": _fingerprint(body),
                "prepay_id": prepay_id,
                "trade_state": "NOTPAY",
                "transaction_id": None,
                "success_time": None,
                "refunded_fen": 0,
            }
            self.prepay_index[prepay_id] = body["out_trade_no"]
            return {"prepay_id": prepay_id}

    def _repeat_prepay(self, order: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        if order["fingerprint"] != _fingerprint(body):
            raise SimError(403, "OUT_TRADE_NO_USED", "商户订单号重复")
        if order["trade_state"] == "CLOSED":
            raise SimError(400, "ORDER_CLOSED", "订单已关闭")
        if order["trade_state"] != "NOTPAY":
            raise SimError(400, "ORDERPAID", "该订单已支付")
        return {"prepay_id": order["prepay_id"]}

    def payee_view(self, req: dict[str, Any]) -> dict[str, Any]:
        """Who was paid, as a transaction shows it (direct; ``PartnerMixin`` answers for partner orders)."""
        return {"appid": req["appid"], "mchid": req["mchid"]}

    def refund_payee_view(self, refund: dict[str, Any]) -> dict[str, Any]:
        return {"mchid": self.mchid}

    def find_order(self, out_trade_no: str) -> dict[str, Any]:
        order = self.orders.get(out_trade_no)
        if order is None:
            raise SimError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def order_by_prepay(self, prepay_id: str) -> dict[str, Any]:
        with self.lock:
            out_trade_no = self.prepay_index.get(prepay_id)
            if out_trade_no is None:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "prepay_id 不存在")
            return self.orders[out_trade_no]

    def query_order(self, out_trade_no: str) -> dict[str, Any]:
        """A direct query: a partner order is not found under our own merchant number."""
        with self.lock:
            order = self.find_order(out_trade_no)
            if "sp_mchid" in order["request"]:
                raise SimError(404, "ORDER_NOT_EXIST", "订单不存在")
            return self.transaction_view(order)

    def close_order(self, out_trade_no: str) -> None:
        with self.lock:
            order = self.find_order(out_trade_no)
            if order["trade_state"] in ("SUCCESS", "REFUND"):
                raise SimError(400, "ORDERPAID", "该订单已支付")
            order["trade_state"] = "CLOSED"

    def pay(self, prepay_id: str) -> dict[str, Any]:
        """The user pays: SUCCESS now, TRANSACTION.SUCCESS delivered shortly after."""
        with self.lock:
            order = self.order_by_prepay(prepay_id)
            if order["trade_state"] == "SUCCESS":
                return self.transaction_view(order)
            if order["trade_state"] != "NOTPAY":
                raise SimError(400, "ORDER_CLOSED", f"order is {order['trade_state']}")
            transaction_id = "4200" + _now().strftime("%Y%m%d") + secrets.token_hex(7)
            order.update(trade_state="SUCCESS", success_time=_now().isoformat(), transaction_id=transaction_id)
            view = self.transaction_view(order)
            self.notify(order["request"]["notify_url"], "TRANSACTION.SUCCESS", view, "transaction")
        return view

    def transaction_view(self, order: dict[str, Any]) -> dict[str, Any]:
        req = order["request"]
        view: dict[str, Any] = {
            **self.payee_view(req),
            "out_trade_no": req["out_trade_no"],
            "trade_type": "JSAPI",
            "trade_state": order["trade_state"],
            "trade_state_desc": {"SUCCESS": "支付成功", "NOTPAY": "未支付", "CLOSED": "已关闭", "REFUND": "转入退款"}[
                order["trade_state"]
            ],
            "attach": req.get("attach", ""),
            "payer": dict(req["payer"]),
            "amount": {"total": req["amount"]["total"], "currency": "CNY"},
        }
        if order["transaction_id"]:
            total = req["amount"]["total"]
            view.update(transaction_id=order["transaction_id"], bank_type="OTHERS", success_time=order["success_time"])
            view["amount"].update(payer_total=total, payer_currency="CNY")
        return view

    # -- refunds -----------------------------------------------------------------
    def create_refund(self, body: dict[str, Any]) -> dict[str, Any]:
        _require(body, "out_trade_no", "out_refund_no", "amount")
        with self.lock:
            existing = self.refunds.get(body["out_refund_no"])
            if existing is not None:
                return self.refund_view(existing)
            order = self.orders.get(body["out_trade_no"])
            if order is None or order["transaction_id"] is None:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "订单不存在或未支付")
            if body.get("sub_mchid") != order["request"].get("sub_mchid"):  # a partner order names its sub-merchant
                raise SimError(404, "RESOURCE_NOT_EXISTS", "子商户号与订单不符或缺失")
            refund_fen, total_fen = body["amount"].get("refund"), body["amount"].get("total")
            if total_fen != order["request"]["amount"]["total"] or not isinstance(refund_fen, int) or refund_fen <= 0:
                raise SimError(400, "INVALID_REQUEST", "退款金额与订单金额不一致")
            if order["refunded_fen"] + refund_fen > total_fen:
                raise SimError(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            refund = self._new_refund(body, order, refund_fen, total_fen)
            answer = self.refund_view(refund)
        if self.refund_auto_succeed:
            self.complete_refund(body["out_refund_no"], "SUCCESS")
        return answer

    def _new_refund(
        self, body: dict[str, Any], order: dict[str, Any], refund_fen: int, total_fen: int
    ) -> dict[str, Any]:
        refund = {
            "refund_id": "5030" + secrets.token_hex(8),
            "out_refund_no": body["out_refund_no"],
            "transaction_id": order["transaction_id"],
            "out_trade_no": body["out_trade_no"],
            "notify_url": body.get("notify_url", ""),
            "status": "PROCESSING",
            "create_time": _now().isoformat(),
            "success_time": None,
            "refund_fen": refund_fen,
            "total_fen": total_fen,
            "sub_mchid": order["request"].get("sub_mchid"),
        }
        self.refunds[body["out_refund_no"]] = refund
        order.update(trade_state="REFUND", refunded_fen=order["refunded_fen"] + refund_fen)
        return refund

    def complete_refund(self, out_refund_no: str, status: str = "SUCCESS") -> dict[str, Any]:
        """Finish a refund and deliver ``REFUND.<status>``."""
        with self.lock:
            refund = self.refunds[out_refund_no]
            refund.update(status=status, success_time=_now().isoformat() if status == "SUCCESS" else None)
            resource = self.refund_notify_view(refund)
            self.notify(refund["notify_url"], f"REFUND.{status}", resource, "refund")
        return resource

    def query_refund(self, out_refund_no: str) -> dict[str, Any]:
        with self.lock:
            refund = self.refunds.get(out_refund_no)
            if refund is None:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return self.refund_view(refund)

    def refund_view(self, refund: dict[str, Any]) -> dict[str, Any]:
        view = {
            k: refund[k]
            for k in ("refund_id", "out_refund_no", "transaction_id", "out_trade_no", "status", "create_time")
        }
        view.update(channel="ORIGINAL", user_received_account="支付用户零钱", funds_account="AVAILABLE")
        if refund["success_time"]:
            view["success_time"] = refund["success_time"]
        view["amount"] = {
            "total": refund["total_fen"],
            "refund": refund["refund_fen"],
            "payer_total": refund["total_fen"],
            "payer_refund": refund["refund_fen"],
            "settlement_refund": refund["refund_fen"],
            "settlement_total": refund["total_fen"],
            "discount_refund": 0,
            "currency": "CNY",
            "from": [],
        }
        return view

    def refund_notify_view(self, refund: dict[str, Any]) -> dict[str, Any]:
        view = {k: refund[k] for k in ("refund_id", "out_refund_no", "transaction_id", "out_trade_no")}
        view.update(self.refund_payee_view(refund))
        view.update(refund_status=refund["status"], user_received_account="支付用户零钱")
        if refund["success_time"]:
            view["success_time"] = refund["success_time"]
        view["amount"] = {
            "total": refund["total_fen"],
            "refund": refund["refund_fen"],
            "payer_total": refund["total_fen"],
            "payer_refund": refund["refund_fen"],
        }
        return view

    # -- bills -------------------------------------------------------------------
    def apply_bill(
        self, kind: str, bill_date: str, tar_type: str | None, download_base: str, sub_mchid: str | None = None
    ) -> dict[str, Any]:
        content = self.trade_bill_csv(bill_date, sub_mchid) if kind == "trade" else self.fund_bill_csv(bill_date)
        token = secrets.token_urlsafe(16)
        stored = gzip.compress(content) if tar_type == "GZIP" else content
        self.store.put("bill_files", token, base64.b64encode(stored).decode())
        return {
            "hash_type": "SHA1",
            "hash_value": hashlib.sha1(content).hexdigest(),  # noqa: S324
            "download_url": f"{download_base}/v3/billdownload/file?token={token}",
        }

    def trade_bill_csv(self, bill_date: str, sub_mchid: str | None = None) -> bytes:
        """The day's ``ALL`` trade bill: a SUCCESS row per order paid that day, then a REFUND row per refund
        applied for that day (its state as it is now: the bill freezes it); all of them (ours and every
        sub-merchant's), or one sub-merchant's. The summary counts both kinds of rows."""
        paid, refunds = self.paid_on(bill_date, sub_mchid), self.refunds_on(bill_date, sub_mchid)
        lines = [TRADE_BILL_HEADER] + [self._trade_line(o) for o in paid] + [self._refund_line(r) for r in refunds]
        total = sum(o["request"]["amount"]["total"] for o in paid)
        refunded = sum(r["refund_fen"] for r in refunds)
        fee = sum(self._fee_fen(o) for o in paid) - sum(self._refund_fee_fen(r) for r in refunds)
        count = str(len(paid) + len(refunds))
        summary = [count, yuan(total), yuan(refunded), "0.00", yuan(fee), yuan(total), yuan(refunded)]
        lines += [TRADE_SUMMARY_HEADER, _bt(summary)]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def paid_on(self, bill_date: str, sub_mchid: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                o
                for o in self.orders.values()
                if (o["success_time"] or "").startswith(bill_date)
                and (sub_mchid is None or o["request"].get("sub_mchid") == sub_mchid)
            ]

    def refunds_on(self, bill_date: str, sub_mchid: str | None = None) -> list[dict[str, Any]]:
        """The refunds applied for on ``bill_date`` (Beijing): a bill lists a refund on the day it was made."""
        with self.lock:
            return [
                r
                for r in self.refunds.values()
                if r["create_time"].startswith(bill_date) and (sub_mchid is None or r.get("sub_mchid") == sub_mchid)
            ]

    def _trade_line(self, order: dict[str, Any]) -> str:
        req = order["request"]
        total = req["amount"]["total"]
        no_refund = ["0", "0", "0.00", "0.00", "", ""]
        fee = self._fee_fen(order)
        return self._bill_row(req, order["success_time"], order["transaction_id"], "SUCCESS", total, no_refund, fee)

    def _refund_line(self, refund: dict[str, Any]) -> str:
        """A REFUND row: the order's numbers, the refund's (微信退款单号, 商户退款单号), 退款金额 and 申请退款金额,
        退款状态 as it is now, the fee given back negative; the order amounts are 0 (paid on its own row)."""
        req = self.orders[refund["out_trade_no"]]["request"]
        amount = yuan(refund["refund_fen"])
        cells = [refund["refund_id"], refund["out_refund_no"], amount, "0.00", "ORIGINAL", refund["status"]]
        fee = -self._refund_fee_fen(refund)
        return self._bill_row(req, refund["create_time"], refund["transaction_id"], "REFUND", 0, cells, fee, amount)

    def _bill_row(
        self,
        req: dict[str, Any],
        at: str,
        transaction_id: str,
        state: str,
        order_fen: int,
        refund_cells: list[str],
        fee_fen: int,
        applied: str = "0.00",
    ) -> str:
        """One detail row of the ALL trade bill (``TRADE_BILL_HEADER``'s 27 columns, in yuan)."""
        when = datetime.fromisoformat(at).strftime("%Y-%m-%d %H:%M:%S")
        payer = next(iter(req["payer"].values()))
        head = [when, req.get("appid") or req["sp_appid"], self.mchid, req.get("sub_mchid", "0"), ""]
        head += [transaction_id, req["out_trade_no"], payer, "JSAPI", state, "OTHERS", "CNY", yuan(order_fen), "0.00"]
        tail = [req["description"], req.get("attach", ""), yuan(fee_fen), "0.60%", yuan(order_fen), applied, ""]
        return _bt(head + refund_cells + tail)

    @staticmethod
    def _refund_fee_fen(refund: dict[str, Any]) -> int:
        return refund["refund_fen"] * 60 // 10_000

    @staticmethod
    def _fee_fen(order: dict[str, Any]) -> int:
        return order["request"]["amount"]["total"] * 60 // 10_000

    def fund_bill_csv(self, bill_date: str) -> bytes:
        entries = self.fund_entries(bill_date)
        lines = [FUND_BILL_HEADER] + [_bt(e) for e in entries]
        income = [e for e in entries if e[5] == "收入"]
        spend = [e for e in entries if e[5] == "支出"]
        summary = [str(len(entries)), str(len(income)), _sum_yuan(income), str(len(spend)), _sum_yuan(spend)]
        lines += [FUND_SUMMARY_HEADER, _bt(summary)]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def fund_entries(self, bill_date: str) -> list[list[str]]:
        with self.lock:
            rows = []
            for o in self.orders.values():
                if (o["success_time"] or "").startswith(bill_date):
                    when = datetime.fromisoformat(o["success_time"]).strftime("%Y-%m-%d %H:%M:%S")
                    amount = yuan(o["request"]["amount"]["total"])
                    rows.append(
                        [
                            when,
                            o["transaction_id"],
                            secrets.token_hex(8),
                            "交易",
                            "交易",
                            "收入",
                            amount,
                            "0.00",
                            "system",
                            "",
                            o["request"]["out_trade_no"],
                        ]
                    )
            return rows + self.payout_fund_entries(bill_date)

    # -- certificates ------------------------------------------------------------
    def certificates_answer(self) -> dict[str, Any]:
        cert = self.keys.platform_cert
        nonce = secrets.token_hex(6)
        return {
            "data": [
                {
                    "serial_no": self.keys.platform_serial,
                    "effective_time": cert.not_valid_before_utc.astimezone(BEIJING).isoformat(),
                    "expire_time": cert.not_valid_after_utc.astimezone(BEIJING).isoformat(),
                    "encrypt_certificate": {
                        "algorithm": "AEAD_AES_256_GCM",
                        "nonce": nonce,
                        "associated_data": "certificate",
                        "ciphertext": crypto.aes_gcm_encrypt(
                            self.apiv3_key, nonce, self.keys.platform_cert_pem, "certificate"
                        ),
                    },
                }
            ]
        }


def _sum_yuan(entries: list[list[str]]) -> str:
    return f"{sum((Decimal(e[6]) for e in entries), Decimal('0')):.2f}"


def _require(body: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if body.get(n) in (None, "")]
    if missing:
        raise SimError(400, "PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
