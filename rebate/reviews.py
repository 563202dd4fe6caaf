"""Deciding review cases: what a reviewer's outcome does to the money, once.

An order case holds every rebate of a paid order in status ``review`` (``held_fen`` = the amount, budget
committed, nothing paid or queued). Its outcomes:

* ``release`` (label ``legit``): each held rebate is awarded and paid (``awards.pay_rebate``, ledger key
  ``rebate:<id>:review_release``); one waiting for milestones goes back to ``held`` and what the milestones
  reported meanwhile unlock is released (``milestones.release_from_review``: as if reviewed first; past its
  deadline the rest expires); one whose beneficiary the payment would refuse now (a banned or suspended
  person or merchant, the buyer of an order whose device or network is banned) is revoked instead, with
  the ban's words, its amount back to the budget.
* ``revoke`` (``fraud``): each held rebate is ``revoked`` and its amount returns to the budget; the buyer's
  unused packets are revoked (their reservations return, ``packets.release_packet``).
* ``claw_back`` (``fraud``): money already paid on the order is taken back as a refund takes it back
  (``clawbacks.take_back``: from a payout not yet sent, else the balance, else a receivable), anything still
  held is cancelled, and it revokes as above.
* ``ban_user`` / ``ban_device`` / ``ban_merchant`` (``fraud``): revoke as above, and ban the buyer, the order's
  device (none recorded: 422) or the merchant (``ban_ops.create_ban``, linked to the case).

A community case (the collusion job's) concerns its members: ``release`` dismisses it (``legit``, nothing
moves); ``revoke`` revokes the held rebates of orders its people paid in the window the collusion job read
(``RISK_GRAPH_DAYS`` before the community was found; at its merchants, when it has any) and their unused
packets; ``claw_back`` also takes back what was paid on those orders to its members;
``ban_*`` revokes and bans each member of that kind (none: 422).

Decided once: the same outcome again answers the case as decided (nothing done twice); another outcome is
409. Above ``second_approval_fen`` at stake (what the case holds; for a clawback also what was paid on its orders
to the people it takes back from), the first decision is a proposal (``awaiting_approval``, nothing
moves) carried out when a different operator decides the same outcome (a ban for the same ``ban_days``), or
closed by ``reject_proposal`` (a reviewer who disagrees, or its proposer withdrawing it: the case is open again). A
release or a clawback while a refund of one of its orders is pending is refused (409 ``refund_pending``, nothing
changed). The case row is locked first, then the orders, the packets, a merchant to ban, the campaigns (id order:
with a merchant ban, every campaign it will pause) and their deposits, as payments, claims, refunds and bans take
them.
Operations flush; the caller commits once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select

from models import (
    Campaign,
    CaseOutcome,
    CaseStatus,
    Merchant,
    Order,
    PacketStatus,
    Rebate,
    RebateStatus,
    RedPacket,
    Refund,
    ReviewCase,
    RiskCommunity,
    User,
    db,
)
from models.operators import Actor, approval_refused_because, audit
from models.orders import OPEN_REFUNDS
from payouts import MoneySettings
from rebate import budgets, tell
from rebate.awards import cancel_held, pay_rebate
from rebate.ban_ops import campaigns_to_pause, create_ban, required_reason
from rebate.clawbacks import take_back
from rebate.deposits import lock_deposits
from rebate.errors import Invalid, NotFound, RebateError, StateConflict
from rebate.milestones import release_from_review
from rebate.packets import release_packet
from risk.bans import active_bans, refused_by, subjects
from risk.cases import lock_case, members_by_kind

BAN_SUBJECT = {CaseOutcome.BAN_USER: "user", CaseOutcome.BAN_DEVICE: "device", CaseOutcome.BAN_MERCHANT: "merchant"}
MAX_BAN_DAYS = 3650


class SecondReviewerRequired(RebateError):
    code, kind = "second_reviewer_required", "forbidden"


@dataclass(frozen=True)
class Review:
    """A reviewer's decision: the outcome, why, and for a ban how many days (None: until lifted)."""

    outcome: str
    reason: str
    ban_days: int | None = None


def label_of(outcome: str) -> str:
    """What backtests learn from the outcome."""
    return "legit" if outcome == CaseOutcome.RELEASE else "fraud"


