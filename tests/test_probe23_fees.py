"""Probe 23 of merchant billing (service fees, monthly invoices, marketing credit, fee payments): what was found wrong,
each proved here, and an accounting property that held.

- The invoice job looks back three ended months. Fees of a month it never invoiced and no longer looks at (its node
  down for a quarter, or a merchant whose invoice failed three months running) were left out of every later invoice
  as "waiting for their own invoice", which never came: the merchant's fees-due account said it owed them, but no
  invoice billed them and a fee payment of them was refused (409 ``fee_payment_exceeds_billed``) for good. A quiet
  merchant (no fees since) was not even looked at. The next invoice now bills them.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from jobs.invoices import invoice_fees
from ledger import check_ledger
from models import FeeInvoice, db
from rebate.fees import (
    billed_unpaid,
    carried_forward,
    credit_given_back,
    fees_paid,
    record_fee_payment,
    unbilled_fees,
)
from tests.test_fee_invoice_stragglers import billed, total_fees
from tests.test_fees import book_in, credit, fees_due, give_credit, refund, row
from tests.test_worked_examples import buy


def test_fees_of_a_month_the_stopped_job_never_reached_are_billed_by_the_next_invoice(
    app, monkeypatch, make_user, make_merchant, make_product, pay
):
    # given: 2 %; January's 100-yuan order (2 yuan of fees) and April's 50-yuan one (1 yuan); the job stopped from
    # January until May, when it looks at February, March and April only
    app.config["PLATFORM_FEE_BPS"] = 200
    shop = make_merchant()
    book_in(monkeypatch, "2025-01")
    pay(buy(make_user(), make_product(shop, price_fen=100_00)))
    book_in(monkeypatch, "2025-04")
    pay(buy(make_user(), make_product(shop, price_fen=50_00)))

    # when: it runs in May, and again in June after May's 1 yuan
    invoice_fees(book_in(monkeypatch, "2025-05", days=0))
    book_in(monkeypatch, "2025-05")
    pay(buy(make_user(), make_product(shop, price_fen=50_00)))
    invoice_fees(book_in(monkeypatch, "2025-06", days=0))

    # then: every fen is billed once (January's by the first invoice written after it), and all of it can be paid
    assert billed(shop.id) == total_fees(shop.id) == 4_00
    assert unbilled_fees(shop.id, "2025-05") == 0 and row(shop.id, "2025-05") == (1_00, 0, 1_00)
    assert billed_unpaid(shop.id) == -fees_due(shop.id) == 4_00
    record_fee_payment(shop.id, 4_00, 1, "bank transfer")
    db.session.commit()
    assert fees_due(shop.id) == 0 and billed_unpaid(shop.id) == 0
    assert check_ledger().ok


def test_a_quiet_merchants_fees_of_a_month_the_job_never_reached_are_billed_too(
    app, monkeypatch, make_user, make_merchant, make_product, pay
):
    # given: 2 %; a shop that sold once in January (2 yuan of fees) and nothing since; the job's first run is in May
    app.config["PLATFORM_FEE_BPS"] = 200
    shop = make_merchant()
    book_in(monkeypatch, "2025-01")
    pay(buy(make_user(), make_product(shop, price_fen=100_00)))

    # when: the job runs in May (February to April)
    assert invoice_fees(book_in(monkeypatch, "2025-05", days=0)) == {"invoiced": 1}

    # then: the oldest month it looks at bills January's fees, once; a second run writes nothing
    assert row(shop.id, "2025-02") == (2_00, 0, 2_00)
    assert invoice_fees(book_in(monkeypatch, "2025-05", days=1)) == {}
    assert billed(shop.id) == total_fees(shop.id) == 2_00 and billed_unpaid(shop.id) == 2_00
    assert check_ledger().ok


MONTHS = ("2025-01", "2025-02", "2025-03", "2025-04", "2025-05", "2025-06", "2025-07")


@pytest.mark.parametrize("seed", range(6))
def test_random_months_of_orders_partial_refunds_credit_payments_and_skipped_runs_bill_every_fen_once(
    app, monkeypatch, make_user, make_merchant, make_product, pay, seed
):
    # given: random orders and partial refunds (of this and earlier months) at an odd rate, credit now and then,
    # the job run after some months and not others (a stopped job, for up to five months), payments of part of
    # what is billed
    rnd = random.Random(seed)
    app.config["PLATFORM_FEE_BPS"] = rnd.choice([1, 33, 333])
    shop = make_merchant()
    orders: list[list] = []
    refunds = 0
    for i, month in enumerate(MONTHS[:-1]):
        book_in(monkeypatch, month, days=rnd.randint(0, 27))
        for _ in range(rnd.randint(0, 3)):
            order = buy(make_user(), make_product(shop, price_fen=rnd.randint(1, 200_00)))
            pay(order)
            orders.append([order, order.payable_fen])
        for left in rnd.sample(orders, min(len(orders), rnd.randint(0, 2))):
            if left[1] > 0:
                amount = rnd.randint(1, left[1])
                refunds += 1
                refund(db.session.merge(left[0]), f"R-{refunds}", amount)
                left[1] -= amount
        if rnd.random() < 0.4:
            give_credit(shop.id, rnd.randint(1, 3_00), key=f"c{i}")
        if rnd.random() < 0.5:
            invoice_fees(book_in(monkeypatch, MONTHS[i + 1], days=0))
            unpaid = billed_unpaid(shop.id)
            if unpaid and rnd.random() < 0.6:
                record_fee_payment(shop.id, rnd.randint(1, unpaid), 100 + i, "bank transfer")
                db.session.commit()

    # when: the job runs after the last month
    invoice_fees(book_in(monkeypatch, "2025-08", days=1))

    # then: what the invoices billed, less the credit they gave back and what is carried, is the orders' fees to
    # the fen; nothing is left unbilled; the fees-due account is the fees less the credit applied and the payments
    fees, last = total_fees(shop.id), MONTHS[-1]
    given_back = sum(credit_given_back(shop.id, m) for m in MONTHS)
    assert billed(shop.id) - given_back - carried_forward(shop.id, last) == fees
    assert unbilled_fees(shop.id, last) <= 0
    credit_applied = billed(shop.id) - _due(shop.id) - given_back  # by the invoices, net
    assert fees_due(shop.id) == -fees + credit_applied + fees_paid(shop.id)
    assert credit(shop.id) >= 0 and check_ledger().ok


def _due(merchant_id: int) -> int:
    db.session.rollback()
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(FeeInvoice.due_fen), 0)).where(FeeInvoice.merchant_id == merchant_id)
        ).scalar_one()
    )
