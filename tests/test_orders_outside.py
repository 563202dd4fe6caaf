"""An order's life tried from outside: a buyer, WeChat and finance (area Q).

An order paid at once with a red packet, the buyer's balance and a 免充值 WeChat Pay coupon, refunded in parts and
then in full; a refund WeChat reports by callback before its refund API answer arrives."""

from __future__ import annotations

from dataclasses import replace

from flask import current_app
from sqlalchemy import select

from ledger import account, balance, check_ledger
from models import AccountKind, Alert, Order, PacketStatus, Rebate, RedPacket, Refund, db, utcnow
from rebate import PayAccount, apply_payment, apply_refund, apply_refund_notice, begin_refund, issue_packet
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_wallet import buy, fund, wallet_of
from tests.test_wechat_callbacks import make_order  # noqa: F401 - fixture
from wechat.transactions import Amount, RefundNotice

K = AccountKind


def _books(merchant_id: int) -> dict[str, int]:
    db.session.rollback()
    return {
        "settlement": balance(account(K.WECHAT_SETTLEMENT)),
        "marketing": balance(account(K.PLATFORM_MARKETING_FUND)),
        "merchant": balance(account(K.MERCHANT_PAYABLE, "merchant", merchant_id)),
    }


def _pay_with_nocash_coupon(order: Order, coupon_fen: int) -> str:
    amount = Amount(
        order.payable_fen,
        order.payable_fen - coupon_fen,
        unsettled_coupon_fen=coupon_fen,
        coupons_fen=coupon_fen,
    )
    tx = wechat_payment(order.out_trade_no, f"tx-{order.out_trade_no}", order.payable_fen, success_time=utcnow())
    tx = replace(tx, amount=amount)
    outcome = apply_payment(tx, PayAccount.from_config(current_app.config), utcnow(), money=app_money())
    db.session.commit()
    return outcome


def _refund(order: Order, number: str, fen: int) -> None:
    begin_refund(db.session.get(Order, order.id), number, fen, "returned")
    db.session.commit()
    apply_refund(order.out_trade_no, number, fen, utcnow(), f"wx-{number}", money=app_money())
    db.session.commit()


def test_packet_balance_and_nocash_coupon_refunded_in_parts_then_whole_come_back_to_the_fen(
    make_user, make_product, make_campaign
):
    # given: a 100-yuan order, 10 off by a red packet, 7 yuan from the balance: WeChat charges 83.00, of which a
    # 免充值 coupon pays 11.11 and the buyer 71.89
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=10_00,
    )
    buyer = make_user()
    fund(buyer, cash_fen=7_00)
    packet = issue_packet(campaign, buyer, source="test", source_ref=f"q:{buyer.id}", now=utcnow())
    db.session.commit()
    product = make_product(price_fen=100_00)
    order = buy(buyer, product, packet=packet, balance_fen=7_00)
    assert (order.discount_fen, order.balance_used_fen, order.payable_fen) == (10_00, 7_00, 83_00)
    before = _books(order.merchant_id)
    assert _pay_with_nocash_coupon(order, 11_11) == "applied"
    paid = db.session.get(Order, order.id)
    assert (paid.status, paid.paid_fen, paid.unsettled_coupon_fen) == ("paid", 71_89, 11_11)
    # when: refunded 33.33, then 0.01, then the rest
    _refund(order, "RQ-1", 33_33)
    _refund(order, "RQ-2", 1)
    _refund(order, "RQ-3", 83_00 - 33_33 - 1)
    # then: the buyer's balance all came back, WeChat and the coupon's funder are where they were, the merchant is
    # owed nothing and the packet's value went back to its funder
    done = db.session.get(Order, order.id)
    assert (done.status, done.refunded_fen) == ("refunded", 83_00)
    assert wallet_of(buyer)[:2] == (7_00, 0)
    after = _books(order.merchant_id)
    assert after == before
    assert after["merchant"] == 0
    restored = PacketStatus.ISSUED if campaign.restore_packet_on_refund else PacketStatus.USED
    assert db.session.get(RedPacket, packet.id).status == restored
    assert db.session.execute(select(Alert.kind)).scalars().all() == []
    assert check_ledger().ok


