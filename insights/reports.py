"""Campaign effect reports and the overview, read from the daily rollups only (never the orders table).

``campaign_report(campaign, start, end, granularity)`` and ``overview(start, end, merchant_id,
granularity)`` answer JSON-ready dicts (shape in the README, "Reports"): money in integer fen, ratios
in basis points (integers, rounded down; ``None`` when the base is 0, never infinity). Days are Beijing
days, both ends included. Sales are paid amounts, net of refunds (a refund deducted on the day it
succeeded). YoY = (this − the same dates a year earlier: the same calendar month(s) when the window is whole
months) / that; MoM = (this − the adjacent previous period of the same length: the previous calendar month(s) when
the window is whole months) / that.
"""

from __future__ import annotations

from calendar import monthrange
from collections import defaultdict
from datetime import date, timedelta

from sqlalchemy import and_, case, func, literal_column, or_, select

from insights.rollups import BUCKETS, PACKET_EVENTS, REBATE_EVENTS, beijing_day
from models import Campaign, InsightsDaily, InsightsPerson, db
from models.campaigns import serves_merchant

GRANULARITIES = ("day", "week", "month")
SALES = ("sales", "refunds", "category_sales", "category_refunds")
# campaign 0 rows of the overview
OVERALL = (*SALES, "influenced", "influenced_refunds", "discounts", "discounts_returned", "wallet")
PACKETS = tuple(f"packets_{e}" for e in PACKET_EVENTS)
REBATES = tuple(f"rebates_{e}" for e in REBATE_EVENTS)
CAMPAIGN = ("influenced", "influenced_refunds", "discounts", "discounts_returned", *PACKETS, *REBATES)
UPTAKE = (("by_face_value", "bucket"), ("by_trigger", "trigger"), ("by_channel", "channel"))
# a campaign's report: the discounts on all the orders its sales count (campaign 0), for their goods value; its
# ``discounts_fen`` (and cost) is its own packets' discounts
ORDER_DISCOUNTS = "order_discounts"


def ratio_bps(numerator: int, base: int) -> int | None:
    """numerator / base in basis points, rounded down; None for a zero base, and for a negative one (net
    sales net of the day's refunds can be below zero, and a change against a negative base would read
    backwards: −500 → 1,000 is not a fall of 300 %)."""
    return None if base <= 0 else numerator * 10_000 // base


class Scope:
    """Which rollup rows a report sums: the sales rows (campaign 0) of a merchant or all merchants, and
    the campaign rows of one campaign or (the overview) of every campaign of that merchant or all."""

    def __init__(self, merchant_id: int | None, campaign_id: int | None):
        self.merchant_id, self.campaign_id = merchant_id, campaign_id
        # the discounts of the goods value: the orders' (the campaign 0 rows), as the sales and the wallet are
        self.goods_discounts = "discounts" if campaign_id is None else ORDER_DISCOUNTS

    def metric(self):
        """The name a row sums under: a campaign's report reads the orders' discounts (campaign 0) beside its own."""
        t = InsightsDaily
        if self.campaign_id is None:
            return t.metric
        # the words as SQL literals: the CASE reads as text on both databases, in the SELECT and its GROUP BY alike
        discounts = and_(t.campaign_id == 0, t.metric == literal_column("'discounts'"))
        return case((discounts, literal_column(f"'{ORDER_DISCOUNTS}'")), else_=t.metric)

    def daily(self):
        t = InsightsDaily
        mine = [t.merchant_id == self.merchant_id] if self.merchant_id is not None else []
        if self.campaign_id is None:
            sales = and_(t.campaign_id == 0, t.metric.in_(OVERALL), *mine)
            campaigns = and_(t.campaign_id != 0, t.metric.in_((*PACKETS, *REBATES)), *mine)
        else:
            sales = and_(t.campaign_id == 0, t.metric.in_((*SALES, "discounts", "wallet")), *mine)
            campaigns = and_(t.campaign_id == self.campaign_id, t.metric.in_(CAMPAIGN))
        return or_(sales, campaigns)

    def people(self):
        t = InsightsPerson
        if self.campaign_id is not None:
            return t.campaign_id == self.campaign_id
        return t.merchant_id == self.merchant_id if self.merchant_id is not None else t.campaign_id != 0


