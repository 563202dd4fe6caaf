"""A merchant's monthly statement (README "Merchant statements"): JSON, or CSV for Excel; read-only.

Platform roles see any merchant's, merchant staff only their own (another merchant answers 404, as every
admin merchant view). ``?figure=<name>&entries=1`` lists the postings a figure adds up.
"""

from __future__ import annotations

import csv
import io
from typing import Annotated, Literal

from flask import Blueprint, Response, current_app, g, url_for
from pydantic import Field

from insights.statements import FIGURE_NAMES, merchant_statement, statement_postings
from models import OperatorRole
from money import format_yuan
from rebate.scope import visible_merchant
from web.api import endpoint
from web.errors import ValidationFailed
from web.reports_api import safe_cell
from web.schemas import Model

bp = Blueprint("statements", __name__, url_prefix="/admin/api")
READERS = (OperatorRole.ADMIN, OperatorRole.FINANCE, OperatorRole.SUPPORT, OperatorRole.MERCHANT_STAFF)
Month = Annotated[
    str, Field(pattern=r"^20[0-9]{2}-(0[1-9]|1[0-2])$", description="A Beijing month, YYYY-MM, 2000-01 to 2099-12.")
]

# What each line of the statement's parts means, for people (the console page and the CSV): name → (中文, English,
# what it is). A line the statement carries and these do not name is still shown, under its own name.
SUMMARY_LINES = {
    "net_sales": ("净销售额", "Net sales", "sales less refunds"),
    "discounts_funded": ("承担的红包抵扣", "Discounts funded", "packet discounts it funded"),
    "rebates_paid": ("支付的返利", "Rebates paid", "rebates it funded, paid"),
    "rebates_clawed_back": ("追回的返利", "Rebates clawed back", "after refunds or reviews"),
    "credit_earned": ("获得的营销金", "Credit earned", "less credit clawed back"),
    "credit_used": ("使用的营销金", "Credit used", "applied to fees and spent on promotions"),
    "platform_fees": ("平台服务费", "Platform fees", "accrued less given back for refunds (owed: negative)"),
    "shared_to_persons": ("分账给个人", "Shared to persons", "profit sharing from its frozen order money"),
}
INVOICE_LINES = {
    "fee": ("开票费用", "Fees billed", "the month's fees, never below 0 nor more than is owed and not yet billed"),
    "credit_applied": ("营销金抵扣", "Credit applied", "the marketing credit pays first"),
    "due": ("应付", "Due", "fees billed less the credit applied"),
    "credit_given_back": (
        "营销金退回",
        "Credit given back",
        "refunds took the month's fees below zero: credit earlier invoices applied, returned to it",
    ),
    "carried_forward": (
        "结转下期",
        "Carried forward",
        "fees the platform still owes it after this invoice, netted by the next invoices",
    ),
}
PROFIT_SHARE_LINES = {
    "shared_to_persons": ("分账给个人", "Shared to persons", "shares WeChat said SUCCESS, booked in the month"),
    "returned_to_merchant": (
        "退回商户",
        "Returned to merchant",
        "shares that never reached a person (receiver closed, cancelled, failed): the money stayed its own",
    ),
    "owed_by_persons": (
        "个人欠商户",
        "Owed by persons (now)",
        "for shares clawed back after they were paid; settled only by its later shares to them",
    ),
    "unfrozen_to_merchant": (
        "解冻给商户",
        "Unfrozen to merchant",
        "of the shares finished in the month: frozen when sent, less what was shared",
    ),
    "held_over_ratio": (
        "超出分账比例",
        "Held over the ratio",
        "included in the unfrozen: payouts over its maximum ratio, waiting for an operator",
    ),
    "in_flight": ("分账在途", "Shares in flight (now)", "profit-sharing payouts pending, sending or awaiting WeChat"),
    "frozen_sales_opening": ("冻结订单款期初", "Frozen order money, opening", "held at WeChat: negative"),
    "frozen_sales_closing": ("冻结订单款期末", "Frozen order money, closing", "held at WeChat: negative"),
}
IN_FLIGHT_LINES = {
    "rebates_held": ("待发返利", "Rebates held", "for a milestone or a review"),
    "packets_reserved": ("红包预留", "Packets reserved", "live packets' reservations"),
    "refunds_pending": ("退款处理中", "Refunds pending", "refunds not finished"),
    "deposit_proposals_pending": ("待批准充值", "Deposit top-ups pending", "awaiting a second operator"),
    "withdrawals_pending": ("待批准提取", "Deposit withdrawals pending", "awaiting a second operator"),
    "fee_payments_pending": ("待批准服务费付款", "Fee payments pending", "recorded, awaiting a second operator"),
    "fees_owed": ("欠付服务费", "Fees owed", "booked, not yet paid"),
    "fees_billed_unpaid": ("已开票未付服务费", "Fees billed, unpaid", "the invoices' due less the fee payments"),
}


def line_label(lines: dict[str, tuple[str, str, str]], name: str) -> str:
    """``中文 English: what`` for a line, or its own name when ``lines`` does not know it."""
    zh, en, what = lines.get(name, ("", name, ""))
    return f"{zh} {en}: {what}".strip() if what else f"{zh} {en}".strip()


