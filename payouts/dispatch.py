"""The dispatcher's steps: claim due payouts, call WeChat with no transaction open, record the answers.

The steps never commit: the job (``jobs.payouts.dispatch_backlog``) commits the claim before any call and
each record after its call, so no transaction is open while WeChat is asked. ``call_wechat`` touches no
database: the job runs it on a rail's thread.

Safe with several dispatchers at once: claims use ``FOR UPDATE SKIP LOCKED``
(PostgreSQL) and a lease; a payout whose worker died mid-call is found again
once its lease expires and is resolved by a status query before any resend.
A resend always uses the same external number and the same request, fixed and
committed at claim time before the first call (for a transfer, the very bytes).
A send refused with 400 is a definite failure only when no bill of that number can
exist; a refusal after the bill may exist goes to an operator (``ASK_OPERATOR``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, exists, or_, select

from models import Payout, PayoutAttempt, PayoutStatus, Rail, RailControl, User, UserStatus, db
from payouts.controls import rail_is_on
from payouts.operations import NEVER_SENT_IS_DEFINITE, lock_payout
from payouts.rails import MAY_HAVE_REACHED, Outcome, RailAdapter, RailResult
from payouts.record import DispatchSettings, apply_result, log_attempt, set_aside, still_offered, unrecorded
from payouts.transitions import mark_sent, send_entries_together

S = PayoutStatus
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    payout_id: int
    rail: str
    external_no: str
    request: dict
    query_first: bool
    cancel_if_unconfirmed: bool = False  # asked by an operator, or a bill unconfirmed past settings.confirm_ttl
    has_package_info: bool = False
    posted_before: bool = False  # an earlier pass POSTed this number (whatever it answered)
    status_before: str = S.PENDING  # what ``release`` puts back when no call could be made
    attempt: int = 0  # the payout's attempts with this claim: a pass that took it over after the lease counts one more


@dataclass(frozen=True)
class Batch:
    """One claim: the payouts to call WeChat about, and how many due rows it took (some decided at once)."""

    jobs: list[Claimed]
    rows: int


def enabled_rails(rails: dict[str, RailAdapter], now: datetime) -> list[str]:
    controls = {c.rail: c for c in db.session.execute(select(RailControl)).scalars()}
    return [name for name in rails if rail_is_on(controls.get(name), now)]


def rail_on_now(rail: str, now: datetime) -> bool:
    """Is the rail still on (not switched off, not paused) at ``now``: read again by the calls of a claimed batch."""
    control = db.session.execute(select(RailControl).where(RailControl.rail == rail)).scalar_one_or_none()
    return rail_is_on(control, now)


def _due(rails: list[str], now: datetime, batch: int):
    # A card offered to the user is never re-queried or re-signed (nothing at WeChat would tell):
    # it is decided at redemption, or by an operator's cancel.
    offered_card = and_(
        Payout.status == S.WAITING_USER_CONFIRM, Payout.rail == Rail.CARD_COUPON, Payout.cancel_requested.is_(False)
    )
    due = or_(
        and_(
            Payout.status.in_([S.PENDING, S.UNKNOWN, S.WAITING_USER_CONFIRM]),
            Payout.next_attempt_at <= now,
            ~offered_card,
        ),
        and_(Payout.status == S.SENDING, Payout.lease_until < now),  # its worker died mid-call
    )
    # A banned person's payouts that never left wait until the ban is lifted; one already handed to
    # WeChat is still followed up (only a query can say what happened to it).
    banned = exists().where(User.id == Payout.user_id, User.status == UserStatus.BANNED)
    waits = and_(Payout.status == S.PENDING, Payout.sent_at.is_(None), banned)
    return (
        select(Payout)
        .where(due, ~waits, Payout.held.is_(False), Payout.rail.in_(rails))
        .order_by(Payout.next_attempt_at, Payout.id)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )


def prepare_rails(rails: dict[str, RailAdapter]) -> None:
    """Before a claim's transaction: e.g. load encryption keys (which may ask WeChat for its certificate)."""
    for rail in rails.values():
        prepare = getattr(rail, "prepare", None)
        if prepare is not None:
            prepare()


