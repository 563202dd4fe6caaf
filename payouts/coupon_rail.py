"""WeChat Pay coupons (代金券) through v3 ``favor`` send (reference §6.3).

A stock has a fixed denomination unless it allows a set value within a range;
an amount no configured stock can carry exactly falls back. ``out_request_no``
is the idempotency key: every resend uses the same number and request, so at
most one coupon is issued per payout.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from models import Payout, UserIdentity, db
from payouts.rails import Outcome, RailResult
from wechat.errors import WeChatError, WeChatInvalidRequest, WeChatNotFound, WeChatRateLimited
from wechat.pay import PayClient

# 403 business refusals named by the reference (the list itself is unconfirmed there).
REFUSALS = {
    "NOT_ENOUGH": Outcome.PAUSE_RAIL,  # the stock's budget is exhausted: stop the rail, alert
    "RULE_LIMIT": Outcome.FALLBACK,  # this user reached the stock's per-user cap
}


class CouponRail:
    name = "wechat_coupon"

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
        self.stocks = [_checked(stock) for stock in stocks]
        self.rate_per_second = rate_per_second

    def pick_stock(self, amount_fen: int) -> dict | None:
        """A fixed denomination equal to the amount first, else the first set-value stock whose range holds it."""
        fixed = [s for s in self.stocks if s["denomination_fen"] == amount_fen]
        ranged = [
            s for s in self.stocks if s["denomination_fen"] is None and s["min_fen"] <= amount_fen <= s["max_fen"]
        ]
        return (fixed or ranged or [None])[0]

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
        return {
            "openid": openid,
            "stock_id": stock["stock_id"],
            "amount_fen": payout.amount_fen,
            # Only a set-value stock is told the value; a fixed stock carries its own.
            "coupon_value_fen": payout.amount_fen if stock["denomination_fen"] is None else None,
        }

    def send(self, external_no: str, request: dict[str, Any]) -> RailResult:
        try:
            answer = self.client.send_favor_coupon(
                request["openid"],
                request["stock_id"],
                external_no,
                self.stock_creator_mchid,
                appid=self.appid,
                coupon_value_fen=request["coupon_value_fen"],
            )
        except WeChatError as exc:
            return _error(exc)
        coupon_id = answer.get("coupon_id") if isinstance(answer, dict) else None
        if not coupon_id:
            return RailResult(Outcome.UNKNOWN, "NO_COUPON_ID", "2xx answer without coupon_id")
        return RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref=str(coupon_id))

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult:
        # The reference has no query by out_request_no (a coupon is found by coupon_id,
        # which a lost answer never gave us). Its documented path is the idempotent
        # resend: the same out_request_no returns the coupon already issued, or issues
        # it once. NOT_FOUND makes the dispatcher do exactly that, with the same number.
        return RailResult(Outcome.NOT_FOUND, "RESEND_SAME_NUMBER", "no query by out_request_no; resending it")


def _error(exc: WeChatError) -> RailResult:
    if isinstance(exc, WeChatRateLimited):
        return RailResult(Outcome.RETRY, exc.code, exc.message)  # 429: same out_request_no later
    if exc.code in REFUSALS:
        return RailResult(REFUSALS[exc.code], exc.code, exc.message)
    if isinstance(exc, WeChatInvalidRequest | WeChatNotFound) or (exc.http_status and 400 <= exc.http_status < 500):
        # Any other 4xx: our stock, appid or mchid binding is wrong; an operator must look.
        return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
    return RailResult(Outcome.UNKNOWN, exc.code, exc.message)  # 5xx, timeout, unparseable, bad signature


def _checked(stock: dict) -> dict:
    """Refuse a stock configuration that could not carry any amount, at start-up."""
    stock = {"denomination_fen": None, "min_fen": None, "max_fen": None, **stock}
    if not stock.get("stock_id"):
        raise ValueError("a coupon stock needs a stock_id")
    if stock["denomination_fen"] is not None:
        if not isinstance(stock["denomination_fen"], int) or stock["denomination_fen"] <= 0:
            raise ValueError(f"stock {stock['stock_id']}: denomination_fen must be a positive int")
    elif not (isinstance(stock["min_fen"], int) and isinstance(stock["max_fen"], int)) or not (
        0 < stock["min_fen"] <= stock["max_fen"]
    ):
        raise ValueError(f"stock {stock['stock_id']}: a set-value stock needs 0 < min_fen <= max_fen")
    return stock
