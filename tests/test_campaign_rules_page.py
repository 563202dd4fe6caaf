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
        ends_at=datetime(2098, 12, 31, 15, 59, tzinfo=UTC),
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
    assert rules["dates"]["ends_at"] == "2098-12-31T23:59+08:00"
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
    assert rules["budget"] == {"limited": False, "over": False, "words": rules["budget"]["words"]}
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
    campaign.budget_committed_fen = 0  # nothing spent yet: the top band, not "100-100%"
    assert budget_left(campaign)["percent_left_band"] == "90-100%"
    db.session.rollback()


def test_an_ended_campaign_shows_no_budget_left_to_get(client, make_campaign):
    from datetime import timedelta

    from models import utcnow

    # given: two campaigns with most of their budget unspent, one ended, one past its end date
    ended = make_campaign(PLATFORM_RULES, status="ended", budget_limit_fen=5000_00)
    past = make_campaign(PLATFORM_RULES, budget_limit_fen=5000_00, ends_at=utcnow() - timedelta(hours=1))
    for campaign in (ended, past):
        # when
        budget = client.get(f"/api/v1/campaigns/{campaign.id}/rules").json["budget"]
        page = client.get(f"/c/{campaign.id}").get_data(as_text=True)
        # then: over, not "at least 5000 yuan left"
        assert budget == {
            "limited": True,
            "over": True,
            "words": "活动已结束，不再发放 (the campaign is over: nothing more is given out)",
        }
        assert "不再发放" in page and "5000.00" not in page and "90-100%" not in page
    running = client.get(f"/api/v1/campaigns/{make_campaign(PLATFORM_RULES, budget_limit_fen=5000_00).id}/rules")
    assert running.json["budget"]["over"] is False and running.json["budget"]["at_least_yuan"] == "5000.00"


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
    assert item["rules_url"] == f"{base}/c/{campaign.id}?v=1"
    assert item["rules_api"] == f"{base}/api/v1/campaigns/{campaign.id}/rules?v=1"
    assert client.get(item["rules_api"].removeprefix(base)).status_code == 200


def _new_version(campaign, rules: dict) -> None:
    """What ``replace_rules`` does, without an operator: the next version becomes the current one."""
    from models import CampaignRules

    campaign.rules_version += 1
    db.session.add(CampaignRules(campaign_id=campaign.id, version=campaign.rules_version, rules=rules))
    db.session.commit()


NEW_RULES = {"roles": [{"role": "consumer", "rate_bps": 1250, "form": "wechat_change", "cap_fen": 10_00}]}


def test_packet_links_carry_the_version_the_packet_pays_under(app, client, make_campaign, make_user, user_headers):
    # given: a packet issued under version 1, then the campaign's rules move to version 2
    campaign = make_campaign(PLATFORM_RULES, packet_amount_fen=5_00)
    user = make_user()
    issue_packet(campaign, user, source="test", source_ref="v1", now=utcnow())
    db.session.commit()
    _new_version(campaign, NEW_RULES)

    (item,) = client.get("/api/v1/me/red-packets", headers=user_headers(user)).json["items"]

    # then: its links show version 1 (8%), which says newer rules exist; without v: the current 12.5%
    base = app.config["PUBLIC_BASE_URL"].rstrip("/")
    assert item["rules_url"] == f"{base}/c/{campaign.id}?v=1"
    old = client.get(item["rules_api"].removeprefix(base)).json
    assert [r["rate_percent"] for r in old["rebates"]] == ["8%"]
    assert old["rules_version"] == {
        "shown": 1,
        "current": 2,
        "is_current": False,
        "newer_exists": True,
        "words": old["rules_version"]["words"],
    }
    assert old["page_url"] == f"{base}/c/{campaign.id}?v=1"
    current = client.get(f"/api/v1/campaigns/{campaign.id}/rules").json
    assert [r["rate_percent"] for r in current["rebates"]] == ["12.5%"]
    assert current["rules_version"]["shown"] == 2 and current["rules_version"]["newer_exists"] is False
    assert client.get(f"/api/v1/campaigns/{campaign.id}/rules?v=2").json["rebates"] == current["rebates"]

    page = client.get(item["rules_url"].removeprefix(base))
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "8%" in html and "12.5%" not in html
    assert "rules version 1" in html and "newer rules exist (version 2)" in html
    assert f'href="/c/{campaign.id}"' in html
    now_page = client.get(f"/c/{campaign.id}").get_data(as_text=True)
    assert "12.5%" in now_page and "the current rules, version 2" in now_page
    # WeChat's own parameters on a shared link are ignored
    assert client.get(f"/c/{campaign.id}?v=1&from=singlemessage&isappinstalled=0").status_code == 200
    assert client.get(f"/api/v1/campaigns/{campaign.id}/rules?from=timeline").status_code == 200


