class LedgerError(Exception):
    code = "ledger_error"
    kind: str | None = None  # errors with a kind are answered by the shell (409, …), the rest are bugs


class UnbalancedEntry(LedgerError):
    code = "unbalanced_entry"


class IdempotencyMismatch(LedgerError):
    """The key was posted before with different legs: a caller bug, never ignored."""

    code = "ledger_key_reused"
    # Reachable from outside: an Idempotency-Key reused, after our own record of it expired, for a
    # different amount. The first movement stands; the caller is told, not answered with a 500.
    kind = "conflict"
