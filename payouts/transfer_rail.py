"""WeChat change through the 2025 ``transfer-bills`` API (scene 1000, user confirmation).

``package_info`` (what the user confirms with) comes only in the create answer, so
the serialized body is kept with the payout after the first POST: when a create
answer is lost, the same ``out_bill_no`` is POSTed again with those exact bytes
and WeChat answers the existing bill with its ``package_info``. Every answer is
checked against our number (and a query answer against our amount and openid)
before it can decide anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from models import Payout, User, UserIdentity, db
from models.base import fernet
from payouts.rails import Outcome, RailResult, disagreement
from wechat.errors import WeChatError, WeChatInvalidRequest, WeChatNotFound
from wechat.pay import DEFINITE_TRANSFER_REFUSALS
from wechat.transfers import MIN_TRANSFER_FEN

REAL_NAME_FROM_FEN = 200_000  # 2,000 yuan: WeChat requires the payee's real name, encrypted
STATES = {
    "SUCCESS": Outcome.SUCCEEDED,
    "WAIT_USER_CONFIRM": Outcome.WAITING_USER_CONFIRM,
    "ACCEPTED": Outcome.IN_PROGRESS,
    "PROCESSING": Outcome.IN_PROGRESS,
    "TRANSFERING": Outcome.IN_PROGRESS,
    "CANCELING": Outcome.IN_PROGRESS,
    "FAIL": Outcome.FAILED,
    "CANCELLED": Outcome.CANCELLED,
}


class TransferRail:
    name = "wechat_change"

    def __init__(
        self,
        client,
        *,
        appid: str,
        notify_url: str,
        activity: str = "消费返利",
        reward_text: str = "订单返利",
        rate_per_second: int = 100,
    ):
        self.client, self.appid, self.notify_url = client, appid, notify_url
        self.activity, self.reward_text, self.rate_per_second = activity[:32], reward_text[:32], rate_per_second

    def build_request(self, payout: Payout, now: datetime) -> dict[str, Any] | RailResult:
        if payout.amount_fen < MIN_TRANSFER_FEN:  # WeChat would refuse it: never call, keep it in the balance
            why = f"{payout.amount_fen} fen is below WeChat's smallest transfer ({MIN_TRANSFER_FEN} fen); kept"
            return RailResult(Outcome.CANCELLED, "BELOW_WECHAT_MINIMUM", why)
        openid = db.session.execute(
            select(UserIdentity.openid).where(UserIdentity.user_id == payout.user_id, UserIdentity.appid == self.appid)
        ).scalar_one_or_none()
        if openid is None:
            return RailResult(Outcome.FALLBACK, "NO_OPENID", "the user has no openid under the payment appid")
        request = {
            "openid": openid,
            "amount_fen": payout.amount_fen,
            "remark": self.reward_text,
            "report": [
                {"info_type": "活动名称", "info_content": self.activity},
                {"info_type": "奖励说明", "info_content": self.reward_text},
            ],
        }
        if payout.amount_fen >= REAL_NAME_FROM_FEN:
            user = db.session.get(User, payout.user_id)
            if not user.real_name:
                return RailResult(
                    Outcome.DEFER,
                    "REAL_NAME_REQUIRED",
                    "from 2,000 yuan WeChat needs the payee's real name; waiting for the user",
                    retry_at=now + timedelta(days=1),
                )
            # Kept encrypted like the user's record; decrypted only to build the WeChat body.
            request["user_name_enc"] = fernet().encrypt(user.real_name.encode()).decode()
        return request

    def send(self, external_no: str, request: dict[str, Any]) -> RailResult:
        """POST the bill; a resend (or a re-POST for a lost package_info) sends the kept bytes again."""
        wire = request.get("wire")
        try:
            if wire is None:
                body, serial = self.client.transfer_bill_body(
                    external_no,
                    request["openid"],
                    request["amount_fen"],
                    request["remark"],
                    request["report"],
                    self.notify_url,
                    user_name=_user_name(request),
                )
                wire = {"body": body, "serial": serial}
            answer = self.client.post_transfer_bill(wire["body"], wire["serial"])
        except WeChatInvalidRequest as exc:  # refused locally: nothing was sent
            return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
        except WeChatError as exc:
            return _error(exc, {"wire": wire})
        result = state_result(answer, {"out_bill_no": external_no})
        return _with(result, {"wire": wire})

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult:
        try:
            answer = self.client.query_transfer_bill(external_no)
        except WeChatNotFound:
            return RailResult(Outcome.NOT_FOUND, "NOT_FOUND", "WeChat has no bill with this number")
        except WeChatError as exc:
            return _error(exc)
        expected = {"out_bill_no": external_no, "transfer_amount": request["amount_fen"], "openid": request["openid"]}
        return state_result(answer, expected)

    def cancel(self, external_no: str) -> RailResult:
        try:
            return state_result(self.client.cancel_transfer_bill(external_no), {"out_bill_no": external_no})
        except WeChatError as exc:
            return _error(exc)


def _user_name(request: dict[str, Any]) -> str | None:
    sealed = request.get("user_name_enc")
    return fernet().decrypt(sealed.encode()).decode() if sealed else None


def state_result(answer: dict[str, Any], expected: dict[str, Any] | None = None) -> RailResult:
    """The answer's state as an outcome; MISMATCH when it is not about ``expected`` (our number, amount…)."""
    wrong = disagreement(expected, answer) if expected else None
    if wrong:
        return RailResult(Outcome.MISMATCH, "ANSWER_MISMATCH", f"answer disagrees: {wrong}")
    state = answer.get("state")
    outcome = STATES.get(state, Outcome.UNKNOWN)
    return RailResult(
        outcome,
        state,
        answer.get("fail_reason") or "",
        wechat_ref=answer.get("transfer_bill_no"),
        package_info=answer.get("package_info"),
    )


def _with(result: RailResult, details: dict[str, Any]) -> RailResult:
    return RailResult(
        result.outcome, result.code, result.message, result.wechat_ref, result.package_info, result.retry_at, details
    )


def _error(exc: WeChatError, details: dict[str, Any] | None = None) -> RailResult:
    details = details or {}
    if exc.code in DEFINITE_TRANSFER_REFUSALS and not exc.outcome_unknown:
        return RailResult(Outcome.REFUSED, exc.code, exc.message, details=details)
    if exc.code == "NOT_ENOUGH":
        return RailResult(Outcome.PAUSE_RAIL, exc.code, exc.message, details=details)
    if exc.code == "NO_AUTH":
        return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message, details=details)
    if exc.code == "FREQUENCY_LIMITED":
        return RailResult(Outcome.RETRY, exc.code, exc.message, details=details)
    # The reference: any other non-200 answer is never a failure of the bill; query before anything else.
    return RailResult(Outcome.UNKNOWN, exc.code, exc.message, details=details)
