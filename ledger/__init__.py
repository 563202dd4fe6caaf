"""Double-entry bookkeeping in integer fen (and points, in their own unit).

Owns: accounts, entries, postings and clearing flows. Invariants it keeps:
every entry's postings sum to zero in one unit, no posting is zero, an
idempotency key posts at most once (a repeat returns the first entry),
balances are derived from postings only, and a closed clearing flow nets to
zero. PostgreSQL enforces the zero sum again with a deferred constraint
trigger (see the migrations), so a bug here cannot commit an unbalanced entry.
Operations flush and never commit.
"""

from ledger.accounts import (
    AccountRef,
    account,
    account_id,
    account_ids,
    balance,
    balance_if_any,
    balances,
    existing_account_id,
    existing_account_ids,
    platform_account,
    ref,
)
from ledger.check import CheckReport, check_ledger
from ledger.errors import IdempotencyMismatch, LedgerError, UnbalancedEntry
from ledger.posting import Batch, Leg, close_flow, post, post_entry, reverse_entry

__all__ = [
    "AccountRef",
    "Batch",
    "CheckReport",
    "IdempotencyMismatch",
    "Leg",
    "LedgerError",
    "UnbalancedEntry",
    "account",
    "account_id",
    "account_ids",
    "balance",
    "balance_if_any",
    "balances",
    "existing_account_id",
    "existing_account_ids",
    "check_ledger",
    "close_flow",
    "platform_account",
    "post",
    "post_entry",
    "ref",
    "reverse_entry",
]
