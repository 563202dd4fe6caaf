"""Console pages: the overview (today vs yesterday, this month vs last, trends) and a campaign's effect report.

Both read ``/admin/api/reports/…`` through its own views (``web.reports_api``), so a merchant's staff see
their merchant only and another merchant's campaign is a 404, exactly as in the API. Charts draw the
report's own series (amounts in yuan); the CSV download is the API's CSV.
"""

from __future__ import annotations

from datetime import date, timedelta

from flask import abort, request

from insights.reports import ratio_bps
from models import utcnow
from models.base import BEIJING
from web.audiences_api import campaign_runs
from web.console import bp, charts, may, read, render, whole_number
from web.guards import MAX_ID, day_in_range
from web.reports_api import campaign_effect, effect_overview

TREND_DAYS = 30
SERIES = {  # report series field → chart legend
    "net_sales_fen": "净销售额 Net sales",
    "influenced_net_sales_fen": "活动带动 Influenced",
    "rebates_awarded_fen": "返利 Rebates",
    "discounts_fen": "红包抵扣 Discounts",
}
PACKET_SERIES = {"packets_issued": "发放 Issued", "packets_used": "使用 Used", "packets_expired": "过期 Expired"}
KPIS = (  # (field, label, kind)
    ("net_sales_fen", "净销售额 Net sales", "fen"),
    ("influenced_net_sales_fen", "活动带动销售 Influenced sales", "fen"),
    ("influence_rate_bps", "带动率 Influence rate", "bps"),
    ("orders", "订单 Orders", "count"),
    ("participants", "参与人数 Participants", "count"),
    ("new_users", "新用户 New users", "count"),
    ("packets_issued", "红包发放 Packets issued", "count"),
    ("packets_used", "红包使用 Packets used", "count"),
    ("uptake_bps", "核销率 Uptake", "bps"),
    ("discounts_fen", "红包抵扣 Discounts", "fen"),
    ("discounts_returned_fen", "抵扣退回 Discounts returned (full refunds)", "fen"),
    ("rebates_awarded_fen", "返利 Rebates awarded", "fen"),
    ("rebates_clawed_back_fen", "返利追回 Clawed back", "fen"),
    ("rebates_cancelled_fen", "返利取消 Cancelled (never paid)", "fen"),
    ("cost_ratio_bps", "成本率 Cost ratio", "bps"),
)


def compare(now: dict, base: dict) -> list[dict]:
    """The KPI rows two windows both have, with the change of counts and amounts as the statistics bureau
    defines it ((this − base) / base, in basis points; none for a zero base). Ratios get no change."""
    return [
        {
            "field": field,
            "label": label,
            "kind": kind,
            "now": now[field],
            "base": base[field],
            "change_bps": None if kind == "bps" else ratio_bps(now[field] - base[field], base[field]),
        }
        for field, label, kind in KPIS
        if field in now and field in base
    ]


def today() -> date:
    return utcnow().astimezone(BEIJING).date()


def _day(text: str | None, default: date) -> date:
    try:
        return day_in_range(date.fromisoformat(text)) if text else default
    except ValueError:  # not a day, or not one of 2000 to 2099
        return default


def trend_charts(report: dict, prefix: str) -> dict:
    """The report's series as two charts: money (yuan) and packets (counts)."""
    labels = [row["period"] for row in report["series"]]
    money = {name: charts.to_yuan([row[field] for row in report["series"]]) for field, name in SERIES.items()}
    packets = {name: [row[field] for row in report["series"]] for field, name in PACKET_SERIES.items()}
    return {
        f"{prefix}-sales": charts.line(labels, money, "销售与返利 Sales and rebates (¥)", "¥"),
        f"{prefix}-packets": charts.bars(labels, packets, "红包 Packets", ""),
    }


@bp.route("/overview")
def overview():
    """Today vs yesterday, this month (to date) vs the same days of last month, and the last 30 days. A
    ``merchant_id`` that is no merchant's (or not a number) answers 404, as on the merchant's other pages: never
    a page of zeros that reads as a merchant that sold nothing."""
    raw = request.args.get("merchant_id", "").strip()
    merchant_id = None
    if raw:
        merchant_id = whole_number(raw, MAX_ID)
        if not merchant_id:
            abort(404)
    end = today()
    start = end - timedelta(days=TREND_DAYS - 1)
    scope = {"merchant_id": merchant_id} if merchant_id else {}
    trend = read(effect_overview, query={"from": start.isoformat(), "to": end.isoformat(), **scope})
    month_start = end.replace(day=1)
    last_month_end = month_start - timedelta(days=1)
    last_month_start = last_month_end.replace(day=1)
    same_days_end = min(last_month_start + (end - month_start), last_month_end)
    month = read(effect_overview, query={"from": month_start.isoformat(), "to": end.isoformat(), **scope})
    last_month = read(
        effect_overview, query={"from": last_month_start.isoformat(), "to": same_days_end.isoformat(), **scope}
    )
    series = trend["series"]
    return render(
        "console/report_overview.html",
        trend=trend,
        today_row=series[-1],
        yesterday_row=series[-2],
        month=month["totals"],
        last_month=last_month["totals"],
        day_rows=compare(series[-1], series[-2]),
        month_rows=compare(month["totals"], last_month["totals"]),
        charts=trend_charts(trend, "overview"),
        merchant_id=merchant_id,
    )


@bp.route("/campaigns/<int:campaign_id>/report")
def campaign_report(campaign_id: int):
    """A campaign's effect over a window (default: the last 30 days), beside the same length before it
    started, with YoY / MoM of sales, uptake by face value / trigger / channel and category shares."""
    end = _day(request.args.get("to"), today())
    start = _day(request.args.get("from"), end - timedelta(days=TREND_DAYS - 1))
    granularity = request.args.get("granularity") or "day"
    query = {"from": start.isoformat(), "to": end.isoformat(), "granularity": granularity}
    if request.args.get("format") == "csv":
        return read(campaign_effect, query={**query, "format": "csv"}, campaign_id=campaign_id)
    report = read(campaign_effect, query=query, campaign_id=campaign_id)
    uptake = report["uptake"]["by_face_value"]
    shares = [(row["category"], charts.to_yuan([row["net_sales_fen"]])[0]) for row in report["category_shares"]]
    extra = {
        "report-uptake": charts.bars(
            [row["key"] for row in uptake],
            {
                "发放 Issued": [row["issued"] for row in uptake],
                "使用 Used": [row["used"] for row in uptake],
            },
            "按面额核销 Uptake by face value",
        ),
        "report-categories": charts.pie(shares, "品类净销售占比 Category share of net sales (¥)"),
    }
    runs = read(campaign_runs, query={"campaign_id": campaign_id})["items"] if may(campaign_runs) else []
    return render(
        "console/report_campaign.html",
        report=report,
        runs=runs,
        campaign_id=campaign_id,
        query=query,
        rows=compare(report["totals"], report["before"]),
        charts={**trend_charts(report, "report"), **extra},
    )
