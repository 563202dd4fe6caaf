"""What a rail adapter answers, and the adapter protocol the dispatcher drives.

An adapter builds the request once (inside the claim transaction, when it may
read identities), then sends and queries with NO database access: the
dispatcher calls it with no transaction open. Every WeChat answer is mapped
to one ``Outcome``; an answer the adapter does not understand is UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from models import Payout, Rail


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    WAITING_USER_CONFIRM = "waiting_user_confirm"
    IN_PROGRESS = "in_progress"  # accepted by WeChat, not final: query later
    UNKNOWN = "unknown"  # timeout, 5xx, unparseable, unknown code: query before any resend
    NOT_FOUND = "not_found"  # a query says WeChat never saw this number: resending it is safe
    RETRY = "retry"  # WeChat says retry with the same number (SYSTEMERROR, FREQ_LIMIT …)
    DEFER = "defer"  # retry the same number at ``retry_at`` (quiet hours, daily caps)
    FAILED = "failed"  # this number definitively failed: the money is owed again
    CANCELLED = "cancelled"  # the bill was cancelled (user never confirmed, or we cancelled it)
    PAUSE_RAIL = "pause_rail"  # merchant balance insufficient: stop the rail, alert
    PAUSE_STOCK = "pause_stock"  # a coupon stock's budget is spent: that stock waits (alerted once), the rail goes on
    GIVE_UP_USER = "give_up_user"  # risk control blocks this user on this rail
    CONFIG_ERROR = "config_error"  # our configuration or request is wrong: an operator must look
    FALLBACK = "fallback"  # this rail cannot carry this payout: use the fallback rail
    REFUSED = "refused"  # WeChat refused the request itself (400 PARAM_ERROR / INVALID_REQUEST): no retry
    UNCLAIMED = "unclaimed"  # nobody opened the red packet and WeChat refunded it: back to the user's balance
    MISMATCH = "mismatch"  # the answer is not about our payout (number, amount or openid differ): an operator
    # WeChat refused a call about a bill that may exist (a re-POST, a query, a cancel answered 400):
    # not a failure of the bill; the money stays in transit and an operator looks.
    ASK_OPERATOR = "ask_operator"


# In a result's details: an attempt of the call may have reached WeChat (a coupon's send failed over to the backup
# host, ``payouts.coupon_rail``); the payout is then in transit (``payouts.dispatch`` marks it sent), whatever the
# last answer said.
MAY_HAVE_REACHED = "may_have_reached_wechat"


@dataclass(frozen=True)
class RailResult:
    outcome: Outcome
    code: str | None = None
    message: str = ""
    wechat_ref: str | None = None
    package_info: str | None = None
    retry_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)


class RailAdapter(Protocol):
    name: str
    rate_per_second: int

    def build_request(self, payout: Payout, now: datetime) -> dict[str, Any] | RailResult: ...

    def send(self, external_no: str, request: dict[str, Any]) -> RailResult: ...

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult: ...


def disagreement(expected: dict[str, Any], answer: dict[str, Any]) -> str | None:
    """What in a WeChat answer differs from our payout (missing counts as different), or None."""
    wrong = [f"{k} {answer.get(k)!r} (ours {v!r})" for k, v in expected.items() if str(answer.get(k)) != str(v)]
    return "; ".join(wrong) or None


def summary(request: dict[str, Any]) -> str:
    """A short, masked description of a request for the attempt log."""
    shown = {
        k: v
        for k, v in request.items()
        if k not in {"openid", "re_openid", "user_name", "user_name_enc", "real_name", "wire"}
    }
    return str(shown)[:300]


# What each rail needs from the settings: jobs/payouts.py builds a rail exactly when it has them
# (tests/test_newcomer_path.py holds the two together); /admin/api/rails says which are missing.
RAIL_SETTINGS: dict[str, tuple[str, ...]] = {
    Rail.WECHAT_CHANGE: (),  # the WeChat Pay settings every mode has
    Rail.CASH_RED_PACKET: ("WECHAT_API_V2_KEY", "WECHAT_OA_APPID"),
    Rail.WECHAT_COUPON: ("WECHAT_COUPON_STOCKS",),
    Rail.CARD_COUPON: ("WECHAT_CARD_ID", "WECHAT_OA_APPID"),
    Rail.PROFIT_SHARING: (),  # and FUND_FLOW=service_provider; sent by jobs/profit_sharing.py, not the dispatcher
}


def unconfigured_because(rail: str, settings: Mapping[str, Any]) -> str | None:
    """Why a rail cannot send (the settings it lacks), or None when it is configured."""
    if rail == Rail.PROFIT_SHARING and settings.get("FUND_FLOW") != "service_provider":
        return "not configured: set FUND_FLOW=service_provider"
    missing = [name for name in RAIL_SETTINGS[rail] if not settings.get(name)]
    return f"not configured: set {' and '.join(missing)}" if missing else None
