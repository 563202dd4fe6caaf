"""Taking paid rebate money back: by a refund (``rebate.refunds``) or by a reviewer's claw back (``rebate.reviews``).

Money that has not left is taken back from the payout; money that has left is recovered from the
beneficiary's balance as far as it goes, and the rest becomes a receivable netted against their next
rebate of the same kind. The budget gets back only what was recovered. Each step is one
``RebateAdjustment`` saying where the money came back from, and the person is told (``rebate.tell``).
"""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select

from ledger import Leg, account, balance, post_entry
from models import (
    AccountKind,
    Campaign,
    LedgerEntry,
    Payout,
    PayoutStatus,
    Rebate,
    RebateAdjustment,
    RebateStatus,
    Receivable,
    db,
    utcnow,
)
from models.payouts import Rail
from money import format_yuan
from payouts import MoneySettings, cancel_or_reduce, pending_payouts_for_rebate
from payouts.operations import lock_user
from payouts.transitions import on_funded_payout_returned
from rebate import budgets, tell
from rebate.awards import KIND_OF_FORM, SHARE_DEBT, beneficiary_account, owes_ref, shared_by_merchant
from rebate.campaigns import funder_account
from rebate.fees import locked
from rebate.rules import Form


def take_back(
    rebate: Rebate,
    campaign: Campaign,
    delta: int,
    key: str,
    what: str,
    money: MoneySettings,
    refund_id: int | None = None,
) -> int:
    """Take ``delta`` fen of ``rebate``'s paid amount back under ledger key ``key`` (``what``: "refund R1-…",
    "review case 7", said in the memo and the adjustment); flushes. Returns what was recovered now."""
    kind = KIND_OF_FORM[rebate.form]
    from_payout = from_balance = points = 0
    debts: list[tuple[int | None, int]] = []  # a share debt's parts: (the in-flight payout it waits on, fen)
    if rebate.beneficiary_type == "user":
        # What the balance covers is read under the person's row lock, as a withdrawal's and a challenge
        # stake's are: a stake reserved meanwhile would otherwise spend what this counts as recovered (a coupon's
        # too: one its rail credited to the balance instead is taken back from there). Before any payout's lock.
        lock_user(rebate.beneficiary_id)
    if kind == "coupon":
        from_payout = _from_pending_payout(rebate, delta, key, funder_account(campaign))
        # a coupon its rail refused and credited to the balance instead is cash in the person's balance: taken back
        # as a cash rebate is (from the balance, the rest owed), before any coupon that may have been issued
        from_cash = min(delta - from_payout, _in_balance(rebate, rebate.amount_fen - from_payout))
        if from_cash and rebate.beneficiary_type == "user":
            cash = account(AccountKind.USER_CASH, "user", rebate.beneficiary_id)
            from_balance = min(from_cash, max(0, balance(cash)))
            post_entry(
                f"{key}:balance",
                f"{what} claws back {rebate.role} coupon rebate credited to the balance",
                [Leg(cash, -from_cash), Leg(funder_account(campaign), from_cash)],
            )
            if from_cash > from_balance:
                debts = [(None, from_cash - from_balance)]
    elif kind == "points":
        points = rebate.points
        from_balance, delta = _points_back(rebate, delta, key, money.point_value_fen, what)
        points -= rebate.points
    elif shared_by_merchant(rebate, campaign):
        # shared from the merchant's order money: what has left is owed to that merchant, never taken from
        # the person's balance at the platform (that would collect the merchant's money here)
        target = beneficiary_account(rebate)
        from_payout = _from_pending_payout(rebate, delta, key, target)
        owed = delta - from_payout
        legs = [Leg(funder_account(campaign), delta)]
        legs += [Leg(target, -from_payout)] if from_payout else []
        legs += [Leg(owes_ref(rebate.beneficiary_id), -owed)] if owed else []
        post_entry(key, f"{what} claws back {rebate.role} rebate shared by its merchant", legs)
        kind, debts = SHARE_DEBT, _share_debt_parts(rebate, owed)
    else:
        target = beneficiary_account(rebate)
        if rebate.beneficiary_type != "user":  # a merchant's credit, spent and invoiced under its row lock: the
            locked(target)  # balance read here must not be spent before this posts (users: ``lock_user`` above)
        from_payout = _from_pending_payout(rebate, delta, key, target)
        from_balance = min(delta - from_payout, max(0, balance(target) - from_payout))
        post_entry(
            key,
            f"{what} claws back {rebate.role} rebate",
            [Leg(target, -delta), Leg(funder_account(campaign), delta)],
        )
        if rebate.beneficiary_type == "user" and from_payout + from_balance < delta:
            _cancel_unconfirmed(rebate, what, whole=delta >= rebate.amount_fen)
    recovered = from_payout + from_balance
    receivable = delta - recovered
    budgets.release_committed(campaign.id, recovered)
    if receivable and (kind != "coupon" or debts):
        for payout_id, fen in debts or [(None, receivable)]:
            db.session.add(
                Receivable(
                    beneficiary_type=rebate.beneficiary_type,
                    beneficiary_id=rebate.beneficiary_id,
                    kind=kind if kind != "coupon" else KIND_OF_FORM[Form.BALANCE],  # (a coupon's: its cash owed)
                    campaign_id=campaign.id,
                    outstanding_fen=fen,
                    payout_id=payout_id,
                )
            )
    rebate.amount_fen -= delta
    if rebate.amount_fen == 0 and rebate.held_fen == 0:
        rebate.status = RebateStatus.CLAWED_BACK
    owed_cash = sum(fen for _, fen in debts) if kind == "coupon" else 0
    why = clawback_words(kind, from_payout, from_balance, receivable - owed_cash, owed_cash)
    db.session.add(
        RebateAdjustment(
            rebate_id=rebate.id,
            refund_id=refund_id,
            amount_fen=delta,
            recovered_fen=recovered,
            receivable_fen=receivable,
            reason=f"{what}: {why}"[:200],
        )
    )
    # The person is told what was taken and, in plain words, why (a refund, or a review: never its details).
    # A coupon already sent is not taken back: only one cancelled before it left is told.
    told = from_payout + from_balance + owed_cash if kind == "coupon" else delta
    tell.tell([tell.clawed_back(rebate, told, key, "order_refunded" if refund_id else "review_declined", points)])
    db.session.flush()
    return recovered


