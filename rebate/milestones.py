"""Conditional (reverse) rebates: awards held until the merchant reports milestones.

A held award is committed to the budget at payment. Reporting milestones
releases it — whole when all are met, or an equal part per milestone — scaled
by feedback quality when the rule says so (what quality withholds goes back
to the budget). Past its deadline the rest expires and returns to the budget;
a refund cancels the held part first (``refunds.py``). A rebate held for a risk review
is skipped here; milestones reported meanwhile are applied when a reviewer releases it
(``release_from_review``). A milestone met while the beneficiary was refused (banned) releases nothing
then; it is applied when the ban is lifted before the deadline (``resume_refused``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, null, or_, select

from models import (
    Ban,
    BanSubject,
    Campaign,
    Merchant,
    Order,
    OrderMilestone,
    OrderStatus,
    Rebate,
    RebateStatus,
    User,
    db,
    guarded_row,
    utcnow,
)
from models.orders import refund_open
from payouts import MoneySettings
from payouts.outbox import hold_order_payouts
from rebate.awards import cancel_held, pay_rebate
from rebate.campaigns import rules_of
from rebate.errors import Invalid, StateConflict
from rebate.orders import lock_order
from rebate.rules import Condition
from risk.bans import active_bans, refused_by, subjects
from risk.net import net_of


def _held(order_id: int) -> list[Rebate]:
    return list(
        db.session.execute(
            select(Rebate)
            .where(Rebate.order_id == order_id, Rebate.held_fen > 0, Rebate.status != RebateStatus.REVIEW)
            .order_by(Rebate.id)
            .with_for_update()
            .execution_options(populate_existing=True)  # after waiting on the order: the reasons another wrote
        ).scalars()
    )


def _scaled_by_feedback(order_id: int) -> bool:
    """Does a rebate of the order still waiting (for its milestones, or in review) scale by the feedback's quality?
    Feedback reported without one released the whole held part, as if it had been rated 100."""
    waiting = db.session.execute(select(Rebate).where(Rebate.order_id == order_id, Rebate.held_fen > 0)).scalars()
    for rebate in waiting:
        if rebate.condition_deadline is None:
            continue  # held for a risk review only: no milestones
        condition = _condition(rebate, db.session.get(Campaign, rebate.campaign_id))
        if condition is not None and condition.quality_scaled:
            return True
    return False


def _condition(rebate: Rebate, campaign: Campaign) -> Condition:
    return rules_of(campaign, rebate.rules_version).role(rebate.role).condition


def report_milestone(
    order: Order,
    name: str,
    quality: int | None,
    now: datetime,
    operator_id: int | None = None,
    *,
    money: MoneySettings,
) -> list[Rebate]:
    """Record a milestone once and release what it unlocks (paid out under ``money``); a repeat changes nothing."""
    order = lock_order(order.out_trade_no)
    if order.status != OrderStatus.PAID:
        raise StateConflict(
            f"milestones are reported on paid orders; this one is {order.status}", code="order_not_paid"
        )
    if quality is not None and not 0 <= quality <= 100:
        raise Invalid("quality must be 0 to 100", code="invalid_quality")
    met = {m.name: m for m in db.session.execute(select(OrderMilestone).filter_by(order_id=order.id)).scalars()}
    if name in met:
        return []
    if name == "feedback" and quality is None and _scaled_by_feedback(order.id):
        raise Invalid(
            "this order's rebate is scaled by the feedback's quality: report it with quality 0 to 100",
            code="quality_required",
        )
    met[name] = OrderMilestone(order_id=order.id, name=name, quality=quality, operator_id=operator_id, reported_at=now)
    db.session.add(met[name])
    db.session.flush()
    released = []
    for rebate in _held(order.id):
        campaign = db.session.get(Campaign, rebate.campaign_id)
        if now >= rebate.condition_deadline:
            if not _owed(rebate, now):  # one a lift's release still owes waits for it (or for the expiry job)
                expire_rebate(rebate, campaign)
            continue
        condition = _condition(rebate, campaign)
        if name in condition.milestones and _release(rebate, campaign, order, condition, met, name, money):
            released.append(rebate)
    if released:
        _hold_while_refunding(order.id)
    return released


def _hold_while_refunding(order_id: int) -> None:
    """What a release paid waits with the order's other payouts while a refund of it is open (it may still take it
    back: ``rebate.refunds`` releases them when none is open)."""
    if refund_open(order_id):
        db.session.flush()
        hold_order_payouts(order_id)


def release_from_review(rebate: Rebate, campaign: Campaign, order: Order, now: datetime, money: MoneySettings) -> int:
    """A conditional rebate a reviewer released: it waits for its milestones again (``held``) and what the
    milestones reported meanwhile unlock is released now, as if the review had come first: each milestone
    reported before the deadline in the order it was reported (its part, scaled by the feedback quality
    reported by then); past the deadline the rest expires. Returns the fen paid now."""
    rebate.status = RebateStatus.HELD
    before = rebate.amount_fen
    _replay(rebate, campaign, order, money)
    if rebate.held_fen and now >= rebate.condition_deadline:
        expire_rebate(rebate, campaign)
    db.session.flush()
    return rebate.amount_fen - before


REFUSED_MILESTONE = "milestone {name} met, but {why}: the held part is not released"
RESUMED_MILESTONE = "milestone {name} released: nothing refuses the {role} any more"


def _release(rebate, campaign, order, condition: Condition, met: dict, name: str, money: MoneySettings) -> bool:
    refused = _refused(rebate, order)
    if refused:  # refused as the payment would refuse them: the held part waits (or expires), ``resume_refused``
        rebate.reasons = [*rebate.reasons, REFUSED_MILESTONE.format(name=name, why=refused)]
        return False
    done = [m for m in condition.milestones if m in met]
    if condition.release == "all" and len(done) < len(condition.milestones):
        return False
    last = len(done) == len(condition.milestones)
    part = rebate.held_fen if last or condition.release == "all" else rebate.original_fen // len(condition.milestones)
    part = min(part, rebate.held_fen)
    quality = met["feedback"].quality if condition.quality_scaled and "feedback" in met else None
    pay = part * quality // 100 if quality is not None else part
    rebate.held_fen -= part
    if quality is not None:
        withheld = f"feedback quality {quality}/100: {part - pay} fen of milestone {name} withheld"
        cancel_held(rebate, part - pay, withheld)
    if pay:
        rebate.amount_fen += pay
        pay_rebate(rebate, campaign, order, pay, f"rebate:{rebate.id}:release:{name}", money)
    rebate.status = RebateStatus.HELD if rebate.held_fen else RebateStatus.AWARDED
    if quality is not None:
        rebate.reasons = [*rebate.reasons, f"feedback quality {quality}/100 released {pay} of {part} fen"]
    db.session.flush()
    return True


def held_orders(
    subject: str, value: str, since: datetime, after: int = 0, limit: int | None = None
) -> tuple[list[int], int, int]:
    """The orders on which a ban on ``subject`` ``value`` lifted at ``since`` may have refused a milestone's release, or
    may be refusing one now in a report not yet committed: those with a rebate still held (for its milestones, or in
    review) before its deadline, of the person or merchant banned, or for a ban on a device or network, of the buyer
    of an order placed from it (``risk.bans.refused_by``). Read, not locked: a ban's lift locks them first
    (``lock_orders``), as a report locks its order first, so a report on one of them comes wholly before the lift
    (which then sees what it refused and applies it) or after it (and sees the ban lifted). Orders with a refusal
    already recorded are not enough: a report in flight has not recorded its own yet.

    Those above ``after`` in id order, reading at most ``limit`` (a lift's release walks them a batch at a time):
    (the orders the ban covers, the last order id read, how many were read). A network's are read by ``_may_be_in``
    and tested exactly here (``risk.bans.subjects``)."""
    stmt = held_orders_query(subject, value, since, after).order_by(Rebate.order_id)
    rows = db.session.execute(stmt if limit is None else stmt.limit(limit)).all()
    mine = subject in (BanSubject.USER, BanSubject.MERCHANT)
    covered = [o for o, device, ip in rows if mine or (subject, value) in subjects(device=device, ip=ip)]
    return covered, (rows[-1][0] if rows else after), len(rows)


def held_orders_query(subject: str, value: str, since: datetime, after: int = 0):
    """The distinct (order id, device, address) read by ``held_orders`` (device and address None for a person's or a
    merchant's ban): a network's is a superset, ``_may_be_in``."""
    held = and_(
        Rebate.held_fen > 0,
        Rebate.status.in_((RebateStatus.HELD, RebateStatus.REVIEW)),
        Rebate.condition_deadline > since,
        Rebate.order_id > after,
    )
    if subject in (BanSubject.USER, BanSubject.MERCHANT):
        stmt = select(Rebate.order_id, null(), null()).where(
            held, Rebate.beneficiary_type == subject, Rebate.beneficiary_id == int(value)
        )
        return stmt.distinct()
    stmt = (
        select(Rebate.order_id, Order.device, Order.ip)
        .join(Order, Order.id == Rebate.order_id)
        .where(held, Rebate.beneficiary_type == "user", Rebate.beneficiary_id == Order.user_id)
    )
    placed = Order.device == value if subject == BanSubject.DEVICE else _may_be_in(value)
    return stmt.where(placed).distinct()


def _may_be_in(banned: str):
    """A condition every order placed from the banned address or network ``banned`` (as bans keep it) meets, and few
    others: its network (``Order.ip_net``, indexed) is the ban's or holds the banned address; the exact test is
    ``risk.bans.subjects``, made on what this returns. Orders written before ``ip_net`` was kept (by a process still
    running the code of before during a deploy) are matched on their address's text: an IPv4 one holds the address
    (or the /24's first three numbers) unless written without dots at all; an IPv6 one any colon."""
    net = banned if "/" in banned else net_of(banned)
    if ":" in banned:
        legacy = Order.ip.contains(":")
    else:
        dotted = banned if "/" not in banned else banned.rsplit(".", 1)[0] + "."
        legacy = or_(Order.ip.contains(dotted, autoescape=True), ~Order.ip.contains("."))
    return or_(Order.ip_net == net, and_(Order.ip_net.is_(None), Order.ip.is_not(None), legacy))


LOCK_CHUNK = 1000  # orders locked per statement (a lift of a big merchant's ban locks many)


def lock_orders(order_ids: list[int]) -> None:
    """Lock the orders, in id order, as a report or a refund locks one (the order first, then its people): a
    statement per ``LOCK_CHUNK`` of them (one each had been two round trips an order), read again as they are now."""
    ids = sorted(set(order_ids))
    for start in range(0, len(ids), LOCK_CHUNK):
        db.session.execute(
            select(Order)
            .where(Order.id.in_(ids[start : start + LOCK_CHUNK]))
            .order_by(Order.id)
            .with_for_update()
            .execution_options(populate_existing=True)  # after waiting on the locks, see the winners' writes
        ).scalars().all()


def resume_refused(
    order_ids: list[int],
    beneficiary: tuple[str, int] | None,
    now: datetime,
    money: MoneySettings,
    banned_again_at: datetime | None = None,
) -> int:
    """A ban was lifted: on ``order_ids`` (``held_orders``, locked by the caller before the banned person's or
    merchant's own row: the order first, as a refund takes them), the milestones met while it refused
    ``beneficiary`` (None, a ban on a device or network: each order's buyer), before their rebate's deadline, are
    applied now in the order they were reported, as ``report_milestone`` would have (a refusal still standing,
    another ban, leaves them waiting). Without this the held part expired at its deadline, the milestones met.
    ``banned_again_at``: a release replaying a lift as of then (``now``, the lift's time) after the same subject was
    banned again: milestones reported since are that ban's to refuse and its lift's to replay, not this one's.
    Returns the fen paid; what it pays waits while a refund of its order is open."""
    paid = 0
    for order_id in sorted(order_ids):
        order = db.session.get(Order, order_id)
        if order.status != OrderStatus.PAID:
            continue
        paid_before, whom = paid, beneficiary or ("user", order.user_id)
        for rebate in _held(order.id):
            if (rebate.beneficiary_type, rebate.beneficiary_id) == whom:
                paid += _resume(rebate, order, now, money, banned_again_at)
        if paid > paid_before:
            _hold_while_refunding(order.id)
    return paid


def _resume(
    rebate: Rebate, order: Order, now: datetime, money: MoneySettings, banned_again_at: datetime | None = None
) -> int:
    refused = _refused_names(rebate)
    if not refused or rebate.condition_deadline <= now or _refused(rebate, order, as_of=now):
        return 0
    campaign = db.session.get(Campaign, rebate.campaign_id)
    before = rebate.amount_fen
    for name in _replay(rebate, campaign, order, money, only=refused, before=banned_again_at):
        rebate.reasons = [*rebate.reasons, RESUMED_MILESTONE.format(name=name, role=rebate.role)]
    db.session.flush()
    return rebate.amount_fen - before


def _replay(
    rebate: Rebate,
    campaign: Campaign,
    order: Order,
    money: MoneySettings,
    only: set[str] | None = None,
    before: datetime | None = None,
):
    """Each milestone reported before the rebate's deadline (and ``before``: the same subject banned again after the
    lift a release replays; one reported since was refused, if at all, by that ban, whose lift replays it), in the
    order reported, released as its report would have released it (``only``: those names alone; the others count as
    met); the names that released."""
    condition = _condition(rebate, campaign)
    reported = db.session.execute(
        select(OrderMilestone)
        .where(OrderMilestone.order_id == order.id)
        .order_by(OrderMilestone.reported_at, OrderMilestone.id)
    ).scalars()
    met: dict[str, OrderMilestone] = {}
    released = []
    for milestone in reported:
        if milestone.reported_at >= rebate.condition_deadline:
            break  # reported past the deadline: it would have found the rebate expired
        if before is not None and milestone.reported_at >= before:
            break  # reported under a ban put back after the lift this replays: that ban's lift replays it
        name = met.setdefault(milestone.name, milestone).name
        wanted = rebate.held_fen and name in condition.milestones and (only is None or name in only)
        if wanted and _release(rebate, campaign, order, condition, met, name, money):
            released.append(name)
    return released


def _refused_names(rebate: Rebate) -> set[str]:
    """The milestones a refusal kept from releasing and nothing has applied since (read from the rebate's own
    reasons, written by ``_release`` and ``_resume`` in these two forms)."""
    refused: set[str] = set()
    head, tail = REFUSED_MILESTONE.split("{name}")[0], " met, but "
    done_head, done_tail = RESUMED_MILESTONE.split("{name}")[0], " released: "
    for reason in rebate.reasons or []:
        if reason.startswith(head) and tail in reason:
            refused.add(reason[len(head) : reason.index(tail)])
        elif reason.startswith(done_head) and done_tail in reason:
            refused.discard(reason[len(done_head) : reason.index(done_tail)])
    return refused


def _refused(rebate: Rebate, order: Order, as_of: datetime | None = None) -> str | None:
    """Why a release must not pay ``rebate``'s beneficiary now, as the payment and a review's release refuse them:
    a banned person, a suspended merchant, a ban on them, or for the buyer a ban on the order's device or network
    (it had checked banned persons only). None: it may pay. ``as_of``: a lift's release replaying as of its lift
    (its job may run later): a ban that stood then refuses too, though lifted since (its own lift replays what it
    refused, before the deadline only; a lagging release must not pay what that lift, after it, would not)."""
    if rebate.beneficiary_id is None:
        return None
    kind, who = rebate.beneficiary_type, rebate.beneficiary_id
    # read as committed now, not as this session first loaded them: a ban's lift may have committed meanwhile
    if kind == "user" and not db.session.get(User, who, populate_existing=True).is_active:
        return f"the {rebate.role} is banned"
    if kind == "merchant" and db.session.get(Merchant, who, populate_existing=True).status == "suspended":
        return f"the {rebate.role} (merchant {who}) is suspended"
    mine = subjects(user_id=who) if kind == "user" else subjects(merchant_id=who)
    bans = active_bans([*subjects(device=order.device, ip=order.ip), *mine], utcnow(), or_at=as_of)
    words = refused_by(bans, order.user_id).get((kind, who))
    return f"the {rebate.role} is refused ({words})" if words else None


def expire_rebate(rebate: Rebate, campaign: Campaign) -> None:
    cancel_held(rebate, rebate.held_fen, f"condition not met by {rebate.condition_deadline:%Y-%m-%d}: expired")
    rebate.reasons = [
        *rebate.reasons,
        f"condition not met by {rebate.condition_deadline:%Y-%m-%d}: {rebate.held_fen} fen expired",
    ]
    rebate.held_fen = 0
    rebate.status = RebateStatus.AWARDED if rebate.amount_fen else RebateStatus.EXPIRED
    db.session.flush()


def expire_held_rebates(now: datetime, limit: int = 500) -> int:
    """The job: held awards past their deadline expire and give their budget back; returns how many."""
    return expire_held_after(now, 0, limit)[1]


def expire_held_after(now: datetime, after: int, limit: int = 500) -> tuple[list[int], int]:
    """Up to ``limit`` held awards past their deadline (not in review), of ids above ``after`` (a job's keyset: each
    row once a run), expire; (the ids read, how many expired)."""
    stmt = select(Rebate).where(
        Rebate.held_fen > 0,
        Rebate.condition_deadline <= now,
        Rebate.status != RebateStatus.REVIEW,
        Rebate.id > after,
    )
    owed = _owed_to_releases(now)
    if owed is not None:
        stmt = stmt.where(~owed)
    due = db.session.execute(stmt.order_by(Rebate.id).limit(limit).with_for_update(skip_locked=True)).scalars().all()
    # each in a savepoint: one that fails is rolled back alone and alerted once, the others expire
    done = sum(guarded_row("held_rebate_expiry_failed", "rebate", r.id, _expire_due, r) for r in due)
    return [r.id for r in due], done


RELEASES_SCOPED = 50  # releases at once each named in the expiry's condition; more, and one cut-off for all
STOPPED_RELEASE_KEPT = timedelta(days=30)  # a release stopped by the same ban put back keeps its awards this long


def _owed_to_releases(now: datetime):
    """The held awards a lift's release still owes (a condition on ``Rebate``), or None: none running.

    A lift whose release a job walks (``rebate.ban_ops.release_batch``) pays what the ban held as of the lift, so an
    award it covers whose deadline came after the lift must not expire before the job reaches it (the job's lag, a
    stalled release, alerted ``ban_release_stalled``). A release stopped by the same ban put back resumes at that
    ban's lift and keeps its awards meanwhile, for ``STOPPED_RELEASE_KEPT`` (then they expire as any refused award
    whose ban stays). Each release covers what ``held_orders`` walks: the person's or merchant's awards, or
    the buyers' of the orders placed from the device or network; others expire as ever. Beyond ``RELEASES_SCOPED``
    releases at once, every award due after the earliest of their lifts waits."""
    rows = db.session.execute(
        select(Ban.subject, Ban.value, Ban.lifted_at)
        .where(
            Ban.lifted_at.is_not(None),
            or_(
                Ban.release_state == "running",
                and_(Ban.release_state == "stopped", Ban.release_moved_at > now - STOPPED_RELEASE_KEPT),
            ),
        )
        .order_by(Ban.lifted_at)
        .limit(RELEASES_SCOPED + 1)
    ).all()
    if not rows:
        return None
    if len(rows) > RELEASES_SCOPED:
        return Rebate.condition_deadline > rows[0].lifted_at
    covered = []
    known = Rebate.beneficiary_id.is_not(None)  # (never NULL inside the NOT: an award of nobody expires as ever)
    for subject, value, lifted_at in rows:
        later = and_(known, Rebate.condition_deadline > lifted_at)
        if subject in (BanSubject.USER, BanSubject.MERCHANT):
            covered.append(and_(later, Rebate.beneficiary_type == subject, Rebate.beneficiary_id == int(value)))
            continue
        placed = Order.device == value if subject == BanSubject.DEVICE else _may_be_in(value)
        buyers = select(Order.id).where(Order.id == Rebate.order_id, Order.user_id == Rebate.beneficiary_id, placed)
        covered.append(and_(later, Rebate.beneficiary_type == "user", buyers.exists()))  # per award, by its order
    return or_(*covered)


def _owed(rebate: Rebate, now: datetime) -> bool:
    """Whether a lift's release still owes ``rebate`` (``_owed_to_releases``): it must not expire meanwhile."""
    owed = _owed_to_releases(now)
    if owed is None:
        return False
    return db.session.execute(select(Rebate.id).where(Rebate.id == rebate.id, owed)).first() is not None


def _expire_due(rebate: Rebate) -> None:
    expire_rebate(rebate, db.session.get(Campaign, rebate.campaign_id))
