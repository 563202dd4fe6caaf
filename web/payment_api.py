"""Paying an order: the JSAPI prepay and the ``wx.requestPayment`` parameters.

The order is committed before WeChat is asked, and no transaction is open
during the call. The prepay is idempotent at WeChat by ``out_trade_no`` with
identical parameters, all derived from the stored order (description,
amount, ``time_expire``, ``notify_url``, the payer's openid under
``WECHAT_APPID``), so asking again is always safe: while the stored
``prepay_id`` is younger than its 2-hour life it is reused without a call,
after that WeChat is asked again with the same parameters.

One code path for both fund flows: an order that carries a ``sub_mchid`` (set
at creation in ``FUND_FLOW=service_provider``) is prepaid through the partner
JSAPI to that sub-merchant (``wechat.partner``), with
``settle_info.profit_sharing`` when the order says so. The payer is the
``sp_openid`` under ``WECHAT_APPID`` (our mini-program calls
``wx.requestPayment``), or, when the merchant has a ``sub_appid`` and the
person signed in under it, the ``sub_openid`` with ``sub_appid`` (the
merchant's app calls it, and the pay parameters are signed for that appid).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Blueprint, Response, after_this_request, current_app
from sqlalchemy import update

from models import Merchant, Order, OrderStatus, User, call_between_commits, db, utcnow
from rebate.orders import last_prepay
from web import wechat
from web.api import endpoint
from web.auth import current_user
from web.errors import ApiError, Conflict, NotFound, busy_error, is_busy, to_api_error
from wechat.errors import WeChatBusinessError, WeChatError
from wechat.partner import SubMerchant

log = logging.getLogger(__name__)
bp = Blueprint("payment_api", __name__, url_prefix="/api/v1")

PREPAY_LIFETIME = timedelta(hours=2)
PREPAY_REUSE_MARGIN = timedelta(minutes=5)  # never hand out a prepay_id about to die


@dataclass(frozen=True)
class PrepayFacts:
    order_id: int
    out_trade_no: str
    payable_fen: int
    time_expire: datetime
    prepay_id: str | None
    prepay_at: datetime | None
    openid: str
    sub: SubMerchant | None = None  # partner mode: the sub-merchant the order is paid to
    sub_openid: bool = False  # the openid is under sub.sub_appid (the merchant's own app)
    profit_sharing: bool = False

    @property
    def pay_appid(self) -> str | None:
        """The app that calls ``wx.requestPayment`` (None: ours)."""
        return self.sub.sub_appid if self.sub_openid else None


def service_provider() -> bool:
    """``FUND_FLOW=service_provider``: orders are paid to the merchants' sub-merchant numbers."""
    return current_app.config["FUND_FLOW"] == "service_provider"


def sub_merchant(sub_mchid: str | None, sub_appid: str | None = None) -> SubMerchant | None:
    """The partner-mode payee of an order (its snapshotted ``sub_mchid``); None for a direct order."""
    return None if sub_mchid is None else SubMerchant(sub_mchid, sub_appid)


def description_of(out_trade_no: str) -> str:
    """Fixed for the order's life: WeChat refuses a repeat prepay whose parameters differ."""
    return f"红包返利订单 {out_trade_no}"


def _facts(order_id: int, user_id: int) -> PrepayFacts:
    order = db.session.get(Order, order_id)
    if order is None or order.user_id != user_id:
        raise NotFound("no such order")
    if order.status != OrderStatus.CREATED:
        raise Conflict(f"this order is {order.status}", code=f"order_{order.status}")
    if last_prepay(order) <= utcnow():
        raise Conflict("this order has expired; create a new one", code="order_expired")
    user = db.session.get(User, user_id)
    sub_appid = _sub_appid(order) if order.sub_mchid else None
    own = user.identity_for(sub_appid) if sub_appid else None  # signed in to the merchant's own app
    sub = sub_merchant(order.sub_mchid, sub_appid if own else None)
    identity = own or user.identity_for(current_app.config["WECHAT_APPID"])
    if identity is None:
        raise Conflict("sign in through the mini-program to pay", code="no_mini_program_identity")
    return PrepayFacts(
        order.id,
        order.out_trade_no,
        order.payable_fen,
        order.time_expire,
        order.prepay_id,
        order.prepay_at,
        identity.openid,
        sub,
        own is not None,
        order.profit_sharing,
    )