def decide(
    actor: Actor,
    case_id: int,
    review: Review,
    now: datetime,
    *,
    money: MoneySettings,
    second_approval_fen: int,
    graph_days: int,
) -> ReviewCase:
    """Decide (or propose, or approve) ``review`` on case ``case_id``; the case as it now stands.

    ``graph_days``: ``RISK_GRAPH_DAYS``, the window the collusion job read before a community's ``found_at``
    (a community outcome acts on its members' orders paid in that window only)."""
    _check(review)
    review = replace(review, outcome=CaseOutcome(review.outcome).value)  # the word itself in messages, not the enum
    case = lock_case(case_id)
    if case is None:
        raise NotFound(f"review case {case_id} not found")
    if case.status == CaseStatus.DECIDED:
        if case.outcome == review.outcome:
            return case  # decided so already: the same answer, nothing done twice
        raise StateConflict(
            f"case {case.id} was decided {case.outcome!r} by operator {case.decided_by}; it cannot become "
            f"{review.outcome!r}",
            code="case_decided",
        )
    scope = _scope(case, review, graph_days)
    _refuse_while_refunding(scope, review)
    at_stake = _at_stake(case, scope, review)
    # a case awaiting approval is decided by its approval (or its proposal rejected first), whatever the outcome
    if case.status == CaseStatus.AWAITING_APPROVAL or at_stake > second_approval_fen:
        if case.status == CaseStatus.OPEN:
            return _propose(actor, case, review, now, second_approval_fen, at_stake)
        proposed_days = proposed_ban_days(case)
        if case.proposed_outcome != review.outcome or (
            review.outcome in BAN_SUBJECT and review.ban_days != proposed_days
        ):
            raise StateConflict(
                f"case {case.id} awaits approval of {case.proposed_outcome!r}{_for_days(case, proposed_days)} "
                f"proposed by operator {case.proposed_by} ({case.proposed_reason}); approve that outcome or leave it",
                code="proposal_differs",
            )
        if case.proposed_by == actor.operator.id:
            raise SecondReviewerRequired(
                f"case {case.id}'s {review.outcome} moves {at_stake} fen (over {second_approval_fen}): a second "
                "reviewer must approve, not the operator who proposed it"
            )
        why = approval_refused_because(actor.operator, case.proposed_by, case.proposed_at, now)
        if why:
            raise SecondReviewerRequired(f"case {case.id}'s {review.outcome} moves {at_stake} fen: {why}")
    effects = _carry_out(actor, case, scope, review, now, money)
    case.status, case.outcome, case.label = CaseStatus.DECIDED, review.outcome, label_of(review.outcome)
    case.decided_by, case.decided_at, case.decision_reason = actor.operator.id, now, review.reason
    case.effects = effects
    details = {"outcome": review.outcome, "label": case.label, "effects": effects}
    if case.proposed_by is not None:
        details["proposed_by"] = case.proposed_by
    audit(actor, "review.decide", "review_case", case.id, review.reason, **details)
    db.session.flush()
    return case


def reject_proposal(actor: Actor, case_id: int, reason: str, now: datetime) -> ReviewCase:
    """Close the proposal a case awaits (a second reviewer who disagrees, or its proposer withdrawing it): the case
    is open again, nothing moved, and the next decision is a new proposal. Nothing waiting (open, or decided) is 409
    ``no_proposal``."""
    reason = required_reason(reason, "rejecting a proposal needs a reason")
    case = lock_case(case_id)
    if case is None:
        raise NotFound(f"review case {case_id} not found")
    if case.status != CaseStatus.AWAITING_APPROVAL:
        state = f"was decided {case.outcome!r}" if case.status == CaseStatus.DECIDED else "awaits no approval"
        raise StateConflict(f"case {case.id} {state}: there is no proposal to reject", code="no_proposal")
    proposal = {
        "proposed_outcome": case.proposed_outcome,
        "proposed_by": case.proposed_by,
        "proposed_at": case.proposed_at.isoformat(),
        "proposed_reason": case.proposed_reason,
        "proposed_ban_days": proposed_ban_days(case),
    }
    withdrawn = case.proposed_by == actor.operator.id
    case.status = CaseStatus.OPEN
    case.proposed_outcome = case.proposed_by = case.proposed_at = case.proposed_reason = None
    case.effects = {}
    audit(actor, "review.proposal_reject", "review_case", case.id, reason, withdrawn=withdrawn, **proposal)
    db.session.flush()
    return case


