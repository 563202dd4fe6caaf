"""Cash red packets nobody opened: WeChat refunds them to the merchant after 24 h.

A packet WeChat accepted counts as paid (the money left our account), but the
user may never open it. Each such packet is queried (``gethbinfo``) once its
refund time has passed: RECEIVED settles it for good; REFUND returns the money to
the user's cash balance (one ledger entry per payout, so a repeat changes
nothing), with the reason on the payout for the trace and the user's history,
and dates the return (``returned_at``: the fund-flow bill of that day must list
it as income; ``payouts.reconcile``).
Every check is a ``claim_check`` attempt; a packet with a final one is done.
A refund that is not our whole amount is a MISMATCH: an operator is alerted at
once (the alert names the payout) and nothing is moved. A packet still without a
final answer when gethbinfo stops answering (30 days) is never dropped silently:
it gets a final ``ask_operator`` check and an alert naming it, money unmoved.
Nothing here commits or calls WeChat: the job (``jobs.payouts.check_unclaimed``) reads, then
queries each packet with no transaction open, then records each answer in its own transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import exists, select

from ledger import Leg, account, post_entry
from models import AccountKind, Payout, PayoutAttempt, PayoutStatus, Rail, alert_once, db, raise_alert
from models.sql import past
from payouts.operations import lock_payout
from payouts.rails import Outcome, RailResult
from payouts.record import log_attempt

REFUND_AFTER = timedelta(hours=24)  # WeChat refunds an unopened packet after this
MARGIN = timedelta(hours=1)  # its refund is not instant: ask a little later
QUERY_WINDOW = timedelta(days=30)  # gethbinfo answers for the last 30 days only
CHECK = "claim_check"
FINAL = (Outcome.SUCCEEDED, Outcome.UNCLAIMED, Outcome.MISMATCH, Outcome.ASK_OPERATOR)


def _settled():
    return exists().where(
        PayoutAttempt.payout_id == Payout.id, PayoutAttempt.action == CHECK, PayoutAttempt.outcome.in_(FINAL)
    )


Key = tuple[datetime, int]  # (sent_at, id) of the last packet a batch read: the next batch reads past it


def due_checks(now: datetime, batch: int = 50, after: Key | None = None) -> list[tuple[int, str, dict, datetime]]:
    """Paid red packets past their refund time with no final check yet, oldest first, past ``after``:
    (id, number, request, sent_at). A run reads batch after batch past the last one, so packets WeChat keeps
    answering "not final" (every batch's head) never keep the packets sent after them from being asked."""
    stmt = (
        select(Payout.id, Payout.external_no, Payout.request, Payout.sent_at)
        .where(
            Payout.rail == Rail.CASH_RED_PACKET,
            Payout.status == PayoutStatus.SUCCEEDED,
            Payout.sent_at <= now - REFUND_AFTER - MARGIN,
            Payout.sent_at > now - QUERY_WINDOW,
            Payout.request.is_not(None),
            ~_settled(),
            *past((Payout.sent_at, Payout.id), after),
        )
        .order_by(Payout.sent_at, Payout.id)
        .limit(batch)
    )
    return [(row.id, row.external_no, dict(row.request), row.sent_at) for row in db.session.execute(stmt)]


def expired_checks(now: datetime, batch: int = 50, after: Key | None = None) -> list[tuple[int, datetime]]:
    """Packets past gethbinfo's window with no final answer yet, oldest first, past ``after``: (id, sent_at) (each
    then closed by :func:`close_expired`)."""
    stmt = (
        select(Payout.id, Payout.sent_at)
        .where(
            Payout.rail == Rail.CASH_RED_PACKET,
            Payout.status == PayoutStatus.SUCCEEDED,
            Payout.sent_at <= now - QUERY_WINDOW,
            Payout.request.is_not(None),
            ~_settled(),
            *past((Payout.sent_at, Payout.id), after),
        )
        .order_by(Payout.sent_at, Payout.id)
        .limit(batch)
    )
    return [(row.id, row.sent_at) for row in db.session.execute(stmt)]


def close_expired(payout_id: int, now: datetime) -> bool:
    """An operator decides a packet past the window; nothing is moved. False: closed meanwhile by another pass."""
    payout = lock_payout(payout_id)
    if db.session.execute(select(_settled()).where(Payout.id == payout_id)).scalar():
        return False
    why = (
        f"red packet {payout.external_no} ({payout.amount_fen} fen) has no final answer after "
        f"{QUERY_WINDOW.days} days (WeChat no longer answers queries for it): check the merchant platform; "
        "nothing was moved"
    )
    ended = RailResult(Outcome.ASK_OPERATOR, "QUERY_WINDOW_ENDED", why)
    log_attempt(payout.id, CHECK, dict(payout.request or {}), ended, 0, now)
    raise_alert("red_packet_unresolved", payout.external_no, why)
    return True


def as_check(result: RailResult) -> RailResult:
    """For this check only RECEIVED is done: SENT (paid to the packet, not opened yet) is asked again."""
    if result.outcome == Outcome.SUCCEEDED and result.code != "RECEIVED":
        return RailResult(Outcome.IN_PROGRESS, result.code, "not opened yet", wechat_ref=result.wechat_ref)
    return result


def record_check(payout_id: int, request: dict, result: RailResult, now: datetime) -> None:
    payout = lock_payout(payout_id)
    log_attempt(payout.id, CHECK, request, result, 0, now)
    if result.outcome == Outcome.UNCLAIMED:
        return_unclaimed(payout, result.message, result.details.get("refund_time") or now)
    elif result.outcome == Outcome.MISMATCH:  # final: an operator at once, nothing moved
        why = f"red packet {payout.external_no}: {result.code}: {result.message}; an operator must decide"
        raise_alert("payout_answer_mismatch", payout.external_no, why)
    elif result.outcome not in (Outcome.SUCCEEDED, Outcome.IN_PROGRESS, Outcome.UNKNOWN):
        # SENT / RFUND_ING / errors: asked again next pass (one open alert, not one every 15 minutes);
        # a FAILED after a SENT would be WeChat's own puzzle
        alert_once("payout_claim_check", payout.external_no, f"{result.code}: {result.message}")


def return_unclaimed(payout: Payout, why: str, returned_at: datetime) -> None:
    """The money WeChat took back is the user's again: WeChat settlement → their cash balance, once.

    ``returned_at``: when WeChat took it back (gethbinfo's ``refund_time``; our check's time when it gave none),
    the day whose fund-flow bill must list the return (``payouts.reconcile``)."""
    cash = account(AccountKind.USER_CASH, "user", payout.user_id)
    payout.returned_at = payout.returned_at or returned_at
    post_entry(
        f"payout:{payout.id}:unclaimed",
        f"red packet {payout.external_no} unopened, refunded by WeChat: back to the balance",
        [Leg(account(AccountKind.WECHAT_SETTLEMENT), -payout.amount_fen), Leg(cash, payout.amount_fen)],
    )
    payout.last_error = f"REFUND: {why}; {payout.amount_fen} fen back in your balance"[:2000]
