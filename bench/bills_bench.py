"""``python -m bench bills``: the memory a day's trade bill takes to read, as a multiple of the bill's own size.

A busy merchant's trade bill runs to hundreds of megabytes, and the reconciliation job reads it on a host that also
serves payments. The bill is built as WeChat writes it (``BENCH_BILL_LINES`` payment rows, default 100,000, then its
summary), then read two ways in the same run, each with ``tracemalloc`` tracing: as the job reads it
(``payouts.reconcile.read_trade_lines``: a line at a time, each row dropped once its ``TradeLine`` is kept), and the
way it was read before (the whole bill decoded as one text, split into a list of lines, a dict per row, then the
``TradeLine`` of each). Both must give the same lines. The figure is each read's peak over the bill's size: what the
job's reading adds is the lines it keeps to match, not copies of the file.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator

from bench import harness
from money import format_yuan as yuan
from payouts.bill_lines import TRADE_SUMMARY_COLUMNS, trade_line
from payouts.reconcile import read_trade_lines
from wechat.bills import split_data, split_header

LINES = harness.env_int("BENCH_BILL_LINES", 100_000)
# WeChat's trade bill header (type ALL), as its bills and the simulator write it (the bench imports no simulator)
TRADE_BILL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,"
    "货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,"
    "商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注"
)
TRADE_SUMMARY_HEADER = ",".join(TRADE_SUMMARY_COLUMNS)


def run() -> Iterator[str]:
    content = bill(LINES)
    harness.progress(f"bills: a trade bill of {LINES:,} lines, {len(content) / 2**20:.1f} MiB")
    streamed, lines = peak(lambda: read_trade_lines(content))
    whole, same = peak(lambda: read_whole(content))
    if lines != same:
        raise SystemExit("bills: the two readings disagree")
    size = len(content)
    yield (
        f"trade bill of {LINES:,} lines ({size / 2**20:.1f} MiB): read a line at a time peaks at "
        f"{streamed / size:.1f}x its size ({streamed / 2**20:.1f} MiB) vs {whole / size:.1f}x "
        f"({whole / 2**20:.1f} MiB) read whole (text, lines, a dict per row) → {streamed / whole:.2f}x the memory"
    )


def peak(read: Callable[[], list]) -> tuple[int, list]:
    """The peak of traced memory while ``read`` runs (what it allocates, the bill's bytes not counted)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = read()
        _, top = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return top, result


def read_whole(content: bytes) -> list:
    """The bill as it was read before: one text, a list of lines, a dict per row, then the lines."""
    text = content.decode("utf-8-sig")
    lines = [line.removesuffix("\r") for line in text.split("\n") if line.strip()]
    header = split_header(lines[0])
    rows = [dict(zip(header, split_data(line), strict=True)) for line in lines[1:-2]]
    return [trade_line(row, n) for n, row in enumerate(rows, start=2)]


def bill(count: int) -> bytes:
    """A day's trade bill of ``count`` payments of 12.34 as WeChat writes it: backtick-marked fields, then the
    summary counting them and adding each amount column."""
    fen, fee = 12_34, 7

    def row(i: int) -> str:
        fields = [
            "2024-05-01 10:00:00", "wxtestapp", "1900000109", "0", "", f"42000{i:023d}", f"O20240501{i:016X}",
            "o-user", "JSAPI", "SUCCESS", "OTHERS", "CNY", yuan(fen), "0.00", "0", "0", "0.00", "0.00", "", "",
            "goods", "", yuan(fee), "0.60%", yuan(fen), "0.00", "",
        ]  # fmt: skip
        return ",".join("`" + f for f in fields)

    summary = [str(count), yuan(fen * count), "0.00", "0.00", yuan(fee * count), yuan(fen * count), "0.00"]
    lines = [
        TRADE_BILL_HEADER,
        *(row(i) for i in range(count)),
        TRADE_SUMMARY_HEADER,
        ",".join("`" + s for s in summary),
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
