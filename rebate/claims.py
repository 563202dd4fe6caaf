"""A person claims a packet: by code, straight from a self-serve campaign, or through a share link.

Each claim is one operation here: the campaign's own claim limits (``Campaign.claim_limits``) and the
platform-wide ones (``PlatformLimits``, read from settings by the shell and passed in) are taken from
``risk`` in the same transaction as the claim. The claim runs in a savepoint: a refusal (a limit, or a
funder's deposit that cannot cover the packet) rolls the claim back to it, keeps the refusal for the
trace (and pauses a campaign whose deposit ran dry), and is raised again. The caller commits what was
kept before answering the refusal (``REFUSALS``); nothing here commits.

Device ids (for the per-device limits) are handed out here too, sparingly per network address
(``new_device_id``), so fresh ones cannot reset a device limit.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from models import Campaign, CampaignStatus, RedPacket, ShareLink, User, db
from models.triggers import TriggerKind
from rebate.deposits import pause_refused
from rebate.errors import DepositExhausted, NotFound, StateConflict
from rebate.packets import claim_packet, find_claimable, issue_packet
from rebate.triggers import claim_gate, claim_share
from risk import (
    Claimant,
    ClaimLimits,
    LimitHit,
    PlatformLimits,
    enforce_claim_limits,
    record_refusal,
    take_device_token_slot,
)

REFUSALS = (LimitHit, DepositExhausted)  # raised after the refusal was kept: commit, then answer it
DEVICE_IDS_PER_IP_PER_DAY = 20


@dataclass(frozen=True)
class ShareClaim:
    packet: RedPacket  # the friend's
    sharer_rewarded: bool


@contextmanager
def refusal_kept(campaign_id: int, person_id: int) -> Iterator[None]:
    """Run a claim in a savepoint; a refusal rolls it back, is kept for the trace, and is raised again."""
    try:
        with db.session.begin_nested():
            yield
    except LimitHit as hit:
        record_refusal(person_id, campaign_id, hit)
        raise
    except DepositExhausted as refused:  # 409: the campaign is paused and an operator alerted
        record_refusal(person_id, campaign_id, refused)
        pause_refused(refused.campaign_id)
        raise


def new_device_id(ip: str, now: datetime, per_day: int = DEVICE_IDS_PER_IP_PER_DAY) -> str:
    """A fresh device id for the shell to sign into a device token; ``per_day`` a Beijing day per IP (``LimitHit``)."""
    take_device_token_slot(ip, per_day, now)
    return secrets.token_hex(12)


def take_campaign_limits(campaign: Campaign, claimant: Claimant, now: datetime) -> None:
    """The campaign's own limit slots (the platform-wide ones are taken when the packet is issued)."""
    limits = ClaimLimits.parse(campaign.claim_limits)
    enforce_claim_limits(limits, campaign_id=campaign.id, claimant=claimant, now=now)


def running_campaign(campaign_id: int) -> Campaign:
    """A campaign people can take part in: a draft is not found, a paused or ended one says so."""
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None or campaign.status == CampaignStatus.DRAFT:
        raise NotFound("no such campaign")
    if campaign.status != CampaignStatus.ACTIVE:
        raise StateConflict(f"the campaign is {campaign.status}", code="campaign_not_running")
    return campaign


def claim_by_code(
    code: str, user: User, now: datetime, *, claimant: Claimant, limits: PlatformLimits, channel: str | None = None
) -> RedPacket:
    """Claim an unclaimed packet by its code under both kinds of claim limits; your own answers again."""
    packet = find_claimable(code, user)
    campaign = db.session.get(Campaign, packet.campaign_id)
    with refusal_kept(campaign.id, user.id):
        if packet.owner_id is None:
            take_campaign_limits(campaign, claimant, now)
        return claim_packet(code, user, now, channel, gate=claim_gate(claimant, limits))


def claim_from_campaign(
    campaign_id: int,
    user: User,
    now: datetime,
    *,
    claimant: Claimant,
    limits: PlatformLimits,
    channel: str | None = None,
) -> RedPacket:
    """A packet straight from a self-serve campaign (trigger kind ``claim``)."""
    campaign = running_campaign(campaign_id)
    if campaign.issue_trigger.kind != TriggerKind.CLAIM:
        raise StateConflict("this campaign's packets are not claimed directly", code="not_claimable")
    with refusal_kept(campaign.id, user.id):
        take_campaign_limits(campaign, claimant, now)
        return issue_packet(
            campaign,
            user,
            source="claim",
            source_ref=f"user:{user.id}:{secrets.token_hex(6)}",
            now=now,
            channel=channel,
            gate=claim_gate(claimant, limits),
        )


def claim_share_link(
    token: str, user: User, now: datetime, *, claimant: Claimant, limits: PlatformLimits, channel: str | None = None
) -> ShareClaim:
    """A friend claims through a share link; the sharer is rewarded too when the campaign says so."""
    link = db.session.get(ShareLink, token)
    if link is None:
        raise NotFound("no such share link")
    campaign = db.session.get(Campaign, link.campaign_id)
    with refusal_kept(campaign.id, user.id):
        take_campaign_limits(campaign, claimant, now)
        result = claim_share(token, user, now, channel, claimant, limits=limits)
    return ShareClaim(result["friend"], result["sharer"] is not None)