@on_funded_payout_returned
def _budget_back(payout: Payout, fen: int) -> None:
    """A coupon at WeChat when its rebate was taken back (``take_back`` leaves a coupon that may have been issued
    the campaign's cost) came back to its funder: what it carried beyond what the rebate still pays goes back to the
    campaign's budget (what it still pays went out anew, or stays committed with its funder)."""
    campaign_id = db.session.execute(select(Rebate.campaign_id).where(Rebate.id == payout.rebate_id)).scalar_one()
    budgets.release_committed(campaign_id, fen)


def clawback_words(kind: str, from_payout: int, from_balance: int, not_recovered: int, owed_cash: int = 0) -> str:
    """Where the money came back from: a payout not yet sent, the balance it was credited to, or not at all
    (``owed_cash``: of a coupon credited to the balance instead, what the balance did not cover)."""
    parts = []
    if from_payout:
        parts.append((format_yuan(from_payout), "taken back from a payout not yet sent"))
    if from_balance:
        where = "the points balance" if kind == "points" else "the balance it was credited to"
        parts.append((format_yuan(from_balance), f"taken back from {where}"))
    if not_recovered:
        rest = {
            "coupon": "a coupon already sent is not taken back",
            SHARE_DEBT: "owed to the merchant, settled from its next share to you",
        }.get(kind, "owed back from the next rebate")
        parts.append((format_yuan(not_recovered), f"had already left; {rest}"))
    if owed_cash:
        parts.append((format_yuan(owed_cash), "had already left; owed back from the next rebate"))
    if len(parts) == 1:
        return parts[0][1]
    return "; ".join(f"{amount} {words}" for amount, words in parts)


def _share_debt_parts(rebate: Rebate, owed: int) -> list[tuple[int | None, int]]:
    """Split what a clawback of a shared rebate leaves owed: the part its shares still at WeChat carry waits on
    each such payout (if it comes back, its money settles that part first; until it arrives nothing else
    settles it); the rest has reached the person already."""
    parts: list[tuple[int | None, int]] = []
    left = owed
    tied = (
        select(func.coalesce(func.sum(Receivable.outstanding_fen), 0))
        .where(Receivable.payout_id == Payout.id)
        .scalar_subquery()
    )
    in_flight = db.session.execute(
        select(Payout.id, Payout.amount_fen - tied)
        .where(
            Payout.rebate_id == rebate.id,
            Payout.rail == Rail.PROFIT_SHARING,
            Payout.status.in_([PayoutStatus.SENDING, PayoutStatus.UNKNOWN, PayoutStatus.NEEDS_OPERATOR]),
            Payout.request.is_not(None),
        )
        .order_by(Payout.id.desc())
    ).all()
    for payout_id, untied in in_flight:
        take = min(left, int(untied))
        if take > 0:
            parts.append((payout_id, take))
            left -= take
    if left > 0:
        parts.append((None, left))
    return parts


