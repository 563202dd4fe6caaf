"""Campaign effect reports and the overview (README "Reports"), as JSON or CSV; they only read the rollups.

Platform roles see every campaign and the platform-wide overview (or one merchant's with
``merchant_id``); a merchant's staff see their merchant's campaigns and overview only: another
merchant's campaign answers 404.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from typing import Literal

from flask import Blueprint, Response, g
from pydantic import Field, ValidationInfo, field_validator

from insights.reports import campaign_report, overview
from models import OperatorRole
from models.operators import merchant_scope
from rebate.scope import visible_campaign, visible_merchant
from web.api import endpoint
from web.guards import MAX_ID
from web.schemas import Day, Model

bp = Blueprint("reports", __name__, url_prefix="/admin/api/reports")
READERS = (OperatorRole.ADMIN, OperatorRole.FINANCE, OperatorRole.SUPPORT, OperatorRole.MERCHANT_STAFF)
MAX_DAYS = 3 * 366  # a report covers at most three years


class ReportQuery(Model):
    start: Day = Field(alias="from", description="First Beijing day (YYYY-MM-DD), included.")
    to: Day = Field(description="Last Beijing day (YYYY-MM-DD), included.")
    granularity: Literal["day", "week", "month"] = "day"
    format: Literal["json", "csv"] = "json"

    @field_validator("to")
    @classmethod
    def _window(cls, to: date, info: ValidationInfo) -> date:
        start = info.data.get("start")
        if start is not None and to < start:
            raise ValueError("'to' is before 'from'")
        if start is not None and (to - start).days + 1 > MAX_DAYS:
            raise ValueError(f"a report covers at most {MAX_DAYS} days")
        return to


class OverviewQuery(ReportQuery):
    merchant_id: int | None = Field(None, gt=0, le=MAX_ID, description="Platform roles: one merchant's overview.")


@endpoint(bp, "/campaigns/<int:campaign_id>", auth="operator", roles=READERS, query=ReportQuery, tags=("reports",))
def campaign_effect(campaign_id: int, query: ReportQuery):
    """A campaign's effect over a window of Beijing days, from the daily rollups (JSON, or CSV with format=csv)."""
    campaign = visible_campaign(g.operator, campaign_id)
    report = campaign_report(campaign, query.start, query.to, query.granularity)
    return as_csv(report, f"campaign-{campaign_id}") if query.format == "csv" else report


@endpoint(bp, "/overview", auth="operator", roles=READERS, query=OverviewQuery, tags=("reports",))
def effect_overview(query: OverviewQuery):
    """Every campaign's effect over a window, platform-wide or one merchant's (JSON, or CSV with format=csv)."""
    scope = merchant_scope(g.operator)
    if query.merchant_id is not None:  # no such merchant (staff: another's) is 404, never a report of zeros
        visible_merchant(g.operator, query.merchant_id)
    merchant_id = scope if scope is not None else query.merchant_id
    report = overview(query.start, query.to, merchant_id, query.granularity)
    return as_csv(report, "overview") if query.format == "csv" else report


NUMBER = re.compile(r"-?[0-9]{1,20}(?:\.[0-9]{1,6})?")


def safe_cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (= + - @, tab, CR) is prefixed with '; a plain number
    written as text (-2.50 yuan) is not a formula and stays a number."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and not NUMBER.fullmatch(value):
        return "'" + value
    return "" if value is None else value


def as_csv(report: dict, name: str) -> Response:
    """One row per period of the series, then the totals and the period before; amounts in fen columns."""
    columns = [c for c in report["totals"] if c not in ("from", "to")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["period", "from", "to", *columns])
    for row in report["series"]:
        writer.writerow([safe_cell(row.get(c)) for c in ("period", "from", "to", *columns)])
    for label in ("totals", "before"):
        block = report[label]
        writer.writerow([label, block["from"], block["to"], *(safe_cell(block.get(c)) for c in columns)])
    filename = f"{name}-{report['from']}-{report['to']}.csv"
    return Response(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