def claim(rails: dict[str, RailAdapter], now: datetime, settings: DispatchSettings) -> list[Claimed]:
    """Claim due payouts (the caller commits before the first call). Requests are built (and fixed) here.

    A transfer's request includes its serialized body: committed with the claim, every POST of the number sends it.
    """
    return claim_batch(rails, now, settings).jobs


def claim_batch(rails: dict[str, RailAdapter], now: datetime, settings: DispatchSettings) -> Batch:
    """``claim``, also saying how many due rows it took: the dispatcher goes on while a claim finds any."""
    due = db.session.execute(_due(enabled_rails(rails, now), now, settings.batch)).scalars().all()
    posted_before = _posted_before([p.id for p in due])
    prefetching = [rail for rail in rails.values() if hasattr(rail, "prefetch")]
    for rail in prefetching:  # e.g. every payee's openid in one SELECT, not one per payout
        rail.prefetch([p for p in due if p.rail == rail.name and p.request is None])
    try:
        claimed = _claim_rows(rails, due, posted_before, now, settings)
    finally:
        for rail in prefetching:
            rail.prefetch(None)
    db.session.flush()
    return Batch(claimed, len(due))


def _claim_rows(
    rails: dict[str, RailAdapter], due: list[Payout], posted_before: set[int], now: datetime, settings: DispatchSettings
) -> list[Claimed]:
    claimed = []
    for payout in due:
        query_first = payout.status != S.PENDING or payout.sent_at is not None
        rail = rails[payout.rail]
        try:
            with db.session.begin_nested():  # a build that fails undoes only itself, never the claim
                built = _build(rail, payout, now)
        except Exception as exc:  # noqa: BLE001 - this payout is set aside (noted, retried later); the others go on
            log.exception("payout request not built", extra={"payout_id": payout.id})
            set_aside(payout, f"{exc!r}", now, settings)
            continue
        if isinstance(built, RailResult):
            payout.status = S.SENDING  # resolved below without calling WeChat
            apply_result(payout, built, now, settings)
            continue
        if built is not payout.request:
            payout.request = built
        if payout.status == S.SENDING:  # its worker died mid-call: that call may have reached WeChat (in transit)
            mark_sent(payout, now)  # so no later answer that learned nothing (a 429) makes it look never sent
        overdue = payout.cancel_requested or _unconfirmed_too_long(payout, rail, now, settings)
        has_package = payout.package_info is not None
        status_before = payout.status
        payout.status, payout.lease_until = S.SENDING, now + settings.lease
        payout.attempts += 1
        claimed.append(
            Claimed(
                payout.id,
                payout.rail,
                payout.external_no,
                dict(payout.request),
                query_first,
                overdue,
                has_package,
                payout.id in posted_before,
                status_before,
                payout.attempts,
            )
        )
    return claimed


def _build(rail: RailAdapter, payout: Payout, now: datetime) -> dict | RailResult:
    """The payout's request, built now or fixed by an earlier claim (given its body if it has none yet); or what the
    rail decides in place of a call (a payout held back: ``hold``)."""
    built = payout.request
    if built is None:  # (autoflush on: a rail may count this batch's claims, e.g. red packets' daily caps)
        return rail.build_request(payout, now)
    hold = getattr(rail, "hold", None)  # e.g. a coupon of a spent stock that never reached WeChat: no call now
    held = hold(payout, now) if hold is not None and payout.status == S.PENDING else None
    if held is not None:
        return held
    if hasattr(rail, "with_wire") and not built.get("wire"):  # a request fixed before bodies were kept
        return rail.with_wire(payout.external_no, dict(built))
    return built


def _posted_before(payout_ids: list[int]) -> set[int]:
    """Which of these payouts an earlier pass POSTed (whatever WeChat answered): one query for the batch."""
    if not payout_ids:
        return set()
    return set(
        db.session.execute(
            select(PayoutAttempt.payout_id)
            .where(PayoutAttempt.payout_id.in_(payout_ids), PayoutAttempt.action == "send")
            .distinct()
        ).scalars()
    )


