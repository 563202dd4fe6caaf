"""WeChat Pay coupons (代金券) through v3 ``favor`` send (docs/wechat-rules.md §6.3).

Coupons are issued only from fixed-denomination stocks, one configured stock
per denomination: WeChat's ``coupon_value`` is not open (docs/wechat-rules.md §6.3), so a
coupon's value is its stock's and no value is ever sent. An amount no stock
carries exactly falls back. ``out_request_no`` is the idempotency key: every
resend uses the same number and request, so at most one coupon per payout.

A stock whose budget is spent (``NOT_ENOUGH``) is paused alone: its payouts wait for it (or fall back, where
their rule has a fallback and no coupon of theirs can exist), an operator is alerted once, and the rail goes
on for the other stocks. Its switch is a row of ``rail_controls`` named ``cs:<stock_id>``; an operator resumes
it (``payouts.controls.resume_stock``, or restarting the rail) once the budget is raised at WeChat.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, select

from models import Payout, RailControl, Rebate, UserIdentity, alert_once, db, utcnow
from models.payouts import Rail
from models.sql import insert_ignoring
from payouts.rails import MAY_HAVE_REACHED, Outcome, RailResult
from payouts.transitions import mark_sent
from wechat.errors import WeChatError, WeChatInvalidRequest, WeChatNotFound, WeChatRateLimited
from wechat.http import watch_calls
from wechat.pay import PayClient

# 403 business refusals named in docs/wechat-rules.md §6.3 (WeChat's list is not confirmed), answering a first send.
REFUSALS = {
    "NOT_ENOUGH": Outcome.PAUSE_STOCK,  # the stock's budget is exhausted: that stock waits, the rail goes on
    "RULE_LIMIT": Outcome.FALLBACK,  # this user reached the stock's per-user cap
}
# The same refusals answering a resend of a number that may have reached WeChat (``query``): the coupon our
# first send may have issued can itself be what reached the user's cap or spent the budget, and no call tells
# (nothing finds a coupon by out_request_no, see ``query``). A fallback could pay the person twice: an operator
# looks at the user's coupons; a spent stock's payout waits for it, never falls back.
RESEND_REFUSALS = {
    "NOT_ENOUGH": Outcome.PAUSE_STOCK,
    "RULE_LIMIT": Outcome.ASK_OPERATOR,
}
REF_MOST = 64  # Payout.wechat_ref
STOCK_ID_MOST = 20  # WeChat's stock_id is string[1,20]
# WeChat's stock ids are digits; letters, "-" and "_" are let through (a test's or a sandbox's). Nothing that needs
# escaping in a URL path or a LIKE pattern: an operator resumes a stock by it (PUT .../stocks/<stock_id>).
STOCK_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{STOCK_ID_MOST}}}")
STOCK_KEY = "cs:"  # a stock's switch in rail_controls (its rail column holds 24: "cs:" and 20)
STOCK_PAUSE = timedelta(hours=24)  # a spent stock's payouts are tried again after this unless it is resumed sooner
SEND_PATH = "/v3/marketing/favor/users/"  # the send's path (its openid and "/coupons" follow)


class CouponRail:
    name = Rail.WECHAT_COUPON

    def __init__(
        self,
        client: PayClient,
        *,
        appid: str,
        stock_creator_mchid: str,
        stocks: list[dict],
        rate_per_second: int = 500,
    ):
        self.client, self.appid, self.stock_creator_mchid = client, appid, stock_creator_mchid
        self.stocks = check_stocks(stocks)
        self.rate_per_second = rate_per_second

    def pick_stock(self, amount_fen: int) -> dict | None:
        """The stock whose fixed denomination is exactly the amount, or None."""
        return next((s for s in self.stocks if s["denomination_fen"] == amount_fen), None)

    def build_request(self, payout: Payout, now: datetime) -> dict[str, Any] | RailResult:
        stock = self.pick_stock(payout.amount_fen)
        if stock is None:
            return RailResult(Outcome.FALLBACK, "NO_STOCK_FOR_AMOUNT", f"no stock carries {payout.amount_fen} fen")
        openid = db.session.execute(
            select(UserIdentity.openid)
            .where(UserIdentity.user_id == payout.user_id, UserIdentity.appid == self.appid)
            .limit(1)
        ).scalar_one_or_none()
        if openid is None:
            return RailResult(Outcome.FALLBACK, "NO_OPENID", "the user has no openid under the coupon appid")
        until = stock_paused_until(stock["stock_id"], now)
        if until is not None:  # spent: waits (or falls back) without asking WeChat; no request fixed yet
            return wait_or_fall_back(payout, stock["stock_id"], until, "STOCK_PAUSED")
        return {"openid": openid, "stock_id": stock["stock_id"], "amount_fen": payout.amount_fen}

    def hold(self, payout: Payout, now: datetime) -> RailResult | None:
        """A payout whose request is already fixed (an earlier send was rate limited, say) and that never reached
        WeChat, while its stock is paused: it waits for the stock (or falls back) without a call, as a new payout
        of the stock does (``build_request``); None: it goes out. One that may have reached WeChat is still
        settled by its number, and one asked to stop is cancelled by the dispatcher, never held."""
        if payout.sent_at is not None or payout.cancel_requested or not payout.request:
            return None
        stock_id = payout.request.get("stock_id")
        until = stock_paused_until(stock_id, now) if isinstance(stock_id, str) else None
        return None if until is None else wait_or_fall_back(payout, stock_id, until, "STOCK_PAUSED")

    def send(self, external_no: str, request: dict[str, Any]) -> RailResult:
        """A first send, or one after answers that said no coupon was issued (the dispatcher queries otherwise)."""
        return self._post(external_no, request, REFUSALS)

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult:
        """The number may have reached WeChat: it is sent again, the same number and request.

        WeChat has no query by out_request_no (docs/wechat-rules.md §6.3): a coupon is found by coupon_id, which a
        lost answer never gave us, and the user's coupon list names no out_request_no. Its documented path is the
        idempotent resend: the same out_request_no answers the coupon already issued, or issues it once. Its
        refusals are read as a resend's (``RESEND_REFUSALS``): they may be about the coupon our first send issued.
        """
        return self._post(external_no, request, RESEND_REFUSALS)

    def _post(self, external_no: str, request: dict[str, Any], refusals: dict[str, Outcome]) -> RailResult:
        """One call (the pay client tries the backup host after a network failure on the main one, same number).

        When an attempt may have reached WeChat (a connection dropped once open, a read timeout) and a later one
        (the backup's) answered an error, that answer says nothing of the first attempt, which may have issued
        the coupon: its refusals are read as a resend's, a 429 leaves the payout in transit (``UNKNOWN``) and
        every such result carries ``MAY_HAVE_REACHED`` (the payout is marked sent: a stop then settles it by
        its number, never cancels it as never sent, and no fallback pays it again)."""
        with watch_calls() as watch:
            try:
                answer = self.client.send_favor_coupon(
                    request["openid"],
                    request["stock_id"],
                    external_no,
                    self.stock_creator_mchid,
                    appid=self.appid,
                )
            except WeChatError as exc:
                reached = watch.reached("POST", SEND_PATH)
                if reached is None:
                    return _error(exc, refusals, request["stock_id"])
                return _reached(_error(exc, RESEND_REFUSALS, request["stock_id"]), reached)
        coupon_id = answer.get("coupon_id") if isinstance(answer, dict) else None
        if not coupon_id:
            return RailResult(Outcome.UNKNOWN, "NO_COUPON_ID", "2xx answer without coupon_id")
        if isinstance(coupon_id, bool) or not isinstance(coupon_id, str | int) or len(str(coupon_id)) > REF_MOST:
            why = f"WeChat's answer could not be read (coupon_id {coupon_id!r:.80}); sent again with the same number"
            return RailResult(Outcome.UNKNOWN, "UNREADABLE_ANSWER", why)
        return RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref=str(coupon_id))


def _reached(result: RailResult, error: str) -> RailResult:
    """``result``, the answer of a later attempt of a call an earlier attempt of which (failed with ``error``) may
    have reached WeChat: the coupon of the number may have been issued."""
    # a 429: only a resend of the same number (the coupon's query) decides it now; another 4xx: an operator's, in
    # transit (a refusal answered on the rail's other paths is a resend's already: RESEND_REFUSALS)
    outcome = {Outcome.RETRY: Outcome.UNKNOWN, Outcome.CONFIG_ERROR: Outcome.ASK_OPERATOR}.get(result.outcome)
    outcome = outcome or result.outcome
    why = (
        f"{result.message} (an earlier attempt of this send, on the main host, failed with {error} after it may "
        "have reached WeChat: the coupon may have been issued; settled by sending the same number again)"
    )
    return dataclasses.replace(result, outcome=outcome, message=why, details={**result.details, MAY_HAVE_REACHED: True})


def _error(exc: WeChatError, refusals: dict[str, Outcome], stock_id: str) -> RailResult:
    if not isinstance(exc.code, str) or len(exc.code) > REF_MOST:
        why = f"WeChat's error answer could not be read (code {exc.code!r:.80}); sent again with the same number"
        return RailResult(Outcome.UNKNOWN, "UNREADABLE_ANSWER", why)
    if isinstance(exc, WeChatRateLimited):
        return RailResult(Outcome.RETRY, exc.code, exc.message)  # 429: same out_request_no later
    if exc.code in refusals:
        message = exc.message
        if refusals[exc.code] == Outcome.ASK_OPERATOR:
            message = (
                f"{exc.message} (answering a resend after a lost answer: the coupon of this number may have been "
                "issued; check the user's coupons of the stock before deciding, never send it on another rail unasked)"
            )
        return RailResult(refusals[exc.code], exc.code, message, details={"stock_id": stock_id})
    if isinstance(exc, WeChatInvalidRequest | WeChatNotFound) or (exc.http_status and 400 <= exc.http_status < 500):
        # Any other 4xx: our stock, appid or mchid binding is wrong; an operator must look.
        return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
    return RailResult(Outcome.UNKNOWN, exc.code, exc.message)  # 5xx, timeout, unparseable, bad signature


# -- a spent stock ---------------------------------------------------------------------------------------------


def stock_key(stock_id: str) -> str:
    return f"{STOCK_KEY}{stock_id}"


def spent_mark(stock_id: str) -> str:
    """What the last error of each payout waiting for a spent stock says (its resume finds them by it)."""
    return f"coupon stock {stock_id} is spent"


def waiting_for_stock(stock_id: str) -> ColumnElement[bool]:
    """The payouts put off to a spent stock's pause (their last error names it: ``wait_or_fall_back``)."""
    mark = spent_mark(stock_id).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return (Payout.rail == Rail.WECHAT_COUPON) & Payout.last_error.like(f"%: {mark}:%", escape="\\")


def stock_switch(stock_id: str) -> RailControl:
    """The stock's switch row, made if it has none yet, and locked (as ``payouts.record.rail_control``)."""
    key = stock_key(stock_id)
    row = {"rail": key, "enabled": True, "paused_until": None, "reason": None, "updated_at": utcnow()}
    insert_ignoring(RailControl.__table__, [row], ("rail",))
    locked = select(RailControl).where(RailControl.rail == key).with_for_update()
    return db.session.execute(locked.execution_options(populate_existing=True)).scalar_one()


def stock_paused_until(stock_id: str, now: datetime) -> datetime | None:
    """Until when the stock is paused at ``now``, or None. Read with a share lock: a resume committing meanwhile
    waits for this claim, so it finds (and releases) a payout this claim puts off to the pause's end."""
    paused = db.session.execute(
        select(RailControl.paused_until).where(RailControl.rail == stock_key(stock_id)).with_for_update(read=True)
    ).scalar_one_or_none()
    return paused if paused is not None and paused > now else None


def wait_or_fall_back(payout: Payout, stock_id: str, until: datetime, code: str) -> RailResult:
    """A payout of a spent stock: on its rule's fallback when it has one and no coupon of its number can exist
    (never handed to WeChat with an unknown answer), else it waits for the stock until ``until``."""
    if payout.sent_at is None and payout.fallback_rail and payout.fallback_rail != payout.rail:
        return RailResult(Outcome.FALLBACK, code, f"{spent_mark(stock_id)}: on the rule's fallback")
    why = f"{spent_mark(stock_id)}: waits until the stock is resumed (at the latest {until.isoformat()})"
    return RailResult(Outcome.DEFER, code, why, retry_at=until)


def stock_spent(payout: Payout, result: RailResult, now: datetime) -> RailResult:
    """WeChat answered NOT_ENOUGH (``result``, of a call made at ``now``) for ``payout``: its stock is paused (the
    operator alerted once) and what the payout does next is returned for ``payouts.record.apply_result``.

    An answer to a call made before the stock's switch last changed (recorded late: recorders commit out of order)
    changes nothing there, so the pause's ``updated_at`` (its ``paused_since``) never moves back: the payout waits
    for the pause a later answer set, or, the stock resumed (or its pause over) since, it is sent again after a
    backoff, as the budget may have been raised since: an operator's resume is never undone by an older answer."""
    if result.details.get(MAY_HAVE_REACHED):  # its coupon may exist: it waits for the stock, never falls back
        mark_sent(payout, now)
    stock_id = str(result.details.get("stock_id") or (payout.request or {}).get("stock_id") or "")
    switch = stock_switch(stock_id)
    if switch.reason is not None and switch.updated_at > now:  # (reason None: a switch made just now, never used)
        if switch.paused_until is None or switch.paused_until <= now:
            return RailResult(Outcome.RETRY, result.code, f"{result.message} (answered before {stock_id} was resumed)")
        return wait_or_fall_back(payout, stock_id, switch.paused_until, result.code or "NOT_ENOUGH")
    until = max(now + STOCK_PAUSE, switch.paused_until or now)
    switch.paused_until, switch.reason, switch.updated_at = until, f"{result.code}: {result.message}"[:2000], now
    campaign = None
    if payout.rebate_id is not None:
        campaign = db.session.execute(
            select(Rebate.campaign_id).where(Rebate.id == payout.rebate_id)
        ).scalar_one_or_none()
    alert_once(
        "coupon_stock_spent",
        stock_id,
        text=(
            f"{spent_mark(stock_id)}: WeChat answered {result.code} to payout {payout.external_no} "
            f"({f'campaign {campaign}' if campaign is not None else 'no campaign: a manual payout'}). Its payouts wait "
            "(those whose rule has a fallback fall back); the coupon rail goes on for the other stocks. Raise the "
            f"stock's budget at WeChat, then resume the stock; unresumed, they are tried again at {until.isoformat()}."
        ),
    )
    return wait_or_fall_back(payout, stock_id, until, result.code or "NOT_ENOUGH")


def _checked(stock: dict) -> dict:
    """Refuse, at start-up, a stock that is not one fixed denomination (set values are not open at WeChat)."""
    if not isinstance(stock, dict) or not stock.get("stock_id"):
        raise ValueError("a coupon stock needs a stock_id")
    stock_id = stock["stock_id"]
    if isinstance(stock_id, int) and not isinstance(stock_id, bool):
        stock_id = str(stock_id)  # WeChat's stock_id is a string of digits
    if not isinstance(stock_id, str) or not STOCK_ID.fullmatch(stock_id):
        raise ValueError(
            f"a coupon stock_id is a string of 1 to {STOCK_ID_MOST} letters, digits, '-' or '_' (WeChat's: digits)"
        )
    value = stock.get("denomination_fen")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(
            f"stock {stock_id}: denomination_fen must be a positive int (coupon_value is not open at WeChat)"
        )
    return {"stock_id": stock_id, "denomination_fen": value}


def check_stocks(stocks: list[dict]) -> list[dict]:
    """Each stock checked, and one stock per denomination (two would make the choice arbitrary)."""
    checked = [_checked(stock) for stock in stocks]
    values = [s["denomination_fen"] for s in checked]
    if len(values) != len(set(values)):
        raise ValueError("one coupon stock per denomination")
    return checked
