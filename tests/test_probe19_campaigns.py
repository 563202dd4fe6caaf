"""Probe 19: campaigns and growth — milestone releases in points, bonus packets of no packet, feedback quality.

1. A conditional rebate paid in points and released in parts (an equal part per milestone) turned each part into
   whole points on its own, rounded down: seven parts of 9.01 yuan at 10 fen a point gave 85 points, not the 90 the
   whole award buys, while the budget committed all 9.01 yuan.
2. A sign-in campaign of streak bonuses alone (no packet_amount_fen, no tiers) was accepted, and then issued
   nothing, bonus days included, without a word ("this campaign issues no packets" is swallowed by the trigger);
   its budget was not even checked against the bonus.
3. A quality-scaled award (the trial story: what is released scales by the feedback's quality) released the whole
   held part when the feedback was reported without a quality, as if rated 100.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger import account, balance
from models import AccountKind, Campaign, OrderMilestone, Rebate, db, utcnow
from rebate import create_order, issue_packet
from rebate.milestones import report_milestone
from rebate.orders import LineRequest
from rebate.triggers import sign_in
from risk import PlatformLimits
from tests.money_helpers import app_money
from tests.test_refunds import story  # noqa: F401 - fixture


def _points_in_parts(milestones: list[str]) -> dict:
    condition = {"milestones": milestones, "window_days": 30, "release": "parts"}
    return {
        "roles": [{"role": "consumer", "rate_bps": 1000, "form": "points", "cap_fen": 50_00, "condition": condition}]
    }


@pytest.mark.parametrize("milestones", [["a", "b", "c"], ["a", "b", "c", "d", "e", "f", "g"]])
def test_points_released_in_parts_add_up_to_the_points_the_whole_award_buys(
    app, make_merchant, make_product, make_campaign, make_user, pay, milestones
):
    # given: 10 fen a point, and a paid order whose 10 % (9.01 yuan on 90.10 paid) waits for its milestones
    app.config["POINT_VALUE_FEN"] = 10
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_10)
    campaign = make_campaign(_points_in_parts(milestones), budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    user = make_user()
    packet = issue_packet(campaign, user, source="t", source_ref="pts", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    rebate = db.session.query(Rebate).filter_by(order_id=order.id).one()
    assert (rebate.status, rebate.held_fen) == ("held", 9_01)

    # when: every milestone is reported, one after another
    for name in milestones:
        report_milestone(order, name, None, utcnow(), money=app_money())
        db.session.commit()

    # then: the person holds the points the whole award buys (90), as if it had been released at once
    db.session.refresh(rebate)
    assert (rebate.status, rebate.amount_fen, rebate.held_fen) == ("awarded", 9_01, 0)
    assert rebate.points == 90
    assert balance(account(AccountKind.USER_POINTS, "user", user.id)) == 90


SIGN_IN_BONUS = {"kind": "daily_sign_in", "streak_bonus": [{"days": 2, "amount_fen": 10_00}]}
CAPPED = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]}


def _sign_in_campaign(**fields) -> dict:
    return {
        "name": "sign in",
        "issuer_type": "platform",
        "funder_type": "platform_fund",
        "budget_limit_fen": 50_00,
        "trigger": SIGN_IN_BONUS,
        "rules": CAPPED,
        **fields,
    }


@pytest.mark.parametrize("path", ["/admin/api/campaigns", "/admin/api/campaigns/validate"])
@pytest.mark.parametrize("budget", [50_00, 1_00])
def test_a_sign_in_campaign_of_streak_bonuses_alone_is_refused_at_create(client, make_operator, path, budget):
    # given: a sign-in campaign with a 2-day streak bonus and no packet of its own (no packet_amount_fen, no tiers):
    # every issue of it is refused as "this campaign issues no packets", the bonus day's too, and silently
    _, admin = make_operator("admin")

    # when: it is created (or validated), with a budget that holds the bonus or one that cannot
    answer = client.post(path, json=_sign_in_campaign(budget_limit_fen=budget), headers=admin)

    # then: 422 naming the bonus, nothing stored
    assert (answer.status_code, answer.get_json()["error"]) == (422, "bonus_without_packet"), answer.get_json()
    assert "trigger.streak_bonus[0].amount_fen" in answer.get_json()["message"]
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(Campaign)).scalar_one() == 0


def test_a_sign_in_campaign_with_its_own_packet_still_pays_its_bonus(client, make_operator, make_user):
    # given: the same campaign with a 1-yuan daily packet, created and activated over the API
    _, admin = make_operator("admin")
    created = client.post("/admin/api/campaigns", json=_sign_in_campaign(packet_amount_fen=1_00), headers=admin)
    assert created.status_code == 201, created.get_json()
    campaign_id = created.get_json()["id"]
    activated = client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "go live"}, headers=admin)
    assert activated.status_code == 200, activated.get_json()
    person = make_user()

    # when: the person signs in two days running
    first_day = utcnow().replace(hour=4)  # noon Beijing
    _, first = sign_in(person, first_day, limits=PlatformLimits.off())
    _, second = sign_in(person, first_day + timedelta(days=1), limits=PlatformLimits.off())
    db.session.commit()

    # then: the daily packet, then the bonus
    assert [p.amount_fen for p in first] == [1_00]
    assert [p.amount_fen for p in second] == [10_00]


QUALITY = {
    "roles": [
        {
            "role": "consumer",
            "rate_bps": 1000,
            "form": "balance",
            "cap_fen": 50_00,
            "condition": {"milestones": ["feedback"], "window_days": 14, "quality_scaled": True},
        }
    ]
}


@pytest.fixture
def trial(make_merchant, make_product, make_campaign, make_user, pay):
    """The trial story: a paid 100.00 order whose buyer's 10 % (9.00) waits for feedback scaled by its quality."""
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00)
    campaign = make_campaign(
        QUALITY,
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
    )
    user = make_user()
    packet = issue_packet(campaign, user, source="t", source_ref="trial", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    return merchant, order


def test_feedback_without_its_quality_on_a_quality_scaled_award_is_refused_and_releases_nothing(
    client, trial, make_operator
):
    # given: the award scales by the feedback's quality (60/100 releases 60 %)
    merchant, order = trial
    _, staff = make_operator("merchant_staff", merchant=merchant)
    url = f"/admin/api/orders/{order.id}/milestones"

    # when: the shop reports the feedback without saying its quality
    answer = client.post(url, headers=staff, json={"name": "feedback"})

    # then: 422 asking for it; nothing recorded, nothing released (it had released the whole 9.00, as if rated 100)
    assert (answer.status_code, answer.get_json()["error"]) == (422, "quality_required"), answer.get_json()
    db.session.rollback()
    rebate = db.session.query(Rebate).filter_by(order_id=order.id).one()
    assert (rebate.status, rebate.amount_fen, rebate.held_fen) == ("held", 0, 9_00)
    assert db.session.query(OrderMilestone).count() == 0
    assert balance(account(AccountKind.USER_CASH, "user", order.user_id)) == 0

    # and: with its quality it releases that share; another milestone name needs none
    rated = client.post(url, headers=staff, json={"name": "feedback", "quality": 60})
    assert rated.status_code == 201, rated.get_json()
    assert client.post(url, headers=staff, json={"name": "photos"}).status_code == 201
    db.session.refresh(rebate)
    assert (rebate.status, rebate.amount_fen, rebate.held_fen) == ("awarded", 5_40, 0)


def test_a_packet_given_back_by_a_refund_reserves_by_its_own_rules_version(story):  # noqa: F811
    from models import CampaignRules, RedPacket
    from tests.test_refunds import refund

    # given: a 10-yuan packet of rules version 1 (5 % of paid, capped at 20 yuan) spent on a paid order
    campaign, _, _, order = story(restore=True)
    packet = db.session.get(RedPacket, order.packet_id)
    assert packet.rules_version == 1
    # and: the campaign moved on to version 2, capped at 1 yuan, while the packet was spent
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]}
    db.session.add(CampaignRules(campaign_id=campaign.id, version=2, rules=rules))
    db.session.flush()
    db.session.get(Campaign, campaign.id).rules_version = 2
    db.session.commit()

    # when: the order is refunded in full and the packet given back
    refund(order, "R-own-version", order.payable_fen)

    # then: it reserves its face and what its own version can pay (20 yuan), not the new version's 1 yuan
    packet = db.session.get(RedPacket, packet.id)
    assert packet.status == "issued"
    assert packet.reserved_fen == 10_00 + 20_00
