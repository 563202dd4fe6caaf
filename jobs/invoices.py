"""The monthly fee invoices: once a Beijing month has ended, one invoice per merchant with fees booked in it.

Each merchant is invoiced in its own transaction: its row is claimed with ``FOR UPDATE SKIP LOCKED`` (a node
already invoicing it is left alone), and the invoice row's unique (merchant, month) makes a second run, on
any node, write nothing and post nothing (``rebate.fees.invoice_month``). The marketing credit pays first; a
month that later refunds took below zero is invoiced at 0, gives credit back and carries the rest.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from sqlalchemy import select

from models import Merchant, alert_once, db, unit_of_work, utcnow
from rebate.fees import invoice_month, merchants_to_invoice, previous_month

log = logging.getLogger(__name__)


def invoice_fees(now: datetime | None = None, month: str | None = None) -> Counter:
    """Invoice last month's fees (``month``: another ended month); how many invoices were written, skipped."""
    now = now or utcnow()
    month = month or previous_month(now)
    done: Counter = Counter()
    for merchant_id in merchants_to_invoice(month):
        try:
            with unit_of_work():
                claimed = db.session.execute(
                    select(Merchant.id).where(Merchant.id == merchant_id).with_for_update(skip_locked=True)
                ).scalar_one_or_none()
                invoice = invoice_month(merchant_id, month, now) if claimed is not None else None
        except Exception as exc:  # one merchant that cannot be invoiced must not stop every merchant after it
            log.exception("fee invoice failed", extra={"merchant_id": merchant_id, "month": month})
            _alert_once(merchant_id, month, exc)
            done["failed"] += 1
            continue
        done["invoiced" if invoice is not None else "skipped"] += 1
    db.session.commit()
    return done


def _alert_once(merchant_id: int, month: str, error: Exception) -> None:
    """An operator is told (once while the alert is open) that a merchant's invoice failed; the next run tries again."""
    try:
        with unit_of_work():
            alert_once(
                "fee_invoice_failed", f"merchant {merchant_id}", text=f"{month} invoice failed: {error!r}"[:2000]
            )
    except Exception:  # the log already says it
        log.exception("alert not raised", extra={"merchant_id": merchant_id})
