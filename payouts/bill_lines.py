"""WeChat bill lines, parsed exactly: plain decimal yuan into fen, our external numbers found in the text.

Any cell that is not what the bill format promises raises ``BillFormatError`` naming the line and
column, so a reconciliation run fails whole rather than matching half a bill; so does a summary whose count or
totals disagree with the detail lines (:func:`check_trade_summary`, :func:`check_fund_summary`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from money import MoneyError, parse_yuan
from payouts.outbox import PREFIX

# Bill amounts are plain decimal yuan; a comma or currency sign means the columns are not what we think.
PLAIN_YUAN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
PAYOUT_BUSINESS = frozenset({"商家转账", "商家转账到零钱", "企业付款", "现金红包"})  # fund-flow lines of payouts
RETURN_MARK = "退款"  # an income line of a payout's business with it: money given back (现金红包退款)
NUMBER_PREFIX_MAX = 8  # WECHAT_NUMBER_PREFIX: at most 8 letters or digits before the rail tag
# A whole number of the payout shape: an environment prefix, a rail tag, 12 digits, no letter or digit either side.
EXTERNAL_NO = re.compile(
    r"(?<![0-9A-Za-z])(?P<prefix>[0-9A-Za-z]{0,%d}?)(?:%s)[0-9]{12}(?![0-9A-Za-z])"  # noqa: UP031
    % (NUMBER_PREFIX_MAX, "|".join(PREFIX.values())),
    re.ASCII,
)
TRADE_SUMMARY_COLUMNS = (
    "总交易单数",
    "应结订单总金额",
    "退款总金额",
    "充值券退款总金额",
    "手续费总金额",
    "订单总金额",
    "申请退款总金额",
)
FUND_SUMMARY_COLUMNS = ("资金流水总笔数", "收入笔数", "收入金额", "支出笔数", "支出金额")
# A trade summary's totals and the detail column each one adds up.
TRADE_TOTALS = {
    "应结订单总金额": "应结订单金额",
    "退款总金额": "退款金额",
    "充值券退款总金额": "充值券退款金额",
    "手续费总金额": "手续费",
    "订单总金额": "订单金额",
    "申请退款总金额": "申请退款金额",
}


class BillFormatError(ValueError):
    code = "bill_format"


@dataclass(frozen=True, slots=True)  # slots: a busy day's bill is a great many of them
class TradeLine:
    line_no: int
    out_trade_no: str
    state: str  # 交易状态: SUCCESS | REFUND | …
    total_fen: int  # 订单金额
    settled_fen: int  # 应结订单金额
    out_refund_no: str
    refund_fen: int  # 申请退款金额
    refund_state: str
    mchid: str = ""  # 商户号: ours (a service provider's own number in partner mode)
    sub_mchid: str | None = None  # 特约商户号 ("0" for a direct merchant's line); None: the bill has no such column
    # A REFUND row's time (UTC): when WeChat took the refund request, the bill's day (退款申请时间 where the bill has
    # it, else the row's 交易时间); None on a payment row (not read)
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class FundLine:
    line_no: int
    business: str  # 业务名称
    direction: str  # 收支类型: 收入 | 支出
    amount_fen: int
    wechat_no: str  # 微信支付业务单号
    our_no: str | None  # one of our external numbers, from 业务凭证号 or 备注
    numbers: tuple[str, ...] = ()  # every whole number of the payout shape the line names, whatever its prefix

    @property
    def is_payout(self) -> bool:
        return self.direction == "支出" and (self.our_no is not None or self.business in PAYOUT_BUSINESS)

    @property
    def is_return(self) -> bool:
        """Money WeChat gave back for a payout (a cash red packet nobody opened, refunded after 24 h): income that
        names one of our payouts, or income of a payout's business marked as a refund."""
        if self.direction != "收入":
            return False
        named = self.business.replace(RETURN_MARK, "") in PAYOUT_BUSINESS and RETURN_MARK in self.business
        return self.our_no is not None or named


def bill_amount_fen(text: str) -> int:
    """A bill's plain decimal yuan (backtick already stripped) as exact fen."""
    if not PLAIN_YUAN.fullmatch(text):
        raise BillFormatError(f"{text!r} is not a plain yuan amount")
    try:
        return parse_yuan(text)
    except MoneyError as exc:
        raise BillFormatError(str(exc)) from exc


def _cell(row: dict[str, str], n: int, *columns: str) -> tuple[str, str]:
    for column in columns:
        if column in row:
            return column, row[column]
    raise BillFormatError(f"line {n} has no column {columns[0]}")


def _fen(row: dict[str, str], n: int, *columns: str) -> int:
    column, text = _cell(row, n, *columns)
    try:
        return bill_amount_fen(text)
    except BillFormatError as exc:
        raise BillFormatError(f"line {n}, {column}: {exc}") from exc


BILL_TIME = "%Y-%m-%d %H:%M:%S"  # 交易时间 and the refund times: Beijing, to the second
BILL_ZONE = ZoneInfo("Asia/Shanghai")


def bill_time(text: str) -> datetime:
    """A bill's ``yyyy-MM-dd HH:mm:ss`` (Beijing) as UTC; ``BillFormatError`` when it is anything else."""
    try:
        if len(text) != 19:
            raise ValueError
        return datetime.strptime(text, BILL_TIME).replace(tzinfo=BILL_ZONE).astimezone(UTC)
    except ValueError:
        raise BillFormatError(f"{text!r} is not a time yyyy-MM-dd HH:mm:ss") from None


