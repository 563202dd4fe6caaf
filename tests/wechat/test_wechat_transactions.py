"""Typed WeChat Pay resources: a transaction, a refund's state and a transfer bill, parsed once at the edge.

Good shapes (a notification's resource, the simulator's query answers) become frozen values;
each bad shape is refused with :class:`MalformedResource` naming the field.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
import responses
from wechat_testkit import APPID, MCHID, NOTIFY_URL

from wechat.errors import WeChatError
from wechat.notifications import verify_and_decrypt
from wechat.transactions import Amount, MalformedResource, RefundNotice, Transaction, TransferBill

PAID = {
    "appid": APPID,
    "mchid": MCHID,
    "out_trade_no": "O20261125ABCDEF",
    "transaction_id": "4200000001202611250000000001",
    "trade_type": "JSAPI",
    "trade_state": "SUCCESS",
    "trade_state_desc": "支付成功",
    "bank_type": "OTHERS",
    "attach": "campaign 7",
    "success_time": "2026-11-25T10:00:00+08:00",
    "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
    "amount": {"total": 9_000, "payer_total": 8_500, "currency": "CNY", "payer_currency": "CNY"},
}
UNPAID = {"appid": APPID, "mchid": MCHID, "out_trade_no": "O20261125ABCDEF", "trade_state": "NOTPAY"}
REFUND_NOTIFIED = {
    "mchid": MCHID,
    "out_trade_no": "O20261125ABCDEF",
    "transaction_id": "4200000001202611250000000001",
    "out_refund_no": "R-1",
    "refund_id": "50300000000001",
    "refund_status": "SUCCESS",
    "success_time": "2026-11-25T11:00:00+08:00",
    "user_received_account": "支付用户零钱",
    "amount": {"total": 9_000, "refund": 4_000, "payer_total": 9_000, "payer_refund": 4_000},
}
REFUND_ANSWERED = {  # the answer to a refund request or query: ``status``, no mchid
    "out_trade_no": "O20261125ABCDEF",
    "out_refund_no": "R-1",
    "refund_id": "50300000000001",
    "status": "PROCESSING",
    "amount": {"total": 9_000, "refund": 4_000, "currency": "CNY"},
}


def changed(base: dict, **changes) -> dict:
    """``base`` with top-level fields replaced; a value of ``...`` removes the field."""
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not ...}


# -- transactions --------------------------------------------------------------------


def test_a_paid_transaction_is_read_into_a_frozen_value():
    tx = Transaction.parse(PAID)
    assert tx == Transaction(
        out_trade_no="O20261125ABCDEF",
        mchid=MCHID,
        appid=APPID,
        trade_state="SUCCESS",
        amount=Amount(total_fen=9_000, payer_total_fen=8_500, currency="CNY"),
        transaction_id="4200000001202611250000000001",
        payer_openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
        success_time=datetime(2026, 11, 25, 2, 0, tzinfo=UTC),
        attach="campaign 7",
        trade_state_desc="支付成功",
    )
    assert tx.paid and tx.success_time.utcoffset() == timedelta(hours=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.trade_state = "CLOSED"


def test_an_unpaid_answer_needs_no_amount_or_transaction_id():
    tx = Transaction.parse(UNPAID)
    assert (tx.paid, tx.amount, tx.transaction_id, tx.success_time) == (False, None, "", None)


def test_a_refunded_transaction_counts_as_paid():
    assert Transaction.parse(changed(PAID, trade_state="REFUND")).paid


def test_payer_total_may_be_absent():
    tx = Transaction.parse(changed(PAID, amount={"total": 9_000}))
    assert tx.amount == Amount(9_000, None, "CNY")


BAD_TRANSACTIONS = {
    "not_an_object": (["a", "list"], "transaction"),
    "no_out_trade_no": (changed(PAID, out_trade_no=...), "transaction.out_trade_no"),
    "empty_out_trade_no": (changed(PAID, out_trade_no=""), "transaction.out_trade_no"),
    "no_mchid": (changed(PAID, mchid=...), "transaction.mchid"),
    "mchid_a_number": (changed(PAID, mchid=1230000109), "transaction.mchid"),
    "no_appid": (changed(PAID, appid=...), "transaction.appid"),
    "no_trade_state": (changed(PAID, trade_state=...), "transaction.trade_state"),
    "paid_without_amount": (changed(PAID, amount=...), "transaction.amount"),
    "amount_not_an_object": (changed(PAID, amount=9_000), "transaction.amount"),
    "total_missing": (changed(PAID, amount={"payer_total": 9_000}), "amount.total"),
    "total_as_text": (changed(PAID, amount={"total": "9000"}), "amount.total"),
    "total_a_float": (changed(PAID, amount={"total": 90.0}), "amount.total"),
    "total_a_bool": (changed(PAID, amount={"total": True}), "amount.total"),
    "total_zero": (changed(PAID, amount={"total": 0}), "amount.total"),
    "payer_total_as_text": (changed(PAID, amount={"total": 9_000, "payer_total": "9000"}), "amount.payer_total"),
    "paid_without_transaction_id": (changed(PAID, transaction_id=...), "transaction.transaction_id"),
    "naive_success_time": (changed(PAID, success_time="2026-11-25T10:00:00"), "transaction.success_time"),
    "garbled_success_time": (changed(PAID, success_time="yesterday"), "transaction.success_time"),
    "payer_not_an_object": (changed(PAID, payer="openid"), "transaction.payer"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRANSACTIONS))
def test_a_bad_transaction_shape_is_refused_naming_the_field(case):
    data, field = BAD_TRANSACTIONS[case]
    with pytest.raises(MalformedResource) as refused:
        Transaction.parse(data)
    assert refused.value.field == field
    assert refused.value.code == "MALFORMED_RESOURCE" and refused.value.http_status == 400
    assert field in str(refused.value)
    assert isinstance(refused.value, WeChatError)  # a job treats it as an answer it could not read


def test_the_simulator_query_answers_parse(sim_http, pay_client, sim_state):
    sim_http.add(responses.POST, NOTIFY_URL, status=204)  # the payment notification, not read here
    expire = datetime.now(UTC) + timedelta(days=1)
    prepay_id = pay_client.jsapi_prepay("O-PARSE-1", "noodles", 1_234, "openid-1", NOTIFY_URL, expire)
    unpaid = Transaction.parse(pay_client.query_order("O-PARSE-1"))
    assert (unpaid.trade_state, unpaid.paid, unpaid.mchid) == ("NOTPAY", False, MCHID)
    sim_state.pay(prepay_id)
    paid = Transaction.parse(pay_client.query_order("O-PARSE-1"))
    assert (paid.paid, paid.amount.total_fen, paid.payer_openid) == (True, 1_234, "openid-1")
    assert paid.success_time is not None and paid.success_time.tzinfo is not None


# -- refunds -------------------------------------------------------------------------


def test_a_refund_notification_resource_is_read_with_its_mchid():
    notice = RefundNotice.parse(REFUND_NOTIFIED)
    assert (notice.status, notice.succeeded, notice.refund_fen, notice.total_fen) == ("SUCCESS", True, 4_000, 9_000)
    assert (notice.out_trade_no, notice.out_refund_no, notice.refund_id, notice.mchid) == (
        "O20261125ABCDEF",
        "R-1",
        "50300000000001",
        MCHID,
    )
    assert notice.success_time == datetime(2026, 11, 25, 11, 0, tzinfo=timezone(timedelta(hours=8)))


def test_a_refund_answer_has_its_state_in_status_and_no_mchid():
    notice = RefundNotice.parse(REFUND_ANSWERED)
    assert (notice.status, notice.succeeded, notice.mchid, notice.refund_fen) == ("PROCESSING", False, None, 4_000)


BAD_REFUNDS = {
    "not_an_object": ("SUCCESS", "refund"),
    "no_state": (changed(REFUND_NOTIFIED, refund_status=...), "refund.status"),
    "unknown_state": (changed(REFUND_NOTIFIED, refund_status="DONE"), "status"),
    "no_out_refund_no": (changed(REFUND_NOTIFIED, out_refund_no=...), "refund.out_refund_no"),
    "no_out_trade_no": (changed(REFUND_NOTIFIED, out_trade_no=...), "refund.out_trade_no"),
    "success_without_amount": (changed(REFUND_NOTIFIED, amount=...), "refund.amount"),
    "success_without_refund": (changed(REFUND_NOTIFIED, amount={"total": 9_000}), "amount.refund"),
    "refund_as_text": (changed(REFUND_NOTIFIED, amount={"refund": "4000"}), "amount.refund"),
    "refund_negative": (changed(REFUND_NOTIFIED, amount={"refund": -1}), "amount.refund"),
    "mchid_a_number": (changed(REFUND_NOTIFIED, mchid=1230000109), "refund.mchid"),
}


@pytest.mark.parametrize("case", sorted(BAD_REFUNDS))
def test_a_bad_refund_shape_is_refused_naming_the_field(case):
    data, field = BAD_REFUNDS[case]
    with pytest.raises(MalformedResource) as refused:
        RefundNotice.parse(data)
    assert refused.value.field == field


# -- from a verified notification ----------------------------------------------------


def test_a_verified_notification_gives_its_typed_resource(sim_state, verifier_keys, apiv3_key):
    headers, body = sim_state.build_notification("TRANSACTION.SUCCESS", PAID, "transaction")
    assert verify_and_decrypt(headers, body, verifier_keys, apiv3_key).transaction() == Transaction.parse(PAID)
    headers, body = sim_state.build_notification("REFUND.SUCCESS", REFUND_NOTIFIED, "refund")
    assert verify_and_decrypt(headers, body, verifier_keys, apiv3_key).refund_notice().refund_fen == 4_000


def test_a_refund_event_must_name_the_state_its_resource_has(sim_state, verifier_keys, apiv3_key):
    headers, body = sim_state.build_notification("REFUND.CLOSED", REFUND_NOTIFIED, "refund")
    notification = verify_and_decrypt(headers, body, verifier_keys, apiv3_key)
    with pytest.raises(MalformedResource) as refused:
        notification.refund_notice()
    assert refused.value.field == "refund.refund_status"


def test_a_verified_refund_notification_must_name_the_merchant(sim_state, verifier_keys, apiv3_key):
    # given: WeChat signed a refund notification without mchid (API answers have none; notifications always do)
    headers, body = sim_state.build_notification("REFUND.SUCCESS", changed(REFUND_NOTIFIED, mchid=...), "refund")
    notification = verify_and_decrypt(headers, body, verifier_keys, apiv3_key)
    # when / then: refused as malformed, so the intake's mchid comparison is never skipped for one
    with pytest.raises(MalformedResource) as refused:
        notification.refund_notice()
    assert refused.value.field == "refund.mchid"
    assert RefundNotice.parse(changed(REFUND_NOTIFIED, mchid=...)).mchid is None  # an answer's shape stays valid


# -- transfer bills ------------------------------------------------------------------

TRANSFER_NOTIFIED = {  # MCHTRANSFER.BILL.FINISHED's documented fields: no appid
    "mch_id": MCHID,
    "out_bill_no": "TB000000000042",
    "transfer_bill_no": "1330000071100999991182020050700019480001",
    "state": "SUCCESS",
    "transfer_amount": 2_345,
    "openid": "o-MYE42l80oelYMDE34nYD456Xoy",
    "create_time": "2026-11-25T10:00:00+08:00",
    "update_time": "2026-11-25T10:05:00+08:00",
}
REPORT = [{"info_type": "活动名称", "info_content": "返利"}, {"info_type": "奖励说明", "info_content": "订单返利"}]


def test_a_transfer_notification_resource_is_read_into_a_frozen_value():
    bill = TransferBill.parse(TRANSFER_NOTIFIED)
    assert bill == TransferBill(
        out_bill_no="TB000000000042",
        transfer_bill_no="1330000071100999991182020050700019480001",
        state="SUCCESS",
        mch_id=MCHID,
        transfer_amount_fen=2_345,
        openid="o-MYE42l80oelYMDE34nYD456Xoy",
        appid=None,
        create_time=datetime(2026, 11, 25, 2, 0, tzinfo=UTC),
        update_time=datetime(2026, 11, 25, 2, 5, tzinfo=UTC),
    )
    assert bill.final
    with pytest.raises(dataclasses.FrozenInstanceError):
        bill.state = "FAIL"


def test_a_failed_bill_carries_its_reason_and_an_answer_its_appid():
    bill = TransferBill.parse(
        changed(TRANSFER_NOTIFIED, state="FAIL", fail_reason="PAYEE_ACCOUNT_ABNORMAL", appid=APPID)
    )
    assert (bill.state, bill.final, bill.fail_reason, bill.appid) == ("FAIL", True, "PAYEE_ACCOUNT_ABNORMAL", APPID)
    assert not TransferBill.parse(changed(TRANSFER_NOTIFIED, state="WAIT_USER_CONFIRM")).final


BAD_BILLS = {
    "not_an_object": ("SUCCESS", "transfer_bill"),
    "no_out_bill_no": (changed(TRANSFER_NOTIFIED, out_bill_no=...), "transfer_bill.out_bill_no"),
    "no_transfer_bill_no": (changed(TRANSFER_NOTIFIED, transfer_bill_no=...), "transfer_bill.transfer_bill_no"),
    "no_state": (changed(TRANSFER_NOTIFIED, state=...), "transfer_bill.state"),
    "unknown_state": (changed(TRANSFER_NOTIFIED, state="PAID"), "transfer_bill.state"),
    "no_mch_id": (changed(TRANSFER_NOTIFIED, mch_id=...), "transfer_bill.mch_id"),
    "mch_id_a_number": (changed(TRANSFER_NOTIFIED, mch_id=1230000109), "transfer_bill.mch_id"),
    "no_amount": (changed(TRANSFER_NOTIFIED, transfer_amount=...), "transfer_bill.transfer_amount"),
    "amount_as_text": (changed(TRANSFER_NOTIFIED, transfer_amount="2345"), "transfer_bill.transfer_amount"),
    "amount_a_float": (changed(TRANSFER_NOTIFIED, transfer_amount=23.45), "transfer_bill.transfer_amount"),
    "amount_zero": (changed(TRANSFER_NOTIFIED, transfer_amount=0), "transfer_bill.transfer_amount"),
    "no_payee": (changed(TRANSFER_NOTIFIED, openid=...), "transfer_bill.openid"),
    "empty_payee": (changed(TRANSFER_NOTIFIED, openid=""), "transfer_bill.openid"),
    "appid_a_number": (changed(TRANSFER_NOTIFIED, appid=1), "transfer_bill.appid"),
    "naive_update_time": (changed(TRANSFER_NOTIFIED, update_time="2026-11-25T10:05:00"), "transfer_bill.update_time"),
}


@pytest.mark.parametrize("case", sorted(BAD_BILLS))
def test_a_bad_transfer_bill_shape_is_refused_naming_the_field(case):
    data, field = BAD_BILLS[case]
    with pytest.raises(MalformedResource) as refused:
        TransferBill.parse(data)
    assert refused.value.field == field
    assert field in str(refused.value)


def test_a_finished_transfer_notification_gives_its_typed_bill(sim_state, verifier_keys, apiv3_key):
    headers, body = sim_state.build_notification("MCHTRANSFER.BILL.FINISHED", TRANSFER_NOTIFIED, "mch_payment")
    assert verify_and_decrypt(headers, body, verifier_keys, apiv3_key).transfer_bill() == TransferBill.parse(
        TRANSFER_NOTIFIED
    )


def test_a_finished_transfer_notification_must_name_a_final_state(sim_state, verifier_keys, apiv3_key):
    resource = changed(TRANSFER_NOTIFIED, state="PROCESSING")
    headers, body = sim_state.build_notification("MCHTRANSFER.BILL.FINISHED", resource, "mch_payment")
    with pytest.raises(MalformedResource) as refused:
        verify_and_decrypt(headers, body, verifier_keys, apiv3_key).transfer_bill()
    assert refused.value.field == "transfer_bill.state"


def test_the_simulator_transfer_query_answers_parse(sim_http, pay_client, sim_state):
    sim_http.add(responses.POST, NOTIFY_URL, status=204)  # the transfer notification, not read here
    answer = pay_client.transfer_bill("TB0000000042", "openid-1", 800, "返现到账", REPORT, NOTIFY_URL)
    waiting = TransferBill.parse(pay_client.query_transfer_bill("TB0000000042"))
    assert (waiting.state, waiting.final, waiting.transfer_amount_fen, waiting.openid) == (
        "WAIT_USER_CONFIRM",
        False,
        800,
        "openid-1",
    )
    assert (waiting.mch_id, waiting.appid) == (MCHID, APPID)
    sim_state.confirm_transfer(answer["package_info"])
    paid = TransferBill.parse(pay_client.query_transfer_bill("TB0000000042"))
    assert (paid.state, paid.final, paid.transfer_bill_no) == ("SUCCESS", True, answer["transfer_bill_no"])
