"""Revoking packets, conditional rebates expiring, and the milestone endpoint's bad inputs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ledger import account, balance
from models import AccountKind, AuditLog, Campaign, Order, OrderMilestone, Rebate, RedPacket, db, utcnow
from rebate import create_order, issue_packet
from rebate.milestones import expire_held_rebates
from rebate.orders import LineRequest

CONDITIONAL = {
    "roles": [
        {
            "role": "consumer",
            "rate_bps": 1000,
            "form": "balance",
            "cap_fen": 50_00,
            "condition": {"milestones": ["lessons_10", "test_passed"], "window_days": 30},
        }
    ]
}


@pytest.fixture
def shop(make_merchant, make_product, make_campaign):
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00)
    campaign = make_campaign(
        CONDITIONAL,
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        max_packets=10,
    )
    return merchant, product, campaign


def budget(campaign_id):
    c = db.session.get(Campaign, campaign_id)
    db.session.refresh(c)
    return c.budget_reserved_fen, c.budget_committed_fen, c.packets_issued


def test_revoking_an_issued_packet_returns_its_reservation_and_count_slot(client, shop, make_user, make_operator):
    # given: a packet holding 10 + 50 of the budget and one count slot
    merchant, _, campaign = shop
    packet = issue_packet(campaign, make_user(), source="t", source_ref="1", now=utcnow())
    db.session.commit()
    assert budget(campaign.id) == (60_00, 0, 1)
    _, staff = make_operator("merchant_staff", merchant=merchant)
    # when
    answer = client.post(f"/admin/api/red-packets/{packet.id}/revoke", headers=staff, json={"reason": "fraud ring"})
    # then
    assert answer.status_code == 200, answer.json
    assert answer.json == {"id": packet.id, "status": "revoked", "reserved_fen": 0}
    assert budget(campaign.id) == (0, 0, 0)
    assert db.session.query(AuditLog).filter_by(action="packet.revoke").count() == 1


def test_revocation_refusals_change_nothing(client, shop, make_user, make_operator, pay):
    merchant, product, campaign = shop
    user = make_user()
    used = issue_packet(campaign, user, source="t", source_ref="used", now=utcnow())
    locked = issue_packet(campaign, user, source="t", source_ref="locked", now=utcnow())
    db.session.commit()
    pay(create_order(user, [LineRequest(product.id, 1)], used.id, utcnow()))
    create_order(user, [LineRequest(product.id, 1)], locked.id, utcnow())
    db.session.commit()
    before = budget(campaign.id)
    _, admin = make_operator("admin")
    _, other_staff = make_operator("merchant_staff")  # of another merchant
    cases = [
        (used.id, admin, {"reason": "too late"}, 409),
        (locked.id, admin, {"reason": "in an order"}, 409),
        (locked.id, other_staff, {"reason": "not mine"}, 404),
        (999_999, admin, {"reason": "no such"}, 404),
        (locked.id, admin, {}, 422),
    ]
    for packet_id, headers, body, status in cases:
        answer = client.post(f"/admin/api/red-packets/{packet_id}/revoke", headers=headers, json=body)
        assert answer.status_code == status, (packet_id, answer.json)
        if status == 404:  # another merchant's packet reads as no packet: its campaign is not named
            assert answer.json["message"] == f"red packet {packet_id} not found"
    assert budget(campaign.id) == before
    assert {p.status for p in db.session.query(RedPacket)} == {"used", "locked"}


def test_a_held_rebate_expires_when_its_window_closes_and_the_budget_gets_it_back(shop, make_user, pay):
    # given: a paid order whose 10 % (9 yuan on 90 paid) waits for two milestones within 30 days
    merchant, product, campaign = shop
    user = make_user()
    packet = issue_packet(campaign, user, source="t", source_ref="1", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    rebate = db.session.query(Rebate).filter_by(order_id=order.id).one()
    assert (rebate.status, rebate.held_fen) == ("held", 9_00)
    assert budget(campaign.id)[:2] == (0, 10_00 + 9_00)
    # when: the expiry job runs inside the window, then after it
    assert expire_held_rebates(utcnow() + timedelta(days=29)) == 0
    assert expire_held_rebates(utcnow() + timedelta(days=31)) == 1
    db.session.commit()
    # then: nothing was paid, the held 9 yuan returns to the budget, the reason says why
    db.session.refresh(rebate)
    assert (rebate.status, rebate.held_fen, rebate.amount_fen) == ("expired", 0, 0)
    assert any("condition not met" in r for r in rebate.reasons)
    assert budget(campaign.id)[:2] == (0, 10_00)
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == 0


@pytest.fixture
def held_order(shop, make_user, pay):
    merchant, product, campaign = shop
    user = make_user()
    packet = issue_packet(campaign, user, source="t", source_ref="h", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    return merchant, order


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "Lessons Ten"},
        {"name": "x" * 33},
        {"name": "feedback", "quality": 101},
        {"name": "feedback", "quality": -1},
        {"name": "feedback", "quality": "80"},
        {"name": "ok", "extra": 1},
    ],
)
def test_milestone_bad_inputs_are_refused_and_change_nothing(client, held_order, make_operator, body):
    merchant, order = held_order
    _, staff = make_operator("merchant_staff", merchant=merchant)
    answer = client.post(f"/admin/api/orders/{order.id}/milestones", headers=staff, json=body)
    assert answer.status_code == 422
    assert db.session.query(OrderMilestone).count() == 0


def test_milestones_of_another_merchant_or_unknown_or_unpaid_orders_are_refused(
    client, held_order, make_operator, make_user, shop
):
    merchant, order = held_order
    _, other_staff = make_operator("merchant_staff")
    _, support = make_operator("support")
    _, staff = make_operator("merchant_staff", merchant=merchant)
    assert (
        client.post(
            f"/admin/api/orders/{order.id}/milestones", headers=other_staff, json={"name": "lessons_10"}
        ).status_code
        == 404
    )
    assert (
        client.post("/admin/api/orders/999999/milestones", headers=staff, json={"name": "lessons_10"}).status_code
        == 404
    )
    assert (
        client.post(
            f"/admin/api/orders/{order.id}/milestones", headers=support, json={"name": "lessons_10"}
        ).status_code
        == 403
    )
    unpaid = create_order(make_user(), [LineRequest(shop[1].id, 1)], None, utcnow())
    db.session.commit()
    assert (
        client.post(f"/admin/api/orders/{unpaid.id}/milestones", headers=staff, json={"name": "lessons_10"}).status_code
        == 409
    )
    assert db.session.query(OrderMilestone).count() == 0


def test_milestone_replay_with_the_same_key_and_repeat_without_one_release_once(client, held_order, make_operator):
    merchant, order = held_order
    _, staff = make_operator("merchant_staff", merchant=merchant)
    keyed = {**staff, "Idempotency-Key": "m-1"}
    for _ in range(2):
        for name in ("lessons_10", "test_passed"):
            client.post(
                f"/admin/api/orders/{order.id}/milestones",
                headers=keyed | {"Idempotency-Key": name},
                json={"name": name},
            )
    client.post(f"/admin/api/orders/{order.id}/milestones", headers=staff, json={"name": "test_passed"})
    rebate = db.session.query(Rebate).filter_by(order_id=order.id).one()
    db.session.refresh(rebate)
    assert (rebate.status, rebate.amount_fen, rebate.held_fen) == ("awarded", 9_00, 0)
    assert db.session.query(OrderMilestone).count() == 2
    assert balance(account(AccountKind.USER_CASH, "user", order.user_id)) == 9_00


def test_a_milestone_met_after_the_orders_network_was_banned_releases_nothing(client, held_order, make_operator):
    """A release refuses whom the payment refuses: a ban on the order's network (a click farm found after the
    payment) keeps the buyer's held part held (it had checked banned persons only, and paid it out)."""
    merchant, order = held_order
    db.session.get(Order, order.id).ip = "198.51.100.9"
    db.session.commit()
    _, admin = make_operator("admin")
    ban = {"subject": "net", "value": "198.51.100.0/24", "reason": "farm"}
    assert client.post("/admin/api/bans", json=ban, headers=admin).status_code == 201
    _, staff = make_operator("merchant_staff", merchant=merchant)
    for name in ("lessons_10", "test_passed"):
        answer = client.post(f"/admin/api/orders/{order.id}/milestones", headers=staff, json={"name": name})
        assert answer.status_code in (200, 201), answer.get_json()
    rebate = db.session.query(Rebate).filter_by(order_id=order.id).one()
    db.session.refresh(rebate)
    assert (rebate.status, rebate.amount_fen, rebate.held_fen) == ("held", 0, 9_00)
    assert any("refused" in why and "198.51.100.0/24" in why for why in rebate.reasons), rebate.reasons
    assert balance(account(AccountKind.USER_CASH, "user", order.user_id)) == 0


