"""Applying a rail's answer to a payout: the transition, the ledger, retries, fallbacks and alerts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select

from ledger import Leg, account, post_entry
from models import (
    AccountKind,
    LedgerAccount,
    Order,
    Payout,
    PayoutAttempt,
    PayoutStatus,
    Rail,
    RailControl,
    Rebate,
    User,
    UserStatus,
    alert_once,
    db,
    raise_alert,
    utcnow,
)
from models.payouts import InApp
from models.sql import insert_ignoring
from payouts.coupon_rail import stock_spent
from payouts.outbox import enqueue_payout
from payouts.rails import Outcome, RailResult, summary
from payouts.settings import MoneySettings
from payouts.transitions import funded_payout_returned, mark_returned, mark_sent, mark_succeeded, move

S = PayoutStatus
RAIL_PAUSE = timedelta(minutes=30)
MAX_AUTO_RETRIES = 2


@dataclass
class DispatchSettings:
    """The dispatcher's tuning, and the money settings its fallbacks need (``money``: required, no default)."""

    batch: int = 50
    max_attempts: int = 8
    backoff_base_s: float = 30.0
    backoff_cap_s: float = 6 * 3600.0
    cash_fallback_rail: str | None = Rail.WECHAT_CHANGE  # where a refused cash red packet goes
    confirm_ttl: timedelta = timedelta(hours=24)  # unconfirmed transfer bills are cancelled at WeChat after this
    lease: timedelta = timedelta(minutes=5)  # a claimed payout's owner; after it, another pass queries it
    confirm_recheck: timedelta = timedelta(hours=6)  # a transfer waiting for the user is queried this often
    money: MoneySettings = field(kw_only=True)  # a fallback's number prefix; a fallback to points: amount // value

    @classmethod
    def from_config(cls, cfg) -> DispatchSettings:
        return cls(
            batch=cfg["PAYOUT_BATCH"],
            max_attempts=cfg["PAYOUT_MAX_ATTEMPTS"],
            confirm_ttl=timedelta(hours=cfg["TRANSFER_CONFIRM_HOURS"]),
            lease=timedelta(seconds=cfg["PAYOUT_LEASE_SECONDS"]),
            confirm_recheck=timedelta(seconds=cfg["PAYOUT_CONFIRM_RECHECK_SECONDS"]),
            money=MoneySettings.from_config(cfg),
        )


def backoff(attempts: int, settings: DispatchSettings) -> timedelta:
    """Exponential with jitter, capped."""
    ceiling = min(settings.backoff_cap_s, settings.backoff_base_s * 2 ** max(0, attempts - 1))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not secrecy


def rail_control(rail: str) -> RailControl:
    """The rail's switch row, made (enabled) if it has none yet, and locked: two nodes or operators changing a rail
    never switched before both get the one row (the later waits), never a duplicate key."""
    row = {"rail": rail, "enabled": True, "paused_until": None, "reason": None, "updated_at": utcnow()}
    insert_ignoring(RailControl.__table__, [row], ("rail",))
    locked = select(RailControl).where(RailControl.rail == rail).with_for_update()
    return db.session.execute(locked.execution_options(populate_existing=True)).scalar_one()


def pause_rail(rail: str, until: datetime, why: str) -> None:
    """Paused until ``until`` or a later pause already set (answers are recorded out of order by the recorders: an
    earlier NOT_ENOUGH recorded after a later one had shortened the pause, and a top-up's release missed payouts
    put off to the later time)."""
    control = rail_control(rail)
    if control.paused_until is not None and control.paused_until > until:
        until = control.paused_until
    control.paused_until, control.reason, control.updated_at = until, why, utcnow()
    raise_alert("rail_paused", rail, f"{rail} paused until {until.isoformat()}: {why}")


def _later(payout: Payout, status: PayoutStatus, at: datetime) -> None:
    move(payout, status)
    payout.next_attempt_at, payout.lease_until = at, None


