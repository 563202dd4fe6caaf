"""Refund stories (docs/architecture.md §3): clawback on net amounts rounded down, holds, receivables, packets restored.

Every story checks the balances and the budget counters after each step. Amounts
in comments are yuan; everything asserted is fen.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from ledger import account, balance
from models import (
    AccountKind,
    Alert,
    Campaign,
    LedgerAccount,
    LedgerEntry,
    LedgerFlow,
    Order,
    Payout,
    Rebate,
    RebateAdjustment,
    Receivable,
    RedPacket,
    Refund,
    db,
    utcnow,
)
from rebate import PaymentOutcome, apply_refund, begin_refund, create_order, fail_refund, issue_packet
from rebate.errors import Invalid, StateConflict
from rebate.orders import LineRequest
from tests.concurrency import is_row_locked, together, wait_until_a_backend_waits_on_a_lock
from tests.conftest import on_postgres
from tests.money_helpers import app_money
from tests.payment_helpers import pay_as_wechat

K = AccountKind


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def budget(campaign) -> tuple[int, int]:
    db.session.refresh(campaign)
    return campaign.budget_reserved_fen, campaign.budget_committed_fen


def count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def rebate_of(order, role="consumer") -> Rebate:
    return db.session.execute(select(Rebate).filter_by(order_id=order.id, role=role)).scalar_one()


def refund(order, number, amount_fen, at=None):
    """Begin and succeed a refund, committed as the refund callback would."""
    at = at or utcnow()
    begin_refund(order, number, amount_fen)
    done = apply_refund(order.out_trade_no, number, amount_fen, at, refund_id=f"wx-{number}", money=app_money())
    db.session.commit()
    return done


@pytest.fixture
def story(make_user, make_product, make_campaign, pay):
    """A 10-yuan packet spent on a 110-yuan order (100 yuan paid); the consumer earns 5 % of paid."""

    def make(form="balance", min_order_fen=0, restore=False, budget_limit_fen=100_00, cap_fen=20_00, price=110_00):
        campaign = make_campaign(
            {
                "roles": [
                    {
                        "role": "consumer",
                        "rate_bps": 500,
                        "form": form,
                        "cap_fen": cap_fen,
                        "min_order_fen": min_order_fen,
                    }
                ]
            },
            budget_limit_fen=budget_limit_fen,
            packet_amount_fen=10_00,
            restore_packet_on_refund=restore,
        )
        user = make_user()
        product = make_product(price_fen=price)
        order = spend(campaign, user, product, pay)
        return campaign, user, product, order

    return make


def spend(campaign, user, product, pay, quantity=1, ref=None):
    packet = issue_packet(
        campaign, user, source="test", source_ref=ref or f"{user.id}:{utcnow().timestamp()}", now=utcnow()
    )
    db.session.commit()
    order = create_order(user, [LineRequest(product.id, quantity)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    db.session.refresh(order)
    return order


# --- full and partial refunds --------------------------------------------------------------


def test_full_refund_of_a_balance_rebate_takes_it_all_back_and_frees_the_budget(story):
    # given: 100 yuan paid, 5 yuan to the balance; the fund paid the packet and the rebate
    campaign, user, _, order = story()
    assert rebate_of(order).amount_fen == 5_00
    assert bal(K.USER_CASH, "user", user.id) == 5_00
    assert bal(K.PLATFORM_MARKETING_FUND) == -15_00
    assert budget(campaign) == (0, 15_00)

    # when: the whole 100 yuan is refunded
    refund(order, "R1", 100_00)

    # then: the balance is back to 0, the fund whole again, nothing committed
    db.session.refresh(order)
    assert (order.status, order.refunded_fen) == ("refunded", 100_00)
    rebate = rebate_of(order)
    assert (rebate.status, rebate.original_fen, rebate.amount_fen) == ("clawed_back", 5_00, 0)
    [adjustment] = db.session.execute(select(RebateAdjustment)).scalars().all()
    assert (adjustment.amount_fen, adjustment.recovered_fen, adjustment.receivable_fen) == (5_00, 5_00, 0)
    assert bal(K.USER_CASH, "user", user.id) == 0
    assert bal(K.PLATFORM_MARKETING_FUND) == 0
    assert bal(K.MERCHANT_PAYABLE, "merchant", order.merchant_id) == 0
    assert bal(K.WECHAT_SETTLEMENT) == 0
    assert budget(campaign) == (0, 0)
    assert count(Receivable) == 0


def test_partial_refunds_claw_back_cumulatively_rounding_down(story):
    # given: 100 yuan paid, 5 % = 5.00 to the balance
    campaign, user, _, order = story()

    # when: 30 yuan is refunded
    refund(order, "R1", 30_00)

    # then: entitlement on 70 yuan is 3.50, so 1.50 comes back
    assert rebate_of(order).amount_fen == 3_50
    assert bal(K.USER_CASH, "user", user.id) == 3_50
    assert bal(K.PLATFORM_MARKETING_FUND) == -13_50
    assert budget(campaign) == (0, 13_50)

    # when: 0.33 yuan more is refunded (net 69.67 → 5 % = 3.4835 → 3.48)
    refund(order, "R2", 33)

    # then: rounding is down on the new net amount, only the difference is taken
    assert rebate_of(order).amount_fen == 3_48
    assert bal(K.USER_CASH, "user", user.id) == 3_48
    assert budget(campaign) == (0, 13_48)

    # when: the rest (69.67) is refunded
    refund(order, "R3", 69_67)

    # then: nothing is left; the three steps add up to the original award exactly
    rebate = rebate_of(order)
    assert (rebate.status, rebate.amount_fen) == ("clawed_back", 0)
    steps = db.session.execute(select(RebateAdjustment.amount_fen).order_by(RebateAdjustment.id)).scalars().all()
    assert steps == [1_50, 2, 3_48]
    assert bal(K.USER_CASH, "user", user.id) == 0
    assert bal(K.PLATFORM_MARKETING_FUND) == 0
    assert budget(campaign) == (0, 0)


def test_refund_below_the_rules_minimum_removes_the_whole_entitlement(story):
    # given: the rule pays only on orders of at least 80 yuan paid; 100 paid → 5 yuan
    campaign, user, _, order = story(min_order_fen=80_00)
    assert rebate_of(order).amount_fen == 5_00

    # when: 20.01 yuan is refunded (net 79.99 < 80)
    refund(order, "R1", 20_01)

    # then: not 5 % of 79.99 (3.99) but nothing at all
    assert rebate_of(order).amount_fen == 0
    assert bal(K.USER_CASH, "user", user.id) == 0
    assert budget(campaign) == (0, 10_00)
    [adjustment] = db.session.execute(select(RebateAdjustment)).scalars().all()
    assert adjustment.amount_fen == 5_00


def test_pending_wechat_change_payout_is_reduced_then_cancelled_not_paid(story):
    # given: the 5-yuan rebate is a WeChat change transfer still in the outbox
    campaign, user, _, order = story(form="wechat_change")
    [payout] = db.session.execute(select(Payout)).scalars().all()
    assert (payout.amount_fen, payout.status) == (5_00, "pending")
    assert bal(K.USER_CASH, "user", user.id) == 0
    assert bal(K.REBATE_PAYABLE) == 5_00

    # when: 30 yuan is refunded
    refund(order, "R1", 30_00)

    # then: the payout shrinks to 3.50 before it ever leaves
    db.session.refresh(payout)
    assert (payout.amount_fen, payout.status, payout.held) == (3_50, "pending", False)
    assert bal(K.REBATE_PAYABLE) == 3_50
    assert bal(K.USER_CASH, "user", user.id) == 0
    assert budget(campaign) == (0, 13_50)

    # when: the remaining 70 yuan is refunded
    refund(order, "R2", 70_00)

    # then: the payout is cancelled, its clearing flow closed at zero, nothing is owed
    db.session.refresh(payout)
    assert payout.status == "cancelled"
    assert payout.amount_fen == 3_50  # the row keeps its last amount; the status says it never left
    flow = db.session.get(LedgerFlow, payout.flow)
    assert flow.closed_at is not None
    assert bal(K.REBATE_PAYABLE) == 0
    assert bal(K.USER_CASH, "user", user.id) == 0
    assert bal(K.PLATFORM_MARKETING_FUND) == 0
    assert budget(campaign) == (0, 0)
    assert count(Receivable) == 0


def test_paid_out_rebate_becomes_a_receivable_netted_from_the_next_cash_rebate(
    story, client, user_headers, make_product, pay
):
    # given: the 5-yuan change transfer has already succeeded (its money left)
    campaign, user, product, order = story(form="wechat_change")
    [first_payout] = db.session.execute(select(Payout)).scalars().all()
    first_payout.status = "succeeded"
    db.session.commit()

    # when: the whole order is refunded
    refund(order, "R1", 100_00)

    # then: the succeeded payout is not edited; the user owes 5 yuan (cash -5) and the budget keeps it
    db.session.refresh(first_payout)
    assert (first_payout.status, first_payout.amount_fen) == ("succeeded", 5_00)
    assert bal(K.USER_CASH, "user", user.id) == -5_00
    [receivable] = db.session.execute(select(Receivable)).scalars().all()
    assert (receivable.kind, receivable.outstanding_fen, receivable.campaign_id) == ("cash", 5_00, campaign.id)
    [adjustment] = db.session.execute(select(RebateAdjustment)).scalars().all()
    assert (adjustment.amount_fen, adjustment.recovered_fen, adjustment.receivable_fen) == (5_00, 0, 5_00)
    assert budget(campaign) == (0, 5_00)  # the packet's 10 came back; the 5 paid out did not
    wallet = client.get("/api/v1/me/wallet", headers=user_headers(user)).json
    assert wallet["cash_fen"] == -5_00
    assert wallet["receivables"] == [{"kind": "cash", "outstanding_fen": 5_00, "campaign_id": campaign.id}]

    # when: the user earns 10 yuan of change on a 210-yuan order (200 paid)
    second = spend(campaign, user, make_product(price_fen=210_00), pay)

    # then: 5 nets the debt, only 5 is paid out, the receivable is cleared and its budget released
    assert rebate_of(second).amount_fen == 10_00
    second_payout = db.session.execute(select(Payout).filter_by(order_id=second.id)).scalar_one()
    assert (second_payout.amount_fen, second_payout.status) == (5_00, "pending")
    db.session.refresh(receivable)
    assert receivable.outstanding_fen == 0
    assert bal(K.USER_CASH, "user", user.id) == 0
    # committed: 10 (packet) + 10 (rebate) of the second order; the first order's 5 came back by netting
    assert budget(campaign) == (0, 20_00)
    # the fund paid: 5 (first rebate, recovered) + 10 + 10
    assert bal(K.PLATFORM_MARKETING_FUND) == -20_00
    wallet = client.get("/api/v1/me/wallet", headers=user_headers(user)).json
    assert (wallet["cash_fen"], wallet["receivables"], wallet["payouts_in_progress_fen"]) == (0, [], 5_00)


def test_begin_refund_holds_pending_payouts_and_fail_refund_releases_them(story):
    # given: a pending change payout
    campaign, user, _, order = story(form="wechat_change")
    [payout] = db.session.execute(select(Payout)).scalars().all()
    entries = count(LedgerEntry)

    # when: a refund is asked of WeChat
    begin_refund(order, "R1", 40_00)
    db.session.commit()

    # then: the payout is held; no money moved yet
    db.session.refresh(payout)
    assert (payout.held, payout.status, payout.amount_fen) == (True, "pending", 5_00)
    assert count(LedgerEntry) == entries

    # when: WeChat closes the refund
    fail_refund("R1", "closed", utcnow())
    db.session.commit()

    # then: the hold is released, the refund is closed, an operator is alerted; nothing moved
    db.session.refresh(payout)
    assert (payout.held, payout.amount_fen) == (False, 5_00)
    assert db.session.execute(select(Refund.status)).scalar_one() == "closed"
    assert db.session.execute(select(Alert.kind)).scalars().all() == ["refund_closed"]
    assert count(LedgerEntry) == entries
    db.session.refresh(order)
    assert (order.status, order.refunded_fen) == ("paid", 0)
    assert budget(campaign) == (0, 15_00)
    # a closed refund frees the amount: the full 100 can be refunded again
    refund(order, "R2", 100_00)
    db.session.refresh(order)
    assert order.status == "refunded"


def test_two_pending_refunds_keep_the_hold_until_both_finish(story):
    campaign, user, _, order = story(form="wechat_change")
    [payout] = db.session.execute(select(Payout)).scalars().all()
    begin_refund(order, "R1", 10_00)
    begin_refund(order, "R2", 10_00)
    db.session.commit()

    fail_refund("R1", "closed", utcnow())
    db.session.commit()
    db.session.refresh(payout)
    assert payout.held is True, "R2 is still pending"

    apply_refund(order.out_trade_no, "R2", 10_00, utcnow(), money=app_money())
    db.session.commit()
    db.session.refresh(payout)
    assert (payout.held, payout.amount_fen) == (False, 4_50)


def test_the_same_refund_applied_twice_changes_nothing_the_second_time(story):
    campaign, user, _, order = story()
    refund(order, "R1", 30_00)
    before = (count(LedgerEntry), count(RebateAdjustment), bal(K.USER_CASH, "user", user.id), budget(campaign))

    # when: WeChat's notification for R1 arrives again
    again = apply_refund(order.out_trade_no, "R1", 30_00, utcnow(), money=app_money())
    db.session.commit()

    # then
    assert again.status == "succeeded"
    db.session.refresh(order)
    assert order.refunded_fen == 30_00
    after = (count(LedgerEntry), count(RebateAdjustment), bal(K.USER_CASH, "user", user.id), budget(campaign))
    assert after == before == (before[0], 1, 3_50, (0, 13_50))


@pytest.mark.parametrize("amount", [0, -1, 100_01, 10**15])
def test_refund_amount_outside_1_to_paid_is_refused(story, amount):
    campaign, user, _, order = story()
    before = (count(Refund), count(LedgerEntry), bal(K.USER_CASH, "user", user.id), budget(campaign))

    with pytest.raises(Invalid) as refused:
        begin_refund(order, "R1", amount)
    db.session.rollback()

    assert refused.value.code == "refund_amount"
    assert "1 to 10000 fen" in str(refused.value)
    assert (count(Refund), count(LedgerEntry), bal(K.USER_CASH, "user", user.id), budget(campaign)) == before


def test_refunds_cannot_add_up_to_more_than_was_paid(story):
    campaign, user, _, order = story()
    refund(order, "R1", 60_00)
    begin_refund(order, "R2", 30_00)
    db.session.commit()
    before = (count(Refund), count(LedgerEntry))

    with pytest.raises(StateConflict) as refused:
        begin_refund(order, "R3", 10_01)  # 60 refunded + 30 under way: 10 can be refunded now
    db.session.rollback()
    # a state of the order (another refund under way, 409), not a bad amount: 40 are left once it is done
    assert refused.value.code == "refund_in_progress"
    assert "3000 fen of this order are under way: 1000 fen can be refunded now" in str(refused.value)
    with pytest.raises(Invalid, match="1 to 4000 fen"):
        begin_refund(order, "R4", 40_01)  # more than is left at all: a bad amount (422)
    db.session.rollback()

    assert (count(Refund), count(LedgerEntry)) == before


def test_apply_refund_with_an_amount_other_than_asked_is_refused_and_alerted(story):
    campaign, user, _, order = story()
    begin_refund(order, "R1", 30_00)
    db.session.commit()
    entries = count(LedgerEntry)

    with pytest.raises(StateConflict) as refused:
        apply_refund(order.out_trade_no, "R1", 31_00, utcnow(), money=app_money())

    assert refused.value.code == "refund_amount_mismatch"
    db.session.rollback()
    assert count(LedgerEntry) == entries
    assert db.session.execute(select(Refund.status)).scalar_one() == "pending"


def test_refund_of_an_unpaid_order_is_refused(make_user, make_product):
    user = make_user()
    order = create_order(user, [LineRequest(make_product(price_fen=50_00).id, 1)], None, utcnow())
    db.session.commit()

    with pytest.raises(StateConflict) as refused:
        begin_refund(order, "R1", 10_00)
    db.session.rollback()

    assert refused.value.code == "order_not_refundable"
    assert count(Refund) == 0
    assert count(LedgerEntry) == 0


def test_refund_number_reused_for_another_amount_is_refused(story):
    campaign, user, _, order = story()
    begin_refund(order, "R1", 30_00)
    db.session.commit()

    with pytest.raises(StateConflict) as refused:
        begin_refund(order, "R1", 20_00)
    db.session.rollback()

    assert refused.value.code == "refund_no_reused"
    assert count(Refund) == 1


# --- the packet on a full refund -----------------------------------------------------------


def test_full_refund_restores_the_packet_when_the_campaign_says_so(story):
    # given: a campaign that restores packets; reservation = 10 face + 20 cap
    campaign, user, _, order = story(restore=True)
    packet = db.session.get(RedPacket, order.packet_id)
    assert (packet.status, packet.reserved_fen) == ("used", 0)
    assert budget(campaign) == (0, 15_00)

    # when: the order is refunded in full
    refund(order, "R1", 100_00)

    # then: the packet is usable again with its full reservation, and its value is back with the funder
    db.session.refresh(packet)
    assert (packet.status, packet.order_id, packet.used_at, packet.reserved_fen) == ("issued", None, None, 30_00)
    assert bal(K.PLATFORM_MARKETING_FUND) == 0
    assert bal(K.MERCHANT_PAYABLE, "merchant", order.merchant_id) == 0
    assert budget(campaign) == (30_00, 0)


def test_a_restored_packet_spent_again_passes_the_ledger_check(story):
    # given: a packet restored by a full refund
    campaign, user, product, order = story(restore=True)
    refund(order, "R1", 100_00)
    packet = db.session.get(RedPacket, order.packet_id)

    # when: it is spent on a second order
    again = create_order(user, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()

    # then: one packet on a refunded order and a new one is not a double spend
    from ledger import check_ledger

    assert check_ledger().ok, check_ledger().violations
    assert again.packet_id == packet.id


def test_full_refund_without_restore_leaves_the_packet_used_and_returns_its_value(story):
    campaign, user, _, order = story(restore=False)

    refund(order, "R1", 100_00)

    packet = db.session.get(RedPacket, order.packet_id)
    db.session.refresh(packet)
    assert (packet.status, packet.reserved_fen) == ("used", 0)
    assert bal(K.PLATFORM_MARKETING_FUND) == 0
    assert budget(campaign) == (0, 0)


def test_partial_refund_does_not_return_the_packet_value(story):
    campaign, user, _, order = story(restore=True)

    refund(order, "R1", 99_99)

    packet = db.session.get(RedPacket, order.packet_id)
    db.session.refresh(packet)
    assert packet.status == "used"
    # 5 % of 0.01 yuan rounds to 0: the whole 5 comes back; the packet's 10 stays spent
    assert bal(K.PLATFORM_MARKETING_FUND) == -10_00
    assert budget(campaign) == (0, 10_00)


def test_packet_is_restored_only_when_its_whole_reservation_fits_again(make_user, make_product, make_campaign, pay):
    # given: a 10-yuan packet spent on a 5-yuan order (discount capped at 4.99), restore on refund;
    # the budget (50) holds the first order's 4.99 committed plus bob's reservation (30): 15.01 left
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]},
        budget_limit_fen=50_00,
        packet_amount_fen=10_00,
        restore_packet_on_refund=True,
    )
    alice, bob = make_user(), make_user()
    small = spend(campaign, alice, make_product(price_fen=5_00), pay)
    assert (small.discount_fen, small.payable_fen) == (4_99, 1)
    issue_packet(campaign, bob, source="test", source_ref="bob", now=utcnow())  # reserves 30: 4.99 + 30 ≤ 50
    db.session.commit()
    # when: the small order is refunded in full; the packet's 30 no longer fits beside bob's 30
    refund(small, "R1", 1)

    # then: the packet stays used (restoring it would have let a later payment overspend), the discount
    # went back to the funder and only bob's reservation remains
    packet = db.session.get(RedPacket, small.packet_id)
    db.session.refresh(packet)
    assert packet.status == "used"
    assert budget(campaign) == (30_00, 0)


def test_refund_after_the_packet_expired_does_not_restore_it(story):
    campaign, user, _, order = story(restore=True)
    packet = db.session.get(RedPacket, order.packet_id)

    refund(order, "R1", 100_00, at=packet.expires_at + timedelta(seconds=1))

    db.session.refresh(packet)
    assert packet.status == "used"
    assert budget(campaign) == (0, 0)
    assert db.session.get(Campaign, campaign.id).budget_available_fen == 100_00
    assert db.session.get(Order, order.id).status == "refunded"


def test_packet_is_restored_only_when_its_funders_deposit_covers_it_again(
    make_merchant, make_user, make_product, make_campaign, pay
):
    from tests.conftest import fund_deposit

    # given: a merchant-funded campaign (restore on refund) on an 11-yuan deposit; a packet reserves 10 + 1;
    # alice's packet spent on a 5-yuan order (4.99 off), then a top-up of 4.99 lets bob's packet reserve 11
    shop = make_merchant()
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]},
        packet_amount_fen=10_00,
        restore_packet_on_refund=True,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        fund_deposit_fen=11_00,
    )
    alice, bob = make_user(), make_user()
    small = spend(campaign, alice, make_product(shop, price_fen=5_00), pay)
    fund_deposit(shop.id, 4_99)
    issue_packet(db.session.get(Campaign, campaign.id), bob, source="test", source_ref="bob", now=utcnow())
    db.session.commit()
    deposit = account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)
    assert balance(deposit) == 11_00

    # when: the small order is refunded in full: 4.99 back in the deposit (15.99), under the 22 both would reserve
    refund(small, "R1", 1)

    # then: alice's packet stays used; only bob's reservation stands against the deposit
    packet = db.session.get(RedPacket, small.packet_id)
    db.session.refresh(packet)
    assert packet.status == "used"
    assert budget(campaign) == (11_00, 0)
    assert balance(deposit) == 15_99


@pytest.mark.skipif(not on_postgres(), reason="row-lock order: PostgreSQL (SQLite serialises its transactions)")
def test_a_refund_takes_its_campaign_before_the_deposit_as_payments_and_claims_do(
    app, make_merchant, make_user, make_product, make_campaign, pay
):
    # given: a paid order of a merchant-funded campaign, and another transaction holding the merchant's deposit
    # (as a payment or a claim of the same campaign does once it holds the campaign)
    shop = make_merchant()
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]},
        packet_amount_fen=10_00,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
    )
    order = spend(campaign, make_user(), make_product(shop, price_fen=110_00), pay)
    begin_refund(order, "R-lock", order.paid_fen)
    db.session.commit()
    campaign_id, out_trade_no, paid_fen = campaign.id, order.out_trade_no, order.paid_fen
    deposit_id = account(K.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id).id
    db.session.commit()
    holder = db.engine.connect()
    holder.begin()
    holder.execute(select(LedgerAccount.id).where(LedgerAccount.id == deposit_id).with_for_update())

    def apply_it():
        with app.app_context():
            apply_refund(out_trade_no, "R-lock", paid_fen, utcnow(), refund_id="wx-R-lock", money=app_money())
            db.session.commit()

    refunding = threading.Thread(target=apply_it)
    refunding.start()
    probe = db.engine.connect()
    try:
        # when: the refund waits for the deposit
        wait_until_a_backend_waits_on_a_lock(probe)

        # then: it holds the campaign already, so it cannot wait in a circle with a payment of the campaign
        assert is_row_locked(probe, select(Campaign.id).where(Campaign.id == campaign_id))
    finally:
        probe.close()
        holder.rollback()
        holder.close()
        refunding.join(timeout=20)
    db.session.expire_all()
    assert db.session.get(Refund, begin_refund_id(out_trade_no)).status == "succeeded"


def begin_refund_id(out_trade_no: str) -> int:
    order = db.session.execute(select(Order).where(Order.out_trade_no == out_trade_no)).scalar_one()
    return db.session.execute(select(Refund.id).where(Refund.order_id == order.id)).scalar_one()


def test_a_refund_and_a_payment_of_one_merchant_funded_campaign_at_once_both_apply(
    app, make_merchant, make_user, make_product, make_campaign, pay
):
    # given: a merchant-funded campaign; one order of it paid (to be refunded), another waiting for its payment
    shop = make_merchant()
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]},
        packet_amount_fen=10_00,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
    )
    product = make_product(shop, price_fen=110_00)
    paid = spend(campaign, make_user(), product, pay)
    begin_refund(paid, "R-race", paid.paid_fen)
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref="race", now=utcnow())
    db.session.flush()
    waiting = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    refund_args = (paid.out_trade_no, "R-race", paid.paid_fen)
    payment_args = (waiting.out_trade_no, f"tx-{waiting.out_trade_no}", waiting.payable_fen)

    # when: the refund and the payment run at once (each takes the campaign, then the deposit)
    def work(i: int):
        if i == 0:
            return apply_refund(*refund_args, utcnow(), refund_id="wx-R-race", money=app_money()).status
        return pay_as_wechat(*payment_args, utcnow())

    results = together(2, work, app=app)

    # then: both applied, no deadlock on either database (the ledger check after the test sees the books balance)
    assert results == ["succeeded", PaymentOutcome.APPLIED], results
    db.session.expire_all()
    assert db.session.get(Order, waiting.id).status == "paid"


def test_refunds_of_the_order_that_earned_a_packet_and_the_order_that_spent_it_do_not_deadlock(
    app, make_user, make_product, make_campaign, pay, monkeypatch
):
    """Both take the packet before the campaign's row: the refund of the order that earned it used to lock it after
    the campaigns while the other's ``_void_discount`` locked it after them too, from the other side. (On SQLite the
    two run one after the other, the first holding the write lock: both succeed there too.)"""
    import threading

    import rebate.refunds as refunds
    from tests.test_triggers import buy, earned, earning_campaign

    earning_campaign(make_campaign, restore_packet_on_refund=True)
    product = make_product(price_fen=100_00)
    dan = make_user()
    earner = buy(dan, product, quantity=2)
    pay(earner)
    spender = buy(dan, product, packet=earned(earner))
    pay(spender)
    asks = [(o.out_trade_no, f"R-{n}", db.session.get(Order, o.id).paid_fen) for n, o in enumerate([earner, spender])]
    for (_, number, amount), order in zip(asks, (earner, spender), strict=True):
        begin_refund(db.session.get(Order, order.id), number, amount)
    db.session.commit()
    # the earner's refund, once it holds what it takes first, waits until the spender's has locked the campaigns
    first_locks, campaigns_locked = threading.Event(), threading.Event()
    real = refunds.budgets.lock_in_order

    def lock_in_order(ids, **kw):
        if threading.current_thread().name == "earner":
            first_locks.set()
            campaigns_locked.wait(2)
            return real(ids, **kw)
        first_locks.wait(2)
        locked = real(ids, **kw)
        campaigns_locked.set()
        return locked

    monkeypatch.setattr(refunds.budgets, "lock_in_order", lock_in_order)

    def work(i: int):
        threading.current_thread().name = ("earner", "spender")[i]
        out_trade_no, number, amount = asks[i]
        return apply_refund(out_trade_no, number, amount, utcnow(), refund_id=f"wx-{number}", money=app_money()).status

    assert together(2, work, app=app) == ["succeeded", "succeeded"]
