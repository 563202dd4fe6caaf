class LedgerError(Exception):
    code = "ledger_error"


class UnbalancedEntry(LedgerError):
    code = "unbalanced_entry"


class IdempotencyMismatch(LedgerError):
    """The key was posted before with different legs: a caller bug, never ignored."""

    code = "ledger_key_reused"
