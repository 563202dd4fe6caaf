"""What undoes a share to a person never moves a merchant's money through the platform (二清).

- A share that comes back (receiver closed, cancelled or failed by an operator) stays the merchant's: booked to
  its own sales, unfrozen to it; it first settles what the person owes that merchant; the rest comes off the
  rebate (budget back, the person told).
- A clawback after the share reached the person is owed to the merchant (``user_owes_merchants`` and a
  ``share`` receivable), never taken from the person's cash balance at the platform; only that merchant's
  later shares to the person settle it, and no platform-funded rebate ever does.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from jobs.profit_sharing import query_profit_shares, share_due_orders
from ledger import Leg, check_ledger, post_entry, ref
from models import (
    AccountKind,
    Campaign,
    LedgerEntry,
    Notice,
    Order,
    Payout,
    Rebate,
    RebateAdjustment,
    Receivable,
    db,
    utcnow,
)
from rebate import apply_refund, begin_refund, create_order, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money
from tests.test_partner_flow import admin, keyed  # noqa: F401 - fixture
from tests.test_profit_sharing import (  # noqa: F401 - fixture
    TWO_WAY,
    bal,
    hold_passes,
    ledger_holds,
    openid_of,
    results_are_due,
    share_of,
    sim,
)


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "FUND_FLOW": "service_provider"}


def keys() -> set[str]:
    return set(db.session.execute(select(LedgerEntry.idempotency_key)).scalars())


def payouts_of(order_id: int) -> dict[int, Payout]:
    db.session.expire_all()
    return {p.user_id: p for p in db.session.execute(select(Payout).where(Payout.order_id == order_id)).scalars()}


def rebate_of(order_id: int, user_id: int) -> Rebate:
    db.session.expire_all()
    return db.session.execute(
        select(Rebate).where(Rebate.order_id == order_id, Rebate.beneficiary_id == user_id)
    ).scalar_one()


def owed() -> dict[int, tuple[str, int]]:
    db.session.expire_all()
    return {r.beneficiary_id: (r.kind, r.outstanding_fen) for r in db.session.query(Receivable)}


@pytest.fixture
def shop(app, make_user, make_merchant, make_product, make_campaign, pay, sim):  # noqa: F811
    """One sub-merchant, its two-way campaign funded from its sales (issuer 10 %, buyer 5 %, change), a person who
    issues its packets and a buyer. ``w.sell(price_fen, profit_sharing=True)`` → a paid order's id (the buyer
    spends a new 10-yuan packet); ``w.share(order_id)`` runs the share to its end."""
    appid = app.config["WECHAT_APPID"]
    merchant = make_merchant()
    merchant.sub_mchid = f"19{merchant.id:08d}"
    issuer, buyer = make_user(appid=appid), make_user(appid=appid)
    campaign = make_campaign(
        TWO_WAY,
        issuer_type="user",
        issuer_user_id=issuer.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        funded_from_sales=True,
        fund_deposit_fen=0,
        packet_amount_fen=10_00,
        packet_merchant_id=merchant.id,
        budget_limit_fen=10_000_00,
    )
    product_id = make_product(merchant, price_fen=100_00).id
    db.session.commit()
    w = SimpleNamespace(
        id=merchant.id, sub_mchid=merchant.sub_mchid, issuer=issuer.id, buyer=buyer.id, campaign=campaign.id
    )

    def sell(profit_sharing: bool = True) -> int:
        n = len(db.session.execute(select(Order.id)).all())
        buyer_row = db.session.get(type(buyer), w.buyer)
        packet = issue_packet(
            db.session.get(Campaign, w.campaign), buyer_row, source="test", source_ref=f"p{n}", now=utcnow()
        )
        order = create_order(buyer_row, [LineRequest(product_id, 1)], packet.id, utcnow())
        order.sub_mchid, order.profit_sharing = w.sub_mchid, profit_sharing
        db.session.commit()
        assert pay(order) == "applied"
        order = db.session.get(Order, order.id)
        if profit_sharing:
            sim.freeze_for_sharing(order.transaction_id, w.sub_mchid, order.payable_fen)
        return order.id

    def share(order_id: int) -> None:
        share_due_orders()
        hold_passes(order_id)
        share_due_orders()
        results_are_due(order_id)
        query_profit_shares()

    def refund(order_id: int, out_refund_no: str, amount_fen: int) -> None:
        order = db.session.get(Order, order_id)
        begin_refund(order, out_refund_no, amount_fen)
        out_trade_no = order.out_trade_no
        db.session.commit()
        apply_refund(out_trade_no, out_refund_no, amount_fen, utcnow(), money=app_money())
        db.session.commit()

    w.sell, w.share, w.refund = sell, share, refund
    return w


def give_platform_cash(user_id: int, amount_fen: int) -> None:
    """The person holds platform money in their balance (a platform-funded rebate, say)."""
    post_entry(
        f"test:platform-cash:{user_id}",
        "platform-funded balance",
        [
            Leg(ref(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen),
            Leg(ref(AccountKind.USER_CASH, "user", user_id), amount_fen),
        ],
    )
    db.session.commit()


# -- a clawback after sharing is owed to the merchant ---------------------------------------------------------


def test_a_refund_after_sharing_is_owed_to_the_merchant_and_never_taken_from_platform_cash(shop, client, user_headers):
    # given: the buyer holds 10 yuan of the platform's money in their balance; the order was shared in full
    give_platform_cash(shop.buyer, 10_00)
    order_id = shop.sell()
    shop.share(order_id)
    assert {p.status for p in payouts_of(order_id).values()} == {"succeeded"}
    # when: 40 of the 90 yuan are refunded after sharing
    shop.refund(order_id, "R-after", 40_00)
    # then: each person owes the merchant what their rebate lost (issuer 9 → 5, buyer 4.50 → 2.50) ...
    assert owed() == {shop.issuer: ("share", 4_00), shop.buyer: ("share", 2_00)}
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", shop.issuer) == -4_00
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer) == -2_00
    # ... and the platform's money in the buyer's balance is not touched to collect it for the merchant
    assert bal(AccountKind.USER_CASH, "user", shop.buyer) == 10_00
    assert bal(AccountKind.USER_CASH, "user", shop.issuer) == 0
    # the merchant's claim is on the persons: its own sales are above zero by what they owe it
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 6_00
    adjustment = db.session.query(RebateAdjustment).filter_by(rebate_id=rebate_of(order_id, shop.buyer).id).one()
    assert (adjustment.recovered_fen, adjustment.receivable_fen) == (0, 2_00)
    assert "owed to the merchant" in adjustment.reason
    # the person's wallet says what they owe merchants, apart from their cash
    from models import User

    wallet = client.get("/api/v1/me/wallet", headers=user_headers(db.session.get(User, shop.buyer))).json
    assert (wallet["cash_fen"], wallet["owed_to_merchants_fen"]) == (10_00, 2_00)
    assert wallet["receivables"] == [{"kind": "share", "outstanding_fen": 2_00, "campaign_id": shop.campaign}]
    ledger_holds()


def test_the_merchants_next_share_settles_what_the_persons_owe_it_and_the_merchant_keeps_it(shop, sim):  # noqa: F811
    order_id = shop.sell()
    shop.share(order_id)
    shop.refund(order_id, "R-after", 40_00)
    committed = db.session.get(Campaign, shop.campaign).budget_committed_fen
    # when: the same buyer buys again with the issuer's packet; the rebates are 9 and 4.50 again
    second = shop.sell()
    # then: each share carries the rebate less what the person owed this merchant
    assert {u: p.amount_fen for u, p in payouts_of(second).items()} == {shop.issuer: 5_00, shop.buyer: 2_50}
    assert owed() == {shop.issuer: ("share", 0), shop.buyer: ("share", 0)}
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", shop.issuer) == 0
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer) == 0
    assert bal(AccountKind.USER_CASH, "user", shop.buyer) == bal(AccountKind.USER_CASH, "user", shop.issuer) == 0
    rebate = rebate_of(second, shop.issuer)
    assert rebate.amount_fen == 9_00  # the person earned it all: part of it paid what they owed
    assert any("settled what you owed" in r for r in rebate.reasons)
    # the budget gets back what was recovered (the packet's 10 and the new rebates' 13.50 committed, 6 recovered)
    db.session.expire_all()
    assert db.session.get(Campaign, shop.campaign).budget_committed_fen == committed + 10_00 + 13_50 - 6_00
    ledger_holds()
    # when: the second order's share runs to its end
    shop.share(second)
    # then: 7.50 was shared; the 6 settled stayed in the merchant's frozen money and was unfrozen to it
    assert {p.status for p in payouts_of(second).values()} == {"succeeded"}
    row = share_of(second)
    assert row.shared_fen == 7_50
    assert (
        sim.query_share(row.out_order_no, shop.sub_mchid, db.session.get(Order, second).transaction_id)["receivers"][
            -1
        ]["amount"]
        == 90_00 - 7_50
    )
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 0  # nothing owed to or by the merchant
    ledger_holds()


def test_a_platform_funded_rebate_never_settles_a_debt_to_a_merchant(shop, make_campaign, make_product, pay, app):
    order_id = shop.sell()
    shop.share(order_id)
    shop.refund(order_id, "R-after", 40_00)
    # given: a platform-funded campaign paying the buyer 10 % into the balance at another (platform) order
    from models import Merchant, User

    platform = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "balance", "cap_fen": 10_00}]},
        packet_amount_fen=5_00,
        budget_limit_fen=1_000_00,
    )
    buyer = db.session.get(User, shop.buyer)
    packet = issue_packet(platform, buyer, source="test", source_ref="platform-1", now=utcnow())
    product = make_product(db.session.get(Merchant, shop.id), price_fen=50_00)
    order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    assert pay(order) == "applied"
    # then: the platform's rebate lands whole in the balance; the debt to the merchant is untouched
    got = db.session.execute(
        select(Rebate).where(Rebate.order_id == order.id, Rebate.beneficiary_id == shop.buyer)
    ).scalar_one()
    assert got.amount_fen > 0
    assert bal(AccountKind.USER_CASH, "user", shop.buyer) == got.amount_fen
    assert owed()[shop.buyer] == ("share", 2_00)
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer) == -2_00
    ledger_holds()


# -- a share that comes back stays the merchant's -------------------------------------------------------------


def test_an_operator_cancelling_a_share_no_order_can_carry_leaves_the_money_with_the_merchant(shop, client, admin):  # noqa: F811
    # given: an order opened without profit sharing: its merchant-funded rebates wait for an operator
    order_id = shop.sell(profit_sharing=False)
    share_due_orders()
    payouts = payouts_of(order_id)
    assert {p.status for p in payouts.values()} == {"needs_operator"}
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == -13_50  # released in full at the sale
    committed = db.session.get(Campaign, shop.campaign).budget_committed_fen
    # when: an operator cancels the buyer's (no share can carry it: the order's money is already the merchant's)
    buyer_payout = payouts[shop.buyer].id
    resp = client.post(
        f"/admin/api/payouts/{buyer_payout}/cancel", json={"reason": "no share can carry it"}, headers=keyed(admin)
    )
    assert resp.status_code == 200, resp.json
    # then: the 4.50 is the merchant's (it has it already): never the buyer's balance at the platform
    assert payouts_of(order_id)[shop.buyer].status == "cancelled"
    assert bal(AccountKind.USER_CASH, "user", shop.buyer) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == -9_00
    rebate = rebate_of(order_id, shop.buyer)
    assert (rebate.amount_fen, rebate.status) == (0, "clawed_back")
    db.session.expire_all()
    assert db.session.get(Campaign, shop.campaign).budget_committed_fen == committed - 4_50
    told = db.session.query(Notice).filter_by(user_id=shop.buyer, event="rebate_clawed_back").one()
    assert told.facts["reason_code"] == "share_returned"
    # and a second cancel changes nothing
    again = client.post(f"/admin/api/payouts/{buyer_payout}/cancel", json={"reason": "again"}, headers=keyed(admin))
    assert again.status_code == 409
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == -9_00
    ledger_holds()


def test_a_share_clawed_back_in_flight_then_closed_settles_the_debt_it_made(shop, sim, app):  # noqa: F811
    # given: the share is handed to WeChat; the buyer's receiver will be closed
    order_id = _in_flight_with_buyer_closed(shop, sim, app)
    # when: 40 yuan are refunded while the share is in flight
    shop.refund(order_id, "R-in-flight", 40_00)
    # then: what left cannot be taken from a payout: the buyer owes the merchant 2 yuan for now
    assert owed()[shop.buyer] == ("share", 2_00)
    # when: WeChat answers: the buyer's share was closed, the issuer's arrived
    results_are_due(order_id)
    query_profit_shares()
    payouts = payouts_of(order_id)
    assert (payouts[shop.issuer].status, payouts[shop.buyer].status) == ("succeeded", "failed")
    # then: the 4.50 that came back settles the 2 the buyer owed and the 2.50 left comes off the rebate
    assert owed()[shop.buyer] == ("share", 0)
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer) == 0
    assert bal(AccountKind.USER_CASH, "user", shop.buyer) == 0
    rebate = rebate_of(order_id, shop.buyer)
    assert rebate.amount_fen == 0
    assert f"payout:{payouts[shop.buyer].id}:came-back:settles" in keys()
    # the issuer still owes its 4 (its share arrived); everything else is the merchant's, unfrozen to it
    assert owed()[shop.issuer] == ("share", 4_00)
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 4_00
    ledger_holds()


def test_an_operator_resolving_a_share_as_succeeded_books_it_from_the_frozen_money(shop, client, admin):  # noqa: F811
    # given: the share was handed over and its buyer's payout went to an operator (say, no answer for days)
    order_id = shop.sell()
    share_due_orders()
    hold_passes(order_id)
    share_due_orders()
    payout_id = payouts_of(order_id)[shop.buyer].id
    db.session.execute(update(Payout).where(Payout.id == payout_id).values(status="needs_operator"))
    db.session.commit()
    # when: the operator has WeChat's evidence that it arrived
    resp = client.post(
        f"/admin/api/payouts/{payout_id}/resolve",
        json={"outcome": "succeeded", "reason": "merchant platform shows it received"},
        headers=keyed(admin),
    )
    assert resp.status_code == 200, resp.json
    # then: it left the merchant's frozen money, never the platform's settlement account
    assert bal(AccountKind.WECHAT_SETTLEMENT) == 0
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == -90_00 + 4_50
    assert db.session.get(Order, order_id).frozen_fen == 90_00 - 4_50
    assert payouts_of(order_id)[shop.buyer].status == "succeeded"
    ledger_holds()


# -- the ledger check ------------------------------------------------------------------------------------------


def test_the_ledger_check_finds_a_share_debt_no_receivable_explains(shop):
    order_id = shop.sell()
    shop.share(order_id)
    shop.refund(order_id, "R-after", 40_00)
    ledger_holds()
    # when: a debt is booked with no receivable behind it, and another person is credited "owed by merchants"
    post_entry(
        "test:stray-debt",
        "a stray debt",
        [
            Leg(ref(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer), -1_00),
            Leg(ref(AccountKind.USER_OWES_MERCHANTS, "user", shop.issuer), 5_00),
            Leg(ref(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id), -4_00),
        ],
    )
    db.session.commit()
    report = check_ledger()
    assert any(f"user {shop.buyer} owes merchants 300" in v for v in report.violations), report.violations
    assert any(f"user {shop.issuer} is owed 100 by merchants" in v for v in report.violations), report.violations
    post_entry(  # put back, so the suite's own check after the test holds
        "test:stray-debt:back",
        "the stray debt reversed",
        [
            Leg(ref(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer), 1_00),
            Leg(ref(AccountKind.USER_OWES_MERCHANTS, "user", shop.issuer), -5_00),
            Leg(ref(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id), 4_00),
        ],
    )
    db.session.commit()
    ledger_holds()


# -- a debt made while its share is at WeChat waits on that share ----------------------------------------------


def _in_flight_with_buyer_closed(shop, sim, app):  # noqa: F811
    order_id = shop.sell()
    sim.close_share_to(openid_of(shop.buyer, app.config["WECHAT_APPID"]))
    share_due_orders()
    hold_passes(order_id)
    share_due_orders()
    assert {p.status for p in payouts_of(order_id).values()} == {"unknown"}
    return order_id


def test_a_debt_made_while_its_share_is_at_wechat_is_not_settled_by_the_next_share(shop, sim, app):  # noqa: F811
    # given: the buyer's 4.50 share is at WeChat (it will be CLOSED); 40 of 90 are refunded meanwhile: the rebate
    # is 2.50 and 2.00 is owed only if that share arrives
    first = _in_flight_with_buyer_closed(shop, sim, app)
    shop.refund(first, "R-in-flight", 40_00)
    first_payout = payouts_of(first)[shop.buyer].id
    waiting = db.session.query(Receivable).filter_by(beneficiary_id=shop.buyer).one()
    assert (waiting.outstanding_fen, waiting.payout_id) == (2_00, first_payout)
    # when: the buyer buys again (rebate 4.50): the new share carries all of it, the waiting debt is not settled
    second = shop.sell()
    assert payouts_of(second)[shop.buyer].amount_fen == 4_50
    assert owed()[shop.buyer] == ("share", 2_00)
    # when: WeChat says the first share never reached the buyer; then the second share goes out
    results_are_due(first)
    query_profit_shares()
    assert payouts_of(first)[shop.buyer].status == "failed"
    with sim.lock:  # the buyer can receive again
        sim.ps_settings.pop(f"close:{openid_of(shop.buyer, app.config['WECHAT_APPID'])}")
    shop.share(second)
    # then: the debt it made is gone with it; the buyer got the second rebate whole and owes nothing
    assert owed()[shop.buyer] == ("share", 0)
    rebates = sum(r.amount_fen for r in db.session.query(Rebate).filter_by(beneficiary_id=shop.buyer))
    delivered = sum(
        p.amount_fen
        for p in db.session.execute(
            select(Payout).where(Payout.user_id == shop.buyer, Payout.status == "succeeded")
        ).scalars()
    )
    assert (rebates, delivered, bal(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer)) == (4_50, 4_50, 0)
    ledger_holds()


def test_a_debt_made_while_its_share_is_at_wechat_is_owed_once_the_share_arrives(shop):
    order_id = shop.sell()
    share_due_orders()
    hold_passes(order_id)
    share_due_orders()
    shop.refund(order_id, "R-in-flight", 40_00)
    assert owed() == {shop.issuer: ("share", 4_00), shop.buyer: ("share", 2_00)}
    results_are_due(order_id)
    query_profit_shares()
    assert {p.status for p in payouts_of(order_id).values()} == {"succeeded"}
    # the shares arrived: the debts are real, and the next shares settle them
    second = shop.sell()
    assert {u: p.amount_fen for u, p in payouts_of(second).items()} == {shop.issuer: 5_00, shop.buyer: 2_50}
    assert owed() == {shop.issuer: ("share", 0), shop.buyer: ("share", 0)}
    ledger_holds()


def test_a_closed_share_settles_the_debt_it_made_before_an_older_campaigns(shop, sim, app, make_campaign):  # noqa: F811
    # given: the buyer's 4.50 share is at WeChat (it will be CLOSED) ...
    first = _in_flight_with_buyer_closed(shop, sim, app)
    # ... and the buyer genuinely owes the merchant 2.00 on an older campaign of the same merchant
    older = make_campaign(
        TWO_WAY,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        funded_from_sales=True,
        fund_deposit_fen=0,
        budget_limit_fen=1_000_00,
    )
    older.budget_committed_fen = 2_00
    older_id = older.id
    db.session.add(
        Receivable(
            beneficiary_type="user", beneficiary_id=shop.buyer, kind="share", campaign_id=older_id, outstanding_fen=2_00
        )
    )
    post_entry(
        "test:old-debt",
        "old debt",
        [
            Leg(ref(AccountKind.USER_OWES_MERCHANTS, "user", shop.buyer), -2_00),
            Leg(ref(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id), 2_00),
        ],
    )
    db.session.commit()
    # when: the whole order is refunded
    shop.refund(first, "R-all", 90_00)
    results_are_due(first)
    query_profit_shares()
    assert payouts_of(first)[shop.buyer].status == "failed"
    db.session.expire_all()
    by_campaign = {
        r.campaign_id: r.outstanding_fen for r in db.session.query(Receivable).filter_by(beneficiary_id=shop.buyer)
    }
    # then: the 4.50 that never left cancels what the refund made owed on its own campaign; the older debt stays
    assert by_campaign == {older_id: 2_00, shop.campaign: 0}
    assert db.session.get(Campaign, older_id).budget_committed_fen == 2_00
    ledger_holds()


def test_a_returned_share_does_not_tell_the_person_its_money_is_back_in_their_balance(shop, client, admin):  # noqa: F811
    order_id = shop.sell(profit_sharing=False)
    share_due_orders()
    buyer_payout = payouts_of(order_id)[shop.buyer].id
    resp = client.post(
        f"/admin/api/payouts/{buyer_payout}/cancel", json={"reason": "no share can carry it"}, headers=keyed(admin)
    )
    assert resp.status_code == 200, resp.json
    events = [n.event for n in db.session.query(Notice).filter_by(user_id=shop.buyer)]
    # "payout_failed" says 已退回余额 (back in your balance): untrue of a share; its rebate's notice says why
    assert events == ["rebate_clawed_back"]
