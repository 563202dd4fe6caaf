"""Probes of the daily reconciliation (payouts/reconcile.py, payouts/bill_lines.py, wechat/bills.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from jobs.payouts import reconcile_day
from models import ReconciliationMismatch, db
from tests.test_reconciliation import (
    DAY,
    NOW,
    bj,
    findings,
    flow,
    fund_bill,
    merchant_key,  # noqa: F401 - fixture
    ours,  # noqa: F401 - fixture
    paid,
    pay_client,  # noqa: F401 - fixture
    runs,
    trade_bill,
    wechat,  # noqa: F401 - fixture
    wechat_keys,  # noqa: F401 - fixture
)


def test_a_remark_holding_a_unicode_line_separator_does_not_break_the_fund_flow_bill(ours, wechat, pay_client):  # noqa: F811
    transfer = ours.payout(5_00, bj(9))
    wechat.serve("trade", trade_bill())
    wechat.serve(
        "fund",
        fund_bill(
            flow("退款", "支出", "10.00", voucher="RF-OK", remark="缺货\u2028再补\x0c货\x85"),
            flow("商家转账", "支出", "5.00", voucher=transfer.external_no),
        ),
    )
    reconcile_day(pay_client, DAY, NOW)
    fund = runs()["fundflow"]
    assert (fund.status, fund.error, fund.lines_read, fund.matched) == ("done", None, 2, 1)


def test_a_rerun_whose_bill_cannot_be_read_keeps_the_open_findings_of_the_last_bill_read(  # noqa: F811
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
):
    # given: the day reconciled: WeChat's bill lacks an order we saw paid (an open finding for an operator)
    ours.order("ORD-OK", 50_00, bj(10))
    ours.order("ORD-LOST", 30_00, bj(12))
    wechat.serve("trade", trade_bill(paid("ORD-OK", "50.00")))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    assert findings() == {("missing_there", "order", "ORD-LOST", 30_00, None)}
    # when: an operator runs the day again by hand, and WeChat cannot give the trade bill now (a 5xx, a bill
    # older than WeChat keeps, a download link gone)
    wechat.rsps.reset()
    wechat.refuse("trade", "SYSTEM_ERROR", "系统错误")
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW + timedelta(days=100))
    # then: the run says it failed, and the difference found in the last bill read is still in the queue
    trade = runs()["trade"]
    assert trade.status == "failed" and "SYSTEM_ERROR" in trade.error
    assert findings() == {("missing_there", "order", "ORD-LOST", 30_00, None)}
    assert trade.mismatches == 1


def test_money_wechat_gives_back_for_a_transfer_that_never_reached_the_person_agrees_with_our_books(  # noqa: F811
    ours,  # noqa: F811
    wechat,  # noqa: F811
    pay_client,  # noqa: F811
):
    # given: two transfers nobody confirmed (closed by WeChat, cancelled by us), their money back in the person's
    # balance here; WeChat, which took the money when the bill was made, gives it back that day
    closed = ours.payout(5_00, bj(9), status="failed")
    cancelled = ours.payout(7_00, bj(9), status="cancelled")
    wechat.serve("trade", trade_bill())
    wechat.serve(
        "fund",
        fund_bill(
            flow("商家转账", "收入", "5.00", voucher=closed.external_no),
            flow("商家转账", "收入", "6.99", voucher=cancelled.external_no),
        ),
    )
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: the first agrees; the second differs by a fen, said as such (never "we count it as paid out")
    assert findings() == {("amount_differs", "payout", cancelled.external_no + ":returned", 7_00, 6_99)}
    assert runs()["fundflow"].matched == 1


def test_a_return_for_a_payout_not_final_here_says_its_status(ours, wechat, pay_client):  # noqa: F811
    # given: a transfer bill still waiting for the person here, whose money WeChat already gave back (closed)
    waiting = ours.payout(5_00, bj(9), status="waiting_user_confirm")
    wechat.serve("trade", trade_bill())
    wechat.serve("fund", fund_bill(flow("商家转账", "收入", "5.00", voucher=waiting.external_no)))
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: an operator is told what our payout is, not that we count it as paid out
    [row] = db.session.execute(select(ReconciliationMismatch)).scalars()
    assert (row.kind, row.subject_ref) == ("status_differs", waiting.external_no + ":returned")
    assert "waiting_user_confirm" in row.detail and "paid out" not in row.detail
