"""The monthly fee invoices: once a Beijing month has ended, one invoice per merchant with fees booked in it.

Each merchant is invoiced in its own transaction: its row is claimed with ``FOR NO KEY UPDATE SKIP LOCKED`` (a
node already invoicing it is left alone; a payment writing rows that name the merchant is not), and the invoice
row's unique (merchant, month) makes a second run, on any node, write nothing and post nothing
(``rebate.fees.invoice_month``). The marketing credit pays first; a month that later refunds took below zero is
invoiced at 0, gives credit back and carries the rest.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select

from jobs.payouts import row_failed
from models import Merchant, db, unit_of_work, utcnow
from rebate.fees import catch_up_months, invoice_month, merchants_to_invoice


def invoice_fees(now: datetime | None = None, month: str | None = None) -> Counter:
    """Invoice the ended months' fees, oldest first: the last month's, and those of the ``CATCH_UP_MONTHS`` before
    it that were never invoiced (the job stopped throughout a month); ``month``: that ended month only. How many
    invoices were written, skipped, failed."""
    now = now or utcnow()
    months = [month] if month else catch_up_months(now)
    done: Counter = Counter()
    for one in months:
        done.update(_invoice_month(one, now))
    db.session.commit()
    return done


def _invoice_month(month: str, now: datetime) -> Counter:
    done: Counter = Counter()
    for merchant_id in merchants_to_invoice(month, now):
        try:
            with unit_of_work():
                claimed = db.session.execute(  # FOR NO KEY UPDATE: another invoicer is skipped, never a payment
                    # writing a row that names the merchant (its foreign key holds a key-share lock on the row)
                    select(Merchant.id)
                    .where(Merchant.id == merchant_id)
                    .with_for_update(skip_locked=True, key_share=True)
                ).scalar_one_or_none()
                invoice = invoice_month(merchant_id, month, now) if claimed is not None else None
        except Exception as exc:  # one merchant that cannot be invoiced must not stop every merchant after it
            row_failed("fee_invoice_failed", "merchant", merchant_id, exc)
            done["failed"] += 1
            continue
        done["invoiced" if invoice is not None else "skipped"] += 1
    return done
