"""Probes of the effect reports and their daily rollups: every figure against the rows it counts."""

from __future__ import annotations

from datetime import UTC, date, datetime

from flask import current_app

from insights.reports import campaign_report, overview
from jobs.insights import days_between, rebuild
from models import Order, db
from models.base import BEIJING
from rebate import PayAccount, apply_payment, apply_refund, begin_refund, create_order
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_reports import planted  # noqa: F401 - fixture


def bj(*args) -> datetime:
    return datetime(*args, tzinfo=BEIJING).astimezone(UTC)


def test_a_coupon_paid_order_refunded_whole_in_parts_nets_to_zero_in_the_reports(
    make_merchant, make_user, make_product, time_machine
):
    # given: a 100-yuan order paid at 23:59:59 Beijing on 5 March, 99.99 by the buyer and 0.01 by a WeChat Pay coupon
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00, category="book")
    paid_at = bj(2026, 3, 5, 23, 59, 59)
    time_machine.move_to(paid_at, tick=False)
    order = create_order(make_user(), [LineRequest(product.id, 1)], None, paid_at)
    db.session.commit()
    tx = wechat_payment(order.out_trade_no, "tx-probe-1", 100_00, success_time=paid_at, payer_total_fen=99_99)
    assert apply_payment(tx, PayAccount.from_config(current_app.config), paid_at, money=app_money()) == "applied"
    db.session.commit()
    # when: WeChat refunds all of it in three parts, the first the next Beijing day
    for n, (fen, at) in enumerate(
        [(33_33, bj(2026, 3, 6, 0, 0, 1)), (33_33, bj(2026, 3, 6, 11)), (33_34, bj(2026, 3, 7, 9))], start=1
    ):
        time_machine.move_to(at, tick=False)
        begin_refund(order, f"R-PROBE-{n}", fen)
        apply_refund(order.out_trade_no, f"R-PROBE-{n}", fen, at, refund_id=f"wx-R-PROBE-{n}", money=app_money())
        db.session.commit()
    order = db.session.get(Order, order.id)
    assert (order.status, order.paid_fen, order.net_paid_fen) == ("refunded", 99_99, 0)
    rebuild(days_between(date(2026, 3, 5), date(2026, 3, 7)), bj(2026, 3, 7, 12))
    # then: the sale counts on 5 March, its refunds on their own days, and nothing of it is left: to the fen
    report = overview(date(2026, 3, 5), date(2026, 3, 7), merchant_id=merchant.id)
    totals = report["totals"]
    assert (totals["sales_fen"], totals["refunds_fen"], totals["net_sales_fen"]) == (99_99, 99_99, 0)
    days = {p["period"]: (p["sales_fen"], p["refunds_fen"]) for p in report["series"]}
    assert days == {"2026-03-05": (99_99, 0), "2026-03-06": (0, 66_66), "2026-03-07": (0, 33_33)}
    assert report["category_shares"] == [{"category": "book", "net_sales_fen": 0, "share_bps": None}]


def test_a_campaign_reports_goods_value_is_that_of_the_merchants_orders_its_sales_count(planted, make_campaign):
    from models import Campaign
    from tests.test_reports import MARCH, NOW, plant_order, plant_packet

    # given: merchant a's other campaign's 10-yuan packet spent on a 40-yuan order, and an 80-yuan order paid 5 yuan
    # from the buyer's rebate balance (75 through WeChat), both in March beside campaign C's planted figures
    a, buyer = planted["a"], planted["b_user"]
    other = make_campaign(
        {"roles": []},
        fund_deposit_fen=0,
        issuer_type="merchant",
        issuer_merchant_id=a.id,
        funder_type="merchant_deposit",
        funder_merchant_id=a.id,
        starts_at=bj(2026, 3, 1),
        packet_amount_fen=10_00,
    )
    packet = plant_packet(other, buyer, 10_00, bj(2026, 3, 10, 9), "used", used=bj(2026, 3, 10, 10))
    plant_order(buyer, a, bj(2026, 3, 10, 10), [("book", 40_00)], discount=10_00, packet=packet)
    wallet = plant_order(buyer, a, bj(2026, 3, 11, 10), [("book", 80_00)])
    wallet.balance_used_fen, wallet.payable_fen, wallet.paid_fen = 5_00, 75_00, 75_00
    db.session.commit()
    rebuild([date(2026, 3, 10), date(2026, 3, 11)], NOW)
    # when
    totals = campaign_report(db.session.get(Campaign, planted["campaign"].id), *MARCH)["totals"]
    # then: the sales are all of merchant a's (570 planted + 30 + 75), and so are the goods value of those orders
    # (600 + 40 + 80) and the wallet spent on them; the discounts beside the cost are campaign C's own
    assert totals["sales_fen"] == 675_00 and totals["discounts_fen"] == 30_00
    assert (totals["wallet_spent_fen"], totals["goods_value_fen"]) == (5_00, 720_00)
    whole = overview(*MARCH, merchant_id=a.id)["totals"]
    assert [whole[k] for k in ("sales_fen", "wallet_spent_fen", "goods_value_fen")] == [675_00, 5_00, 720_00]