def apply_result(payout: Payout, result: RailResult, now: datetime, settings: DispatchSettings) -> None:
    if result.outcome == Outcome.PAUSE_STOCK:  # one coupon stock spent: it waits (or falls back), the rail goes on
        result = stock_spent(payout, result, now)
    o = result.outcome
    payout.last_error = (
        None if o in (Outcome.SUCCEEDED, Outcome.WAITING_USER_CONFIRM) else (f"{result.code}: {result.message}"[:2000])
    )
    if result.wechat_ref and o != Outcome.MISMATCH:
        payout.wechat_ref = result.wechat_ref
    if o == Outcome.SUCCEEDED:
        mark_succeeded(payout, now, result.wechat_ref, finished_at=_wechat_finished(result, payout, now))
    elif o == Outcome.WAITING_USER_CONFIRM:
        _waiting(payout, result, now, settings)
    elif o in (Outcome.IN_PROGRESS, Outcome.UNKNOWN):
        mark_sent(payout, now)  # it may have left: only a query may decide from now on
        _later(payout, S.UNKNOWN, now + backoff(payout.attempts, settings))
    elif o in (Outcome.RETRY, Outcome.NOT_FOUND):
        _later(payout, S.PENDING, now + backoff(payout.attempts, settings))
    elif o == Outcome.DEFER:
        _later(payout, S.PENDING, result.retry_at or now + backoff(payout.attempts, settings))
    elif o == Outcome.PAUSE_RAIL:
        pause_rail(payout.rail, now + RAIL_PAUSE, f"{result.code}: {result.message}")
        _later(payout, S.PENDING, now + RAIL_PAUSE)
    elif o == Outcome.UNCLAIMED:  # a red packet nobody opened, refunded by WeChat: no new packet unasked
        _return_unconfirmed(payout, S.FAILED, result, now, settings)
    elif o in (Outcome.FAILED, Outcome.CANCELLED) and _left_unconfirmed(payout):
        _return_unconfirmed(payout, S(o), result, now, settings)
    elif o == Outcome.FAILED and (payout.cancel_requested or _taken_back(payout)):  # asked to stop: no new bill
        mark_returned(payout, S.FAILED, now, f"{result.code}: {result.message}; {_not_again(payout)}")
        _after_taken_back(payout, payout.rail, settings)
    elif o == Outcome.FAILED:
        mark_returned(payout, S.FAILED, now, f"{result.code}: {result.message}")
        _retry_after_failure(payout, payout.rail, "definitive failure", settings)
    elif o == Outcome.CANCELLED:  # cancelled by an operator, or never sent: the money goes back to its source
        why = result.message or "cancelled before it reached you"  # the person reads it: WeChat's may say nothing
        mark_returned(payout, S.CANCELLED, now, f"{result.code}: {why}")
    elif o == Outcome.REFUSED:
        _refused(payout, result, now)
    elif o == Outcome.MISMATCH:
        raise_alert("payout_answer_mismatch", payout.external_no, f"{result.code}: {result.message}")
        _to_operator(payout, f"WeChat's answer is not about this payout: {result.message}")
    elif o == Outcome.ASK_OPERATOR:  # refused about a bill that may exist: in transit until a person decides
        mark_sent(payout, now)
        _to_operator(payout, f"WeChat refused a call about a bill that may exist ({result.code}: {result.message})")
    elif o == Outcome.GIVE_UP_USER:
        mark_returned(payout, S.FAILED, now, f"{result.code}: {result.message}")
        raise_alert(
            "payout_user_blocked",
            payout.external_no,
            f"WeChat refuses this user on {payout.rail}; the money stays in the user's balance",
        )
    elif o == Outcome.FALLBACK and (payout.cancel_requested or _taken_back(payout)):  # nor on the fallback rail
        mark_returned(payout, S.CANCELLED, now, f"{result.code}: {result.message}; {_not_again(payout)}")
        _after_taken_back(payout, fallback_rail(payout, settings), settings)
    elif o == Outcome.FALLBACK:
        mark_returned(payout, S.CANCELLED, now, f"{result.code}: {result.message}")
        _retry_after_failure(payout, fallback_rail(payout, settings), "fallback rail", settings)
    else:  # CONFIG_ERROR
        _to_operator(payout, f"configuration problem: {result.code} {result.message}")
    if payout.status in (S.PENDING, S.UNKNOWN) and payout.attempts >= settings.max_attempts:
        _to_operator(payout, f"still not final after {payout.attempts} attempts ({result.code})")


def log_attempt(payout_id: int, action: str, request: dict, result: RailResult, ms: int, now: datetime) -> None:
    """One call to WeChat (or a decision in its place) in the payout's history."""
    db.session.add(
        PayoutAttempt(
            payout_id=payout_id,
            action=action,
            request_summary=summary(request),
            response_code=result.code,
            outcome=result.outcome,
            message=str(result.message or "")[:2000],
            duration_ms=ms,
            created_at=now,
        )
    )


