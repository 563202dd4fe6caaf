"""Errors of the rebate operations. ``kind`` tells the web layer the status (422/404/409/429)."""


class RebateError(Exception):
    code = "rebate_error"
    kind = "conflict"

    def __init__(self, message: str, code: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.code = code or self.code
        self.kind = kind or self.kind


class NotFound(RebateError):
    code, kind = "not_found", "not_found"


class Invalid(RebateError):
    code, kind = "invalid", "invalid"


class StateConflict(RebateError):
    code, kind = "state_conflict", "conflict"


class BudgetExhausted(RebateError):
    code, kind = "budget_exhausted", "conflict"


class BudgetMoved(RebateError):
    """An award that reserved nothing found its budget taken by another payment since it was read (PostgreSQL).

    Raised at the payment's last statement, after its writes: the caller rolls the whole transaction back and
    applies the payment again with the budgets locked first (``apply_payment(..., lock_budgets=True)``), which
    decides within what is left. ``models.retried_once`` does both."""

    code, kind = "budget_moved", "conflict"


class DepositExhausted(BudgetExhausted):
    """A merchant-funded packet its funder's deposit cannot cover (with everything already reserved against it)."""

    code = "deposit_exhausted"

    def __init__(self, message: str, campaign_id: int):
        super().__init__(message)
        self.campaign_id = campaign_id