def _check(review: Review) -> None:
    if review.outcome not in set(CaseOutcome):
        raise Invalid(f"outcome must be one of {', '.join(CaseOutcome)}, not {review.outcome!r}", code="outcome")
    if not review.reason or not review.reason.strip():
        raise Invalid("a decision needs a reason", code="reason_required")
    if review.ban_days is not None:
        if review.outcome not in BAN_SUBJECT:
            raise Invalid("ban_days goes with a ban outcome", code="ban_days")
        if not 1 <= review.ban_days <= MAX_BAN_DAYS:
            raise Invalid(f"ban_days is 1 to {MAX_BAN_DAYS}", code="ban_days")


def proposed_ban_days(case: ReviewCase) -> int | None:
    """The ban length a proposal awaiting approval asked for (None: until lifted, or not a ban). Kept in the case's
    ``effects`` until the decision replaces them with what it did: the second reviewer approves this length too."""
    if case.status != CaseStatus.AWAITING_APPROVAL:
        return None
    return (case.effects or {}).get("proposed_ban_days")


def _for_days(case: ReviewCase, days: int | None) -> str:
    if case.proposed_outcome not in BAN_SUBJECT:
        return ""
    return f" for {days} days" if days else " until lifted"


def _at_stake(case: ReviewCase, scope: Scope, review: Review) -> int:
    """What the outcome moves, as the second approval's threshold reads it: the money the case holds, and for a
    clawback also what was paid on its orders to the people it takes back from (the case's held part may be small)."""
    held = _held_now(case)
    if review.outcome != CaseOutcome.CLAW_BACK or not scope.order_ids:
        return held
    paid = db.session.execute(
        select(Rebate.beneficiary_type, Rebate.beneficiary_id, Rebate.amount_fen).where(
            Rebate.order_id.in_(scope.order_ids), Rebate.amount_fen > 0
        )
    ).all()
    return held + sum(amount for kind, who, amount in paid if _clawed_from(kind, who, scope))


def _held_now(case: ReviewCase) -> int:
    """What an order case holds now: its rebates still in review. ``held_fen`` is what the payment held; a refund
    since cancels its part of the hold (one the refund took whole holds nothing), so a case a refund emptied is no
    longer a large one for two reviewers. A community case's is what the collusion job found it concerned."""
    if case.kind != "order":
        return case.held_fen
    held = db.session.execute(
        select(func.coalesce(func.sum(Rebate.held_fen), 0)).where(
            Rebate.order_id == case.order_id, Rebate.status == RebateStatus.REVIEW
        )
    ).scalar_one()
    return int(held)  # PostgreSQL sums integers as numeric: the audit's details are JSON


def _propose(
    actor: Actor, case: ReviewCase, review: Review, now: datetime, threshold: int, at_stake: int
) -> ReviewCase:
    case.status = CaseStatus.AWAITING_APPROVAL
    case.proposed_outcome, case.proposed_by = review.outcome, actor.operator.id
    case.proposed_at, case.proposed_reason = now, review.reason
    case.effects = {"proposed_ban_days": review.ban_days} if review.outcome in BAN_SUBJECT else {}
    audit(
        actor,
        "review.propose",
        "review_case",
        case.id,
        review.reason,
        outcome=review.outcome,
        threshold_fen=threshold,
        at_stake_fen=at_stake,
        ban_days=review.ban_days,
    )
    db.session.flush()
    return case


@dataclass
class Scope:
    """What an outcome acts on: the orders, whose rebates may be clawed back, whose packets revoked, who is banned."""

    order_ids: list[int]
    people: list[int]  # whose unused packets are revoked
    beneficiaries: set[tuple[str, int]] | None  # paid rebates clawed back: these only (None: every one)
    bans: list[str]  # the values banned (by a ban outcome)