def _unconfirmed_too_long(payout: Payout, rail: RailAdapter, now: datetime, settings: DispatchSettings) -> bool:
    """A transfer bill offered longer than the confirmation window is cancelled at WeChat.

    Only rails that can cancel at WeChat: a card cannot be recalled, so it is never cancelled unasked.
    """
    offered = payout.status in (S.WAITING_USER_CONFIRM, S.UNKNOWN) and payout.sent_at is not None
    return offered and hasattr(rail, "cancel") and payout.sent_at + settings.confirm_ttl <= now


def _timed(call: Callable[[], RailResult]) -> tuple[RailResult, int]:
    started = time.perf_counter()
    result = call()
    return result, int((time.perf_counter() - started) * 1000)


def call_wechat(
    job: Claimed, rail: RailAdapter, limiter: Callable[[str], None], calls: list | None = None
) -> list[tuple[str, RailResult, int]]:
    """Query first when the payout may have reached WeChat; send only when it certainly did not.

    A send refused with 400 (REFUSED) is definite only when no bill of this number can exist: the query just
    said NOT_FOUND, or the number was never claimed for a POST before. A refused re-POST of a bill that exists
    (or may) asks an operator: the money stays in transit, the bill may still be confirmed. ``limiter`` is
    called once before each call; ``calls`` (given by the caller) keeps the calls made if it raises.
    """
    calls = [] if calls is None else calls
    never_taken = not job.posted_before or job.rail in NEVER_SENT_IS_DEFINITE
    if job.cancel_if_unconfirmed and not job.query_first and never_taken:
        calls.append(_never_sent(job))  # asked to stop before its number ever reached WeChat: nothing to send
        return calls
    # asked to stop after an earlier POST of its number (answered "retry"): WeChat is asked before anything is sent
    query_first = job.query_first or (job.cancel_if_unconfirmed and job.posted_before)
    if query_first:
        limiter(job.rail)
        result, ms = _timed(lambda: rail.query(job.external_no, job.request))
        calls.append(("query", result, ms))
        if result.outcome == Outcome.WAITING_USER_CONFIRM and job.cancel_if_unconfirmed:
            calls.append(_cancel_unconfirmed(job, rail, limiter))
            return calls
        if result.outcome == Outcome.WAITING_USER_CONFIRM and not (job.has_package_info or result.package_info):
            # The create answer was lost and a query never carries package_info: POST the same bill again,
            # byte for byte; WeChat answers the existing bill with its package_info.
            limiter(job.rail)
            result, ms = _timed(lambda: rail.send(job.external_no, job.request))
            calls.append(("send", _not_definite(result, "the bill exists at WeChat"), ms))
            return calls
        if result.outcome != Outcome.NOT_FOUND:
            return calls
        if job.cancel_if_unconfirmed and job.rail in NOT_FOUND_IS_DEFINITE:
            calls.append(_never_sent(job))  # WeChat never had it, and it was asked to stop (a clawback, an operator)
            return calls
    limiter(job.rail)
    result, ms = _timed(lambda: rail.send(job.external_no, job.request))
    if job.posted_before and not query_first:  # no query this pass: an earlier POST may have made the bill
        result = _not_definite(result, "an earlier POST of this number may have created the bill")
    calls.append(("send", result, ms))
    return calls


# The rails whose query's NOT_FOUND says WeChat has no bill of the number (a transfer bill). A red packet's may mean
# "still processing", a coupon's rail cannot query at all (its query resends the same number): there a payout asked
# to stop that may have reached WeChat is still sent again under its number (WeChat keeps one of it).
NOT_FOUND_IS_DEFINITE = frozenset({Rail.WECHAT_CHANGE})
# (NEVER_SENT_IS_DEFINITE, the rails where a payout never marked sent is one WeChat never took: payouts.operations,
# whose operator's cancel decides by it too)


def _never_sent(job: Claimed) -> tuple[str, RailResult, int]:
    """A payout asked to stop (an operator's cancel, a clawback the balance could not cover, a bill past its
    confirmation window) that WeChat never had: cancelled here, its money back to its source, never sent (it had
    been sent after the stop: a clawed-back rebate paid, its debt left open)."""
    return "cancel", RailResult(Outcome.CANCELLED, "CANCELLED_BEFORE_SENT", "cancelled before it reached WeChat"), 0


