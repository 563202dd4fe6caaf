"""API errors: ``{"error": code, "message": ...}`` with the status the guide names.

Lower layers raise their own errors carrying a stable ``code`` and a ``kind``
(``invalid``, ``not_found``, ``conflict``, ``limit``, ``forbidden``); this
module is the one place that turns a kind into an HTTP status.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from models.sql import RETRYABLE_PG_STATES, is_busy  # noqa: F401 - the web's name for them
from wechat.errors import WeChatCardCodeConsumed, WeChatCardCodeInvalid, WeChatError, WeChatRateLimited
from wechat.notifications import failure_response_body

log = logging.getLogger(__name__)
WECHAT_CALLBACKS = "/wechat/"  # answered in WeChat's own format, whatever goes wrong
CONSOLE = "/console"  # answered as pages (web/console)
PASSED_ON_HEADERS = {"allow", "retry-after", "www-authenticate"}

KIND_STATUS = {
    "invalid": 422,
    "not_found": 404,
    "conflict": 409,
    "limit": 429,
    "forbidden": 403,
    "unauthorized": 401,
    "unavailable": 503,
}


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: object = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status
        self.details = details
        self.retry_after = retry_after

    def body(self) -> dict:
        body = {"error": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class TooManyRequests(ApiError):
    status, code = 429, "rate_limited"


def from_domain(exc: Exception) -> ApiError | None:
    """Map a lower layer's error (one with ``code`` and ``kind``) to an ApiError."""
    kind = getattr(exc, "kind", None)
    if kind not in KIND_STATUS:
        return None
    return ApiError(
        str(exc),
        code=getattr(exc, "code", kind),
        status=KIND_STATUS[kind],
        retry_after=getattr(exc, "retry_after", None),
    )


BUSY_RETRY_AFTER_S = 1


def busy_text() -> Response:
    """A push endpoint's answer while the database is busy (503 + Retry-After): WeChat and WeCom retry it."""
    response = Response("busy, retry later", status=503, mimetype="text/plain")
    response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
    return response


def busy_error() -> ApiError:
    return ApiError(
        "the service is busy; try again shortly",
        code="busy",
        status=503,
        retry_after=BUSY_RETRY_AFTER_S,
    )


def error_response(err: ApiError):
    if request.path.startswith(CONSOLE):  # the console's errors are pages
        from web.console import error_page  # noqa: PLC0415 - the console builds on this module

        return error_page(err)
    on_callback = request.path.startswith(WECHAT_CALLBACKS)
    response = jsonify(failure_response_body(err.message) if on_callback else err.body())
    response.status_code = err.status
    if err.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(err.retry_after)))
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, error_response)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(ApiError(exc.description or exc.name, code=code, status=exc.code))
        for name, value in exc.get_headers():  # 405's Allow, above all
            if name.lower() in PASSED_ON_HEADERS:
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        mapped = from_domain(exc)
        if mapped is not None:
            return error_response(mapped)
        if is_busy(exc):
            log.warning("database busy: answered 503", extra={"error": str(getattr(exc, "orig", exc))})
            return error_response(busy_error())
        log.exception("unhandled error")
        return error_response(ApiError("internal error", code="internal_error", status=500))


# -- WeChat's errors, as the API error a client can act on ------------------------------

LOGIN_AGAIN = "call wx.login again"
# code → (status, error, what happened, what the person does: LOGIN_AGAIN, "retry …", or None)
LOGIN_ERRORS = {
    "40029": (401, "login_code_invalid", "the login code is invalid or expired", LOGIN_AGAIN),
    "40163": (401, "login_code_used", "the login code was already used", LOGIN_AGAIN),
    "45011": (429, "wechat_rate_limited", "WeChat rate limit reached", "retry in a minute"),
    "40226": (403, "wechat_user_blocked", "WeChat blocked this account as high-risk", None),
    "-1": (503, "wechat_busy", "WeChat is busy", "retry shortly"),
    # 朋友圈 snapshot-page preview: a virtual account, not a person. No account, token or packet for it.
    "SNAPSHOT_USER": (
        403,
        "snapshot_user",
        "this is a snapshot-page preview with a virtual WeChat account; open the mini-program "
        "(or the page) in full to sign in",
        None,
    ),
}


def _said(what: str, advice: str | None, again: str | None) -> str:
    """``what``, then what to do: ``advice``, or for a call that cannot be made again as it was (``again``: an OAuth
    callback, whose state is spent) ``again`` instead of signing in again or of a retry (kept: its when)."""
    if advice is not None and again is not None:
        advice = again + advice.removeprefix("retry") if advice.startswith("retry") else again
    return what if advice is None else f"{what}; {advice}"


def to_api_error(exc: WeChatError, *, again: str | None = None) -> ApiError:
    """A WeChat error as the API error a client can act on. ``again``: what the person does instead of signing in
    again or retrying the same call (an OAuth callback's link never works twice: "start the sign-in again")."""
    if exc.code in LOGIN_ERRORS:
        status, code, what, advice = LOGIN_ERRORS[exc.code]
        message = _said(what, advice, again)
        return ApiError(message, code=code, status=status, retry_after=60 if status in (429, 503) else None)
    if isinstance(exc, WeChatCardCodeInvalid):
        why = "WeChat knows no such card code, or cannot decrypt this encrypt_code"
        return ApiError(f"{why} ({exc.code})", code="card_code_invalid", status=422)
    if isinstance(exc, WeChatCardCodeConsumed):
        return ApiError("this card code was already redeemed", code="card_code_consumed", status=409)
    if isinstance(exc, WeChatRateLimited):
        message = _said("WeChat rate limit reached", "retry shortly", again)
        return ApiError(message, code="wechat_rate_limited", status=429, retry_after=5)
    if exc.retryable or exc.outcome_unknown:
        message = _said("WeChat is unavailable", "retry shortly", again)
        return ApiError(message, code="wechat_unavailable", status=503, retry_after=5)
    return ApiError(f"WeChat refused: {exc.code}", code="wechat_refused", status=502)