def test_bad_versions_are_refused_in_words(client, make_campaign):
    campaign = make_campaign(PLATFORM_RULES, packet_amount_fen=5_00)
    _new_version(campaign, NEW_RULES)
    api = f"/api/v1/campaigns/{campaign.id}/rules"

    for bad in ("0", "-1", "abc", "1.5", "", "%201", "99999999999"):
        answer = client.get(f"{api}?v={bad}")
        assert answer.status_code == 422, bad
        assert answer.json["error"] == "validation_error"
        (detail,) = answer.json["details"]
        assert detail["field"] == "v" and "positive whole number" in detail["problem"]
        page = client.get(f"/c/{campaign.id}?v={bad}")
        assert page.status_code == 422 and page.mimetype == "text/html"
        html = page.get_data(as_text=True)
        assert "positive whole number" in html and "8%" not in html
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]

    for missing in ("3", "999"):
        answer = client.get(f"{api}?v={missing}")
        assert answer.status_code == 404 and answer.json["error"] == "rules_version_not_found"
        assert f"no rules version {missing}" in answer.json["message"]
        page = client.get(f"/c/{campaign.id}?v={missing}")
        assert page.status_code == 404 and f"no rules version {missing}" in page.get_data(as_text=True)
    # a draft stays unknown whatever the version
    draft = make_campaign(PLATFORM_RULES, status="draft")
    assert client.get(f"/api/v1/campaigns/{draft.id}/rules?v=1").json["error"] == "not_found"
    assert "活动不存在" in client.get(f"/c/{draft.id}?v=1").get_data(as_text=True)


def test_every_restriction_a_buyer_meets_is_in_the_json_and_on_the_page(
    app, client, make_campaign, make_merchant, make_product
):
    # given: a merchant campaign usable Mon/Wed/Sun 10:00-14:00 Beijing, in two regions, in the mini
    # program only, at one merchant, on one product, with a 5-minute wait between claims
    shop = make_merchant("Dumpling <b>Bar</b>")
    product = make_product(shop, name="猪肉水饺 pork dumplings", category="noodles")
    app.config["CLAIM_PERSON_INTERVAL_SECONDS"] = 900
    campaign = _merchant_campaign(
        make_campaign,
        make_merchant,
        usage_windows={"weekdays": [1, 3, 7], "hours": [10, 14]},
        regions=["310000", "330100"],
        channels=["mini_program"],
        packet_merchant_id=shop.id,
        packet_products=[product.id],
    )
    campaign.claim_limits = {"per_person": 1, "per_person_per_day": 1, "min_interval_seconds": 300}
    db.session.commit()

    rules = client.get(f"/api/v1/campaigns/{campaign.id}/rules").json
    limits = rules["restrictions"]

    assert limits["weekdays"]["days"] == [1, 3, 7]
    assert "周一、周三、周日" in limits["weekdays"]["words"] and "Mon, Wed, Sun" in limits["weekdays"]["words"]
    assert limits["hours"]["from"] == "10:00" and limits["hours"]["to"] == "14:00"
    assert "Beijing time" in limits["hours"]["words"]
    assert limits["regions"]["regions"] == ["310000", "330100"] and "310000" in limits["regions"]["words"]
    assert limits["channels"]["channels"] == ["mini_program"] and "微信小程序" in limits["channels"]["words"]
    names = {m["name"] for m in limits["merchants"]["merchants"]}
    assert names == {"Dumpling <b>Bar</b>", "Noodle House 面馆"}  # the packet's merchant, and the campaign's
    assert rules["packet"]["only_merchant_id"] == shop.id
    assert rules["packet"]["only_merchant_name"] == "Dumpling <b>Bar</b>"
    assert limits["products"]["products"] == [{"product_id": product.id, "name": "猪肉水饺 pork dumplings"}]
    assert rules["claim_limits"]["minutes_between_claims"] == 5
    assert rules["claim_limits"]["platform_minutes_between_claims"] == 15
    assert "5 分钟 (5 minutes)" in limits["between_claims"]["words"]
    assert "15 分钟 (15 minutes)" in limits["between_claims"]["words"]
    assert not any("any day" in w for w in limits["words"])
    assert len(limits["words"]) == 8  # days, hours, regions, channels, merchant, products, categories, waits

    page = client.get(f"/c/{campaign.id}")
    html = page.get_data(as_text=True)
    for words in limits["words"]:
        assert words.replace("<", "&lt;").replace(">", "&gt;") in html
    assert "<b>Bar</b>" not in html and "Dumpling &lt;b&gt;Bar&lt;/b&gt;" in html
    assert "周一" in html and "Sun" in html and "10:00" in html and "310000" in html and "猪肉水饺" in html


def test_no_restriction_says_so(client, make_campaign, app):
    app.config["CLAIM_PERSON_INTERVAL_SECONDS"] = 90
    campaign = make_campaign(PLATFORM_RULES, packet_amount_fen=5_00, claim_limits={"min_interval_seconds": None})

    rules = client.get(f"/api/v1/campaigns/{campaign.id}/rules").json

    limits = rules["restrictions"]
    assert limits["weekdays"] is None and limits["regions"] is None and limits["merchants"] is None
    assert "any day and hour" in limits["words"][0]
    assert rules["claim_limits"]["minutes_between_claims"] is None
    assert rules["claim_limits"]["platform_minutes_between_claims"] == 2  # rounded up
    assert limits["between_claims"]["words"].endswith(
        "90 秒 (90 seconds) (across the platform: between two claims by one person)"
    )
    assert "any day and hour" in client.get(f"/c/{campaign.id}").get_data(as_text=True)


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
