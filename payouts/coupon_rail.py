"""WeChat Pay coupons (代金券) through v3 ``favor`` send (docs/wechat-rules.md §6.3).

Coupons are issued only from fixed-denomination stocks, one configured stock
per denomination: WeChat's ``coupon_value`` is not open (docs/wechat-rules.md §6.3), so a
coupon's value is its stock's and no value is ever sent. An amount no stock
carries exactly falls back. ``out_request_no`` is the idempotency key: every
resend uses the same number and request, so at most one coupon per payout.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from models import Payout, UserIdentity, db
from models.payouts import Rail
from payouts.rails import Outcome, RailResult
from wechat.errors import WeChatError, WeChatInvalidRequest, WeChatNotFound, WeChatRateLimited
from wechat.pay import PayClient

# 403 business refusals named in docs/wechat-rules.md §6.3 (WeChat's list is not confirmed).
REFUSALS = {
    "NOT_ENOUGH": Outcome.PAUSE_RAIL,  # the stock's budget is exhausted: stop the rail, alert
    "RULE_LIMIT": Outcome.FALLBACK,  # this user reached the stock's per-user cap
}
REF_MOST = 64  # Payout.wechat_ref


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
        return {"openid": openid, "stock_id": stock["stock_id"], "amount_fen": payout.amount_fen}

    def send(self, external_no: str, request: dict[str, Any]) -> RailResult:
        try:
            answer = self.client.send_favor_coupon(
                request["openid"],
                request["stock_id"],
                external_no,
                self.stock_creator_mchid,
                appid=self.appid,
            )
        except WeChatError as exc:
            return _error(exc)
        coupon_id = answer.get("coupon_id") if isinstance(answer, dict) else None
        if not coupon_id:
            return RailResult(Outcome.UNKNOWN, "NO_COUPON_ID", "2xx answer without coupon_id")
        if isinstance(coupon_id, bool) or not isinstance(coupon_id, str | int) or len(str(coupon_id)) > REF_MOST:
            why = f"WeChat's answer could not be read (coupon_id {coupon_id!r:.80}); sent again with the same number"
            return RailResult(Outcome.UNKNOWN, "UNREADABLE_ANSWER", why)
        return RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref=str(coupon_id))

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult:
        # WeChat has no query by out_request_no (docs/wechat-rules.md §6.3) (a coupon is found by coupon_id,
        # which a lost answer never gave us). Its documented path is the idempotent
        # resend: the same out_request_no returns the coupon already issued, or issues
        # it once. NOT_FOUND makes the dispatcher do exactly that, with the same number.
        return RailResult(Outcome.NOT_FOUND, "RESEND_SAME_NUMBER", "no query by out_request_no; resending it")


def _error(exc: WeChatError) -> RailResult:
    if not isinstance(exc.code, str) or len(exc.code) > REF_MOST:
        why = f"WeChat's error answer could not be read (code {exc.code!r:.80}); sent again with the same number"
        return RailResult(Outcome.UNKNOWN, "UNREADABLE_ANSWER", why)
    if isinstance(exc, WeChatRateLimited):
        return RailResult(Outcome.RETRY, exc.code, exc.message)  # 429: same out_request_no later
    if exc.code in REFUSALS:
        return RailResult(REFUSALS[exc.code], exc.code, exc.message)
    if isinstance(exc, WeChatInvalidRequest | WeChatNotFound) or (exc.http_status and 400 <= exc.http_status < 500):
        # Any other 4xx: our stock, appid or mchid binding is wrong; an operator must look.
        return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
    return RailResult(Outcome.UNKNOWN, exc.code, exc.message)  # 5xx, timeout, unparseable, bad signature


def _checked(stock: dict) -> dict:
    """Refuse, at start-up, a stock that is not one fixed denomination (set values are not open at WeChat)."""
    if not isinstance(stock, dict) or not stock.get("stock_id"):
        raise ValueError("a coupon stock needs a stock_id")
    value = stock.get("denomination_fen")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(
            f"stock {stock['stock_id']}: denomination_fen must be a positive int (coupon_value is not open at WeChat)"
        )
    return {"stock_id": stock["stock_id"], "denomination_fen": value}


def check_stocks(stocks: list[dict]) -> list[dict]:
    """Each stock checked, and one stock per denomination (two would make the choice arbitrary)."""
    checked = [_checked(stock) for stock in stocks]
    values = [s["denomination_fen"] for s in checked]
    if len(values) != len(set(values)):
        raise ValueError("one coupon stock per denomination")
    return checked
