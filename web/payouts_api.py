"""Payout endpoints: the user's payouts and withdrawals; the operator's view and hand.

Operators: finance and admin act; support reads. A manual payout from
``MANUAL_PAYOUT_APPROVAL_FEN`` waits for a second operator. Every action is
audited and honours ``Idempotency-Key``.
"""

from __future__ import annotations

import secrets
import unicodedata
from datetime import datetime
from typing import Annotated, Literal

from flask import Blueprint, current_app, g, request
from pydantic import AfterValidator, BaseModel, Field, model_validator
from sqlalchemy import func, select, update

from models import (
    OperatorRole,
    Payout,
    PayoutAttempt,
    PayoutStatus,
    Rail,
    RailControl,
    Rebate,
    User,
    call_between_commits,
    db,
    utcnow,
)
from models.operators import audit
from payouts import MoneySettings, controls
from payouts.coupon_rail import STOCK_KEY, waiting_for_stock
from payouts.operations import (
    approve,
    cancel,
    check_card_payout,
    lock_for_operator,
    manual_payout,
    record_card_code,
    refuse_another_merchants_card,
    resend,
    resolve,
    settle_redeemed_card,
    waits_for_approval,
    withdraw,
)
from payouts.rails import unconfigured_because
from web import wechat
from web.admin import actor
from web.api import endpoint
from web.auth import current_user
from web.errors import NotFound, to_api_error
from web.schemas import Flag, Id, Model, Page, PositiveFen, Reason
from wechat.errors import WeChatCardCodeConsumed, WeChatError
from wechat.mp import consume_card_code, decrypt_card_code
from wechat.transfers import MIN_TRANSFER_FEN

bp = Blueprint("payouts_api", __name__)
ACTORS = (OperatorRole.ADMIN, OperatorRole.FINANCE)
READERS = (*ACTORS, OperatorRole.SUPPORT)
RAILS = tuple(Rail)
WITH_STAFF = "our staff are checking this payout: nothing is sent again and its money stays set aside until they decide"


def payout_json(p: Payout, *, for_user: bool = False) -> dict:
    body = {
        "id": p.id,
        "rail": p.rail,
        "amount_fen": p.amount_fen,
        "status": p.status,
        "order_id": p.order_id,
        "created_at": p.created_at.isoformat(),
        "finished_at": p.finished_at.isoformat() if p.finished_at else None,
        "returned_at": p.returned_at.isoformat() if p.returned_at else None,  # WeChat gave it back: an unopened packet
        "confirm_opened_at": p.confirm_opened_at.isoformat() if p.confirm_opened_at else None,
    }
    if p.status == "waiting_user_confirm":
        body["package_info"] = p.package_info  # for wx.requestMerchantTransfer / wx.addCard
    if for_user and p.last_error and p.status in ("succeeded", "failed", "cancelled"):
        body["reason"] = p.last_error  # why it did not arrive (never confirmed, never opened: back in the balance)
    elif for_user and p.status == "needs_operator":
        body["reason"] = WITH_STAFF  # its last_error is the operators': WeChat's raw answer (a payee's openid), errors
    if not for_user:
        body |= {
            "user_id": p.user_id,
            "external_no": p.external_no,
            "attempts": p.attempts,
            "held": p.held,
            "last_error": p.last_error,
            "wechat_ref": p.wechat_ref,
            "retry_of_id": p.retry_of_id,
            "next_attempt_at": p.next_attempt_at.isoformat(),
            "created_by_operator_id": p.created_by_operator_id,  # a manual payout: who asked for it
            "approved_by_operator_id": p.approved_by_operator_id,  # … and the second operator who approved it
            "awaiting_approval": waits_for_approval(p),  # held for a second operator's approval
        }
    return body


class UserPayout(BaseModel):
    """A payout as its user sees it."""

    id: int
    rail: str
    amount_fen: int
    status: str
    order_id: int | None
    created_at: str
    finished_at: str | None
    returned_at: str | None = Field(None, description="WeChat gave the money back (a red packet nobody opened)")
    confirm_opened_at: str | None = Field(None, description="the confirmation page was first opened (not proof)")
    package_info: str | None = Field(
        None, description="while waiting_user_confirm: for wx.requestMerchantTransfer, or the cardExt of wx.addCard"
    )
    reason: str | None = Field(
        None, description="why it did not arrive as sent (never confirmed, never opened: back in the balance)"
    )


