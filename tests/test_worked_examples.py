"""DESIGN §1's stories as money stories, every balance checked after each one.

Amounts in the stories are yuan; everything here is fen.
"""

from __future__ import annotations

from datetime import timedelta

from ledger import account, balance
from models import AccountKind, Campaign, Payout, RedPacket, Rebate, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest


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
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id) == -32_00
    assert bal(AccountKind.MERCHANT_PAYABLE, "merchant", shop.id) == 300_00
    assert bal(AccountKind.WECHAT_SETTLEMENT) == -280_00
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
