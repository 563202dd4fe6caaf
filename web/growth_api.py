"""Growth endpoints: device tokens, self-serve claims, daily sign-in, share links, referral binding.

Every claim path takes its campaign's claim limits (per IP per day, interval
per device and per IP, per person) and the platform-wide ones (settings
``CLAIM_*``) in the same transaction as the claim; a refusal is 429 with the
reason and ``Retry-After``. Sign-in and referral binding still succeed when a
limit refuses their packet (the refusal is kept for the trace). The device is a server-issued,
signed token (``X-Device-Token``), never a client-chosen id; the IP is the
socket's, or ``X-Forwarded-For`` only behind ``TRUSTED_PROXY_COUNT`` proxies.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from flask import Blueprint, current_app, request
from itsdangerous import BadSignature, URLSafeSerializer
from pydantic import Field

from models import Campaign, ShareLink, User, db, utcnow
from models.triggers import TriggerKind
from rebate.deposits import pause_refused
from rebate.errors import DepositExhausted, StateConflict
from rebate.packets import issue_packet
from rebate.triggers import bind_inviter, claim_gate, claim_share, create_share_link, invite_code_of, sign_in
from risk import Claimant, ClaimLimits, LimitHit, enforce_claim_limits, record_refusal, take_device_token_slot
from web.api import client_ip, endpoint
from web.auth import current_user, token_channel
from web.errors import NotFound, ValidationFailed
from web.schemas import Model
from web.views import packet_json

bp = Blueprint("growth_api", __name__, url_prefix="/api/v1")
CHANNELS = ("mini_program", "official_account", "h5", "app")
DEVICE_SALT = "device-token-v1"
DEVICE_TOKENS_PER_IP_PER_DAY = 20


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


@contextmanager
def refusal_kept(campaign: Campaign, user: User) -> Iterator[None]:
    """A claim refused by a limit or by the funder's deposit rolls back; the refusal is kept in its own
    transaction for the trace (and a deposit refusal pauses the campaign)."""
    campaign_id, user_id = campaign.id, user.id
    try:
        yield
    except LimitHit as hit:
        db.session.rollback()
        record_refusal(user_id, campaign_id, hit)
        db.session.commit()
        raise
    except DepositExhausted as refused:  # 409: the campaign is paused and an operator alerted
        db.session.rollback()
        record_refusal(user_id, campaign_id, refused)
        pause_refused(refused.campaign_id)
        db.session.commit()
        raise


def take_claim_limits(campaign: Campaign, user: User) -> None:
    """Take the campaign's own limit slots (the platform-wide ones are taken when the packet is issued)."""
    limits = ClaimLimits.from_json(campaign.claim_limits)
    with refusal_kept(campaign, user):
        enforce_claim_limits(
            limits, campaign_id=campaign.id, person_id=user.id, ip=client_ip(), device=device_id(), now=utcnow()
        )


def running_campaign(campaign_id: int) -> Campaign:
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or campaign.status == "draft":
        raise NotFound("no such campaign")
    if campaign.status != "active":
        raise StateConflict(f"the campaign is {campaign.status}", code="campaign_not_running")
    return campaign


class InviteCode(Model):
    code: Annotated[str, Field(min_length=4, max_length=16, pattern=r"^[A-Za-z0-9]+$")]


@endpoint(bp, "/devices", methods=["POST"], status=201)
def new_device():
    """A signed device token for ``X-Device-Token`` (per-device claim limits); 20 a day per network address."""
    take_device_token_slot(client_ip(), DEVICE_TOKENS_PER_IP_PER_DAY, utcnow())
    return {"device_token": _devices().dumps({"d": secrets.token_hex(12)})}, 201


@endpoint(bp, "/campaigns/<int:campaign_id>/claim", methods=["POST"], idempotent=True, status=201)
def claim_from_campaign(campaign_id: int):
    """Claim a packet straight from a self-serve campaign (trigger kind ``claim``)."""
    campaign = running_campaign(campaign_id)
    if campaign.issue_trigger.kind != TriggerKind.CLAIM:
        raise StateConflict("this campaign's packets are not claimed directly", code="not_claimable")
    user = current_user()
    take_claim_limits(campaign, user)
    with refusal_kept(campaign, user):
        packet = issue_packet(
            campaign,
            user,
            source="claim",
            source_ref=f"user:{user.id}:{secrets.token_hex(6)}",
            now=utcnow(),
            channel=channel(),
            gate=claim_gate(claimant(user)),
        )
    return packet_json(packet), 201


@endpoint(bp, "/sign-in", methods=["POST"], idempotent=True)
def daily_sign_in():
    """Today's sign-in (Beijing day): the streak, and any packet it earned."""
    user = current_user()
    record, packets = sign_in(user, utcnow(), channel(), claimant(user))
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
    link = db.session.get(ShareLink, token)
    if link is None:
        raise NotFound("no such share link")
    campaign = db.session.get(Campaign, link.campaign_id)
    take_claim_limits(campaign, user)
    with refusal_kept(campaign, user):
        result = claim_share(token, user, utcnow(), channel(), claimant(user))
    return {"packet": packet_json(result["friend"]), "sharer_rewarded": result["sharer"] is not None}, 201


@endpoint(bp, "/me/invite")
def my_invite():
    """The caller's invite code."""
    code = invite_code_of(current_user())
    db.session.commit()
    return {"invite_code": code}


@endpoint(bp, "/referrals/bind", methods=["POST"], body=InviteCode, idempotent=True, status=201)
def bind_referral(body: InviteCode):
    """Bind the caller (a new user) to an inviter; one inviter per person, never oneself."""
    user = current_user()
    packets = bind_inviter(user, body.code, utcnow(), claimant(user))
    return {"bound": True, "packets": [packet_json(p) for p in packets]}, 201