def _sums(scope: Scope, start: date, end: date, metrics: tuple[str, ...] = ()) -> dict[str, list[int]]:
    t = InsightsDaily
    only = [t.metric.in_(metrics)] if metrics else []
    metric = scope.metric()
    stmt = (
        select(metric, func.sum(t.count), func.sum(t.fen))
        .where(t.day >= start, t.day <= end, t.dim == "", scope.daily(), *only)
        .group_by(metric)
    )
    return defaultdict(lambda: [0, 0], {m: [int(n or 0), int(f or 0)] for m, n, f in db.session.execute(stmt)})


def _people(scope: Scope, start: date, end: date) -> tuple[int, int]:
    """Distinct participants and, of them, those first seen in the window: one scan."""
    t = InsightsPerson
    new = case((and_(t.first_day >= start, t.first_day <= end), t.user_id))
    stmt = select(func.count(func.distinct(t.user_id)), func.count(func.distinct(new))).where(
        t.day >= start, t.day <= end, scope.people()
    )
    participants, new_users = db.session.execute(stmt).one()
    return int(participants or 0), int(new_users or 0)


def counters(m: dict[str, list[int]], goods_discounts: str = "discounts") -> dict:
    """The flat counters of a window (totals, before, one period of the series); ``goods_discounts``: the metric of
    the discounts on the orders ``sales`` counts."""
    net = m["sales"][1] - m["refunds"][1]
    influenced_net = m["influenced"][1] - m["influenced_refunds"][1]
    rebates_net = m["rebates_awarded"][1] - m["rebates_clawed_back"][1] - m["rebates_cancelled"][1]
    out = {
        "orders": m["sales"][0],
        "sales_fen": m["sales"][1],
        "refunds": m["refunds"][0],
        "refunds_fen": m["refunds"][1],
        "net_sales_fen": net,
        "influenced_orders": m["influenced"][0],
        "influenced_sales_fen": m["influenced"][1],
        "influenced_refunds_fen": m["influenced_refunds"][1],
        "influenced_net_sales_fen": influenced_net,
        "influence_rate_bps": ratio_bps(influenced_net, net),
        "discounts_fen": m["discounts"][1],
        # given back to their funders (and budgets) by full refunds, on the refund's day: no longer a cost
        "discounts_returned_fen": m["discounts_returned"][1],
        # the buyers' rebate balance and points' value spent on the orders; with sales and the packets'
        # discounts: the goods value of the orders paid (sales alone is what buyers paid through WeChat)
        "wallet_spent_fen": m["wallet"][1],
        "goods_value_fen": m["sales"][1] + m[goods_discounts][1] + m["wallet"][1],
    }
    for metric in (*PACKETS, *REBATES):
        out[metric], out[f"{metric}_fen"] = m[metric]
    out["uptake_bps"] = ratio_bps(m["packets_used"][0], m["packets_issued"][0])
    out["rebates_net_fen"] = rebates_net
    discounts_net = m["discounts"][1] - m["discounts_returned"][1]
    out["cost_ratio_bps"] = ratio_bps(discounts_net + rebates_net, influenced_net)
    return out


def window_totals(scope: Scope, start: date, end: date, sums: dict[str, list[int]] | None = None) -> dict:
    participants, new_users = _people(scope, start, end)
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "participants": participants,
        "new_users": new_users,
        **counters(sums if sums is not None else _sums(scope, start, end), scope.goods_discounts),
    }


