"""``POST /wechat/transfer/notify``: WeChat's ``MCHTRANSFER.BILL.FINISHED`` for our transfer bills.

Verified exactly like payment callbacks (raw body, key by serial, probes and
stale timestamps refused). The bill's final state is applied to its payout
under the payout's row lock; a payout already final, or a notification id
already recorded, is answered 204 and nothing happens again.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import PaymentNotification, Payout, PayoutStatus, db, utcnow
from models.payouts import TERMINAL
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from payouts.transfer_rail import STATES
from web.wechat_callbacks import CallbackRefused, _alert_once, _handle, _seen
from wechat.notifications import Notification

bp = Blueprint("transfer_callbacks", __name__, url_prefix="/wechat/transfer")
FINAL = {"SUCCESS", "FAIL", "CANCELLED"}


def process_transfer(n: Notification) -> None:
    if n.event_type != "MCHTRANSFER.BILL.FINISHED" or _seen(n.id):
        return
    data = n.resource
    out_bill_no, state = str(data.get("out_bill_no") or ""), data.get("state")
    payout = db.session.execute(
        select(Payout)
        .where(Payout.external_no == out_bill_no)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if payout is None:
        raise CallbackRefused(404, "unknown out_bill_no")
    mchid = data.get("mch_id") or data.get("mchid")
    appid = data.get("appid")  # not in every sample of this notification: checked when present
    if (
        mchid != current_app.config["WECHAT_MCHID"]
        or data.get("transfer_amount") != payout.amount_fen
        or payout.rail != "wechat_change"
        or (appid is not None and appid != current_app.config["WECHAT_APPID"])
    ):
        _alert_once(
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
        result = RailResult(
            STATES.get(state, Outcome.UNKNOWN),
            state,
            str(data.get("fail_reason") or ""),
            wechat_ref=data.get("transfer_bill_no"),
        )
        apply_result(payout, result, utcnow(), DispatchSettings(max_attempts=current_app.config["PAYOUT_MAX_ATTEMPTS"]))
    db.session.add(
        PaymentNotification(notification_id=n.id, out_trade_no=out_bill_no[:32], outcome=f"transfer_{state}")
    )
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        if not _seen(n.id):
            raise


@bp.post("/notify")
def transfer_notify() -> Response:
    """WeChat's transfer-bill notification."""
    return _handle(process_transfer)
