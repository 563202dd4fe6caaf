"""Answers a rail cannot read are UNKNOWN (payouts.rails), for every rail: never a crash when recording them.

A v2 red packet answer parses to texts, or to lists for nested elements; a v3 coupon answer is any JSON. A field
of another shape than the rail keeps (a reference or code longer than its column, a list where a text belongs)
is read as "we do not know": queried again, and after the dispatcher's attempts an operator looks.
"""

from __future__ import annotations

import pytest

from payouts.coupon_rail import CouponRail
from payouts.rails import Outcome
from payouts.redpack_rail import RedpackRail
from wechat.errors import WeChatUnavailable
from wechat.redpack import RedpackResult, action_for

NO = "RP0000000001"
REQUEST = {"re_openid": "oa-1", "total_amount": 5_00}
SEND_REQUEST = REQUEST | dict.fromkeys(("send_name", "act_name", "wishing", "remark", "client_ip", "scene_id"), "x")


class FakeRedpackClient:
    def __init__(self, **fields):
        base = {"return_code": "SUCCESS", "result_code": "SUCCESS", "mch_billno": NO, "total_amount": "500"}
        self.fields = {**base, **fields}

    def _result(self):
        flat = {k: v for k, v in self.fields.items() if isinstance(v, str)}
        return RedpackResult(
            return_code=flat.get("return_code", ""),
            result_code=flat.get("result_code", ""),
            err_code=flat.get("err_code", ""),
            err_code_des=flat.get("err_code_des", ""),
            action=action_for(self.fields),
            status=flat.get("status", ""),
            fields=self.fields,
        )

    def send(self, *args):
        return self._result()

    def query(self, external_no):
        return self._result()


def packets(**fields) -> RedpackRail:
    texts = {"send_name": "双向返利", "act_name": "消费返利", "wishing": "恭喜发财", "remark": "订单返利"}
    return RedpackRail(FakeRedpackClient(**fields), oa_appid="oa", client_ip="10.0.0.1", **texts)


@pytest.mark.parametrize(
    "fields",
    [
        {"send_listid": [{"id": "1"}]},  # a nested element where a text belongs
        {"send_listid": "1" * 65},  # longer than Payout.wechat_ref
        {"result_code": "FAIL", "err_code": "E" * 65},  # longer than PayoutAttempt.response_code
    ],
)
def test_a_red_packet_send_answer_that_cannot_be_read_is_unknown(fields):
    result = packets(**fields).send(NO, SEND_REQUEST)
    assert (result.outcome, result.code, result.wechat_ref) == (Outcome.UNKNOWN, "UNREADABLE_ANSWER", None)


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "RECEIVED", "detail_id": [{"id": "1"}]},
        {"status": "RECEIVED", "detail_id": "1" * 65},
        {"status": "S" * 65},
    ],
)
def test_a_red_packet_query_answer_that_cannot_be_read_is_unknown(fields):
    result = packets(**fields).query(NO, REQUEST)
    assert (result.outcome, result.code, result.wechat_ref) == (Outcome.UNKNOWN, "UNREADABLE_ANSWER", None)


def test_a_readable_red_packet_query_answer_is_still_read():
    result = packets(status="RECEIVED", detail_id="1000041701201411170000").query(NO, REQUEST)
    assert (result.outcome, result.wechat_ref) == (Outcome.SUCCEEDED, "1000041701201411170000")


class FakePay:
    def __init__(self, answer=None, error=None):
        self.answer, self.error = answer, error

    def send_favor_coupon(self, *args, **kwargs):
        if self.error is not None:
            raise self.error
        return self.answer


def coupons(**kwargs) -> CouponRail:
    stocks = [{"stock_id": "S-FIX-500", "denomination_fen": 500}]
    return CouponRail(FakePay(**kwargs), appid="wx", stock_creator_mchid="1900000109", stocks=stocks)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"answer": {"coupon_id": {"id": "1"}}},
        {"answer": {"coupon_id": ["1"]}},
        {"answer": {"coupon_id": "1" * 65}},
        {"error": WeChatUnavailable("x", code=["NOT_ENOUGH"])},  # type: ignore[arg-type]
    ],
)
def test_a_coupon_answer_that_cannot_be_read_is_unknown(kwargs):
    result = coupons(**kwargs).send("CP1", {"openid": "o", "stock_id": "S-FIX-500", "amount_fen": 500})
    assert (result.outcome, result.code, result.wechat_ref) == (Outcome.UNKNOWN, "UNREADABLE_ANSWER", None)


def test_a_readable_coupon_answer_is_still_read():
    result = coupons(answer={"coupon_id": 9876543210}).send("CP1", {"openid": "o", "stock_id": "S-FIX-500"})
    assert (result.outcome, result.wechat_ref) == (Outcome.SUCCEEDED, "9876543210")
