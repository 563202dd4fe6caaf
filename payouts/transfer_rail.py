"""WeChat change through the 2025 ``transfer-bills`` API (scene 1000, user confirmation).

``package_info`` (what the user confirms with) comes only in the create answer, so
the serialized body (``wire``) is built once, when the payout is claimed, and
committed with it before the first POST: every POST of that number, including one
after a crash that lost the create answer, sends those exact bytes, and WeChat
answers the existing bill with its ``package_info``. (The encrypted ``user_name``
of a transfer from 2,000 yuan differs on every encryption: a rebuilt body would
be refused.) Every answer is checked against our number (and a query answer
against our amount and openid) before it can decide anything. A 400 refusal is a
definite failure only where no bill can exist (the dispatcher decides, see
``payouts.dispatch.call_wechat``); a query or cancel refused with 400 asks an operator.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from models import Payout, User, UserIdentity, db
from models.base import fernet
from models.payouts import Rail
from payouts.rails import Outcome, RailResult, disagreement
from wechat.errors import WeChatError, WeChatInvalidRequest, WeChatNotFound
from wechat.http import CallInsideTransaction
from wechat.pay import DEFINITE_TRANSFER_REFUSALS
from wechat.transactions import read_time
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
    name = Rail.WECHAT_CHANGE

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
        self._openids: dict[int, str | None] | None = None  # set by ``prefetch`` for one claim, on the claiming thread

    def prefetch(self, payouts: list[Payout] | None) -> None:
        """Before a claim builds its requests: every payee's openid in one SELECT (``None`` forgets them).

        A payee with no openid is remembered as such (``None``): the claim's transaction read it.
        """
        if payouts is None:
            self._openids = None
            return
        users = {p.user_id for p in payouts}
        found = {}
        if users:
            found = dict(
                db.session.execute(
                    select(UserIdentity.user_id, UserIdentity.openid).where(
                        UserIdentity.user_id.in_(users), UserIdentity.appid == self.appid
                    )
                )
                .tuples()
                .all()
            )
        self._openids = {user: found.get(user) for user in users}

    def _openid(self, user_id: int) -> str | None:
        if self._openids is not None and user_id in self._openids:
            return self._openids[user_id]
        return db.session.execute(
            select(UserIdentity.openid).where(UserIdentity.user_id == user_id, UserIdentity.appid == self.appid)
        ).scalar_one_or_none()

    def build_request(self, payout: Payout, now: datetime) -> dict[str, Any] | RailResult:
        if payout.amount_fen < MIN_TRANSFER_FEN:  # WeChat would refuse it: never call, keep it in the balance
            why = f"{payout.amount_fen} fen is below WeChat's smallest transfer ({MIN_TRANSFER_FEN} fen); kept"
            return RailResult(Outcome.CANCELLED, "BELOW_WECHAT_MINIMUM", why)
        openid = self._openid(payout.user_id)
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
        return self.with_wire(payout.external_no, request)

    def prepare(self) -> None:
        """Before a claim (no transaction open): load the key ``user_name`` is encrypted with, which may
        need WeChat's certificate download, so building a body inside the claim never calls WeChat."""
        try:
            self.client.config.keys.encryption_key()
        except (WeChatError, AttributeError):
            pass  # building the body will say what is wrong

    def with_wire(self, external_no: str, request: dict[str, Any]) -> dict[str, Any] | RailResult:
        """The request with its serialized body, built once: every POST of this number sends these bytes.

        Called inside the claim transaction, so the body is committed before the first POST.
        """
        if request.get("wire"):
            return request
        try:
            body, serial = self.client.transfer_bill_body(
                external_no,
                request["openid"],
                request["amount_fen"],
                request["remark"],
                request["report"],
                self.notify_url,
                user_name=_user_name(request),
            )
        except WeChatInvalidRequest as exc:  # refused locally: nothing was sent
            return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
        except WeChatError as exc:  # no key to encrypt the name with yet: try again later, nothing sent
            return RailResult(Outcome.RETRY, exc.code, exc.message)
        except CallInsideTransaction:  # the key needs WeChat's certificate, which prepare() failed to fetch
            return RailResult(Outcome.RETRY, "NO_WECHATPAY_KEY", "WeChat's certificate could not be fetched yet")
        return {**request, "wire": {"body": body, "serial": serial}}

    def send(self, external_no: str, request: dict[str, Any]) -> RailResult:
        """POST the kept bytes: the first POST, a resend and a re-POST for a lost package_info are identical."""
        wire = request.get("wire")
        if not wire:  # never rebuilt here: a second encryption of the name would make a different body
            return RailResult(Outcome.CONFIG_ERROR, "NO_WIRE_BODY", "the request has no body fixed at claim time")
        try:
            answer = self.client.post_transfer_bill(wire["body"], wire["serial"])
        except WeChatInvalidRequest as exc:  # refused locally: nothing was sent
            return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
        except WeChatError as exc:
            return _error(exc)
        return state_result(answer, {"out_bill_no": external_no})

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult:
        try:
            answer = self.client.query_transfer_bill(external_no)
        except WeChatNotFound:
            return RailResult(Outcome.NOT_FOUND, "NOT_FOUND", "WeChat has no bill with this number")
        except WeChatError as exc:
            return _error(exc, may_exist=True)
        expected = {"out_bill_no": external_no, "transfer_amount": request["amount_fen"], "openid": request["openid"]}
        return state_result(answer, expected)

    def cancel(self, external_no: str) -> RailResult:
        try:
            return state_result(self.client.cancel_transfer_bill(external_no), {"out_bill_no": external_no})
        except WeChatError as exc:
            return _error(exc, may_exist=True)


