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
Month = Annotated[str, Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="A Beijing month, YYYY-MM.")]


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
    """Every figure, then the summary, the accounts' reconciliation and what is in flight; yuan and fen."""
    rows: list[list] = [["section", "name", "label", "account", "amount_yuan", "amount_fen", "postings"]]
    rows += [["figure", f["name"], f["label"], f["account"], f["yuan"], f["fen"], f["postings"]] for f in s["figures"]]
    rows += [["summary", n, " + ".join(v["of"]), "", v["yuan"], v["fen"], ""] for n, v in s["summary"].items()]
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
    rows += [["in_flight", n, "", v.get("account", ""), v["yuan"], v["fen"], ""] for n, v in s["in_flight"].items()]
    shares = s["profit_shares"]
    for name, v in shares.items():
        if isinstance(v, dict) and "fen" in v:
            rows.append(["profit_shares", name, f"{shares['mode']}: {shares['note']}", "", v["yuan"], v["fen"], ""])
    frozen = shares["frozen_sales"]
    for what in ("opening", "closing"):
        fen = frozen[f"{what}_fen"]
        rows.append(["profit_shares", f"frozen_sales_{what}", "", frozen["account"], format_yuan(fen), fen, ""])
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
