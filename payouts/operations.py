"""Operations on payouts beyond the dispatcher: withdrawals and the operator's hand.

Every function flushes and never commits; none calls WeChat (a WeChat-side
cancel is done by the caller with no transaction open, then recorded here).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select

from ledger import account, balance
from models import AccountKind, Campaign, Operator, Order, Payout, PayoutStatus, Rail, Rebate, User, db, utcnow
from models.operators import approval_refused_because, same_hands
from models.payouts import TERMINAL
from payouts.outbox import enqueue_payout
from payouts.settings import MoneySettings
from payouts.transitions import PayoutStateError, mark_returned, mark_succeeded, move

S = PayoutStatus


class PayoutError(Exception):
    code = "payout_error"
    kind = "conflict"

    def __init__(self, message: str, code: str | None = None, kind: str | None = None):
        super().__init__(message)
        self.code, self.kind = code or self.code, kind or self.kind


def lock_user(user_id: int) -> User:
    """Withdrawals of one person are serialised on their user row."""
    return db.session.execute(select(User).where(User.id == user_id).with_for_update()).scalar_one()


def withdraw(user: User, amount_fen: int, minimum_fen: int, key: str, *, money: MoneySettings) -> Payout:
    """Move cash balance to WeChat change; the balance, and that the person is not banned, are checked under the
    user's row lock (a ban committed after the request read the person is seen: as ``rebate.wallet.plan``)."""
    lock_user(user.id)
    db.session.refresh(user, attribute_names=["status"])
    if not user.is_active:
        raise PayoutError("this account is banned", code="user_banned", kind="forbidden")
    cash = account(AccountKind.USER_CASH, "user", user.id)
    available = balance(cash)
    if amount_fen < minimum_fen:
        raise PayoutError(f"withdrawals start at {minimum_fen} fen", code="below_withdrawal_minimum", kind="invalid")
    if amount_fen > available:
        raise PayoutError(f"only {max(0, available)} fen can be withdrawn", code="insufficient_balance")
    return enqueue_payout(
        rail=Rail.WECHAT_CHANGE,
        user_id=user.id,
        amount_fen=amount_fen,
        source=cash,
        key=f"withdrawal:{user.id}:{key}",
        memo=f"withdrawal by user {user.id}",
        number_prefix=money.number_prefix,
    )


