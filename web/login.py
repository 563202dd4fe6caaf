"""Sign-in: mini-program ``wx.login`` codes and official-account web OAuth.

A person is one ``User`` across both: an openid is per appid (``UserIdentity``),
and a ``unionid`` links the identities of one person. ``session_key`` stays on
the server, encrypted at rest. No database transaction is open while WeChat
is called: both sign-ins go through ``call_between_commits`` (commit, exchange
the code, then write the user and commit). Neither route needs a sign-in: each
network address may log in and start OAuth sign-ins only so often a minute
(``take_minute_slot``). A person has one identity per appid.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from flask import Blueprint, current_app, redirect, request
from pydantic import Field
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from models import OAuthState, User, UserIdentity, call_between_commits, db, utcnow
from rebate.triggers import on_registered
from risk import Claimant, Slot, identifiers
from risk.limits import take_slots
from risk.net import limit_key
from web import wechat
from web.api import client_ip, endpoint
from web.auth import current_user, issue_user_token, token_channel
from web.errors import ApiError, Conflict, TooManyRequests, ValidationFailed, to_api_error
from web.growth_api import device_id, platform_limits
from web.guards import local_path
from web.openapi import ERROR, UNAVAILABLE, UPSTREAM_REFUSED, documented
from web.schemas import Model
from wechat.errors import WeChatError

bp = Blueprint("login", __name__)
log = logging.getLogger(__name__)

STATE_TTL = timedelta(minutes=10)
# An OAuth callback WeChat refuses: its state is used before the code goes to WeChat, so the link never works again
START_AGAIN = "start the sign-in again"
# Each new state clears up to this many spent ones (expired, used or not): a state is worth nothing after its
# ``expires_at``, and /oauth/authorize needs no sign-in, so a crawler or a script following it must not grow the
# table for ever. Two for one keeps the table near the live states alone, whatever the traffic.
STATES_CLEARED_PER_NEW = 2
STATE_COOKIE = "oauth_state"  # the state of the sign-in this browser started (``oauth_authorize``)
SCOPES = ("snsapi_base", "snsapi_userinfo")


CODE_MOST = 128  # a wx.login or OAuth code: WeChat's are 32 letters and digits
CODE_PATTERN = r"^[A-Za-z0-9_\-]+$"


class Login(Model):
    code: Annotated[str, Field(min_length=1, max_length=CODE_MOST, pattern=CODE_PATTERN)]


ADDRESS_KEY_MOST = 64  # of a limit key's address part: an address, an IPv6 /64, or what a proxy wrote (cut)


def take_minute_slot(what: str, setting: str, code: str, doing: str) -> None:
    """One of this network address's ``setting`` sign-in steps a UTC minute (0: no limit), or 429 ``code`` with
    ``Retry-After`` (to the minute's end). Neither route needs a sign-in, and each costs something (a state row, a
    call to WeChat): a script on one address must not flood them.

    The claim limits' mechanism (``risk.limits``: one conditional upsert on ``limit_counters``, keyed by the
    address as every per-address limit is, ``risk.net.limit_key``), so every worker and process counts against
    the same row; it commits with the caller's transaction, and a refusal takes nothing (the caller writes
    nothing either: it raises before)."""
    most = current_app.config[setting]
    if not most:
        return
    now = utcnow()
    address = (limit_key(client_ip()) or "unknown")[:ADDRESS_KEY_MOST]
    refusal = f"at most {most} {doing} a minute from one network address; try again in a minute"
    slot = Slot(f"{what}:ip-minute:{address}", now.strftime("%Y-%m-%dT%H:%M"), code, refusal, 60 - now.second, most)
    if take_slots([slot], now):
        raise TooManyRequests(refusal, code=code, retry_after=slot.retry_after)


def user_json(user: User) -> dict:
    # ``region``: what the person said (``PUT /api/v1/me/region``), null until then: region-limited campaigns need it
    return {"id": user.id, "nickname": user.nickname, "created_at": user.created_at.isoformat(), "region": user.region}


def _identity(appid: str, openid: str) -> UserIdentity | None:
    stmt = select(UserIdentity).where(UserIdentity.appid == appid, UserIdentity.openid == openid)
    return db.session.execute(stmt).scalar_one_or_none()


def _identity_of(user_id: int, appid: str) -> int | None:
    stmt = select(UserIdentity.id).where(UserIdentity.user_id == user_id, UserIdentity.appid == appid)
    return db.session.execute(stmt).scalar_one_or_none()


def _attach(appid: str, openid: str, unionid: str | None, channel: str, origin: tuple) -> UserIdentity:
    user = None
    if unionid:
        user = db.session.execute(select(User).where(User.unionid == unionid)).scalar_one_or_none()
    if user is not None and _identity_of(user.id, appid) is not None:
        # One openid per person and app (WeChat never gives a person two; the database holds it too, migration 0047):
        # an answer naming another one for this unionid is refused, never a second identity a payment or a notice
        # might be sent to. Operators find it in the log.
        log.warning("identity_conflict", extra={"user_id": user.id, "appid": appid})
        raise Conflict(
            "WeChat named another account of this app for a person signed in with one already; nothing was changed, "
            "ask support",
            code="identity_conflict",
        )
    if user is None:
        user = User(unionid=unionid)
        db.session.add(user)
        db.session.flush()
        # Newcomer packets, in the same transaction as the person, under the platform-wide claim limits
        # of the network address and device the login came from.
        on_registered(user, utcnow(), channel, Claimant(user.id, *origin), limits=platform_limits())
    identity = UserIdentity(user_id=user.id, appid=appid, openid=openid, channel=channel)
    db.session.add(identity)
    db.session.flush()
    return identity


def sign_in(
    appid: str,
    openid: str,
    unionid: str | None,
    channel: str,
    session_key: str | None = None,
    origin: tuple[str | None, str | None] = (None, None),
) -> User:
    """The user behind this openid, created (or linked by unionid) on first sight. Flushes only.

    ``origin`` is the (network address, device) the login came from: newcomer packets count against them.
    """
    identity = _identity(appid, openid)
    # Three tries: a unionid taken by the other app's first sign-in, then this openid taken by a sign-in of its own
    # that joined that person meanwhile. Each conflict is a committed row the next try finds.
    for last in (False, False, True):
        if identity is not None:
            break
        try:
            with db.session.begin_nested():
                identity = _attach(appid, openid, unionid, channel, origin)
        except IntegrityError:
            # A concurrent first login of the same person won: with this openid (its identity is there now), or
            # through the other app with the same unionid (its person is there now: this openid joins them).
            if last:
                raise
            identity = _identity(appid, openid)
    user = identity.user
    if unionid and user.unionid is None:
        taken = db.session.execute(select(User.id).where(User.unionid == unionid)).first()
        if taken is None:
            try:
                with db.session.begin_nested():
                    user.unionid = unionid
            except IntegrityError:  # the other app's first sign-in of this person took it meanwhile: theirs
                pass
    if session_key is not None:
        identity.session_key = session_key
    identifiers.note(identifiers.USER, user.id, origin[1], origin[0], utcnow())
    db.session.flush()
    return user


@endpoint(bp, "/api/v1/auth/login", methods=["POST"], auth=None, body=Login, upstream=True, tags=("auth",))
def login(body: Login):
    """Exchange a mini-program ``wx.login`` code for our bearer token (``LOGIN_PER_IP_PER_MINUTE`` a network
    address: then 429 ``login_rate_limited``)."""
    client = wechat().mini_program
    appid, origin = current_app.config["WECHAT_APPID"], (client_ip(), device_id())

    def counted() -> None:  # committed before the call: a refused code (or a flood of them) costs WeChat a call too
        take_minute_slot("login", "LOGIN_PER_IP_PER_MINUTE", "login_rate_limited", "logins")

    def exchange(_: None) -> dict:
        try:
            return client.code_to_session(body.code)
        except WeChatError as exc:
            raise to_api_error(exc) from None

    def sign_in_and_issue(_: None, session: dict) -> dict:
        user = sign_in(
            appid, session["openid"], session.get("unionid"), "mini_program", session["session_key"], origin=origin
        )
        if not user.is_active:  # raised inside the record step: its sign-in is rolled back
            raise ApiError("this account is banned", code="user_banned", status=403)
        return {"token": issue_user_token(user, "mini_program"), "user": user_json(user)}

    return call_between_commits(counted, exchange, sign_in_and_issue)


# -- official-account web OAuth ------------------------------------------------------


# Paths that redirect on to another host themselves: the token in the fragment would travel with the browser.
REDIRECTING_PATHS = ("/oauth/", "/_sim/")


NEXT_MOST = 512  # oauth_states.next_url


def _safe_next(value: str | None) -> str:
    """Only a path on this site: no scheme, no host, no ``//`` (no open redirect), no control character (it could
    not be a ``Location``), no fragment, and none of the site's own redirectors (``REDIRECTING_PATHS``)."""
    value = value or "/"
    if len(value) > NEXT_MOST:  # refused, never cut: a cut path is not the one checked (``/oauth/a…/../x``)
        raise ValidationFailed(f"next is longer than {NEXT_MOST} characters", code="invalid_next")
    if "#" in value:  # the callback puts the token in the fragment (``next#token=…``): a second one hides it
        raise ValidationFailed("next has no fragment (#): the sign-in's token goes there", code="invalid_next")
    path = local_path(value)
    # ``//`` once decoded (``/%2F_sim/``): the server merges the slashes and routes it as ``/_sim/``, a redirector.
    if path is None or path.startswith("//") or path.lower().startswith(REDIRECTING_PATHS):
        raise ValidationFailed("next must be a path on this site", code="invalid_next")
    return value