def _scope(case: ReviewCase, review: Review, graph_days: int) -> Scope:
    """What the outcome would act on, or ``Invalid`` when it does not apply to this case. A community's
    orders are its people's paid in the window the collusion job read (``graph_days`` before it was found)."""
    subject = BAN_SUBJECT.get(review.outcome)
    if case.kind == "order":
        order = db.session.get(Order, case.order_id)
        value = {"user": str(order.user_id), "device": order.device, "merchant": str(order.merchant_id)}.get(subject)
        if subject and not value:
            raise Invalid(f"order {order.id} has no {subject} recorded to ban", code=f"no_{subject}")
        return Scope([order.id], [order.user_id], None, [value] if subject else [])
    community = db.session.get(RiskCommunity, case.community_id)
    members = members_by_kind(community.members if community else [])
    if subject and not members[subject]:
        raise Invalid(f"community case {case.id} lists no {subject} to ban", code=f"no_{subject}")
    if review.outcome == CaseOutcome.RELEASE:
        return Scope([], [], None, [])
    people = [int(u) for u in members["user"] if u.isdecimal()]
    merchants = [int(m) for m in members["merchant"] if m.isdecimal()]
    order_ids = []
    if people:  # the orders the collusion job saw: paid in the graph's window before it found the community
        found_at = community.found_at
        window = (Order.paid_at >= found_at - timedelta(days=graph_days), Order.paid_at < found_at)
        stmt = select(Order.id).where(Order.user_id.in_(people), *window).order_by(Order.id)
        if merchants:
            stmt = stmt.where(Order.merchant_id.in_(merchants))
        order_ids = list(db.session.execute(stmt).scalars())
    beneficiaries = {("user", u) for u in people} | {("merchant", m) for m in merchants}
    return Scope(order_ids, people, beneficiaries, members[subject] if subject else [])


def _carry_out(
    actor: Actor, case: ReviewCase, scope: Scope, review: Review, now: datetime, money: MoneySettings
) -> dict:
    """Move the money the outcome says; what it did (stored on the case, said in the audit)."""
    effects = {"released_fen": 0, "revoked_fen": 0, "clawed_back_fen": 0, "recovered_fen": 0}
    effects |= {"rebates": [], "packets_revoked": [], "bans": []}
    orders = _lock_orders(scope.order_ids)
    _refuse_while_refunding(scope, review)  # again, under the orders' locks (begin_refund takes them)
    rebates = _lock_rebates(scope.order_ids)
    release = review.outcome == CaseOutcome.RELEASE
    packets = [] if release else _lock_packets(scope.people)
    subject = BAN_SUBJECT.get(review.outcome)
    # A merchant ban pauses the merchant's campaigns: its row and theirs are locked here, with the rest, in
    # one order (merchant, campaigns by id, deposits) — as a ban from the bans screen and payments take them.
    paused = _lock_banned_merchants(scope.bans) if subject == "merchant" else set()
    campaigns = _lock_campaigns({r.campaign_id for r in rebates} | {p.campaign_id for p in packets} | paused)
    why = f"review case {case.id} ({review.outcome}): {review.reason}"
    refused = _refusals(rebates, orders, now) if release else {}
    for rebate in rebates:
        campaign, order = campaigns[rebate.campaign_id], orders[rebate.order_id]
        if release:
            _release(rebate, campaign, order, why, now, money, effects, refused)
            continue
        if review.outcome == CaseOutcome.CLAW_BACK and _clawed(rebate, scope):
            _claw_back(case, rebate, campaign, why, money, effects)
        if rebate.status == RebateStatus.REVIEW:
            held_fen = rebate.held_fen
            _revoke(rebate, why, effects)
            # told in plain words that the money held for review will not come (never why)
            tell.tell([tell.clawed_back(rebate, held_fen, f"review:{case.id}:revoke:{rebate.id}", "review_declined")])
    for packet in packets:
        if packet.status == PacketStatus.ISSUED:
            release_packet(packet, PacketStatus.REVOKED)
            effects["packets_revoked"].append(packet.id)
    if not release:
        effects["packets_revoked_when_unlocked"] = _revoke_when_unlocked(scope.people, now)
    ends_at = now + timedelta(days=review.ban_days) if review.ban_days else None
    for value in scope.bans:
        ban = create_ban(actor, subject, value, why[:500], now, ends_at=ends_at, case_id=case.id)
        effects["bans"].append(ban.id)
    db.session.flush()
    return effects


