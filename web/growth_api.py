"""Growth endpoints: device tokens, self-serve claims, daily sign-in, share links, referral binding.

Every claim path is one operation of ``rebate/claims.py``: it takes its campaign's
claim limits (per IP per day, interval per device and per IP, per person) and the
platform-wide ones (settings ``CLAIM_*``, read here and passed in) in the same
transaction as the claim; a refusal is kept for the trace, committed, and answered
429 with the reason and ``Retry-After``. Sign-in and referral binding still succeed when a
limit refuses their packet (the refusal is kept for the trace). The device is a server-issued,
signed token (``X-Device-Token``), never a client-chosen id; the IP is the
socket's, or ``X-Forwarded-For`` only behind ``TRUSTED_PROXY_COUNT`` proxies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from flask import Blueprint, current_app, request
from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import Field

from models import User, db, utcnow
from rebate import claims
from rebate.claims import REFUSALS, running_campaign
from rebate.triggers import bind_inviter, create_share_link, invite_code_of, sign_in
from risk import Claimant, PlatformLimits
from web.api import USER_READ_BY_VIEW, client_ip, endpoint
from web.auth import current_user, signed_in, signed_in_user_id, token_channel, token_generation
from web.errors import ValidationFailed
from web.schemas import Model
from web.views import packet_json

bp = Blueprint("growth_api", __name__, url_prefix="/api/v1")
CHANNELS = ("mini_program", "official_account", "h5", "app")
DEVICE_SALT = "device-token-v1"


def _devices() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=DEVICE_SALT)


def device_id() -> str | None:
    token = request.headers.get("X-Device-Token")
    if token is None:
        return None
    try:
        return _devices().loads(token)["d"]
    except (BadSignature, KeyError, TypeError):
        raise ValidationFailed("X-Device-Token is not one we issued", code="invalid_device_token") from None


def channel() -> str:
    """The channel from the token when login fixed it (clients cannot choose); else ``X-Channel``."""
    fixed = token_channel()
    if fixed is not None:
        return fixed
    value = request.headers.get("X-Channel", "mini_program")
    if value not in CHANNELS:
        raise ValidationFailed(f"X-Channel must be one of {', '.join(CHANNELS)}", code="invalid_channel")
    return value


def claimant(user: User) -> Claimant:
    """The person asking, with the request's network address and (server-issued) device."""
    return Claimant(user.id, client_ip(), device_id())


def platform_limits() -> PlatformLimits:
    """The platform-wide claim limits (settings ``CLAIM_*``), passed to every operation that issues packets."""
    return PlatformLimits.from_config(current_app.config)


@contextmanager
def refusal_answered() -> Iterator[None]:
    """A claim refused by a limit or by its funder's deposit was rolled back to its savepoint and the refusal
    kept (rebate/claims.py): commit that, then answer the refusal (429 with ``Retry-After``, or 409)."""
    try:
        yield
    except REFUSALS:
        db.session.commit()
        raise


class InviteCode(Model):
    code: Annotated[str, Field(min_length=4, max_length=16, pattern=r"^[A-Za-z0-9]+$")]


@endpoint(bp, "/devices", methods=["POST"], status=201)
def new_device():
    """A signed device token for ``X-Device-Token`` (per-device claim limits); 20 a day per network address."""
    return {"device_token": _devices().dumps({"d": claims.new_device_id(client_ip(), utcnow())})}, 201


@endpoint(
    bp,
    "/campaigns/<int:campaign_id>/claim",
    methods=["POST"],
    idempotent=True,
    key_with_effects=True,
    status=201,
    auth=USER_READ_BY_VIEW,
)
def claim_from_campaign(campaign_id: int):
    """Claim a packet straight from a self-serve campaign (trigger kind ``claim``).

    The flash sale's hot path: the signed-in user's row is read with the campaign's (one statement), and a
    missing or banned user is refused (401/403) before anything else is looked at."""
    uid = signed_in_user_id()
    try:  # needed for the one SELECT (the device's bans), but refused only after the user's row is: 401/403 first
        device, chosen, bad = device_id(), channel(), None
    except ValidationFailed as exc:
        device, chosen, bad = None, None, exc

    def checked(row: User | None) -> User:
        user = signed_in(row)
        if bad is not None:
            raise bad
        return user

    with refusal_answered():
        packet = claims.claim_from_campaign(
            campaign_id,
            uid,
            utcnow(),
            claimant=Claimant(uid, client_ip(), device),
            limits=platform_limits(),
            channel=chosen,
            checked=checked,
            at_once=bad is None,
            generation=token_generation(),
        )
    return packet_json(packet), 201


@endpoint(bp, "/sign-in", methods=["POST"], idempotent=True)
def daily_sign_in():
    """Today's sign-in (Beijing day): the streak, and any packet it earned."""
    user = current_user()
    record, packets = sign_in(user, utcnow(), channel(), claimant(user), limits=platform_limits())
    return {"day": record.day, "streak": record.streak, "packets": [packet_json(p) for p in packets]}


@endpoint(bp, "/campaigns/<int:campaign_id>/share-links", methods=["POST"], idempotent=True, status=201)
def new_share_link(campaign_id: int):
    """The caller's share link for a campaign (the same one on every call)."""
    link = create_share_link(running_campaign(campaign_id), current_user(), utcnow())
    return {"token": link.token, "campaign_id": link.campaign_id}, 201


@endpoint(bp, "/share-links/<token>/claim", methods=["POST"], idempotent=True, status=201)
def claim_share_link(token: str):
    """A friend claims through a share link; both sides can be rewarded."""
    user = current_user()
    with refusal_answered():
        claimed = claims.claim_share_link(
            token, user, utcnow(), claimant=claimant(user), limits=platform_limits(), channel=channel()
        )
    return {"packet": packet_json(claimed.packet), "sharer_rewarded": claimed.sharer_rewarded}, 201


@endpoint(bp, "/me/invite", writes=True)
def my_invite():
    """The caller's invite code (made on the first read, the same on every read)."""
    return {"invite_code": invite_code_of(current_user())}


@endpoint(bp, "/referrals/bind", methods=["POST"], body=InviteCode, idempotent=True, status=201)
def bind_referral(body: InviteCode):
    """Bind the caller (a new user) to an inviter; one inviter per person, never oneself."""
    user = current_user()
    packets = bind_inviter(user, body.code, utcnow(), claimant(user), limits=platform_limits(), channel=channel())
    return {"bound": True, "packets": [packet_json(p) for p in packets]}, 201
