"""Bans as operators (and review cases) drive them: create, lift, and let them expire, with their effects.

* ``user``: the person's ``users.status`` becomes ``banned`` (with the ban's words as ``banned_reason``):
  signing in and the API answer 403, triggers give no packets, rebates skip them as consumer, issuer or
  inviter, the dispatcher leaves their payouts that never left waiting (``payouts.dispatch``), and their change
  transfers offered and waiting for their confirmation are cancelled at WeChat by its next pass.
  Lifted (or expired), they are active again unless another active ban on them remains.
* ``merchant``: ``merchants.status`` becomes ``suspended`` and every active campaign it issues, funds or
  accepts packets for is paused with the ban's reason (``campaign_ops.transition``, audited). Lifted, the
  merchant is active again; its campaigns stay paused until an operator resumes each one.
* ``device`` / ``net``: claims from that device or address are refused (403 ``banned``, kept for the trace;
  ``risk.limits.Banned``). Signing in from them is not refused: the person sees their account, gets nothing.

Lifted (or expired), a ban of any kind gives back the milestones it alone refused while it stood, before their
rebate's deadline (``rebate.milestones.resume_refused``): to the person or merchant, or for a device or network to
the buyers of the orders placed from it; one still refused another way (another ban) waits for that one's lift.
A lift does a bounded amount of work whatever the ban held: the ban ends at once (new orders are no longer held),
and when more than ``INLINE_RELEASE_ORDERS`` orders may have something to release, a job walks them a batch per
transaction (``release_batch``, ``jobs.risk.release_lifted_bans``), its progress on the ban (``release`` in
``ban_json``); the same ban put back meanwhile stops it (``stopped``: that ban's own lift releases them). Fewer are
released in the request, as before (``done`` at once).

Who lifts: a ban one operator made (the bans screen, or a review case one reviewer decided) is lifted by one. A ban
two operators made (``risk.bans.made_by_two``: a review case a second reviewer approved) is lifted by two: lifting it
records a proposal (``lift_proposed_by``, nothing else changes), another operator of independent making approves it
(``approve_lift``: lifted then) or anyone rejects it (``reject_lift``; the proposer withdraws). A timed ban's expiry
needs nobody (``lift_expired_bans``), a proposal waiting or not.

Every operation checks, writes, audits with the operator's reason and flushes; the caller commits once.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import and_, func, or_, select, update

from models import (
    Ban,
    BanSubject,
    Campaign,
    CampaignStatus,
    Merchant,
    Payout,
    PayoutStatus,
    User,
    UserStatus,
    db,
)
from models.operators import Actor, approval_refused_because, audit
from models.payouts import Rail
from payouts import MoneySettings
from payouts.operations import cancel as cancel_payout
from rebate.campaign_ops import transition
from rebate.errors import Invalid, NotFound, RebateError, StateConflict
from rebate.milestones import held_orders, held_orders_query, lock_orders, resume_refused
from risk.bans import active_bans, ban_words, in_force, made_by_two, normalise_net

DEVICE_ID = re.compile(r"^[0-9a-f]{24}$")  # what rebate.claims.new_device_id hands out
# A lift with at most this many orders to look at releases what it held in the request; more, and a job does it
# (``release_batch``): the request's work stays bounded however busy the merchant, device or network was.
INLINE_RELEASE_ORDERS = 100
RELEASE_STALLED_AFTER = timedelta(minutes=10)  # a release whose last batch is older: shown stalled, alerted
RUNNING, DONE, STOPPED = "running", "done", "stopped"


def ban_json(ban: Ban, now: datetime | None = None, *, by_two: bool | None = None) -> dict:
    """The ban as the API shows it. ``by_two``: whether two operators made it (None: asked here, ``made_by_two``)."""
    active = ban.lifted_at is None and (ban.ends_at is None or now is None or ban.ends_at > now)
    if by_two is None:
        by_two = bool(made_by_two([ban.id]))
    return {
        "id": ban.id,
        "subject": ban.subject,
        "value": ban.value,
        "reason": ban.reason,
        "case_id": ban.case_id,
        "created_by": ban.created_by,
        "created_at": ban.created_at.isoformat(),
        "ends_at": ban.ends_at.isoformat() if ban.ends_at else None,
        "lifted_at": ban.lifted_at.isoformat() if ban.lifted_at else None,
        "lifted_by": ban.lifted_by,
        "lift_reason": ban.lift_reason,
        "lift_needs_approval": by_two,
        "lift_pending": ban.lifted_at is None and ban.lift_proposed_by is not None,
        "lift_proposed_by": ban.lift_proposed_by,
        "lift_proposed_at": ban.lift_proposed_at.isoformat() if ban.lift_proposed_at else None,
        "lift_proposed_reason": ban.lift_proposed_reason,
        "active": active,
        "words": ban_words(ban),
        "release": release_progress(ban, now),
    }


def release_progress(ban: Ban, now: datetime | None) -> dict | None:
    """How far the release of what a lifted ban held has gone (None: not lifted). ``state``: ``running`` (a job
    walks the orders), ``done``, or ``stopped`` (the same ban put back: its own lift releases them); the orders
    walked, the orders left to walk (at most: a network's count may include neighbours it never banned), the fen
    paid, the last batch, and whether it has ``stalled`` (no batch for ``RELEASE_STALLED_AFTER``: alerted too)."""
    if ban.lifted_at is None:
        return None
    state = ban.release_state or DONE  # lifted before releases were kept: released in its request
    left = _count_left(ban) if state == RUNNING else 0
    moved = ban.release_moved_at or ban.lifted_at
    return {
        "state": state,
        "orders_done": ban.release_orders or 0,
        "orders_left": left,
        "paid_fen": ban.release_paid_fen or 0,
        "last_batch_at": ban.release_moved_at.isoformat() if ban.release_moved_at else None,
        "stalled": state == RUNNING and now is not None and moved < now - RELEASE_STALLED_AFTER,
    }


def checked_value(subject: str, value: str) -> str:
    """The value as bans keep it, or ``Invalid`` / ``NotFound``: a user or merchant that exists, a server-issued
    device id, one IP address or an IPv4 /24 / IPv6 /48 network."""
    if subject not in set(BanSubject):
        raise Invalid(f"subject must be one of {', '.join(BanSubject)}, not {subject!r}", code="ban_subject")
    value = (value or "").strip()
    if subject in (BanSubject.USER, BanSubject.MERCHANT):
        if not value.isdecimal() or not 0 < int(value) < 2**31:
            raise Invalid(f"a {subject} ban names the {subject}'s id, not {value!r}", code="ban_value")
        model = User if subject == BanSubject.USER else Merchant
        if db.session.get(model, int(value)) is None:
            raise NotFound(f"{subject} {value} not found", code=f"unknown_{subject}")
        return str(int(value))
    if subject == BanSubject.DEVICE:
        if not DEVICE_ID.match(value):
            raise Invalid("a device ban names a server-issued device id (24 hex digits)", code="ban_value")
        return value
    try:
        return normalise_net(value)
    except ValueError as exc:
        raise Invalid(f"not a network address: {exc}", code="ban_value") from None


def create_ban(
    actor: Actor,
    subject: str,
    value: str,
    reason: str,
    now: datetime,
    *,
    ends_at: datetime | None = None,
    case_id: int | None = None,
) -> Ban:
    """Ban ``subject`` ``value`` from now until ``ends_at`` (None: until lifted), and apply what it does."""
    if not reason or not reason.strip():
        raise Invalid("a ban needs a reason", code="reason_required")
    value = checked_value(subject, value)
    if ends_at is not None and ends_at <= now:
        raise Invalid("ends_at must be in the future", code="ban_ends_at")
    owner = _lock_owner(subject, value)
    ban = Ban(
        subject=subject,
        value=value,
        reason=reason.strip(),
        case_id=case_id,
        created_by=actor.operator.id if actor else None,
        created_at=now,
        ends_at=ends_at,
    )
    db.session.add(ban)
    db.session.flush()
    paused = _apply(actor, ban, owner)
    audit(
        actor,
        "ban.create",
        "ban",
        ban.id,
        ban.reason,
        subject=subject,
        value=value,
        ends_at=ends_at.isoformat() if ends_at else None,
        case_id=case_id,
        campaigns_paused=paused,
    )
    db.session.flush()
    return ban


def _lock_owner(subject: str, value: str) -> User | Merchant | None:
    """The banned person's or merchant's row, locked: a ban and a lift of the same one go one after the other."""
    model = {BanSubject.USER: User, BanSubject.MERCHANT: Merchant}.get(subject)
    if model is None:
        return None
    stmt = select(model).where(model.id == int(value)).with_for_update().execution_options(populate_existing=True)
    return db.session.execute(stmt).scalar_one()


def _apply(actor: Actor, ban: Ban, owner: User | Merchant | None) -> list[int]:
    """What a new ban does; the campaigns it paused."""
    if ban.subject == BanSubject.USER:
        owner.status, owner.banned_reason = UserStatus.BANNED, ban_words(ban)[:200]
        _cancel_offered(owner.id, ban)
    elif ban.subject == BanSubject.MERCHANT:
        owner.status = "suspended"
        return _pause_campaigns(actor, owner.id, ban)
    return []


def _cancel_offered(user_id: int, ban: Ban) -> None:
    """The banned person's change transfers offered and waiting for their confirmation: cancelled at WeChat by the
    dispatcher's next pass (``payouts.operations.cancel``), the money back where it came from; one the person
    confirms before that goes through. (A card offered is left: WeChat cannot recall one already in the person's card
    package. Their payouts never sent wait: ``payouts.dispatch``.)"""
    offered = db.session.execute(
        select(Payout)
        .where(
            Payout.user_id == user_id,
            Payout.rail == Rail.WECHAT_CHANGE,
            Payout.status == PayoutStatus.WAITING_USER_CONFIRM,
            Payout.cancel_requested.is_(False),
        )
        .order_by(Payout.id)
        .with_for_update()
    ).scalars()
    for payout in offered:
        cancel_payout(payout, ban.created_at, f"the person was banned (ban {ban.id})")


def campaigns_to_pause(merchant_ids: list[int]) -> list[int]:
    """The active campaigns a ban of these merchants pauses: every one they issue, fund or take packets at (and those
    paused for their deposit, which still award their packets out)."""
    return list(
        db.session.execute(
            select(Campaign.id)
            .where(
                or_(
                    Campaign.status == CampaignStatus.ACTIVE,
                    and_(Campaign.status == CampaignStatus.PAUSED, Campaign.paused_for_deposit.is_(True)),
                ),
                or_(
                    Campaign.issuer_merchant_id.in_(merchant_ids),
                    Campaign.funder_merchant_id.in_(merchant_ids),
                    Campaign.packet_merchant_id.in_(merchant_ids),
                ),
            )
            .order_by(Campaign.id)
        ).scalars()
    )


def _pause_campaigns(actor: Actor, merchant_id: int, ban: Ban) -> list[int]:
    """Pause every active campaign the merchant issues, funds or takes packets at (each audited)."""
    paused = []
    for campaign_id in campaigns_to_pause([merchant_id]):
        transition(actor, campaign_id, "pause", f"merchant {merchant_id} banned (ban {ban.id}): {ban.reason}"[:500])
        paused.append(campaign_id)
    return paused


def lift_ban(actor: Actor, ban_id: int, reason: str, now: datetime, *, money: MoneySettings) -> Ban:
    """Lift a ban (again: the same ban, nothing more done) and undo what it did unless another ban still does.

    A ban two operators made (``made_by_two``) is not lifted here: the lift is proposed (the ban comes back still in
    force, ``lift_proposed_by`` set) and another operator carries it out (``approve_lift``) or rejects it
    (``reject_lift``). While one waits, another proposal is 409 ``lift_pending``."""
    reason = required_reason(reason, "lifting a ban needs a reason")
    ban = _get(ban_id)
    if ban.lifted_at is None and made_by_two([ban.id]):
        return _propose_lift(actor, ban.id, reason, now)
    ban, lifted = _lift(ban_id, now, reason, actor.operator.id, money)
    if lifted:
        audit(actor, "ban.lift", "ban", ban.id, reason, subject=ban.subject, value=ban.value)
        db.session.flush()
    return ban


def _propose_lift(actor: Actor, ban_id: int, reason: str, now: datetime) -> Ban:
    """Record one operator's proposal to lift a ban two operators made; nothing else changes. Only the ban's row is
    locked (what this writes), so it never waits holding it for the person's or merchant's row."""
    ban = _lock_ban(ban_id)
    if ban.lifted_at is not None:  # lifted meanwhile (approved, or expired): the same answer as a lift again
        return ban
    if ban.lift_proposed_by is not None:
        raise StateConflict(
            f"lifting ban {ban.id} was proposed by operator {ban.lift_proposed_by} at "
            f"{ban.lift_proposed_at:%Y-%m-%d %H:%M} UTC ({ban.lift_proposed_reason}): another operator approves it "
            f"(POST /admin/api/bans/{ban.id}/lift/approve) or rejects it (POST /admin/api/bans/{ban.id}/lift/reject)",
            code="lift_pending",
        )
    ban.lift_proposed_by, ban.lift_proposed_at, ban.lift_proposed_reason = actor.operator.id, now, reason
    audit(actor, "ban.lift_propose", "ban", ban.id, reason, subject=ban.subject, value=ban.value, case_id=ban.case_id)
    db.session.flush()
    return ban


def approve_lift(actor: Actor, ban_id: int, reason: str, now: datetime, *, money: MoneySettings) -> Ban:
    """A second operator approves the pending proposal to lift a ban two operators made: it is lifted now, its effects
    undone as ``lift_ban`` undoes them. Not its proposer (403 ``same_operator``), nor an account of the proposer's
    making (403 ``approver_not_independent``); nothing proposed is 409 ``no_lift_proposed``. A ban lifted already
    (by this approval before, or by its expiry) comes back as it is."""
    reason = required_reason(reason, "approving a lift needs a reason")
    # refused before anything is locked (a refused approval took the lock of every order the lift would resume),
    # then checked again on the locked ban: what was proposed may have changed meanwhile
    seen = _get(ban_id)
    if seen.lifted_at is not None:  # nothing locked: its release may be running under the ban's row lock
        return seen
    _check_approval(actor, seen, now)
    ban, owner, resumable = _lock_for_lift(ban_id, now)
    if ban.lifted_at is not None:
        return ban
    _check_approval(actor, ban, now)
    _mark_lifted(ban, owner, now, reason, actor.operator.id, money, resumable)
    audit(
        actor,
        "ban.lift",
        "ban",
        ban.id,
        reason,
        subject=ban.subject,
        value=ban.value,
        proposed_by=ban.lift_proposed_by,
        proposed_reason=ban.lift_proposed_reason,
    )
    db.session.flush()
    return ban


def _check_approval(actor: Actor, ban: Ban, now: datetime) -> None:
    """Why ``actor`` may not approve lifting ``ban`` now (raised), if anything."""
    if ban.lift_proposed_by is None:
        raise StateConflict(
            f"no lift of ban {ban.id} is waiting for approval"
            + ("" if made_by_two([ban.id]) else ": one operator made it, and one lifts it (DELETE the ban)"),
            code="no_lift_proposed",
        )
    if ban.lift_proposed_by == actor.operator.id:
        raise RebateError(
            f"you proposed lifting ban {ban.id}: another operator must approve it",
            code="same_operator",
            kind="forbidden",
        )
    why = approval_refused_because(actor.operator, ban.lift_proposed_by, ban.lift_proposed_at, now)
    if why:
        raise RebateError(f"lifting ban {ban.id}: {why}", code="approver_not_independent", kind="forbidden")


def reject_lift(actor: Actor, ban_id: int, reason: str, now: datetime) -> Ban:
    """Close the pending proposal to lift a ban with the ban left in force (its proposer may withdraw it); a new
    proposal may follow. Nothing waiting (never proposed, rejected already, or the ban lifted) is 409
    ``no_lift_proposed``."""
    reason = required_reason(reason, "rejecting a lift needs a reason")
    _get(ban_id)
    ban = _lock_ban(ban_id)
    if ban.lifted_at is not None or ban.lift_proposed_by is None:
        state = "is lifted" if ban.lifted_at is not None else "has no lift waiting for approval"
        raise StateConflict(f"ban {ban.id} {state}: there is nothing to reject", code="no_lift_proposed")
    proposal = {"proposed_by": ban.lift_proposed_by, "proposed_reason": ban.lift_proposed_reason}
    withdrawn = ban.lift_proposed_by == actor.operator.id
    ban.lift_proposed_by = ban.lift_proposed_at = ban.lift_proposed_reason = None
    audit(actor, "ban.lift_reject", "ban", ban.id, reason, withdrawn=withdrawn, **proposal)
    db.session.flush()
    return ban


def required_reason(reason: str | None, message: str) -> str:
    """The reason, stripped; ``Invalid`` (``reason_required``) with ``message`` when there is none."""
    if not reason or not reason.strip():
        raise Invalid(message, code="reason_required")
    return reason.strip()


def get_ban(ban_id: int) -> Ban:
    """The ban (``NotFound``: no such ban)."""
    return _get(ban_id)


def _get(ban_id: int) -> Ban:
    ban = db.session.get(Ban, ban_id)
    if ban is None:
        raise NotFound(f"ban {ban_id} not found")
    return ban


def _lock_ban(ban_id: int) -> Ban:
    stmt = select(Ban).where(Ban.id == ban_id).with_for_update().execution_options(populate_existing=True)
    return db.session.execute(stmt).scalar_one()


def _lock_for_lift(ban_id: int, now: datetime) -> tuple[Ban, User | Merchant | None, list[int] | None]:
    """The ban and the banned person's or merchant's row, both locked and read as they are now: the owner's row
    first, then the ban's, as ``create_ban`` takes them (``NotFound`` for no such ban). Before them, when the lift is
    small (at most ``INLINE_RELEASE_ORDERS`` orders to look at), the orders whose milestones it may release
    (``rebate.milestones.held_orders``: of the person or merchant, or of buyers from the device or network), as
    a refund takes an order and then its people: taken after the owner, a lift and a refund of one order could each
    wait for the other. Every such order, refused yet or not: a milestone reported on one meanwhile either waits for
    the lift (and sees the ban lifted) or is waited for (and the lift applies what it refused). Their ids last; None
    for a bigger lift, which locks no order: its release (``release_batch``) begins after it commits and takes each
    order then, so a report in flight is waited for or sees the ban lifted all the same."""
    ban = _get(ban_id)
    covered, _, looked = held_orders(str(ban.subject), str(ban.value), now, limit=INLINE_RELEASE_ORDERS + 1)
    resumable = None
    if looked <= INLINE_RELEASE_ORDERS:  # all read: the lift's orders (``held_orders``)
        resumable = covered
        lock_orders(resumable)
    owner = _lock_owner(ban.subject, ban.value)
    return _lock_ban(ban_id), owner, resumable


def _lift(ban_id: int, now: datetime, reason: str, by: int | None, money: MoneySettings) -> tuple[Ban, bool]:
    """Mark the ban lifted and undo its effects; (the ban, whether this call lifted it). Locks the banned
    person's or merchant's row, then the ban's, as ``create_ban`` takes them."""
    ban = _get(ban_id)
    if ban.lifted_at is not None:
        return ban, False
    ban, owner, resumable = _lock_for_lift(ban_id, now)
    if ban.lifted_at is not None:  # lifted meanwhile
        return ban, False
    _mark_lifted(ban, owner, now, reason, by, money, resumable)
    return ban, True


def _mark_lifted(
    ban: Ban,
    owner: User | Merchant | None,
    now: datetime,
    reason: str,
    by: int | None,
    money: MoneySettings,
    resumable: list[int] | None,
) -> None:
    """The ban lifted and its effects undone; what it held released now (``resumable``: the orders, locked) or left to
    the job (None: ``running``)."""
    ban.lifted_at, ban.lifted_by, ban.lift_reason = now, by, reason
    db.session.flush()
    _undo(ban, owner, now)
    ban.release_moved_at, ban.release_after, ban.release_orders, ban.release_paid_fen = now, 0, 0, 0
    if not active_bans([(ban.subject, ban.value)], now):  # no other ban on them: releases it stopped go on
        _resume_stopped(ban, now)
    if owner is not None and owner.status != "active":  # another ban on them: its lift releases what they earned
        ban.release_state = DONE
    elif resumable is None:
        ban.release_state = RUNNING
    else:  # a device or network: each order's buyer, unless refused another way (``_resume``)
        beneficiary = None if owner is None else (str(ban.subject), owner.id)
        db.session.flush()
        ban.release_paid_fen = resume_refused(resumable, beneficiary, now, money)
        ban.release_state, ban.release_orders = DONE, len(resumable)
        ban.release_after = max(resumable, default=0)
    db.session.flush()


def _resume_stopped(ban: Ban, now: datetime) -> None:
    """The releases of earlier lifts of the same person, merchant, device or network that this ban (put back while
    they ran) stopped go on from where they were, each paying as of its own lift (``release_batch``): what an earlier
    lift owed, deadlines between the two lifts included (their awards waited, ``milestones._owed_to_releases``)."""
    db.session.execute(
        update(Ban)
        .where(Ban.subject == ban.subject, Ban.value == ban.value, Ban.id != ban.id, Ban.release_state == STOPPED)
        .values(release_state=RUNNING, release_moved_at=now)
        .execution_options(synchronize_session=False)
    )


def _undo(ban: Ban, owner: User | Merchant | None, now: datetime) -> None:
    """A lifted or expired ban: the person or merchant is active again, unless another ban on them is active."""
    if owner is None:
        return
    others = active_bans([(ban.subject, ban.value)], now)
    if others:
        if ban.subject == BanSubject.USER:
            owner.banned_reason = ban_words(others[0])[:200]
        return
    if ban.subject == BanSubject.USER:
        owner.status, owner.banned_reason = UserStatus.ACTIVE, None
    else:
        owner.status = "active"


def _count_left(ban: Ban) -> int:
    """The orders a running release has still to walk (for a network: at most, its neighbours may be counted)."""
    left = held_orders_query(str(ban.subject), str(ban.value), ban.lifted_at, ban.release_after).subquery()
    return db.session.execute(select(func.count()).select_from(left)).scalar_one()


class Released(NamedTuple):
    """One batch of a release: the orders it walked, the fen it paid, and whether more may remain."""

    orders: int
    paid_fen: int
    more: bool


def releasing_ban_ids(limit: int = 1000) -> list[int]:
    """The lifted bans whose release is running (``ix_risk_bans_releasing``), oldest first."""
    stmt = select(Ban.id).where(Ban.release_state == RUNNING).order_by(Ban.id).limit(limit)
    return list(db.session.execute(stmt).scalars())


def release_batch(ban_id: int, now: datetime, limit: int, *, money: MoneySettings) -> Released | None:
    """The next ``limit`` orders of a lifted ban's running release, in the caller's transaction (the job commits each
    batch): each locked (as a report or a refund takes it first) and what the ban had refused on it applied, as the
    lift would have applied it then (``rebate.milestones.resume_refused`` at ``lifted_at``; a refusal still standing,
    another ban, leaves it waiting). The ban's row is locked for the batch, skipping one another runner holds: two
    runners never walk the same orders, and each batch moves ``release_after`` on in the same commit as what it paid
    (an order is walked once). The same ban in force again stops the release (``stopped``). None: nothing to do here
    (not running, or another runner's batch holds it)."""
    ban = db.session.execute(
        select(Ban)
        .where(Ban.id == ban_id, Ban.release_state == RUNNING)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if ban is None:
        return None
    if active_bans([(ban.subject, ban.value)], now):  # put back: its own lift walks these orders again
        ban.release_state, ban.release_moved_at = STOPPED, now
        db.session.flush()
        return Released(0, 0, False)
    order_ids, last, looked = held_orders(str(ban.subject), str(ban.value), ban.lifted_at, ban.release_after, limit)
    lock_orders(order_ids)
    beneficiary = None if ban.subject in (BanSubject.DEVICE, BanSubject.NET) else (str(ban.subject), int(ban.value))
    paid = resume_refused(order_ids, beneficiary, ban.lifted_at, money, _banned_again_at(ban)) if order_ids else 0
    more = looked >= limit
    ban.release_after, ban.release_moved_at = last, now
    ban.release_orders += len(order_ids)
    ban.release_paid_fen += paid
    if not more:
        ban.release_state = DONE
    db.session.flush()
    return Released(len(order_ids), paid, more)


def _banned_again_at(ban: Ban) -> datetime | None:
    """When the same person, merchant, device or network was first banned again after this ban's lift (None: not
    since): a release resumed after that ban's lift replays only what was met before it."""
    stmt = select(func.min(Ban.created_at)).where(
        Ban.subject == ban.subject, Ban.value == ban.value, Ban.id != ban.id, Ban.created_at > ban.lifted_at
    )
    return db.session.execute(stmt).scalar()


def stalled_releases(now: datetime) -> list[Ban]:
    """Running releases with no batch for ``RELEASE_STALLED_AFTER``."""
    stmt = select(Ban).where(Ban.release_state == RUNNING, Ban.release_moved_at < now - RELEASE_STALLED_AFTER)
    return list(db.session.execute(stmt.order_by(Ban.id)).scalars())


def expired_ban_ids(now: datetime, limit: int, after: int = 0) -> list[int]:
    """Ids of bans past their end and not yet lifted, above ``after``, oldest first (at most ``limit``)."""
    return list(
        db.session.execute(
            select(Ban.id)
            .where(Ban.id > after, Ban.lifted_at.is_(None), Ban.ends_at.is_not(None), Ban.ends_at <= now)
            .order_by(Ban.id)
            .limit(limit)
        ).scalars()
    )


def lift_expired(ban_id: int, now: datetime, *, money: MoneySettings) -> bool:
    """Lift one ban past its end ("expired") and undo its effects; whether this call lifted it (lifted meanwhile,
    or not past its end after all: nothing done)."""
    ban = _get(ban_id)
    if ban.lifted_at is not None or ban.ends_at is None or ban.ends_at > now:
        return False
    return _lift(ban_id, now, f"expired at {ban.ends_at:%Y-%m-%d %H:%M} UTC", None, money)[1]


def lift_expired_bans(now: datetime, limit: int = 500, *, money: MoneySettings) -> int:
    """Bans past their end are marked lifted ("expired") and their effects undone, in the caller's transaction; how
    many. (The job lifts each in its own transaction: ``jobs.risk.lift_expired_bans_job``.)"""
    return sum(lift_expired(ban_id, now, money=money) for ban_id in expired_ban_ids(now, limit))


def list_bans(subject: str | None, value: str | None, active: bool | None, now: datetime, limit: int, offset: int):
    """Bans, newest first, by subject, value (as bans keep it) and whether they are active now."""
    stmt = select(Ban).order_by(Ban.id.desc()).limit(limit).offset(offset)
    if subject is not None:
        stmt = stmt.where(Ban.subject == subject)
    if value is not None:
        if subject == BanSubject.NET:
            try:
                value = normalise_net(value)
            except ValueError as exc:
                raise Invalid(f"not a network address: {exc}", code="ban_value") from None
        stmt = stmt.where(Ban.value == value.strip())
    live = in_force(now)
    if active is True:
        stmt = stmt.where(live)
    elif active is False:
        stmt = stmt.where(~live)
    return list(db.session.execute(stmt).scalars())
