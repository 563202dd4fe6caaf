"""Console sign-in: an operator's personal token once, then a server-side session and a cookie.

The cookie (Flask's signed session cookie, HttpOnly, SameSite=Lax, Secure outside simulator mode,
path ``/console``) carries the session's random id and the CSRF secret only; the token is never stored
in it. A session ends when the operator signs out, after ``CONSOLE_IDLE_MINUTES`` unused, after
``CONSOLE_SESSION_HOURS`` in all, or at once when the token it was opened with is revoked or expires,
or the operator is disabled. Sign-in, sign-out and refused sign-ins are audited.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import current_app, flash, g, redirect, request, session, url_for
from flask_wtf.csrf import CSRFError, validate_csrf
from sqlalchemy import func, select, update
from wtforms import ValidationError

from models import AuditLog, ConsoleSession, db, utcnow
from models.operators import Actor, audit
from models.sql import one_at_a_time
from risk.net import limit_key
from web.api import client_ip
from web.auth import forget_other_requests, operator_token, token_is_live
from web.console import bp, render
from web.errors import ApiError
from web.guards import local_path

PUBLIC_ENDPOINTS = {"console.sign_in", "console.static"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
SEEN_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session
# Refused sign-ins are audited, at most this many per network address in the window; past it the form
# answers 429 and writes nothing (tokens are 256-bit: this only keeps the audit log from being flooded).
# A network address is an IPv4 address or an IPv6 address's /64 (``risk.net.limit_key``, as every per-address limit):
# one machine picks any of its /64's 2**64 addresses, one per guess. The refusal's ``target_id`` names it.
REFUSED_SIGN_INS = 10
REFUSED_WINDOW = timedelta(minutes=10)


def _refused_lately(network: str) -> int:
    return db.session.execute(
        select(func.count())
        .select_from(AuditLog)
        .where(
            AuditLog.action == "console.sign_in_refused",
            AuditLog.target_id == network,
            AuditLog.created_at > utcnow() - REFUSED_WINDOW,
        )
    ).scalar_one()


def _session_row(sid: str) -> ConsoleSession | None:
    return db.session.execute(select(ConsoleSession).where(ConsoleSession.id == sid)).scalar_one_or_none()


def configure(app) -> None:
    """The console's cookie and CSRF settings (called by the app factory)."""
    secure = app.config.get("CONSOLE_COOKIE_SECURE")
    if secure is None:
        secure = app.config.get("WECHAT_MODE") != "simulator"
    app.config.update(
        SESSION_COOKIE_NAME="console_session",
        SESSION_COOKIE_PATH="/console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(secure),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=app.config["CONSOLE_SESSION_HOURS"]),
        WTF_CSRF_TIME_LIMIT=app.config["CONSOLE_SESSION_HOURS"] * 3600,
        WTF_CSRF_FIELD_NAME="csrf_token",
    )


def _live(row: ConsoleSession | None) -> bool:
    if row is None or row.ended_at is not None:
        return False
    now = utcnow()
    idle = timedelta(minutes=current_app.config["CONSOLE_IDLE_MINUTES"])
    return row.expires_at > now and row.last_seen_at > now - idle and token_is_live(row.token) and row.operator.active