def periods(start: date, end: date, granularity: str) -> list[tuple[str, date, date]]:
    """(label, first day, last day) of each period, clipped to the window."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}")
    out, day = [], start
    while day <= end:
        if granularity == "day":
            label, last = day.isoformat(), day
        elif granularity == "week":
            year, week, weekday = day.isocalendar()
            label, last = f"{year}-W{week:02d}", day + timedelta(days=7 - weekday)
        else:
            label, last = f"{day:%Y-%m}", day.replace(day=monthrange(day.year, day.month)[1])
        last = min(last, end)
        out.append((label, day, last))
        day = last + timedelta(days=1)
    return out


def _series(scope: Scope, start: date, end: date, granularity: str) -> tuple[list[dict], dict[str, list[int]]]:
    """The periods' counters, and the window's sums (the same scan)."""
    t = InsightsDaily
    metric = scope.metric()
    stmt = (
        select(t.day, metric, func.sum(t.count), func.sum(t.fen))
        .where(t.day >= start, t.day <= end, t.dim == "", scope.daily())
        .group_by(t.day, metric)
    )
    spans = periods(start, end, granularity)
    firsts = [first for _, first, _ in spans]
    sums: list[dict[str, list[int]]] = [defaultdict(lambda: [0, 0]) for _ in spans]
    at = 0
    for day, metric, n, fen in sorted(db.session.execute(stmt), key=lambda r: r[0]):
        while at + 1 < len(firsts) and firsts[at + 1] <= day:
            at += 1
        cell = sums[at][metric]
        cell[0] += int(n or 0)
        cell[1] += int(fen or 0)
    whole: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for m in sums:
        for metric, (n, fen) in m.items():
            whole[metric][0] += n
            whole[metric][1] += fen
    series = [
        {"period": label, "from": first.isoformat(), "to": last.isoformat(), **counters(m, scope.goods_discounts)}
        for (label, first, last), m in zip(spans, sums, strict=True)
    ]
    return series, whole


def _dims(scope: Scope, start: date, end: date) -> dict[str, dict[str, list[int]]]:
    t = InsightsDaily
    stmt = (
        select(t.metric, t.dim, func.sum(t.count), func.sum(t.fen))
        .where(t.day >= start, t.day <= end, t.dim != "", scope.daily())
        .group_by(t.metric, t.dim)
    )
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for metric, dim, n, fen in db.session.execute(stmt):
        out[metric][dim] = [int(n or 0), int(fen or 0)]
    return out


def _uptake(dims: dict) -> dict:
    issued, used = dims["packets_issued"], dims["packets_used"]
    out = {}
    for name, prefix in UPTAKE:
        keys = {d.split(":", 1)[1] for d in (*issued, *used) if d.startswith(prefix + ":")}
        order = [label for _, label in BUCKETS] if prefix == "bucket" else sorted(keys)
        out[name] = [
            {
                "key": key,
                "issued": issued[f"{prefix}:{key}"][0],
                "issued_fen": issued[f"{prefix}:{key}"][1],
                "used": used[f"{prefix}:{key}"][0],
                "used_fen": used[f"{prefix}:{key}"][1],
                "uptake_bps": ratio_bps(used[f"{prefix}:{key}"][0], issued[f"{prefix}:{key}"][0]),
            }
            for key in order
        ]
    return out


def _rebates(dims: dict) -> list[dict]:
    keys = sorted({d for metric in REBATES for d in dims[metric]})
    out = []
    for key in keys:
        role, _, form = key.partition(":")
        row = {"role": role, "form": form}
        for event in REBATE_EVENTS:
            row[event], row[f"{event}_fen"] = dims[f"rebates_{event}"][key]
        out.append(row)
    return out


def _category_shares(dims: dict) -> list[dict]:
    sales, refunds = dims["category_sales"], dims["category_refunds"]
    net = {d.split(":", 1)[1]: sales[d][1] - refunds[d][1] for d in {*sales, *refunds}}
    whole = sum(net.values())
    return [
        {"category": c, "net_sales_fen": fen, "share_bps": ratio_bps(fen, whole)}
        for c, fen in sorted(net.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def year_earlier(day: date) -> date:
    try:
        return day.replace(year=day.year - 1)
    except ValueError:  # 29 February: the 28th
        return day.replace(year=day.year - 1, day=28)


def month_end(day: date) -> date:
    return day.replace(day=monthrange(day.year, day.month)[1])


def whole_months(start: date, end: date) -> bool:
    return start.day == 1 and end == month_end(end)


def year_ago(start: date, end: date) -> tuple[date, date]:
    """The same dates a year earlier; for a window of whole months, the same whole months (February 2029 against
    all of February 2028, its 29th included)."""
    first, last = year_earlier(start), year_earlier(end)
    return (first, month_end(last)) if whole_months(start, end) else (first, last)


def previous_period(start: date, end: date) -> tuple[date, date]:
    """The adjacent period before: the previous calendar month(s) for a window of whole months, else the same
    number of days just before ``start``."""
    if whole_months(start, end):
        months = (end.year - start.year) * 12 + end.month - start.month + 1
        last = start - timedelta(days=1)
        first = last.replace(day=1)
        for _ in range(months - 1):
            first = (first - timedelta(days=1)).replace(day=1)
        return first, last
    length = (end - start).days + 1
    return start - timedelta(days=length), start - timedelta(days=1)


def _net_sales(scope: Scope, start: date, end: date) -> int:
    m = _sums(scope, start, end, ("sales", "refunds"))
    return m["sales"][1] - m["refunds"][1]


def _sales_change(scope: Scope, start: date, end: date, net: int) -> dict:
    year = year_ago(start, end)
    prev = previous_period(start, end)
    year_net, prev_net = _net_sales(scope, *year), _net_sales(scope, *prev)
    return {
        "net_sales_fen": net,
        "year_ago": {"from": year[0].isoformat(), "to": year[1].isoformat(), "net_sales_fen": year_net},
        "yoy_bps": ratio_bps(net - year_net, year_net),
        "previous": {"from": prev[0].isoformat(), "to": prev[1].isoformat(), "net_sales_fen": prev_net},
        "mom_bps": ratio_bps(net - prev_net, prev_net),
    }


def _report(scope: Scope, start: date, end: date, granularity: str, before_end: date) -> dict:
    if end < start:
        raise ValueError("the window ends before it starts")
    series, sums = _series(scope, start, end, granularity)
    totals = window_totals(scope, start, end, sums)
    dims = _dims(scope, start, end)
    length = (end - start).days + 1
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "granularity": granularity,
        "timezone": "Asia/Shanghai",
        "totals": totals,
        "before": window_totals(scope, before_end - timedelta(days=length - 1), before_end),
        "sales_change": _sales_change(scope, start, end, totals["net_sales_fen"]),
        "series": series,
        "uptake": _uptake(dims),
        "rebates_by_role": _rebates(dims),
        "category_shares": _category_shares(dims),
    }


def campaign_start_day(campaign: Campaign) -> date:
    return beijing_day(campaign.starts_at or campaign.created_at)


def campaign_report(campaign: Campaign, start: date, end: date, granularity: str = "day") -> dict:
    """One campaign over [start, end]: its packets, rebates and influenced sales beside the total sales of
    the merchant it serves (all merchants' for a platform campaign). ``before``: the same number of days
    ending the day before the campaign started (its ``starts_at``, else its creation)."""
    merchant = serves_merchant(campaign)
    scope = Scope(merchant, campaign.id)
    report = _report(scope, start, end, granularity, campaign_start_day(campaign) - timedelta(days=1))
    scope_json = {"kind": "campaign", "campaign_id": campaign.id, "name": campaign.name, "merchant_id": merchant}
    return {"scope": scope_json, **report}


def overview(start: date, end: date, merchant_id: int | None = None, granularity: str = "day") -> dict:
    """Every campaign over [start, end], platform-wide (``merchant_id`` None) or one merchant's. ``before``: the
    same number of days just before ``start``."""
    report = _report(Scope(merchant_id, None), start, end, granularity, start - timedelta(days=1))
    return {"scope": {"kind": "overview", "merchant_id": merchant_id}, **report}
