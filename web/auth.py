"""Bearer tokens: signed, expiring user tokens and hashed personal operator tokens.

There is no bypass: no header, query flag or mode skips these checks.
"""

from __future__ import annotations

from flask import current_app, g, request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import bindparam, select

from models import Merchant, Operator, OperatorToken, User, db, utcnow
from models.operators import issue_operator_token, token_digest  # noqa: F401 - also this module's API
from web.errors import Forbidden, Unauthorized
from web.guards import MAX_ID

READS = frozenset({"GET", "HEAD", "OPTIONS"})
SUSPENDED = "suspended"  # ``merchants.status`` while a ban on the merchant is in force (``rebate.ban_ops``)

# Built once: ``session.get`` builds its primary-key query on every call, a third of a claim's CPU in a profile.
_USER_BY_ID = select(User).where(User.id == bindparam("uid"))
USER_TOKEN_SALT = "user-token-v1"  # noqa: S105 - a salt, not a secret


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=USER_TOKEN_SALT)


def issue_user_token(user: User, channel: str | None = None) -> str:
    """A signed, expiring token; ``channel`` (where the person signed in) is fixed in it when known, and the
    person's token generation once they signed out everywhere (``signed_in`` refuses a token of another)."""
    payload: dict = {"uid": user.id} if channel is None else {"uid": user.id, "ch": channel}
    if user.token_generation:
        payload["gen"] = user.token_generation
    return _serializer().dumps(payload)


def token_channel() -> str | None:
    """The channel the signed-in user's token was issued for, if it names one."""
    signed_in_user_id()
    return g.get("token_channel")


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token", code="missing_token")
    return token.strip()


def forget_other_requests() -> None:
    """``g`` outlives a request when an app context was already pushed (tests, CLI
    scripts); an identity cached there must never answer for the next request."""
    req = request._get_current_object()
    if g.get("identity_request") is not req:
        g.pop("user", None)
        g.pop("user_id", None)
        g.pop("token_channel", None)
        g.pop("token_generation", None)
        g.pop("operator", None)
        g.identity_request = req


def signed_in_user_id() -> int:
    """The id the bearer token was signed for, or 401: the signature and its age only, no statement. The user's
    row (a ban, an account gone) is checked by ``current_user``, or by ``signed_in`` on a row the caller read."""
    forget_other_requests()
    if "user_id" in g:
        return g.user_id
    token = _bearer()
    try:
        data = _serializer().loads(token, max_age=current_app.config["USER_TOKEN_TTL_SECONDS"])
    except SignatureExpired:
        raise Unauthorized("token expired, log in again", code="token_expired") from None
    except BadSignature:
        raise Unauthorized("invalid token", code="invalid_token") from None
    uid = data.get("uid") if isinstance(data, dict) else None
    if type(uid) is not int or not 0 < uid <= MAX_ID:  # every id is a 32-bit INTEGER
        raise Unauthorized("invalid token", code="invalid_token")
    generation = data.get("gen", 0)
    if type(generation) is not int or not 0 <= generation <= MAX_ID:
        raise Unauthorized("invalid token", code="invalid_token")
    g.user_id, g.token_channel, g.token_generation = uid, data.get("ch"), generation
    return uid


def token_generation() -> int:
    """The generation the signed-in user's token was issued under (``signed_in`` compares it with the person's)."""
    signed_in_user_id()
    return g.token_generation


def signed_in(user: User | None) -> User:
    """The row of the signed-in user (``signed_in_user_id``) as the caller read it, or 401 (no such user) /
    403 (banned): ``current_user`` from here on answers it without a statement."""
    if user is None or user.id != signed_in_user_id():
        raise Unauthorized("invalid token", code="invalid_token")
    if g.token_generation != user.token_generation:  # issued before the person signed out everywhere
        raise Unauthorized("signed out on every device; log in again", code="token_revoked")
    if not user.is_active:
        raise Forbidden("this account is banned", code="user_banned")
    g.user = user
    return user


def current_user() -> User:
    """The signed-in user, or 401/403. Banned users are refused on every call."""
    forget_other_requests()
    if "user" in g:
        return g.user
    uid = signed_in_user_id()
    return signed_in(db.session.execute(_USER_BY_ID, {"uid": uid}).scalar_one_or_none())


def operator_token(token: str) -> OperatorToken:
    """The live personal token ``token`` is, or 401 (unknown, revoked, expired) / 403 (operator disabled).
    The admin API's bearer check and the console's sign-in both come here."""
    row = db.session.execute(
        select(OperatorToken).where(OperatorToken.token_sha256 == token_digest(token))
    ).scalar_one_or_none()
    if row is None or not token_is_live(row):
        raise Unauthorized("invalid operator token", code="invalid_token")
    if not row.operator.active:
        raise Forbidden("operator disabled", code="operator_disabled")
    if row.operator.confirmed_at is None:
        raise Forbidden(
            "this account works once a second admin confirms it (POST /admin/api/operators/<id>/confirm)",
            code="operator_unconfirmed",
        )
    return row


def token_is_live(row: OperatorToken) -> bool:
    return row.revoked_at is None and (row.expires_at is None or row.expires_at > utcnow())


def current_operator(roles: tuple[str, ...] = (), *, mutating: bool | None = None) -> Operator:
    """The operator at work (a bearer token's; the console sets ``g.operator`` from its session), and
    403 when its role is not among ``roles``, or when it would write (``mutating``; unsaid: by the request's
    method) for a merchant that is suspended."""
    forget_other_requests()
    if "operator" not in g:
        g.operator = operator_token(_bearer()).operator
    if roles and g.operator.role not in roles:
        raise Forbidden(f"role {g.operator.role} may not do this", code="role_forbidden")
    writes = request.method not in READS if mutating is None else mutating  # (a route knows better than its method)
    if g.operator.merchant_id is not None and writes:
        merchant = db.session.get(Merchant, g.operator.merchant_id)
        if merchant is not None and merchant.status == SUSPENDED:  # banned: its staff may look, not act
            raise Forbidden("your merchant is suspended: read-only until its ban is lifted", code="merchant_suspended")
    return g.operator
