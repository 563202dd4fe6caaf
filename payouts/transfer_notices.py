"""``apply_transfer_notice``: the one intake of WeChat's final word on a transfer bill.

The callback (``POST /wechat/transfer/notify``) hands it a bill parsed once at the
edge (``wechat.transactions.TransferBill``) and our account (``TransferAccount``,
from settings). In the caller's transaction, under the payout's row lock, it
checks once whether the notification was seen, compares mchid / appid / amount /
payee once, and then applies the bill's final state through the same
``apply_result`` the dispatcher uses for a query answer. A disagreement is what a
query answer that is not about our payout is (``payouts.record``): every answer
must name our number, amount and payee, or an operator looks; the payout goes to
an operator with an alert, and no money moves. A payout already final only
records the notification id. Flushes only; the view commits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from models import Payout, PayoutStatus, Rail, alert_once, db
from models.orders import NotificationKind, note_notification, notification_seen
from models.payouts import TERMINAL
from payouts.operations import PayoutError, lock_payout
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from payouts.transfer_rail import STATES
from payouts.transitions import move
from wechat.transactions import TransferBill

MISMATCH_ALERT = "payout_answer_mismatch"  # the kind payouts.record raises for an answer not about our payout


@dataclass(frozen=True)
class TransferAccount:
    """Our merchant number and the app id our bills are sent under: a bill of ours names both."""

    mchid: str
    appid: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TransferAccount:
        return cls(mchid=config["WECHAT_MCHID"], appid=config["WECHAT_APPID"])


class TransferOutcome(StrEnum):
    APPLIED = "applied"
    ALREADY_FINAL = "already_final"  # settled before: only the notification id is recorded
    DUPLICATE_NOTIFICATION = "duplicate_notification"
    MISMATCH_FLAGGED = "mismatch_flagged"  # mchid, appid, amount, payee or rail disagree: an operator looks
    NOT_OURS = "not_ours"  # no payout of ours has this out_bill_no

    @property
    def accepted(self) -> bool:
        """Settled for good: WeChat may stop telling us."""
        return self in (self.APPLIED, self.ALREADY_FINAL, self.DUPLICATE_NOTIFICATION)


def apply_transfer_notice(
    bill: TransferBill,
    expected: TransferAccount,
    now: datetime,
    notification_id: str,
    settings: DispatchSettings,
) -> TransferOutcome:
    """Apply a final transfer bill WeChat notified us of; flushes only.

    Under the payout's row lock: a notification id already recorded is a duplicate (a concurrent
    delivery waits here, then sees it); mchid, appid (when the bill names one), amount, payee and
    rail are compared with ours and the payout's, here and nowhere else, and any disagreement
    sends the payout to an operator (one alert while it is open) and moves nothing. Otherwise the
    bill's state settles the payout from any open state, and the notification id is recorded.
    """
    try:
        payout = lock_payout(external_no=bill.out_bill_no)
    except PayoutError:
        return TransferOutcome.NOT_OURS
    if notification_seen(notification_id, bill.out_bill_no, NotificationKind.TRANSFER):
        return TransferOutcome.DUPLICATE_NOTIFICATION
    problems = disagreements(bill, expected, payout)
    if problems:
        _to_operator(payout, "; ".join(problems), now, settings)
        return TransferOutcome.MISMATCH_FLAGGED
    if payout.status in TERMINAL and (payout.status == PayoutStatus.SUCCEEDED) != (bill.state == "SUCCESS"):
        # settled the other way before: a payout paid and now "cancelled", or given back to the balance and now
        # "paid" (the person would have it twice). Nothing moves; an operator looks, once.
        alert_once(
            MISMATCH_ALERT,
            payout.external_no,
            text=f"transfer notification says {bill.state}, but payout {payout.id} is {payout.status}",
        )
        return TransferOutcome.MISMATCH_FLAGGED
    outcome = TransferOutcome.ALREADY_FINAL
    if payout.status not in TERMINAL:
        move(payout, PayoutStatus.SENDING)  # a final answer settles it from any open state
        apply_result(payout, _result(bill), now, settings)
        outcome = TransferOutcome.APPLIED
    db.session.flush()
    note_notification(notification_id, bill.out_bill_no, NotificationKind.TRANSFER, bill.state)
    return outcome


def disagreements(bill: TransferBill, expected: TransferAccount, payout: Payout) -> list[str]:
    """Every way the bill is not about this payout of ours (empty: it agrees)."""
    problems = []
    if payout.rail != Rail.WECHAT_CHANGE:
        problems.append(f"{payout.external_no} is a {payout.rail} payout, not a transfer bill")
    if bill.mch_id != expected.mchid:
        problems.append(f"mch_id {bill.mch_id!r} is not ours")
    if bill.appid is not None and bill.appid != expected.appid:
        problems.append(f"appid {bill.appid!r} is not ours")
    if bill.transfer_amount_fen != payout.amount_fen:
        problems.append(f"WeChat says {bill.transfer_amount_fen} fen; the payout is {payout.amount_fen}")
    sent_to = (payout.request or {}).get("openid")
    if sent_to is None:
        problems.append("no transfer bill was ever built for this payout")
    elif bill.openid != sent_to:
        problems.append("the payee's openid is not the one the bill was sent to")
    if payout.wechat_ref and bill.transfer_bill_no != payout.wechat_ref:  # WeChat named its bill when it took ours
        problems.append(f"bill {bill.transfer_bill_no!r} is not the one WeChat made for this payout")
    return problems


def _result(bill: TransferBill) -> RailResult:
    at = {"finished_at": bill.update_time} if bill.update_time else {}  # WeChat's time of the final state
    return RailResult(STATES[bill.state], bill.state, bill.fail_reason, wechat_ref=bill.transfer_bill_no, details=at)


def _to_operator(payout: Payout, why: str, now: datetime, settings: DispatchSettings) -> None:
    """As for a query answer not about our payout; WeChat repeats a refused notification for 24 h, so a
    payout already with an operator (or final) gets one open alert, not one per delivery."""
    message = f"transfer notification disagrees: {why}"
    if payout.status in TERMINAL or payout.status == PayoutStatus.NEEDS_OPERATOR:
        alert_once(MISMATCH_ALERT, payout.external_no, text=message)
        return
    apply_result(payout, RailResult(Outcome.MISMATCH, "NOTIFICATION_MISMATCH", message), now, settings)
