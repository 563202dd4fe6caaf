"""Probe 17: profit sharing (分账) in service-provider mode, as a platform's finance team and WeChat would see it."""

from __future__ import annotations

from sqlalchemy import select

from jobs.profit_sharing import query_profit_shares, share_due_orders
from models import AccountKind, Order, Receivable, db, utcnow
from rebate import apply_refund, begin_refund
from tests.money_helpers import app_money
from tests.test_profit_sharing import (  # noqa: F401 - fixtures
    app_settings,
    bal,
    hold_passes,
    ledger_holds,
    payouts_of,
    results_are_due,
    share_of,
    sim,
    story,
)


def test_a_share_wechat_never_took_whose_order_was_then_refunded_in_full_comes_back_not_owed(app, story, sim):
    # given: the share of a paid profit-sharing order is fixed and sent, but WeChat answers 频率超限 (nothing made)
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    sim.inject_fault("/v3/profitsharing/orders", 429, "FREQUENCY_LIMITED", "频率超限")
    share_due_orders()
    assert share_of(order.id).status == "pending"
    assert {p.status for p in payouts_of(order.id).values()} == {"sending"}
    # when: before the resend, the merchant refunds the whole order: WeChat takes it from the frozen money
    refund = begin_refund(db.session.get(Order, order.id), "R-full-before-resend", 90_00)
    db.session.commit()
    apply_refund(order.out_trade_no, refund.out_refund_no, 90_00, utcnow(), money=app_money())
    db.session.commit()
    sim.refund_frozen(order.transaction_id, 90_00)
    for _ in range(12):  # the follow-ups: WeChat never saw the share, and nothing is left to share (NOT_ENOUGH)
        results_are_due(order.id)
        query_profit_shares()
    # then: the share can never be made: its money is the merchant's (refunded), nobody owes for a share they
    # never got, and nothing of the order is left frozen in our books
    payouts = payouts_of(order.id)
    owed = {r.beneficiary_id: r.outstanding_fen for r in db.session.query(Receivable)}
    assert sum(owed.values()) == 0
    assert {p.status for p in payouts.values()} == {"failed"}
    assert share_of(order.id).status == "finished"
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", buyer.id) == 0
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", issuer.id) == 0
    assert bal(AccountKind.PAYOUT_IN_TRANSIT) == bal(AccountKind.REBATE_PAYABLE) == 0
    assert share_of(order.id).kind == "nothing"
    ledger_holds()


def _reviewed_order(app, make_user, make_merchant, make_product, make_campaign, pay, sim):
    """A paid profit-sharing order whose merchant-funded rebates (9.00 and 4.50) are held for a risk review."""
    from models import RiskRuleSet
    from rebate import create_order, issue_packet
    from rebate.orders import LineRequest
    from risk.rules import forget_rules
    from tests.test_profit_sharing import TWO_WAY, Row

    appid = app.config["WECHAT_APPID"]
    shop = make_merchant()
    shop.sub_mchid = f"19{shop.id:08d}"
    issuer, buyer = make_user(appid=appid), make_user(appid=appid)
    campaign = make_campaign(
        TWO_WAY,
        issuer_type="user",
        issuer_user_id=issuer.id,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
        budget_limit_fen=10_000_00,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        funded_from_sales=True,
        fund_deposit_fen=0,
    )
    review_all = [{"name": "review_high_score", "action": "review", "when": [["score", ">=", 0]]}]
    db.session.add(RiskRuleSet(scope=f"campaign:{campaign.id}", version=1, rules=review_all, status="active"))
    packet = issue_packet(campaign, buyer, source="test", source_ref=f"p{buyer.id}", now=utcnow())
    product = make_product(shop, price_fen=100_00)
    order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
    order.sub_mchid, order.profit_sharing = shop.sub_mchid, True
    db.session.commit()
    forget_rules()
    assert pay(order) == "applied"
    order = db.session.get(Order, order.id)
    sim.freeze_for_sharing(order.transaction_id, shop.sub_mchid, order.payable_fen)
    return (
        Row(id=order.id, out_trade_no=order.out_trade_no, transaction_id=order.transaction_id),
        Row(id=buyer.id),
        Row(id=issuer.id),
        Row(id=shop.id, sub_mchid=shop.sub_mchid),
    )


def test_a_share_waits_for_the_review_holding_its_rebates_so_a_released_rebate_is_still_shared(
    app, sim, make_user, make_merchant, make_product, make_campaign, pay, client, make_operator
):
    from models import Rebate, ReviewCase
    from risk.rules import forget_rules

    # given: a paid profit-sharing order whose merchant-funded rebates a risk rule holds for review
    order, buyer, issuer, shop = _reviewed_order(app, make_user, make_merchant, make_product, make_campaign, pay, sim)
    forget_rules()
    rebates = db.session.query(Rebate).filter_by(order_id=order.id).all()
    assert {(r.status, r.held_fen) for r in rebates} == {("review", 9_00), ("review", 4_50)}
    assert payouts_of(order.id) == {}
    case_id = db.session.execute(select(ReviewCase.id).where(ReviewCase.order_id == order.id)).scalar_one()
    # when: the refund window closes while the case is still open
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    # then: the share waits for the reviewer, as it waits for an open refund: nothing is unfrozen yet
    row = share_of(order.id)
    assert (row.status, row.kind, row.request) == ("pending", None, None)
    assert sim.frozen[order.transaction_id]["unsplit_fen"] == 90_00
    # when: the reviewer releases the rebates, and the share goes out
    _, support = make_operator("support")
    answer = client.post(
        f"/admin/api/reviews/{case_id}/decide", json={"outcome": "release", "reason": "a regular"}, headers=support
    )
    assert answer.status_code == 200, answer.get_json()
    hold_passes(order.id)
    done = share_due_orders()
    assert not done.get("too_late"), done
    results_are_due(order.id)
    query_profit_shares()
    # then: both persons got their released rebates from the merchant's order money, the rest was unfrozen
    payouts = payouts_of(order.id)
    assert {u: (p.status, p.amount_fen) for u, p in payouts.items()} == {
        issuer.id: ("succeeded", 9_00),
        buyer.id: ("succeeded", 4_50),
    }
    assert share_of(order.id).status == "finished" and share_of(order.id).shared_fen == 13_50
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 0
    ledger_holds()
