"""Campaign effect reports from the daily rollups: planted orders over two years, figures computed by hand.

Merchant A's campaign C (March 2026): one order spends C's 30-yuan packet (300 yuan of goods, 270 paid:
200 course + 100 book) and earns a 10-yuan issuer rebate; three other March orders (150 book refunded
50 the next Beijing day, 100 book at 23:50 on the 31st refunded after midnight, i.e. in April, and 50
course at 00:10 Beijing on 1 March, still 28 February in UTC); 100 yuan in March 2025 (a year ago)
and 200 in February 2026 (the previous month). Merchant B sells 99.99 in March 2026.

March 2026, merchant A: sales 570.00 (4 orders), refunds 50.00, net 520.00; YoY (520 − 100)/100 =
+420 % = 42000 bps; MoM (520 − 200)/200 = +160 % = 16000 bps; influenced 270.00 → 5192 bps of net;
cost (30 discount + 10 rebate)/270 = 1481 bps; categories: book 90 + 150 − 50 + 100 = 290.00 (5576
bps), course 180 + 50 = 230.00 (4423 bps). Packets issued 4 (30, 8, 120, 30 yuan), used 1 → 2500 bps.
"""

from __future__ import annotations

import csv
import io
import re
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from itertools import count

import pytest
from sqlalchemy import event

from insights.reports import campaign_report, overview, periods, previous_period, ratio_bps
from jobs.insights import days_between, due_days, insights_rollup_job, rebuild
from models import (
    InsightsDaily,
    InsightsDay,
    Order,
    OrderLine,
    OrderPacket,
    Rebate,
    RedPacket,
    Refund,
    db,
)
from models.base import BEIJING

_n = count(1)
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
MARCH = (date(2026, 3, 1), date(2026, 3, 31))
PRODUCTS: dict[int, int] = {}  # merchant → a product of theirs, for the planted lines


def bj(*args) -> datetime:
    return datetime(*args, tzinfo=BEIJING).astimezone(UTC)


def plant_order(user, merchant, at, lines, discount=0, packet=None, refunds=()):
    total = sum(fen for _, fen in lines)
    order = Order(
        out_trade_no=f"T{next(_n):08d}",
        user_id=user.id,
        merchant_id=merchant.id,
        status="paid",
        total_fen=total,
        discount_fen=discount,
        payable_fen=total - discount,
        paid_fen=total - discount,
        refunded_fen=sum(fen for fen, _ in refunds),
        paid_at=at,
        time_expire=at + timedelta(minutes=30),
        created_at=at,
        packet_id=packet.id if packet else None,
    )
    db.session.add(order)
    db.session.flush()
    for category, fen in lines:
        db.session.add(
            OrderLine(
                order_id=order.id,
                product_id=PRODUCTS[merchant.id],
                category=category,
                quantity=1,
                unit_price_fen=fen,
                line_total_fen=fen,
            )
        )
    if packet is not None:
        db.session.add(OrderPacket(order_id=order.id, packet_id=packet.id, discount_fen=discount))
    for fen, finished in refunds:
        db.session.add(
            Refund(
                order_id=order.id,
                out_refund_no=f"R{next(_n)}",
                amount_fen=fen,
                status="succeeded",
                finished_at=finished,
                created_at=finished,
            )
        )
    db.session.flush()
    return order


def plant_packet(campaign, owner, amount, created, status, source="manual", used=None, expires=None):
    packet = RedPacket(
        campaign_id=campaign.id,
        rules_version=1,
        issuer_type="merchant",
        owner_id=owner.id if owner else None,
        amount_fen=amount,
        status=status,
        valid_from=created,
        expires_at=expires or created + timedelta(days=30),
        source=source,
        source_ref=f"p{next(_n)}",
        created_at=created,
        claimed_at=created if owner else None,
        used_at=used,
        revoked_at=created if status == "revoked" else None,
    )
    db.session.add(packet)
    db.session.flush()
    return packet