class StatementQuery(Model):
    month: Month
    format: Literal["json", "csv"] = "json"
    figure: Literal[FIGURE_NAMES] | None = None  # type: ignore[valid-type]
    entries: Literal["1", "0"] = "0"


@endpoint(
    bp,
    "/merchants/<int:merchant_id>/statement",
    auth="operator",
    roles=READERS,
    query=StatementQuery,
    tags=("statements",),
)
def get_statement(merchant_id: int, query: StatementQuery):
    """A merchant's statement for a Beijing month: every figure with the link listing its ledger postings."""
    merchant = visible_merchant(g.operator, merchant_id)
    if query.entries == "1":
        if query.figure is None:
            raise ValidationFailed("entries=1 needs figure=<name>", code="figure_required")
        postings = statement_postings(merchant, query.month, query.figure)
        body = {
            "merchant_id": merchant.id,
            "month": query.month,
            "figure": query.figure,
            "total_fen": sum(p["amount_fen"] for p in postings),
            "postings": postings,
        }
        return postings_csv(body) if query.format == "csv" else body
    link = url_for("statements.get_statement", merchant_id=merchant.id, month=query.month, entries="1")
    statement = merchant_statement(merchant, query.month, current_app.config["FUND_FLOW"], link + "&figure={figure}")
    return statement_csv(statement) if query.format == "csv" else statement


def _csv(rows: list[list], filename: str) -> Response:
    buffer = io.StringIO()
    buffer.write("\ufeff")  # Excel reads UTF-8 (the Chinese labels) only after a byte-order mark
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([safe_cell(cell) for cell in row])
    return Response(
        buffer.getvalue().encode("utf-8"),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def statement_csv(s: dict) -> Response:
    """The month's bounds (Beijing time), every figure, then the summary, the accounts' reconciliation, what is in
    flight, the month's fee invoice (or a row saying it is not invoiced yet) and the profit sharing; yuan and fen,
    each line with its label."""
    rows: list[list] = [["section", "name", "label", "account", "amount_yuan", "amount_fen", "postings"]]
    rows += [
        ["statement", "from", f"起 From (北京时间 Beijing time): {s['from']}", "", "", "", ""],
        ["statement", "to", f"止 To, not included (北京时间 Beijing time): {s['to']}", "", "", "", ""],
    ]
    rows += [["figure", f["name"], f["label"], f["account"], f["yuan"], f["fen"], f["postings"]] for f in s["figures"]]
    rows += [
        ["summary", n, f"{line_label(SUMMARY_LINES, n)} ({' + '.join(v['of'])})", "", v["yuan"], v["fen"], ""]
        for n, v in s["summary"].items()
    ]
    for a in s["accounts"]:
        for what in ("opening", "movement", "closing"):
            fen = a[f"{what}_fen"]
            rows.append(
                [
                    "account",
                    what,
                    "reconciles" if a["reconciles"] else "DOES NOT RECONCILE",
                    a["account"],
                    format_yuan(fen),
                    fen,
                    "",
                ]
            )
    rows += [
        ["in_flight", n, line_label(IN_FLIGHT_LINES, n), v.get("account", ""), v["yuan"], v["fen"], ""]
        for n, v in s["in_flight"].items()
    ]
    invoice = s["invoice"]
    if invoice is None:
        label = "本月尚未开票 Not invoiced (a month is invoiced after it ends)"
        rows.append(["invoice", "not_invoiced", label, "", "", "", ""])
    else:
        rows += [
            ["invoice", n, line_label(INVOICE_LINES, n), f"invoice #{invoice['id']}", v["yuan"], v["fen"], ""]
            for n, v in invoice.items()
            if isinstance(v, dict) and "fen" in v
        ]
    shares = s["profit_shares"]
    rows.append(["profit_shares", "mode", f"{shares['mode']}: {shares['note']}"] + [""] * 4)
    for name, v in shares.items():
        if isinstance(v, dict) and "fen" in v:
            rows.append(["profit_shares", name, line_label(PROFIT_SHARE_LINES, name), "", v["yuan"], v["fen"], ""])
    frozen = shares["frozen_sales"]
    for what in ("opening", "closing"):
        fen, name = frozen[f"{what}_fen"], f"frozen_sales_{what}"
        label = line_label(PROFIT_SHARE_LINES, name)
        rows.append(["profit_shares", name, label, frozen["account"], format_yuan(fen), fen, ""])
    return _csv(rows, f"statement-{s['merchant']['id']}-{s['month']}.csv")


def postings_csv(body: dict) -> Response:
    rows: list[list] = [["posting_id", "entry_id", "key", "memo", "account", "booked_at", "amount_yuan", "amount_fen"]]
    for p in body["postings"]:
        rows.append(
            [
                p["posting_id"],
                p["entry_id"],
                p["key"],
                p["memo"],
                p["account"],
                p["booked_at"],
                format_yuan(p["amount_fen"]),
                p["amount_fen"],
            ]
        )
    rows.append(["total", "", "", "", "", "", format_yuan(body["total_fen"]), body["total_fen"]])
    return _csv(rows, f"statement-{body['merchant_id']}-{body['month']}-{body['figure']}.csv")
