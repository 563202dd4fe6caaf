"""The operator console: server-rendered pages at ``/console/`` over the admin API's own views.

* **One code path.** A page that reads or changes something runs the admin API's view through
  :func:`invoke`: the same role check, pydantic validation, operation, audit line and single commit
  as ``/admin/api`` (``web.api.endpoint``); only the transport differs (a form instead of JSON, a page
  instead of a body). Merchant staff are scoped exactly as in the API: another merchant's campaign,
  payout or report answers 404.
* **Sign-in** with an operator's personal token (web/console/auth.py) opens a server-side session
  (``console_sessions``); the browser keeps a signed, HttpOnly, SameSite=Lax cookie with the session's id
  and CSRF secret only. Every POST carries the form's CSRF token (Flask-WTF's ``generate_csrf`` /
  ``validate_csrf``) or is refused with 400 before anything runs.
* **Charts** are Apache ECharts, vendored under ``static/vendor`` (no CDN): a page puts an ECharts
  option as JSON in ``<script type="application/json">`` and ``static/console.js`` draws it; the
  Content-Security-Policy allows scripts from this origin only.
* Pages: ``campaigns.py`` (campaigns, rules, budget, what-if), ``operations.py`` (payouts, reconciliation,
  customer-service lookup, audit log, reviews, bans), ``reports.py`` (overview, a campaign's effect report),
  ``audiences.py`` (audiences, batch runs with a holdout, their lift), ``challenges.py`` (friends' challenges:
  the list, one challenge's day grid, prizes and settlement), ``statements.py`` (a merchant's monthly
  statement with its CSV, and deposit top-ups awaiting a second operator), ``merchants.py`` (a merchant's
  fee rate and WeChat Pay sub-merchant, its profit shares).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, Response, abort, current_app, flash, g, render_template, request
from werkzeug.datastructures import MultiDict

from models.base import BEIJING, beijing
from money import format_yuan
from web import idempotency
from web.api import _finish, validate, validate_query
from web.auth import current_operator
from web.errors import ApiError
from web.guards import EARLIEST, day_in_range

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

# The console's menu: (endpoint, label, roles that see it). A page module registers the endpoint; a
# link shows only when the page exists and the operator's role may open it (the page checks again).
PLATFORM = ("admin", "finance", "support")
EVERYONE = (*PLATFORM, "merchant_staff")
NAV: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("console.overview", "概览 Overview", EVERYONE),
    ("console.campaigns", "活动 Campaigns", EVERYONE),
    ("console.audiences", "人群 Audiences", EVERYONE),
    ("console.payouts", "打款处理 Payouts", PLATFORM),
    ("console.reconciliation", "对账 Reconciliation", ("admin", "finance")),
    ("console.lookup", "客服查询 Lookup", EVERYONE),
    ("console.reviews", "风控审核 Reviews", PLATFORM),
    ("console.bans", "封禁 Bans", PLATFORM),
    ("console.risk_rules", "风控规则 Risk rules", EVERYONE),  # staff: their campaigns' overrides
    ("console.communities", "可疑团伙 Communities", PLATFORM),
    ("console.audit", "审计日志 Audit log", ("admin", "finance")),
    ("console.operators", "操作员 Operators", ("admin",)),
    ("console.notices", "通知 Notices", PLATFORM),
    ("console.messages", "消息 Messages", PLATFORM),
    ("console.challenges", "挑战 Challenges", EVERYONE),  # staff: those their campaigns sponsor
    ("console.statements", "商户对账 Statements", EVERYONE),  # staff: their own merchant's
    ("console.merchant_settings", "商户设置 Merchant settings", EVERYONE),  # staff: their own fee rate
    ("console.profit_shares", "分账 Profit shares", EVERYONE),  # staff: their own merchant's
)


class ConsoleError(Exception):
    """An API view refused what a page asked (the ApiError it raised, kept for the page to show)."""

    def __init__(self, error: ApiError):
        super().__init__(error.message)
        self.error = error

    @property
    def status(self) -> int:
        return self.error.status

    @property
    def field_errors(self) -> dict[str, str]:
        """A 422's problems by field (``rules.roles.0.rate_bps`` → "…"), for the form to show beside each."""
        details = self.error.details if isinstance(self.error.details, list) else []
        return {d.get("field", ""): d.get("problem", "") for d in details if isinstance(d, dict)}


