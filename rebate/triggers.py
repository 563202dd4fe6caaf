"""Issue triggers: registration, daily sign-in with streaks, share links, referral binding.

Each finds the running campaigns with its trigger kind and issues through
``issue_packet`` (idempotent per source reference), so a repeated event issues
nothing new. A campaign whose budget is exhausted is skipped with an alert;
one whose funder's deposit cannot cover the packet is skipped, paused and
alerted, the refusal kept for the trace; the event itself still succeeds. Every packet obeys the platform-wide claim
limits of the person asking (and of their network address and device): a
refusal issues nothing, is kept for the trace, and the event still succeeds.
A banned person earns nothing: no packets, and no sharer reward. A packet the person did not ask for
(registration, referral, a sharer's reward) is told of in the same transaction (``rebate.tell``).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value

from models import Campaign, CampaignStatus, Order, OrderStatus, RedPacket, ShareLink, SignIn, User, alert_once, db
from models.base import beijing
from models.risk import RiskIdentifier
from models.sql import insert_ignoring, one_at_a_time
from models.triggers import TriggerKind
from rebate import tell
from rebate.campaigns import is_running
from rebate.deposits import lock_deposits, pause_refused
from rebate.errors import BudgetExhausted, DepositExhausted, Invalid, NotFound, RebateError, StateConflict
from rebate.packets import check_audience, issue_packet
from risk import Claimant, ClaimGate, LimitHit, PlatformLimits, Slot, identifiers, record_refusal

REFERRAL_BIND_WINDOW = timedelta(days=7)


def _campaigns(kind: TriggerKind, now: datetime) -> list[Campaign]:
    rows = db.session.execute(select(Campaign).where(Campaign.status == CampaignStatus.ACTIVE).order_by(Campaign.id))
    return [c for c in rows.scalars() if c.issue_trigger.kind == kind and is_running(c, now)]


def _issuing(kind: TriggerKind, user: User, channel: str | None, now: datetime) -> list[Campaign]:
    """The running campaigns of ``kind`` whose audience takes ``user`` on ``channel``, their rows locked in id
    order, then their deposits in merchant order, before any packet of the event takes a limit counter.

    An event issues from several campaigns, each packet taking the person's, address's and device's counters
    after its campaign's row (and deposit): two people on one address of whom one is outside the first
    campaign's region or channel would otherwise lock (campaign 1, counter, campaign 2) and (campaign 2,
    counter) and deadlock (PostgreSQL). Campaigns outside the audience are not locked (nothing is issued)."""
    campaigns = []
    for campaign in _campaigns(kind, now):
        try:
            check_audience(campaign, user, channel, now)
        except RebateError:
            continue
        campaigns.append(campaign)
    if campaigns:
        ids = select(Campaign.id).where(Campaign.id.in_([c.id for c in campaigns])).order_by(Campaign.id)
        db.session.execute(ids.with_for_update(key_share=True)).all()
        lock_deposits(campaigns)
    return campaigns


def claim_gate(claimant: Claimant, limits: PlatformLimits, campaign: list[Slot] | None = None) -> ClaimGate:
    """The platform-wide claim limits (the shell reads them from settings ``CLAIM_*``) for one event of
    ``claimant``, and ``campaign``: the claimed campaign's own limit slots, taken in the same statement.
    Always passed explicitly: forgetting them must not mean "no limit" by accident
    (``PlatformLimits.off()`` says so on purpose)."""
    return ClaimGate(claimant, limits, campaign)


def _issue_one(campaign: Campaign, user: User, gate: ClaimGate, now: datetime, **issue) -> RedPacket | None:
    """Issue in a savepoint; a limit refusal is kept for the trace, and nothing is issued."""
    taken = gate.taken
    try:
        with db.session.begin_nested():
            return issue_packet(campaign, user, now=now, gate=gate, **issue)
    except LimitHit as hit:
        gate.taken = taken
        record_refusal(user.id, campaign.id, hit)
    except DepositExhausted as refused:
        gate.taken = taken
        record_refusal(user.id, campaign.id, refused)
        pause_refused(campaign.id)
    except BudgetExhausted:
        gate.taken = taken
        alert_once(  # one open alert per campaign, not one per person turned away
            "budget_exhausted",
            f"campaign {campaign.id}",
            text=f"{issue['source']} packet for user {user.id} not issued",
        )
    except RebateError:
        gate.taken = taken  # outside the campaign's audience or window: nothing to issue
    return None


def _issue_each(
    kind: TriggerKind,
    user: User,
    source_ref: str,
    now: datetime,
    channel: str | None = None,
    issuer_user_id: int | None = None,
    claimant: Claimant | None = None,
    *,
    limits: PlatformLimits,
) -> list[RedPacket]:
    if not user.is_active:
        return []
    gate = claim_gate(claimant or Claimant(user.id), limits)
    issued = []
    for campaign in _issuing(kind, user, channel, now):
        packet = _issue_one(
            campaign,
            user,
            gate,
            now,
            source=kind,
            source_ref=source_ref,
            channel=channel,
            issuer_user_id=issuer_user_id,
        )
        if packet is not None:
            issued.append(packet)
    if kind in tell.TOLD_SOURCES:  # registration, referral: the person did not ask for these packets
        tell.packets_received(issued)
    return issued


def on_registered(
    user: User,
    now: datetime,
    channel: str | None = None,
    claimant: Claimant | None = None,
    *,
    limits: PlatformLimits,
) -> list[RedPacket]:
    """A new person: newcomer packets (5 / 10 yuan tiers come from the campaign)."""
    return _issue_each(
        TriggerKind.REGISTRATION, user, f"user:{user.id}", now, channel, claimant=claimant, limits=limits
    )


def sign_in(
    user: User,
    now: datetime,
    channel: str | None = None,
    claimant: Claimant | None = None,
    *,
    limits: PlatformLimits,
) -> tuple[SignIn, list[RedPacket]]:
    """Today's sign-in (Beijing day), once; the streak counts consecutive days.

    Concurrent sign-ins of one person: one wins the unique (user, day) row, the
    others see it and answer it without issuing anything. A person's sign-ins take turns: a double tap across Beijing
    midnight read no row of yesterday while yesterday's was still being written, and started the streak again at 1
    (its bonus lost).
    """
    one_at_a_time(f"sign_in.person:{user.id}")
    day = beijing(now).date()
    existing = db.session.execute(select(SignIn).filter_by(user_id=user.id, day=day.isoformat())).scalar_one_or_none()
    if existing is not None:
        return existing, []
    yesterday = db.session.execute(
        select(SignIn).filter_by(user_id=user.id, day=(day - timedelta(days=1)).isoformat())
    ).scalar_one_or_none()
    record = SignIn(
        user_id=user.id, day=day.isoformat(), streak=yesterday.streak + 1 if yesterday else 1, created_at=now
    )
    try:
        with db.session.begin_nested():
            db.session.add(record)
    except IntegrityError:  # a concurrent sign-in of the same person won
        return db.session.execute(select(SignIn).filter_by(user_id=user.id, day=day.isoformat())).scalar_one(), []
    if not user.is_active:
        return record, []
    gate = claim_gate(claimant or Claimant(user.id), limits)
    issued = []
    for campaign in _issuing(TriggerKind.DAILY_SIGN_IN, user, channel, now):
        face = _streak_face(campaign, record.streak)
        packet = _issue_one(
            campaign,
            user,
            gate,
            now,
            source=TriggerKind.DAILY_SIGN_IN,
            source_ref=f"{user.id}:{day}",
            face_fen=face,
            channel=channel,
        )
        if packet is not None:
            issued.append(packet)
    return record, issued


def _streak_face(campaign: Campaign, streak: int) -> int | None:
    """The biggest streak bonus whose period divides today's streak (7th day, 14th, …), else the plain face."""
    bonuses = [b for b in campaign.issue_trigger.streak_bonus if streak % b.days == 0]
    return max((b.amount_fen for b in bonuses), default=None)