def _wechat_finished(result: RailResult, payout: Payout, now: datetime) -> datetime:
    """When WeChat says the payout finished (a transfer bill's ``update_time``), where the answer says one that
    lies between the payout's sending and now; else now. The day's fund-flow bill lists it by WeChat's time: a
    transfer confirmed at 23:59:58 and told to us after midnight belongs to the day before."""
    at = result.details.get("finished_at")
    earliest = payout.sent_at or payout.created_at
    if isinstance(at, datetime) and at.tzinfo is not None and (earliest is None or earliest <= at) and at <= now:
        return at
    return now


def unrecorded(payout: Payout, request: dict, why: str, now: datetime, settings: DispatchSettings) -> None:
    """An answer about ``payout`` that could not be recorded (its transaction rolled back): noted in its history.

    A payout still ``sending`` keeps its lease (the next pass queries it, as after a crash); once its attempts
    are used up an operator looks, so an answer that can never be recorded does not bring it back forever.
    """
    log_attempt(payout.id, "record", request, RailResult(Outcome.UNKNOWN, "RECORD_FAILED", why), 0, now)
    if payout.status != S.SENDING:  # finished meanwhile by a notification or an operator
        return
    mark_sent(payout, now)  # its call may have left: in transit, and only a query (or a person) decides from now on
    payout.last_error = f"RECORD_FAILED: {why}"[:2000]
    if payout.attempts >= settings.max_attempts:
        _to_operator(payout, f"its answer could not be recorded after {payout.attempts} attempts ({why})"[:2000])


def set_aside(payout: Payout, why: str, now: datetime, settings: DispatchSettings) -> None:
    """A payout whose request could not be built (the rail raised): nothing was sent; it is tried again after a
    backoff (an attempt used, so the others in the queue go first) and an operator is told once; after its
    attempts it goes to an operator."""
    payout.attempts += 1
    payout.last_error = f"BUILD_FAILED: the request could not be built: {why}"[:2000]
    again = now + backoff(payout.attempts, settings)
    if payout.status == S.SENDING:  # its worker died: due again when this lease ends
        payout.lease_until = again
        if payout.request is not None:  # claimed before with this request: it may have left (in transit)
            mark_sent(payout, now)
    else:
        payout.next_attempt_at, payout.lease_until = again, None
    if payout.attempts >= settings.max_attempts:
        _to_operator(payout, f"its request could not be built after {payout.attempts} attempts ({why})"[:2000])
    else:
        alert_once("payout_request_not_built", payout.external_no, text=payout.last_error)


def _waiting(payout: Payout, result: RailResult, now: datetime, settings: DispatchSettings) -> None:
    """Offered to the user. Never left waiting without what the user confirms with: with no package_info
    yet (the create answer was lost), it stays unknown and the next pass re-POSTs the same bill for it."""
    mark_sent(payout, now)
    payout.package_info = result.package_info or payout.package_info
    if payout.package_info is None:
        payout.last_error = "WAIT_USER_CONFIRM without package_info: the same bill is POSTed again for it"
        _later(payout, S.UNKNOWN, now + backoff(1, settings))
    elif payout.cancel_requested:  # the operator's cancel did not go through: try again soon
        _later(payout, S.WAITING_USER_CONFIRM, now + backoff(payout.attempts, settings))
    elif _payee_banned(payout):
        # offered after its payee was banned (the ban found it with WeChat, not yet offered, so did not cancel it):
        # cancelled at WeChat by the next pass, as the ban cancels a bill already offered (rebate.ban_ops)
        payout.cancel_requested = True
        payout.last_error = "cancellation requested: the person was banned while the bill was on its way to them"
        _later(payout, S.WAITING_USER_CONFIRM, now)
    else:
        _later(payout, S.WAITING_USER_CONFIRM, now + settings.confirm_recheck)


def _not_again(payout: Payout) -> str:
    if payout.cancel_requested:
        return "not sent again (cancel asked)"
    return "not sent again (its rebate was taken back; what it still pays, if anything, goes out anew)"


