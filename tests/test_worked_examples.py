"""docs/architecture.md §1's stories as money stories, every balance checked after each one.

Amounts in the stories are yuan; everything here is fen.
"""

from __future__ import annotations

from datetime import timedelta

from ledger import account, balance
from models import AccountKind, Campaign, Payout, Rebate, RedPacket, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest
from tests.conftest import DEPOSIT_FEN
from tests.money_helpers import app_money


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def rebates_of(order) -> dict[str, Rebate]:
    return {r.role: r for r in db.session.query(Rebate).filter_by(order_id=order.id)}


def buy(user, product, quantity=1, packet=None):
    order = create_order(user, [LineRequest(product.id, quantity)], packet.id if packet else None, utcnow())
    db.session.commit()
    return order


def test_merchant_to_consumer_first_order_earns_packet_second_order_rebates_both_sides(
    make_user, make_merchant, make_product, make_campaign, pay
):
    # given: a merchant campaign funded by its deposit: first order >= 200 yuan earns a 20-yuan packet,
    # usable on a second order >= 50; the merchant earns 10 % credit and the consumer 5 % to balance.
    shop = make_merchant("noodle house")
    bowl = make_product(shop, price_fen=10_000)
    campaign = make_campaign(
        {
            "roles": [
                {"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 100_00},
                {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 50_00},
            ]
        },
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=1_000_00,
        packet_amount_fen=20_00,
        packet_min_spend_fen=50_00,
        packet_merchant_id=shop.id,
        trigger={"kind": "order_paid", "min_order_fen": 200_00, "first_order_only": True},
    )
    alice = make_user()

    # when: the first order of 200 yuan is paid
    first = buy(alice, bowl, quantity=2)
    assert pay(first) == "applied"

    # then: alice holds one packet; its face plus the largest rebate (100 + 50) is reserved
    packet = db.session.query(RedPacket).filter_by(owner_id=alice.id).one()
    assert (packet.amount_fen, packet.reserved_fen, packet.status) == (20_00, 170_00, "issued")
    db.session.refresh(campaign)
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (170_00, 0)

    # when: a second order of 100 yuan spends the packet (pays 80)
    second = buy(alice, bowl, quantity=1, packet=packet)
    assert (second.total_fen, second.discount_fen, second.payable_fen) == (100_00, 20_00, 80_00)
    pay(second)

    # then: merchant 10 % of 80 = 8 yuan credit, consumer 5 % of 80 = 4 yuan balance
    got = rebates_of(second)
    assert (got["issuer"].amount_fen, got["issuer"].form) == (8_00, "merchant_credit")
    assert (got["consumer"].amount_fen, got["consumer"].form) == (4_00, "balance")
    assert bal(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", shop.id) == 8_00
    assert bal(AccountKind.USER_CASH, "user", alice.id) == 4_00
    # the deposit paid the packet (20) and both rebates (12)
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id) == DEPOSIT_FEN - 32_00
    assert bal(AccountKind.MERCHANT_PAYABLE, "merchant", shop.id) == 300_00
    assert bal(AccountKind.WECHAT_SETTLEMENT) == -280_00 - DEPOSIT_FEN  # the two payments and the top-up
    db.session.refresh(campaign)
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (0, 32_00)


def test_cashback_8_percent_of_order_total_on_50_yuan_order_with_10_yuan_packet(
    make_user, make_product, make_campaign, pay
):
    # given: "spend 50 get 10 off", consumer 8 % of the order total to balance
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 800, "base": "order_total", "form": "balance", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
        packet_min_spend_fen=50_00,
    )
    bob = make_user()
    packet = issue_packet(campaign, bob, source="signup", source_ref=str(bob.id), now=utcnow())
    db.session.commit()

    # when: a 50-yuan order is paid with the packet
    order = buy(bob, make_product(price_fen=50_00), packet=packet)
    assert order.payable_fen == 40_00
    pay(order)

    # then: 8 % of 50 = 4 yuan to the balance; the platform fund paid 10 + 4
    assert rebates_of(order)["consumer"].amount_fen == 4_00
    assert bal(AccountKind.USER_CASH, "user", bob.id) == 4_00
    assert bal(AccountKind.PLATFORM_MARKETING_FUND) == -14_00
    db.session.refresh(campaign)
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (0, 14_00)