def _same_origin() -> bool:
    """A browser names the page a POST comes from (``Origin``; older ones only ``Referer``): it must be
    this console's own origin. Neither header (a non-browser client) leaves the CSRF token to decide."""
    origin = request.headers.get("Origin")
    if origin is None and request.referrer:
        parts = urlsplit(request.referrer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin is None or origin == request.host_url.rstrip("/")


def _refuse_bad_form() -> None:
    """Before anything runs: the CSRF token, the origin, and no NUL character in the form (PostgreSQL
    text cannot hold one; the API's JSON guard refuses it the same way)."""
    if not _same_origin():
        raise ApiError("this form was sent from another site", code="csrf_failed", status=400)
    if any("\x00" in key or "\x00" in value for key, value in request.form.items(multi=True)):
        raise ApiError("form fields may not contain NUL characters", code="invalid_form", status=422)


@bp.before_request
def _check_csrf_then_session():
    g.pop("csrf_token", None)  # Flask-WTF's per-request cache; ``g`` can outlive a request (tests, scripts)
    if request.method not in SAFE_METHODS and request.endpoint != "console.static":
        _refuse_bad_form()
        try:
            validate_csrf(request.form.get("csrf_token"))
        except (ValidationError, CSRFError) as exc:
            raise ApiError(
                f"this form's security token is missing or out of date ({exc}); reload the page and try again",
                code="csrf_failed",
                status=400,
            ) from None
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    sid = session.get("sid")
    row = _session_row(sid) if isinstance(sid, str) else None
    if not _live(row):
        if row is not None and row.ended_at is None:
            row.ended_at = utcnow()
            db.session.commit()
        session.pop("sid", None)
        if sid is not None:
            flash("你的登录已过期，请重新登录 · Your session ended; sign in again.", "error")
        nxt = request.full_path.rstrip("?") if request.method in SAFE_METHODS else None
        return redirect(url_for("console.sign_in", next=nxt))
    forget_other_requests()  # web.auth: nothing of an earlier request's identity answers for this one
    g.operator, g.console_session = row.operator, row
    if utcnow() - row.last_seen_at >= SEEN_EVERY:
        row.last_seen_at = utcnow()
        db.session.commit()
    return None


def _printable(text: str) -> str:
    """A header as stored: without control characters (PostgreSQL text holds no NUL: a User-Agent with one was a 500
    at sign-in wherever a server passes it on; gunicorn refuses it)."""
    return "".join(c for c in text if c >= " " and c != "\x7f")


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never another host (no open redirect)."""
    if target and target.startswith("/console/") and (local_path(target) or "").startswith("/console/"):
        return target
    return url_for("console.overview") if "console.overview" in current_app.view_functions else url_for("console.home")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    if request.method == "GET":
        return render("console/sign_in.html", next=request.args.get("next", ""))
    token = (request.form.get("token") or "").strip()
    try:
        if not token or len(token) > 200:
            raise ApiError("enter your personal operator token", code="invalid_token", status=401)
        row = operator_token(token)
    except ApiError as err:
        db.session.rollback()
        network = limit_key(client_ip())
        one_at_a_time(f"console.sign_in_refused:{network}")  # counted one at a time, until this one is written
        if _refused_lately(network) >= REFUSED_SIGN_INS:
            raise ApiError(
                "too many refused sign-ins from this address; wait a few minutes",
                code="rate_limited",
                status=429,
                retry_after=int(REFUSED_WINDOW.total_seconds()),
            ) from None
        db.session.add(
            AuditLog(
                operator_id=None,
                action="console.sign_in_refused",
                target_type="console",
                target_id=network,
                reason=err.code,
                details={},
                ip=client_ip(),
            )
        )
        db.session.commit()
        if err.code == "operator_unconfirmed":  # the token is right: the account waits for a second admin
            flash("账号待确认 · This account works once a second admin confirms it (Operators page).", "error")
        else:
            flash("令牌无效 · That token does not sign anyone in (unknown, revoked, expired or disabled).", "error")
        return render("console/sign_in.html", next=request.form.get("next", "")), err.status
    now = utcnow()
    hours = current_app.config["CONSOLE_SESSION_HOURS"]
    row_session = ConsoleSession(
        id=secrets.token_urlsafe(32),
        operator_id=row.operator_id,
        token_id=row.id,
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=hours),
        ip=client_ip(),
        user_agent=_printable(request.user_agent.string or "")[:200],
    )
    db.session.add(row_session)
    audit(Actor(row.operator, client_ip()), "console.sign_in", "console_session", row_session.id[:8], token=row.label)
    db.session.commit()
    previous = session.get("sid")
    if isinstance(previous, str):  # signing in again in this browser ends the session it had
        db.session.execute(
            update(ConsoleSession)
            .where(ConsoleSession.id == previous, ConsoleSession.ended_at.is_(None))
            .values(ended_at=utcnow())
        )
        db.session.commit()
    session.clear()  # a new session id and a new CSRF secret: nothing from before sign-in carries over
    g.pop("csrf_token", None)
    session.permanent = True
    session["sid"] = row_session.id
    return redirect(_safe_next(request.form.get("next")))


@bp.route("/sign-out", methods=["POST"])
def sign_out():
    row = g.console_session
    row.ended_at = utcnow()
    audit(Actor(g.operator, client_ip()), "console.sign_out", "console_session", row.id[:8])
    db.session.commit()
    session.clear()
    flash("已退出 · Signed out.", "ok")
    return redirect(url_for("console.sign_in"))


@bp.route("/")
def home():
    if "console.overview" in current_app.view_functions:
        return redirect(url_for("console.overview"))
    return render("console/home.html")