def lock_payout(payout_id: int | None = None, *, external_no: str | None = None) -> Payout:
    """The payout row, locked and read fresh, by id or by its external number."""
    where = Payout.id == payout_id if external_no is None else Payout.external_no == external_no
    payout = db.session.execute(
        select(Payout).where(where).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if payout is None:
        raise PayoutError(f"no payout {payout_id or external_no}", code="not_found", kind="not_found")
    return payout


def lock_for_operator(payout_id: int) -> Payout:
    """``lock_payout`` for an operator's action: a profit-sharing payout's order row is locked first, as a
    refund and a share's answer lock it before its payouts (what the operator decides moves its frozen money)."""
    db.session.execute(
        select(Order.id)
        .join(Payout, Payout.order_id == Order.id)
        .where(Payout.id == payout_id, Payout.rail == Rail.PROFIT_SHARING)
        .with_for_update(of=Order)
    )
    return lock_payout(payout_id)


def resend(payout: Payout, now: datetime) -> None:
    """Back to the dispatcher with the SAME number: queried first if it may ever have reached WeChat."""
    if payout.status != S.NEEDS_OPERATOR:
        raise PayoutError(f"only a needs_operator payout is resent; this one is {payout.status}", code="payout_state")
    if waits_for_approval(payout):
        raise PayoutError("this manual payout waits for a second operator's approval", code="approval_required")
    move(payout, S.UNKNOWN if payout.sent_at is not None else S.PENDING)
    payout.next_attempt_at, payout.attempts = now, 0


# The rails where a payout still pending (or with an operator) and never marked sent is one WeChat never took,
# whatever its earlier POSTs answered: a coupon's 429 or spent stock issued nothing, and a send any attempt of which
# may have reached WeChat (a dropped connection, a timeout, on either host) marks it sent (``payouts.coupon_rail``).
# Such a payout asked to stop is cancelled, not sent again to find out (a coupon's query is a resend: it would issue
# it now); ``payouts.dispatch`` decides a stop by it, and an operator's cancel here.
NEVER_SENT_IS_DEFINITE = frozenset({Rail.WECHAT_COUPON})


def cancel(payout: Payout, now: datetime, reason: str) -> None:
    """Cancel an unsent payout now; one waiting for the user's confirmation is cancelled at WeChat by
    the dispatcher's next pass (its money comes back once WeChat confirms the cancellation). A coupon whose sends
    WeChat answered without issuing it (a 429: its request fixed, never marked sent) is cancelled now too, as a
    stop cancels it: no later pass sends it."""
    if payout.status == S.WAITING_USER_CONFIRM:
        payout.cancel_requested, payout.next_attempt_at = True, now
        payout.last_error = f"cancellation requested by an operator: {reason}"[:2000]
        return
    if payout.status == S.SENDING:  # the dispatcher's call about it is under way (a waiting bill queried again, say)
        raise PayoutError(
            "this payout is with WeChat right now (being sent, or asked about): nothing was changed; cancel it again "
            "once the dispatcher has WeChat's answer (one waiting for the user's confirmation is then cancelled at "
            "WeChat)",
            code="payout_state",
        )
    never_taken = payout.request is None or payout.rail in NEVER_SENT_IS_DEFINITE
    if payout.sent_at is None and never_taken and payout.status in (S.PENDING, S.NEEDS_OPERATOR):
        mark_returned(payout, S.CANCELLED, now, f"cancelled by an operator: {reason}")
        return
    if payout.rail == Rail.WECHAT_COUPON and payout.sent_at is not None and payout.status not in TERMINAL:
        raise PayoutError(
            "this coupon may have been issued at WeChat (a send of it got no clear answer): nothing was changed. It "
            "is settled by sending its number again (WeChat answers the coupon already issued, or issues it once); "
            "an operator with the answer, or the user's coupons of its stock, resolves it",
            code="payout_state",
        )
    raise PayoutError(
        "only an unsent payout, or one waiting for the user's confirmation, can be cancelled", code="payout_state"
    )


def refuse_another_merchants_card(code: str, merchant_id: int | None) -> None:
    """Merchant staff (``merchant_id``: theirs) redeem only the cards their own merchant's campaigns paid out, and
    the platform's (usable at every shop). A code none of our card payouts carries yet (the user's ``wx.addCard``
    code not recorded, its event not yet applied) is refused to them too: whose it is cannot be told, and a
    platform operator may redeem it. A card whose payout was cancelled or failed (its money went back to the person:
    a card cannot be recalled at WeChat) is redeemed by nobody: 409 ``card_payout_cancelled``, before WeChat is asked
    (redeemed, it would give the money twice)."""
    stmt = (
        select(Payout.id, Campaign.serves_merchant_id, Payout.status)
        .select_from(Payout)
        .outerjoin(Rebate, Rebate.id == Payout.rebate_id)
        .outerjoin(Campaign, Campaign.id == Rebate.campaign_id)
        .where(Payout.rail == Rail.CARD_COUPON, or_(Payout.external_no == code, Payout.wechat_ref == code))
    )
    rows = db.session.execute(stmt).all()
    if rows and all(status in (S.CANCELLED, S.FAILED) for _, _, status in rows):
        raise PayoutError(
            "this coupon's payout was cancelled and its money returned to the customer: it cannot be redeemed",
            code="card_payout_cancelled",
        )
    if merchant_id is None:
        return
    if not rows:
        raise PayoutError(
            "this coupon's code is not recorded with us yet, so whose it is cannot be told: the customer opens the "
            "coupon in the mini-program once (it records the code), or a platform operator redeems it",
            code="card_code_unknown",
            kind="forbidden",
        )
    if {shop for _, shop, _ in rows} - {None, merchant_id}:
        raise PayoutError(
            "this coupon was paid out by another merchant's campaign: it is redeemed at that merchant's counter",
            code="card_of_another_merchant",
            kind="forbidden",
        )


def settle_redeemed_card(code: str, now: datetime, card_id: str | None = None) -> Payout | None:
    """A card code was consumed at the counter: the card payout it belongs to (a custom-code card carries our
    external number as its code; otherwise the code recorded for it) is decided as delivered, once. A payout
    decided before (by WeChat's ``user_get_card`` event) only gets its redemption time; None is answered then.
    ``card_id``: the card WeChat says it redeemed (a code is unique within its card only): a payout of another
    card is not this one."""
    stmt = select(Payout).where(
        Payout.rail == Rail.CARD_COUPON,
        # offered; or set aside for a query or an operator (a redemption proves delivery: resolved as failed now,
        # its money would go back to the person who spent the card); one a dispatcher holds is not decided here
        Payout.status.in_((S.WAITING_USER_CONFIRM, S.UNKNOWN, S.NEEDS_OPERATOR)),
        or_(Payout.external_no == code, Payout.wechat_ref == code),
    )
    candidates = db.session.execute(stmt.order_by(Payout.id).with_for_update()).scalars().all()
    payout = next((p for p in candidates if _of_card(p, card_id)), None)
    if payout is not None:
        mark_succeeded(payout, now, code)
        payout.card_consumed_at = now
        return payout
    # Delivered already (WeChat's user_get_card event came first): the redemption is recorded, nothing moves.
    delivered = select(Payout).where(
        Payout.rail == Rail.CARD_COUPON,
        Payout.status == S.SUCCEEDED,
        Payout.card_consumed_at.is_(None),
        or_(Payout.external_no == code, Payout.wechat_ref == code),
    )
    for done in db.session.execute(delivered.with_for_update()).scalars():
        if _of_card(done, card_id):
            done.card_consumed_at = now
    return None


def _of_card(payout: Payout, card_id: str | None) -> bool:
    """Is the payout of this card (None: not said; a payout that names no card is not told apart either)?"""
    named = (payout.request or {}).get("card_id") if isinstance(payout.request, dict) else None
    return card_id is None or named is None or named == card_id


def check_card_payout(payout: Payout | None, user_id: int) -> Payout:
    """The user's own card payout, or the error the user is told (someone else's payout is "not found")."""
    if payout is None or payout.user_id != user_id:
        raise PayoutError("no such payout", code="not_found", kind="not_found")
    if payout.rail != Rail.CARD_COUPON:
        raise PayoutError("this payout is not a card", code="not_a_card_payout")
    return payout


def record_card_code(payout_id: int, user_id: int, code: str) -> Payout:
    """The user added the card (``wx.addCard``) and WeChat decrypted its code: record the code on the user's
    own card payout, so that redeeming it at the counter decides the payout. Recording the same code again
    changes nothing; a payout already decided, or carrying another code, is refused, and so is a code another
    payout carries. The person's row is locked first: two of their payouts recording one code at once take turns,
    so the second sees the first's (a code is the person's own, from their card package)."""
    payout = check_card_payout(db.session.get(Payout, payout_id), user_id)
    lock_user(user_id)
    payout = lock_payout(payout.id)
    if code in (payout.wechat_ref, payout.external_no):  # already recorded (or a custom code: our number)
        return payout
    if payout.status != S.WAITING_USER_CONFIRM:
        raise PayoutError(f"this card payout is already {payout.status}", code="payout_state")
    if payout.wechat_ref:
        raise PayoutError("another card code is already recorded for this payout", code="card_code_recorded")
    taken = db.session.execute(
        select(Payout.id).where(
            Payout.rail == Rail.CARD_COUPON,
            Payout.id != payout.id,
            or_(Payout.external_no == code, Payout.wechat_ref == code),
        )
    ).first()
    if taken is not None:
        raise PayoutError("this card code belongs to another payout", code="card_code_taken")
    payout.wechat_ref = code
    return payout


def resolve(payout: Payout, succeeded: bool, now: datetime, reason: str) -> None:
    """An operator settles a needs_operator payout from evidence (a query, the merchant platform)."""
    if payout.status != S.NEEDS_OPERATOR:
        raise PayoutError(f"only a needs_operator payout is resolved; this one is {payout.status}", code="payout_state")
    if waits_for_approval(payout):
        raise PayoutError("this manual payout waits for a second operator's approval", code="approval_required")
    if succeeded and payout.request is None:
        raise PayoutError("a payout never handed to WeChat cannot have succeeded", code="never_sent")
    try:
        if succeeded:
            mark_succeeded(payout, now)
        else:
            mark_returned(payout, S.FAILED, now, f"resolved as failed by an operator: {reason}")
    except PayoutStateError as exc:
        raise PayoutError(str(exc), code="payout_state") from exc


def manual_payout(
    operator_id: int,
    user: User,
    amount_fen: int,
    rail: str,
    key: str,
    reason: str,
    approval_from_fen: int,
    *,
    money: MoneySettings,
) -> Payout:
    """A goodwill payout straight from the platform fund (a rejected one goes back there).

    From ``approval_from_fen`` it waits, as needs_operator, for a second operator's approval; so does one that
    brings what this operator, or anyone, paid this person without a second operator's approval in the last
    ``SPLIT_WINDOW`` to that much (three payouts just under the limit are one payout that needs approval). The
    operator's and the person's rows are locked first (in that order): two at once add up too.
    """
    fund = account(AccountKind.PLATFORM_MARKETING_FUND)
    needs_approval = amount_fen >= approval_from_fen
    if not needs_approval:
        needs_approval = amount_fen + _unapproved_recently(operator_id, user.id) >= approval_from_fen
    return enqueue_payout(
        rail=rail,
        user_id=user.id,
        amount_fen=amount_fen,
        source=fund,
        key=f"manual:{key}",
        memo=f"manual payout: {reason}"[:200],
        number_prefix=money.number_prefix,
        created_by_operator_id=operator_id,
        status=S.NEEDS_OPERATOR if needs_approval else S.PENDING,
        last_error="waiting for a second operator's approval" if needs_approval else None,
        needs_approval=needs_approval,
    )


SPLIT_WINDOW = timedelta(hours=24)


def _unapproved_recently(operator_id: int, user_id: int) -> int:
    """Manual payouts of the last ``SPLIT_WINDOW`` no second operator approved, by this operator (or an account of the
    same making: ``models.operators.same_hands``) or to this person, that are on their way or paid; their rows
    locked first (in id order)."""
    now = utcnow()
    hands = same_hands(db.session.get(Operator, operator_id), now)
    # FOR NO KEY UPDATE: rows that only name these operators or person (audit lines, bans) go on inserting
    db.session.execute(
        select(Operator.id).where(Operator.id.in_(hands)).order_by(Operator.id).with_for_update(key_share=True)
    ).all()
    db.session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))
    since = now - SPLIT_WINDOW
    rows = db.session.execute(
        select(Payout.id, Payout.amount_fen, Payout.status, Payout.needs_approval, Payout.retry_of_id).where(
            Payout.created_by_operator_id.is_not(None),
            Payout.approved_by_operator_id.is_(None),
            Payout.created_at >= since,
            or_(Payout.created_by_operator_id.in_(hands), Payout.user_id == user_id),
        )
    ).all()
    # a payout sent again as a new row (failed, or fallen back to another rail) counts once: as that row, which
    # keeps its operator (``payouts.record``)
    replaced = {row.retry_of_id for row in rows if row.retry_of_id is not None}
    return sum(
        row.amount_fen
        for row in rows
        if row.id not in replaced
        # cancelled, or held for the approval it needs: none of it has left, nor will without a second
        # operator. One back with an operator after a try is resent without one: it counts
        and row.status != PayoutStatus.CANCELLED
        and not (row.status == PayoutStatus.NEEDS_OPERATOR and row.needs_approval)
    )