def _not_definite(result: RailResult, why: str) -> RailResult:
    """A refusal of a POST whose bill may exist is no failure of that bill: an operator looks."""
    if result.outcome != Outcome.REFUSED:
        return result
    return RailResult(Outcome.ASK_OPERATOR, result.code, f"{result.message} ({why}; refused re-POST)")


def _cancel_unconfirmed(job: Claimed, rail: RailAdapter, limiter) -> tuple[str, RailResult, int]:
    """Cancel at WeChat (transfers), or only locally where WeChat cannot recall it (an operator's card cancel)."""
    cancel = getattr(rail, "cancel", None)
    if cancel is None:
        return "cancel", RailResult(Outcome.CANCELLED, "CANCELLED_BY_OPERATOR", "no longer offered to the user"), 0
    limiter(job.rail)
    result, ms = _timed(lambda: cancel(job.external_no))
    return "cancel", result, ms


def record(job: Claimed, calls: list[tuple[str, RailResult, int]], now: datetime, settings: DispatchSettings) -> None:
    _record_locked(lock_payout(job.payout_id), job, calls, now, settings)
    db.session.flush()


def record_group(
    answers: list[tuple[Claimed, list[tuple[str, RailResult, int]], datetime]], settings: DispatchSettings
) -> None:
    """``record`` for several answers in one transaction (the caller commits them together): their payouts
    locked and read fresh by one SELECT, in id order (as every other locker of several payouts)."""
    ids = sorted({job.payout_id for job, _, _ in answers})
    locked = {
        p.id: p
        for p in db.session.execute(
            select(Payout)
            .where(Payout.id.in_(ids))
            .order_by(Payout.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalars()
    }
    with send_entries_together():  # the group's "sent" entries in one write
        for job, calls, now in answers:
            payout = locked.get(job.payout_id)
            if payout is None:
                payout = lock_payout(job.payout_id)  # raises: no such payout
            _record_locked(payout, job, calls, now, settings)
    db.session.flush()


def _record_locked(
    payout: Payout, job: Claimed, calls: list[tuple[str, RailResult, int]], now: datetime, settings: DispatchSettings
) -> None:
    for action, result, ms in calls:
        log_attempt(payout.id, action, job.request, result, ms, now)
    if payout.status != S.SENDING:  # finished meanwhile by a notification or an operator
        return
    if any(r.details.get(MAY_HAVE_REACHED) for _, r, _ in calls):  # an attempt may have reached WeChat: in transit
        mark_sent(payout, now)  # whatever the last answer said (a 429 from the backup host, say)
    action, result, _ = calls[-1]
    rechecked = job.status_before == S.WAITING_USER_CONFIRM and action == "query"
    if not (rechecked and still_offered(payout, result, now, settings)):
        apply_result(payout, result, now, settings)


def record_failed(job: Claimed, why: str, now: datetime, settings: DispatchSettings) -> None:
    """The call about this payout, or the record of its answer, raised (and rolled back): the failure noted on the
    payout, in a new transaction (``payouts.record.unrecorded``)."""
    unrecorded(lock_payout(job.payout_id), job.request, why, now, settings)
    db.session.flush()


def release(job: Claimed, calls: list[tuple[str, RailResult, int]], now: datetime) -> None:
    """A claimed payout whose call could not start in time (its rail's shared rate was taken all along).

    With no call made, the payout is put back exactly as the claim found it (the claim's attempt is given
    back), due again at once. After a call (a query, say) it stays ``sending`` with its lease ended now:
    the next pass queries it first, as after a crash. The calls made are logged either way. A payout another
    pass took over meanwhile (this claim's lease ran out: a stalled process) is left to that pass: putting it
    back would undo a claim whose call may be out, and that call's answer would then only be logged.
    """
    payout = lock_payout(job.payout_id)
    for action, result, ms in calls:
        log_attempt(payout.id, action, job.request, result, ms, now)
    if payout.status != S.SENDING:  # finished meanwhile by a notification or an operator
        return
    if job.attempt and payout.attempts != job.attempt:  # claimed again by another pass since
        return
    if calls or job.status_before == S.SENDING:
        payout.lease_until = now
    else:
        payout.status, payout.lease_until = job.status_before, None
        payout.attempts -= 1
    db.session.flush()