def _time(row: dict[str, str], n: int, *columns: str) -> datetime:
    column, text = _cell(row, n, *columns)
    try:
        return bill_time(text)
    except BillFormatError as exc:
        raise BillFormatError(f"line {n}, {column}: {exc}") from exc


def trade_line(row: dict[str, str], n: int) -> TradeLine:
    """A payment (交易状态 SUCCESS) or refund (REFUND) row; a refund row is matched on its 商户退款单号, so one
    without it cannot be judged and fails the bill, as one without its time does (the day it was asked for)."""
    refund = _cell(row, n, "交易状态")[1] == "REFUND"
    line = TradeLine(
        line_no=n,
        out_trade_no=_cell(row, n, "商户订单号")[1],
        state=_cell(row, n, "交易状态")[1],
        total_fen=_fen(row, n, "订单金额", "应结订单金额"),
        settled_fen=_fen(row, n, "应结订单金额"),
        out_refund_no=_no_zero(_cell(row, n, "商户退款单号")[1]),
        refund_fen=_fen(row, n, "申请退款金额", "退款金额"),
        refund_state=_cell(row, n, "退款状态")[1],
        mchid=_cell(row, n, "商户号")[1],
        sub_mchid=row.get("特约商户号"),
        at=_time(row, n, "退款申请时间", "交易时间") if refund else None,
    )
    if line.state == "REFUND" and not line.out_refund_no:
        raise BillFormatError(f"line {n}: a REFUND row without 商户退款单号")
    return line


def _no_zero(value: str) -> str:
    return "" if value in ("", "0") else value  # payment lines carry "0" in the refund columns


def fund_line(row: dict[str, str], n: int, number_prefix: str | None = None) -> FundLine:
    """``number_prefix``: our environment's (``WECHAT_NUMBER_PREFIX``); a number is ours when it is that prefix, a
    rail tag and 12 digits, whole. ``None`` (not told): one without a prefix is ours; ``numbers`` keeps them all
    for the caller to look up among our payouts."""
    texts = (_cell(row, n, "业务凭证号")[1], row.get("备注", ""))
    numbers = tuple(m.group(0) for text in texts for m in EXTERNAL_NO.finditer(text))
    ours = number_prefix or ""
    our_no = next((no for no in numbers if no[: len(no) - 14] == ours), None)  # 14: the rail tag and 12 digits
    return FundLine(
        line_no=n,
        business=_cell(row, n, "业务名称")[1],
        direction=_cell(row, n, "收支类型")[1],
        amount_fen=abs(_fen(row, n, "收支金额(元)")),
        wechat_no=_cell(row, n, "微信支付业务单号")[1],
        our_no=our_no,
        numbers=numbers,
    )


def _count(summary: dict[str, str], column: str) -> int:
    text = summary.get(column, "")
    if not text.isascii() or not text.isdigit():
        raise BillFormatError(f"the summary's {column} {text!r} is not a count")
    return int(text)


def _agree(what: str, said: int, found: int, as_yuan: bool = True) -> None:
    if said != found:
        show = (lambda fen: f"{fen / 100:.2f}") if as_yuan else str
        raise BillFormatError(f"the summary's {what} is {show(said)}, the detail lines add up to {show(found)}")


def check_trade_summary(rows: list[dict[str, str]], summary: dict[str, str], first_line: int = 2) -> None:
    """The trade bill's summary against its detail rows: 总交易单数 is their number, and each total the summary
    has (应结订单总金额, 订单总金额, 退款总金额, …) the sum of its column; otherwise ``BillFormatError``."""
    totals = TradeTotals()
    for n, row in enumerate(rows, start=first_line):
        totals.add(row, n)
    totals.check(summary, first_line + len(rows) + 1)


class TradeTotals:
    """:func:`check_trade_summary` a row at a time: the rows counted and each total's column added up as they are
    read, so a bill read line by line is checked without keeping its rows."""

    def __init__(self) -> None:
        self.count = 0
        self.fen = dict.fromkeys(TRADE_TOTALS.values(), 0)
        self.lacking: dict[str, int] = {}  # a column some row lacks: the first such row's line

    def add(self, row: dict[str, str], n: int) -> None:
        self.count += 1
        for column in self.fen:
            if column in row:
                self.fen[column] += _fen(row, n, column)
            else:
                self.lacking.setdefault(column, n)

    def check(self, summary: dict[str, str], n: int) -> None:
        """``n``: the summary row's line."""
        _agree("总交易单数", _count(summary, "总交易单数"), self.count, as_yuan=False)
        for total, column in TRADE_TOTALS.items():
            if total in summary:
                if column in self.lacking:
                    raise BillFormatError(f"line {self.lacking[column]} has no column {column}")
                _agree(total, _fen(summary, n, total), self.fen[column])


def check_fund_summary(lines: list[FundLine], summary: dict[str, str], first_line: int = 2) -> None:
    """The fund-flow bill's summary against its lines: 资金流水总笔数, and the count and amount of 收入 and of
    支出; otherwise ``BillFormatError``."""
    n = first_line + len(lines) + 1
    _agree("资金流水总笔数", _count(summary, "资金流水总笔数"), len(lines), as_yuan=False)
    for direction, count, amount in (("收入", "收入笔数", "收入金额"), ("支出", "支出笔数", "支出金额")):
        these = [x for x in lines if x.direction == direction]
        _agree(count, _count(summary, count), len(these), as_yuan=False)
        _agree(amount, abs(_fen(summary, n, amount)), sum(x.amount_fen for x in these))
