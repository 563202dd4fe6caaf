"""A campaign's public rules (issue 13): ``GET /api/v1/campaigns/<id>/rules`` and the page ``/c/<id>``.

Who organises and who pays, what each side gets, dates, limits, the budget left (coarsely: never the
exact figure) and where to complain; drafts and unknown ids are 404; nothing internal leaks; the page
escapes what operators typed and runs no script; every packet of ``/me/red-packets`` links here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from models import db, utcnow
from rebate import issue_packet
from tests.conftest import DEPOSIT_FEN

MERCHANT_RULES = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 50_00},
        {"role": "consumer", "rate_bps": 550, "form": "balance", "cap_fen": 20_00, "min_order_fen": 200_00},
    ]
}
PLATFORM_RULES = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "wechat_change", "cap_fen": 10_00}]}


def _merchant_campaign(make_campaign, make_merchant, **fields):
    merchant = make_merchant("Noodle House 面馆")
    fields.setdefault("budget_limit_fen", 5012_34)
    return make_campaign(
        MERCHANT_RULES,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        packet_amount_fen=10_00,
        packet_min_spend_fen=200_00,
        packet_categories=["noodles"],
        packet_valid_days=14,
        trigger={"kind": "order_paid", "min_order_fen": 200_00, "first_order_only": True},
        claim_limits={"per_person": 1, "per_person_per_day": 1},
        starts_at=datetime(2026, 1, 1, 16, 0, tzinfo=UTC),
        ends_at=datetime(2026, 12, 31, 15, 59, tzinfo=UTC),
        **fields,
    )


def test_merchant_funded_campaign_rules_in_words_and_numbers(client, make_campaign, make_merchant, make_user):
    # given: a merchant-funded campaign with a budget, one packet already reserving part of it
    campaign = _merchant_campaign(make_campaign, make_merchant)
    issue_packet(campaign, make_user(), source="test", source_ref="rules", now=utcnow())
    db.session.commit()
    available = campaign.budget_available_fen
    assert available == 5012_34 - 80_00  # the face value and both caps are reserved

    # when: anyone (no sign-in) reads the rules
    answer = client.get(f"/api/v1/campaigns/{campaign.id}/rules")

    # then: organiser and funder are the merchant, each side's share is in numbers and words
    assert answer.status_code == 200
    rules = answer.json
    assert rules["status"] == "active"
    assert rules["organiser"] == {
        "type": "merchant",
        "merchant_id": campaign.issuer_merchant_id,
        "name": "Noodle House 面馆",
    }
    assert rules["funder"]["type"] == "merchant" and rules["funder"]["funder_type"] == "merchant_deposit"
    assert rules["funder"]["name"] == "Noodle House 面馆"
    issuer, consumer = rules["rebates"]
    assert issuer["rate_bps"] == 1000 and issuer["rate_percent"] == "10%"
    assert issuer["cap"] == {"fen": 50_00, "yuan": "50.00"} and issuer["form"] == "merchant_credit"
    assert consumer["rate_percent"] == "5.5%" and consumer["min_order"] == {"fen": 200_00, "yuan": "200.00"}
    assert "5.5%" in consumer["words"] and "20.00 yuan" in consumer["words"] and "平台余额" in consumer["words"]
    packet = rules["packet"]
    assert packet["face_value"] == {"fen": 10_00, "yuan": "10.00"} and packet["min_spend"]["yuan"] == "200.00"
    assert packet["categories"] == ["noodles"] and packet["valid_days"] == 14
    assert rules["how_to_get"] == {
        "kind": "order_paid",
        "words": rules["how_to_get"]["words"],
        "min_order": {"fen": 200_00, "yuan": "200.00"},
        "first_order_only": True,
    }
    # Beijing dates
    assert rules["dates"]["starts_at"] == "2026-01-02T00:00+08:00"
    assert rules["dates"]["ends_at"] == "2026-12-31T23:59+08:00"
    assert rules["claim_limits"]["per_person"] == 1 and rules["claim_limits"]["per_person_per_day"] == 1
    # the budget left: coarse, rounded down
    assert rules["budget"]["limited"] is True
    assert rules["budget"]["at_least_fen"] == 4900_00 and rules["budget"]["percent_left_band"] == "90-100%"
    assert "微信支付" in rules["complaints"]["wechat_pay"] and "投诉" in rules["complaints"]["wechat_pay"]
    assert rules["page_url"].endswith(f"/c/{campaign.id}")

    # and: nothing internal leaks: not the exact budget left, the limit, or the deposit's balance
    text = answer.get_data(as_text=True)
    for secret in (available, 5012_34, DEPOSIT_FEN):
        assert str(secret) not in text
    for secret in ("4932.34", "5012.34", "1000000.00"):
        assert secret not in text
    for word in ("deposit_balance", "risk", "note", "reserved", "committed"):
        assert word not in text


def test_platform_funded_campaign_names_the_platform(app, client, make_campaign):
    campaign = make_campaign(PLATFORM_RULES, packet_amount_fen=5_00, trigger={"kind": "claim_code"})
    app.config["PLATFORM_NAME"] = "返利平台"
    app.config["COMPLAINT_CONTACT"] = "客服电话 400-000-0000"

    rules = client.get(f"/api/v1/campaigns/{campaign.id}/rules").json

    assert rules["organiser"] == {"type": "platform", "name": "返利平台"}
    assert rules["funder"]["type"] == "platform" and rules["funder"]["funder_type"] == "platform_fund"
    assert rules["budget"] == {"limited": False, "words": rules["budget"]["words"]}
    (consumer,) = rules["rebates"]
    assert consumer["rate_bps"] == 800 and consumer["form"] == "wechat_change" and consumer["cap"]["yuan"] == "10.00"
    assert rules["complaints"]["platform"] == "返利平台: 客服电话 400-000-0000"
    assert rules["how_to_get"]["kind"] == "claim_code"


def test_paused_and_ended_are_public_drafts_and_unknown_ids_are_not(client, make_campaign):
    paused = make_campaign(PLATFORM_RULES, status="paused")
    ended = make_campaign(PLATFORM_RULES, status="ended")
    draft = make_campaign(PLATFORM_RULES, status="draft")
    assert client.get(f"/api/v1/campaigns/{paused.id}/rules").json["status"] == "paused"
    assert client.get(f"/api/v1/campaigns/{ended.id}/rules").json["status"] == "ended"
    for campaign_id in (draft.id, 987_654):
        answer = client.get(f"/api/v1/campaigns/{campaign_id}/rules")
        assert answer.status_code == 404 and answer.json["error"] == "not_found"
        page = client.get(f"/c/{campaign_id}")
        assert page.status_code == 404 and page.mimetype == "text/html"
        assert draft.name not in page.get_data(as_text=True)


def test_budget_band_when_little_or_nothing_is_left(make_campaign):
    from insights.campaign_rules import budget_left

    campaign = make_campaign(PLATFORM_RULES, budget_limit_fen=1000_00)
    campaign.budget_committed_fen = 1000_00 - 99_99
    assert budget_left(campaign)["at_least_fen"] == 0 and "less than 100.00" in budget_left(campaign)["words"]
    assert budget_left(campaign)["percent_left_band"] == "0-10%"
    campaign.budget_committed_fen = 1000_00
    assert "used up" in budget_left(campaign)["words"]
    db.session.rollback()


def test_page_escapes_the_name_and_runs_no_script(client, make_campaign, make_merchant):
    campaign = _merchant_campaign(make_campaign, make_merchant, name="<script>alert(1)</script>")

    page = client.get(f"/c/{campaign.id}")

    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'name="viewport"' in html
    assert "Noodle House 面馆" in html and "¥10.00" in html and "5.5%" in html and "5000.00" in html
    assert "5012.34" not in html
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "'unsafe-inline'" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_my_packets_link_to_their_campaigns_rules(app, client, make_campaign, make_user, user_headers):
    campaign = make_campaign(PLATFORM_RULES, packet_amount_fen=5_00)
    user = make_user()
    issue_packet(campaign, user, source="test", source_ref="link", now=utcnow())
    db.session.commit()

    (item,) = client.get("/api/v1/me/red-packets", headers=user_headers(user)).json["items"]

    base = app.config["PUBLIC_BASE_URL"].rstrip("/")
    assert item["rules_url"] == f"{base}/c/{campaign.id}"
    assert item["rules_api"] == f"{base}/api/v1/campaigns/{campaign.id}/rules"
    assert client.get(item["rules_api"].removeprefix(base)).status_code == 200


def test_rules_routes_are_documented(client):
    paths = client.get("/openapi.json").json["paths"]
    rules = paths["/api/v1/campaigns/{campaign_id}/rules"]["get"]
    assert "security" not in rules and "200" in rules["responses"]
    page = paths["/c/{campaign_id}"]["get"]
    assert "text/html" in page["responses"]["200"]["content"]


def test_the_rules_builder_only_reads(make_campaign, make_merchant):
    from insights.campaign_rules import campaign_rules
    from risk.limits import PlatformLimits
    from tests.test_insights_read_only import WRITES, watched

    campaign = _merchant_campaign(make_campaign, make_merchant)
    db.session.expire_all()
    with watched() as seen:
        rules = campaign_rules(
            campaign.id, platform_name="P", complaint_contact="C", platform_limits=PlatformLimits(), now=utcnow()
        )
    assert rules["organiser"]["name"] == "Noodle House 面馆"
    assert seen["statements"] and not WRITES & set(seen["statements"])
    assert seen["flushes"] == 0 and seen["commits"] == 0
