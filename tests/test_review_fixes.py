"""Review outcomes, fixed after review: milestones met while held for review, beneficiaries the payment would
refuse, a pending refund, the lock order of a merchant ban, review holds against a merchant's deposit, and the
window of a community's orders. On SQLite and PostgreSQL (the lock-order test: PostgreSQL only)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from ledger import account, balance
from models import (
    AccountKind,
    Ban,
    Campaign,
    LedgerAccount,
    Merchant,
    Order,
    Payout,
    Rebate,
    ReviewCase,
    RiskRuleSet,
    db,
    utcnow,
)
from rebate import begin_refund, create_order, fail_refund, issue_packet
from rebate.deposits import DepositsLeft, reserved_against
from rebate.errors import DepositExhausted
from rebate.milestones import report_milestone
from rebate.orders import LineRequest
from rebate.reviews import Review, decide
from risk.rules import forget_rules
from tests.concurrency import is_row_locked, wait_until_a_backend_waits_on_a_lock
from tests.conftest import on_postgres
from tests.money_helpers import app_money
from tests.review_helpers import DEVICE, TWO_ROLES, cash, community_case, hold_for_review, paid_order, rebates_of

ISSUER, CONSUMER, PACKET = 9_00, 4_50, 10_00
REVIEW_ALL = [{"name": "review_everything", "action": "review", "when": [["score", ">=", 0]]}]


@pytest.fixture(autouse=True)
def fresh_rules(app):
    forget_rules()
    yield
    forget_rules()


def review_every_order() -> RiskRuleSet:
    rules = RiskRuleSet(scope="platform", version=1, rules=REVIEW_ALL, status="active")
    db.session.add(rules)
    db.session.commit()
    forget_rules()
    return rules


def stop_reviewing(rules: RiskRuleSet) -> None:
    rules.status = "superseded"
    db.session.commit()
    forget_rules()


def post_decision(client, headers, case_id, outcome, reason="checked the trail"):
    return client.post(
        f"/admin/api/reviews/{case_id}/decide", json={"outcome": outcome, "reason": reason}, headers=headers
    )


def case_of(order_id: int) -> ReviewCase:
    db.session.expire_all()
    return db.session.execute(select(ReviewCase).where(ReviewCase.order_id == order_id)).scalar_one()


def committed(campaign_id: int) -> int:
    db.session.expire_all()
    return db.session.get(Campaign, campaign_id).budget_committed_fen


def deposit_of(merchant_id: int) -> int:
    return balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))


# 1. Milestones reported while the share is held for review count when a reviewer releases it.


def held_tuition(education, pay):
    """The education story under a platform rule that reviews every order: the teacher's 195 yuan held."""
    school, course, teacher, campaign, student, packet = education
    review_every_order()
    order = create_order(student, [LineRequest(course.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    (share,) = rebates_of(order.id).values()
    assert (share.status, share.held_fen, share.amount_fen) == ("review", 195_00, 0)
    return db.session.get(Order, order.id), teacher, campaign


def test_milestones_met_during_the_review_are_paid_when_it_is_released(education, client, make_operator, pay):
    # given: the teacher's share held for review; the school reports both milestones meanwhile
    order, teacher, campaign = held_tuition(education, pay)
    for name in ("lessons_10", "test_passed"):
        report_milestone(order, name, None, utcnow(), money=app_money())
    db.session.commit()
    assert cash(teacher.id) == 0  # nothing released while under review
    _, admin = make_operator("admin")

    # when: a reviewer releases it
    resp = post_decision(client, admin, case_of(order.id).id, "release")

    # then: paid as if the review had come first: both parts
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["effects"]["released_fen"] == 195_00
    (share,) = rebates_of(order.id).values()
    assert (share.status, share.amount_fen, share.held_fen) == ("awarded", 195_00, 0)
    assert cash(teacher.id) == 195_00


def test_one_milestone_met_during_the_review_releases_its_part_and_the_rest_waits(
    education, client, make_operator, pay
):
    order, teacher, campaign = held_tuition(education, pay)
    report_milestone(order, "lessons_10", None, utcnow(), money=app_money())
    db.session.commit()
    _, admin = make_operator("admin")

    assert post_decision(client, admin, case_of(order.id).id, "release").status_code == 200

    (share,) = rebates_of(order.id).values()
    assert (share.status, share.amount_fen, share.held_fen) == ("held", 97_50, 97_50)
    # and the other milestone, reported later, releases the rest as usual
    report_milestone(order, "test_passed", None, utcnow(), money=app_money())
    db.session.commit()
    (share,) = rebates_of(order.id).values()
    assert (share.status, share.amount_fen, share.held_fen) == ("awarded", 195_00, 0)
    assert cash(teacher.id) == 195_00


def test_a_share_released_past_its_deadline_expires_and_gives_its_budget_back(education, client, make_operator, pay):
    # given: the share held for review; its deadline passes; the milestones are reported after it
    order, teacher, campaign = held_tuition(education, pay)
    (share,) = rebates_of(order.id).values()
    db.session.execute(
        update(Rebate).where(Rebate.id == share.id).values(condition_deadline=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()
    before = committed(campaign.id)
    for name in ("lessons_10", "test_passed"):
        report_milestone(order, name, None, utcnow(), money=app_money())
    db.session.commit()
    _, admin = make_operator("admin")

    # when
    assert post_decision(client, admin, case_of(order.id).id, "release").status_code == 200

    # then: expired, nothing paid, its 195 yuan back in the budget
    (share,) = rebates_of(order.id).values()
    assert (share.status, share.amount_fen, share.held_fen) == ("expired", 0, 0)
    assert cash(teacher.id) == 0
    assert committed(campaign.id) == before - 195_00


def test_feedback_quality_reported_during_the_review_scales_the_release(
    make_user, make_merchant, make_product, make_campaign, client, make_operator, pay
):
    # given: 10 % of tuition held until feedback, scaled by its quality; held for review; feedback 60/100 meanwhile
    school = make_merchant("school")
    teacher, student = make_user(), make_user()
    condition = {"milestones": ["feedback"], "window_days": 30, "release": "all", "quality_scaled": True}
    campaign = make_campaign(
        {"roles": [{"role": "issuer", "rate_bps": 1000, "form": "balance", "cap_fen": 300_00, "condition": condition}]},
        issuer_type="user",
        issuer_user_id=teacher.id,
        budget_limit_fen=10_000_00,
        packet_amount_fen=50_00,
        packet_merchant_id=school.id,
    )
    packet = issue_packet(campaign, student, source="test", source_ref="q", now=utcnow())
    course = make_product(school, price_fen=1_050_00)
    review_every_order()
    order = create_order(student, [LineRequest(course.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    before = committed(campaign.id)
    report_milestone(db.session.get(Order, order.id), "feedback", 60, utcnow(), money=app_money())
    db.session.commit()
    _, admin = make_operator("admin")

    # when
    assert post_decision(client, admin, case_of(order.id).id, "release").status_code == 200

    # then: 60 % of the 100 yuan held is paid, the rest back to the budget
    (share,) = rebates_of(order.id).values()
    assert (share.status, share.amount_fen, share.held_fen) == ("awarded", 60_00, 0)
    assert cash(teacher.id) == 60_00
    assert committed(campaign.id) == before - 40_00


# 2. A release refuses whom the payment would refuse, with the ban's words, and pays the others.


@pytest.mark.parametrize("how", ["ban", "suspend"])
def test_a_release_does_not_pay_a_banned_or_suspended_merchant_and_pays_the_buyer(
    how, client, make_operator, make_merchant, make_user, make_product, make_campaign, pay
):
    # given: a merchant-issued packet's order held for review (the merchant earns 10 %, the buyer 5 %)
    shop = make_merchant()
    campaign = make_campaign(
        TWO_ROLES,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=PACKET,
        budget_limit_fen=10_000_00,
    )
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="m", now=utcnow())
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    case = hold_for_review(order)
    _, admin = make_operator("admin")
    if how == "ban":
        ban = client.post(
            "/admin/api/bans", json={"subject": "merchant", "value": str(shop.id), "reason": "fake shop"}, headers=admin
        )
        assert ban.status_code in (200, 201), ban.get_json()
    else:
        db.session.get(Merchant, shop.id).status = "suspended"
        db.session.commit()
    before = committed(campaign.id)

    # when
    resp = post_decision(client, admin, case.id, "release")

    # then: the merchant's share is revoked with the words why, its budget back; the buyer is paid
    assert resp.status_code == 200, resp.get_json()
    got = rebates_of(order.id)
    assert (got["issuer"].status, got["issuer"].amount_fen, got["issuer"].held_fen) == ("revoked", 0, 0)
    words = "fake shop" if how == "ban" else f"merchant {shop.id} is suspended"
    assert any(words in why for why in got["issuer"].reasons), got["issuer"].reasons
    assert (got["consumer"].status, got["consumer"].amount_fen) == ("awarded", 4_50)
    assert cash(buyer.id) == 4_50
    assert balance(account(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", shop.id)) == 0
    assert committed(campaign.id) == before - 9_00


@pytest.mark.parametrize("subject", ["device", "net"])
def test_a_release_does_not_pay_the_buyer_of_an_order_whose_device_or_network_is_banned(
    subject, client, make_operator, make_user, make_product, make_campaign, pay
):
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order)
    _, admin = make_operator("admin")
    value = DEVICE if subject == "device" else "198.51.100.0/24"  # the order's device, its address's /24
    ban = client.post(
        "/admin/api/bans", json={"subject": subject, "value": value, "reason": "phone farm"}, headers=admin
    )
    assert ban.status_code in (200, 201), ban.get_json()
    before = committed(campaign.id)

    resp = post_decision(client, admin, case.id, "release")

    assert resp.status_code == 200, resp.get_json()
    got = rebates_of(order.id)
    assert (got["consumer"].status, got["consumer"].held_fen) == ("revoked", 0)
    assert any("phone farm" in why and "is banned" in why for why in got["consumer"].reasons)
    assert (got["issuer"].status, got["issuer"].amount_fen) == ("awarded", ISSUER)
    assert (cash(buyer.id), cash(issuer.id)) == (0, ISSUER)
    assert committed(campaign.id) == before - CONSUMER
    assert resp.get_json()["effects"]["revoked_fen"] == CONSUMER


# 3. No release or clawback while a refund of the order is pending.


def test_release_and_claw_back_wait_for_a_pending_refund(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    # given: the buyer's WeChat-change rebate held for review; a refund of the order asked of WeChat
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    case = hold_for_review(order, roles=("consumer",), form="wechat_change")
    begin_refund(order, "R-pending", order.paid_fen)
    db.session.commit()
    _, admin = make_operator("admin")

    for outcome in ("release", "claw_back"):
        # when
        resp = post_decision(client, admin, case.id, outcome)

        # then: 409, nothing changed
        assert resp.status_code == 409, resp.get_json()
        body = resp.get_json()
        assert body["error"] == "refund_pending"
        assert "a refund of order" in body["message"] and "decide after it settles" in body["message"]
        assert case_of(order.id).status == "open"
        assert rebates_of(order.id)["consumer"].status == "review"
        assert db.session.execute(select(func.count(Payout.id)).where(Payout.order_id == order.id)).scalar_one() == 0

    # and: an abnormal refund is still open (WeChat may finish it): the decision still waits
    fail_refund("R-pending", "abnormal", utcnow())
    db.session.commit()
    assert post_decision(client, admin, case.id, "release").get_json()["error"] == "refund_pending"
    # and: once the refund closed, the release goes ahead and its payout is not held
    fail_refund("R-pending", "closed", utcnow())
    db.session.commit()
    assert post_decision(client, admin, case.id, "release").status_code == 200
    payout = db.session.execute(select(Payout).where(Payout.order_id == order.id)).scalar_one()
    assert (payout.amount_fen, payout.status, payout.held) == (CONSUMER, "pending", False)


# 4. A merchant ban from a review takes the merchant's campaigns before the deposits.


@pytest.mark.skipif(not on_postgres(), reason="row-lock order: PostgreSQL (SQLite serialises its transactions)")
def test_a_merchant_ban_locks_every_campaign_it_pauses_before_the_deposit(
    app, make_operator, make_merchant, make_user, make_product, make_campaign, pay
):
    # given: an order of a campaign the merchant funds, held for review; another running campaign of the
    # merchant (the ban will pause it); another transaction holds the merchant's deposit (as a payment does
    # once it holds its campaign)
    shop = make_merchant()
    funded = {"funder_type": "merchant_deposit", "funder_merchant_id": shop.id}
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay, merchant=shop, **funded)
    case_id = hold_for_review(order).id
    other = make_campaign(
        TWO_ROLES, issuer_type="merchant", issuer_merchant_id=shop.id, packet_amount_fen=PACKET, **funded
    )
    other_id = other.id
    assert other_id > campaign.id and other.status == "active"
    _, admin = make_operator("admin")
    deposit_id = account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id).id
    db.session.commit()
    holder = db.engine.connect()
    holder.begin()
    holder.execute(select(LedgerAccount.id).where(LedgerAccount.id == deposit_id).with_for_update())
    answers = []

    def ban_it():
        resp = app.test_client().post(
            f"/admin/api/reviews/{case_id}/decide",
            json={"outcome": "ban_merchant", "reason": "fake shop"},
            headers=admin,
        )
        answers.append(resp.status_code)

    deciding = threading.Thread(target=ban_it)
    deciding.start()
    probe = db.engine.connect()
    try:
        # when: the decision waits for the deposit
        wait_until_a_backend_waits_on_a_lock(probe)

        # then: it holds the campaign it will pause already, so it cannot wait in a circle with its payments
        assert is_row_locked(probe, select(Campaign.id).where(Campaign.id == other_id))
        assert is_row_locked(probe, select(Merchant.id).where(Merchant.id == shop.id))
    finally:
        probe.close()
        holder.rollback()
        holder.close()
        deciding.join(timeout=20)
    assert answers == [200]
    db.session.expire_all()
    assert db.session.get(Campaign, other_id).status == "paused"
    assert db.session.get(Merchant, shop.id).status == "suspended"


@pytest.mark.skipif(not on_postgres(), reason="row lock modes: PostgreSQL")
def test_a_merchant_ban_never_waits_on_a_payment_inserting_rebates_of_the_campaign_it_pauses(
    app, make_operator, make_merchant, make_user, make_product, make_campaign, pay
):
    # given: a held order of the merchant, another running campaign of the merchant, and a payment that has
    # inserted a rebate of that campaign (its foreign key holds the campaign row FOR KEY SHARE until commit,
    # and the payment will then update the campaign's budget, after whatever lock the review takes)
    shop = make_merchant()
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay, merchant=shop)
    case_id = hold_for_review(order).id
    other_id = make_campaign(TWO_ROLES, issuer_type="merchant", issuer_merchant_id=shop.id, packet_amount_fen=PACKET).id
    _, admin = make_operator("admin")
    db.session.commit()
    payment = db.engine.connect()
    payment.begin()
    payment.execute(select(Campaign.id).where(Campaign.id == other_id).with_for_update(key_share=True, read=True))
    answers = []

    def ban_it():
        resp = app.test_client().post(
            f"/admin/api/reviews/{case_id}/decide", json={"outcome": "ban_merchant", "reason": "fake"}, headers=admin
        )
        answers.append(resp.status_code)

    deciding = threading.Thread(target=ban_it)
    deciding.start()
    try:
        # when: the review bans the merchant while the payment holds its key share
        deciding.join(timeout=10)
        # then: it pauses the campaign without waiting (a FOR UPDATE would wait for the payment, which would
        # wait for the review's lock when it updates the budget: a deadlock)
        assert not deciding.is_alive() and answers == [200]
    finally:
        payment.rollback()
        payment.close()
        deciding.join(timeout=20)
    db.session.expire_all()
    assert db.session.get(Campaign, other_id).status == "paused"


# 5. What is held for review of a merchant-funded campaign stays in its deposit.


def test_a_review_hold_is_kept_in_the_deposit_and_the_release_pays_within_it(
    client, make_operator, make_merchant, make_user, make_product, make_campaign, pay
):
    # given: a shop's deposit of 48 yuan; its packets (10 yuan off, up to 9 yuan back) reserve 19 yuan each
    shop = make_merchant()
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "balance", "cap_fen": 9_00}]},
        fund_deposit_fen=48_00,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=PACKET,
        budget_limit_fen=1_000_00,
    )
    product = make_product(shop, price_fen=100_00)
    alice, bob, carol = make_user(), make_user(), make_user()
    packets = [
        issue_packet(campaign, who, source="test", source_ref=f"d{who.id}", now=utcnow()) for who in (alice, bob)
    ]
    assert [p.reserved_fen for p in packets] == [19_00, 19_00]
    orders = [
        create_order(who, [LineRequest(product.id, 1)], p.id, utcnow())
        for who, p in zip((alice, bob), packets, strict=True)
    ]
    db.session.commit()
    # alice's order is held for review: 10 yuan discount spent, her 9 yuan held
    rules = review_every_order()
    pay(orders[0])
    stop_reviewing(rules)
    assert rebates_of(orders[0].id)["consumer"].status == "review"
    assert deposit_of(shop.id) == 38_00  # bob's packet reserves 19, alice's 9 are held: 10 left

    # then: the deposit's "left" counts the held 9 yuan
    campaign = db.session.get(Campaign, campaign.id)
    assert reserved_against(shop.id) == 19_00 + 9_00
    assert DepositsLeft().of(campaign) == 38_00 - 19_00 - 9_00

    # when: carol claims a packet (19 more yuan reserved): the deposit cannot cover it with the held money
    with pytest.raises(DepositExhausted):
        issue_packet(campaign, carol, source="test", source_ref="carol", now=utcnow())
    db.session.rollback()

    # when: bob pays, then a reviewer releases alice's rebate
    pay(orders[1])
    assert rebates_of(orders[1].id)["consumer"].amount_fen == 9_00
    _, admin = make_operator("admin")
    assert post_decision(client, admin, case_of(orders[0].id).id, "release").status_code == 200

    # then: both paid within the deposit
    assert (cash(alice.id), cash(bob.id)) == (9_00, 9_00)
    assert deposit_of(shop.id) == 48_00 - 2 * (PACKET + 9_00)
    assert deposit_of(shop.id) >= 0


# 6. A community's outcome acts on the orders of the window the collusion job read.


def test_a_community_revoke_acts_only_on_orders_of_the_graph_window(
    client, make_operator, make_user, make_product, make_campaign, pay
):
    # given: a member's order held for review 60 days ago, and one today (RISK_GRAPH_DAYS: 30)
    recent, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    packet = issue_packet(campaign, buyer, source="test", source_ref="old", now=utcnow())
    old = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(old)
    old_id, recent_id = old.id, recent.id
    hold_for_review(db.session.get(Order, old_id))
    hold_for_review(db.session.get(Order, recent_id))
    db.session.execute(update(Order).where(Order.id == old_id).values(paid_at=utcnow() - timedelta(days=60)))
    db.session.commit()
    case = community_case([f"user:{buyer.id}", f"device:{DEVICE}"])
    _, admin = make_operator("admin")

    # when
    resp = post_decision(client, admin, case.id, "revoke", "ring")

    # then: the recent order's rebates are revoked, the old one's still wait for their own review
    assert resp.status_code == 200, resp.get_json()
    assert {r.status for r in rebates_of(recent_id).values()} == {"revoked"}
    assert {r.status for r in rebates_of(old_id).values()} == {"review"}


def test_a_community_outcome_takes_the_graph_window_it_is_given(
    make_operator, make_user, make_product, make_campaign, pay
):
    # given: a member's order paid 60 days before the community was found
    order, buyer, issuer, campaign = paid_order(make_user, make_product, make_campaign, pay)
    hold_for_review(order)
    db.session.execute(update(Order).where(Order.id == order.id).values(paid_at=utcnow() - timedelta(days=60)))
    db.session.commit()
    case = community_case([f"user:{buyer.id}"])
    operator, _ = make_operator("admin")
    from models.operators import Actor

    # when: the graph read 90 days
    decide(
        Actor(operator),
        case.id,
        Review("revoke", "ring"),
        utcnow(),
        money=app_money(),
        second_approval_fen=10**9,
        graph_days=90,
    )
    db.session.commit()

    # then: that order is in the window
    assert {r.status for r in rebates_of(order.id).values()} == {"revoked"}
    assert db.session.execute(select(func.count(Ban.id))).scalar_one() == 0