class UserPayouts(BaseModel):
    items: list[UserPayout]


class Withdrawal(Model):
    amount_fen: PositiveFen


@endpoint(bp, "/api/v1/me/payouts", query=Page, response=UserPayouts)
def my_payouts(query: Page):
    """The caller's payouts; those waiting for confirmation carry ``package_info``."""
    rows = db.session.query(Payout).filter_by(user_id=current_user().id).order_by(Payout.id.desc())
    return {"items": [payout_json(p, for_user=True) for p in rows.limit(query.limit).offset(query.offset)]}


@endpoint(bp, "/api/v1/me/payouts/<int:payout_id>/confirm-opened", methods=["POST"], response=UserPayout)
def confirm_opened(payout_id: int):
    """The mini-program opened the confirmation page: recorded, but not proof of anything."""
    payout = db.session.get(Payout, payout_id)
    if payout is None or payout.user_id != current_user().id:
        raise NotFound("no such payout")
    if payout.confirm_opened_at is None:  # the first opening is kept, of two at once too (the later one reads it)
        first = update(Payout).where(Payout.id == payout.id, Payout.confirm_opened_at.is_(None))
        db.session.execute(first.values(confirm_opened_at=utcnow()).execution_options(synchronize_session=False))
        db.session.refresh(payout, ["confirm_opened_at"])
    return payout_json(payout, for_user=True)


@endpoint(
    bp, "/api/v1/me/withdrawals", methods=["POST"], body=Withdrawal, idempotent=True, status=201, response=UserPayout
)
def new_withdrawal(body: Withdrawal):
    """Withdraw cash balance to WeChat change (above the configured minimum)."""
    # no key, no deduplication: each unkeyed request is its own withdrawal (not named by a clock reading)
    key = request.headers.get("Idempotency-Key") or f"unkeyed-{secrets.token_hex(12)}"
    cfg = current_app.config
    money = MoneySettings.from_config(cfg)
    payout = withdraw(current_user(), body.amount_fen, cfg["WITHDRAWAL_MIN_FEN"], key, money=money)
    return payout_json(payout, for_user=True), 201


class PayoutFilter(Page):
    status: str | None = None
    rail: str | None = None


@endpoint(bp, "/admin/api/payouts", auth="operator", roles=READERS, query=PayoutFilter)
def list_payouts(query: PayoutFilter):
    """Payouts by state and rail, newest first."""
    rows = db.session.query(Payout)
    if query.status:
        rows = rows.filter(Payout.status == query.status)
    if query.rail:
        rows = rows.filter(Payout.rail == query.rail)
    rows = rows.order_by(Payout.id.desc()).limit(query.limit).offset(query.offset)
    return {"items": [payout_json(p) for p in rows]}


@endpoint(bp, "/admin/api/payouts/<int:payout_id>", auth="operator", roles=READERS)
def get_payout(payout_id: int):
    """One payout with every attempt."""
    payout = db.session.get(Payout, payout_id)
    if payout is None:
        raise NotFound("no such payout")
    attempts = db.session.query(PayoutAttempt).filter_by(payout_id=payout.id).order_by(PayoutAttempt.id)
    return {
        **payout_json(payout),
        "attempts": [
            {
                "action": a.action,
                "response_code": a.response_code,
                "outcome": a.outcome,
                "message": a.message,
                "duration_ms": a.duration_ms,
                "request": a.request_summary,
                "at": a.created_at.isoformat(),
            }
            for a in attempts
        ],
    }


class Action(Model):
    reason: Reason


class Resolution(Model):
    outcome: Literal["succeeded", "failed"]
    reason: Reason


@endpoint(
    bp,
    "/admin/api/payouts/<int:payout_id>/<any(resend, cancel, approve):action>",
    methods=["POST"],
    auth="operator",
    roles=ACTORS,
    body=Action,
    idempotent=True,
)
def act_on_payout(payout_id: int, action: str, body: Action):
    """Resend (same number; queried first if it may have reached WeChat), cancel an unsent one, or approve."""
    payout, now = lock_for_operator(payout_id), utcnow()
    if action == "resend":
        resend(payout, now)
    elif action == "cancel":
        cancel(payout, now, body.reason)
    else:
        approve(payout, g.operator.id, now)
    audit(actor(), f"payout.{action}", "payout", payout.id, body.reason, status=payout.status)
    return payout_json(payout)


