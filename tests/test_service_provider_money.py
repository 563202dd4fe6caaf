"""Service-provider mode keeps merchants' money out of the platform's hands (二清), fen by fen.

A merchant-funded campaign activated in that mode is funded from the merchant's own sales: no deposit, only
the forms profit sharing can carry; a partner order's payment is the merchant's frozen order money and its
claim on it (never ``wechat_settlement`` / ``merchant_payable``); a refund while frozen comes out of the frozen
money and nothing after the release; a shared rebate is never kept back for the payout minimum nor netted
against what the person owes; a merchant-funded cash rebate that no share can carry waits for an operator,
never a platform transfer; and the ledger check holds the frozen money to what the orders still have frozen.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from jobs.profit_sharing import query_profit_shares, share_due_orders
from ledger import check_ledger
from models import (
    AccountKind,
    Alert,
    Campaign,
    LedgerEntry,
    Order,
    Payout,
    Receivable,
    Refund,
    db,
    utcnow,
)
from models.payouts import Rail
from rebate import create_order, issue_packet
from rebate.fund_flow import pay_to_sub_merchant
from rebate.orders import LineRequest
from tests.test_partner_flow import admin, keyed, set_sub_mchid  # noqa: F401 - fixture
from tests.test_profit_sharing import TWO_WAY, bal, hold_passes, ledger_holds, results_are_due, sim  # noqa: F401 - fixture

PAYOUT_MIN_FEN = 1_00


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "FUND_FLOW": "service_provider", "PAYOUT_MIN_FEN": PAYOUT_MIN_FEN}


def keys() -> set[str]:
    return set(db.session.execute(select(LedgerEntry.idempotency_key)).scalars())


@pytest.fixture
def paid(app, make_user, make_merchant, make_product, make_campaign, pay, sim):  # noqa: F811
    """A paid partner order of ``price_fen`` with a 10-yuan packet of the merchant's campaign funded from its
    sales; ``profit_sharing`` as the order was opened. Returns (order id, buyer id, issuer id, shop id)."""

    def make(rules=TWO_WAY, price_fen=100_00, profit_sharing=True, buyer_owes_fen=0):
        appid = app.config["WECHAT_APPID"]
        shop = make_merchant()
        shop.sub_mchid = f"19{shop.id:08d}"
        issuer, buyer = make_user(appid=appid), make_user(appid=appid)
        campaign = make_campaign(
            rules,
            issuer_type="user",
            issuer_user_id=issuer.id,
            funder_type="merchant_deposit",
            funder_merchant_id=shop.id,
            funded_from_sales=True,
            fund_deposit_fen=0,
            packet_amount_fen=10_00,
            packet_merchant_id=shop.id,
            budget_limit_fen=10_000_00,
        )
        if buyer_owes_fen:  # a receivable from an earlier clawback
            db.session.add(
                Receivable(
                    beneficiary_type="user",
                    beneficiary_id=buyer.id,
                    kind="cash",
                    campaign_id=campaign.id,
                    outstanding_fen=buyer_owes_fen,
                )
            )
        packet = issue_packet(campaign, buyer, source="test", source_ref=f"p{buyer.id}", now=utcnow())
        product = make_product(shop, price_fen=price_fen)
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
        order.sub_mchid, order.profit_sharing = shop.sub_mchid, profit_sharing
        db.session.commit()
        assert pay(order) == "applied"
        order = db.session.get(Order, order.id)
        if profit_sharing:
            sim.freeze_for_sharing(order.transaction_id, shop.sub_mchid, order.payable_fen)
        return order.id, buyer.id, issuer.id, shop.id

    return make


def payouts_of(order_id: int) -> dict[int, Payout]:
    db.session.expire_all()
    return {p.user_id: p for p in db.session.execute(select(Payout).where(Payout.order_id == order_id)).scalars()}


# -- the sale is the merchant's money ------------------------------------------------------------------------


def test_a_partner_sale_is_the_merchants_frozen_money_never_the_platforms(paid):
    order_id, buyer, issuer, shop = paid()
    # 90 yuan paid to the sub-merchant: frozen there, the merchant's claim on it less the 13.50 it funds
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop) == -90_00
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop) == 90_00 - 13_50
    assert bal(AccountKind.WECHAT_SETTLEMENT) == 0
    assert bal(AccountKind.MERCHANT_PAYABLE, "merchant", shop) == 0
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop) == 0
    assert db.session.get(Order, order_id).frozen_fen == 90_00
    ledger_holds()


def test_a_partner_order_without_profit_sharing_is_released_to_the_merchant_at_once(paid):
    no_rebates = {"roles": [{"role": "consumer", "rate_bps": 0, "form": "wechat_change", "cap_fen": 1_00}]}
    order_id, buyer, issuer, shop = paid(rules=no_rebates, profit_sharing=False)
    assert {f"order:{order_id}:sale", f"order:{order_id}:released"} <= keys()
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop) == 0
    assert db.session.get(Order, order_id).frozen_fen == 0
    assert not payouts_of(order_id)
    ledger_holds()


def test_a_merchant_funded_cash_rebate_no_share_can_carry_waits_for_an_operator_never_a_transfer(paid):
    # given: the order was opened without profit sharing (the campaign started after it was opened)
    order_id, buyer, issuer, shop = paid(profit_sharing=False)
    payouts = payouts_of(order_id)
    assert {p.rail for p in payouts.values()} == {Rail.PROFIT_SHARING}  # never the platform's transfer rail
    # when: the share job runs
    share_due_orders()
    # then: both wait for an operator with an alert; nothing was sent; the merchant owes what it funded
    payouts = payouts_of(order_id)
    assert {p.status for p in payouts.values()} == {"needs_operator"}
    alerts = db.session.execute(select(Alert).where(Alert.kind == "profit_share_not_frozen")).scalars().all()
    assert len(alerts) == 2
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop) == -13_50
    assert bal(AccountKind.WECHAT_SETTLEMENT) == 0
    ledger_holds()


# -- shared rebates leave whole ------------------------------------------------------------------------------


def test_a_shared_rebate_below_the_payout_minimum_still_leaves_by_the_share(paid):
    # given: 10 yuan at 5 % and 10 %: 0.45 and 0.90 yuan, below PAYOUT_MIN_FEN (1 yuan)
    order_id, buyer, issuer, shop = paid(price_fen=19_00)
    payouts = payouts_of(order_id)
    assert {u: (p.rail, p.amount_fen) for u, p in payouts.items()} == {
        issuer: (Rail.PROFIT_SHARING, 90),
        buyer: (Rail.PROFIT_SHARING, 45),
    }
    assert bal(AccountKind.USER_CASH, "user", buyer) == bal(AccountKind.USER_CASH, "user", issuer) == 0
    ledger_holds()


def test_a_shared_rebate_is_never_netted_against_what_the_person_owes(paid):
    # given: the buyer already owes 3 yuan back (a receivable from an earlier clawback)
    order_id, buyer, issuer, shop = paid(buyer_owes_fen=3_00)
    # then: the rebate the merchant funds leaves whole by its share; the debt to the platform stays as it was
    assert db.session.execute(select(Receivable.outstanding_fen)).scalar_one() == 3_00
    assert {u: p.amount_fen for u, p in payouts_of(order_id).items()} == {issuer: 9_00, buyer: 4_50}
    assert bal(AccountKind.USER_CASH, "user", buyer) == 0
    ledger_holds()


# -- refunds --------------------------------------------------------------------------------------------------


def test_a_refund_while_frozen_comes_out_of_the_frozen_money_and_the_rest_is_released_once(paid, sim, app):  # noqa: F811
    from rebate import apply_refund, begin_refund
    from tests.money_helpers import app_money

    order_id, buyer, issuer, shop = paid()
    order = db.session.get(Order, order_id)
    refund = begin_refund(order, "R-frozen", 30_00)
    refund_id, out_trade_no = refund.id, order.out_trade_no
    db.session.commit()
    apply_refund(out_trade_no, "R-frozen", 30_00, utcnow(), money=app_money())
    db.session.commit()
    sim.refund_frozen(order.transaction_id, 30_00)
    assert f"refund:{refund_id}" in keys()
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop) == -60_00
    assert db.session.get(Order, order_id).frozen_fen == 60_00
    ledger_holds()
    # when: the share goes out and finishes
    share_due_orders()
    hold_passes(order_id)
    share_due_orders()
    results_are_due(order_id)
    query_profit_shares()
    # then: the rebates on 60 yuan (6 + 3) were shared, the rest (51) released: nothing frozen, nothing owed
    shared = sum(p.amount_fen for p in payouts_of(order_id).values() if p.status == "succeeded")
    assert shared == 9_00
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop) == 0
    assert db.session.get(Order, order_id).frozen_fen == 0
    assert sum(1 for k in keys() if k == f"order:{order_id}:released") == 1
    # when: the jobs run again: nothing more is released
    results_are_due(order_id)
    query_profit_shares()
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop) == 0
    ledger_holds()


def test_the_ledger_check_catches_frozen_money_the_orders_do_not_hold(paid):
    order_id, *_ = paid()
    db.session.execute(update(Order).where(Order.id == order_id).values(frozen_fen=80_00))
    db.session.commit()
    report = check_ledger()
    assert any("frozen order money is 9000 in the ledger but its orders hold 8000" in v for v in report.violations)
    db.session.execute(update(Order).where(Order.id == order_id).values(frozen_fen=90_00))
    db.session.commit()


# -- activation: from the merchant's own sales, no deposit ----------------------------------------------------


CONSUMER_CHANGE = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 50_00}]}


@pytest.fixture
def sub_merchant(client, admin, make_merchant):  # noqa: F811
    """A merchant onboarded as a sub-merchant through the admin API."""
    shop = make_merchant()
    assert set_sub_mchid(client, admin, shop.id).status_code == 200
    return shop


def draft(make_campaign, shop_id: int, rules=CONSUMER_CHANGE, **fields) -> Campaign:
    return make_campaign(
        rules,
        status="draft",
        fund_deposit_fen=0,
        issuer_type="merchant",
        issuer_merchant_id=shop_id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop_id,
        packet_amount_fen=10_00,
        packet_merchant_id=shop_id,
        budget_limit_fen=100_00,
        **fields,
    )


def activate(client, admin, campaign_id: int):  # noqa: F811
    return client.post(f"/admin/api/campaigns/{campaign_id}/activate", json={"reason": "launch"}, headers=keyed(admin))


def test_activation_funds_a_merchants_campaign_from_its_sales_without_a_deposit(
    client, admin, sub_merchant, make_campaign
):  # noqa: F811
    shop = sub_merchant
    campaign = draft(make_campaign, shop.id)
    got = activate(client, admin, campaign.id)
    assert got.status_code == 200, got.json
    db.session.expire_all()
    campaign = db.session.get(Campaign, campaign.id)
    assert (campaign.status, campaign.funded_from_sales) == ("active", True)
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id) == 0


def test_activation_refuses_a_merchant_without_a_sub_merchant_number(client, admin, make_merchant, make_campaign):  # noqa: F811
    shop = make_merchant()
    campaign = draft(make_campaign, shop.id)
    got = activate(client, admin, campaign.id)
    assert (got.status_code, got.json["error"]) == (409, "merchant_without_sub_mchid")
    db.session.expire_all()
    campaign = db.session.get(Campaign, campaign.id)
    assert (campaign.status, campaign.funded_from_sales) == ("draft", False)


@pytest.mark.parametrize("form", ["balance", "points", "wechat_coupon", "card_coupon"])
def test_activation_refuses_forms_that_would_keep_the_merchants_money(client, admin, sub_merchant, make_campaign, form):  # noqa: F811
    shop = sub_merchant
    rules = {
        "roles": [
            {
                "role": "consumer",
                "rate_bps": 500,
                "form": "wechat_change",
                "forms": ["wechat_change", form],
                "cap_fen": 50_00,
            }
        ]
    }
    campaign = draft(make_campaign, shop.id, rules=rules)
    got = activate(client, admin, campaign.id)
    assert (got.status_code, got.json["error"]) == (409, "rebate_would_pool_money")
    assert form in got.json["message"]
    db.session.expire_all()
    campaign = db.session.get(Campaign, campaign.id)
    assert (campaign.status, campaign.funded_from_sales) == ("draft", False)


def test_activation_refuses_a_merchant_issuer_side_it_would_pay_itself_as_credit(
    client, admin, sub_merchant, make_campaign
):  # noqa: F811
    shop = sub_merchant
    campaign = draft(make_campaign, shop.id, rules=TWO_WAY)  # the merchant issues; its issuer side pays 10 %
    got = activate(client, admin, campaign.id)
    assert (got.status_code, got.json["error"]) == (409, "rebate_would_pool_money")
    assert "issuer is a merchant" in got.json["message"]


def test_new_rules_of_a_campaign_funded_from_sales_keep_to_shared_forms(client, admin, sub_merchant, make_campaign):  # noqa: F811
    shop = sub_merchant
    campaign = draft(make_campaign, shop.id)
    assert activate(client, admin, campaign.id).status_code == 200
    fallback = {
        "roles": [
            {"role": "consumer", "rate_bps": 500, "form": "wechat_change", "fallback_form": "balance", "cap_fen": 50_00}
        ]
    }
    got = client.put(
        f"/admin/api/campaigns/{campaign.id}/rules",
        json={"rules": fallback, "reason": "widen the forms"},
        headers=keyed(admin),
    )
    assert (got.status_code, got.json["error"]) == (409, "rebate_would_pool_money")
    db.session.expire_all()
    assert db.session.get(Campaign, campaign.id).rules_version == 1


def test_a_campaign_that_spent_from_a_deposit_is_not_switched_to_sales(client, admin, sub_merchant, make_campaign):  # noqa: F811
    shop = sub_merchant
    campaign = draft(make_campaign, shop.id)
    campaign.status, campaign.budget_committed_fen = "paused", 5_00
    db.session.commit()
    got = activate(client, admin, campaign.id)
    assert (got.status_code, got.json["error"]) == (409, "campaign_funded_by_deposit")


def test_opening_a_partner_order_counts_a_cash_form_the_person_may_choose(
    app, make_user, make_merchant, make_product, make_campaign
):
    # a rule paying points by default but offering change: the order must be opened for profit sharing
    shop = make_merchant()
    shop.sub_mchid = "1900000888"
    buyer = make_user(appid=app.config["WECHAT_APPID"])
    rules = {
        "roles": [
            {
                "role": "consumer",
                "rate_bps": 500,
                "form": "points",
                "forms": ["points", "wechat_change"],
                "cap_fen": 50_00,
            }
        ]
    }
    make_campaign(
        rules,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        funded_from_sales=True,
        fund_deposit_fen=0,
        packet_amount_fen=None,
    )
    product = make_product(shop, price_fen=50_00)
    order = create_order(buyer, [LineRequest(product.id, 1)], None, utcnow())
    pay_to_sub_merchant(order)
    assert (order.sub_mchid, order.profit_sharing) == ("1900000888", True)
    db.session.rollback()


@pytest.mark.parametrize(
    "rule",
    [
        {"role": "consumer", "rate_bps": 0, "category_bps": {"noodles": 1000}, "form": "balance", "cap_fen": 50_00},
        {
            "role": "consumer",
            "rate_bps": 500,
            "form": "wechat_change",
            "cap_fen": 50_00,
            "condition": {"milestones": ["second_order"], "window_days": 30},
        },
    ],
    ids=["category_rates_in_balance", "held_for_milestones"],
)
def test_activation_sees_category_rates_and_refuses_milestone_holds(client, admin, sub_merchant, make_campaign, rule):  # noqa: F811
    shop = sub_merchant
    campaign = draft(make_campaign, shop.id, rules={"roles": [rule]})
    got = activate(client, admin, campaign.id)
    assert (got.status_code, got.json["error"]) == (409, "rebate_would_pool_money")
    db.session.expire_all()
    assert db.session.get(Campaign, campaign.id).funded_from_sales is False


def test_a_refund_while_the_share_is_in_flight_comes_from_the_money_already_unfrozen(paid, sim, app):  # noqa: F811
    from rebate import apply_refund, begin_refund
    from tests.money_helpers import app_money

    # given: the 13.50 share of the 90-yuan order accepted by WeChat (PROCESSING), its receivers' results not yet
    # in: with unfreeze_unsplit WeChat gave the other 76.50 back to the merchant when it took the share
    order_id, buyer, issuer, shop = paid()
    share_due_orders()
    hold_passes(order_id)
    share_due_orders()
    assert {p.status for p in payouts_of(order_id).values()} == {"unknown"}
    transaction = db.session.get(Order, order_id).transaction_id
    assert sim.frozen[transaction]["unsplit_fen"] == 0
    # when: 85 yuan are refunded meanwhile
    order = db.session.get(Order, order_id)
    begin_refund(order, "R-in-flight", 85_00)
    db.session.commit()
    apply_refund(order.out_trade_no, "R-in-flight", 85_00, utcnow(), money=app_money())
    db.session.commit()
    # then: the refund came from the merchant's own unfrozen money (nothing posted from the frozen money); when the
    # share succeeds the books release the 76.50 WeChat released
    assert db.session.get(Order, order_id).frozen_fen == 90_00
    refund_id = db.session.execute(select(Refund.id).where(Refund.out_refund_no == "R-in-flight")).scalar_one()
    assert f"refund:{refund_id}" not in keys()
    results_are_due(order_id)
    query_profit_shares()
    assert db.session.get(Order, order_id).frozen_fen == 0
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop) == 0
    assert f"order:{order_id}:released" in keys()
    ledger_holds()


def test_a_share_waiting_for_an_operator_is_still_asked_about_and_its_rest_released(paid, sim):  # noqa: F811
    from tests.test_profit_sharing import share_of

    # given: the share was handed over, then WeChat's answers were lost until the share went to an operator
    order_id, buyer, issuer, shop = paid()
    share_due_orders()
    hold_passes(order_id)
    share_due_orders()
    row = share_of(order_id)
    row.attempts = 8
    db.session.commit()
    sim.inject_fault("/v3/profitsharing/orders", 500, "SYSTEM_ERROR", times=1)
    results_are_due(order_id)
    query_profit_shares()
    assert share_of(order_id).status == "needs_operator"
    assert db.session.get(Order, order_id).frozen_fen == 90_00
    # when: an hour later the job asks again, and WeChat has finished it
    results_are_due(order_id)
    query_profit_shares()
    # then: the shares are recorded and the rest of the order's money released to the merchant
    assert share_of(order_id).status == "finished"
    assert {p.status for p in payouts_of(order_id).values()} == {"succeeded"}
    assert db.session.get(Order, order_id).frozen_fen == 0
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop) == 0
    assert len(db.session.execute(select(Alert).where(Alert.kind == "profit_share_needs_operator")).all()) == 1
    ledger_holds()


def test_a_refund_shrinks_a_stranded_shared_payout_not_the_persons_other_money(paid, app):
    from rebate import apply_refund, begin_refund
    from tests.money_helpers import app_money

    # given: the order was opened without profit sharing: both rebates wait for an operator
    order_id, buyer, issuer, shop = paid(profit_sharing=False)
    share_due_orders()
    assert {p.status for p in payouts_of(order_id).values()} == {"needs_operator"}
    # when: half of the 90 yuan is refunded
    order = db.session.get(Order, order_id)
    begin_refund(order, "R-stranded", 45_00)
    db.session.commit()
    apply_refund(order.out_trade_no, "R-stranded", 45_00, utcnow(), money=app_money())
    db.session.commit()
    # then: the waiting payouts shrank (issuer 10 % of 45, buyer 5 %); nobody owes anything
    assert {u: p.amount_fen for u, p in payouts_of(order_id).items()} == {issuer: 4_50, buyer: 2_25}
    assert bal(AccountKind.USER_CASH, "user", buyer) == bal(AccountKind.USER_CASH, "user", issuer) == 0
    assert db.session.query(Receivable).count() == 0
    ledger_holds()


@pytest.mark.parametrize(
    "refunded, sold_before", [(False, False), (True, False), (True, True)], ids=["paid", "refunded", "sold before"]
)
def test_a_merchants_deposit_packet_on_its_own_partner_order_is_a_lower_price_and_moves_no_deposit(
    app, make_user, make_merchant, make_product, make_campaign, pay, refunded, sold_before, monkeypatch
):
    """A campaign activated under direct mode keeps its deposit after the switch; its packet on the merchant's own
    partner order is part of the price the sub-merchant charged at WeChat (it received 90 of 100): its deposit
    pays nothing, as a packet funded from its sales pays nothing. (Found by a probe: the deposit paid the 10 yuan
    again, into the merchant's claim on order money that WeChat never froze, where no share could ever settle it.)"""
    from rebate import apply_refund, begin_refund
    from tests.money_helpers import app_money

    appid = app.config["WECHAT_APPID"]
    shop = make_merchant()
    shop.sub_mchid = f"19{shop.id:08d}"
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 0, "form": "balance", "cap_fen": 1_00}]},
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
        budget_limit_fen=100_00,
        fund_deposit_fen=100_00,
    )
    buyer = make_user(appid=appid)
    packet = issue_packet(campaign, buyer, source="test", source_ref="deposit-packet", now=utcnow())
    order = create_order(buyer, [LineRequest(make_product(shop, price_fen=100_00).id, 1)], packet.id, utcnow())
    order.sub_mchid, order.profit_sharing = shop.sub_mchid, False
    db.session.commit()
    assert order.payable_fen == 90_00
    if sold_before:  # a sale booked before this rule: its deposit paid the packet, and a full refund returns it
        from rebate import payments

        with monkeypatch.context() as m:
            m.setattr(payments, "own_price", lambda campaign, merchant_id: False)
            assert pay(order) == "applied"
        assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id) == 90_00
    else:
        assert pay(order) == "applied"
    if refunded:
        order = db.session.get(Order, order.id)
        begin_refund(order, "R-all", 90_00)
        db.session.commit()
        apply_refund(order.out_trade_no, "R-all", 90_00, utcnow(), money=app_money())
        db.session.commit()

    db.session.expire_all()
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id) == 100_00
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    ledger_holds()