@pytest.fixture
def planted(make_merchant, make_user, make_campaign, make_product):
    a, b = make_merchant("shop-a"), make_merchant("shop-b")
    PRODUCTS.update({m.id: make_product(m).id for m in (a, b)})
    u1, u2, u3, u4 = make_user(), make_user(), make_user(), make_user()
    u1.created_at, u2.created_at, u3.created_at = bj(2026, 3, 2), bj(2025, 1, 1), bj(2026, 3, 10)
    campaign = make_campaign(
        {"roles": []},
        fund_deposit_fen=0,
        issuer_type="merchant",
        issuer_merchant_id=a.id,
        funder_type="merchant_deposit",
        funder_merchant_id=a.id,
        starts_at=bj(2026, 3, 1),
        packet_amount_fen=30_00,
    )
    p1 = plant_packet(campaign, u1, 30_00, bj(2026, 3, 2, 9), "used", source="claim", used=bj(2026, 3, 5, 10))
    plant_packet(campaign, u2, 8_00, bj(2026, 3, 3, 9), "expired", expires=bj(2026, 3, 25, 9))
    plant_packet(campaign, None, 120_00, bj(2026, 3, 4, 9), "revoked")
    plant_packet(campaign, u2, 30_00, bj(2026, 3, 6, 9), "issued")
    plant_order(u4, a, bj(2025, 3, 10, 12), [("course", 100_00)])
    plant_order(u4, a, bj(2026, 2, 15, 12), [("course", 200_00)])
    influenced = plant_order(
        u1, a, bj(2026, 3, 5, 10), [("course", 200_00), ("book", 100_00)], discount=30_00, packet=p1
    )
    p1.order_id = influenced.id
    db.session.add(
        Rebate(
            order_id=influenced.id,
            campaign_id=campaign.id,
            rules_version=1,
            packet_id=p1.id,
            role="issuer",
            beneficiary_type="user",
            beneficiary_id=u3.id,
            form="balance",
            status="awarded",
            original_fen=10_00,
            amount_fen=10_00,
            reason_code="awarded",
            created_at=bj(2026, 3, 5, 10),
        )
    )
    plant_order(u4, a, bj(2026, 3, 20, 23, 30), [("book", 150_00)], refunds=[(50_00, bj(2026, 3, 21, 0, 30))])
    plant_order(u4, a, bj(2026, 3, 31, 23, 50), [("book", 100_00)], refunds=[(100_00, bj(2026, 4, 1, 0, 10))])
    plant_order(u4, a, bj(2026, 3, 1, 0, 10), [("course", 50_00)])
    plant_order(u4, b, bj(2026, 3, 9, 12), [("toy", 99_99)])
    db.session.commit()
    # every day something happened on (the catch-up test builds the days between)
    rebuild([date(2025, 3, 10), date(2026, 2, 15), *days_between(*MARCH), date(2026, 4, 1)], NOW)
    return {"a": a, "b": b, "campaign": campaign, "b_user": u4}


@contextmanager
def statements():
    seen: list[str] = []

    def on_execute(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)


def test_campaign_report_matches_the_hand_computed_figures(planted):
    db.session.expire_all()
    with statements() as seen:
        report = campaign_report(planted["campaign"], *MARCH, "day")
    assert seen and not [s for s in seen if re.search(r"\b(orders|order_lines|refunds|red_packets)\b", s)]
    totals = report["totals"]
    assert (totals["orders"], totals["sales_fen"], totals["refunds_fen"], totals["net_sales_fen"]) == (
        4,
        570_00,
        50_00,
        520_00,
    )
    assert (totals["influenced_orders"], totals["influenced_net_sales_fen"], totals["influence_rate_bps"]) == (
        1,
        270_00,
        5192,
    )
    assert (totals["discounts_fen"], totals["rebates_awarded_fen"], totals["cost_ratio_bps"]) == (30_00, 10_00, 1481)
    assert (totals["participants"], totals["new_users"]) == (3, 2)
    packets = {e: (totals[f"packets_{e}"], totals[f"packets_{e}_fen"]) for e in ("issued", "claimed", "used")}
    assert packets == {"issued": (4, 188_00), "claimed": (3, 68_00), "used": (1, 30_00)}
    assert (totals["packets_expired_fen"], totals["packets_revoked_fen"], totals["uptake_bps"]) == (8_00, 120_00, 2500)
    change = report["sales_change"]
    assert (change["yoy_bps"], change["mom_bps"]) == (42000, 16000)
    assert change["year_ago"] == {"from": "2025-03-01", "to": "2025-03-31", "net_sales_fen": 100_00}
    assert change["previous"] == {"from": "2026-02-01", "to": "2026-02-28", "net_sales_fen": 200_00}
    assert report["category_shares"] == [
        {"category": "book", "net_sales_fen": 290_00, "share_bps": 5576},
        {"category": "course", "net_sales_fen": 230_00, "share_bps": 4423},
    ]
    buckets = {b["key"]: (b["issued"], b["used"], b["uptake_bps"]) for b in report["uptake"]["by_face_value"]}
    assert buckets == {
        "under_10": (1, 0, 0),
        "10_to_20": (0, 0, None),
        "20_to_50": (2, 1, 5000),
        "50_to_100": (0, 0, None),
        "100_plus": (1, 0, 0),
    }
    channels = {c["key"]: c["uptake_bps"] for c in report["uptake"]["by_channel"]}
    assert channels == {"claim": 10000, "manual": 0}
    assert [(t["key"], t["issued"], t["used"]) for t in report["uptake"]["by_trigger"]] == [("manual", 4, 1)]
    assert report["rebates_by_role"] == [
        {
            "role": "issuer",
            "form": "balance",
            "awarded": 1,
            "awarded_fen": 10_00,
            "held": 0,
            "held_fen": 0,
            "paid": 0,
            "paid_fen": 0,
            "clawed_back": 0,
            "clawed_back_fen": 0,
            "cancelled": 0,
            "cancelled_fen": 0,
        }
    ]
    # before the campaign (started 1 March): the 31 days to 28 February hold February's 200 yuan
    assert (report["before"]["from"], report["before"]["to"]) == ("2026-01-29", "2026-02-28")
    assert report["before"]["net_sales_fen"] == 200_00 and report["before"]["packets_issued"] == 0


