"""The console's overview and a campaign's effect report (web/console/reports.py): the report API's own
numbers, as tables and as ECharts data, scoped as the API scopes them."""

from __future__ import annotations

import pytest

from jobs.insights import insights_rollup_job
from models import db, utcnow
from tests.browser import browser, chart_option, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.console_helpers import sign_in as client_sign_in
from tests.console_helpers import token_of
from web.console.reports import today

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}


@pytest.fixture
def sold(make_campaign, make_merchant, make_user, make_product, pay):
    """A merchant's campaign with one paid order that spent its 10-yuan packet, rolled up."""
    from rebate import create_order, issue_packet
    from rebate.orders import LineRequest

    shop = make_merchant("tea shop")
    campaign = make_campaign(
        RULES,
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        packet_merchant_id=shop.id,
    )
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="1", now=utcnow())
    db.session.commit()
    order = create_order(
        buyer, [LineRequest(make_product(shop, price_fen=100_00, category="tea").id, 1)], packet.id, utcnow()
    )
    db.session.commit()
    pay(order)
    insights_rollup_job()
    return shop, campaign


def api_report(client, headers, campaign_id: int) -> dict:
    day = today().isoformat()
    answer = client.get(f"/admin/api/reports/campaigns/{campaign_id}?from={day}&to={day}", headers=headers)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_the_campaign_report_page_shows_the_apis_figures(client, make_operator, sold):
    _, campaign = sold
    _, headers = make_operator("admin")
    report = api_report(client, headers, campaign.id)
    assert report["totals"]["packets_used"] == 1 and report["totals"]["influenced_net_sales_fen"] == 90_00
    client_sign_in(client, headers)
    day = today().isoformat()
    answer = client.get(f"/console/campaigns/{campaign.id}/report?from={day}&to={day}")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert "¥90.00" in html  # influenced net sales, in yuan
    assert 'id="report-sales"' in html and 'id="report-uptake"' in html
    assert "同比 YoY" in html and "环比 MoM" in html
    csv = client.get(f"/console/campaigns/{campaign.id}/report?from={day}&to={day}&format=csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    assert csv.get_data(as_text=True).splitlines()[0].startswith("period,from,to,")


def test_a_zero_base_shows_no_ratio(client, make_operator, sold):
    _, campaign = sold
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    html = client.get(f"/console/campaigns/{campaign.id}/report").get_data(as_text=True)
    yoy = html.split('data-field="yoy_bps">', 1)[1].split("<", 1)[0]
    assert yoy == "—"  # nothing sold a year ago: no ratio, never infinity


def test_merchant_staff_see_their_own_report_and_404_for_another(client, make_operator, make_merchant, sold):
    shop, campaign = sold
    _, own = make_operator("merchant_staff", shop)
    client_sign_in(client, own)
    assert client.get(f"/console/campaigns/{campaign.id}/report").status_code == 200
    overview = client.get("/console/overview")
    assert overview.status_code == 200 and f"merchant #{shop.id}" in overview.get_data(as_text=True)
    assert client.get(f"/console/overview?merchant_id={shop.id + 1000}").status_code == 404
    _, stranger = make_operator("merchant_staff", make_merchant("another shop"))
    other = client.application.test_client()
    client_sign_in(other, stranger)
    answer = other.get(f"/console/campaigns/{campaign.id}/report")
    assert answer.status_code == 404 and answer.mimetype == "text/html"
    assert other.get(f"/console/campaigns/{campaign.id}/report?format=csv").status_code == 404


def test_bad_report_windows_are_refused_with_the_apis_message(client, make_operator, sold):
    _, campaign = sold
    _, headers = make_operator("admin")
    client_sign_in(client, headers)
    answer = client.get(f"/console/campaigns/{campaign.id}/report?from=2026-05-01&to=2026-04-01")
    assert answer.status_code == 422 and "before" in answer.get_data(as_text=True)
    assert client.get(f"/console/campaigns/{campaign.id}/report?granularity=hour").status_code == 422


def test_the_overview_compares_today_with_yesterday(client, make_operator, sold):
    _, headers = make_operator("finance")
    client_sign_in(client, headers)
    html = client.get("/console/overview").get_data(as_text=True)
    assert 'id="today-vs-yesterday"' in html and 'id="month-vs-last"' in html
    row = html.split('id="today-vs-yesterday"', 1)[1].split('data-field="net_sales_fen">', 1)[1].split("</tr>", 1)[0]
    assert "¥90.00" in row  # today's net sales
    assert client.get("/console/").headers["Location"].endswith("/console/overview")


def test_report_charts_hold_the_apis_numbers_in_a_browser(client, live_server, page, make_operator, sold):  # noqa: F811
    _, campaign = sold
    _, headers = make_operator("admin")
    day, campaign_id = today().isoformat(), campaign.id
    report = api_report(client, headers, campaign_id)
    sign_in(page, live_server, token_of(headers))  # (the test reads nothing from here on: SQLite has one writer)
    page.goto(f"{live_server.url}/console/campaigns/{campaign_id}/report?from={day}&to={day}")
    shot(page, "campaign_report")
    sales = chart_option(page, "report-sales")
    assert sales["xAxis"][0]["data"] == [row["period"] for row in report["series"]]
    by_name = {s["name"]: s["data"] for s in sales["series"]}
    assert by_name["活动带动 Influenced"] == [row["influenced_net_sales_fen"] / 100 for row in report["series"]]
    assert by_name["净销售额 Net sales"] == [row["net_sales_fen"] / 100 for row in report["series"]]
    packets = {s["name"]: s["data"] for s in chart_option(page, "report-packets")["series"]}
    assert packets["使用 Used"] == [row["packets_used"] for row in report["series"]]
    uptake = chart_option(page, "report-uptake")
    assert uptake["xAxis"][0]["data"] == [row["key"] for row in report["uptake"]["by_face_value"]]
    page.goto(f"{live_server.url}/console/overview")
    shot(page, "overview")
    trend = {s["name"]: s["data"] for s in chart_option(page, "overview-sales")["series"]}
    assert trend["净销售额 Net sales"][-1] == report["totals"]["net_sales_fen"] / 100
    assert page.console_errors == []
