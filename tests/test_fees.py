"""The platform's service fee and the marketing credit spent against it (issue 16).

A fee per paid order in basis points (the merchant's own rate or PLATFORM_FEE_BPS), lowered by refunds in
proportion, rounded down and cumulatively; invoiced once per merchant and Beijing month with the credit
applied first; credit spent on promotions, never below zero, also when spends race.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from jobs.invoices import invoice_fees
from ledger import Leg, account, balance, post_entry
from models import AccountKind, AuditLog, FeeInvoice, LedgerEntry, OrderFee, db, utcnow
from models.operators import Actor
from rebate import apply_refund, begin_refund
from rebate.errors import StateConflict
from rebate.fees import invoice_month, month_bounds, month_of, spend_credit
from tests.money_helpers import app_money
from tests.test_worked_examples import buy


def fees_due(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_FEES_DUE, "merchant", merchant_id))


def credit(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", merchant_id))


def give_credit(merchant_id: int, amount_fen: int, key: str = "earned") -> None:
    """Credit as a merchant-credit rebate would pay it (from the platform fund here)."""
    post_entry(
        f"test:{merchant_id}:{key}",
        "credit earned",
        [
            Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen),
            Leg(account(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", merchant_id), amount_fen),
        ],
    )
    db.session.commit()


def refund(order, number: str, amount_fen: int) -> None:
    begin_refund(order, number, amount_fen)
    apply_refund(order.out_trade_no, number, amount_fen, utcnow(), money=app_money())
    db.session.commit()


def after_month() -> tuple[str, object]:
    month = month_of(utcnow())
    return month, month_bounds(month)[1] + timedelta(minutes=1)


def test_the_default_fee_accrues_with_the_sale_and_a_merchant_rate_overrides_it(
    app, client, make_operator, make_user, make_merchant, make_product, pay
):
    # given: a 1 % default, and one merchant with its own 2.5 %
    app.config["PLATFORM_FEE_BPS"] = 100
    _, admin = make_operator("admin")
    plain, own = make_merchant(), make_merchant()
    put = client.put(
        f"/admin/api/merchants/{own.id}/fee-rate", json={"rate_bps": 250, "reason": "contract"}, headers=admin
    )
    assert put.status_code == 200
    assert client.get(f"/admin/api/merchants/{plain.id}/fee-rate", headers=admin).json["rate_bps"] == 100

    # when: each sells a 123.45-yuan order
    orders = [buy(make_user(), make_product(m, price_fen=123_45)) for m in (plain, own)]
    for order in orders:
        assert pay(order) == "applied"

    # then: 1 % and 2.5 %, rounded down, owed by each merchant; paid twice, still once
    assert (fees_due(plain.id), fees_due(own.id)) == (-1_23, -3_08)
    pay(orders[0])
    assert fees_due(plain.id) == -1_23
    assert db.session.get(OrderFee, orders[1].id).rate_bps == 250
    [line] = db.session.execute(select(AuditLog).filter_by(action="merchant.fee_rate")).scalars()
    assert line.details == {"rate_bps": 250, "before_bps": None} and line.reason == "contract"


def test_refunds_lower_the_fee_in_proportion_rounded_down_and_cumulatively(
    app, make_user, make_merchant, make_product, pay
):
    # given: a 3.33 % fee on a 99.99-yuan order: 3.32 (3.329… rounded down)
    app.config["PLATFORM_FEE_BPS"] = 333
    shop = make_merchant()
    order = buy(make_user(), make_product(shop, price_fen=99_99))
    pay(order)
    assert fees_due(shop.id) == -3_32

    # when: refunded in three parts
    steps = []
    for i, amount in enumerate((33_33, 33_33, 33_33)):
        order = db.session.merge(order)
        refund(order, f"R-{i}", amount)
        steps.append(fees_due(shop.id))

    # then: the fee is always the rate of what is left, rounded down; a full refund leaves no fee
    assert steps == [-2_21, -1_10, 0]  # 333 bps of 66.66 = 2.219…, of 33.33 = 1.109…
    assert db.session.get(OrderFee, order.id).fee_fen == 0


def test_a_zero_rate_books_nothing(app, make_user, make_merchant, make_product, pay):
    shop = make_merchant()
    pay(buy(make_user(), make_product(shop, price_fen=10_00)))
    assert fees_due(shop.id) == 0 and db.session.execute(select(func.count()).select_from(OrderFee)).scalar() == 0


def test_the_month_is_invoiced_once_with_the_credit_applied_first(app, make_user, make_merchant, make_product, pay):
    # given: 2 % on two 100-yuan orders (4 yuan of fees) and 2.50 of credit
    app.config["PLATFORM_FEE_BPS"] = 200
    shop, other = make_merchant(), make_merchant()
    for _ in range(2):
        pay(buy(make_user(), make_product(shop, price_fen=100_00)))
    pay(buy(make_user(), make_product(other, price_fen=10_00)))  # 0.20, no credit
    give_credit(shop.id, 2_50)
    month, later = after_month()

    # when: the job runs, and again
    first = invoice_fees(later, month)
    second = invoice_fees(later, month)

    # then: one invoice each; the credit paid 2.50, 1.50 is due; nothing moved twice
    assert first == {"invoiced": 2} and second == {}
    db.session.rollback()
    invoices = {i.merchant_id: i for i in db.session.execute(select(FeeInvoice)).scalars()}
    assert (invoices[shop.id].fee_fen, invoices[shop.id].credit_applied_fen, invoices[shop.id].due_fen) == (
        4_00,
        2_50,
        1_50,
    )
    assert (invoices[other.id].credit_applied_fen, invoices[other.id].due_fen) == (0, 20)
    assert credit(shop.id) == 0 and fees_due(shop.id) == -1_50
    assert invoice_month(shop.id, month, later) is None  # a twin writes nothing


def test_a_month_not_ended_is_not_invoiced(app, make_merchant):
    shop = make_merchant()
    with pytest.raises(StateConflict) as refused:
        invoice_month(shop.id, month_of(utcnow()), utcnow())
    assert refused.value.code == "month_not_ended"


def test_two_invoice_runs_at_once_invoice_once(app, make_user, make_merchant, make_product, pay):
    from tests.concurrency import together

    app.config["PLATFORM_FEE_BPS"] = 100
    shop = make_merchant()
    pay(buy(make_user(), make_product(shop, price_fen=300_00)))
    give_credit(shop.id, 1_00)
    month, later = after_month()

    results = together(2, lambda i: invoice_fees(later, month), app=app)

    assert not any(isinstance(r, Exception) for r in results), results
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(FeeInvoice)).scalar() == 1
    assert credit(shop.id) == 0 and fees_due(shop.id) == -2_00
    applied = select(func.count()).where(LedgerEntry.idempotency_key.like("invoice:%"))
    assert db.session.execute(applied).scalar() == 1


def test_credit_spent_on_a_promotion_moves_into_the_deposit_once(client, make_operator, make_merchant, make_campaign):
    _, finance = make_operator("finance")
    shop = make_merchant()
    campaign = make_campaign(
        {"roles": []}, funder_type="merchant_deposit", funder_merchant_id=shop.id, fund_deposit_fen=0
    )
    give_credit(shop.id, 5_00)
    spend = f"/admin/api/merchants/{shop.id}/credit/spends"
    body = {"amount_fen": 2_00, "campaign_id": campaign.id, "reason": "fund the spring campaign"}

    first = client.post(spend, json=body, headers={**finance, "Idempotency-Key": "p1"})
    again = client.post(spend, json=body, headers={**finance, "Idempotency-Key": "p1"})

    assert first.status_code == 201 and first.json == again.json
    assert (first.json["credit_fen"], first.json["deposit_fen"]) == (3_00, 2_00)
    assert credit(shop.id) == 3_00
    assert len(db.session.execute(select(AuditLog).filter_by(action="merchant.credit_spend")).all()) == 1


@pytest.mark.parametrize(
    "body, status, error",
    [
        ({"amount_fen": 6_00, "reason": "too much"}, 409, "credit_exhausted"),
        ({"amount_fen": 0, "reason": "zero"}, 422, None),
        ({"amount_fen": "1", "reason": "text"}, 422, None),
        ({"amount_fen": 1_00}, 422, None),
        ({"amount_fen": 1_00, "reason": "other's", "campaign_id": "OTHER"}, 409, "not_merchant_funded"),
        ({"amount_fen": 1_00, "reason": "none", "campaign_id": 999_999}, 404, None),
    ],
)
def test_bad_credit_spends_are_refused_and_move_nothing(
    client, make_operator, make_merchant, make_campaign, body, status, error
):
    _, finance = make_operator("finance")
    shop, other = make_merchant(), make_merchant()
    give_credit(shop.id, 5_00)
    if body.get("campaign_id") == "OTHER":
        funded_by_other = {"funder_type": "merchant_deposit", "funder_merchant_id": other.id, "fund_deposit_fen": 0}
        body = {**body, "campaign_id": make_campaign({"roles": []}, **funded_by_other).id}

    resp = client.post(
        f"/admin/api/merchants/{shop.id}/credit/spends", json=body, headers={**finance, "Idempotency-Key": "k"}
    )

    assert resp.status_code == status, resp.json
    if error:
        assert resp.json["error"] == error
    assert credit(shop.id) == 5_00


def test_merchant_staff_cannot_spend_or_set_rates_and_see_only_their_invoices(client, make_operator, make_merchant):
    staff_op, staff = make_operator("merchant_staff")
    other = make_merchant()
    own = staff_op.merchant_id

    spend = client.post(
        f"/admin/api/merchants/{own}/credit/spends",
        json={"amount_fen": 1, "reason": "mine"},
        headers={**staff, "Idempotency-Key": "k"},
    )
    rate = client.put(f"/admin/api/merchants/{own}/fee-rate", json={"rate_bps": 0, "reason": "free"}, headers=staff)

    assert (spend.status_code, rate.status_code) == (403, 403)
    assert client.get(f"/admin/api/merchants/{own}/fee-invoices", headers=staff).status_code == 200
    assert client.get(f"/admin/api/merchants/{other.id}/fee-invoices", headers=staff).status_code == 404


@pytest.mark.parametrize("rate", [-1, 10_001, "300", True, 2.5, None])
def test_a_bad_fee_rate_is_422_and_changes_nothing(client, make_operator, make_merchant, rate):
    _, admin = make_operator("admin")
    shop = make_merchant()

    resp = client.put(
        f"/admin/api/merchants/{shop.id}/fee-rate", json={"rate_bps": rate, "reason": "x" * 5}, headers=admin
    )

    assert resp.status_code == 422 and "rate_bps" in str(resp.json)
    assert client.get(f"/admin/api/merchants/{shop.id}/fee-rate", headers=admin).json["rate_bps"] == 0


def test_concurrent_promotion_spends_never_take_the_credit_below_zero(app, make_operator, make_merchant):
    from tests.concurrency import together

    # given: 5 yuan of credit and three spends of 2 yuan at once, each with its own key
    finance, _ = make_operator("finance")
    shop = make_merchant()
    give_credit(shop.id, 5_00)
    finance_id, shop_id = finance.id, shop.id

    def spend(i: int):
        from models import Operator

        return spend_credit(Actor(db.session.get(Operator, finance_id)), shop_id, 2_00, f"race-{i}", "race")[1]

    results = together(3, spend, app=app)

    # then: two went through, one was refused; the credit holds 1 yuan
    refused = [r for r in results if isinstance(r, StateConflict)]
    assert len(refused) == 1 and refused[0].code == "credit_exhausted", results
    assert credit(shop_id) == 1_00
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop_id)) == 4_00