def test_refunds_count_on_their_own_beijing_day(planted):
    report = campaign_report(planted["campaign"], *MARCH, "day")
    by_day = {p["period"]: p for p in report["series"]}
    assert len(report["series"]) == 31
    assert (by_day["2026-03-20"]["sales_fen"], by_day["2026-03-20"]["refunds_fen"]) == (150_00, 0)
    assert (by_day["2026-03-21"]["sales_fen"], by_day["2026-03-21"]["refunds_fen"]) == (0, 50_00)
    assert by_day["2026-03-01"]["sales_fen"] == 50_00  # 00:10 Beijing is still 28 February in UTC
    april = overview(date(2026, 4, 1), date(2026, 4, 30), planted["a"].id, "month")
    assert (april["totals"]["refunds_fen"], april["totals"]["net_sales_fen"]) == (100_00, -100_00)
    # MoM against March's 520 yuan, rounded down: (−100 − 520) / 520 = −11923.07… bps
    assert april["sales_change"]["mom_bps"] == -11924
    # a share of a negative net is no ratio; nor is a change against a negative base (May against April)
    assert april["totals"]["influence_rate_bps"] is None
    may = overview(date(2026, 5, 1), date(2026, 5, 31), planted["a"].id, "month")
    assert may["sales_change"]["previous"]["net_sales_fen"] == -100_00 and may["sales_change"]["mom_bps"] is None


def test_week_and_month_series(planted):
    weeks = campaign_report(planted["campaign"], *MARCH, "week")["series"]
    assert [(w["period"], w["from"], w["to"]) for w in weeks[:2]] == [
        ("2026-W09", "2026-03-01", "2026-03-01"),
        ("2026-W10", "2026-03-02", "2026-03-08"),
    ]
    assert (weeks[0]["sales_fen"], weeks[1]["sales_fen"], weeks[1]["packets_issued"]) == (50_00, 270_00, 4)
    assert weeks[-1]["to"] == "2026-03-31" and sum(w["net_sales_fen"] for w in weeks) == 520_00
    months = overview(date(2025, 3, 1), date(2026, 3, 31), planted["a"].id, "month")["series"]
    assert len(months) == 13 and months[0]["period"] == "2025-03" and months[0]["net_sales_fen"] == 100_00
    assert months[11]["period"] == "2026-02" and months[11]["net_sales_fen"] == 200_00
    assert months[12]["net_sales_fen"] == 520_00


def test_zero_base_gives_no_ratio(planted):
    report = overview(date(2025, 3, 1), date(2025, 3, 31), planted["a"].id)
    assert report["totals"]["net_sales_fen"] == 100_00
    assert report["sales_change"]["yoy_bps"] is None and report["sales_change"]["mom_bps"] is None
    assert report["totals"]["uptake_bps"] is None and report["totals"]["cost_ratio_bps"] is None
    assert ratio_bps(5, 0) is None and ratio_bps(0, 5) == 0