def _user_name(request: dict[str, Any]) -> str | None:
    sealed = request.get("user_name_enc")
    return fernet().decrypt(sealed.encode()).decode() if sealed else None


# The answer's fields a result carries: each a string when present (``state`` and ``transfer_bill_no`` no longer
# than the columns they are kept in: PayoutAttempt.response_code, Payout.wechat_ref).
TEXT_FIELDS = ("state", "fail_reason", "package_info", "transfer_bill_no")
CODE_MOST = 64


def state_result(answer: dict[str, Any], expected: dict[str, Any] | None = None) -> RailResult:
    """The answer's state as an outcome; MISMATCH when it is not about ``expected`` (our number, amount…).

    An answer we cannot read (not an object, or a field of the wrong type) is UNKNOWN: queried again, never
    decided on (payouts.rails), and after the dispatcher's attempts an operator looks.
    """
    if not isinstance(answer, dict):
        return _unreadable(f"the answer is a {type(answer).__name__}, not an object")
    wrong = disagreement(expected, answer) if expected else None
    if wrong:
        return RailResult(Outcome.MISMATCH, "ANSWER_MISMATCH", f"answer disagrees: {wrong}")
    odd = [
        f"{name} {answer[name]!r:.80} ({type(answer[name]).__name__})"
        for name in TEXT_FIELDS
        if answer.get(name) is not None and not isinstance(answer[name], str)
    ]
    if odd:
        return _unreadable(f"not a string: {'; '.join(odd)}")
    too_long = [name for name in ("state", "transfer_bill_no") if len(answer.get(name) or "") > CODE_MOST]
    if too_long:
        return _unreadable(f"{' and '.join(too_long)} longer than {CODE_MOST} characters")
    state = answer.get("state")
    outcome = STATES.get(state, Outcome.UNKNOWN)
    return RailResult(
        outcome,
        state,
        answer.get("fail_reason") or "",
        wechat_ref=answer.get("transfer_bill_no"),
        package_info=answer.get("package_info"),
        details=_update_time(answer.get("update_time")),
    )


def _update_time(value: Any) -> dict[str, datetime]:
    """``{"finished_at": …}`` from the bill's ``update_time`` when it reads as WeChat's time (``read_time``); else
    nothing (the payout is then dated when we learned of it)."""
    if not isinstance(value, str) or len(value) > 40:
        return {}
    try:
        return {"finished_at": read_time(value)}
    except ValueError:
        return {}


def _unreadable(why: str) -> RailResult:
    return RailResult(Outcome.UNKNOWN, "UNREADABLE_ANSWER", f"WeChat's answer could not be read ({why}); queried again")


def _error(exc: WeChatError, *, may_exist: bool = False) -> RailResult:
    """A WeChat error as an outcome. ``may_exist``: the call was about a bill that may exist (a query, a
    cancel), so a 400 refusal says nothing final about the bill: only a person can tell."""
    if not isinstance(exc.code, str) or len(exc.code) > CODE_MOST:
        return _unreadable(f"error code {exc.code!r:.80} is not a text of at most {CODE_MOST} characters")
    if exc.code in DEFINITE_TRANSFER_REFUSALS and not exc.outcome_unknown:
        if may_exist:
            return RailResult(Outcome.ASK_OPERATOR, exc.code, exc.message)
        return RailResult(Outcome.REFUSED, exc.code, exc.message)
    if exc.code == "NOT_ENOUGH":
        return RailResult(Outcome.PAUSE_RAIL, exc.code, exc.message)
    if exc.code == "NO_AUTH":
        return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
    if exc.code == "FREQUENCY_LIMITED":
        return RailResult(Outcome.RETRY, exc.code, exc.message)
    # docs/wechat-rules.md §6.2 (as corrected): any other non-200 answer is never a failure of the bill; query first.
    return RailResult(Outcome.UNKNOWN, exc.code, exc.message)