@endpoint(
    bp,
    "/admin/api/payouts/<int:payout_id>/resolve",
    methods=["POST"],
    auth="operator",
    roles=ACTORS,
    body=Resolution,
    idempotent=True,
)
def resolve_payout(payout_id: int, body: Resolution):
    """Settle a needs_operator payout from evidence, with the reason."""
    payout = lock_for_operator(payout_id)
    resolve(payout, body.outcome == "succeeded", utcnow(), body.reason)
    audit(actor(), "payout.resolve", "payout", payout.id, body.reason, outcome=body.outcome)
    return payout_json(payout)


class ManualPayout(Model):
    user_id: Id
    # from WeChat's smallest transfer: a smaller one (a red packet below 1 yuan goes as a transfer) would be
    # cancelled unsent by the dispatcher, its money back in the fund, the person paid nothing
    amount_fen: Annotated[int, Field(strict=True, ge=MIN_TRANSFER_FEN, le=2_000_000)]
    rail: Literal[Rail.WECHAT_CHANGE, Rail.CASH_RED_PACKET] = Rail.WECHAT_CHANGE
    reason: Reason


@endpoint(
    bp,
    "/admin/api/payouts",
    methods=["POST"],
    auth="operator",
    roles=ACTORS,
    body=ManualPayout,
    idempotent=True,
    require_key=True,
    status=201,
)
def create_manual_payout(body: ManualPayout):
    """A goodwill payout from the platform fund; large ones wait for a second operator."""
    user = db.session.get(User, body.user_id)
    if user is None:
        raise NotFound("no such user")
    key = request.headers["Idempotency-Key"]
    payout = manual_payout(
        g.operator.id,
        user,
        body.amount_fen,
        body.rail,
        f"{g.operator.id}:{key}",
        body.reason,
        current_app.config["MANUAL_PAYOUT_APPROVAL_FEN"],
        money=MoneySettings.from_config(current_app.config),
    )
    audit(actor(), "payout.manual", "payout", payout.id, body.reason, amount_fen=body.amount_fen, user_id=user.id)
    return payout_json(payout), 201


class RailSwitch(Model):
    enabled: Flag  # strictly true or false: 0 is not a switch position
    reason: Reason


@endpoint(
    bp,
    "/admin/api/rails/<any(wechat_change, cash_red_packet, wechat_coupon, card_coupon, profit_sharing):rail>",
    methods=["PUT"],
    auth="operator",
    roles=ACTORS,
    body=RailSwitch,
    idempotent=True,
)
def switch_rail(rail: str, body: RailSwitch):
    """Stop (or restart) dispatching on a rail at once."""
    control = controls.switch_rail(actor(), rail, body.enabled, body.reason, utcnow())
    return {"rail": rail, "enabled": control.enabled, "reason": control.reason}


def rail_json(rail: str, control: RailControl | None, now: datetime) -> dict:
    """``enabled``: the dispatcher sends on it now (configured, switched on, not paused); ``reason``: why not."""
    why_not = unconfigured_because(rail, current_app.config)
    return {
        "rail": rail,
        "configured": why_not is None,
        "enabled": why_not is None and controls.rail_is_on(control, now),
        "paused_until": control.paused_until.isoformat() if control and control.paused_until else None,
        "reason": why_not or (control.reason if control else None),
    }


CAMPAIGNS_SHOWN = 20  # of a paused stock's waiting payouts: the campaigns named, at most


def paused_stocks_json() -> list[dict]:
    """The WeChat Pay coupon stocks paused because WeChat said their budget is spent (``NOT_ENOUGH``), not yet
    resumed: ``paused_since`` the last such answer, ``paused_until`` when their payouts are tried again unresumed,
    ``waiting`` how many payouts wait for the stock, ``campaign_ids`` whose they are (manual payouts have none)."""
    rows = db.session.execute(
        select(RailControl)
        .where(RailControl.rail.startswith(STOCK_KEY, autoescape=True), RailControl.paused_until.is_not(None))
        .order_by(RailControl.rail)
    ).scalars()
    stocks = []
    for row in rows:
        stock_id = row.rail.removeprefix(STOCK_KEY)
        waits = (Payout.status == PayoutStatus.PENDING) & waiting_for_stock(stock_id)
        waiting = db.session.execute(select(func.count(Payout.id)).where(waits)).scalar_one()
        campaigns = select(Rebate.campaign_id).join(Payout, Payout.rebate_id == Rebate.id).where(waits).distinct()
        campaign_ids = db.session.execute(campaigns.order_by(Rebate.campaign_id).limit(CAMPAIGNS_SHOWN)).scalars()
        stocks.append(
            {
                "stock_id": stock_id,
                "rail": Rail.WECHAT_COUPON.value,
                "paused_since": row.updated_at.isoformat(),
                "paused_until": row.paused_until.isoformat(),
                "reason": row.reason,
                "waiting": waiting,
                "campaign_ids": list(campaign_ids),
            }
        )
    return stocks


