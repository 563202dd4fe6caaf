"""``POST /wechat/transfer/notify``: WeChat's ``MCHTRANSFER.BILL.FINISHED`` for our transfer bills.

Verified exactly like payment callbacks (raw body, key by serial, probes and
stale timestamps refused), parsed once into a ``TransferBill`` (a bad shape or a
state that is not final is 400, nothing applied), and handed to the one intake,
``apply_transfer_notice``, which compares it with our payout once: a mismatch
sends the payout to an operator and moves no money (400, WeChat retries). A
payout already final, or a notification id already recorded, is answered 204
and nothing happens again.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app

from models import utcnow
from payouts.record import DispatchSettings
from payouts.transfer_notices import TransferAccount, TransferOutcome, apply_transfer_notice
from web.wechat_callbacks import PROCESSORS, callback_doc, commit_or_refuse, handle_notification, process_by_event
from wechat.notifications import Notification

log = logging.getLogger(__name__)
bp = Blueprint("transfer_callbacks", __name__, url_prefix="/wechat/transfer")

TRANSFER_REFUSALS = {
    TransferOutcome.NOT_OURS: (404, "unknown out_bill_no"),
    TransferOutcome.MISMATCH_FLAGGED: (400, "notification disagrees with our payout; an operator is alerted"),
}


def process_transfer(n: Notification) -> None:
    if n.event_type != "MCHTRANSFER.BILL.FINISHED":
        log.warning("transfer callback of unexpected type acknowledged", extra={"event_type": n.event_type})
        return
    cfg = current_app.config
    settings = DispatchSettings.from_config(cfg)
    outcome = apply_transfer_notice(n.transfer_bill(), TransferAccount.from_config(cfg), utcnow(), n.id, settings)
    commit_or_refuse(outcome, TRANSFER_REFUSALS)


PROCESSORS["MCHTRANSFER."] = process_transfer  # a transfer bill's notification reaching another of our URLs too


@bp.post("/notify")
@callback_doc("WeChat MCHTRANSFER.BILL.FINISHED for our transfer bills (any other kind of ours by its event type)")
def transfer_notify() -> Response:
    """WeChat's transfer-bill notification."""
    return handle_notification(process_by_event)
