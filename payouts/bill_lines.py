"""WeChat bill lines, parsed exactly: plain decimal yuan into fen, our external numbers found in the text.

Any cell that is not what the bill format promises raises ``BillFormatError`` naming the line and
column, so a reconciliation run fails whole rather than matching half a bill.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from money import MoneyError, parse_yuan
from payouts.outbox import PREFIX

# Bill amounts are plain decimal yuan; a comma or currency sign means the columns are not what we think.
PLAIN_YUAN = re.compile(r"-?[0-9]+(?:\.[0-9]+)?", re.ASCII)
PAYOUT_BUSINESS = frozenset({"商家转账", "商家转账到零钱", "企业付款", "现金红包"})  # fund-flow lines of payouts
RETURN_MARK = "退款"  # an income line of a payout's business with it: money given back (现金红包退款)
EXTERNAL_NO = re.compile(r"(?<![0-9A-Za-z])(?:%s)[0-9]{12}(?![0-9A-Za-z])" % "|".join(PREFIX.values()))  # noqa: UP031


class BillFormatError(ValueError):
    code = "bill_format"


@dataclass(frozen=True)
class TradeLine:
    line_no: int
    out_trade_no: str
    state: str  # 交易状态: SUCCESS | REFUND | …
    total_fen: int  # 订单金额
    settled_fen: int  # 应结订单金额
    out_refund_no: str
    refund_fen: int  # 申请退款金额
    refund_state: str


@dataclass(frozen=True)
class FundLine:
    line_no: int
    business: str  # 业务名称
    direction: str  # 收支类型: 收入 | 支出
    amount_fen: int
    wechat_no: str  # 微信支付业务单号
    our_no: str | None  # one of our external numbers, from 业务凭证号 or 备注

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


def trade_line(row: dict[str, str], n: int) -> TradeLine:
    """A payment (交易状态 SUCCESS) or refund (REFUND) row; a refund row is matched on its 商户退款单号, so one
    without it cannot be judged and fails the bill."""
    line = TradeLine(
        line_no=n,
        out_trade_no=_cell(row, n, "商户订单号")[1],
        state=_cell(row, n, "交易状态")[1],
        total_fen=_fen(row, n, "订单金额", "应结订单金额"),
        settled_fen=_fen(row, n, "应结订单金额"),
        out_refund_no=_no_zero(_cell(row, n, "商户退款单号")[1]),
        refund_fen=_fen(row, n, "申请退款金额", "退款金额"),
        refund_state=_cell(row, n, "退款状态")[1],
    )
    if line.state == "REFUND" and not line.out_refund_no:
        raise BillFormatError(f"line {n}: a REFUND row without 商户退款单号")
    return line


def _no_zero(value: str) -> str:
    return "" if value in ("", "0") else value  # payment lines carry "0" in the refund columns


def fund_line(row: dict[str, str], n: int) -> FundLine:
    found = EXTERNAL_NO.search(_cell(row, n, "业务凭证号")[1]) or EXTERNAL_NO.search(row.get("备注", ""))
    return FundLine(
        line_no=n,
        business=_cell(row, n, "业务名称")[1],
        direction=_cell(row, n, "收支类型")[1],
        amount_fen=abs(_fen(row, n, "收支金额(元)")),
        wechat_no=_cell(row, n, "微信支付业务单号")[1],
        our_no=found.group(0) if found else None,
    )