def _oauth():
    client = wechat().oauth
    if client is None:
        raise ApiError("official-account OAuth is not configured", code="oauth_not_configured", status=503)
    return client


REDIRECT = {"Location": {"description": "where to go next", "schema": {"type": "string"}}}


@bp.get("/oauth/authorize")
@documented(
    summary="Redirect to WeChat's official-account authorize page with a fresh state",
    tags=["auth"],
    parameters=[
        {"name": "scope", "in": "query", "required": False, "schema": {"enum": list(SCOPES)}},
        {"name": "next", "in": "query", "required": False, "schema": {"type": "string"}},
    ],
    responses={
        "302": {"description": "to WeChat's authorize page", "headers": REDIRECT},
        "4XX": ERROR,
        "503": UNAVAILABLE,
    },
)
def oauth_authorize():
    """Redirect to WeChat's authorize page with a fresh server-side ``state``."""
    client = _oauth()
    scope = request.args.get("scope", "snsapi_base")
    if scope not in SCOPES:
        raise ValidationFailed(f"scope must be one of {', '.join(SCOPES)}", code="invalid_scope")
    next_url = _safe_next(request.args.get("next"))
    take_minute_slot("oauth", "OAUTH_AUTHORIZE_PER_IP_PER_MINUTE", "oauth_rate_limited", "sign-ins started")
    response = _to_authorize(client, scope, next_url)
    db.session.commit()
    return response


