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


class DepositExhausted(BudgetExhausted):
    """A merchant-funded packet its funder's deposit cannot cover (with everything already reserved against it)."""

    code = "deposit_exhausted"

    def __init__(self, message: str, campaign_id: int):
        super().__init__(message)
        self.campaign_id = campaign_id