def test_a_refund_told_by_callback_before_the_refund_api_answers_is_applied_once(make_order):
    # given: a paid order and a refund begun (committed before WeChat is asked)
    order = make_order(50_00)
    tx = wechat_payment(order.out_trade_no, f"tx-{order.out_trade_no}", 50_00, success_time=utcnow())
    assert apply_payment(tx, PayAccount.from_config(current_app.config), utcnow(), money=app_money()) == "applied"
    db.session.commit()
    begin_refund(db.session.get(Order, order.id), "RQ-EARLY", 20_00, "returned")
    db.session.commit()
    account_ = PayAccount.from_config(current_app.config)

    def notice(status: str, **more) -> RefundNotice:
        return RefundNotice(
            out_trade_no=order.out_trade_no,
            out_refund_no="RQ-EARLY",
            status=status,
            refund_fen=20_00,
            total_fen=50_00,
            refund_id="wx-early",
            transaction_id=f"tx-{order.out_trade_no}",
            mchid=more.get("mchid"),
            sub_mchid=None,
            settlement_refund_fen=more.get("settlement"),
        )

    # when: the callback says SUCCESS first, then the API's own answer arrives (PROCESSING, or SUCCESS)
    first = apply_refund_notice(
        notice("SUCCESS", mchid=current_app.config["WECHAT_MCHID"]), account_, utcnow(), "n-1", money=app_money()
    )
    db.session.commit()
    processing = apply_refund_notice(notice("PROCESSING"), account_, utcnow(), money=app_money())
    db.session.commit()
    success = apply_refund_notice(notice("SUCCESS", settlement=20_00), account_, utcnow(), money=app_money())
    db.session.commit()
    # then: applied once, nothing flagged, the books balanced
    assert (first, processing, success) == ("success", "processing", "success")
    done = db.session.get(Order, order.id)
    assert (done.refunded_fen, done.review_reason) == (20_00, None)
    refund = db.session.execute(select(Refund).where(Refund.out_refund_no == "RQ-EARLY")).scalar_one()
    assert (refund.status, refund.refund_id) == ("succeeded", "wx-early")
    assert db.session.execute(select(Alert.kind)).scalars().all() == []
    assert check_ledger().ok


def test_the_payment_query_job_and_the_callback_applying_one_order_at_once_pay_it_once(
    app, make_user, make_product, make_campaign
):
    from tests.concurrency import together

    # given: an order with a rebate-earning packet, paid at WeChat
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00}]},
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
    )
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="test", source_ref=f"qr:{buyer.id}", now=utcnow())
    db.session.commit()
    order = buy(buyer, make_product(price_fen=60_00), packet=packet)
    number, order_id = order.out_trade_no, order.id
    tx = wechat_payment(number, f"tx-{number}", order.payable_fen, success_time=utcnow())
    account_, money = PayAccount.from_config(current_app.config), app_money()

    # when: the callback (a notification id, budgets unlocked first) and the query job (budgets locked) at once
    def work(i: int):
        if i == 0:
            return str(apply_payment(tx, account_, utcnow(), "notif-q", money=money))
        return str(apply_payment(tx, account_, utcnow(), money=money, lock_budgets=True))

    results = together(2, work, app)
    # then: one applied it, the other found it applied; one rebate, the books balanced
    assert sorted(results) == ["already_applied", "applied"], results
    db.session.rollback()
    assert db.session.get(Order, order_id).status == "paid"
    rebates = db.session.execute(select(Rebate).where(Rebate.order_id == order_id)).scalars().all()
    assert [r.amount_fen for r in rebates] == [2_75]
    assert check_ledger().ok


def test_a_coupon_paid_order_the_bill_does_not_list_is_reported_at_what_wechat_charged(make_order):
    from payouts.reconcile import match_trade

    # given: a 100-yuan order we saw paid, 20 of it by a WeChat Pay coupon; the day's bill lists nothing of it
    order = make_order(100_00)
    assert _pay_with_nocash_coupon(order, 20_00) == "applied"
    order = db.session.get(Order, order.id)
    # when
    matching = match_trade([], {order.out_trade_no: order}, {}, ({order.out_trade_no}, set()))
    # then: ours is the 订单金额 the bill would list (100 yuan), as every other order finding counts it, not the
    # buyer's 80: finance looks for that amount in WeChat's records
    [finding] = matching.findings
    assert (finding.kind, finding.ours_fen, finding.theirs_fen) == ("missing_there", 100_00, None)