@endpoint(bp, "/admin/api/rails", auth="operator", roles=READERS)
def list_rails():
    """Every rail: configured or not (and which settings it lacks), the operator's switch, any pause; and the
    coupon stocks paused alone, their budget spent (``paused_stocks``: resume one with
    ``PUT /admin/api/rails/wechat_coupon/stocks/<stock_id>``)."""
    by_rail, now = {c.rail: c for c in db.session.query(RailControl)}, utcnow()
    return {"items": [rail_json(r, by_rail.get(r), now) for r in RAILS], "paused_stocks": paused_stocks_json()}


class StockResume(Model):
    reason: Reason


class StockResumed(BaseModel):
    stock_id: str
    released: int = Field(description="the payouts that waited for the stock, due at once (each under its own number)")


@endpoint(
    bp,
    "/admin/api/rails/wechat_coupon/stocks/<stock_id>",
    methods=["PUT"],
    auth="operator",
    roles=ACTORS,
    body=StockResume,
    idempotent=True,
    response=StockResumed,
)
def resume_stock(stock_id: str, body: StockResume):
    """Resume a WeChat Pay coupon stock paused for a spent budget, once its budget is raised at WeChat.

    Its waiting payouts are due at once; the rest of the coupon rail never stopped. A stock that is not paused
    answers 409 ``coupon_stock_not_paused``, an id that cannot be a stock's 422 ``invalid_stock_id``: nothing
    changes. Audited (``coupon_stock.resume``). Restarting the rail (``PUT /admin/api/rails/wechat_coupon``)
    resumes every paused stock.
    """
    released = controls.resume_stock(actor(), stock_id, body.reason, utcnow())
    return {"stock_id": stock_id, "released": released}


INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # control, format, surrogate, line and paragraph separators


def _visible(name: str) -> str:
    """No control or format character (zero-width, bidi override, BOM), lone surrogate or line break: WeChat
    compares the name with the person's verified one. Unassigned and private-use characters pass: a rare
    character of a name may be newer than this Python's Unicode tables, or typed with an older input method."""
    if any(unicodedata.category(c) in INVISIBLE for c in name):
        raise ValueError("the name holds an invisible or control character")
    return name


class RealName(Model):
    real_name: Annotated[
        str,
        Field(min_length=2, max_length=32, pattern=r"^[^\d<>{}\[\]\\/@#$%^&*=+|~`]+$"),
        AfterValidator(_visible),
    ]


@endpoint(bp, "/api/v1/me/real-name", methods=["PUT"], body=RealName, idempotent=True)
def set_real_name(body: RealName):
    """The payee's real name (encrypted at rest), which WeChat needs for transfers from 2,000 yuan.

    Payouts deferred for want of it are released to the dispatcher at once.
    """
    released = controls.set_real_name(current_user(), body.real_name, utcnow())
    return {"real_name_on_file": True, "payouts_released": released}


