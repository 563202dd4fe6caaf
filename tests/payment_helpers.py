"""WeChat's word on a payment, typed as the edge parses it, for tests that call the intake directly."""

from __future__ import annotations

from datetime import datetime

from flask import current_app
from sqlalchemy import select

from models import Order, db, retried_once
from rebate import PayAccount, PaymentOutcome, apply_payment
from rebate.errors import BudgetMoved
from tests.money_helpers import app_money
from wechat.transactions import Amount, Transaction


def wechat_payment(
    out_trade_no: str,
    transaction_id: str,
    amount_fen: int,
    *,
    success_time: datetime | None = None,
    payer_total_fen: int | None = None,
    **changes,
) -> Transaction:
    """A paid transaction for our account (the app's settings) unless ``changes`` say otherwise."""
    fields = {
        "out_trade_no": out_trade_no,
        "mchid": current_app.config["WECHAT_MCHID"],
        "appid": current_app.config["WECHAT_APPID"],
        "trade_state": "SUCCESS",
        "amount": Amount(amount_fen, payer_total_fen),
        "transaction_id": transaction_id,
        "success_time": success_time,
        **changes,
    }
    return Transaction(**fields)


def pay_as_wechat(
    out_trade_no: str, transaction_id: str, amount_fen: int, at: datetime, notification_id: str | None = None
) -> PaymentOutcome:
    """``apply_payment`` as the callback and the query job call it: WeChat says ``amount_fen`` was paid (to the
    order's sub-merchant when it was opened for one, as a partner notification says)."""
    sub_mchid = db.session.execute(select(Order.sub_mchid).where(Order.out_trade_no == out_trade_no)).scalar()
    extra = {"sub_mchid": sub_mchid} if sub_mchid else {}
    tx = wechat_payment(out_trade_no, transaction_id, amount_fen, success_time=at, **extra)
    account = PayAccount.from_config(current_app.config)
    return retried_once(  # as the callback does: the budgets last, and once more with them locked if one moved
        lambda locking: apply_payment(
            tx, account, at, notification_id=notification_id, money=app_money(), lock_budgets=locking
        ),
        BudgetMoved,
    )