def _refuse_while_refunding(scope: Scope, review: Review) -> None:
    """A release or a clawback waits for a pending refund of its orders to settle: the refund held the payouts
    there were when it began, and settles on the rebates as they were (a release now would queue payouts
    no one holds; a clawback would take back what the refund is about to)."""
    if review.outcome not in (CaseOutcome.RELEASE, CaseOutcome.CLAW_BACK) or not scope.order_ids:
        return
    pending = db.session.execute(
        select(Refund.order_id)
        .where(Refund.order_id.in_(scope.order_ids), Refund.status.in_(OPEN_REFUNDS))
        .order_by(Refund.order_id)
        .limit(1)
    ).scalar_one_or_none()
    if pending is not None:
        raise StateConflict(f"a refund of order {pending} is pending: decide after it settles", code="refund_pending")


def _lock_banned_merchants(values: list[str]) -> set[int]:
    """Lock the rows of the merchants to be banned (id order); the ids of the active campaigns the ban will
    pause (``ban_ops``: every one they issue, fund or take packets at)."""
    ids = sorted({int(v) for v in values if v.isdecimal()})
    if not ids:
        return set()
    db.session.execute(select(Merchant.id).where(Merchant.id.in_(ids)).order_by(Merchant.id).with_for_update())
    return set(campaigns_to_pause(ids))


def _refusals(rebates: list[Rebate], orders: dict[int, Order], now: datetime) -> dict[tuple[int, str, int], str]:
    """Who a release must not pay, with the words why, as the payment refuses them (``payments._refusals``):
    a banned or suspended person or merchant, and the buyer of an order whose device or network is banned.
    Keyed by (order id, beneficiary type, beneficiary id)."""
    refused: dict[tuple[int, str, int], str] = {}
    held = [r for r in rebates if r.status == RebateStatus.REVIEW and r.beneficiary_id is not None]
    paid_to: dict[int, set[tuple[str, int]]] = {}
    for r in held:
        paid_to.setdefault(r.order_id, set()).add((r.beneficiary_type, r.beneficiary_id))
    pairs_of = {}
    for order_id, mine in paid_to.items():
        pairs = subjects(device=orders[order_id].device, ip=orders[order_id].ip)
        for kind, who in sorted(mine):
            pairs += subjects(user_id=who) if kind == "user" else subjects(merchant_id=who)
        pairs_of[order_id] = set(pairs)
    bans = active_bans(sorted(set().union(*pairs_of.values())), now)  # one read for every order of the case
    for order_id in sorted(paid_to):
        mine = paid_to[order_id]
        on_order = [ban for ban in bans if (ban.subject, ban.value) in pairs_of[order_id]]
        for key, words in refused_by(on_order, orders[order_id].user_id).items():
            if key in mine:
                refused.setdefault((order_id, *key), words)
        for kind, who in sorted(mine):
            if (order_id, kind, who) in refused:
                continue
            if kind == "merchant" and db.session.get(Merchant, who).status == "suspended":
                refused[(order_id, kind, who)] = f"merchant {who} is suspended"
            elif kind == "user" and not db.session.get(User, who).is_active:
                refused[(order_id, kind, who)] = f"user {who} is banned"
    return refused


