"""Merchant billing probed as a merchant, a finance operator and an auditor would (deposits, fees, invoices,
statements): what was found wrong, each proved here.

- A fee booked in a month after that month's invoice was written (its payment's transaction began before the
  month ended and committed after the invoice run read the month: PostgreSQL's READ COMMITTED) was never billed:
  each invoice billed only its own month's fees, so the late one stayed unbilled for good, and the statement's
  ``carried_forward`` and ``billed_unpaid`` never saw it. The next invoice now bills it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from ledger import check_ledger
from models import FeeInvoice, OrderFee, db
from rebate.fees import month_bounds, unbilled_fees
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


def test_a_fee_booked_in_a_month_after_its_invoice_is_billed_by_the_next_invoice(
    app, monkeypatch, make_user, make_merchant, make_product, pay
):
    # given: 2 %; January's 100-yuan order (2 yuan) invoiced just after the month ended
    app.config["PLATFORM_FEE_BPS"] = 200
    shop = make_merchant()
    book_in(monkeypatch, "2025-01")
    pay(buy(make_user(), make_product(shop, price_fen=100_00)))
    assert invoice_at(monkeypatch, "2025-01") == {"invoiced": 1}

    # when: a payment whose transaction began a second before January ended commits only after that run read the
    # month (its entries booked in January, 50 yuan: 1 yuan of fees), and February books 3 yuan and is invoiced
    last_second = month_bounds("2025-01")[1] - timedelta(seconds=1)
    monkeypatch.setattr("ledger.posting.utcnow", lambda: last_second)
    pay(buy(make_user(), make_product(shop, price_fen=50_00)))
    book_in(monkeypatch, "2025-02")
    pay(buy(make_user(), make_product(shop, price_fen=150_00)))
    assert invoice_at(monkeypatch, "2025-02") == {"invoiced": 1}

    # then: every fen of fees is billed once: January's invoice as written, February's with the straggler
    assert row(shop.id, "2025-01") == (2_00, 0, 2_00)
    assert row(shop.id, "2025-02") == (4_00, 0, 4_00)
    assert billed(shop.id) == total_fees(shop.id) == 6_00 and fees_due(shop.id) == -6_00
    assert unbilled_fees(shop.id, "2025-02") == 0
    assert check_ledger().ok


def test_the_beijing_month_ends_at_1600_utc_for_the_invoice_and_the_statement(
    app, client, monkeypatch, make_operator, make_user, make_merchant, make_product, pay
):
    # given: 2 %; one order paid a second before January ends in Beijing (15:59:59 UTC), one at its end
    app.config["PLATFORM_FEE_BPS"] = 200
    _, admin = make_operator("admin")
    shop = make_merchant()
    end = month_bounds("2025-01")[1]
    assert (end.hour, end.minute, end.day) == (16, 0, 31)
    for when, price in ((end - timedelta(seconds=1), 100_00), (end, 50_00)):
        monkeypatch.setattr("ledger.posting.utcnow", lambda when=when: when)
        pay(buy(make_user(), make_product(shop, price_fen=price)))

    # when: January is invoiced
    assert invoice_at(monkeypatch, "2025-01") == {"invoiced": 1}

    # then: the first in January's invoice and statement, the second in February's statement
    assert row(shop.id, "2025-01") == (2_00, 0, 2_00)
    jan, feb = (
        client.get(f"/admin/api/merchants/{shop.id}/statement?month={m}", headers=admin).json
        for m in ("2025-01", "2025-02")
    )
    assert (jan["summary"]["platform_fees"]["fen"], feb["summary"]["platform_fees"]["fen"]) == (-2_00, -1_00)
    assert (jan["summary"]["net_sales"]["fen"], feb["summary"]["net_sales"]["fen"]) == (100_00, 50_00)
    assert all(a["reconciles"] for s in (jan, feb) for a in s["accounts"])


def test_a_month_the_job_never_invoiced_is_invoiced_by_a_later_run_oldest_first(
    app, monkeypatch, make_user, make_merchant, make_product, pay
):
    from jobs.invoices import invoice_fees

    # given: 2 %; January's and February's fees, and the job stopped until well into March
    app.config["PLATFORM_FEE_BPS"] = 200
    shop = make_merchant()
    for month, price in (("2025-01", 100_00), ("2025-02", 50_00)):
        book_in(monkeypatch, month)
        pay(buy(make_user(), make_product(shop, price_fen=price)))
    # when: its first run in March, and a second one
    assert invoice_fees(book_in(monkeypatch, "2025-03", days=20)) == {"invoiced": 2}
    assert invoice_fees(book_in(monkeypatch, "2025-03", days=21)) == {}
    # then: each month is invoiced for its own fees, once
    assert row(shop.id, "2025-01") == (2_00, 0, 2_00)
    assert row(shop.id, "2025-02") == (1_00, 0, 1_00)
    assert billed(shop.id) == total_fees(shop.id) == 3_00