def invoke(view: Callable, *, body: dict | None = None, query: dict | None = None, **path: Any) -> Any:
    """Run an admin API view (``web.api.endpoint``) as the signed-in operator and return its JSON body.

    The same role check (403), the same body/query models (422 with every problem), the same view and
    operation (404 outside the operator's merchant, 409 …) and one commit when it succeeds. A refusal
    raises :class:`ConsoleError` carrying the API's error; a page shows it (or answers it: a 404 stays
    a 404)."""
    api = view._api
    try:
        operator = current_operator(api["roles"], mutating=api["mutating"])
        if operator.merchant_id is not None:
            from web.api import _note_merchant_staff  # noqa: PLC0415 - the API's own risk note for staff

            _note_merchant_staff(operator.id, operator.merchant_id)
        kwargs = dict(path)
        if api["body"] is not None:
            kwargs["body"] = validate(api["body"], body if body is not None else {})
        if api["query"] is not None:  # as the API reads a query string: a number is written in digits (not ``1_0``)
            given = {k: _query_text(v) for k, v in (query or {}).items() if v not in (None, "")}
            kwargs["query"] = validate_query(api["query"], given)
        key = request.form.get("form_key") if api["mutating"] and request.method == "POST" else None
        if api["require_key"] and not key:  # as the API's Idempotency-Key: a view that moves money runs once per form
            raise ApiError(
                "this form moves money and has lost its key: reload the page and send it again",
                code="idempotency_key_required",
                status=422,
            )
        if key:  # the form's own key: a double click or a resent form replays the first answer
            route = f"console {request.endpoint} {view.__name__}"
            response = idempotency.run(
                f"operator:{operator.id}",
                route,
                key,
                lambda: _finish(view.__wrapped__, kwargs, True, False, status=api["status"]),
            )
        else:
            response = _finish(view.__wrapped__, kwargs, api["mutating"], status=api["status"])
    except ApiError as err:
        raise ConsoleError(err) from err
    if response.status_code >= 400:
        raise ConsoleError(ApiError(response.get_data(as_text=True), status=response.status_code))
    return response.get_json() if response.is_json else response


def _query_text(value: Any) -> Any:
    """A page's query value as a query string carries it: a number the page worked out itself (an offset, a limit)
    as its digits, for ``validate_query`` to read like one a person typed; text and flags as they are."""
    return str(value) if type(value) is int else value


def may(view: Callable) -> bool:
    """Whether the signed-in operator's role may use an API view (to show its form; the view checks again)."""
    operator = g.get("operator")
    return operator is not None and operator.role in view._api["roles"]


def allowed(view: Callable) -> None:
    """A page or form for a view the operator's role may not use answers 403, as the API would."""
    if not may(view):
        abort(403)


def read(view: Callable, *, query: dict | None = None, **path: Any) -> Any:
    """:func:`invoke` for a page that only shows what a view answers: a 404 (not yours, or no such
    thing) is the page's 404, a 403 its 403."""
    try:
        return invoke(view, query=query, **path)
    except ConsoleError as exc:
        if exc.status in (403, 404):
            abort(exc.status)
        raise


def act(view: Callable, *, body: dict | None = None, done: str = "", **path: Any) -> Any | None:
    """:func:`invoke` for a form: success flashes ``done`` and returns the body; a refusal flashes the
    API's message (and its field problems), keeps its status in ``g.refused_status`` and returns None, so the
    page shows the form again."""
    try:
        result = invoke(view, body=body, **path)
    except ConsoleError as exc:
        if exc.status == 404:
            abort(404)
        problems = "; ".join(f"{field}: {problem}" for field, problem in exc.field_errors.items())
        flash(f"{exc.error.message}{' — ' + problems if problems else ''}", "error")
        g.form_errors = exc.field_errors
        g.refused_status = exc.status  # for a page shown again with the API's status (422, 409 …)
        return None
    if done:
        flash(done, "ok")
    return result


MAX_OFFSET = 10_000_000  # a list page further than this is the first page


