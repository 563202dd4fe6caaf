"""Scoring inside the payment: each campaign's verdict and its money effects (allow pays, review holds and opens one
case, block refuses), per-campaign rule overrides, bans in earnings, a refund of a reviewed order, and what the
operator's trace and the person's own view say."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from insights.trace import trace_order
from ledger import account, balance
from models import (
    AccountKind,
    Ban,
    BrowsingSession,
    Campaign,
    LedgerEntry,
    Merchant,
    Order,
    Payout,
    Rebate,
    ReviewCase,
    RiskIdentifier,
    RiskPair,
    RiskProfile,
    RiskRuleSet,
    db,
    utcnow,
)
from models.risk import EventKind
from rebate import create_order, issue_packet
from rebate.intake import PaymentOutcome
from rebate.orders import LineRequest
from rebate.refunds import apply_refund
from risk.rules import forget_rules
from tests.money_helpers import app_money
from web.views import PLAIN_REASONS

ROLES = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "balance", "cap_fen": 50_00},
        {"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 50_00},
    ]
}
REFERRAL = {
    "applies_to": "referral",
    "roles": [{"role": "inviter", "rate_bps": 300, "form": "balance", "cap_fen": 50_00}],
}
BUDGET = 1_000_00


@pytest.fixture(autouse=True)
def fresh_rules(app):
    forget_rules()
    yield
    forget_rules()


def cash(user_id: int) -> int:
    return balance(account(AccountKind.USER_CASH, "user", user_id))


def rebates_of(order) -> dict[str, Rebate]:
    db.session.expire_all()
    return {r.role: r for r in db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars()}


def identifiers(kind: str, value: str, owners: list[int], owner_type: str = "user") -> None:
    now = utcnow()
    for owner in owners:
        db.session.add(
            RiskIdentifier(kind=kind, value=value, owner_type=owner_type, owner_id=owner, first_seen=now, last_seen=now)
        )


@pytest.fixture
def shop(make_user, make_product, make_campaign):
    """An invited buyer's unpaid 100-yuan order spending a user-issued packet of 10 yuan; the packet's campaign pays
    its issuer 10 % to balance and the buyer 10 % as WeChat change; a referral campaign pays the inviter 3 %."""

    def make(*, farm=False, shares_issuer_device=False, browsing=False, issuer_type="user", device=None):
        issuer, inviter = make_user(), make_user()
        buyer = make_user(inviter=inviter)
        product = make_product(price_fen=100_00)
        who = (
            {"issuer_type": "merchant", "issuer_merchant_id": product.merchant_id}
            if issuer_type == "merchant"
            else {"issuer_type": "user", "issuer_user_id": issuer.id}
        )
        campaign = make_campaign(ROLES, packet_amount_fen=10_00, budget_limit_fen=BUDGET, **who)
        referral = make_campaign(REFERRAL, budget_limit_fen=BUDGET)
        packet = issue_packet(campaign, buyer, source="test", source_ref=f"b{buyer.id}", now=utcnow())
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
        order.device, order.ip = device, None
        if farm:  # six accounts on the order's device, eleven on its network
            order.device, order.ip = f"farm-{buyer.id}", f"10.{buyer.id % 250}.7.9"
            identifiers("device", order.device, [buyer.id] + [900_000 + n for n in range(5)])
            identifiers("net", f"10.{buyer.id % 250}.7.0/24", [900_100 + n for n in range(10)])
        if shares_issuer_device:
            identifiers("device", order.device, [issuer.id])
        if browsing:  # ten minutes of shopping: views, searches, a comparison, the cart
            now = utcnow()
            db.session.add(
                BrowsingSession(
                    user_id=buyer.id,
                    started_at=now - timedelta(minutes=12),
                    last_at=now - timedelta(minutes=1),
                    first_view_at=now - timedelta(minutes=11),
                    last_cart_at=now - timedelta(minutes=2),
                    entry_kind=EventKind.SEARCH,
                    views=6,
                    searches=2,
                    compares=1,
                    cart_adds=1,
                    cart_removes=0,
                    pages=4,
                    shares=0,
                    dwell_ms=540_000,
                    gaps=14,
                    gap_sum_ms=660_000,
                    gap_sq_sum=45_000_000_000,  # ms²: gaps spread like a person's
                    events_total=15,
                )
            )
        db.session.commit()
        return order, {"issuer": issuer, "consumer": buyer, "inviter": inviter}, campaign, referral

    return make


def budget(campaign: Campaign) -> int:
    db.session.expire_all()
    return db.session.get(Campaign, campaign.id).budget_committed_fen


def test_an_honest_order_is_allowed_and_paid(shop, pay):
    order, people, campaign, referral = shop(browsing=True)
    pay(order)
    order = db.session.get(Order, order.id)
    assert order.risk_decision == "allow" and order.risk_score < 30, order.risk
    got = rebates_of(order)
    assert {r: (g.status, g.amount_fen) for r, g in got.items()} == {
        "issuer": ("awarded", 9_00),
        "consumer": ("awarded", 9_00),
        "inviter": ("awarded", 2_70),
    }
    assert db.session.execute(select(func.count(Payout.id)).where(Payout.order_id == order.id)).scalar_one() == 1
    assert set(order.risk["campaigns"]) == {str(campaign.id), str(referral.id)}
    assert order.risk["values"]["no_browsing"] is False


def test_a_review_holds_every_rebate_pays_nothing_and_opens_one_case(shop, pay):
    # given: a click farm's order (fresh account, no browsing, six accounts on the device)
    order, people, campaign, referral = shop(farm=True)
    entries = db.session.execute(select(func.count(LedgerEntry.id))).scalar_one()
    # when
    assert pay(order) == PaymentOutcome.APPLIED
    # then: held for review, nothing paid or queued, the budget committed, one case
    order = db.session.get(Order, order.id)
    assert order.risk_decision == "review" and 60 <= order.risk_score < 90, order.risk
    assert {
        "feature": "accounts_on_device",
        "value": 6,
        "points": 25,
        "words": "6 accounts on this device",
    } in order.risk["features"]
    got = rebates_of(order)
    assert {r: (g.status, g.amount_fen, g.held_fen) for r, g in got.items()} == {
        "issuer": ("review", 0, 9_00),
        "consumer": ("review", 0, 9_00),
        "inviter": ("review", 0, 2_70),
    }
    assert db.session.execute(select(func.count(Payout.id)).where(Payout.order_id == order.id)).scalar_one() == 0
    assert cash(people["issuer"].id) == cash(people["consumer"].id) == cash(people["inviter"].id) == 0
    assert db.session.execute(select(func.count(LedgerEntry.id))).scalar_one() == entries + 1  # the sale only
    assert budget(campaign) == 10_00 + 18_00 and budget(referral) == 2_70
    case = db.session.execute(select(ReviewCase)).scalar_one()
    assert (case.order_id, case.held_fen, case.score, case.status) == (order.id, 20_70, order.risk_score, "open")
    assert any("sent to review by rule review_high_score" in r for r in case.reasons)
    # a repeated notification changes nothing and opens nothing more
    assert pay(order) == PaymentOutcome.ALREADY_APPLIED
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 1
    profile = db.session.get(RiskProfile, order.user_id)
    assert (profile.paid_orders, profile.packet_orders, profile.rebated_orders) == (1, 1, 1)


def test_a_block_refuses_every_rebate_with_the_reason_and_takes_no_budget(shop, pay):
    # given: the farm's order, and the packet's issuer on the same device
    order, people, campaign, referral = shop(farm=True, shares_issuer_device=True)
    # when
    pay(order)
    # then
    order = db.session.get(Order, order.id)
    assert order.risk_decision == "block" and order.risk_score >= 90
    got = rebates_of(order)
    assert {r: (g.status, g.amount_fen, g.reason_code) for r, g in got.items()} == dict.fromkeys(
        ("issuer", "consumer", "inviter"), ("skipped", 0, "risk_blocked")
    )
    assert budget(campaign) == 10_00 and budget(referral) == 0  # the discount stands, nothing else taken
    assert db.session.execute(select(func.count(ReviewCase.id))).scalar_one() == 0
    lines = " ".join(trace_order(order, PLAIN_REASONS)["lines"])
    assert f"blocked by rule block_very_high_score (block when score >= 90): score {order.risk_score}" in lines
    assert "the packet's issuer and the buyer share a device" in lines
    pair = db.session.execute(select(RiskPair)).scalar_one()
    assert (pair.issuer_type, pair.issuer_id, pair.user_id, pair.orders) == (
        "user",
        people["issuer"].id,
        order.user_id,
        1,
    )


def test_a_campaign_override_decides_that_campaign_with_its_own_threshold(shop, pay):
    # given: the referral campaign reviews only at 95
    order, people, campaign, referral = shop(farm=True)
    override = [{"name": "review_high_score", "action": "review", "when": [["score", ">=", 95]]}]
    db.session.add(RiskRuleSet(scope=f"campaign:{referral.id}", version=1, rules=override, status="active"))
    db.session.commit()
    forget_rules()
    # when
    pay(order)
    # then: the packet's campaign holds, the referral pays
    got = rebates_of(order)
    assert (got["consumer"].status, got["issuer"].status) == ("review", "review")
    assert (got["inviter"].status, got["inviter"].amount_fen) == ("awarded", 2_70)
    assert cash(people["inviter"].id) == 2_70
    order = db.session.get(Order, order.id)
    assert order.risk["campaigns"][str(referral.id)]["action"] == "allow"
    assert order.risk_decision == "review"


def test_a_banned_or_suspended_merchant_issuer_earns_nothing_and_the_trace_says_why(
    shop, pay, make_user, make_product, make_campaign
):
    for how in ("ban", "suspend"):
        order, people, campaign, referral = shop(issuer_type="merchant", browsing=True)
        merchant = db.session.get(Merchant, order.merchant_id)
        if how == "ban":
            db.session.add(Ban(subject="merchant", value=str(merchant.id), reason="ring"))
        else:
            merchant.status = "suspended"
        db.session.commit()
        pay(order)
        got = rebates_of(order)
        assert (got["issuer"].amount_fen, got["issuer"].reason_code) == (0, "beneficiary_banned")
        assert "earns nothing" in " ".join(got["issuer"].reasons)
        # which ban or status refused it is for the platform's trace (the order's risk verdict), not the rebate
        said = " ".join(r["words"] for r in db.session.get(Order, order.id).risk["refused"])
        assert (f"merchant {merchant.id} is banned" if how == "ban" else f"merchant {merchant.id} is suspended") in said
        assert got["consumer"].amount_fen == 9_00
        assert budget(campaign) == 10_00 + 9_00


def test_the_consumer_of_an_order_from_a_banned_device_earns_nothing(shop, pay):
    order, people, campaign, referral = shop(browsing=True, device="dev-banned")
    db.session.add(Ban(subject="device", value="dev-banned", reason="click farm"))
    db.session.commit()
    pay(order)
    got = rebates_of(order)
    assert (got["consumer"].amount_fen, got["consumer"].reason_code) == (0, "beneficiary_banned")
    assert any("earns nothing under a ban" in why for why in got["consumer"].reasons)
    refused = db.session.get(Order, order.id).risk["refused"]
    assert any("device dev-banned is banned" in r["words"] and "click farm" in r["words"] for r in refused)
    assert (got["issuer"].amount_fen, got["inviter"].amount_fen) == (9_00, 2_70)
    assert db.session.execute(select(func.count(Payout.id)).where(Payout.order_id == order.id)).scalar_one() == 0


def test_a_refund_of_a_reviewed_order_releases_the_held_budget(shop, pay):
    # given: a reviewed order
    order, people, campaign, referral = shop(farm=True)
    pay(order)
    # when: it is refunded in full
    apply_refund(order.out_trade_no, "R-1", order.payable_fen, utcnow(), money=app_money())
    db.session.commit()
    # then: nothing held, every budget back, the profile counts one refund after rebate
    got = rebates_of(order)
    assert {r: (g.status, g.held_fen, g.amount_fen) for r, g in got.items()} == dict.fromkeys(
        ("issuer", "consumer", "inviter"), ("clawed_back", 0, 0)
    )
    assert budget(campaign) == 0 and budget(referral) == 0
    assert db.session.get(RiskProfile, order.user_id).refunded_after_rebate == 1
    assert cash(people["consumer"].id) == 0


def test_the_operator_sees_the_score_and_rules_the_person_sees_under_review_only(shop, pay, client, user_headers):
    order, people, campaign, referral = shop(farm=True)
    pay(order)
    order = db.session.get(Order, order.id)
    trace = trace_order(order, PLAIN_REASONS)
    lines = " ".join(trace["lines"])
    assert f"Risk score {order.risk_score}/100, review: " in lines and "6 accounts on this device (+25)" in lines
    assert f"Risk verdict for campaign #{campaign.id}: sent to review by rule review_high_score" in lines
    assert "Held for review: 9.00 yuan (900 fen) waits for a reviewer" in lines
    assert trace["risk"]["score"] == order.risk_score
    # the buyer's own view
    response = client.get("/api/v1/me/rebates", headers=user_headers(people["consumer"]))
    assert response.status_code == 200
    item = response.get_json()["items"][0]
    assert item["status"] == "review" and "under review" in item["explanation"]
    text = response.get_data(as_text=True)
    for secret in ("score", "review_high_score", "accounts on this device", "rule"):
        assert secret not in text, secret