def _on_one_phone(person: User, other_id: int, device: str | None) -> bool:
    """Has ``other_id`` used this request's device, or any device ``person`` was seen on (``risk.identifiers``)?

    A device (the server-issued token) is one person's, as the per-device claim limits take it: two WeChat accounts
    signed in on one phone are one person inviting, or claiming the share link of, themselves. One statement. Only
    devices: a network address is shared by a family, an office or a carrier's NAT."""
    mine = select(RiskIdentifier.value).where(
        RiskIdentifier.kind == identifiers.DEVICE,
        RiskIdentifier.owner_type == identifiers.USER,
        RiskIdentifier.owner_id == person.id,
    )
    seen = (
        RiskIdentifier.value.in_(mine)
        if device is None
        else or_(RiskIdentifier.value == device, RiskIdentifier.value.in_(mine))
    )
    found = db.session.execute(
        select(RiskIdentifier.id)
        .where(
            RiskIdentifier.kind == identifiers.DEVICE,
            RiskIdentifier.owner_type == identifiers.USER,
            RiskIdentifier.owner_id == other_id,
            seen,
        )
        .limit(1)
    ).first()
    return found is not None


def create_share_link(campaign: Campaign, user: User, now: datetime) -> ShareLink:
    if campaign.issue_trigger.kind != TriggerKind.SHARE or not is_running(campaign, now):
        raise StateConflict("this campaign has no share links running", code="campaign_not_shareable")
    mine = select(ShareLink).filter_by(campaign_id=campaign.id, user_id=user.id)
    existing = db.session.execute(mine).scalar()
    if existing is not None:
        return existing
    row = {"token": secrets.token_urlsafe(16)[:22], "campaign_id": campaign.id, "user_id": user.id, "created_at": now}
    # one link per person and campaign: a twin request (a double tap) that made it first wins, this one reads it
    insert_ignoring(ShareLink.__table__, [row], ("campaign_id", "user_id"))
    return db.session.execute(mine.execution_options(populate_existing=True)).scalar_one()