def test_overview_platform_wide_and_per_merchant(planted):
    everyone = overview(*MARCH)
    mine = overview(*MARCH, merchant_id=planted["a"].id)
    other = overview(*MARCH, merchant_id=planted["b"].id)
    assert everyone["totals"]["sales_fen"] == 570_00 + 99_99 and mine["totals"]["sales_fen"] == 570_00
    assert other["totals"]["sales_fen"] == 99_99 and other["totals"]["packets_issued"] == 0
    assert mine["totals"]["packets_issued"] == 4 and mine["totals"]["influenced_orders"] == 1
    assert (mine["before"]["from"], mine["before"]["to"]) == ("2026-01-29", "2026-02-28")
    assert everyone["scope"] == {"kind": "overview", "merchant_id": None}


def test_periods_and_previous_period():
    assert periods(date(2026, 1, 30), date(2026, 2, 2), "month") == [
        ("2026-01", date(2026, 1, 30), date(2026, 1, 31)),
        ("2026-02", date(2026, 2, 1), date(2026, 2, 2)),
    ]
    assert previous_period(date(2026, 3, 1), date(2026, 3, 31)) == (date(2026, 2, 1), date(2026, 2, 28))
    assert previous_period(date(2026, 1, 1), date(2026, 3, 31)) == (date(2025, 10, 1), date(2025, 12, 31))
    assert previous_period(date(2026, 3, 10), date(2026, 3, 19)) == (date(2026, 2, 28), date(2026, 3, 9))


# -- the API ---------------------------------------------------------------------------------------------


def url(campaign_id: int, **query) -> str:
    args = {"from": "2026-03-01", "to": "2026-03-31", **query}
    return f"/admin/api/reports/campaigns/{campaign_id}?" + "&".join(f"{k}={v}" for k, v in args.items())


def test_api_answers_json_and_csv(planted, client, make_operator):
    _, headers = make_operator("finance")
    answer = client.get(url(planted["campaign"].id), headers=headers)
    assert answer.status_code == 200, answer.json
    assert answer.json["totals"]["net_sales_fen"] == 520_00 and answer.json["sales_change"]["yoy_bps"] == 42000
    answer = client.get(url(planted["campaign"].id, granularity="week", format="csv"), headers=headers)
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(answer.get_data(as_text=True))))
    assert rows[0][:4] == ["period", "from", "to", "participants"]
    assert [r[0] for r in rows[1:]] == ["2026-W09", "2026-W10", "2026-W11", "2026-W12", "2026-W13", "2026-W14"] + [
        "totals",
        "before",
    ]
    net = rows[0].index("net_sales_fen")
    assert rows[-2][net] == "52000" and rows[-1][net] == "20000"


def test_csv_cells_cannot_be_formulas():
    from web.reports_api import safe_cell

    assert [safe_cell(v) for v in ("=1+1", "+x", "-y", "@z", "ok", -5, None)] == [
        "'=1+1",
        "'+x",
        "'-y",
        "'@z",
        "ok",
        -5,
        "",
    ]


