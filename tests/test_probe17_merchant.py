"""Probe 17 of the merchants' half and the users' wallet: what was found wrong, each proved here.

- A fee booked in a month after that month's invoice was written (its payment began before the month ended and
  committed after the invoice run) was billed by the *next* invoice only if the merchant booked fees in the next
  month too: a merchant that sold nothing more (a shop that closed at the year's end) was never billed for it,
  though its fees-due account says it owes it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from jobs.invoices import invoice_fees
from ledger import check_ledger
from models import FeeInvoice, OrderFee, db
from rebate.fees import billed_unpaid, month_bounds, unbilled_fees
from tests.test_fees import book_in, fees_due, invoice_at, row
from tests.test_worked_examples import buy


def total_fees(merchant_id: int) -> int:
    db.session.rollback()
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(OrderFee.fee_fen), 0)).where(OrderFee.merchant_id == merchant_id)
        ).scalar_one()
    )


def billed(merchant_id: int) -> int:
    db.session.rollback()
    return int(
        db.session.execute(
            select(func.coalesce(func.sum(FeeInvoice.fee_fen), 0)).where(FeeInvoice.merchant_id == merchant_id)
        ).scalar_one()
    )


def invoices(merchant_id: int) -> list[str]:
    db.session.rollback()
    return list(
        db.session.execute(
            select(FeeInvoice.month).where(FeeInvoice.merchant_id == merchant_id).order_by(FeeInvoice.month)
        ).scalars()
    )


def test_a_late_fee_of_a_merchant_that_sells_nothing_more_is_still_billed(
    app, monkeypatch, make_user, make_merchant, make_product, pay
):
    # given: 2 %; January's 100-yuan order (2 yuan) invoiced just after the month ended, and a payment whose
    # transaction began a second before January ended committed after that run (booked in January: 1 yuan);
    # another merchant with nothing late, invoiced too
    app.config["PLATFORM_FEE_BPS"] = 200
    shop, other = make_merchant(), make_merchant()
    book_in(monkeypatch, "2025-01")
    pay(buy(make_user(), make_product(shop, price_fen=100_00)))
    pay(buy(make_user(), make_product(other, price_fen=100_00)))
    assert invoice_at(monkeypatch, "2025-01") == {"invoiced": 2}
    last_second = month_bounds("2025-01")[1] - timedelta(seconds=1)
    monkeypatch.setattr("ledger.posting.utcnow", lambda: last_second)
    pay(buy(make_user(), make_product(shop, price_fen=50_00)))

    # when: neither sells anything more; the job runs on through February, in March and in April
    invoice_fees(book_in(monkeypatch, "2025-02", days=20))
    invoice_fees(book_in(monkeypatch, "2025-03", days=1))
    invoice_fees(book_in(monkeypatch, "2025-03", days=2))
    invoice_fees(book_in(monkeypatch, "2025-04", days=1))

    # then: the late yuan is billed once, by February's invoice (the first after it); the other merchant, which
    # owes nothing unbilled, gets no empty invoices
    assert billed(shop.id) == total_fees(shop.id) == 3_00
    assert row(shop.id, "2025-01") == (2_00, 0, 2_00)
    assert row(shop.id, "2025-02") == (1_00, 0, 1_00)
    assert invoices(shop.id) == ["2025-01", "2025-02"]
    assert invoices(other.id) == ["2025-01"]
    assert unbilled_fees(shop.id, "2025-04") == 0
    assert billed_unpaid(shop.id) == 3_00 and fees_due(shop.id) == -3_00
    assert check_ledger().ok