def _cancel_unconfirmed(rebate: Rebate, what: str, whole: bool) -> None:
    """The balance could not cover the clawback: a transfer of the rebate still waiting for the person's
    confirmation has not left, so it is cancelled at WeChat by the dispatcher's next pass (as an operator's
    cancel is); its money, back in the balance, settles what is owed (``settle_covered_debts``). A bill the person
    confirms first has left: what is owed stays owed. When the clawback takes the ``whole`` rebate, a payout of it
    still with WeChat (being sent, its answer unknown, or tried and due again) is marked the same way: if WeChat
    fails it, never had it (a transfer's query), or cannot pay it on its rail, its money stays in the balance and
    settles what is owed, never sent again under a new number (``payouts.record``, ``payouts.dispatch.call_wechat``);
    found waiting for the person's confirmation, it is cancelled too. One a dispatcher holds at this moment (its
    answer being recorded) is passed over: waiting for it would deadlock with the recorder, whose write of the payout
    waits for this refund's lock on the order; the recorder reads the rebate again after the refund instead
    (``payouts.record._taken_back``)."""
    mine = and_(Payout.rebate_id == rebate.id, Payout.rail != Rail.PROFIT_SHARING, Payout.cancel_requested.is_(False))
    waiting = and_(Payout.rail == Rail.WECHAT_CHANGE, Payout.status == PayoutStatus.WAITING_USER_CONFIRM)
    in_flight = or_(
        Payout.status.in_([PayoutStatus.SENDING, PayoutStatus.UNKNOWN]),
        and_(Payout.status == PayoutStatus.PENDING, Payout.request.is_not(None)),
    )
    offered = select(Payout).where(mine, waiting).order_by(Payout.id).with_for_update()
    going = select(Payout).where(mine, in_flight).order_by(Payout.id).with_for_update(skip_locked=True)
    stopped = [db.session.execute(offered).scalars().all()]
    if whole:  # (taken in part, it is sent as it was: what it pays beyond the rebate is owed from the next one)
        stopped.append(db.session.execute(going).scalars().all())
    for payouts in stopped:
        for payout in payouts:
            payout.cancel_requested = True
            if payout.status == PayoutStatus.WAITING_USER_CONFIRM:
                payout.next_attempt_at = utcnow()
            payout.last_error = f"cancellation requested: {what} took the rebate back"[:2000]


def _in_balance(rebate: Rebate, paid: int) -> int:
    """What of a coupon rebate paying ``paid`` now sits in the person's balance: its coupons the rail refused and
    credited there instead (``payout:<id>:to-balance``), less what an earlier clawback took back from it (taken
    before any coupon that may have been issued: ``paid`` beyond those still counts as in the balance)."""
    payouts = db.session.execute(select(Payout).where(Payout.rebate_id == rebate.id)).scalars().all()
    gone = (PayoutStatus.FAILED, PayoutStatus.CANCELLED)
    waiting = sum(
        p.amount_fen
        for p in payouts
        if p.status not in gone and not (p.status == PayoutStatus.PENDING and p.request is None)
    )
    keys = {f"payout:{p.id}:to-balance": p.amount_fen for p in payouts if p.status in gone}
    if not keys:  # none came back: none can have been credited to the balance (no ledger read)
        return 0
    credited = db.session.execute(select(LedgerEntry.idempotency_key).where(LedgerEntry.idempotency_key.in_(keys)))
    landed = sum(keys[k] for k in credited.scalars())
    return max(0, min(landed, paid - waiting))


def _from_pending_payout(rebate: Rebate, delta: int, key: str, back_to) -> int:
    taken = 0
    for payout in pending_payouts_for_rebate(rebate.id):
        taken += cancel_or_reduce(payout, delta - taken, f"{key}:{payout.id}", back_to)
    return taken


def _points_back(rebate: Rebate, delta: int, key: str, point_value_fen: int, what: str) -> tuple[int, int]:
    """Take back the points ``delta`` fen of ``rebate`` no longer pays for; returns the fen recovered and the fen
    the rebate comes down by.

    The points kept are what the rebate's new amount buys in whole points, rounded down as the award converts
    (``rebate.awards.pay_rebate``), and never more than it gave: reckoned from the new amount each time, not
    scaled from the points an earlier refund left, so partial refunds lose no point to rounding. (Scaled in
    proportion instead when that keeps more: a point now valued above what it was at the award.) What the
    person's points cannot cover is owed back in fen: what the points balance goes below zero by, at a point's
    value (as ``rebate.covered_debts`` and the ledger check reckon it); the rest is recovered, the part of a point
    the award never turned into a point included. Owed is exactly the points no longer held at a point's value
    even where that is more than ``delta`` (a point taken for less than its value: the new amount's part of a
    point, which buys no point, went with it): the rebate then comes down by what is owed, never below what the
    points kept are worth, so its budget stays committed by exactly the rebate and what is owed."""
    left = rebate.amount_fen - delta
    in_proportion = rebate.points * left // rebate.amount_fen if rebate.amount_fen else 0
    kept = max(in_proportion, min(rebate.points, left // point_value_fen))
    taken = rebate.points - kept
    points = beneficiary_account(rebate)
    short = max(0, taken - max(0, balance(points)))  # points the balance does not hold
    if taken:
        post_entry(
            key, f"{what} claws back points", [Leg(points, -taken), Leg(account(AccountKind.POINTS_ISSUANCE), taken)]
        )
    owed = short * point_value_fen
    delta = max(delta, min(owed, rebate.amount_fen - kept * point_value_fen))
    rebate.points = kept
    return delta - min(delta, owed), delta