def whole_number(raw: str | None, most: int) -> int | None:
    """A whole number typed into a query or a form, 0 to ``most``; None for anything else (a sign, a fraction, a
    word). Never ``int()`` on more digits than ``most`` has: Python refuses a string of over 4,300 digits with
    an error (it was a 500), and an id that long is no id."""
    text = (raw or "").strip()
    if not text.isdecimal():
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(most)):
        return None
    value = int(digits)
    return value if value <= most else None


def page_offset() -> int:
    """The list page's ``offset`` query parameter; anything but a whole number up to MAX_OFFSET is the first page."""
    return whole_number(request.args.get("offset"), MAX_OFFSET) or 0


def day_start(day: date, days: int = 0) -> str:
    """The instant a Beijing day starts (``days`` later), for an API's instant. The first day the date fields take
    (2000-01-01) starts at 1999-12-31 16:00 UTC, before the earliest instant the API takes: it starts at that one
    (nothing happened before it), not a 422 for a day the page accepts."""
    return max(datetime.combine(day + timedelta(days=days), time.min, BEIJING), EARLIEST).isoformat()


def day_field(text: str, days: int = 0) -> str | None:
    """A date field (a Beijing day, YYYY-MM-DD) as the instant it starts (``days`` later: ``day_start``); anything
    else goes to the API as typed (empty: None), to be refused with the API's own message."""
    try:
        day = day_in_range(date.fromisoformat(text))
    except ValueError:  # not a day of 2000 to 2099 (9999-12-31 has no next day)
        return text or None
    return day_start(day, days)


def form_data(names: tuple[str, ...] | None = None) -> MultiDict:
    """The posted form (without its CSRF token)."""
    data = MultiDict(request.form)
    data.pop("csrf_token", None)
    return data if names is None else MultiDict({k: v for k, v in data.items() if k in names})


def render(template: str, **context: Any) -> str:
    return render_template(template, **context)


@bp.app_template_filter("yuan")
def yuan_filter(amount_fen: int | None) -> str:
    return "—" if amount_fen is None else "¥" + format_yuan(int(amount_fen))


@bp.app_template_filter("beijing")
def beijing_filter(value: Any) -> str:
    """An ISO timestamp or datetime shown in Beijing time, to the minute."""
    if value in (None, ""):
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return beijing(moment).strftime("%Y-%m-%d %H:%M")


@bp.app_template_filter("percent")
def percent_filter(ratio: float | None, digits: int = 1) -> str:
    """A ratio (0.123) as "12.3%"; no ratio (a zero base) as "—", never infinity."""
    return "—" if ratio is None else f"{ratio * 100:.{digits}f}%"


@bp.app_template_filter("bps")
def bps_filter(value: int | None) -> str:
    """Basis points (1234) as "12.34%", exactly; no ratio (a zero base) as "—", never infinity."""
    if value is None:
        return "—"
    whole, part = divmod(abs(int(value)), 100)
    return f"{'-' if value < 0 else ''}{whole}.{part:02d}%"


def _form_key() -> str:
    return secrets.token_urlsafe(16)


@bp.context_processor
def _console_context() -> dict:
    from flask_wtf.csrf import generate_csrf  # noqa: PLC0415

    operator = g.get("operator")
    nav = []
    if operator is not None:
        nav = [
            (endpoint, label)
            for endpoint, label, roles in NAV
            if endpoint in current_app.view_functions and operator.role in roles
        ]
    return {
        "csrf_token": generate_csrf,
        "form_key": _form_key,
        "operator": operator,
        "nav": nav,
        "form_errors": g.get("form_errors", {}),
    }


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)


@bp.after_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "console.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(ConsoleError)
def _refused(exc: ConsoleError) -> Response:
    return error_page(exc.error)


def error_page(err: ApiError) -> Response:
    """An error under /console/ as a page (web/errors.py sends console paths here)."""
    details = err.details if isinstance(err.details, list) else []
    problems = [(d.get("field", ""), d.get("problem", "")) for d in details if isinstance(d, dict)]
    body = render_template("console/error.html", status=err.status, message=err.message, problems=problems)
    response = Response(body, status=err.status, mimetype="text/html")
    if err.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(err.retry_after)))
    return _security_headers(response)


from web.console import (  # noqa: E402, F401 - they add the pages
    audiences,
    auth,
    campaigns,
    challenges,
    merchants,
    messages,
    notices,
    operations,
    reports,
    risk,
    statements,
)