def _after_taken_back(payout: Payout, rail: str | None, settings: DispatchSettings) -> None:
    """A payout that came back after a refund or a review took its rebate back while it was at WeChat. From the
    person's balance (cash): its money is back there, where it settles what the clawback left owed; nothing more.
    From its funder (a coupon, which a clawback never takes back while it may have been issued): what its rebate
    still pays goes out anew (``rail``: the same rail after a failure, the fallback after a refusal; none: it stays
    with its funder, as any coupon without a fallback), and the rest is no longer the campaign's cost (the rebate
    layer gives its budget back: ``funded_payout_returned``). An operator's cancel: nothing more, as before."""
    if payout.cancel_requested:
        return
    source = db.session.get(LedgerAccount, payout.source_account_id)
    if source is None or source.kind == AccountKind.USER_CASH:
        return
    still = _still_owed(payout)
    if still and rail is not None:
        _retry_after_failure(payout, rail, "its rebate was taken back in part", settings, amount_fen=still)
    if payout.amount_fen > still:
        funded_payout_returned(payout, payout.amount_fen - still)


def _still_owed(payout: Payout) -> int:
    """What the payout's rebate still pays that none of its other payouts carries (those failed or cancelled carry
    nothing), at most the payout's own amount."""
    paid = db.session.execute(select(Rebate.amount_fen).where(Rebate.id == payout.rebate_id)).scalar_one()
    carried = db.session.execute(
        select(func.coalesce(func.sum(Payout.amount_fen), 0)).where(
            Payout.rebate_id == payout.rebate_id,
            Payout.id != payout.id,
            Payout.status.not_in([S.FAILED, S.CANCELLED]),
        )
    ).scalar_one()
    return max(0, min(payout.amount_fen, paid - int(carried)))


def _taken_back(payout: Payout) -> bool:
    """The rebate this payout pays no longer pays as much (a refund clawed it back while the payout was with WeChat):
    its money stays where it came back to (the balance, where it settles the debt), never sent again. Read after any
    refund of its order has ended (the order's key share: a refund holds the order meanwhile), since a refund passes
    over a payout a recorder holds (``rebate.clawbacks._cancel_unconfirmed``) and so could not ask it to stop."""
    if payout.rebate_id is None or payout.rail == Rail.PROFIT_SHARING:
        return False
    if payout.order_id is not None:
        db.session.execute(select(Order.id).where(Order.id == payout.order_id).with_for_update(key_share=True)).all()
    paid = db.session.execute(
        select(Rebate.amount_fen).where(Rebate.id == payout.rebate_id).execution_options(populate_existing=True)
    ).scalar_one_or_none()
    return paid is not None and paid < payout.amount_fen


def _payee_banned(payout: Payout) -> bool:
    """A change transfer's payee is banned (a card is left: WeChat cannot recall one from a card package)."""
    if payout.rail != Rail.WECHAT_CHANGE:
        return False
    status = db.session.execute(select(User.status).where(User.id == payout.user_id)).scalar_one_or_none()
    return status == UserStatus.BANNED


# What a query answers when it learned nothing about the bill: a 5xx or a timeout, an unreadable answer, a rate limit
# (not IN_PROGRESS: TRANSFERING, CANCELING… say WeChat moved on, the user confirmed or a cancel began).
LEARNED_NOTHING = (Outcome.UNKNOWN, Outcome.RETRY)


def still_offered(payout: Payout, result: RailResult, now: datetime, settings: DispatchSettings) -> bool:
    """A recheck of a bill offered to the user (its ``package_info`` known) that learned nothing: the bill is still
    offered, so the payout stays ``waiting_user_confirm`` (the person keeps the confirm button; ``unknown`` or
    ``pending`` would hide it until a later pass) and is asked about again after a backoff. False: not such a case."""
    if result.outcome not in LEARNED_NOTHING or payout.package_info is None or payout.cancel_requested:
        return False
    mark_sent(payout, now)
    payout.last_error = f"{result.code}: {result.message}"[:2000]
    _later(payout, S.WAITING_USER_CONFIRM, now + backoff(payout.attempts, settings))
    return True


def _left_unconfirmed(payout: Payout) -> bool:
    """A transfer bill offered to the user that WeChat closed (after 24 h) or we cancelled unasked."""
    return payout.rail == Rail.WECHAT_CHANGE and payout.package_info is not None and not payout.cancel_requested


def _return_unconfirmed(
    payout: Payout, to: PayoutStatus, result: RailResult, now: datetime, settings: DispatchSettings
) -> None:
    """The user never took the money: it goes back to their balance, and no new bill is sent unasked."""
    why = result.message or "not confirmed by the user in time"
    mark_returned(payout, to, now, f"{result.code}: {why}; {payout.amount_fen} fen back in your balance")
    source = db.session.get(LedgerAccount, payout.source_account_id)
    _credit_in_app(payout, source, InApp.BALANCE, settings.money.point_value_fen)


