"""Probe of the merchants' half: statements, billing reads, deposits, fees, and who may see what.

Each test was written against a bug found by probing and fails without its fix.
"""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy import event, func, select

from ledger import check_ledger
from models import LedgerAccount, db, utcnow
from rebate.fees import month_of

WRITES = ("INSERT", "UPDATE", "DELETE")


@contextmanager
def writes_sent():
    """The writing statements sent to the database while the block runs, but the trail every merchant staff's
    request leaves (``risk_identifiers``, by design)."""
    seen: list[str] = []

    def on_execute(conn, cursor, statement, *args):
        if statement.lstrip().split(None, 1)[0].upper() in WRITES and "risk_identifiers" not in statement:
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", on_execute)


def accounts_count() -> int:
    return db.session.execute(select(func.count()).select_from(LedgerAccount)).scalar_one()


def test_reading_a_new_merchants_statement_creates_no_ledger_account(client, make_operator, make_merchant):
    """GET …/statement of a merchant whose accounts were never used wrote its six accounts: a read changed rows."""
    shop = make_merchant()
    _, admin = make_operator("admin")
    before = accounts_count()
    month = month_of(utcnow())

    with writes_sent() as writes:
        resp = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}", headers=admin)
        csv = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}&format=csv", headers=admin)
        postings = client.get(
            f"/admin/api/merchants/{shop.id}/statement?month={month}&figure=sales&entries=1", headers=admin
        )

    assert resp.status_code == 200 and csv.status_code == 200 and postings.status_code == 200, resp.json
    assert writes == []
    db.session.rollback()
    assert accounts_count() == before
    s = resp.json
    assert all(f["fen"] == 0 and f["postings"] == 0 for f in s["figures"])
    assert [a["account"] for a in s["accounts"]] == [
        f"{kind}:merchant:{shop.id}"
        for kind in (
            "merchant_payable",
            "merchant_marketing_deposit",
            "merchant_marketing_credit",
            "merchant_fees_due",
            "merchant_frozen_sales",
            "merchant_own_sales",
        )
    ]
    assert all(a["reconciles"] and a["opening_fen"] == a["closing_fen"] == 0 for a in s["accounts"])
    assert s["in_flight"]["fees_owed"]["fen"] == 0
    assert postings.json["postings"] == [] and postings.json["total_fen"] == 0
    assert check_ledger().ok


def test_reading_a_new_merchants_invoices_creates_no_ledger_account(client, make_operator, make_merchant):
    """GET …/fee-invoices of a merchant whose accounts were never used wrote its credit and fees-due accounts."""
    shop = make_merchant()
    _, staff = make_operator("merchant_staff", merchant=shop)
    before = accounts_count()

    with writes_sent() as writes:
        resp = client.get(f"/admin/api/merchants/{shop.id}/fee-invoices", headers=staff)

    assert resp.status_code == 200, resp.json
    assert resp.json == {"items": [], "credit_fen": 0, "fees_paid_fen": 0, "billed_unpaid_fen": 0}
    assert writes == []
    db.session.rollback()
    assert accounts_count() == before


def test_reading_a_new_merchants_deposit_creates_no_ledger_account(client, make_operator, make_merchant):
    """GET …/deposit of a merchant whose deposit was never used wrote its deposit account (web/admin.py)."""
    shop = make_merchant()
    _, admin = make_operator("admin")
    before = accounts_count()

    with writes_sent() as writes:
        resp = client.get(f"/admin/api/merchants/{shop.id}/deposit", headers=admin)

    assert resp.status_code == 200 and resp.json == {"merchant_id": shop.id, "deposit_fen": 0}, resp.json
    assert writes == []
    db.session.rollback()
    assert accounts_count() == before
