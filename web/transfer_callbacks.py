"""``POST /wechat/transfer/notify``: WeChat's ``MCHTRANSFER.BILL.FINISHED`` for our transfer bills.

Verified exactly like payment callbacks (raw body, key by serial, probes and
stale timestamps refused). The bill's final state is applied to its payout
under the payout's row lock, where the notification id is checked once; a
payout already final, or a notification id already recorded, is answered 204
and nothing happens again.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from models import PaymentNotification, PayoutStatus, db, utcnow
from models.payouts import TERMINAL, Rail
from payouts.operations import PayoutError, lock_payout
from payouts.record import DispatchSettings, apply_result
from payouts.transfer_rail import state_result
from rebate.intake import notification_seen
from web.wechat_callbacks import CallbackRefused, alert_once_and_commit, callback_doc, handle_notification
from wechat.notifications import Notification

bp = Blueprint("transfer_callbacks", __name__, url_prefix="/wechat/transfer")
FINAL = {"SUCCESS", "FAIL", "CANCELLED"}


def process_transfer(n: Notification) -> None:
    if n.event_type != "MCHTRANSFER.BILL.FINISHED":
        return
    data = n.resource
    out_bill_no, state = str(data.get("out_bill_no") or ""), data.get("state")
    try:
        payout = lock_payout(external_no=out_bill_no)
    except PayoutError:
        raise CallbackRefused(404, "unknown out_bill_no") from None
    if notification_seen(n.id):  # under the payout's lock: a concurrent duplicate waited, and sees it here
        return
    mchid = data.get("mch_id") or data.get("mchid")
    appid = data.get("appid")  # not in every sample of this notification: checked when present
    if (
        mchid != current_app.config["WECHAT_MCHID"]
        or data.get("transfer_amount") != payout.amount_fen
        or payout.rail != Rail.WECHAT_CHANGE
        or (appid is not None and appid != current_app.config["WECHAT_APPID"])
    ):
        alert_once_and_commit(
            "transfer_mismatch",
            out_bill_no,
            f"transfer notification disagrees: mchid {mchid!r}, appid {appid!r}, {data.get('transfer_amount')!r} fen "
            f"vs {payout.amount_fen} on a {payout.rail} payout",
        )
        raise CallbackRefused(400, "notification disagrees with our payout")
    if state not in FINAL:
        raise CallbackRefused(400, f"unexpected state {state!r}")
    if payout.status not in TERMINAL:
        payout.status = PayoutStatus.SENDING  # a final answer settles it from any open state
        apply_result(payout, state_result(data), utcnow(), DispatchSettings.from_config(current_app.config))
    db.session.add(
        PaymentNotification(notification_id=n.id, out_trade_no=out_bill_no[:32], outcome=f"transfer_{state}")
    )
    db.session.commit()


@bp.post("/notify")
@callback_doc("WeChat MCHTRANSFER.BILL.FINISHED for our transfer bills")
def transfer_notify() -> Response:
    """WeChat's transfer-bill notification."""
    return handle_notification(process_transfer)