def _to_authorize(client, scope: str, next_url: str):
    """A fresh state (flushed; the caller commits) and the redirect to WeChat's authorize page that carries it."""
    state = secrets.token_hex(16)
    now = utcnow()
    _clear_spent_states(now)
    db.session.add(OAuthState(state=state, scope=scope, next_url=next_url, created_at=now, expires_at=now + STATE_TTL))
    db.session.flush()
    redirect_uri = wechat().public_base_url + "/oauth/callback"
    response = redirect(client.authorize_url(redirect_uri, scope=scope, state=state))
    # The state is this browser's: a callback link made from someone else's login (a login CSRF: the victim signed
    # in as the attacker) lacks the cookie. Lax: WeChat's redirect back is a top-level navigation, which carries it.
    # One cookie per sign-in (two tabs signing in at once each keep their own), for the callback's path only, on
    # the host and path prefix of PUBLIC_BASE_URL: open /oauth/authorize there.
    response.set_cookie(
        _state_cookie(state),
        state,
        max_age=int(STATE_TTL.total_seconds()),
        path=_callback_path(),
        secure=wechat().public_base_url.startswith("https://"),
        httponly=True,
        samesite="Lax",
    )
    return response


def _clear_spent_states(now) -> None:
    """Delete a few states past their ``expires_at`` (oldest first); rows another request is clearing are skipped
    (PostgreSQL: ``SKIP LOCKED``), so two sign-ins at once never wait for, nor deadlock on, each other."""
    spent = (
        select(OAuthState.id)
        .where(OAuthState.expires_at <= now)
        .order_by(OAuthState.expires_at)
        .limit(STATES_CLEARED_PER_NEW)
        .with_for_update(skip_locked=True)
    )
    db.session.execute(delete(OAuthState).where(OAuthState.id.in_(spent)))


def _state_cookie(state: str) -> str:
    return f"{STATE_COOKIE}_{state[:12]}"


def _callback_path() -> str:
    return urlsplit(wechat().public_base_url).path.rstrip("/") + "/oauth/callback"


def _consume_state(state: str) -> OAuthState:
    """Mark the state used exactly once (a replayed callback loses the race); the caller commits."""
    now = utcnow()
    used = db.session.execute(
        update(OAuthState)
        .where(OAuthState.state == state, OAuthState.used_at.is_(None), OAuthState.expires_at > now)
        .values(used_at=now)
    ).rowcount
    if used != 1:
        raise ApiError("unknown, used or expired OAuth state; start again", code="invalid_oauth_state", status=400)
    return db.session.execute(select(OAuthState).where(OAuthState.state == state)).scalar_one()


