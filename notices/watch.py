"""The payout watcher: a payout's move that a person must hear of writes its notice in the same transaction.

Payouts move on many paths — the dispatcher's recorder, the transfer notification, card events from
WeChat's message push, an operator's resend / cancel / resolve, the unclaimed red packet check — and
``payouts`` may not import ``notices`` (they are peers). So the notices are not written at each call
site (a path added later would forget them): a SQLAlchemy attribute event on ``Payout.status`` notes,
in the session, every payout whose status is set to one a person hears of, and just before the
transaction commits (``before_commit``, outermost transaction only) the watcher reads those payouts
as they now stand and writes their notices with one ``enqueue_many``. Deciding from the final state,
not from each move, is what makes it right: a failed payout that the recorder retries on another rail
in the same transaction tells nothing (its retry exists), one rolled back in a savepoint tells
nothing (it is no longer failed), and a repeat (a second node, a re-applied notification) writes
nothing (the keys). Nothing is noted and nothing runs when no payout's status was set: the claim that
moves payouts to ``sending`` and every other write pay one dictionary look-up per commit.

What each final state tells (keys name the event, docs/architecture.md §14):

* ``succeeded`` → ``rebate_landed`` (``payout:<id>:landed``; form = the rail; a card when the user took it).
  Not for a person's own withdrawal: they asked for it and confirm it themselves.
* ``waiting_user_confirm`` on the change-transfer rail, offered with its ``package_info`` →
  ``transfer_to_confirm`` at once (``payout:<id>:to_confirm``; not for a withdrawal, whose person is on the
  confirmation page) and ``transfer_reminder`` (``payout:<id>:reminder``) sent after ``closes_at`` less the
  margin, where ``closes_at`` is the bill's first hand-over (``sent_at``) plus ``TRANSFER_CONFIRM_HOURS``
  (at most WeChat's own 24 h); one that would fall in the quiet hours (``NOTICE_QUIET_HOURS``) goes a quarter
  hour before they begin. A reminder whose time has passed already is not written (the first notice says when it
  closes). The notices dispatcher cancels a reminder whose payout no longer waits.
* ``failed`` / ``cancelled`` by a return (``payouts.transitions.mark_returned``: ``finished_at`` set; a refund's
  ``cancel_or_reduce`` is told as a clawback instead) whose money went back to the person's own balance and
  that no retry payout follows → ``payout_failed`` (``payout:<id>:failed``) with the reason in plain words.
  One whose money came from a funder and fell back to the balance or points (``payout:<id>:to-balance`` /
  ``to-points``) → ``rebate_landed`` in that form.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, SessionTransaction, object_session

from models import AccountKind, LedgerAccount, LedgerEntry, LedgerPosting, Payout, PayoutStatus, Rail, db, utcnow
from models.payouts import InApp
from notices.events import NoticeEvent
from notices.outbox import Draft, enqueue_many
from notices.quiet import QuietHours

S = PayoutStatus
NOTED = "notices.payouts"  # session.info: ids of payouts whose status was set to one that may tell
TELLING = frozenset({S.SUCCEEDED, S.WAITING_USER_CONFIRM, S.FAILED, S.CANCELLED})
WECHAT_CLOSES_AFTER = timedelta(hours=24)  # WeChat closes an unconfirmed transfer bill itself after 24 h
# Why a payout's money is back in the balance, as the person reads it (a WeChat "thing": ≤ 20 characters).
REASONS = {
    "not_confirmed": "未在时限内确认收款",
    "cancelled": "发放已取消",
    "below_minimum": "金额低于微信最低发放额",
    "unclaimed": "红包未领取",
    "failed": "微信发放未成功",
}


@dataclass(frozen=True)
class WatchSettings:
    """From the settings, passed in by ``app.py``: ``TRANSFER_CONFIRM_HOURS`` and ``NOTICE_TRANSFER_REMINDER_HOURS``."""

    confirm_hours: int = 24
    reminder_hours: int = 3
    quiet: QuietHours | None = None  # a reminder that would fall in them goes before they begin

    @property
    def open_for(self) -> timedelta:
        return min(timedelta(hours=self.confirm_hours), WECHAT_CLOSES_AFTER)


_SETTINGS: weakref.WeakKeyDictionary[Engine, WatchSettings] = weakref.WeakKeyDictionary()
DEFAULTS = WatchSettings()


def install(engine: Engine, settings: WatchSettings) -> None:
    """Watch payouts (once per process) and use ``settings`` for this database engine (one per app)."""
    _SETTINGS[engine] = settings
    if not event.contains(Payout.status, "set", _status_set):
        event.listen(Payout.status, "set", _status_set)
        event.listen(Session, "before_commit", _before_commit)
        event.listen(Session, "after_transaction_end", _ended)


def _status_set(target: Payout, value, oldvalue, initiator) -> None:
    if value not in TELLING or target.id is None:  # a new row being built (pending, held …) tells nothing
        return
    session = object_session(target)
    if session is not None:
        session.info.setdefault(NOTED, set()).add(target.id)


def _before_commit(session: Session) -> None:
    if NOTED not in session.info or session.in_nested_transaction():
        return
    ids = session.info.pop(NOTED)
    session.flush()  # the payouts as they will be committed, a retry's row too
    bind = session.get_bind()
    settings = _SETTINGS.get(bind.engine if hasattr(bind, "engine") else bind, DEFAULTS)
    payouts = [p for p in (session.get(Payout, pid) for pid in sorted(ids)) if p is not None]
    enqueue_many(drafts_for(payouts, settings, utcnow()))


def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # a rollback forgets what it noted (a commit has taken it already)
        session.info.pop(NOTED, None)


def _withdrawal(payout: Payout) -> bool:
    """The person's own withdrawal (no rebate behind it, no operator's goodwill payout)."""
    return payout.rebate_id is None and payout.created_by_operator_id is None


def drafts_for(payouts: list[Payout], settings: WatchSettings, now: datetime) -> list[Draft]:
    """The notices ``payouts`` in their present states tell (see the module's note)."""
    drafts: list[Draft] = []
    returned = []
    for payout in payouts:
        if payout.status == S.SUCCEEDED and not _withdrawal(payout):
            drafts.append(_landed(payout, f"payout:{payout.id}:landed", payout.amount_fen, payout.rail))
        elif payout.status == S.WAITING_USER_CONFIRM:
            drafts += _to_confirm(payout, settings, now)
        elif payout.status in (S.FAILED, S.CANCELLED) and payout.finished_at is not None:
            returned.append(payout)
    return drafts + _returned(returned)


def _landed(payout: Payout, key: str, amount_fen: int, form: str, points: int = 0) -> Draft:
    facts = {"payout_id": payout.id, "rebate_id": payout.rebate_id, "amount_fen": amount_fen, "form": str(form)}
    if points:
        facts["points"] = points
    return Draft(payout.user_id, NoticeEvent.REBATE_LANDED, key, facts)


def closes_at(payout: Payout, settings: WatchSettings, now: datetime) -> datetime:
    """When the offered transfer can no longer be confirmed: its first hand-over plus the confirmation window."""
    return (payout.sent_at or now) + settings.open_for


def _to_confirm(payout: Payout, settings: WatchSettings, now: datetime) -> list[Draft]:
    if payout.rail != Rail.WECHAT_CHANGE or payout.package_info is None or payout.cancel_requested:
        return []  # a card waiting to be taken, or a bill an operator is cancelling
    closes = closes_at(payout, settings, now)
    if closes <= now:
        return []
    facts = {"payout_id": payout.id, "amount_fen": payout.amount_fen, "closes_at": closes.isoformat()}
    drafts = []
    if not _withdrawal(payout):
        drafts.append(Draft(payout.user_id, NoticeEvent.TRANSFER_TO_CONFIRM, f"payout:{payout.id}:to_confirm", facts))
    remind_at = _before_quiet(closes - timedelta(hours=settings.reminder_hours), settings.quiet)
    if remind_at > now:
        key = f"payout:{payout.id}:reminder"
        drafts.append(Draft(payout.user_id, NoticeEvent.TRANSFER_REMINDER, key, facts, send_after=remind_at))
    return drafts


REMIND_BEFORE_QUIET = timedelta(minutes=15)  # a reminder moved out of the quiet hours goes this long before them


def _before_quiet(remind_at: datetime, quiet: QuietHours | None) -> datetime:
    """``remind_at``, or, when it falls in the quiet hours, a quarter hour before they begin: held until the morning
    it would come after the transfer closed (and go to the inbox only). One offered during them gets none (its first
    notice went at once)."""
    if quiet is None or not quiet.covers(remind_at):
        return remind_at
    return quiet.start_of(remind_at) - REMIND_BEFORE_QUIET


def reason_of(payout: Payout) -> str:
    """Why the payout's money is back in the balance, as a code of ``REASONS``."""
    error = payout.last_error or ""
    if error.startswith("BELOW_WECHAT_MINIMUM"):
        return "below_minimum"
    if payout.status == S.FAILED:
        if payout.rail == Rail.CASH_RED_PACKET and error.startswith("REFUND:"):
            return "unclaimed"  # a red packet nobody opened, refunded by WeChat, found by a query (not the claim check)
        if payout.cancel_requested:
            return "cancelled"  # the bill failed while an operator's cancel was asked: not sent again
        if payout.rail == Rail.WECHAT_CHANGE and payout.package_info is not None and error.startswith("FAIL:"):
            # offered and never confirmed: WeChat closes such a bill after 24 h with FAIL (payouts.record: back to the
            # balance, no new bill); an operator's "resolved as failed" is not that
            return "not_confirmed"
        return "failed"
    if payout.status != S.CANCELLED:
        return "failed"
    if payout.cancel_requested or "operator" in error.lower():
        return "cancelled"
    if payout.rail == Rail.WECHAT_CHANGE and payout.package_info is not None:
        return "not_confirmed"  # offered, and WeChat closed it (or we cancelled it past the window)
    return "failed"


def failed_draft(payout: Payout, reason: str) -> Draft:
    """``payout:<id>:failed``: the payout did not reach the person and its money is in their balance."""
    facts = {
        "payout_id": payout.id,
        "amount_fen": payout.amount_fen,
        "reason": REASONS[reason],
        "reason_code": reason,
    }
    return Draft(payout.user_id, NoticeEvent.PAYOUT_FAILED, f"payout:{payout.id}:failed", facts)


def _returned(payouts: list[Payout]) -> list[Draft]:
    """Failed or cancelled payouts: told when their money is the person's again and nothing is sent in its place.
    Three reads for all of them (the rare path): their sources, their retries, their in-app fallbacks."""
    if not payouts:
        return []
    ids = [p.id for p in payouts]
    sources = {
        row.id: row
        for row in db.session.execute(
            select(LedgerAccount.id, LedgerAccount.kind, LedgerAccount.owner_type, LedgerAccount.owner_id).where(
                LedgerAccount.id.in_({p.source_account_id for p in payouts})
            )
        )
    }
    retried = set(db.session.execute(select(Payout.retry_of_id).where(Payout.retry_of_id.in_(ids))).scalars())
    keys = {f"payout:{p.id}:to-{form}": (p, form) for p in payouts for form in (InApp.BALANCE, InApp.POINTS)}
    fallbacks = db.session.execute(
        select(LedgerEntry.idempotency_key, LedgerPosting.amount)
        .join(LedgerPosting, LedgerPosting.entry_id == LedgerEntry.id)
        .where(LedgerEntry.idempotency_key.in_(list(keys)), LedgerPosting.amount > 0)
    ).all()
    drafts = []
    fell_back = set()
    for key, amount in fallbacks:
        payout, form = keys[key]
        fell_back.add(payout.id)
        drafts.append(_landed(payout, f"{key}:landed", payout.amount_fen, form, amount if form == InApp.POINTS else 0))
    for payout in payouts:
        if payout.rail == Rail.PROFIT_SHARING:  # back to the merchant, not the balance: told as its rebate's
            continue
        source = sources.get(payout.source_account_id)
        own_cash = (
            source is not None
            and source.kind == AccountKind.USER_CASH
            and (source.owner_type, source.owner_id) == ("user", payout.user_id)
        )
        if own_cash and payout.id not in retried and payout.id not in fell_back:
            drafts.append(failed_draft(payout, reason_of(payout)))
    return drafts
