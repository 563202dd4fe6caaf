"""Probe L: a campaign's whole life as an operator in a hurry, a merchant's staff and an attacker would try it.

Each test is a finding of the outside probe: it failed before its fix."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import Campaign, CampaignRules, db, utcnow
from rebate import issue_packet
from tests.conftest import fund_deposit

URL = "/admin/api/campaigns"
WINDOW = {"starts_at": "2025-01-01T00:00:00+00:00", "ends_at": "2025-01-02T00:00:00+00:00"}


def consumer(**more) -> dict:
    return {"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 10_00, **more}


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def _create(client, headers, rules: dict, **more):
    body = {
        "name": "probe",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "packet_amount_fen": 10_00,
        "budget_limit_fen": 1_000_00,
        "rules": rules,
        **more,
    }
    return client.post(URL, json=body, headers=headers)


def _stored() -> tuple[int, int]:
    db.session.rollback()
    return (
        db.session.execute(select(func.count()).select_from(Campaign)).scalar_one(),
        db.session.execute(select(func.count()).select_from(CampaignRules)).scalar_one(),
    )


# A rule set the shape accepts but the meaning refuses: the 422 named no field ("each role may appear once",
# "two tiers start at the same amount", "a window needs …"): an operator with three roles and two tiers each
# could not tell which one to fix. Each refusal now names its path, as the shape's own refusals do.
MEANING_REFUSALS = {
    "duplicate role": ({"roles": [consumer(), consumer(rate_bps=200)]}, "roles[1].role"),
    "two tiers at one spend": (
        {
            "roles": [
                {"role": "issuer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00},
                consumer(tiers=[{"min_order_fen": 5, "rate_bps": 1}, {"min_order_fen": 5, "rate_bps": 2}]),
            ]
        },
        "roles[1].tiers",
    ),
    "naive window": (
        {"roles": [consumer(windows=[WINDOW, {"starts_at": "2025-01-01T00:00:00", "ends_at": "2025-01-02T00:00:00"}])]},
        "roles[0].windows[1]",
    ),
    "window of garbage": ({"roles": [consumer(windows=[{"starts_at": "x", "ends_at": "y"}])]}, "roles[0].windows[0]"),
    "merchant credit to a consumer": ({"roles": [consumer(form="merchant_credit")]}, "roles[0].form"),
    "forms without the default": ({"roles": [consumer(forms=["points"])]}, "roles[0].forms"),
    "a form twice": ({"roles": [consumer(forms=["balance", "balance"])]}, "roles[0].forms"),
    "quality without feedback": (
        {"roles": [consumer(condition={"milestones": ["lesson"], "quality_scaled": True})]},
        "roles[0].condition.quality_scaled",
    ),
    "no cap in a budgeted campaign": ({"roles": [consumer(cap_fen=None)]}, "roles[0].cap_fen"),
    "more than the order": (
        {"roles": [consumer(rate_bps=6000), {"role": "issuer", "rate_bps": 6000, "form": "balance", "cap_fen": 1}]},
        "roles:",
    ),
}


@pytest.mark.parametrize("case", MEANING_REFUSALS, ids=list(MEANING_REFUSALS))
def test_a_rule_set_refused_for_its_meaning_names_the_field_and_stores_nothing(client, admin, case):
    rules, field = MEANING_REFUSALS[case]
    before = _stored()

    created = _create(client, admin, rules)

    assert created.status_code == 422, created.json
    assert created.json["error"] == "invalid_rules"
    assert created.json["message"].startswith(field), created.json["message"]
    assert _stored() == before


# --- a budget that cannot hold one packet ---------------------------------------------------------------

HUGE_CAP = {"roles": [consumer(rate_bps=1000, cap_fen=1_000_000_00)]}  # an operator in a hurry: "no real cap"


def test_a_budget_that_cannot_hold_one_packets_reservation_is_refused_not_activated_dead(client, admin):
    """A claim reserves face value + every cap. Before: a 100-yuan budget with a 1,000,000-yuan cap was created,
    validated ("valid": true) and activated, then every claim answered 409 budget_exhausted while the public page
    said "at least 100 yuan left". Now create and validate refuse it, naming the fields."""
    before = _stored()

    created = _create(client, admin, HUGE_CAP, budget_limit_fen=100_00)
    checked = client.post(
        f"{URL}/validate",
        json={
            "name": "probe",
            "issuer_type": "platform",
            "funder_type": "platform_fund",
            "packet_tiers": [{"min_spend_fen": 0, "amount_fen": 5_00}, {"min_spend_fen": 200_00, "amount_fen": 95_01}],
            "packet_amount_fen": 5_00,
            "budget_limit_fen": 100_00,
            "rules": {"roles": [consumer(cap_fen=5_00)]},  # the top tier's 95.01 + 5.00 is 100.01 yuan
        },
        headers=admin,
    )

    for answer in (created, checked):
        assert answer.status_code == 422, answer.json
        assert answer.json["error"] == "budget_below_one_packet"
        assert "budget_limit_fen" in answer.json["message"] and "cap_fen" in answer.json["message"]
    assert _stored() == before
    # exactly one packet's reservation fits
    assert _create(client, admin, {"roles": [consumer(cap_fen=5_00)]}, budget_limit_fen=15_00).status_code == 201
    # a budget without packets (a referral campaign) commits per order: no reservation to hold
    referral = {"applies_to": "referral", "roles": [{**consumer(cap_fen=1_000_000_00), "role": "inviter"}]}
    assert _create(client, admin, referral, budget_limit_fen=1_00, packet_amount_fen=None).status_code == 201


def test_a_rules_version_whose_caps_outgrow_the_budget_is_refused_and_the_version_kept(client, admin):
    created = _create(client, admin, {"roles": [consumer(cap_fen=5_00)]}, budget_limit_fen=100_00)
    campaign_id = created.json["id"]
    before = _stored()

    answer = client.put(f"{URL}/{campaign_id}/rules", json={"rules": HUGE_CAP, "reason": "bigger"}, headers=admin)

    assert answer.status_code == 422, answer.json
    assert answer.json["error"] == "budget_below_one_packet"
    assert _stored() == before
    assert db.session.get(Campaign, campaign_id).rules_version == 1


# --- the public page tells the status a buyer meets ---------------------------------------------------------


def test_the_public_page_does_not_call_a_campaign_past_its_end_date_or_before_its_start_running(client, make_campaign):
    """A campaign that ends by its date stays ``active`` in the table (nobody ends it by hand): the public page
    said "进行中 (running)" for ever, while every claim answered "the campaign is not running"."""
    plain = {"roles": [consumer(cap_fen=None)]}
    over = make_campaign(plain, packet_amount_fen=10_00, ends_at=utcnow() - timedelta(days=1))
    later = make_campaign(plain, packet_amount_fen=10_00, starts_at=utcnow() + timedelta(days=3))
    running = make_campaign(plain, packet_amount_fen=10_00, ends_at=utcnow() + timedelta(days=3))

    words = {c.id: client.get(f"/api/v1/campaigns/{c.id}/rules").json["status_words"] for c in (over, later, running)}
    page = client.get(f"/c/{over.id}").get_data(as_text=True)

    assert words[over.id].startswith("已结束 (ended") and "running" not in words[over.id]
    assert words[later.id].startswith("未开始 (not started yet") and "running" not in words[later.id]
    assert words[running.id] == "进行中 (running)"
    assert "已结束 (ended" in page and "进行中" not in page


def test_activating_a_campaign_past_its_end_date_is_409_and_changes_nothing(client, admin, make_user, user_headers):
    """An operator in a hurry copies last month's dates: the campaign was activated (200, "active") and then
    refused every claim ("the campaign is not running"). Now the activation says why; a later end lets it run."""
    created = _create(
        client,
        admin,
        {"roles": [consumer()]},
        starts_at="2020-01-01T00:00:00+08:00",
        ends_at="2020-02-01T00:00:00+08:00",
        trigger={"kind": "claim"},
    )
    campaign_id = created.json["id"]

    refused = client.post(f"{URL}/{campaign_id}/activate", json={"reason": "go live"}, headers=admin)

    assert refused.status_code == 409, refused.json
    assert refused.json["error"] == "campaign_over" and "ends_at" in refused.json["message"]
    db.session.rollback()
    assert db.session.get(Campaign, campaign_id).status == "draft"
    later = (utcnow() + timedelta(days=30)).isoformat()
    assert (
        client.patch(f"{URL}/{campaign_id}", json={"ends_at": later, "reason": "fix end"}, headers=admin).status_code
        == 200
    )
    assert client.post(f"{URL}/{campaign_id}/activate", json={"reason": "go live"}, headers=admin).status_code == 200
    claimed = client.post(f"/api/v1/campaigns/{campaign_id}/claim", headers=user_headers(make_user()))
    assert claimed.status_code == 201, claimed.json


def test_a_campaign_whose_packets_are_tiers_alone_shows_the_packet_and_every_restriction(
    client, admin, make_merchant, make_user
):
    """``packet_tiers`` without ``packet_amount_fen`` is a campaign that issues packets (the top tier's value): the
    public page showed no packet at all and "any merchant", while the packet is only usable at one shop, on fruit,
    from a 50-yuan spend: the buyer was refused what the poster promised."""
    shop = make_merchant("fruit shop")
    created = _create(
        client,
        admin,
        {"roles": [consumer()]},
        budget_limit_fen=None,
        packet_amount_fen=None,
        packet_tiers=[{"min_spend_fen": 100_00, "amount_fen": 20_00}, {"min_spend_fen": 50_00, "amount_fen": 5_00}],
        packet_min_spend_fen=50_00,
        packet_merchant_id=shop.id,
        packet_categories=["fruit"],
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
    )
    campaign_id = created.json["id"]
    assert client.post(f"{URL}/{campaign_id}/activate", json={"reason": "go live"}, headers=admin).status_code == 200
    packet = issue_packet(db.session.get(Campaign, campaign_id), make_user(), source="t", source_ref="1", now=utcnow())
    db.session.commit()
    assert (packet.amount_fen, packet.merchant_id, packet.categories) == (20_00, shop.id, ["fruit"])

    shown = client.get(f"/api/v1/campaigns/{campaign_id}/rules").json
    page = client.get(f"/c/{campaign_id}").get_data(as_text=True)

    assert shown["packet"] is not None
    assert shown["packet"]["face_value"]["fen"] == 20_00
    assert [t["face_value"]["fen"] for t in shown["packet"]["tiers"]] == [20_00, 5_00]
    assert shown["packet"]["min_spend"]["fen"] == 50_00
    assert shown["restrictions"]["merchants"]["merchants"] == [{"merchant_id": shop.id, "name": "fruit shop"}]
    assert shown["restrictions"]["categories"]["categories"] == ["fruit"]
    assert not any("any merchant" in words for words in shown["restrictions"]["words"])
    assert "fruit shop" in page and "¥20.00" in page


def test_a_sides_words_on_the_public_page_tell_its_tiers_and_multiplier_windows(client, make_campaign):
    """The words of each side said "0% of what the buyer paid" for a rule paying 10 % from 100 yuan, doubled this
    month: what a buyer reads in words must be what the payment gives (README: "in words and numbers")."""
    now = utcnow()
    window = {
        "starts_at": (now - timedelta(days=1)).isoformat(),
        "ends_at": (now + timedelta(days=30)).isoformat(),
        "factor_bps": 20_000,
    }
    tiered = consumer(rate_bps=0, cap_fen=None, tiers=[{"min_order_fen": 100_00, "rate_bps": 1000}], windows=[window])
    campaign = make_campaign({"roles": [tiered]}, packet_amount_fen=10_00)

    words = client.get(f"/api/v1/campaigns/{campaign.id}/rules").json["rebates"][0]["words"]

    assert "from 100.00 yuan: 10%" in words, words
    assert "×200%" in words, words


# --- merchant staff and the platform's pause ----------------------------------------------------------------


def test_a_platform_pause_of_a_campaign_its_merchant_paused_sticks_against_the_merchant(client, admin, make_operator):
    """Fraud suspected on a merchant's campaign that its staff had just paused (to edit it): the admin's pause was
    409 "a paused campaign cannot pause", so the pause stayed the merchant's, and its staff activated it again. A
    platform operator's pause now takes it over (README: a pause by the platform is undone by the platform only)."""
    staff_op, staff = make_operator("merchant_staff")
    merchant_id = staff_op.merchant_id
    fund_deposit(merchant_id, 1_000_00)
    db.session.commit()
    created = _create(
        client,
        staff,
        {"roles": [consumer()]},
        budget_limit_fen=100_00,
        issuer_type="merchant",
        issuer_merchant_id=merchant_id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant_id,
    )
    path = f"{URL}/{created.json['id']}"
    assert client.post(f"{path}/activate", json={"reason": "go live"}, headers=staff).status_code == 200
    assert client.post(f"{path}/pause", json={"reason": "editing"}, headers=staff).status_code == 200

    held = client.post(f"{path}/pause", json={"reason": "fraud suspected"}, headers=admin)

    assert held.status_code == 200, held.json
    assert held.json["paused_by_platform"] is True and held.json["status"] == "paused"
    resumed = client.post(f"{path}/activate", json={"reason": "back on"}, headers=staff)
    assert (resumed.status_code, resumed.json["error"]) == (403, "paused_by_platform")
    # the platform's own pause is not paused again, and the platform resumes it
    assert client.post(f"{path}/pause", json={"reason": "again"}, headers=admin).status_code == 409
    assert client.post(f"{path}/activate", json={"reason": "checked: fine"}, headers=admin).status_code == 200