def test_merchant_staff_see_only_their_merchant(planted, client, make_operator):
    _, theirs = make_operator("merchant_staff", planted["a"])
    _, others = make_operator("merchant_staff", planted["b"])
    assert client.get(url(planted["campaign"].id), headers=theirs).status_code == 200
    assert client.get(url(planted["campaign"].id), headers=others).status_code == 404
    assert client.get(url(999_999), headers=theirs).status_code == 404
    overview_url = "/admin/api/reports/overview?from=2026-03-01&to=2026-03-31"
    answer = client.get(overview_url, headers=others)
    assert answer.status_code == 200 and answer.json["totals"]["sales_fen"] == 99_99
    assert answer.json["scope"]["merchant_id"] == planted["b"].id
    assert client.get(overview_url + f"&merchant_id={planted['a'].id}", headers=others).status_code == 404
    _, admin = make_operator("admin")
    answer = client.get(overview_url + f"&merchant_id={planted['a'].id}", headers=admin)
    assert answer.json["totals"]["sales_fen"] == 570_00
    assert client.get(overview_url, headers=admin).json["totals"]["sales_fen"] == 669_99


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-04-01"}, "to"),  # from after to
        ({"from": "2020-01-01"}, "to"),  # more than three years
        ({"granularity": "hour"}, "granularity"),
        ({"format": "xlsx"}, "format"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_queries_answer_422_naming_the_field(planted, client, make_operator, query, field):
    _, headers = make_operator("admin")
    answer = client.get(url(planted["campaign"].id, **query), headers=headers)
    assert answer.status_code == 422
    assert field in [d["field"] for d in answer.json["details"]], answer.json


def test_missing_dates_and_roles(planted, client, make_operator):
    _, admin = make_operator("admin")
    answer = client.get("/admin/api/reports/overview?to=2026-03-31", headers=admin)
    assert answer.status_code == 422 and "from" in [d["field"] for d in answer.json["details"]]
    assert client.get(url(planted["campaign"].id)).status_code == 401


# -- the rollup job ---------------------------------------------------------------------------------------


def counter_rows() -> list[tuple]:
    return sorted(
        db.session.execute(
            db.select(
                InsightsDaily.day,
                InsightsDaily.merchant_id,
                InsightsDaily.campaign_id,
                InsightsDaily.metric,
                InsightsDaily.dim,
                InsightsDaily.count,
                InsightsDaily.fen,
            )
        ).all()
    )


def test_rebuilding_is_idempotent(planted):
    before = counter_rows()
    rebuild(days_between(date(2026, 3, 1), date(2026, 3, 31)), NOW)
    rebuild([date(2026, 3, 5)], NOW)
    assert counter_rows() == before and before


def test_the_job_catches_up_and_keeps_only_unfinished_days_open(planted, monkeypatch):
    db.session.execute(db.delete(InsightsDaily).where(InsightsDaily.day == date(2026, 3, 5)))
    db.session.execute(db.delete(InsightsDay).where(InsightsDay.day == date(2026, 3, 5)))
    db.session.commit()
    assert campaign_report(planted["campaign"], *MARCH)["totals"]["influenced_orders"] == 0
    now = datetime(2026, 5, 2, 16, 30, tzinfo=UTC)  # 00:30 on 3 May, Beijing: 1 and 2 May are not final yet
    monkeypatch.setattr("jobs.insights.utcnow", lambda: now)
    due = due_days(now)  # days never built, from the first order's day (10 March 2025, built already) on
    assert due[0] == date(2025, 3, 11) and date(2026, 3, 5) in due and date(2026, 3, 6) not in due
    results = insights_rollup_job()
    assert results["days"] >= 1
    assert campaign_report(planted["campaign"], *MARCH)["totals"]["influenced_orders"] == 1
    # today and the two days before it (a late notification counts on WeChat's success time); 30 April
    # ended more than 48 h ago and was built since: final
    assert due_days(now) == [date(2026, 5, 1), date(2026, 5, 2), date(2026, 5, 3)]
    assert insights_rollup_job()["days"] == 3


def test_the_real_money_path_rolls_up(education, pay):
    from rebate import apply_refund, begin_refund, create_order
    from rebate.milestones import report_milestone
    from rebate.orders import LineRequest
    from tests.money_helpers import app_money

    school, course, teacher, campaign, student, packet = education
    order = create_order(student, [LineRequest(course.id, 1)], packet.id, datetime.now(UTC))
    db.session.commit()
    pay(order)
    begin_refund(order, "R-rep-1", 500_00)
    apply_refund(order.out_trade_no, "R-rep-1", 500_00, datetime.now(UTC), money=app_money())
    db.session.commit()
    insights_rollup_job()
    today = datetime.now(BEIJING).date()
    since = today - timedelta(days=1)  # the events may straddle a Beijing midnight
    totals = campaign_report(db.session.get(type(campaign), campaign.id), since, today)["totals"]
    assert (totals["influenced_orders"], totals["influenced_sales_fen"]) == (1, 1950_00)
    assert totals["influenced_refunds_fen"] == 500_00 and totals["discounts_fen"] == 50_00
    assert totals["packets_used"] == 1 and totals["rebates_awarded_fen"] == 195_00
    # held for its milestones: the refund cancels part of what was held (never paid), nothing is clawed back
    assert totals["rebates_cancelled_fen"] > 0 and totals["rebates_clawed_back_fen"] == 0
    assert totals["participants"] == 2
    # nothing paid yet; then both milestones release the rest to the balance
    kept = totals["rebates_awarded_fen"] - totals["rebates_cancelled_fen"]
    assert totals["rebates_net_fen"] == kept
    assert (totals["rebates_held_fen"], totals["rebates_paid_fen"]) == (kept, 0)
    for name in ("lessons_10", "test_passed"):
        report_milestone(db.session.get(Order, order.id), name, None, datetime.now(UTC), money=app_money())
        db.session.commit()
    insights_rollup_job()
    totals = campaign_report(db.session.get(type(campaign), campaign.id), since, today)["totals"]
    assert (totals["rebates_held_fen"], totals["rebates_paid_fen"], totals["rebates_paid"]) == (0, kept, 2)
    assert totals["rebates_net_fen"] == kept


def test_flask_insights_rebuild(planted, app):
    before = counter_rows()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["insights", "rebuild", "--from", "2026-03-01", "--to", "2026-03-07"])
    assert result.exit_code == 0, result.output
    assert "rebuilt 7 days" in result.output
    db.session.expire_all()
    assert counter_rows() == before
    refused = runner.invoke(args=["insights", "rebuild", "--from", "2026-03-07", "--to", "2026-03-01"])
    assert refused.exit_code != 0 and "--to" in refused.output


