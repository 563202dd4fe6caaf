"""Simulated payouts: 2025 transfer bills (user confirms), v3 favor coupons and
v2 cash red packets."""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

from wechat import crypto
from wechat.sim.errors import SimError
from wechat.sim.store import Collection
from wechat.v2sign import v2_sign_matches

BEIJING = timezone(timedelta(hours=8))
TRANSFER_OPEN_STATES = frozenset({"ACCEPTED", "PROCESSING", "WAIT_USER_CONFIRM"})


def beijing_now_iso() -> str:
    """Now in Beijing time, to the second, as WeChat writes its times."""
    return datetime.now(BEIJING).isoformat(timespec="seconds")


def _yuan(amount_fen: int) -> str:
    return f"{amount_fen // 100}.{amount_fen % 100:02d}"


class PayoutMixin:
    @property
    def transfers(self) -> Collection:
        """out_bill_no → the transfer bill."""
        return self.store.collection("transfers")

    @property
    def coupons(self) -> Collection:
        """out_request_no → the coupon sent."""
        return self.store.collection("coupons")

    @property
    def redpacks(self) -> Collection:
        """mch_billno → the cash red packet."""
        return self.store.collection("redpacks")

    # -- transfer bills ----------------------------------------------------------
    def create_transfer(self, body: dict[str, Any], serial_header: str | None) -> dict[str, Any]:
        _check_transfer(body)
        user_name = self._decrypt_user_name(body.get("user_name"), serial_header)
        # Like WeChat: a repeat of the number must carry the identical body, the encrypted user_name included
        # (a fresh encryption of the same name is a different body, refused with 400 INVALID_REQUEST).
        fingerprint = json.dumps(body, sort_keys=True, ensure_ascii=False)
        with self.store.keyed("transfers", body["out_bill_no"]):  # this bill only: creates run side by side
            existing = self.transfers.get(body["out_bill_no"])
            if existing is not None:
                if existing["fingerprint"] != fingerprint:
                    raise SimError(400, "INVALID_REQUEST", "单号已存在但信息不一致")
                return self._transfer_answer(existing)
            bill = {
                "request": body,
                "fingerprint": fingerprint,
                "user_name": user_name,
                "transfer_bill_no": "1330" + secrets.token_hex(10),
                "package_info": "sim-pkg-" + secrets.token_urlsafe(12),
                "state": "WAIT_USER_CONFIRM",
                "create_time": beijing_now_iso(),
                "update_time": beijing_now_iso(),
                "fail_reason": "",
            }
            self.transfers[body["out_bill_no"]] = bill
            return self._transfer_answer(bill)

    def _decrypt_user_name(self, cipher: str | None, serial: str | None) -> str | None:
        if not cipher:
            return None
        if serial not in (self.keys.public_key_id, self.keys.platform_serial):
            raise SimError(400, "PARAM_ERROR", "Wechatpay-Serial 缺失或无效")
        _, key = self.keys.private_for(serial)
        try:
            return crypto.rsa_oaep_decrypt(cipher, key)
        except ValueError as exc:
            raise SimError(400, "PARAM_ERROR", "user_name 解密失败") from exc

    @staticmethod
    def _transfer_answer(bill: dict[str, Any]) -> dict[str, Any]:
        answer = {
            "out_bill_no": bill["request"]["out_bill_no"],
            "transfer_bill_no": bill["transfer_bill_no"],
            "create_time": bill["create_time"],
            "state": bill["state"],
        }
        if bill["state"] == "WAIT_USER_CONFIRM":
            answer["package_info"] = bill["package_info"]
        if bill["fail_reason"]:
            answer["fail_reason"] = bill["fail_reason"]
        return answer

    def find_transfer(self, key: str) -> dict[str, Any]:
        with self.lock:
            for out_bill_no, bill in self.transfers.items():
                if key in (out_bill_no, bill["package_info"], bill["transfer_bill_no"]):
                    return bill
        raise SimError(404, "NOT_FOUND", "记录不存在")

    def query_transfer(self, out_bill_no: str) -> dict[str, Any]:
        with self.lock:
            bill = self.transfers.get(out_bill_no)
            if bill is None:
                raise SimError(404, "NOT_FOUND", "记录不存在")
            return self.transfer_view(bill)

    def transfer_view(self, bill: dict[str, Any]) -> dict[str, Any]:
        req = bill["request"]
        view = {
            "mch_id": self.mchid,
            "out_bill_no": req["out_bill_no"],
            "transfer_bill_no": bill["transfer_bill_no"],
            "appid": req["appid"],
            "state": bill["state"],
            "transfer_amount": req["transfer_amount"],
            "transfer_remark": req["transfer_remark"],
            "openid": req["openid"],
            "create_time": bill["create_time"],
            "update_time": bill["update_time"],
        }
        if bill["fail_reason"]:
            view["fail_reason"] = bill["fail_reason"]
        return view

    def confirm_transfer(self, key: str) -> dict[str, Any]:
        """The user accepts in ``wx.requestMerchantTransfer``: SUCCESS + notification."""
        return self._finish_transfer(key, "SUCCESS", "")

    def fail_transfer(self, key: str, reason: str = "PAYEE_ACCOUNT_ABNORMAL") -> dict[str, Any]:
        return self._finish_transfer(key, "FAIL", reason)

    def cancel_transfer(self, out_bill_no: str) -> dict[str, Any]:
        view = self._finish_transfer(out_bill_no, "CANCELLED", "")
        return {
            "out_bill_no": out_bill_no,
            "transfer_bill_no": view["transfer_bill_no"],
            "state": "CANCELING",
            "update_time": view["update_time"],
        }

    def _finish_transfer(self, key: str, state: str, reason: str) -> dict[str, Any]:
        with self.lock:
            bill = self.find_transfer(key)
            if bill["state"] not in TRANSFER_OPEN_STATES:
                raise SimError(400, "INVALID_REQUEST", f"单据状态为 {bill['state']}，不允许此操作")
            bill.update(state=state, fail_reason=reason, update_time=beijing_now_iso())
            view = self.transfer_view(bill)
            self.notify(bill["request"].get("notify_url", ""), "MCHTRANSFER.BILL.FINISHED", view, "mch_payment")
        return view

    # -- favor coupons -----------------------------------------------------------
    def send_coupon(self, openid: str, body: dict[str, Any]) -> dict[str, Any]:
        missing = [n for n in ("stock_id", "out_request_no", "appid", "stock_creator_mchid") if not body.get(n)]
        if missing:
            raise SimError(400, "PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
        if "coupon_value" in body or "coupon_minimum" in body:  # "该字段暂未开放" (docs/wechat-rules.md §6.3)
            raise SimError(400, "PARAM_ERROR", "coupon_value/coupon_minimum 暂未开放")
        with self.lock:
            existing = self.coupons.get(body["out_request_no"])
            if existing is None:
                existing = {
                    "coupon_id": "sim-coupon-" + secrets.token_hex(6),
                    "openid": openid,
                    "request": body,
                    "status": "SENDED",
                    "create_time": beijing_now_iso(),
                }
                self.coupons[body["out_request_no"]] = existing
            return {"coupon_id": existing["coupon_id"]}

    # -- v2 red packets ----------------------------------------------------------
    def send_redpack(self, params: dict[str, str]) -> dict[str, str]:
        problem = self._redpack_problem(params)
        if problem:
            return _v2_fail(*problem)
        identity = {k: v for k, v in params.items() if k not in ("nonce_str", "sign")}
        with self.lock:
            existing = self.redpacks.get(params["mch_billno"])
            if existing is not None and existing["params"] != identity:
                return _v2_fail("FATAL_ERROR", "订单号重复但参数不一致")
            if existing is None:
                existing = {
                    "params": identity,
                    "status": "SENT",
                    "send_time": beijing_now_iso().replace("T", " ")[:19],
                    "send_listid": "1000041701" + secrets.token_hex(8),
                    "rcv_time": "",
                }
                self.redpacks[params["mch_billno"]] = existing
        keys = ("mch_billno", "mch_id", "wxappid", "re_openid", "total_amount")
        return {
            "return_code": "SUCCESS",
            "return_msg": "发放成功",
            "result_code": "SUCCESS",
            "err_code": "SUCCESS",
            "err_code_des": "发放成功",
            **{k: params[k] for k in keys},
            "send_listid": existing["send_listid"],
        }

    def _redpack_problem(self, params: dict[str, str]) -> tuple[str, str] | None:
        if not v2_sign_matches(params, self.api_v2_key):
            return "SIGN_ERROR", "签名错误"
        if params.get("mch_id") != self.mchid:
            return "PARAM_ERROR", "商户号错误"
        if any(not params.get(k) for k in ("mch_billno", "re_openid", "total_amount", "wxappid", "client_ip")):
            return "PARAM_ERROR", "参数缺失"
        amount = int(params["total_amount"])
        if (amount < 100 or amount > 20_000) and not params.get("scene_id"):
            return "PARAM_ERROR", "金额小于1元或大于200元时 scene_id 必填"
        return None

    def query_redpack(self, params: dict[str, str]) -> dict[str, Any]:
        if not v2_sign_matches(params, self.api_v2_key):
            return _v2_fail("SIGN_ERROR", "签名错误")
        with self.lock:
            packet = self.redpacks.get(params.get("mch_billno", ""))
            if packet is None:
                return _v2_fail("NOT_FOUND", "指定单号数据不存在")
            p = packet["params"]
            answer = {
                "return_code": "SUCCESS",
                "return_msg": "OK",
                "result_code": "SUCCESS",
                "mch_billno": params["mch_billno"],
                "mch_id": self.mchid,
                "detail_id": packet["send_listid"],
                "status": packet["status"],
                "send_type": "API",
                "hb_type": "NORMAL",
                "total_num": "1",
                "total_amount": p["total_amount"],
                "send_time": packet["send_time"],
                "wishing": p.get("wishing", ""),
                "act_name": p.get("act_name", ""),
                "remark": p.get("remark", ""),
            }
            if packet["status"] == "REFUND":
                answer |= {"refund_time": packet["refund_time"], "refund_amount": p["total_amount"]}
            if packet["rcv_time"]:
                answer["hblist"] = [
                    {"openid": p["re_openid"], "amount": p["total_amount"], "rcv_time": packet["rcv_time"]}
                ]
            return answer

    def receive_redpack(self, mch_billno: str) -> None:
        with self.lock:
            packet = self.redpacks[mch_billno]
            packet.update(status="RECEIVED", rcv_time=beijing_now_iso().replace("T", " ")[:19])

    def refund_unopened_redpack(self, mch_billno: str) -> None:
        """What WeChat does 24 h after sending a packet nobody opened: REFUND, the whole amount back."""
        with self.lock:
            packet = self.redpacks[mch_billno]
            if packet["status"] != "SENT":
                raise SimError(400, "INVALID_REQUEST", f"packet is {packet['status']}, not SENT")
            packet.update(status="REFUND", refund_time=beijing_now_iso().replace("T", " ")[:19])

    def payout_fund_entries(self, bill_date: str) -> list[list[str]]:
        rows = []
        with self.lock:
            for bill in self.transfers.values():
                if bill["state"] == "SUCCESS" and bill["update_time"].startswith(bill_date):
                    rows.append(
                        _fund_row(
                            bill["update_time"],
                            bill["transfer_bill_no"],
                            "商家转账",
                            bill["request"]["transfer_amount"],
                            bill["request"]["out_bill_no"],
                        )
                    )
            for billno, packet in self.redpacks.items():
                amount = int(packet["params"]["total_amount"])
                if packet["send_time"].startswith(bill_date):
                    rows.append(_fund_row(packet["send_time"], packet["send_listid"], "现金红包", amount, billno))
                if packet["status"] == "REFUND" and packet["refund_time"].startswith(bill_date):  # given back: income
                    rows.append(
                        _fund_row(packet["refund_time"], packet["send_listid"], "现金红包退款", amount, billno, "收入")
                    )
        return rows


def _fund_row(
    when: str, business_no: str, name: str, amount_fen: int, our_no: str, direction: str = "支出"
) -> list[str]:
    stamp = when.replace("T", " ")[:19]
    return [
        stamp,
        business_no,
        secrets.token_hex(8),
        name,
        name,
        direction,
        _yuan(amount_fen),
        "0.00",
        "system",
        "",
        our_no,
    ]


def _v2_fail(err_code: str, des: str) -> dict[str, str]:
    return {
        "return_code": "SUCCESS",
        "return_msg": des,
        "result_code": "FAIL",
        "err_code": err_code,
        "err_code_des": des,
    }


def _check_transfer(body: dict[str, Any]) -> None:
    missing = [
        n
        for n in ("appid", "out_bill_no", "transfer_scene_id", "openid", "transfer_amount", "transfer_remark")
        if not body.get(n)
    ]
    if missing:
        raise SimError(400, "PARAM_ERROR", f"缺少参数 {', '.join(missing)}")
    if body["transfer_scene_id"] == "1000":
        infos = body.get("transfer_scene_report_infos") or []
        if sorted(i.get("info_type", "") for i in infos) != sorted(["活动名称", "奖励说明"]):
            raise SimError(400, "PARAM_ERROR", "转账场景报备信息不正确")
        if body.get("user_recv_perception") not in (None, "现金奖励", "活动奖励"):
            raise SimError(400, "PARAM_ERROR", "用户收款感知不正确")
    if body["transfer_amount"] >= 200_000 and not body.get("user_name"):
        raise SimError(400, "PARAM_ERROR", "转账金额 >= 2000 元时，收款用户姓名必填")
