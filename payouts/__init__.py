"""The payout outbox: rows written with their ledger entry, sent later by the dispatcher.

Owns: creating a payout (row, external number and ledger entry in the
caller's transaction, before any call to WeChat), holding and releasing the
payouts of an order under refund, and reducing or cancelling a payout whose
money has certainly not left. The external number is made from the row id
and never changes; a retry after a definitive failure is a new row. The
settings it needs (``MoneySettings``) are passed in by the shell, never read
from the app here.
"""

from payouts.outbox import (
    cancel_or_reduce,
    enqueue_payout,
    external_no_for,
    hold_order_payouts,
    pending_payouts_for_rebate,
    release_order_payouts,
)
from payouts.settings import MoneySettings

__all__ = [
    "MoneySettings",
    "cancel_or_reduce",
    "enqueue_payout",
    "external_no_for",
    "hold_order_payouts",
    "pending_payouts_for_rebate",
    "release_order_payouts",
]