def test_the_rollup_job_is_scheduled_to_run_at_start(app):
    from jobs.scheduler import JOBS, RUN_AT_START

    assert insights_rollup_job in dict(JOBS) and insights_rollup_job in RUN_AT_START


def test_two_nodes_rebuilding_the_same_days_at_once(planted, app):
    from tests.concurrency import together

    before = counter_rows()
    days = [date(2026, 3, 5), date(2026, 3, 20), date(2026, 3, 21)]
    results = together(2, lambda i: rebuild(days if i else list(reversed(days)), NOW), app)
    assert [r["days"] for r in results] == [3, 3], results
    db.session.expire_all()
    assert counter_rows() == before


def test_the_report_path_only_reads(planted):
    from tests.test_insights_read_only import WRITES, watched

    db.session.expire_all()
    with watched() as seen:
        campaign_report(planted["campaign"], *MARCH, "week")
        overview(*MARCH, merchant_id=planted["a"].id, granularity="month")
    assert "SELECT" in seen["statements"] and not WRITES & set(seen["statements"])
    assert (seen["flushes"], seen["commits"]) == (0, 0)


def test_a_revoked_packet_counts_on_the_day_it_was_revoked(planted, time_machine):
    from rebate.packets import revoke_packet

    campaign = planted["campaign"]
    packet = plant_packet(campaign, None, 20_00, bj(2026, 3, 7, 9), "unclaimed")
    db.session.commit()
    time_machine.move_to(bj(2026, 4, 2, 15), tick=False)
    revoke_packet(packet.id)
    db.session.commit()
    assert db.session.get(RedPacket, packet.id).revoked_at == bj(2026, 4, 2, 15)
    rebuild([date(2026, 3, 7), date(2026, 4, 2)], NOW)
    march = campaign_report(campaign, *MARCH)["totals"]
    april = campaign_report(campaign, date(2026, 4, 1), date(2026, 4, 30))["totals"]
    assert (march["packets_revoked"], march["packets_revoked_fen"]) == (1, 120_00)  # the planted one only
    assert (april["packets_revoked"], april["packets_revoked_fen"]) == (1, 20_00)


def test_wallet_spending_is_its_own_figure_and_part_of_the_goods_value(planted):
    # given: at merchant b, an 80-yuan order paid with 5 yuan of rebate balance and 200 points (2 yuan)
    order = plant_order(planted["b_user"], planted["b"], bj(2026, 3, 12, 12), [("toy", 80_00)])
    order.balance_used_fen, order.points_used, order.points_value_fen = 5_00, 200, 2_00
    order.payable_fen = order.paid_fen = 73_00
    db.session.commit()
    rebuild([date(2026, 3, 12)], NOW)
    # then: sales are what buyers paid through WeChat; the wallet is beside it; together with the packets'
    # discounts, the goods value of the orders
    totals = overview(*MARCH, merchant_id=planted["b"].id)["totals"]
    assert (totals["sales_fen"], totals["wallet_spent_fen"], totals["discounts_fen"]) == (99_99 + 73_00, 7_00, 0)
    assert totals["goods_value_fen"] == 99_99 + 80_00
    mine = overview(*MARCH, merchant_id=planted["a"].id)["totals"]
    assert mine["wallet_spent_fen"] == 0 and mine["goods_value_fen"] == 570_00 + 30_00