def _sub_appid(order: Order) -> str | None:
    """The merchant's own appid, while it is still the sub-merchant the order was made for."""
    merchant = db.session.get(Merchant, order.merchant_id)
    return merchant.sub_appid if merchant.sub_mchid == order.sub_mchid else None


def _fresh(facts: PrepayFacts, now: datetime) -> bool:
    return bool(facts.prepay_id and facts.prepay_at and now - facts.prepay_at < PREPAY_LIFETIME - PREPAY_REUSE_MARGIN)


def _ask_wechat(facts: PrepayFacts) -> str:
    ext = wechat()
    try:
        return ext.pay.jsapi_prepay(
            facts.out_trade_no,
            description_of(facts.out_trade_no),
            facts.payable_fen,
            facts.openid,
            ext.notify_url,
            facts.time_expire,
            sub=facts.sub,
            sub_openid=facts.sub_openid,
            profit_sharing=facts.profit_sharing,
        )
    except WeChatBusinessError as exc:
        if exc.code == "ORDERPAID":
            raise Conflict("WeChat says this order is already paid", code="order_paid_at_wechat") from None
        if exc.code == "ORDER_CLOSED":
            raise Conflict("WeChat closed this order; create a new one", code="order_closed_at_wechat") from None
        raise to_api_error(exc) from None
    except WeChatError as exc:
        raise to_api_error(exc) from None


def prepare_payment(order_id: int, user_id: int) -> dict:
    """``wx.requestPayment`` parameters for an unpaid order; commits the prepay_id it stores.

    The order's facts are read (and that transaction ended) before WeChat is asked; a stored prepay_id
    still young enough is reused without a call.
    """
    now = utcnow()

    def ask(facts: PrepayFacts) -> str:
        return facts.prepay_id if _fresh(facts, now) else _ask_wechat(facts)

    def store(facts: PrepayFacts, prepay_id: str) -> tuple[PrepayFacts, str]:
        if not _fresh(facts, now):  # WeChat was asked: its (possibly same) prepay_id is young again
            db.session.execute(
                update(Order)
                .where(Order.id == facts.order_id, Order.status == OrderStatus.CREATED)
                .values(prepay_id=prepay_id, prepay_at=now)
            )
        return facts, prepay_id

    facts, prepay_id = call_between_commits(lambda: _facts(order_id, user_id), ask, store)
    ext = wechat()
    answer = {
        "order_id": facts.order_id,
        "out_trade_no": facts.out_trade_no,
        "pay_params": ext.pay.jsapi_pay_params(prepay_id, facts.pay_appid),
    }
    checkout = ext.checkout_url(prepay_id)
    if checkout:
        answer["simulator_checkout_url"] = checkout
    return answer


@endpoint(bp, "/orders/<int:order_id>/pay", methods=["POST"], upstream=True, tags=("orders",))
def pay_order(order_id: int):
    """``wx.requestPayment`` parameters for one of the caller's unpaid orders (safe to repeat)."""
    return prepare_payment(order_id, current_user().id)


def prepay_after_commit(order_id: int, user_id: int) -> None:
    """Add ``payment`` to a just-committed order's 201 answer (used by ``POST /api/v1/orders``).

    Runs after the endpoint has committed the order (and stored any
    Idempotency-Key answer, which therefore has no ``payment``: a replay or a
    failure here leaves the client to call ``/orders/<id>/pay``).
    """

    @after_this_request
    def add_payment(response: Response) -> Response:
        if response.status_code != 201 or not response.is_json:
            return response
        body = response.get_json()
        try:
            body["payment"] = prepare_payment(order_id, user_id)
        except ApiError as err:
            db.session.rollback()
            body["payment"], body["payment_error"] = None, err.body()
        except Exception as exc:
            db.session.rollback()
            if is_busy(exc):  # the order stands; its prepay waited too long for the database: /pay shortly
                log.warning("prepay after order create deferred: database busy", extra={"order_id": order_id})
                body["payment"], body["payment_error"] = None, busy_error().body()
            else:
                log.exception("prepay after order create failed", extra={"order_id": order_id})
                body["payment"], body["payment_error"] = None, {"error": "internal_error", "message": "retry /pay"}
        response.set_data(current_app.json.dumps(body))
        return response