def test_referral_inviter_earns_10_percent_doubled_to_20_in_a_double_rebate_window(
    make_user, make_product, make_campaign, pay
):
    # given: a referral campaign paying inviters 10 % of invitees' spend as WeChat change,
    # doubled between now-1h and now+1h
    now = utcnow()
    window = {
        "starts_at": (now - timedelta(hours=1)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        "factor_bps": 20_000,
    }
    make_campaign(
        {
            "applies_to": "referral",
            "roles": [
                {"role": "inviter", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 500_00, "windows": [window]}
            ],
        },
        budget_limit_fen=10_000_00,
    )
    inviter = make_user()
    invitee = make_user(inviter=inviter)
    game = make_product(price_fen=30_00)

    # when: the invitee spends 30 yuan inside the window, then 30 yuan after it
    inside = buy(invitee, game)
    pay(inside, at=now)
    outside = buy(invitee, game)
    pay(outside, at=now + timedelta(hours=2))

    # then: 20 % of 30 = 6 yuan, then 10 % = 3 yuan, each queued as a transfer from the inviter's balance
    assert rebates_of(inside)["inviter"].amount_fen == 6_00
    assert rebates_of(outside)["inviter"].amount_fen == 3_00
    payouts = db.session.query(Payout).filter_by(user_id=inviter.id).order_by(Payout.id).all()
    assert [(p.rail, p.amount_fen, p.status) for p in payouts] == [
        ("wechat_change", 6_00, "pending"),
        ("wechat_change", 3_00, "pending"),
    ]
    assert payouts[0].external_no == f"TB{payouts[0].id:012d}"
    assert bal(AccountKind.USER_CASH, "user", inviter.id) == 0
    assert bal(AccountKind.REBATE_PAYABLE) == 9_00
    assert bal(AccountKind.PLATFORM_MARKETING_FUND) == -9_00
    campaign = db.session.query(Campaign).one()
    assert campaign.budget_committed_fen == 9_00


def test_trial_feedback_quality_scales_consumer_points_and_merchant_earns_on_later_full_size_orders(
    make_user, make_merchant, make_product, make_campaign, make_operator, client, pay
):
    # given: a beauty shop's trial packet (5 yuan off a 10-yuan trial size); the consumer earns 20 % of what
    # they paid as points once feedback arrives, scaled by its quality; the shop earns 5 % credit on
    # full-size orders (>= 100 yuan) attributed to the packet for 30 days
    shop = make_merchant("beauty shop")
    trial, full_size = make_product(shop, price_fen=10_00, category="trial"), make_product(shop, price_fen=200_00)
    campaign = make_campaign(
        {
            "attribution_days": 30,
            "roles": [
                {
                    "role": "consumer",
                    "rate_bps": 2000,
                    "form": "points",
                    "cap_fen": 10_00,
                    "condition": {"milestones": ["feedback"], "window_days": 14, "quality_scaled": True},
                },
                {
                    "role": "issuer",
                    "rate_bps": 500,
                    "form": "merchant_credit",
                    "min_order_fen": 100_00,
                    "cap_fen": 50_00,
                },
            ],
        },
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=500_00,
        packet_amount_fen=5_00,
        packet_categories=["trial"],
        packet_merchant_id=shop.id,
    )
    carol = make_user()
    packet = issue_packet(campaign, carol, source="trial", source_ref="carol", now=utcnow())
    db.session.commit()

    # when: the trial order is paid (5 yuan)
    trial_order = buy(carol, trial, packet=packet)
    pay(trial_order)

    # then: 20 % of 5 yuan = 1 yuan of points is held for feedback; the issuer is below its minimum
    got = rebates_of(trial_order)
    assert (got["consumer"].status, got["consumer"].held_fen, got["consumer"].amount_fen) == ("held", 1_00, 0)
    assert (got["issuer"].status, got["issuer"].reason_code) == ("skipped", "below_minimum")
    assert bal(AccountKind.USER_POINTS, "user", carol.id) == 0

    # when: the shop reports feedback of quality 80 (twice: the second changes nothing)
    _, staff = make_operator("merchant_staff", merchant=shop)
    for _ in range(2):
        answer = client.post(
            f"/admin/api/orders/{trial_order.id}/milestones", headers=staff, json={"name": "feedback", "quality": 80}
        )
        assert answer.status_code == 201, answer.json

    # then: 80 % of the held 1 yuan = 80 points (1 fen each); the withheld 20 fen returns to the budget
    db.session.expire_all()
    assert bal(AccountKind.USER_POINTS, "user", carol.id) == 80
    consumer = rebates_of(trial_order)["consumer"]
    assert (consumer.status, consumer.amount_fen, consumer.held_fen, consumer.points) == ("awarded", 80, 0, 80)
    campaign = db.session.get(Campaign, campaign.id)
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (0, 5_00 + 80)

    # when: carol comes back for a 200-yuan full-size bottle with no packet
    later = buy(carol, full_size)
    pay(later)

    # then: the shop earns 5 % of 200 = 10 yuan credit, attributed to the trial packet
    issuer = rebates_of(later)["issuer"]
    assert (issuer.amount_fen, issuer.packet_id, issuer.form) == (10_00, packet.id, "merchant_credit")
    assert any("attributed to red packet" in r for r in issuer.reasons)
    assert bal(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", shop.id) == 10_00
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id) == DEPOSIT_FEN - (5_00 + 10_00)
    db.session.refresh(campaign)
    assert campaign.budget_committed_fen == 5_00 + 80 + 10_00


def test_education_teacher_share_released_only_after_lessons_and_test_and_reversed_on_refund(
    education, make_operator, client, pay
):
    # given: a teacher's enrolment packet (50 yuan off) at a school; the teacher earns 10 % of the tuition paid,
    # held until 10 lessons are done and the test is passed, released in two parts
    school, course, teacher, campaign, student, packet = education
    order = buy(student, course, packet=packet)
    pay(order)

    # then: 10 % of 1950 = 195 yuan is held; nothing paid yet
    share = rebates_of(order)["issuer"]
    assert (share.status, share.held_fen, share.amount_fen) == ("held", 195_00, 0)
    assert bal(AccountKind.USER_CASH, "user", teacher.id) == 0

    # when: the school reports the lessons
    _, staff = make_operator("merchant_staff", merchant=school)
    client.post(f"/admin/api/orders/{order.id}/milestones", headers=staff, json={"name": "lessons_10"})

    # then: half (97.50) is released to the teacher's balance, half still held
    db.session.expire_all()
    share = rebates_of(order)["issuer"]
    assert (share.amount_fen, share.held_fen) == (97_50, 97_50)
    assert bal(AccountKind.USER_CASH, "user", teacher.id) == 97_50

    # when: the tuition is refunded in full before the test
    from rebate import apply_refund, begin_refund

    begin_refund(order, "R-edu-1", order.payable_fen)
    apply_refund(order.out_trade_no, "R-edu-1", order.payable_fen, utcnow(), money=app_money())
    db.session.commit()

    # then: the held half is cancelled, the released half taken back from the balance; the packet value
    # returns to the school's deposit and the budget holds nothing for this order
    share = rebates_of(order)["issuer"]
    assert (share.status, share.amount_fen, share.held_fen) == ("clawed_back", 0, 0)
    assert bal(AccountKind.USER_CASH, "user", teacher.id) == 0
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", school.id) == DEPOSIT_FEN
    assert bal(AccountKind.MERCHANT_PAYABLE, "merchant", school.id) == 0
    assert bal(AccountKind.WECHAT_SETTLEMENT) == -DEPOSIT_FEN  # only the top-up is left at WeChat
    campaign = db.session.get(Campaign, campaign.id)
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (0, 0)

    # and: a milestone on a refunded order is refused
    answer = client.post(f"/admin/api/orders/{order.id}/milestones", headers=staff, json={"name": "test_passed"})
    assert answer.status_code == 409


def test_merchant_story_refund_after_payout_left_becomes_receivable_netted_by_next_rebate(
    make_user, make_product, make_campaign, pay
):
    # given: consumer cashback of 10 % as WeChat change (platform-funded, no packet needed: referral-free
    # campaign on every packet order)
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 100_00}]},
        budget_limit_fen=1_000_00,
        packet_amount_fen=1_00,
    )
    dave = make_user()
    product = make_product(price_fen=100_00)
    first_packet = issue_packet(campaign, dave, source="t", source_ref="1", now=utcnow())
    db.session.commit()
    first = buy(dave, product, packet=first_packet)
    pay(first)
    payout = db.session.query(Payout).filter_by(order_id=first.id).one()
    assert payout.amount_fen == 9_90  # 10 % of 99 paid
    payout.status = "succeeded"  # the money has left (the dispatcher's job in production)
    db.session.commit()

    # when: the order is refunded in full after the transfer left
    from rebate import apply_refund, begin_refund

    begin_refund(first, "R-1", first.payable_fen)
    apply_refund(first.out_trade_no, "R-1", first.payable_fen, utcnow(), money=app_money())
    db.session.commit()

    # then: the paid payout is untouched; dave owes 9.90 as a negative balance (a receivable)
    assert db.session.get(Payout, payout.id).amount_fen == 9_90
    assert bal(AccountKind.USER_CASH, "user", dave.id) == -9_90
    campaign = db.session.get(Campaign, campaign.id)
    committed_after_refund = campaign.budget_committed_fen
    assert committed_after_refund == 9_90  # paid-out money is not back in the budget until recovered

    # when: dave's next order earns 9.90 again
    second_packet = issue_packet(campaign, dave, source="t", source_ref="2", now=utcnow())
    db.session.commit()
    second = buy(dave, product, packet=second_packet)
    pay(second)

    # then: it nets the receivable: no new transfer, balance back to 0, budget released for the recovered 9.90
    assert db.session.query(Payout).filter_by(order_id=second.id).count() == 0
    assert bal(AccountKind.USER_CASH, "user", dave.id) == 0
    db.session.refresh(campaign)
    assert campaign.budget_committed_fen == 1_00 + 9_90  # second packet + second rebate; first fully released