def _lock_orders(order_ids: list[int]) -> dict[int, Order]:
    if not order_ids:
        return {}
    stmt = (
        select(Order)
        .where(Order.id.in_(order_ids))
        .order_by(Order.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {o.id: o for o in db.session.execute(stmt).scalars()}


def _lock_rebates(order_ids: list[int]) -> list[Rebate]:
    if not order_ids:
        return []
    owed = or_(Rebate.status == RebateStatus.REVIEW, Rebate.amount_fen > 0, Rebate.held_fen > 0)
    stmt = (
        select(Rebate)
        .where(Rebate.order_id.in_(order_ids), owed)
        .order_by(Rebate.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(db.session.execute(stmt).scalars())


def _revoke_when_unlocked(people: list[int], now: datetime) -> list[int]:
    """The people's packets locked on orders not paid yet: marked (``revoked_at``) to be revoked when their order
    closes (``rebate.orders.close_order``), not issued back to spend again; revoked in place, a payment of that order
    would find its reservation gone. One whose order is paid after all is spent (WeChat charged the lower price)."""
    if not people:
        return []
    locked = (RedPacket.owner_id.in_(people), RedPacket.status == PacketStatus.LOCKED, RedPacket.revoked_at.is_(None))
    packets = db.session.execute(select(RedPacket).where(*locked).order_by(RedPacket.id).with_for_update()).scalars()
    ids = []
    for packet in packets:  # set on the rows the session holds: a close later in this transaction reads it
        packet.revoked_at = now
        ids.append(packet.id)
    return ids


def _lock_packets(people: list[int]) -> list[RedPacket]:
    if not people:
        return []
    stmt = (
        select(RedPacket)
        .where(RedPacket.owner_id.in_(people), RedPacket.status == PacketStatus.ISSUED)
        .order_by(RedPacket.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(db.session.execute(stmt).scalars())


def _lock_campaigns(ids: set[int]) -> dict[int, Campaign]:
    """Every campaign the outcome moves, locked in id order, then the deposits funding them (as refunds do)."""
    if not ids:
        return {}
    budgets.lock_in_order(ids, even_one=True)
    campaigns = {cid: db.session.get(Campaign, cid) for cid in sorted(ids)}
    lock_deposits(list(campaigns.values()))
    return campaigns


def _clawed(rebate: Rebate, scope: Scope) -> bool:
    return _clawed_from(rebate.beneficiary_type, rebate.beneficiary_id, scope)


def _clawed_from(kind: str, who: int, scope: Scope) -> bool:
    return scope.beneficiaries is None or (kind, who) in scope.beneficiaries


def _release(
    rebate: Rebate,
    campaign: Campaign,
    order: Order,
    why: str,
    now: datetime,
    money: MoneySettings,
    effects: dict,
    refused: dict[tuple[int, str, int], str],
) -> None:
    if rebate.status != RebateStatus.REVIEW:
        return
    refusal = refused.get((rebate.order_id, rebate.beneficiary_type, rebate.beneficiary_id))
    if refusal is not None:  # as the payment would have refused them: nothing earned, the budget back
        _revoke(rebate, f"{why}; the {rebate.role} earns nothing: {refusal}", effects)
        return
    amount = rebate.held_fen
    effects["rebates"].append(rebate.id)
    if rebate.condition_deadline is not None:  # waits for its milestones, as it would have; those met count
        rebate.reasons = [*rebate.reasons, f"{why}: released to wait for its milestones"]
        effects["released_fen"] += release_from_review(rebate, campaign, order, now, money)
        return
    rebate.held_fen, rebate.amount_fen, rebate.status = 0, rebate.amount_fen + amount, RebateStatus.AWARDED
    rebate.reasons = [*rebate.reasons, f"{why}: released, {amount} fen paid"]
    db.session.flush()
    pay_rebate(rebate, campaign, order, amount, f"rebate:{rebate.id}:review_release", money)
    effects["released_fen"] += amount


def _revoke(rebate: Rebate, why: str, effects: dict) -> None:
    """A held rebate is cancelled: nothing was paid, its amount returns to the budget."""
    amount = rebate.held_fen
    cancel_held(rebate, amount, "revoked after a risk review: it will not be paid")
    rebate.held_fen, rebate.status = 0, RebateStatus.REVOKED
    rebate.reasons = [*rebate.reasons, f"{why}: revoked, {amount} fen back to the budget"]
    effects["revoked_fen"] += amount
    if rebate.id not in effects["rebates"]:
        effects["rebates"].append(rebate.id)
    db.session.flush()


def _claw_back(
    case: ReviewCase, rebate: Rebate, campaign: Campaign, why: str, money: MoneySettings, effects: dict
) -> None:
    """Paid money comes back as a refund's clawback takes it; money held for milestones is cancelled."""
    if rebate.status == RebateStatus.HELD and rebate.held_fen:
        _revoke(rebate, why, effects)
        rebate.status = RebateStatus.HELD if rebate.amount_fen else RebateStatus.REVOKED
    if rebate.amount_fen > 0:
        amount = rebate.amount_fen
        key = f"review:{case.id}:clawback:{rebate.id}"
        effects["recovered_fen"] += take_back(rebate, campaign, amount, key, f"review case {case.id}", money)
        effects["clawed_back_fen"] += amount
        rebate.reasons = [*rebate.reasons, f"{why}: {amount} fen clawed back"]
        if rebate.id not in effects["rebates"]:
            effects["rebates"].append(rebate.id)
        db.session.flush()
