"""The console's campaign pages (web/console/campaigns.py): list, create, transitions, rules, what-if, scoping."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from models import AuditLog, Campaign, CampaignRules, db
from tests.browser import browser, chart_option, live_server, page, shot, sign_in  # noqa: F401 - fixtures
from tests.console_helpers import post, token_of
from tests.console_helpers import sign_in as client_sign_in

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]}


def form(**overrides) -> dict:
    data = {
        "name": "Spring cashback",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "starts_at": "2030-01-01T08:00",
        "ends_at": "2030-02-01T08:00",
        "budget_limit_yuan": "1000.00",
        "packet_amount_yuan": "10",
        "packet_min_spend_yuan": "50.00",
        "packet_valid_days": "30",
        "max_packets": "",
        "packet_categories": "tea, snacks",
        "rules": json.dumps(RULES),
        "trigger": '{"kind": "claim_code"}',
        "claim_limits": "{}",
        "reason": "spring promotion",
        "create": "1",
    }
    return {k: v for k, v in (data | overrides).items() if v is not None}


def snapshot() -> tuple:
    db.session.rollback()
    count = lambda model: db.session.execute(select(func.count()).select_from(model)).scalar_one()  # noqa: E731
    statuses = sorted(map(tuple, db.session.execute(select(Campaign.id, Campaign.status, Campaign.rules_version))))
    return count(Campaign), count(CampaignRules), count(AuditLog), statuses


@pytest.fixture
def admin(client, make_operator):
    operator, headers = make_operator("admin")
    return operator, client_sign_in(client, headers)


@pytest.fixture
def draft(make_campaign):
    return make_campaign(RULES, status="draft", budget_limit_fen=1_000_00, packet_amount_fen=10_00, name="Tea week")


def text(answer) -> str:
    return answer.get_data(as_text=True)


# --- list ------------------------------------------------------------------------------------------


def test_the_list_shows_status_parties_and_budget_in_yuan_with_paging(client, admin, make_campaign):
    for i in range(3):
        make_campaign(RULES, name=f"camp-{i}", budget_limit_fen=1_234_56, budget_committed_fen=1_00)
    answer = client.get("/console/campaigns?limit=2")
    html = text(answer)
    assert answer.status_code == 200
    assert "camp-2" in html and "camp-1" in html and "camp-0" not in html
    assert 'class="badge active"' in html and "platform_fund" in html
    assert "¥1234.56" in html and "¥1.00" in html
    assert 'id="new-campaign"' in html and "offset=2" in html
    assert "camp-0" in text(client.get("/console/campaigns?limit=2&offset=2"))


def test_support_sees_the_list_but_cannot_create(client, make_operator, draft):
    _, headers = make_operator("support")
    csrf = client_sign_in(client, headers)
    html = text(client.get("/console/campaigns"))
    assert "Tea week" in html and 'id="new-campaign"' not in html
    assert client.get("/console/campaigns/new").status_code == 403
    before = snapshot()
    assert post(client, "/console/campaigns/new", form(), csrf).status_code == 403
    assert snapshot() == before
    page_html = text(client.get(f"/console/campaigns/{draft.id}"))
    assert 'id="activate"' not in page_html and 'id="rules-form"' not in page_html
    answer = post(client, f"/console/campaigns/{draft.id}/activate", {"reason": "let it run"}, csrf)
    assert answer.status_code == 302
    assert 'class="flash error"' in text(client.get(answer.headers["Location"]))
    assert snapshot() == before


# --- create ----------------------------------------------------------------------------------------


def test_the_new_form_is_prefilled_with_a_valid_example(client, admin):
    html = text(client.get("/console/campaigns/new"))
    assert 'name="rules"' in html and "consumer" in html and "claim_code" in html
    check = post(client, "/console/campaigns/new", form(create=None, check="1"), admin[1])
    assert check.status_code == 200 and 'id="checked"' in text(check)
    assert "¥20.00" in text(check)  # the most one order can cost in rebates


def test_creating_a_campaign_converts_yuan_and_beijing_times_and_opens_its_page(client, admin):
    operator, csrf = admin
    answer = post(client, "/console/campaigns/new", form(), csrf)
    assert answer.status_code == 302, text(answer)
    campaign = db.session.execute(select(Campaign)).scalar_one()
    assert answer.headers["Location"] == f"/console/campaigns/{campaign.id}"
    assert (campaign.status, campaign.budget_limit_fen, campaign.packet_amount_fen) == ("draft", 1_000_00, 10_00)
    assert campaign.packet_min_spend_fen == 50_00 and campaign.packet_categories == ["tea", "snacks"]
    assert campaign.starts_at.isoformat().startswith("2030-01-01T00:00")  # 08:00 in Beijing is midnight UTC
    row = db.session.execute(select(AuditLog).where(AuditLog.action == "campaign.create")).scalar_one()
    assert (row.operator_id, row.reason) == (operator.id, "spring promotion")
    html = text(client.get(answer.headers["Location"]))
    assert "Draft campaign created" in html and "Spring cashback" in html and "2030-01-01 08:00" in html


@pytest.mark.parametrize(
    ("changes", "shown"),
    [
        ({"rules": json.dumps({"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]})}, "cap_fen"),
        ({"rules": json.dumps({"roles": [{"role": "boss", "rate_bps": 500, "form": "balance"}]})}, "role"),
        ({"rules": '{"roles": [ {"role": "consumer",, }'}, "JSON syntax error"),
        ({"budget_limit_yuan": "12.345"}, "at most two decimals"),
        ({"ends_at": "2029-01-01T08:00"}, "ends_at must be after starts_at"),
        ({"name": ""}, "name"),
        ({"packet_valid_days": "0"}, "greater than or equal to 1"),
    ],
    ids=["uncapped", "unknown-role", "json-syntax", "yuan", "window", "no-name", "zero-days"],
)
def test_a_refused_campaign_shows_the_message_keeps_the_form_and_creates_nothing(client, admin, changes, shown):
    before = snapshot()
    answer = post(client, "/console/campaigns/new", form(**changes), admin[1])
    html = text(answer)
    assert answer.status_code == 200
    assert shown in html and 'class="flash error"' in html
    assert "Spring cashback" in html or changes.get("name") == ""  # the typed values stay
    assert snapshot() == before


def test_merchant_staff_create_for_their_own_merchant_only(client, make_operator, make_merchant):
    staff, headers = make_operator("merchant_staff")
    other = make_merchant("other shop")
    csrf = client_sign_in(client, headers)
    html = text(client.get("/console/campaigns/new"))
    assert f'name="funder_merchant_id" value="{staff.merchant_id}"' in html
    data = form(issuer_type="platform", funder_type="platform_fund", funder_merchant_id=str(other.id))
    answer = post(client, "/console/campaigns/new", data, csrf)
    assert answer.status_code == 302, text(answer)
    campaign = db.session.execute(select(Campaign)).scalar_one()
    assert (campaign.funder_type, campaign.funder_merchant_id) == ("merchant_deposit", staff.merchant_id)
    assert (campaign.issuer_type, campaign.issuer_merchant_id) == ("merchant", staff.merchant_id)


# --- one campaign ----------------------------------------------------------------------------------


def test_the_campaign_page_shows_details_gauge_rules_and_the_report_link(client, admin, make_campaign):
    campaign = make_campaign(RULES, budget_limit_fen=200_00, budget_committed_fen=50_00)
    html = text(client.get(f"/console/campaigns/{campaign.id}"))
    assert "¥200.00" in html and "¥50.00 / ¥200.00" in html and "¥150.00" in html
    assert 'id="budget-gauge"' in html and '"value": 25.0' in html
    assert f'href="/console/campaigns/{campaign.id}/report"' in html
    assert "&#34;rate_bps&#34;: 500" in html and 'id="pause"' in html and "data-confirm" in html
    assert client.get("/console/campaigns/999999").status_code == 404


def test_activate_and_pause_need_a_reason_and_are_audited(client, admin, draft):
    operator, csrf = admin
    before = snapshot()
    for reason in ["", "no"]:
        answer = post(client, f"/console/campaigns/{draft.id}/activate", {"reason": reason}, csrf)
        assert answer.status_code == 302
        assert "reason" in text(client.get(answer.headers["Location"]))
    assert snapshot() == before
    answer = post(client, f"/console/campaigns/{draft.id}/activate", {"reason": "spring is here"}, csrf)
    html = text(client.get(answer.headers["Location"]))
    assert "Campaign activated" in html and 'id="status">active' in html
    post(client, f"/console/campaigns/{draft.id}/pause", {"reason": "stock ran out"}, csrf)
    db.session.rollback()
    assert db.session.get(Campaign, draft.id).status == "paused"
    rows = db.session.execute(select(AuditLog.action, AuditLog.reason).order_by(AuditLog.id)).all()
    assert [tuple(r) for r in rows if r[0].startswith("campaign.")] == [
        ("campaign.activate", "spring is here"),
        ("campaign.pause", "stock ran out"),
    ]
    refused = post(client, f"/console/campaigns/{draft.id}/pause", {"reason": "again please"}, csrf)
    assert "a paused campaign cannot pause" in text(client.get(refused.headers["Location"]))


def test_a_new_rules_version_and_a_refused_one_keep_the_text(client, admin, draft):
    _, csrf = admin
    bad = '{"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]}'
    answer = post(client, f"/console/campaigns/{draft.id}/rules", {"rules": bad, "reason": "more generous"}, csrf)
    html = text(answer)
    assert answer.status_code == 200 and "cap_fen" in html
    assert "&#34;rate_bps&#34;: 500, &#34;form&#34;: &#34;balance&#34;}]}</textarea>" in html  # the posted text
    broken = post(client, f"/console/campaigns/{draft.id}/rules", {"rules": "{oops", "reason": "typo"}, csrf)
    assert broken.status_code == 200 and "JSON syntax error" in text(broken)
    db.session.rollback()
    assert db.session.get(Campaign, draft.id).rules_version == 1
    good = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance", "cap_fen": 30_00}]}
    answer = post(
        client, f"/console/campaigns/{draft.id}/rules", {"rules": json.dumps(good), "reason": "more generous"}, csrf
    )
    assert answer.status_code == 302
    html = text(client.get(answer.headers["Location"]))
    assert "New rules version saved" in html and "v2" in html and "&#34;rate_bps&#34;: 800" in html


def test_what_if_shows_the_replay_in_yuan_and_writes_nothing(client, admin, draft):
    _, csrf = admin
    before = snapshot()
    draft_rules = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance", "cap_fen": 30_00}]}
    answer = post(
        client,
        f"/console/campaigns/{draft.id}/simulate",
        {"what_if_rules": json.dumps(draft_rules), "days": "7", "budget_limit_yuan": "500"},
        csrf,
    )
    html = text(answer)
    assert answer.status_code == 200 and 'id="what-if"' in html
    assert "7 天 days" in html and "¥0.00" in html and "¥500.00" in html
    assert "800" in html  # the draft text stays in its textarea
    refused = post(client, f"/console/campaigns/{draft.id}/simulate", {"what_if_rules": "[", "days": "7"}, csrf)
    assert refused.status_code == 200 and "JSON syntax error" in text(refused)
    too_long = post(
        client, f"/console/campaigns/{draft.id}/simulate", {"what_if_rules": json.dumps(RULES), "days": "999"}, csrf
    )
    assert "days" in text(too_long) and 'id="what-if"' not in text(too_long)
    assert snapshot() == before


def test_what_if_replays_a_paid_order_with_exact_yuan(
    client, admin, make_campaign, make_merchant, make_user, make_product, pay
):
    from models import utcnow
    from rebate import create_order, issue_packet
    from rebate.orders import LineRequest

    shop = make_merchant("tea shop")
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="1", now=utcnow())
    db.session.commit()
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    before = snapshot()
    generous = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance", "cap_fen": 20_00}]}
    answer = post(
        client,
        f"/console/campaigns/{campaign.id}/simulate",
        {"what_if_rules": json.dumps(generous), "days": "7"},
        admin[1],
    )
    html = text(answer)
    assert answer.status_code == 200 and "1 笔订单 orders" in html
    # paid 90 yuan after the 10-yuan packet: 5 % is 4.50 now, 8 % would be 7.20
    assert "¥4.50" in html and "¥7.20" in html and "¥2.70" in html and "+60.00%" in html
    assert snapshot() == before


def test_merchant_staff_see_their_own_campaign_and_404_for_another(client, make_operator, make_merchant, make_campaign):
    staff, headers = make_operator("merchant_staff")
    other = make_merchant("other shop")
    merchant_rules = {"roles": [{"role": "issuer", "rate_bps": 500, "form": "merchant_credit", "cap_fen": 20_00}]}

    def campaign_of(merchant_id: int, name: str) -> Campaign:
        return make_campaign(
            merchant_rules,
            name=name,
            status="draft",
            budget_limit_fen=100_00,
            issuer_type="merchant",
            issuer_merchant_id=merchant_id,
            funder_type="merchant_deposit",
            funder_merchant_id=merchant_id,
        )

    mine, theirs = campaign_of(staff.merchant_id, "mine"), campaign_of(other.id, "theirs")
    csrf = client_sign_in(client, headers)
    listed = text(client.get("/console/campaigns"))
    assert "mine" in listed and "theirs" not in listed
    assert client.get(f"/console/campaigns/{mine.id}").status_code == 200
    assert client.get(f"/console/campaigns/{theirs.id}").status_code == 404
    before = snapshot()
    for path, data in [
        (f"/console/campaigns/{theirs.id}/activate", {"reason": "take it over"}),
        (f"/console/campaigns/{theirs.id}/rules", {"rules": json.dumps(merchant_rules), "reason": "take it over"}),
        (f"/console/campaigns/{theirs.id}/simulate", {"what_if_rules": json.dumps(merchant_rules), "days": "7"}),
    ]:
        assert post(client, path, data, csrf).status_code == 404
    assert snapshot() == before
    answer = post(client, f"/console/campaigns/{mine.id}/activate", {"reason": "our promotion"}, csrf)
    assert "Campaign activated" in text(client.get(answer.headers["Location"]))


def test_forms_without_the_csrf_token_change_nothing(client, admin, draft):
    before = snapshot()
    assert client.post("/console/campaigns/new", data=form()).status_code == 400
    assert client.post(f"/console/campaigns/{draft.id}/activate", data={"reason": "let it run"}).status_code == 400
    answer = client.post(
        f"/console/campaigns/{draft.id}/rules", data={"rules": "{}", "reason": "x", "csrf_token": "no"}
    )
    assert answer.status_code == 400
    assert snapshot() == before


# --- in a browser ----------------------------------------------------------------------------------


def test_creating_and_activating_a_campaign_in_a_browser(live_server, page, make_operator):  # noqa: F811
    _, headers = make_operator("admin")
    sign_in(page, live_server, token_of(headers))
    page.goto(live_server.url + "/console/campaigns")
    shot(page, "campaigns")
    page.click("#new-campaign")
    page.fill("input[name=name]", "Browser spring")
    page.fill("input[name=budget_limit_yuan]", "200")
    page.click("#check")
    assert page.locator("#checked").is_visible()
    shot(page, "campaign_new")
    page.click("#create")
    page.wait_for_url("**/console/campaigns/*")
    assert page.locator("#status").inner_text() == "draft"
    page.fill("#actions input[name=reason]", "spring is here")
    page.click("#activate")
    page.wait_for_load_state()
    assert page.locator("#status").inner_text() == "active"
    option = chart_option(page, "budget-gauge")
    assert option["series"][0]["data"][0]["value"] == 0
    shot(page, "campaign")
    page.on("dialog", lambda dialog: dialog.accept())
    page.fill("#actions input[name=reason]", "pause for stock")
    page.click("#pause")
    page.wait_for_load_state()
    assert page.locator("#status").inner_text() == "paused"
    assert page.console_errors == []


def test_merchant_staff_get_404_for_another_merchants_campaign_in_a_browser(
    live_server,  # noqa: F811
    page,  # noqa: F811
    make_operator,
    make_merchant,
    make_campaign,
):
    other = make_merchant("other shop")
    theirs = make_campaign(
        RULES,
        name="theirs",
        issuer_type="merchant",
        issuer_merchant_id=other.id,
        funder_type="merchant_deposit",
        funder_merchant_id=other.id,
        budget_limit_fen=100_00,
    )
    theirs_id = theirs.id  # read before the server works: the test's own session holds no read lock then
    _, headers = make_operator("merchant_staff")
    sign_in(page, live_server, token_of(headers))
    answer = page.goto(f"{live_server.url}/console/campaigns/{theirs_id}")
    assert answer.status == 404 and "theirs" not in page.content()
    shot(page, "campaign_404_other_merchant")


def test_the_list_and_the_page_name_the_merchants_by_name_and_number(client, admin, make_campaign, make_merchant):
    shop = make_merchant("Tea Corner")
    campaign = make_campaign(
        RULES,
        name="shop-funded",
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
    )
    assert f"Tea Corner #{shop.id}" in text(client.get("/console/campaigns"))
    assert f"Tea Corner #{shop.id}" in text(client.get(f"/console/campaigns/{campaign.id}"))