PlainCode = Annotated[str, Field(min_length=4, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
# WeChat's encrypted card code: base64 (standard or URL-safe alphabet)
EncryptCode = Annotated[str, Field(min_length=8, max_length=512, pattern=r"^[A-Za-z0-9+/=_-]+$")]


class CardCode(Model):
    code: PlainCode | None = Field(None, description="the card code as scanned at the counter")
    encrypt_code: EncryptCode | None = Field(
        None, description="the encrypted code the mini-program got (wx.addCard, wx.openCard): decrypted first"
    )
    card_id: PlainCode | None = None

    @model_validator(mode="after")
    def exactly_one_code(self) -> CardCode:
        if (self.code is None) == (self.encrypt_code is None):
            raise ValueError("send exactly one of code and encrypt_code")
        return self


class CardConsumed(BaseModel):
    consumed: bool
    card_id: str | None
    payout_id: int | None = Field(description="the card payout this redemption decided, if the code is one of ours")


class EncryptedCardCode(Model):
    encrypt_code: EncryptCode


def _card_call_args() -> dict:
    cfg, wx = current_app.config, wechat()
    return {
        "token_store": wx.token_store,
        "appid": cfg["WECHAT_OA_APPID"],
        "secret": cfg["WECHAT_OA_SECRET"],
        "api_base": cfg["WECHAT_API_BASE"],
    }


@endpoint(
    bp,
    "/admin/api/cards/consume",
    methods=["POST"],
    auth="operator",
    roles=(OperatorRole.ADMIN, OperatorRole.MERCHANT_STAFF),
    body=CardCode,
    idempotent=True,
    upstream=True,
    response=CardConsumed,
)
def consume_card(body: CardCode):
    """Redeem a card-package coupon at the counter (``/card/code/consume``; an ``encrypt_code`` is decrypted first).

    Redeeming the code of a card payout decides that payout as delivered, once. Merchant staff redeem only the
    cards of their own merchant's campaigns and the platform's (403 ``card_of_another_merchant``, nothing sent
    to WeChat). No database transaction is open during the WeChat calls; the redemption is audited after them.
    A code WeChat says was already redeemed (an earlier answer lost on the way) still decides its payout, and
    answers 409.
    """
    wx, args = wechat(), _card_call_args()
    card_id = body.card_id or current_app.config.get("WECHAT_CARD_ID")
    scope = actor().merchant_scope

    def decrypt(_: None) -> str:
        try:
            return decrypt_card_code(wx.session, body.encrypt_code, **args)
        except WeChatError as exc:
            raise to_api_error(exc) from exc

    def redeem(_: None) -> dict | WeChatCardCodeConsumed:
        try:
            return consume_card_code(wx.session, code, card_id, **args)
        except WeChatCardCodeConsumed as exc:  # our first redemption's answer never arrived
            return exc
        except WeChatError as exc:
            raise to_api_error(exc) from exc

    def settle(_: None, answer: dict | WeChatCardCodeConsumed) -> dict | WeChatCardCodeConsumed:
        told = None if isinstance(answer, WeChatCardCodeConsumed) else (answer.get("card") or {}).get("card_id")
        payout = settle_redeemed_card(code, utcnow(), told or card_id)  # (already redeemed: the card we named)
        if isinstance(answer, WeChatCardCodeConsumed):  # still decides its payout, then answers 409
            if payout is not None:
                audit(actor(), "card.consume", "card_code", code, "WeChat: already redeemed", payout_id=payout.id)
            return answer
        redeemed_card = (answer.get("card") or {}).get("card_id")
        audit(
            actor(),
            "card.consume",
            "card_code",
            code,
            None,
            card_id=redeemed_card,
            payout_id=payout.id if payout else None,
        )
        return {"consumed": True, "card_id": redeemed_card, "payout_id": payout.id if payout else None}

    # the auth read is committed (ended) before each call; whose card it is, read between them (the code is
    # known only once WeChat decrypted it); the redemption is recorded after them
    code = body.code if body.code is not None else call_between_commits(lambda: None, decrypt, lambda _, c: c)
    result = call_between_commits(lambda: refuse_another_merchants_card(code, scope), redeem, settle)
    if isinstance(result, WeChatCardCodeConsumed):
        raise to_api_error(result) from result
    return result


@endpoint(
    bp,
    "/api/v1/me/payouts/<int:payout_id>/card-code",
    methods=["POST"],
    body=EncryptedCardCode,
    idempotent=True,
    upstream=True,
    response=UserPayout,
)
def record_my_card_code(payout_id: int, body: EncryptedCardCode):
    """The user added the card of a card payout (``wx.addCard`` answers its code encrypted): the code is
    decrypted with WeChat and recorded, so redeeming it at the counter decides the payout. Idempotent."""
    user_id = current_user().id

    def check() -> None:  # 404 / 409 before any WeChat call
        check_card_payout(db.session.get(Payout, payout_id), user_id)

    def decrypt(_: None) -> str:
        try:
            return decrypt_card_code(wechat().session, body.encrypt_code, **_card_call_args())
        except WeChatError as exc:
            raise to_api_error(exc) from exc

    def record(_: None, code: str) -> dict:
        return payout_json(record_card_code(payout_id, user_id, code), for_user=True)

    return call_between_commits(check, decrypt, record)