def waits_for_approval(payout: Payout) -> bool:
    """A manual payout ``manual_payout`` held for a second operator's approval, approved by none yet and still held
    (needs_operator). One made below the limit went out at once: if it comes back to an operator after a try, it is
    resent or resolved like any other, never "approved" after the fact."""
    return payout.needs_approval and payout.approved_by_operator_id is None and payout.status == S.NEEDS_OPERATOR


def approve(payout: Payout, operator_id: int, now: datetime) -> None:
    """A second operator approves a manual payout held for it (``waits_for_approval``); anything else needs none
    (409), so no approval is recorded for a payout that went out without one."""
    if not waits_for_approval(payout):
        if payout.needs_approval and payout.approved_by_operator_id is None:  # held, then cancelled meanwhile
            raise PayoutError(f"this payout is {payout.status}: nothing is left to approve", code="payout_state")
        raise PayoutError("this payout needs no approval", code="no_approval_needed")
    if payout.created_by_operator_id == operator_id:
        raise PayoutError("a second operator must approve", code="same_operator", kind="forbidden")
    approver = db.session.get(Operator, operator_id)
    why = approval_refused_because(approver, payout.created_by_operator_id, payout.created_at, now)
    if why:
        raise PayoutError(why, code="approver_not_independent", kind="forbidden")
    payout.approved_by_operator_id = operator_id
    move(payout, S.PENDING)
    payout.next_attempt_at, payout.last_error = now, None