def test_a_milestone_reported_while_a_refund_is_open_releases_a_payout_that_waits_for_it(
    make_user, make_product, make_campaign, pay
):
    from models import Payout
    from rebate import begin_refund, fail_refund
    from rebate.milestones import report_milestone
    from tests.money_helpers import app_money

    # given: a conditional rebate paid as WeChat change, held for one milestone, and a refund of its order open
    rules = {
        "roles": [
            {
                "role": "consumer",
                "rate_bps": 1000,
                "form": "wechat_change",
                "cap_fen": 50_00,
                "condition": {"milestones": ["delivered"], "window_days": 30},
            }
        ]
    }
    campaign = make_campaign(rules, budget_limit_fen=1_000_00, packet_amount_fen=10_00)
    user = make_user()
    packet = issue_packet(campaign, user, source="t", source_ref="open-refund", now=utcnow())
    db.session.commit()
    order = create_order(user, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    begin_refund(order, "R-OPEN", order.paid_fen)
    fail_refund("R-OPEN", "abnormal", utcnow())  # abnormal: still open, WeChat may finish it
    db.session.commit()
    # when: the milestone is reported
    report_milestone(order, "delivered", None, utcnow(), money=app_money())
    db.session.commit()
    # then: the payout it released is held with the order's others, until the refund is done
    payouts = db.session.query(Payout).filter_by(order_id=order.id).all()
    assert [(p.amount_fen, p.held) for p in payouts] == [(9_00, True)]
    fail_refund("R-OPEN", "closed", utcnow())
    db.session.commit()
    db.session.refresh(payouts[0])
    assert payouts[0].held is False