def _refused(payout: Payout, result: RailResult, now: datetime) -> None:
    """WeChat refused the request itself: the same request under a new number would be refused again.

    The dispatcher passes REFUSED only where no bill of this number can exist (``call_wechat``); a payout
    WeChat answered before (``sent_at`` set) is still never failed here: only a person can tell.
    """
    why = f"{result.code}: {result.message}"
    if payout.sent_at is not None:
        _to_operator(payout, f"a resend of the same bill was refused ({why})")
        return
    mark_returned(payout, S.FAILED, now, why)
    raise_alert("payout_refused", payout.external_no, f"WeChat refused the request ({why}); the money is back")


def _to_operator(payout: Payout, why: str) -> None:
    move(payout, S.NEEDS_OPERATOR)
    payout.lease_until = None
    raise_alert("payout_needs_operator", payout.external_no, why)


def fallback_rail(payout: Payout, settings: DispatchSettings) -> str | None:
    """The rule's fallback (fixed on the payout at creation), else the cash default; None: keep it in the balance."""
    if payout.fallback_rail:
        return None if payout.fallback_rail == payout.rail else payout.fallback_rail
    return settings.cash_fallback_rail if payout.rail == Rail.CASH_RED_PACKET else None


def _credit_in_app(
    payout: Payout, source: LedgerAccount, form: str, point_value_fen: int, amount_fen: int | None = None
) -> None:
    """Fall back to the in-app balance or to points (``amount_fen`` of it: all by default); a cash source is already
    back in the balance."""
    if source.kind == AccountKind.USER_CASH:
        return
    amount_fen = payout.amount_fen if amount_fen is None else amount_fen
    if form == InApp.POINTS:
        points = amount_fen // point_value_fen
        if points:
            post_entry(
                f"payout:{payout.id}:to-points",
                f"payout {payout.external_no} falls back to points",
                [
                    Leg(account(AccountKind.POINTS_ISSUANCE), -points),
                    Leg(account(AccountKind.USER_POINTS, "user", payout.user_id), points),
                ],
            )
        return
    cash = account(AccountKind.USER_CASH, "user", payout.user_id)
    post_entry(
        f"payout:{payout.id}:to-balance",
        f"payout {payout.external_no} falls back to the balance",
        [Leg(source, -amount_fen), Leg(cash, amount_fen)],
    )


def _retry_after_failure(
    payout: Payout, rail: str | None, why: str, settings: DispatchSettings, amount_fen: int | None = None
) -> Payout | None:
    """A new payout row with a new number (of ``amount_fen``: the whole payout's by default); the old one stays failed.

    ``rail`` "balance" or "points" credits the user in the app instead. With no fallback, cash stays in
    the user's balance (it came from there) and a coupon's money stays with its funder: a refused coupon
    never turns into withdrawable cash the rules did not allow. The new row keeps who asked for a manual payout
    and who approved it: it is that payout still, and counts towards the second operator's limit in its place.
    """
    depth, parent = 0, payout
    while parent.retry_of_id is not None and depth <= MAX_AUTO_RETRIES:
        parent, depth = db.session.get(Payout, parent.retry_of_id), depth + 1
    source = db.session.get(LedgerAccount, payout.source_account_id)
    amount_fen = payout.amount_fen if amount_fen is None else amount_fen
    if rail in (InApp.BALANCE, InApp.POINTS):
        _credit_in_app(payout, source, rail, settings.money.point_value_fen, amount_fen)
        raise_alert("payout_fallback", payout.external_no, f"{why}: {amount_fen} fen credited as {rail}")
        return None
    if rail is None or depth >= MAX_AUTO_RETRIES:
        kept = "kept in the user's balance" if source.kind == AccountKind.USER_CASH else "returned to its funder"
        raise_alert("payout_returned", payout.external_no, f"{why}: {amount_fen} fen {kept}")
        return None
    return enqueue_payout(
        rail=rail,
        user_id=payout.user_id,
        amount_fen=amount_fen,
        source=source,
        key=f"payout:{payout.id}:retry",
        memo=f"retry of payout {payout.external_no} ({why})",
        number_prefix=settings.money.number_prefix,
        rebate_id=payout.rebate_id,
        order_id=payout.order_id,
        retry_of_id=payout.id,
        fallback_rail=payout.fallback_rail if rail == payout.rail else None,
        created_by_operator_id=payout.created_by_operator_id,
        approved_by_operator_id=payout.approved_by_operator_id,
    )
