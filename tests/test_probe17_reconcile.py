"""Probes of reconciliation against WeChat's bills, as a finance team closing the day runs it (round 17)."""

from __future__ import annotations

from datetime import date

import pytest
import responses
from sqlalchemy import select

from jobs.payouts import reconcile_day
from models import ReconciliationMismatch, db
from payouts.bill_lines import TRADE_SUMMARY_COLUMNS
from payouts.reconcile import fetch_bills
from tests.test_partner_flow import app_settings as partner_settings  # noqa: F401 - fixture chain
from tests.test_reconcile_partner import NO_BILL, NOODLES, QUIET, TEA, PartnerBills, at, shops, sold  # noqa: F401
from tests.test_reconcile_partner import summary as partner_summary
from tests.test_reconciliation import (
    DAY,
    NOW,
    bj,
    findings,
    fund_bill,
    merchant_key,  # noqa: F401 - fixture
    ours,  # noqa: F401 - fixture
    paid,
    pay_client,  # noqa: F401 - fixture
    refunded,
    trade_bill,
    wechat,  # noqa: F401 - fixture
    wechat_keys,  # noqa: F401 - fixture
)
from tests.test_simulator_e2e import app_settings as sim_settings  # noqa: F401 - fixture chain
from wechat.bills import BillReader
from wechat.errors import WeChatUnavailable


@pytest.fixture
def app_settings(partner_settings):  # noqa: F811
    """Service-provider mode (a trade bill per sub-merchant); the direct-mode tests here ask for our own bills."""
    return partner_settings


@pytest.fixture
def partner_wechat(wechat_keys):  # noqa: F811
    with responses.RequestsMock() as rsps:
        yield PartnerBills(rsps, wechat_keys)


def test_a_busy_days_bill_is_read_line_by_line_not_held_again_as_text_lines_and_rows(app, wechat, pay_client):  # noqa: F811
    """A big merchant's bill runs to hundreds of megabytes: read whole as text, a list of lines and a dict per row,
    it took about 13 times its size and the 10:30 job could die with the host. Read a line at a time, a row is
    decoded when it is reached (the memory itself is measured by ``python -m bench bills``, not here)."""
    content = trade_bill(*(paid(f"O20240501{i:016X}", "12.34") for i in range(5)))
    cut = content.index(b"O20240501" + b"%016X" % 4)  # the fifth payment's line (line 6): bytes that are not UTF-8
    spoilt = content[:cut] + b"\xff" + content[cut + 1 :]
    rows = iter(BillReader(spoilt, TRADE_SUMMARY_COLUMNS))
    first, second = next(rows), next(rows)  # yielded before the spoilt line is read (two lines held for the summary)
    assert (first[0], first[1]["商户订单号"], second[0]) == (2, f"O20240501{0:016X}", 3)
    with pytest.raises(WeChatUnavailable, match="bill line 6 is not UTF-8"):
        next(rows)
    # and the job reads a whole bill the same way: every line, the summary checked
    wechat.serve("trade", trade_bill(*(paid(f"O20240501{i:016X}", "12.34") for i in range(4_000))))
    wechat.serve("fund", fund_bill())
    trade, fund = fetch_bills(pay_client, date.fromisoformat(DAY))
    assert (trade.error, fund.error, len(trade.lines)) == (None, None, 4_000)


def test_a_refund_listed_in_another_sub_merchants_bill_is_flagged_there_as_a_payment_would_be(
    shops,
    ours,  # noqa: F811
    partner_wechat,
    pay_client,  # noqa: F811
):
    # given: the tea shop's cup, paid to the tea shop and listed in its bill; its refund, which WeChat made from
    # the noodle house's money and lists in the noodle house's bill only
    cup = sold(ours, TEA, "ORD-T1", 12_50, bj(11))
    ours.refund(cup, "RF-T1", 5_00, bj(13))
    partner_wechat.serve_sub(NOODLES, trade_bill(at(refunded("ORD-T1", "RF-T1", "5.00"), NOODLES)))
    partner_wechat.serve_sub(TEA, trade_bill(at(paid("ORD-T1", "12.50"), TEA)))
    partner_wechat.refuse_sub(QUIET, *NO_BILL)
    partner_wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW, service_provider=True)
    # then: the noodle house's run says where the refund was made, as it says of a payment made to the wrong shop,
    # rather than matching it (and leaving the tea shop's "not in the bill" to be read as a refund never made)
    assert findings() == {
        ("status_differs", "refund", "RF-T1", 5_00, 5_00),
        ("missing_there", "refund", "RF-T1", 5_00, None),
    }
    assert partner_summary()[("trade", NOODLES)] == ("done", 1, 0, 1)
    [row] = [m for m in db.session.execute(select(ReconciliationMismatch)).scalars() if m.kind == "status_differs"]
    assert row.detail == f"refunded by sub-merchant {NOODLES}, ours names {TEA}"
