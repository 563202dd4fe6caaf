"""A person claims a packet: by code, straight from a self-serve campaign, or through a share link.

Each claim is one operation here: the campaign's own claim limits (``Campaign.claim_limits``) and the
platform-wide ones (``PlatformLimits``, read from settings by the shell and passed in) are taken from
``risk`` in the same transaction as the claim, in one statement with each other. A refusal (a limit, or
a funder's deposit that cannot cover the packet) rolls the claim back, keeps the refusal for the trace
(and pauses a campaign whose deposit ran dry), and is raised again. A claim from a banned device or network
address is refused the same way (``Banned``, 403 ``banned``, its words naming the ban): read with the claim's
first SELECT on the code and campaign paths, by the claim gate on the others (share links, triggers). The
caller commits what was kept before answering the refusal (``REFUSALS``); nothing here commits.

A claim is the hot path of a flash sale, so it costs no savepoint when it can: a claim that is the first
write of its transaction (the claim routes: the ``Idempotency-Key`` is committed before, authentication
only reads) is rolled back with the whole transaction on a refusal; one called after other writes of
the same transaction runs in a savepoint, so a refusal rolls back the claim alone. This module notes
whether a session's transaction wrote anything yet (flushes and DML statements through the session).

Device ids (for the per-device limits) are handed out here too, sparingly per network address
(``new_device_id``), so fresh ones cannot reset a device limit.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from models import Campaign, CampaignStatus, RedPacket, ShareLink, User, db
from models.sql import wrote_nothing_yet
from models.triggers import TriggerKind
from rebate import claim_at_once
from rebate.deposits import pause_refused
from rebate.errors import BudgetExhausted, DepositExhausted, NotFound, StateConflict
from rebate.packets import (
    CLAIM_SOURCE,
    campaign_for_claim,
    claim_found,
    claimable_for_claim,
    issue_packet,
    user_and_campaign_for_claim,
)
from rebate.triggers import claim_gate, claim_share
from risk import (
    Banned,
    Claimant,
    ClaimGate,
    ClaimLimits,
    ClaimLimitsError,
    LimitHit,
    PlatformLimits,
    ban_refusal,
    campaign_slots,
    record_refusal,
    take_device_token_slot,
)
from risk.bans import ban_params

REFUSALS = (LimitHit, DepositExhausted)  # raised after the refusal was kept: commit, then answer it
DEVICE_IDS_PER_IP_PER_DAY = 20


@dataclass(frozen=True)
class ShareClaim:
    packet: RedPacket  # the friend's
    sharer_rewarded: bool


@contextmanager
def refusal_kept(campaign_id: int, person_id: int) -> Iterator[None]:
    """Run a claim so that a failure rolls it back: a refusal is then kept for the trace and raised again.

    No savepoint when the claim is the first write of its transaction: the whole transaction is rolled
    back instead (the success path stays a few statements). Otherwise a savepoint, as before."""
    own = wrote_nothing_yet()
    try:
        if own:
            yield
        else:
            with db.session.begin_nested():
                yield
    except Exception as failed:
        if own:
            db.session.rollback()
        if isinstance(failed, LimitHit):
            record_refusal(person_id, campaign_id, failed)
        elif isinstance(failed, DepositExhausted):  # 409: the campaign is paused and an operator alerted
            record_refusal(person_id, campaign_id, failed)
            pause_refused(failed.campaign_id)
        raise


def new_device_id(ip: str, now: datetime, per_day: int = DEVICE_IDS_PER_IP_PER_DAY) -> str:
    """A fresh device id for the shell to sign into a device token; ``per_day`` a Beijing day per IP (``LimitHit``)."""
    take_device_token_slot(ip, per_day, now)
    return secrets.token_hex(12)


def gate(campaign: Campaign, claimant: Claimant, limits: PlatformLimits, now: datetime) -> ClaimGate:
    """The claim's limits: the campaign's own slots and the platform-wide ones, taken in one statement."""
    own = campaign_slots(ClaimLimits.parse(campaign.claim_limits), campaign_id=campaign.id, claimant=claimant, now=now)
    return claim_gate(claimant, limits, own)


def _bans(claimant: Claimant, now: datetime) -> dict:
    """What the claim's first read binds to see whether the claimant's device or address is banned."""
    return ban_params(claimant.device, claimant.ip, now)


def _refuse_banned(banned: bool, claimant: Claimant, now: datetime) -> None:
    """A claim from a banned device or address is refused (``Banned``, kept for the trace by ``refusal_kept``)."""
    if banned:
        raise ban_refusal(claimant.device, claimant.ip, now) or Banned("no red packets: a ban applies")


def running_campaign(campaign_id: int) -> Campaign:
    """A campaign people can take part in: a draft is not found, a paused or ended one says so."""
    return _running(db.session.get(Campaign, campaign_id))


def _running(campaign: Campaign | None) -> Campaign:
    if campaign is None or campaign.status == CampaignStatus.DRAFT:
        raise NotFound("no such campaign")
    if campaign.status != CampaignStatus.ACTIVE:
        raise StateConflict(f"the campaign is {campaign.status}", code="campaign_not_running")
    return campaign


def claim_by_code(
    code: str, user: User, now: datetime, *, claimant: Claimant, limits: PlatformLimits, channel: str | None = None
) -> RedPacket:
    """Claim an unclaimed packet by its code under both kinds of claim limits; your own answers again.

    Four statements: the packet with its campaign and rules, its owner (conditional UPDATE), the budget
    (one conditional UPDATE), the limits (one conditional upsert). More for a merchant-funded campaign
    (its deposit's check) and on a refusal."""
    packet, campaign, rules, banned = claimable_for_claim(code, user, _bans(claimant, now))
    if packet.owner_id == user.id:
        return packet
    with refusal_kept(campaign.id, user.id):
        _refuse_banned(banned, claimant, now)
        claim_gate = gate(campaign, claimant, limits, now).bans_already_checked()
        return claim_found(packet, campaign, rules, user, now, channel, claim_gate)


def claim_from_campaign(
    campaign_id: int,
    user: User | int,
    now: datetime,
    *,
    claimant: Claimant,
    limits: PlatformLimits,
    channel: str | None = None,
    checked: Callable[[User | None], User] | None = None,
    at_once: bool = False,
    generation: int = 0,
) -> RedPacket:
    """A packet straight from a self-serve campaign (trigger kind ``claim``).

    One statement on PostgreSQL when this process keeps the campaign's copy and ``at_once`` says so
    (``rebate.claim_at_once``: committed by itself). Otherwise two statements on PostgreSQL: the campaign with its
    rules and the claimant's bans, then the limits (one conditional upsert), the budget's conditional UPDATE and the
    packet's INSERT in one statement (the last: the campaign's row is locked from there to the commit only); four on
    SQLite (the read, the limits, the INSERT, then the UPDATE). More for a merchant-funded campaign (budget first,
    then its deposit's check, then the limits) and on a refusal.

    ``user`` may be only the signed-in user's id: its row is then read with the campaign's (the same one
    statement) and handed to ``checked``, which answers a missing or banned one (and raises) before anything else.
    ``at_once``: ``checked`` refuses nothing but a missing or banned user, so the claim may be made in one statement
    that checks those itself (``rebate.claim_at_once``), when this process keeps the campaign's copy; ``generation``:
    the signed-in token's (``web.auth``), checked in that statement too (a token of before "sign out everywhere"
    claims nothing, and ``checked`` answers it).
    """
    bans = _bans(claimant, now)
    if isinstance(user, User):
        campaign, rules, banned = campaign_for_claim(campaign_id, bans)
    else:
        if checked is None:
            raise TypeError("a claim by user id needs `checked` for the user's row")
        done = (
            _claimed_at_once(campaign_id, user, now, claimant, limits, channel, bans, generation) if at_once else None
        )
        if done is not None:
            row, outcome = done
            checked(row)
            if isinstance(outcome, BudgetExhausted):
                raise outcome
            return outcome
        row, campaign, rules, banned = user_and_campaign_for_claim(user, campaign_id, bans)
        user = checked(row)
    campaign = _running(campaign)
    if campaign.issue_trigger.kind != TriggerKind.CLAIM:
        raise StateConflict("this campaign's packets are not claimed directly", code="not_claimable")
    with refusal_kept(campaign.id, user.id):
        _refuse_banned(banned, claimant, now)
        return issue_packet(
            campaign,
            user,
            source=CLAIM_SOURCE,
            source_ref=f"user:{user.id}:{secrets.token_hex(6)}",
            now=now,
            channel=channel,
            gate=gate(campaign, claimant, limits, now).bans_already_checked(),
            fresh=True,
            rules=rules,
        )


def _claimed_at_once(
    campaign_id: int,
    uid: int,
    now: datetime,
    claimant: Claimant,
    limits: PlatformLimits,
    channel: str | None,
    bans,
    generation: int = 0,
) -> tuple[User, RedPacket | BudgetExhausted] | None:
    """``rebate.claim_at_once``: the claim in one statement committed by itself, or None (nothing written): the
    claim's transaction answers."""
    copy = claim_at_once.kept(campaign_id)
    if copy is None:
        return None
    try:
        own = campaign_slots(
            ClaimLimits.parse(copy.campaign.claim_limits), campaign_id=campaign_id, claimant=claimant, now=now
        )
    except ClaimLimitsError:
        return None  # the transaction answers it, after the claimant's own checks, as it always has
    slots = claim_gate(claimant, limits, own).slots(now)
    source_ref = f"user:{uid}:{secrets.token_hex(6)}"
    return claim_at_once.claim(
        copy, uid, slots, bans, own=own, channel=channel, source_ref=source_ref, now=now, generation=generation
    )


def claim_share_link(
    token: str, user: User, now: datetime, *, claimant: Claimant, limits: PlatformLimits, channel: str | None = None
) -> ShareClaim:
    """A friend claims through a share link; the sharer is rewarded too when the campaign says so."""
    link = db.session.get(ShareLink, token)
    if link is None:
        raise NotFound("no such share link")
    campaign = db.session.get(Campaign, link.campaign_id)
    own = campaign_slots(ClaimLimits.parse(campaign.claim_limits), campaign_id=campaign.id, claimant=claimant, now=now)
    with refusal_kept(campaign.id, user.id):
        result = claim_share(token, user, now, channel, claimant, limits=limits, campaign_limits=own)
    return ShareClaim(result["friend"], result["sharer"] is not None)
