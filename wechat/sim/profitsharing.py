"""Simulated profit sharing (分账) of a service provider's sub-merchants.

Each profit-sharing transaction's money is frozen at its sub-merchant (``frozen``: transaction_id → the
sub-merchant, the order amount and what is still unsplit). A transaction is frozen when the partner payment
marks it (``freeze_for_sharing``; an order in ``orders`` opened with ``settle_info.profit_sharing`` is found
too). Like WeChat: receivers must be added first (at most 20,000 per sub-merchant); a share may not exceed the
sub-merchant's maximum ratio of the order amount (``分账金额超出最大分账比例``, default 30 %) nor what is
unsplit (``NOT_ENOUGH``); results are asynchronous: a share answers ``PROCESSING`` with its receivers
``PENDING`` and is decided at the next query (``SUCCESS``, or ``CLOSED`` for an account set in
``close_accounts``); ``unfreeze_unsplit`` returns the rest to the sub-merchant. Frequency limits are
injected as faults (``inject_fault(path, 429, "FREQUENCY_LIMITED", "频率超限")``).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from wechat import crypto
from wechat.sim.errors import SimError
from wechat.sim.payouts import beijing_now_iso
from wechat.sim.store import Collection

DEFAULT_MAX_RATIO = 3000  # 30 %: what sub-merchants commonly set
MAX_RECEIVERS_PER_MERCHANT = 20_000
RECEIVER_TYPES = ("MERCHANT_ID", "PERSONAL_OPENID", "PERSONAL_SUB_OPENID")


class ProfitSharingMixin:
    @property
    def frozen(self) -> Collection:
        """transaction_id → {sub_mchid, total_fen, unsplit_fen}."""
        return self.store.collection("ps_frozen")

    @property
    def ps_receivers(self) -> Collection:
        """sub_mchid → {"type account": receiver}."""
        return self.store.collection("ps_receivers")

    @property
    def ps_orders(self) -> Collection:
        """out_order_no (per sub-merchant) → the share."""
        return self.store.collection("ps_orders")

    @property
    def ps_settings(self) -> Collection:
        """Knobs: ``ratio:<sub_mchid>`` → max ratio (bps); ``close:<account>`` → the account's share closes."""
        return self.store.collection("ps_settings")

    # -- knobs and the partner payment's hook ----------------------------------------
    def freeze_for_sharing(self, transaction_id: str, sub_mchid: str, total_fen: int) -> None:
        """A partner payment opened with ``settle_info.profit_sharing``: its money is frozen at the sub-merchant."""
        with self.lock:
            if transaction_id not in self.frozen:
                self.frozen[transaction_id] = {"sub_mchid": sub_mchid, "total_fen": total_fen, "unsplit_fen": total_fen}

    def refund_frozen(self, transaction_id: str, amount_fen: int) -> None:
        """A refund takes from the frozen money first."""
        with self.lock:
            record = self.frozen.get(transaction_id)
            if record is not None:
                record["unsplit_fen"] = max(0, record["unsplit_fen"] - amount_fen)

    def set_max_ratio(self, sub_mchid: str, ratio_bps: int) -> None:
        with self.lock:
            self.ps_settings[f"ratio:{sub_mchid}"] = ratio_bps

    def close_share_to(self, account: str) -> None:
        """Shares to this account end CLOSED (the person's account cannot receive)."""
        with self.lock:
            self.ps_settings[f"close:{account}"] = True

    def max_ratio(self, sub_mchid: str) -> int:
        ratio = self.ps_settings.get(f"ratio:{sub_mchid}")
        return DEFAULT_MAX_RATIO if ratio is None else ratio

    # -- endpoints ---------------------------------------------------------------
    def merchant_config(self, sub_mchid: str) -> dict[str, Any]:
        return {"sub_mchid": sub_mchid, "max_ratio": self.max_ratio(sub_mchid)}

    def add_receiver(self, body: dict[str, Any], serial_header: str | None) -> dict[str, Any]:
        _require(body, "sub_mchid", "appid", "type", "account", "relation_type")
        kind = body["type"]
        if kind not in RECEIVER_TYPES:
            raise SimError(400, "PARAM_ERROR", "分账接收方类型错误")
        if kind == "PERSONAL_SUB_OPENID" and not body.get("sub_appid"):
            raise SimError(400, "PARAM_ERROR", "sub_appid 不能为空")
        name = self._decrypt_name(body.get("name"), serial_header)
        if kind == "MERCHANT_ID" and not name:
            raise SimError(400, "PARAM_ERROR", "分账接收方全称不能为空")
        with self.lock:
            known = self.ps_receivers.get(body["sub_mchid"]) or {}
            key = f"{kind} {body['account']}"
            if key not in known and len(known) >= MAX_RECEIVERS_PER_MERCHANT:
                raise SimError(400, "INVALID_REQUEST", "分账接收方数量超过上限")
            known[key] = {"type": kind, "account": body["account"], "relation_type": body["relation_type"]}
            self.ps_receivers[body["sub_mchid"]] = known
        return {
            "sub_mchid": body["sub_mchid"],
            "type": kind,
            "account": body["account"],
            "relation_type": body["relation_type"],
        }

    def _decrypt_name(self, cipher: str | None, serial: str | None) -> str | None:
        if not cipher:
            return None
        if serial not in (self.keys.public_key_id, self.keys.platform_serial):
            raise SimError(400, "PARAM_ERROR", "Wechatpay-Serial 缺失或无效")
        _, key = self.keys.private_for(serial)
        try:
            return crypto.rsa_oaep_decrypt(cipher, key)
        except ValueError as exc:
            raise SimError(400, "PARAM_ERROR", "name 解密失败") from exc

    def create_share(self, body: dict[str, Any]) -> dict[str, Any]:
        _require(body, "sub_mchid", "appid", "transaction_id", "out_order_no", "receivers", "unfreeze_unsplit")
        receivers = body["receivers"]
        if not isinstance(receivers, list) or not 1 <= len(receivers) <= 50:
            raise SimError(400, "PARAM_ERROR", "分账接收方列表为 1 到 50 个")
        fingerprint = json.dumps(body, sort_keys=True, ensure_ascii=False)
        with self.lock:
            key = f"{body['sub_mchid']}:{body['out_order_no']}"
            existing = self.ps_orders.get(key)
            if existing is not None:
                if existing["fingerprint"] != fingerprint:
                    raise SimError(400, "INVALID_REQUEST", "商户分账单号重复但请求参数不一致")
                return self._share_view(existing)
            record = self._frozen_of(body["transaction_id"], body["sub_mchid"])
            known = self.ps_receivers.get(body["sub_mchid"]) or {}
            total = 0
            for receiver in receivers:
                amount = receiver.get("amount")
                if (
                    not isinstance(amount, int)
                    or isinstance(amount, bool)
                    or amount <= 0
                    or not receiver.get("description")
                ):
                    raise SimError(400, "PARAM_ERROR", "分账金额或描述不正确")
                if f"{receiver.get('type')} {receiver.get('account')}" not in known:
                    raise SimError(400, "INVALID_REQUEST", "分账接收方不存在，请先添加分账接收方")
                total += amount
            if total > record["total_fen"] * self.max_ratio(body["sub_mchid"]) // 10_000:
                raise SimError(400, "INVALID_REQUEST", "分账金额超出最大分账比例")
            if total > record["unsplit_fen"]:
                raise SimError(403, "NOT_ENOUGH", "分账金额不足")
            record["unsplit_fen"] -= total
            share = {
                "fingerprint": fingerprint,
                "request": body,
                "order_id": "3008" + secrets.token_hex(10),
                "state": "PROCESSING",
                "receivers": [
                    {
                        **r,
                        "result": "PENDING",
                        "detail_id": "3601" + secrets.token_hex(10),
                        "create_time": beijing_now_iso(),
                    }
                    for r in receivers
                ],
            }
            if body["unfreeze_unsplit"] is True:
                share["unfreeze_fen"], record["unsplit_fen"] = record["unsplit_fen"], 0
            self.ps_orders[key] = share
            return self._share_view(share)

    def unfreeze(self, body: dict[str, Any]) -> dict[str, Any]:
        _require(body, "sub_mchid", "transaction_id", "out_order_no", "description")
        with self.lock:
            key = f"{body['sub_mchid']}:{body['out_order_no']}"
            existing = self.ps_orders.get(key)
            if existing is not None:
                return self._share_view(existing)
            record = self._frozen_of(body["transaction_id"], body["sub_mchid"])
            if record["unsplit_fen"] <= 0:
                raise SimError(403, "NOT_ENOUGH", "订单剩余待分金额为零")
            share = {
                "fingerprint": "",
                "request": {**body, "receivers": []},
                "order_id": "3008" + secrets.token_hex(10),
                "state": "PROCESSING",
                "receivers": [],
                "unfreeze_fen": record["unsplit_fen"],
            }
            record["unsplit_fen"] = 0
            self.ps_orders[key] = share
            return self._share_view(share)

    def query_share(self, out_order_no: str, sub_mchid: str | None, transaction_id: str | None) -> dict[str, Any]:
        if not sub_mchid or not transaction_id:
            raise SimError(400, "PARAM_ERROR", "sub_mchid 与 transaction_id 不能为空")
        with self.lock:
            share = self.ps_orders.get(f"{sub_mchid}:{out_order_no}")
            if share is None or share["request"]["transaction_id"] != transaction_id:
                raise SimError(404, "RESOURCE_NOT_EXISTS", "记录不存在")
            if share["state"] == "PROCESSING":  # decided when asked: results are asynchronous
                for receiver in share["receivers"]:
                    closed = self.ps_settings.get(f"close:{receiver['account']}")
                    receiver["result"] = "CLOSED" if closed else "SUCCESS"
                    receiver["finish_time"] = beijing_now_iso()
                    if closed:
                        receiver["fail_reason"] = "ACCOUNT_ABNORMAL"
                        self.frozen[transaction_id]["unsplit_fen"] += receiver["amount"]  # back to the merchant
                share["state"] = "FINISHED"
            return self._share_view(share)

    def _frozen_of(self, transaction_id: str, sub_mchid: str) -> dict[str, Any]:
        record = self.frozen.get(transaction_id)
        if record is None:
            for _, order in self.orders.items():
                settle = order["request"].get("settle_info") or {}
                if order.get("transaction_id") == transaction_id and settle.get("profit_sharing") is True:
                    total = order["request"]["amount"]["total"]
                    self.frozen[transaction_id] = {
                        "sub_mchid": order["request"].get("sub_mchid", ""),
                        "total_fen": total,
                        "unsplit_fen": total - order.get("refunded_fen", 0),
                    }
                    record = self.frozen[transaction_id]
                    break
        if record is None:
            raise SimError(404, "RESOURCE_NOT_EXISTS", "微信订单号对应的分账订单不存在")
        if record["sub_mchid"] != sub_mchid:
            raise SimError(400, "PARAM_ERROR", "订单不属于该子商户")
        return record

    @staticmethod
    def _share_view(share: dict[str, Any]) -> dict[str, Any]:
        req = share["request"]
        receivers = [
            {k: r[k] for k in ("type", "account", "amount", "description", "result", "detail_id", "create_time")}
            | ({"finish_time": r["finish_time"]} if "finish_time" in r else {})
            | ({"fail_reason": r["fail_reason"]} if "fail_reason" in r else {})
            for r in share["receivers"]
        ]
        if share.get("unfreeze_fen"):
            receivers.append(
                {
                    "type": "MERCHANT_ID",
                    "account": req["sub_mchid"],
                    "amount": share["unfreeze_fen"],
                    "description": "解冻给分账方",
                    "result": "PENDING" if share["state"] == "PROCESSING" else "SUCCESS",
                    "detail_id": "3601" + share["order_id"][4:],
                    "create_time": beijing_now_iso(),
                }
            )
        return {
            "sub_mchid": req["sub_mchid"],
            "transaction_id": req["transaction_id"],
            "out_order_no": req["out_order_no"],
            "order_id": share["order_id"],
            "state": share["state"],
            "receivers": receivers,
        }


def _require(body: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if body.get(n) in (None, "")]
    if missing:
        raise SimError(400, "PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