@bp.get("/oauth/callback")
@documented(
    summary="WeChat's redirect back: sign the person in and go to next#token=…",
    tags=["auth"],
    parameters=[
        {
            "name": "code",
            "in": "query",
            "required": True,
            "schema": {"type": "string", "maxLength": CODE_MOST, "pattern": CODE_PATTERN},
        },
        {"name": "state", "in": "query", "required": True, "schema": {"type": "string"}},
    ],
    responses={
        "302": {
            "description": "back to next, with #token=<user token>; or, for a silent (snsapi_base) sign-in of someone "
            "not known yet, on to WeChat's authorize page again with snsapi_userinfo (its unionid links the person)",
            "headers": REDIRECT,
        },
        "4XX": ERROR,
        "502": UPSTREAM_REFUSED,
        "503": UNAVAILABLE,
    },
)
def oauth_callback():
    """Check ``state``, exchange the code, sign the person in, go back to ``next`` with the token."""
    client = _oauth()
    code, state = request.args.get("code", ""), request.args.get("state", "")
    if not code or not state:
        raise ValidationFailed("code and state are required", code="invalid_oauth_callback")
    if len(state) > 64:
        raise ValidationFailed("state is longer than the 64 characters we ever send", code="invalid_oauth_callback")
    if len(code) > CODE_MOST or not re.fullmatch(CODE_PATTERN, code):  # before the state is spent or WeChat asked
        raise ValidationFailed(
            f"code is not one WeChat issues: 1 to {CODE_MOST} letters, digits, - or _", code="invalid_oauth_callback"
        )
    if not hmac.compare_digest(request.cookies.get(_state_cookie(state), "").encode(), state.encode()):
        raise ApiError(
            "this sign-in was not started in this browser; start again", code="invalid_oauth_state", status=400
        )
    appid, origin = current_app.config["WECHAT_OA_APPID"], (client_ip(), device_id())  # a bad device token: 422 here

    def consume() -> tuple[str, str]:  # committed before the call: a replayed callback finds it used
        row = _consume_state(state)
        return row.next_url, row.scope

    def exchange(prepared: tuple[str, str]) -> tuple[str, str | None]:
        try:
            grant = client.exchange_code(code)
            unionid = grant.get("unionid")
            if prepared[1] == "snsapi_userinfo" and not unionid:
                unionid = client.fetch_userinfo(grant["access_token"], grant["openid"]).get("unionid")
        except WeChatError as exc:
            raise to_api_error(exc, again=START_AGAIN) from None  # this link's state is spent: never "retry"
        return grant["openid"], unionid

    def sign_in_and_redirect(prepared: tuple[str, str], person: tuple[str, str | None]):
        if prepared[1] == "snsapi_base" and person[1] is None and _identity(appid, person[0]) is None:
            # A silent grant names the openid only: someone we do not know yet may be a person we know through the
            # mini-program (their unionid links them). Asked once more with their consent (snsapi_userinfo, which
            # names it), never made a second person with a second newcomer packet.
            return _to_authorize(client, "snsapi_userinfo", prepared[0])
        user = sign_in(appid, person[0], person[1], "official_account", origin=origin)
        if not user.is_active:  # raised inside the record step: its sign-in is rolled back
            raise ApiError("this account is banned", code="user_banned", status=403)
        return redirect(f"{prepared[0]}#token={issue_user_token(user, 'official_account')}")

    response = call_between_commits(consume, exchange, sign_in_and_redirect)
    response.delete_cookie(_state_cookie(state), path=_callback_path())  # used: the browser forgets it
    return response


@endpoint(bp, "/api/v1/auth/sign-out-everywhere", methods=["POST"], tags=("auth",))
def sign_out_everywhere():
    """End every session of the signed-in person (a lost phone): every token issued to them before is refused from
    now on (401 ``token_revoked``), on every device and channel; answers a new token for the device that asked."""
    user = current_user()
    db.session.execute(
        update(User)
        .where(User.id == user.id)
        .values(token_generation=User.token_generation + 1)
        .execution_options(synchronize_session=False)
    )
    db.session.refresh(user, ["token_generation"])  # two at once: each answers the generation it made
    return {"token": issue_user_token(user, token_channel())}


@bp.after_request
def _never_cached(response):
    """The callback's redirect carries the person's token (``Location: next#token=…``): no cache keeps it."""
    if request.path.startswith("/oauth/"):
        response.headers["Cache-Control"] = "no-store"
    return response