def claim_share(
    token: str,
    friend: User,
    now: datetime,
    channel: str | None = None,
    claimant: Claimant | None = None,
    *,
    limits: PlatformLimits,
    campaign_limits: list[Slot] | None = None,
) -> dict:
    """The friend gets a packet; the sharer gets one too when the campaign rewards sharing.

    The friend's packet takes the friend's platform limits and ``campaign_limits`` (the campaign's own
    slots; ``LimitHit`` when refused: the caller rolls back); the sharer's reward takes the sharer's own
    per-person limits and is skipped (with the refusal kept) when they are reached, or when the sharer
    is banned.
    """
    link = db.session.get(ShareLink, token)
    if link is None:
        raise NotFound("no such share link", code="share_link_not_found")
    if link.user_id == friend.id or _on_one_phone(friend, link.user_id, claimant.device if claimant else None):
        raise Invalid("you cannot claim your own share link", code="own_share_link")
    campaign = db.session.get(Campaign, link.campaign_id)
    reward = campaign.issue_trigger.sharer_reward_fen
    if reward:
        # The friend's packet takes the friend's counters, then the reward the sharer's: two people claiming each
        # other's links at once would take them in opposite orders (PostgreSQL: a deadlock). So both people are
        # taken first, in id order, before any campaign row or counter.
        for person_id in sorted((friend.id, link.user_id)):
            one_at_a_time(f"share_claim.person:{person_id}")
    ref = f"{token}:{friend.id}"
    gate = claim_gate(claimant or Claimant(friend.id), limits, campaign_limits)
    friend_packet = issue_packet(
        campaign, friend, source=TriggerKind.SHARE, source_ref=ref, now=now, channel=channel, gate=gate
    )
    sharer_packet = None
    sharer = db.session.get(User, link.user_id)
    if reward and sharer.is_active:
        sharer_packet = _issue_one(
            campaign,
            sharer,
            claim_gate(Claimant(sharer.id), limits),
            now,
            source="share_reward",
            source_ref=ref,
            face_fen=reward,
        )
        tell.packets_received([sharer_packet])  # the sharer was not there: a friend's claim earned it
    return {"friend": friend_packet, "sharer": sharer_packet}


