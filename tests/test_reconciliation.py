"""Reconciliation against WeChat's bills: generated bills with planted mismatches, served through ``responses``.

The bills are written the way WeChat writes them: a header row, detail rows with
every field prefixed by a backtick, a summary header and a summary row; amounts
in plain decimal yuan. The apply answers are signed with WeChat's (test) key and
the SHA-1 covers the bill content, so the real PayClient checks both.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from itertools import count

import pytest
import responses
from responses import matchers
from sqlalchemy import func, select

from jobs.payouts import reconcile_day, run_daily_checks
from models import Alert, Order, Payout, Refund, db
from models.base import BEIJING
from models.reconciliation import ReconciliationMismatch, ReconciliationRun
from payouts import reconcile
from payouts.bill_lines import BillFormatError, bill_amount_fen, fund_line
from payouts.outbox import external_no_for
from payouts.reconcile import fetch_bills, write_results
from wechat.bills import bill_answer, check_hash_type
from wechat.errors import WeChatIntegrityError, WeChatUnavailable
from wechat.pay import PayClient, PayConfig
from wechat.sim.keys import SimulatorKeys, generate_rsa_key
from wechat.sim.pay import FUND_BILL_HEADER, TRADE_BILL_HEADER

BASE = "https://wxpay.test"  # never a real host: responses fails any call it does not know
DAY = "2024-05-01"
NOW = datetime(2024, 5, 2, 2, 30, tzinfo=UTC)  # 10:30 Beijing on the 2nd: the bill for the 1st is out

TRADE_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
    "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
    "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
TRADE_SUMMARY = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
FUND_HEADER = (
    "记账时间,微信支付业务单号,资金流水单号,业务名称,业务类型,收支类型,收支金额(元),账户结余(元),"
    "资金变更提交申请人,备注,业务凭证号"
)
FUND_SUMMARY = "资金流水总笔数,收入笔数,收入金额,支出笔数,支出金额"


def bj(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=BEIJING).astimezone(UTC)


# -- bills as WeChat writes them --------------------------------------------------------------


def _csv(header: str, lines: list[list[str]], summary_header: str, summary: list[str]) -> bytes:
    rows = [header] + [",".join("`" + v for v in line) for line in lines]
    rows += [summary_header, ",".join("`" + v for v in summary)]
    return ("\r\n".join(rows) + "\r\n").encode("utf-8")


def paid(out_trade_no: str, yuan: str, at: str = "2024-05-01 10:00:00", total: str | None = None) -> list[str]:
    return [at, "wxtestapp", "1900000109", "0", "", f"42{out_trade_no[-6:]:0>10}", out_trade_no, "o-user", "JSAPI",
            "SUCCESS", "OTHERS", "CNY", yuan, "0.00", "0", "0", "0.00", "0.00", "", "", "goods", "", "0.00",
            "0.60%", total or yuan, "0.00", ""]  # fmt: skip


def refunded(out_trade_no: str, out_refund_no: str, yuan: str, state: str = "SUCCESS") -> list[str]:
    return ["2024-05-01 14:00:00", "wxtestapp", "1900000109", "0", "", "4200000001", out_trade_no, "o-user",
            "JSAPI", "REFUND", "OTHERS", "CNY", "0.00", "0.00", "50300000001", out_refund_no, yuan, "0.00",
            "ORIGINAL", state, "goods", "", "0.00", "0.60%", "0.00", yuan, ""]  # fmt: skip


def _fen_or_zero(text: str) -> int:
    try:
        return bill_amount_fen(text)
    except BillFormatError:  # a planted malformed amount: its line fails the bill before the summary is read
        return 0


def _yuan_sum(lines: list[list[str]], column: int) -> str:
    fen = sum(_fen_or_zero(line[column]) for line in lines)
    return f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def trade_bill(*lines: list[str]) -> bytes:
    """As WeChat writes it: the summary counts the lines and adds up each amount column."""
    lines_ = list(lines)
    # 应结订单金额, 退款金额, 充值券退款金额, 手续费, 订单金额, 申请退款金额
    summary = [str(len(lines_)), *(_yuan_sum(lines_, c) for c in (12, 16, 17, 22, 24, 25))]
    return _csv(TRADE_HEADER, lines_, TRADE_SUMMARY, summary)


_serial = count(1)


def flow(business: str, direction: str, yuan: str, voucher: str = "", remark: str = "") -> list[str]:
    return ["2024-05-01 09:00:00", f"100{next(_serial):010d}", "f0001", business, business,
            direction, yuan, "0.00", "system", remark, voucher]  # fmt: skip


def fund_bill(*lines: list[str]) -> bytes:
    """As WeChat writes it: the summary counts the lines, and the income and the spending lines and their sums."""
    income, spend = ([x for x in lines if x[5] == d] for d in ("收入", "支出"))
    summary = [str(len(lines)), str(len(income)), _yuan_sum(income, 6), str(len(spend)), _yuan_sum(spend, 6)]
    return _csv(FUND_HEADER, list(lines), FUND_SUMMARY, summary)


def sha1(content: bytes) -> str:
    return hashlib.sha1(content).hexdigest()  # noqa: S324 - WeChat's hash type


# -- a fake WeChat and a real client ----------------------------------------------------------------


@pytest.fixture(scope="module")
def wechat_keys() -> SimulatorKeys:
    return SimulatorKeys()


@pytest.fixture(scope="module")
def merchant_key():
    return generate_rsa_key()


@pytest.fixture
def pay_client(wechat_keys, merchant_key) -> PayClient:
    config = PayConfig(
        mchid="1900000109",
        appid="wxtestapp",
        private_key=merchant_key,
        cert_serial="5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        apiv3_key="0123456789abcdef0123456789abcdef",
        keys=wechat_keys.verifier_keys(),
        api_base=BASE,
    )
    return PayClient(config)


class FakeBills:
    """Answers the two apply calls (signed, like WeChat) and serves the files at the download URL."""

    PATHS = {
        "trade": ("/v3/bill/tradebill", {"bill_type": "ALL"}),
        "fund": ("/v3/bill/fundflowbill", {"account_type": "BASIC"}),
    }

    def __init__(self, rsps: responses.RequestsMock, keys: SimulatorKeys) -> None:
        self.rsps, self.keys = rsps, keys
        self.downloads: list[tuple[str, bool]] = []  # (Authorization, database transaction open?)

    def serve(self, kind: str, content: bytes, hash_value: str | None = None, bill_date: str = DAY) -> None:
        token = f"{kind}-{bill_date}"
        answer = {
            "hash_type": "SHA1",
            "hash_value": hash_value or sha1(content),
            "download_url": f"{BASE}/v3/billdownload/file?token={token}",
        }
        self._answer(kind, bill_date, 200, answer)

        def download(request):  # unsigned, like WeChat's file answer
            self.downloads.append((request.headers.get("Authorization", ""), db.session().in_transaction()))
            return 200, {}, gzip.compress(content)  # asked with tar_type=GZIP; the hash covers the plain file

        token_matcher = matchers.query_param_matcher({"token": token})
        self.rsps.add_callback(responses.GET, f"{BASE}/v3/billdownload/file", download, match=[token_matcher])

    def refuse(self, kind: str, code: str, message: str) -> None:
        self._answer(kind, DAY, 400, {"code": code, "message": message})

    def _answer(self, kind: str, bill_date: str, status: int, data: dict) -> None:
        path, params = self.PATHS[kind]
        body = json.dumps(data).encode()
        self.rsps.add(
            responses.GET,
            BASE + path,
            body=body,
            status=status,
            headers=self.keys.sign_headers(body),
            content_type="application/json",
            match=[matchers.query_param_matcher({"bill_date": bill_date, **params, "tar_type": "GZIP"})],
        )


@pytest.fixture
def wechat(wechat_keys):
    with responses.RequestsMock() as rsps:
        yield FakeBills(rsps, wechat_keys)


# -- our side ---------------------------------------------------------------------------------


@pytest.fixture
def ours(app, make_user, make_merchant):
    user, merchant = make_user(), make_merchant()

    class Ours:
        def order(self, out_trade_no: str, fen: int, paid_at: datetime | None, status: str = "paid") -> Order:
            order = Order(
                out_trade_no=out_trade_no,
                user_id=user.id,
                merchant_id=merchant.id,
                status=status,
                total_fen=fen,
                payable_fen=fen,
                paid_fen=fen if paid_at else None,
                transaction_id=f"tx-{out_trade_no}" if paid_at else None,
                paid_at=paid_at,
                time_expire=bj(0),
            )
            db.session.add(order)
            db.session.commit()
            return order

        def refund(
            self, order: Order, out_refund_no: str, fen: int, at: datetime, status="succeeded", finished=None
        ) -> Refund:
            """Begun ``at`` (the day WeChat's bill lists it), finished then too unless ``finished`` says when."""
            refund = Refund(order_id=order.id, out_refund_no=out_refund_no, amount_fen=fen, status=status)
            refund.created_at = at
            refund.finished_at = (finished or at) if status == "succeeded" else None
            order.refunded_fen += fen if status == "succeeded" else 0
            db.session.add(refund)
            db.session.commit()
            return refund

        def payout(
            self,
            fen: int,
            at: datetime,
            rail: str = "wechat_change",
            status: str = "succeeded",
            returned: datetime | None = None,
        ) -> Payout:
            """Finished ``at``; ``returned``: when WeChat gave its money back (a red packet nobody opened)."""
            payout = Payout(rail=rail, user_id=user.id, amount_fen=fen, external_no="tmp", status=status)
            payout.finished_at = at if status == "succeeded" else None
            payout.returned_at = returned
            db.session.add(payout)
            db.session.flush()
            payout.external_no = external_no_for(rail, payout.id, "")
            db.session.commit()
            return payout

    return Ours()


def findings() -> set[tuple]:
    db.session.rollback()
    rows = db.session.execute(select(ReconciliationMismatch)).scalars()
    return {(m.kind, m.subject_type, m.subject_ref, m.ours_fen, m.theirs_fen) for m in rows}


def runs() -> dict[str, ReconciliationRun]:
    db.session.rollback()
    return {r.kind: r for r in db.session.execute(select(ReconciliationRun)).scalars()}


def alerts(kind: str) -> list[Alert]:
    return list(db.session.execute(select(Alert).where(Alert.kind == kind)).scalars())


# -- the day with planted mismatches -------------------------------------------------------------


@pytest.fixture
def planted(ours, wechat):
    """Five planted mismatches among lines that match, on both bills."""
    ok = ours.order("ORD-OK", 50_00, bj(10))
    late = ours.order("ORD-LATE", 88_00, bj(23, 30))  # 15:30 UTC: still the 1st in Beijing
    ours.order("ORD-NEXT-DAY", 7_00, bj(0, 10, day=2))  # 16:10 UTC on the 1st, but the 2nd in Beijing
    ours.order("ORD-LOST", 30_00, bj(12))  # paid here, WeChat lacks it
    ours.order("ORD-CENT", 100_00, bj(13))  # WeChat says one fen more
    ours.refund(ok, "RF-OK", 10_00, bj(14))
    ours.refund(late, "RF-DIFF", 5_00, bj(23, 45))  # WeChat says 5.01
    transfer = ours.payout(5_00, bj(9))
    packet = ours.payout(8_88, bj(9, 30), rail="cash_red_packet")  # found through the remark
    lost = ours.payout(2_00, bj(11))  # missing from the fund-flow bill
    ours.payout(3_00, bj(11), rail="wechat_coupon")  # a coupon moves no money: never in the fund-flow bill
    wechat.serve(
        "trade",
        trade_bill(
            paid("ORD-OK", "50.00"),
            paid("ORD-LATE", "88.00", at="2024-05-01 23:30:00"),
            paid("ORD-CENT", "100.01"),
            paid("ORD-STRANGER", "12.34"),
            refunded("ORD-OK", "RF-OK", "10.00"),
            refunded("ORD-LATE", "RF-DIFF", "5.01"),
        ),
    )
    wechat.serve(
        "fund",
        fund_bill(
            flow("交易", "收入", "50.00", voucher="ORD-OK"),
            flow("退款", "支出", "10.00", voucher="RF-OK"),
            flow("扣除交易手续费", "支出", "0.30"),
            flow("商家转账", "支出", "5.00", voucher=transfer.external_no),
            flow("现金红包", "支出", "8.88", remark=f"红包{packet.external_no}发放"),
        ),
    )
    return {"lost_payout": lost}


def test_a_day_with_planted_mismatches_finds_each_of_them_and_nothing_else(planted, pay_client):
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then
    assert findings() == {
        ("missing_here", "order", "ORD-STRANGER", None, 12_34),
        ("missing_there", "order", "ORD-LOST", 30_00, None),
        ("amount_differs", "order", "ORD-CENT", 100_00, 100_01),
        ("amount_differs", "refund", "RF-DIFF", 5_00, 5_01),
        ("missing_there", "payout", planted["lost_payout"].external_no, 2_00, None),
    }
    trade, fund = runs()["trade"], runs()["fundflow"]
    assert (trade.status, trade.lines_read, trade.matched, trade.mismatches) == ("done", 6, 3, 4)
    assert (fund.status, fund.lines_read, fund.matched, fund.mismatches) == ("done", 5, 2, 1)
    [alert] = alerts("reconciliation_mismatch")
    assert alert.message.startswith("5 mismatches on 2024-05-01") and "ORD-STRANGER" in alert.message
    assert alerts("reconciliation_failed") == []


def test_a_clean_day_has_no_mismatches_and_amounts_are_exact(ours, wechat, pay_client):
    # given: a one-fen order, a large one, a refund and a payout, all as WeChat lists them
    ours.order("ORD-TINY", 1, bj(8))
    big = ours.order("ORD-BIG", 1_234_56, bj(9))
    ours.refund(big, "RF-BIG", 1_000_01, bj(20))
    payout = ours.payout(1, bj(21))
    wechat.serve(
        "trade",
        trade_bill(paid("ORD-TINY", "0.01"), paid("ORD-BIG", "1234.56"), refunded("ORD-BIG", "RF-BIG", "1000.01")),
    )
    wechat.serve("fund", fund_bill(flow("商家转账", "支出", "0.01", voucher=payout.external_no)))
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then
    assert findings() == set()
    assert {k: (r.status, r.matched, r.mismatches) for k, r in runs().items()} == {
        "trade": ("done", 3, 0),
        "fundflow": ("done", 1, 0),
    }
    assert db.session.execute(select(func.count(Alert.id))).scalar_one() == 0
    assert [(auth.split(" ")[0], open_tx) for auth, open_tx in wechat.downloads] == [
        ("WECHATPAY2-SHA256-RSA2048", False),
        ("WECHATPAY2-SHA256-RSA2048", False),
    ]  # signed downloads, and no database transaction held across either call


def test_a_hash_mismatch_fails_the_run_with_an_alert_and_records_nothing(ours, wechat, pay_client):
    # given: an order WeChat would lack, and a trade bill whose content is not what WeChat announced
    ours.order("ORD-LOST", 30_00, bj(12))
    content = trade_bill(paid("ORD-OTHER", "1.00"))
    wechat.serve("trade", content, hash_value=sha1(content + b"tampered"))
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then
    trade = runs()["trade"]
    assert (trade.status, trade.matched, trade.mismatches) == ("failed", 0, 0)
    assert "HASH_MISMATCH" in trade.error and trade.hash_value == sha1(content + b"tampered")
    assert findings() == set()
    [alert] = alerts("reconciliation_failed")
    assert alert.subject == "trade bill 2024-05-01"
    assert runs()["fundflow"].status == "done"  # the other bill is judged on its own


def test_commas_in_product_names_and_attach_do_not_shift_columns(ours, wechat, pay_client):
    # given: WeChat's unquoted bill with commas inside the product name and the attach field
    ours.order("ORD-COMMA", 50_00, bj(10))
    line = paid("ORD-COMMA", "50.00")
    line[20], line[21] = "牛肉面, 大碗,加蛋", "campaign=7,packet=9"
    wechat.serve("trade", trade_bill(line))
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: read as one 50-yuan payment that matches ours
    trade = runs()["trade"]
    assert (trade.status, trade.matched, trade.mismatches, trade.error) == ("done", 1, 0, None)
    assert findings() == set()


@pytest.mark.parametrize("hash_type", ["MD5", "", None])
def test_an_unexpected_hash_type_fails_the_run_before_any_download(ours, wechat, pay_client, hash_type):
    # given: a bill answer announcing a hash type WeChat does not document (no download is served)
    ours.order("ORD-LOST", 30_00, bj(12))
    content = trade_bill(paid("ORD-OTHER", "1.00"))
    answer = {"hash_value": sha1(content), "download_url": f"{BASE}/v3/billdownload/file?token=t"}
    wechat._answer("trade", DAY, 200, {**answer, **({"hash_type": hash_type} if hash_type is not None else {})})
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then
    trade = runs()["trade"]
    assert trade.status == "failed" and "UNEXPECTED_HASH_TYPE" in trade.error
    assert findings() == set() and len(wechat.downloads) == 1  # only the fund-flow file was fetched
    [alert] = alerts("reconciliation_failed")
    assert alert.subject == "trade bill 2024-05-01"


def test_a_malformed_amount_fails_the_run_with_no_partial_results(ours, wechat, pay_client):
    ours.order("ORD-LOST", 30_00, bj(12))
    wechat.serve("trade", trade_bill(paid("ORD-STRANGER", "12.34"), paid("ORD-BAD", "12.345", total="12.34")))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    trade = runs()["trade"]
    assert trade.status == "failed"
    assert "line 3, 应结订单金额" in trade.error and "12.345" in trade.error
    assert findings() == set()
    assert len(alerts("reconciliation_failed")) == 1 and alerts("reconciliation_mismatch") == []


def test_a_rerun_updates_the_same_rows_and_keeps_an_operators_resolution(planted, ours, pay_client, make_operator):
    # given: a first run, and an operator who resolved one finding
    reconcile_day(pay_client, DAY, NOW)
    operator, _ = make_operator("finance")
    cent = db.session.execute(
        select(ReconciliationMismatch).where(ReconciliationMismatch.subject_ref == "ORD-CENT")
    ).scalar_one()
    cent.resolved_at, cent.resolved_by, cent.resolution = NOW, operator.id, "WeChat confirmed 100.01; refunded 0.01"
    db.session.commit()
    # when: the same day runs twice more, and meanwhile the stranger order is found in our records
    reconcile_day(pay_client, DAY, NOW + timedelta(hours=1))
    ours.order("ORD-STRANGER", 12_34, bj(15))
    reconcile_day(pay_client, DAY, NOW + timedelta(hours=2))
    # then: one run per bill, no duplicate rows, the resolution kept, the fixed finding gone
    assert db.session.execute(select(func.count(ReconciliationRun.id))).scalar_one() == 2
    assert db.session.execute(select(func.count(ReconciliationMismatch.id))).scalar_one() == 4
    assert ("missing_here", "order", "ORD-STRANGER", None, 12_34) not in findings()
    cent = db.session.execute(
        select(ReconciliationMismatch).where(ReconciliationMismatch.subject_ref == "ORD-CENT")
    ).scalar_one()
    assert cent.resolved_by == operator.id and cent.resolution.startswith("WeChat confirmed")
    assert runs()["trade"].mismatches == 3 and runs()["trade"].finished_at == NOW + timedelta(hours=2)


def test_wechat_paying_out_what_we_think_unfinished_or_twice_is_flagged(ours, wechat, pay_client):
    unknown = ours.payout(5_00, bj(9), status="unknown")
    twice = ours.payout(3_00, bj(10))
    wechat.serve("trade", trade_bill())
    wechat.serve(
        "fund",
        fund_bill(
            flow("商家转账", "支出", "5.00", voucher=unknown.external_no),
            flow("商家转账", "支出", "3.00", voucher=twice.external_no),
            flow("商家转账", "支出", "3.00", voucher=twice.external_no),
            flow("现金红包", "支出", "6.66", voucher="not-ours-1"),
        ),
    )
    reconcile_day(pay_client, DAY, NOW)
    found = findings()
    assert ("status_differs", "payout", unknown.external_no, 5_00, 5_00) in found
    assert ("amount_differs", "payout", twice.external_no, 3_00, 6_00) in found
    assert len(found) == 3 and any(f[0] == "missing_here" and f[4] == 6_66 for f in found)


def test_a_red_packet_nobody_opened_is_matched_by_the_income_line_of_its_refund_day(ours, wechat, pay_client):
    # given: a packet sent the day before, given back on the 1st (and its money back in the user's balance)
    back = ours.payout(3_00, bj(9) - timedelta(days=1), rail="cash_red_packet", returned=bj(9, 30))
    later = ours.payout(4_00, bj(9), rail="cash_red_packet", returned=bj(9, 30, day=2))  # the 2nd's bill lists it
    wechat.serve("trade", trade_bill())
    wechat.serve(
        "fund",
        fund_bill(
            flow("现金红包", "支出", "4.00", voucher=later.external_no),
            flow("现金红包退款", "收入", "3.00", voucher=back.external_no),
        ),
    )
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: the send and the return both match
    assert findings() == set()
    assert (runs()["fundflow"].matched, runs()["fundflow"].mismatches) == (2, 0)


def test_a_return_we_and_wechat_disagree_on_is_flagged_each_way(ours, wechat, pay_client):
    before = bj(9) - timedelta(days=1)
    kept = ours.payout(5_00, before, rail="cash_red_packet", returned=bj(11))  # we gave it back; WeChat did not
    unseen = ours.payout(4_00, before, rail="cash_red_packet")  # WeChat gave it back; no check has found it yet
    short = ours.payout(6_00, before, rail="cash_red_packet", returned=bj(12))  # WeChat gave back a fen less
    stranger = external_no_for("cash_red_packet", 999_999, "")
    wechat.serve("trade", trade_bill())
    wechat.serve(
        "fund",
        fund_bill(
            flow("现金红包退款", "收入", "4.00", voucher=unseen.external_no),
            flow("现金红包退款", "收入", "5.99", voucher=short.external_no),
            flow("现金红包退款", "收入", "1.00", voucher=stranger),
            flow("现金红包退款", "收入", "2.00"),  # no number of ours at all
            flow("交易", "收入", "9.00", voucher="ORD-ANY"),  # a sale: not a return
        ),
    )
    reconcile_day(pay_client, DAY, NOW)
    found = findings()
    assert {f for f in found if not f[2].startswith("wx:")} == {
        ("missing_there", "payout", kept.external_no + ":returned", 5_00, None),
        ("status_differs", "payout", unseen.external_no + ":returned", None, 4_00),
        ("amount_differs", "payout", short.external_no + ":returned", 6_00, 5_99),
        ("missing_here", "payout", stranger + ":returned", None, 1_00),
    }
    [(kind, _, ref, ours_fen, theirs)] = [f for f in found if f[2].startswith("wx:")]
    assert (kind, ref.endswith(":returned"), ours_fen, theirs) == ("missing_here", True, None, 2_00)


def test_an_order_wechat_lists_as_paid_but_we_never_saw_paid_is_flagged(ours, wechat, pay_client):
    # the payment notification was lost and the query job has not caught it yet
    ours.order("ORD-UNSEEN", 20_00, None, status="created")
    wechat.serve("trade", trade_bill(paid("ORD-UNSEEN", "20.00")))
    wechat.serve("fund", fund_bill(flow("交易", "收入", "20.00", voucher="ORD-UNSEEN")))
    reconcile_day(pay_client, DAY, NOW)
    assert findings() == {("status_differs", "order", "ORD-UNSEEN", 20_00, 20_00)}


def test_no_bill_for_a_quiet_day_means_wechat_lists_nothing(ours, wechat, pay_client):
    # WeChat answers NO_STATEMENT_EXIST for a day without movements: our paid order is then missing there
    ours.order("ORD-LOST", 30_00, bj(12))
    wechat.refuse("trade", "NO_STATEMENT_EXIST", "请求的账单文件不存在")
    wechat.refuse("fund", "NO_STATEMENT_EXIST", "请求的账单文件不存在")
    reconcile_day(pay_client, DAY, NOW)
    assert findings() == {("missing_there", "order", "ORD-LOST", 30_00, None)}
    assert {r.status for r in runs().values()} == {"done"}


def test_a_bill_not_ready_fails_the_run(ours, wechat, pay_client):
    wechat.refuse("trade", "STATEMENT_CREATING", "账单生成中")
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    assert runs()["trade"].status == "failed" and "STATEMENT_CREATING" in runs()["trade"].error


def test_the_daily_job_reconciles_yesterday_in_beijing_and_checks_the_ledger(ours, wechat, pay_client):
    # 17:30 UTC on the 1st is 01:30 on the 2nd in Beijing: "yesterday" is the 1st, not the 30th
    wechat.serve("trade", trade_bill())
    wechat.serve("fund", fund_bill())
    checks = run_daily_checks(pay_client, datetime(2024, 5, 1, 17, 30, tzinfo=UTC), point_value_fen=1)
    assert [r.bill_date for r in checks.runs] == [DAY, DAY]
    assert checks.ledger.ok and alerts("ledger_check_failed") == []


def test_a_day_not_yet_over_in_beijing_is_refused(app, pay_client):
    with pytest.raises(ValueError, match="not out yet"):
        reconcile_day(pay_client, "2024-05-02", datetime(2024, 5, 1, 17, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "fen"),
    [("0.01", 1), ("0", 0), ("0.0", 0), ("12.3", 12_30), ("1234.56", 1_234_56), ("-5.00", -5_00),
     ("99999999.99", 9_999_999_999)],
)  # fmt: skip
def test_bill_amounts_are_parsed_exactly(text, fen):
    assert bill_amount_fen(text) == fen


# A bill is comma-separated and unquoted: "1,234.56" cannot be one field, and a quoted one means the
# format is not what we know. Amounts are plain decimal yuan; anything else fails the run.
@pytest.mark.parametrize("text", ["1,234.56", "¥1.00", "1.234", "0.005", "1e3", "", "abc", "１.00", "1.2.3", "+1"])
def test_anything_but_plain_decimal_yuan_is_refused(text):
    with pytest.raises(BillFormatError):
        bill_amount_fen(text)


def test_our_bill_layout_is_the_one_the_simulator_writes():
    assert TRADE_HEADER == TRADE_BILL_HEADER and FUND_HEADER == FUND_BILL_HEADER


# -- the summary: there, and agreeing with the detail lines ---------------------------------------


def test_a_trade_bill_without_its_summary_fails_its_run_rather_than_swallowing_two_payments(ours, wechat, pay_client):
    # given: a bill cut after its detail lines: the last two (payments we never saw) would be read as the summary
    ours.order("ORD-A", 10_00, bj(9))
    lines = [paid("ORD-A", "10.00"), paid("ORD-X", "20.00"), paid("ORD-Y", "30.00")]
    content = ("\r\n".join([TRADE_HEADER] + [",".join("`" + v for v in x) for x in lines]) + "\r\n").encode()
    wechat.serve("trade", content)
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then
    trade = runs()["trade"]
    assert (trade.status, trade.lines_read) == ("failed", 0) and "BILL_SUMMARY_MISSING" in trade.error
    assert "line 3" in trade.error and findings() == set()
    [alert] = alerts("reconciliation_failed")
    assert alert.subject == "trade bill 2024-05-01"
    assert runs()["fundflow"].status == "done"


@pytest.mark.parametrize(
    ("summary", "said"),
    [
        (["3", "60.00", "0.00", "0.00", "0.00", "60.00", "0.00"], "总交易单数 is 3"),  # two lines lost
        (["1", "60.00", "0.00", "0.00", "0.00", "10.00", "0.00"], "应结订单总金额 is 60.00"),
        (["1", "10.00", "0.00", "0.00", "0.00", "10.00", "5.00"], "申请退款总金额 is 5.00"),
        (["1", "10.00", "0.00", "0.00", "0.00", "10.01", "0.00"], "订单总金额 is 10.01"),
    ],
)
def test_a_trade_summary_disagreeing_with_the_lines_fails_its_run(ours, wechat, pay_client, summary, said):
    ours.order("ORD-A", 10_00, bj(9))
    wechat.serve("trade", _csv(TRADE_HEADER, [paid("ORD-A", "10.00")], TRADE_SUMMARY, summary))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    trade = runs()["trade"]
    assert trade.status == "failed" and said in trade.error, trade.error
    assert findings() == set() and len(alerts("reconciliation_failed")) == 1
    assert runs()["fundflow"].status == "done"


@pytest.mark.parametrize(
    ("summary_header", "summary", "said"),
    [
        (FUND_SUMMARY, ["2", "0", "0.00", "2", "5.00"], "资金流水总笔数 is 2"),
        (FUND_SUMMARY, ["1", "0", "0.00", "1", "9.99"], "支出金额 is 9.99"),
        (FUND_SUMMARY, ["1", "1", "5.00", "0", "0.00"], "收入笔数 is 1"),
        (TRADE_SUMMARY, ["1", "5.00", "0.00", "0.00", "0.00", "5.00", "0.00"], "BILL_SUMMARY_MISSING"),
    ],
)
def test_a_fund_flow_summary_that_is_not_its_own_or_disagrees_fails_its_run(
    ours, wechat, pay_client, summary_header, summary, said
):
    payout = ours.payout(5_00, bj(9))
    lines = [flow("商家转账", "支出", "5.00", voucher=payout.external_no)]
    wechat.serve("trade", trade_bill())
    wechat.serve("fund", _csv(FUND_HEADER, lines, summary_header, summary))
    reconcile_day(pay_client, DAY, NOW)
    fund = runs()["fundflow"]
    assert fund.status == "failed" and said in fund.error, fund.error
    assert findings() == set() and runs()["trade"].status == "done"
    [alert] = alerts("reconciliation_failed")
    assert alert.subject == "fundflow bill 2024-05-01"


# -- a line of another merchant ----------------------------------------------------------------


def test_a_trade_line_of_another_merchant_is_flagged_and_never_matched_to_our_order(ours, wechat, pay_client):
    # given: our order ORD-A, and a bill whose only line is merchant 1999999999's payment of that same number
    ours.order("ORD-A", 10_00, bj(9))
    line = paid("ORD-A", "10.00")
    line[2] = "1999999999"
    wechat.serve("trade", trade_bill(line))
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: the other merchant's line is a finding of its own, and our payment is missing from our bill
    assert findings() == {
        ("missing_here", "order", "ORD-A@1999999999", None, 10_00),
        ("missing_there", "order", "ORD-A", 10_00, None),
    }
    trade = runs()["trade"]
    assert (trade.status, trade.lines_read, trade.matched, trade.mismatches) == ("done", 1, 0, 2)
    detail = db.session.execute(
        select(ReconciliationMismatch.detail).where(ReconciliationMismatch.subject_ref == "ORD-A@1999999999")
    ).scalar_one()
    assert detail == "line 2: 商户号 1999999999 is not ours (1900000109)"


def test_a_line_of_a_sub_merchant_in_our_own_bill_is_flagged(ours, wechat, pay_client):
    # a direct merchant's bill lists its own payments with 特约商户号 0; a refund of a sub-merchant's is not ours
    order = ours.order("ORD-A", 10_00, bj(9))
    ours.refund(order, "RF-A", 4_00, bj(10))
    stray = refunded("ORD-A", "RF-A", "4.00")
    stray[3] = "1900000201"
    wechat.serve("trade", trade_bill(paid("ORD-A", "10.00"), stray))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    assert findings() == {
        ("missing_here", "refund", "RF-A@1900000201", None, 4_00),
        ("missing_there", "refund", "RF-A", 4_00, None),
    }
    assert (runs()["trade"].matched, runs()["trade"].mismatches) == (1, 2)


# -- our payout numbers with the environment prefix --------------------------------------------------


def prefixed_payout(ours, fen: int, prefix: str = "S") -> Payout:
    payout = ours.payout(fen, bj(9))
    payout.external_no = external_no_for("wechat_change", payout.id, prefix)
    db.session.commit()
    return payout


def test_payouts_with_the_environment_prefix_match_the_fund_flow_bill(ours, wechat, pay_client):
    # given: WECHAT_NUMBER_PREFIX=S (staging sharing the merchant number): our numbers are S + TB + 12 digits
    payout = prefixed_payout(ours, 5_00)
    wechat.serve("trade", trade_bill())
    wechat.serve("fund", fund_bill(flow("商家转账", "支出", "5.00", voucher=payout.external_no)))
    # when: the shell says our prefix
    bills = fetch_bills(pay_client, date(2024, 5, 1), number_prefix="S")
    write_results(date(2024, 5, 1), bills, NOW)
    db.session.commit()
    # then
    assert findings() == set()
    assert (runs()["fundflow"].matched, runs()["fundflow"].mismatches) == (1, 0)


def test_the_daily_job_tells_reconciliation_the_prefix_of_its_settings(app, ours, wechat, pay_client):
    # given: this environment numbers its payouts S + TB + 12 digits
    app.config["WECHAT_NUMBER_PREFIX"] = "S"
    payout = prefixed_payout(ours, 5_00)
    wechat.serve("trade", trade_bill())
    wechat.serve("fund", fund_bill(flow("商家转账", "支出", "5.00", voucher=payout.external_no)))
    # when: the job reconciles the day as it is scheduled
    reconcile_day(pay_client, DAY, NOW)
    # then
    assert findings() == set()
    assert (runs()["fundflow"].matched, runs()["fundflow"].mismatches) == (1, 0)


def test_prefixed_payouts_match_when_reconciliation_is_not_told_the_prefix(ours, wechat, pay_client):
    # a caller that does not say the prefix: a prefixed number that names one of our payouts is ours
    payout = prefixed_payout(ours, 5_00)
    wechat.serve("trade", trade_bill())
    wechat.serve("fund", fund_bill(flow("商家转账", "支出", "5.00", voucher=payout.external_no)))
    write_results(date(2024, 5, 1), fetch_bills(pay_client, date(2024, 5, 1)), NOW)
    db.session.commit()
    assert findings() == set()
    assert (runs()["fundflow"].matched, runs()["fundflow"].mismatches) == (1, 0)


def fund_row(voucher: str, remark: str = "") -> dict[str, str]:
    cells = flow("商家转账", "支出", "5.00", voucher=voucher, remark=remark)
    return dict(zip(FUND_HEADER.split(","), cells, strict=True))


@pytest.mark.parametrize(
    ("prefix", "voucher", "remark", "ours_is"),
    [
        ("S", "STB000000000007", "", "STB000000000007"),
        ("S", "", "转账STB000000000007。", "STB000000000007"),  # found in the remark, whole
        ("S", "TB000000000007", "", None),  # production's number: not ours on staging
        ("S", "XSTB000000000007", "", None),  # a longer number that ends like ours
        ("S", "STB0000000000071", "", None),
        ("", "TB000000000007", "", "TB000000000007"),
        ("", "STB000000000007", "", None),  # staging's number: not production's
        (None, "TB000000000007", "", "TB000000000007"),  # not told: a number without a prefix is ours
        ("STG1", "STG1RP000000000042", "", "STG1RP000000000042"),
    ],
)
def test_a_fund_line_names_our_number_only_with_our_prefix_and_whole(prefix, voucher, remark, ours_is):
    assert fund_line(fund_row(voucher, remark), 2, prefix).our_no == ours_is


# -- failures while fetching, parsing or writing fail the runs, never leave them running ---------------


@pytest.mark.parametrize(
    "odd",
    [
        {"download_url": 12345},
        {"hash_type": ["SHA1"]},
        {"hash_value": 40},
        {"hash_value": "da39a3ee\u0000"},
        {"download_url": ""},
    ],
)
def test_an_apply_answer_of_the_wrong_types_fails_only_its_run(ours, wechat, pay_client, odd):
    content = trade_bill(paid("ORD-OTHER", "1.00"))
    answer = {"hash_type": "SHA1", "hash_value": sha1(content), "download_url": f"{BASE}/v3/billdownload/file?t=1"}
    wechat._answer("trade", DAY, 200, {**answer, **odd})
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    trade = runs()["trade"]
    assert trade.status == "failed" and "UNPARSEABLE_RESPONSE" in trade.error, trade.error
    assert runs()["fundflow"].status == "done" and findings() == set()
    [alert] = alerts("reconciliation_failed")
    assert alert.subject == "trade bill 2024-05-01"


def test_an_answer_that_is_not_an_object_fails_its_run(ours, wechat, pay_client):
    wechat._answer("trade", DAY, 200, ["not", "an", "object"])
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    assert runs()["trade"].status == "failed" and runs()["fundflow"].status == "done"


def test_a_hash_type_of_another_type_is_refused_as_unexpected():
    with pytest.raises(WeChatIntegrityError) as info:
        check_hash_type(["SHA1"])
    assert info.value.code == "UNEXPECTED_HASH_TYPE"
    with pytest.raises(WeChatUnavailable):
        bill_answer({"download_url": f"{BASE}/x", "hash_value": "ab", "hash_type": ["SHA1"]})


def test_any_failure_while_fetching_fails_only_that_bills_run(ours, wechat, pay_client, monkeypatch):
    wechat.serve("fund", fund_bill())

    def broken(*_args, **_kwargs):
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr(pay_client, "trade_bill", broken)
    reconcile_day(pay_client, DAY, NOW)
    trade = runs()["trade"]
    assert trade.status == "failed" and "RuntimeError" in trade.error and "did not foresee" in trade.error
    assert runs()["fundflow"].status == "done"
    assert len(alerts("reconciliation_failed")) == 1


def test_long_order_numbers_agreeing_on_64_characters_stay_two_findings(ours, wechat, pay_client):
    # given: two numbers WeChat would never issue (32 at most), the same for 64 characters
    first, second = "A" * 64 + "-first", "A" * 64 + "-second"
    wechat.serve("trade", trade_bill(paid(first, "1.00"), paid(second, "2.00")))
    wechat.serve("fund", fund_bill())
    # when
    reconcile_day(pay_client, DAY, NOW)
    # then: both stored, each ref at most 64 characters, told apart by a digest of the whole
    found = findings()
    assert {(kind, theirs) for kind, _, _, _, theirs in found} == {("missing_here", 1_00), ("missing_here", 2_00)}
    refs = {ref for _, _, ref, _, _ in found}
    assert len(refs) == 2 and all(len(ref) <= 64 and ref.startswith("A" * 48) for ref in refs)
    assert runs()["trade"].status == "done" and alerts("reconciliation_failed") == []


def test_a_bill_line_holding_a_nul_fails_the_run_naming_the_line(ours, wechat, pay_client):
    ours.order("ORD-A", 10_00, bj(9))
    wechat.serve("trade", trade_bill(paid("ORD-A", "10.00"), paid("ORD-\x00B", "2.00")))
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    trade = runs()["trade"]
    assert trade.status == "failed" and "line 3" in trade.error and "NUL" in trade.error
    assert "\x00" not in trade.error and findings() == set()
    assert runs()["fundflow"].status == "done"


def test_a_nul_in_wechats_error_message_is_neutralised(ours, wechat, pay_client):
    wechat.refuse("trade", "STATEMENT_CREATING", "账单\u0000生成中")
    wechat.serve("fund", fund_bill())
    reconcile_day(pay_client, DAY, NOW)
    trade = runs()["trade"]
    assert trade.status == "failed" and "\x00" not in trade.error and "STATEMENT_CREATING" in trade.error


def test_a_failure_while_writing_the_results_fails_the_runs_with_an_alert(ours, wechat, pay_client, monkeypatch):
    # given: two good bills, and a database that refuses what the matching writes
    ours.order("ORD-A", 10_00, bj(9))
    wechat.serve("trade", trade_bill(paid("ORD-A", "10.00")))
    wechat.serve("fund", fund_bill())

    def refused(*_args, **_kwargs):
        raise RuntimeError("the database refused a row")

    monkeypatch.setattr(reconcile, "_save_findings", refused)
    # when
    returned = reconcile_day(pay_client, DAY, NOW)
    # then: no run left running; each failed with its alert; nothing half-written
    assert {kind: run.status for kind, run in runs().items()} == {"trade": "failed", "fundflow": "failed"}
    assert all("RuntimeError" in run.error for run in runs().values())
    assert [r.status for r in returned] == ["failed", "failed"]
    assert sorted(a.subject for a in alerts("reconciliation_failed")) == [
        "fundflow bill 2024-05-01",
        "trade bill 2024-05-01",
    ]
    assert findings() == set() and alerts("reconciliation_mismatch") == []


def test_download_bill_refuses_a_url_that_is_not_a_string(pay_client):
    with pytest.raises(WeChatUnavailable) as info:
        pay_client.download_bill(12345, sha1(b""), "SHA1")
    assert info.value.code == "UNPARSEABLE_RESPONSE"


def test_the_daily_job_catches_up_the_days_of_the_week_it_missed_or_failed(ours, wechat, pay_client):
    """A jobs process down at 10:30 (a deploy) skipped that day for good, and a bill not ready yet
    (``STATEMENT_CREATING``) failed its day for good: the next daily runs reconcile them again."""
    from datetime import date

    from payouts.reconcile import days_to_catch_up

    old = ours.order("ORD-OLD", 10_00, bj(12))
    old.created_at = bj(12)  # the first order: 1 May
    db.session.add_all(
        [
            ReconciliationRun(bill_date="2024-05-02", kind="trade", status="done"),
            ReconciliationRun(bill_date="2024-05-02", kind="fundflow", status="done"),
            ReconciliationRun(bill_date="2024-05-03", kind="trade", status="failed", error="STATEMENT_CREATING"),
            ReconciliationRun(bill_date="2024-05-03", kind="fundflow", status="done"),
        ]
    )
    db.session.commit()
    now = datetime(2024, 5, 5, 2, 30, tzinfo=UTC)  # 10:30 Beijing on the 5th: yesterday is the 4th
    assert days_to_catch_up(date(2024, 5, 4), now) == [date(2024, 5, 1), date(2024, 5, 3)]  # none before the 1st
    for day in ("2024-05-04", "2024-05-01", "2024-05-03"):
        wechat.serve("trade", trade_bill(), bill_date=day)
        wechat.serve("fund", fund_bill(), bill_date=day)

    checks = run_daily_checks(pay_client, now, point_value_fen=1)

    assert checks.caught_up == [date(2024, 5, 1), date(2024, 5, 3)]
    assert [r.bill_date for r in checks.runs] == ["2024-05-04", "2024-05-04"]
    db.session.rollback()
    statuses = {(r.bill_date, r.kind): r.status for r in db.session.execute(select(ReconciliationRun)).scalars()}
    assert set(statuses.values()) == {"done"} and len(statuses) == 8
    assert ("missing_there", "order", "ORD-OLD", 10_00, None) in findings()  # the 1st was read
    assert days_to_catch_up(date(2024, 5, 4), now) == []  # and nothing is left to catch up


def test_a_run_left_running_is_caught_up_once_stale_not_while_another_node_works_on_it(ours):
    from datetime import date, timedelta

    from payouts.reconcile import days_to_catch_up

    old = ours.order("ORD-OLD", 10_00, bj(12))
    old.created_at = bj(12)
    now = datetime(2024, 5, 3, 2, 30, tzinfo=UTC)
    db.session.add(
        ReconciliationRun(bill_date=DAY, kind="trade", status="running", started_at=now - timedelta(minutes=5))
    )
    db.session.add(ReconciliationRun(bill_date=DAY, kind="fundflow", status="done"))
    db.session.commit()
    assert days_to_catch_up(date(2024, 5, 2), now) == []
    assert days_to_catch_up(date(2024, 5, 2), now + timedelta(hours=2)) == [date(2024, 5, 1)]


def test_the_same_ledger_violation_is_alerted_once_however_many_nodes_check(app, monkeypatch):
    from ledger.check import CheckReport
    from payouts import reconcile

    def broken(_point_value_fen: int = 1):
        report = CheckReport()
        report.violations.append("user_cash of user 7 is below zero")
        return report

    monkeypatch.setattr(reconcile, "check_ledger", broken)
    for _ in range(3):  # three jobs nodes, or three days while nobody resolved it
        assert not reconcile.check_ledger_and_alert(1).ok
    db.session.commit()
    assert len(alerts("ledger_check_failed")) == 1