def invite_code_of(user: User) -> str:
    """The person's invite code, made on first use and the same on every read after: written only where the row
    has none, so of two first reads at once (a double tap) the later one reads the code the earlier one wrote.
    A rare collision with another person's code just draws again."""
    for _ in range(5):
        if user.invite_code is not None:
            break
        code = secrets.token_hex(5).upper()  # 40 bits: collisions are rare, not impossible
        unset = update(User).where(User.id == user.id, User.invite_code.is_(None)).values(invite_code=code)
        try:
            with db.session.begin_nested():
                written = db.session.execute(unset.execution_options(synchronize_session=False)).rowcount
        except IntegrityError:
            continue
        if written:
            set_committed_value(user, "invite_code", code)
        else:  # made meanwhile by a twin request (committed: it held the row until then)
            db.session.refresh(user, ["invite_code"])
    return user.invite_code


def _locked_user(user_id: int) -> User:
    return db.session.execute(
        select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one()


def _invited_by(person: User, ancestor_id: int) -> bool:
    """Is ``ancestor_id`` somewhere up ``person``'s chain of inviters? (No referral cycles.)

    Each link is read under its row lock (PostgreSQL), so two binds that would close a cycle
    between them cannot both pass this check: the later one waits and then sees the earlier.
    The whole chain is walked, however long (a viral campaign's chain of friends inviting friends
    may be deeper than any bound we would pick, and only the top of it can be the caller); a loop
    already in the data (never written: this check prevents it) ends the walk as a cycle.
    """
    seen = {person.id}
    current = person
    while current.inviter_id is not None:
        if current.inviter_id == ancestor_id or current.inviter_id in seen:
            return True
        seen.add(current.inviter_id)
        current = _locked_user(current.inviter_id)
    return False


def bind_inviter(
    user: User,
    code: str,
    now: datetime,
    claimant: Claimant | None = None,
    *,
    limits: PlatformLimits,
    channel: str | None = None,
) -> list[RedPacket]:
    """Bind a new person to the inviter whose code they used; one inviter per person, never oneself. The starter
    packets are those of the campaigns open to ``channel`` (the one the person binds through), as every trigger's.

    The binding is one conditional UPDATE (``WHERE inviter_id IS NULL``): of concurrent binds of one
    person only one changes the row, the others answer ``already_invited`` (409), and the starter
    packet names the inviter that won.
    """
    inviter = db.session.execute(select(User).where(User.invite_code == code.strip().upper())).scalar_one_or_none()
    if inviter is None:
        raise NotFound("no such invite code", code="invite_code_not_found")
    if not inviter.is_active:
        raise StateConflict("this invite code can no longer be used", code="invite_code_inactive")
    if inviter.id == user.id or _on_one_phone(user, inviter.id, claimant.device if claimant else None):
        raise Invalid("you cannot invite yourself", code="self_referral")
    # The person's unpaid orders first (as a payment takes an order, then its buyer): a payment being applied holds
    # its order's row, so the bind waits for it and then sees the order paid below (read past it, the code had
    # bound after the first purchase).
    open_orders = select(Order.id).where(Order.user_id == user.id, Order.status == OrderStatus.CREATED)
    db.session.execute(open_orders.with_for_update(key_share=True)).all()
    # Both rows locked in id order: A binding to B while B binds to A serialise, and the later sees the cycle.
    first, second = sorted((user.id, inviter.id))
    _locked_user(first), _locked_user(second)
    if user.inviter_id is not None:
        raise StateConflict("you already have an inviter", code="already_invited")
    if _invited_by(inviter, user.id):
        raise StateConflict("you cannot be invited by someone you invited", code="referral_cycle")
    if now - user.created_at > REFERRAL_BIND_WINDOW:
        raise StateConflict("invite codes bind new users only, within 7 days of joining", code="bind_window_closed")
    if db.session.execute(select(Order.id).where(Order.user_id == user.id, Order.paid_at.is_not(None))).first():
        raise StateConflict("invite codes bind before the first purchase", code="bind_window_closed")
    bound = db.session.execute(
        update(User)
        .where(User.id == user.id, User.inviter_id.is_(None))
        .values(inviter_id=inviter.id, invited_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.refresh(user)
    if bound != 1:
        raise StateConflict("you already have an inviter", code="already_invited")
    return _issue_each(
        TriggerKind.REFERRAL_BIND,
        user,
        f"invitee:{user.id}",
        now,
        channel,
        issuer_user_id=user.inviter_id,
        claimant=claimant,
        limits=limits,
    )
