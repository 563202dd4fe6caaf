"""Cash red packets through v2 ``sendredpack`` / ``gethbinfo`` (docs/wechat-rules.md §6.1).

The packet goes to the user's OFFICIAL-ACCOUNT openid (a mini-program openid is
refused by WeChat); a person without one falls back to the payout's fallback
rail. WeChat's own limits are checked before the number is ever used: the
1–200 yuan range (fallback), quiet hours 00:00–08:00 Beijing and the per-user
daily caps (deferral, same number). ``mch_billno`` is re-entrant: every retry
sends the same number with the same fixed request, so at most one packet leaves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select

from models import Payout, PayoutStatus, UserIdentity, db, utcnow
from models.base import BEIJING, beijing, next_beijing_midnight
from models.payouts import Rail
from payouts.rails import Outcome, RailResult, disagreement
from wechat.errors import WeChatError, WeChatInvalidRequest
from wechat.redpack import RedpackAction, RedpackClient, RedpackResult

RAIL = Rail.CASH_RED_PACKET
MIN_FEN, MAX_FEN = 100, 20_000  # WeChat's default range, 1–200 yuan
QUIET_END = time(8, 0)  # no cash red packets 00:00–08:00 Beijing time
TEXT_LIMITS = {"send_name": 32, "act_name": 32, "wishing": 128, "remark": 256}
S = PayoutStatus
CODE_MOST = 64  # PayoutAttempt.response_code, Payout.wechat_ref
RETURN = "RETURN_"  # an answer without err_code is coded by its return_code: RETURN_FAIL, RETURN_EMPTY …
# Rows that may already have used the user's daily allowance at WeChat.
MAY_HAVE_LEFT = (S.SENDING, S.UNKNOWN, S.WAITING_USER_CONFIRM, S.SUCCEEDED, S.NEEDS_OPERATOR)

# sendredpack err_code → outcome, row by row from the err_code table (docs/wechat-rules.md §6.1). Any code not
# here (a new one, an empty one after return_code=FAIL) is UNKNOWN: query, never a new number.
SEND_OUTCOMES: dict[str, Outcome] = {
    "SYSTEMERROR": Outcome.RETRY,  # same mch_billno: only one packet can leave
    "PROCESSING": Outcome.IN_PROGRESS,  # accepted, result unknown: gethbinfo later
    "NOTENOUGH": Outcome.PAUSE_RAIL,  # top up, then the same number again
    "FREQ_LIMIT": Outcome.RETRY,
    "SECOND_OVER_LIMITED": Outcome.RETRY,
    "DAY_OVER_LIMITED": Outcome.RETRY,
    "SENDNUM_LIMIT": Outcome.DEFER,  # the user's packets for today are used up: tomorrow, same number
    "MONEY_LIMIT": Outcome.FALLBACK,  # the amount is outside what this merchant may send
    "SEND_FAILED": Outcome.FAILED,  # the only answer after which a new number is allowed
    "TIME_LIMITED": Outcome.DEFER,  # quiet hours: 08:00 Beijing, same number
    "FATAL_ERROR": Outcome.CONFIG_ERROR,  # same number, different params: must never happen
    "NO_AUTH": Outcome.GIVE_UP_USER,  # risk control blocks this user
    "OPENID_ERROR": Outcome.CONFIG_ERROR,
    "ILLEGAL_APPID": Outcome.CONFIG_ERROR,
    "PARAM_ERROR": Outcome.CONFIG_ERROR,
    "XML_ERROR": Outcome.CONFIG_ERROR,
    "SIGN_ERROR": Outcome.CONFIG_ERROR,
    "CA_ERROR": Outcome.CONFIG_ERROR,
}
# Two more rows of WeChat's sendredpack error table (not in docs/wechat-rules.md §6.1): the daily amounts the merchant
# sets in its API security settings, for one person (RCVDAMOUNT_LIMIT, 该用户今日领取金额超过限制) and for the
# merchant (SENDAMOUNT_LIMIT, 您的商户号今日发放金额超过限制). No packet left and both pass with the Beijing day: the
# same number waits for the next morning, as SENDNUM_LIMIT (as unknown codes: queried, resent, then an operator).
DAILY_AMOUNT_LIMITS: dict[str, Outcome] = dict.fromkeys(("RCVDAMOUNT_LIMIT", "SENDAMOUNT_LIMIT"), Outcome.DEFER)
# gethbinfo errors. "Record not found" may mean still processing (docs/wechat-rules.md §6.1): never a failure,
# and answered by resending the same, re-entrant mch_billno with the identical request (NOT_FOUND).
QUERY_ERRORS: dict[str, Outcome] = {
    **dict.fromkeys(
        ("OPENID_ERROR", "ILLEGAL_APPID", "PARAM_ERROR", "XML_ERROR", "SIGN_ERROR", "CA_ERROR", "NO_AUTH"),
        Outcome.CONFIG_ERROR,
    ),
    # "Record not found" may mean still processing, so it is never a failure; WeChat's advice
    # (docs/wechat-rules.md §6.1) is to retry the same mch_billno, which is re-entrant with identical
    # parameters: resend, never a new number.
    "NOT_FOUND": Outcome.NOT_FOUND,
}
# The outcomes of a sendredpack refusal after which the money moves on (FAILED: a new number; FALLBACK: another rail;
# GIVE_UP_USER: back to the balance, from where it may be withdrawn): acted on only in an answer with return_code
# SUCCESS (``_not_wechats_word``); one with return_code FAIL saying them is UNKNOWN and gethbinfo decides. (gethbinfo's
# own FAILED and REFUND are read only from an answer with return_code SUCCESS that names our number: ``query``.)
MONEY_MOVES_ON = frozenset({Outcome.FAILED, Outcome.FALLBACK, Outcome.GIVE_UP_USER})
# gethbinfo status → outcome. SENT: the money has left our account for the user's packet,
# which is all we can pay; the user may still never open it (then WeChat refunds it to
# us after 24 h — see ``_refund`` and ``payouts.unclaimed``). FAILED: this number definitively failed.
STATUS_OUTCOMES: dict[str, Outcome] = {
    "SENDING": Outcome.IN_PROGRESS,
    "SENT": Outcome.SUCCEEDED,
    "RECEIVED": Outcome.SUCCEEDED,
    "FAILED": Outcome.FAILED,
    "RFUND_ING": Outcome.IN_PROGRESS,  # the refund is under way: the money is not back yet
}


class RedpackRail:
    name = RAIL

    def __init__(
        self,
        client: RedpackClient,
        *,
        oa_appid: str,
        send_name: str,
        act_name: str,
        wishing: str,
        remark: str,
        client_ip: str,
        scene_id: str = "PRODUCT_5",
        rate_per_second: int = 30,
        daily_cap_fen: int = 100_000,
        daily_count_cap: int = 10,
        clock: Callable[[], datetime] = utcnow,
    ):
        texts = {"send_name": send_name, "act_name": act_name, "wishing": wishing, "remark": remark}
        too_long = [k for k, v in texts.items() if not v or len(v) > TEXT_LIMITS[k]]
        if too_long or not scene_id:
            # Refused at start-up rather than cut silently: these texts are shown to the user.
            raise ValueError(f"red packet settings empty or too long: {too_long or ['scene_id']}")
        self.client, self.oa_appid, self.texts = client, oa_appid, texts
        self.client_ip, self.scene_id, self.rate_per_second = client_ip, scene_id, rate_per_second
        self.daily_cap_fen, self.daily_count_cap, self.clock = daily_cap_fen, daily_count_cap, clock

    # -- inside the claim transaction ----------------------------------------------
    def build_request(self, payout: Payout, now: datetime) -> dict[str, Any] | RailResult:
        amount = payout.amount_fen
        if not MIN_FEN <= amount <= MAX_FEN or amount > self.daily_cap_fen:
            # WeChat answers MONEY_LIMIT outside 1–200 yuan unless the merchant had the range
            # raised (an account setting we cannot see); a scene_id does not lift it.
            return RailResult(Outcome.FALLBACK, "AMOUNT_OUT_OF_RANGE", f"{amount} fen is outside 1–200 yuan")
        openid = self._oa_openid(payout.user_id)
        if openid is None:
            return RailResult(Outcome.FALLBACK, "NO_OA_OPENID", "the user has no official-account openid")
        if in_quiet_hours(now):
            return RailResult(Outcome.DEFER, "QUIET_HOURS", "no cash red packets before 08:00", retry_at=at_8am(now))
        used_fen, used_count = self._used_today(payout, now)
        if used_count + 1 > self.daily_count_cap or used_fen + amount > self.daily_cap_fen:
            # Deferred, not fallen back: the cap resets tomorrow and the campaign chose a red
            # packet; the request is not fixed yet, so the cap is counted again then.
            why = f"daily cap reached ({used_count} packets, {used_fen} fen today)"
            return RailResult(Outcome.DEFER, "USER_DAILY_CAP", why, retry_at=next_morning(now))
        return {
            "re_openid": openid,
            "total_amount": amount,
            **self.texts,
            "client_ip": self.client_ip,
            # Sent at every amount (optional inside 1–200 yuan, required outside): it names the purpose.
            "scene_id": self.scene_id,
        }

    def _oa_openid(self, user_id: int) -> str | None:
        stmt = select(UserIdentity.openid).where(UserIdentity.user_id == user_id, UserIdentity.appid == self.oa_appid)
        return db.session.execute(stmt.limit(1)).scalar_one_or_none()

    def _used_today(self, payout: Payout, now: datetime) -> tuple[int, int]:
        """The user's packets that left (or may have) this Beijing day, plus those claimed and in flight."""
        start = next_beijing_midnight(now) - timedelta(days=1)
        sent_today = and_(Payout.sent_at >= start, Payout.sent_at < start + timedelta(days=1))
        in_flight = and_(Payout.status == S.SENDING, Payout.sent_at.is_(None))  # claimed, call not answered yet
        stmt = select(func.coalesce(func.sum(Payout.amount_fen), 0), func.count(Payout.id)).where(
            Payout.rail == RAIL,
            Payout.user_id == payout.user_id,
            Payout.id != payout.id,
            Payout.status.in_(MAY_HAVE_LEFT),
            or_(sent_today, in_flight),
        )
        used_fen, used_count = db.session.execute(stmt).one()
        return int(used_fen), int(used_count)

    # -- no database from here on ----------------------------------------------------
    def send(self, external_no: str, request: dict[str, Any]) -> RailResult:
        try:
            answer = self.client.send(
                external_no,
                request["re_openid"],
                request["total_amount"],
                request["send_name"],
                request["act_name"],
                request["wishing"],
                request["remark"],
                request["client_ip"],
                request["scene_id"],
            )
        except WeChatInvalidRequest as exc:  # refused locally, nothing sent
            return RailResult(Outcome.CONFIG_ERROR, exc.code, exc.message)
        except WeChatError as exc:  # timeout, 5xx, unsafe/unparseable XML, bad answer sign
            return RailResult(Outcome.UNKNOWN, exc.code, exc.message)
        odd = _unreadable(answer, "send_listid")
        if odd is not None:
            return odd
        if answer.action is RedpackAction.SUCCEEDED:
            return self._accepted(external_no, request, answer)
        wrong = _about_another(answer, external_no, request)
        if wrong:  # a refusal of another packet says nothing of ours (a SEND_FAILED would free our number)
            return RailResult(Outcome.MISMATCH, "ANSWER_MISMATCH", f"send answer disagrees: {wrong}")
        known = SEND_OUTCOMES.get(answer.err_code) or DAILY_AMOUNT_LIMITS.get(answer.err_code)
        outcome = ((known or Outcome.UNKNOWN) if answer.result_code == "FAIL" else None) or Outcome.UNKNOWN
        doubt = _not_wechats_word(answer) if outcome in MONEY_MOVES_ON else None
        if doubt:  # SEND_FAILED, MONEY_LIMIT, NO_AUTH not about our packet: it may have left
            return _unproven(answer.err_code, doubt)
        return self._refused(answer, outcome)

    def _accepted(self, external_no: str, request: dict[str, Any], answer: RedpackResult) -> RailResult:
        """A success answer must be about our packet: number, amount and payee, each checked when present."""
        wrong = _about_another(answer, external_no, request)
        if wrong:  # like a query answer about another packet: an operator looks, nothing is marked paid
            return RailResult(Outcome.MISMATCH, "ANSWER_MISMATCH", f"send answer disagrees: {wrong}")
        ref = answer.fields.get("send_listid")
        return RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref=str(ref) if ref else None)

    def _refused(self, answer: RedpackResult, outcome: Outcome) -> RailResult:
        code = answer.err_code or f"{RETURN}{answer.return_code or 'EMPTY'}"
        message = answer.err_code_des or str(answer.fields.get("return_msg", ""))
        retry_at = None
        if outcome == Outcome.DEFER:
            now = self.clock()
            retry_at = at_8am(now) if answer.err_code == "TIME_LIMITED" else next_morning(now)
        return RailResult(outcome, code, message, retry_at=retry_at)

    def query(self, external_no: str, request: dict[str, Any]) -> RailResult:
        try:
            answer = self.client.query(external_no)
        except WeChatError as exc:
            return RailResult(Outcome.UNKNOWN, exc.code, exc.message)
        odd = _unreadable(answer, "detail_id")
        if odd is not None:
            return odd
        if answer.return_code != "SUCCESS" or answer.result_code != "SUCCESS":
            outcome = QUERY_ERRORS.get(answer.err_code, Outcome.UNKNOWN)
            return RailResult(outcome, answer.err_code or "QUERY_FAILED", answer.err_code_des)
        wrong = _disagreement(answer, external_no, request)
        if wrong:
            return RailResult(Outcome.MISMATCH, "ANSWER_MISMATCH", f"answer disagrees: {wrong}")
        ref = str(answer.fields.get("detail_id") or "") or None
        if answer.status == "REFUND":
            return _refund(answer, request, ref)
        outcome = STATUS_OUTCOMES.get(answer.status, Outcome.UNKNOWN)
        return RailResult(outcome, answer.status or "NO_STATUS", str(answer.fields.get("reason", "")), wechat_ref=ref)


def _not_wechats_word(answer: RedpackResult) -> str | None:
    """Why a refusal after which the money would move on (a new number, another rail, back to the balance) is not
    WeChat's word about our packet, or None when it is. A refusal is read from an answer with return_code SUCCESS
    (the call reached WeChat and WeChat decided); one with return_code FAIL (a communication failure, a proxy's error
    page turned XML) says nothing about our packet, whatever err_code it carries. A sign, when the answer carries
    one, matched our v2 key (a wrong one never gets here: the client raises); one naming another packet's number,
    amount or payee never gets here either (``_about_another``: an operator looks)."""
    if answer.return_code != "SUCCESS":
        return f"came with return_code {answer.return_code or 'EMPTY'}"
    return None


def _unproven(code: str, doubt: str) -> RailResult:
    """UNKNOWN: gethbinfo decides, and WeChat's "no record" sends the same number again (never a new one)."""
    why = f"{code or 'the answer'} {doubt}: the packet may have left; gethbinfo decides, never a new number or rail"
    return RailResult(Outcome.UNKNOWN, code or "UNPROVEN_ANSWER", why)


def _about_another(answer: RedpackResult, external_no: str, request: dict[str, Any]) -> str | None:
    """How a sendredpack answer names another packet than ours (number, amount, payee, each checked when present:
    WeChat's answers name them, a refusal's too), or None."""
    ours = {"mch_billno": external_no, "total_amount": request["total_amount"], "re_openid": request["re_openid"]}
    present = {k: v for k, v in ours.items() if answer.fields.get(k) not in (None, "")}
    return disagreement(present, answer.fields)


def _unreadable(answer: RedpackResult, ref: str) -> RailResult | None:
    """UNKNOWN when the answer cannot be read: a code longer than the column it is kept in, or the number
    WeChat gives it (``ref``: send_listid, detail_id) not one short text (a nested element, say). None when it can."""
    odd = [
        f"{name} longer than {CODE_MOST} characters"
        for name in ("err_code", "status")
        if len(getattr(answer, name)) > CODE_MOST
    ]
    if len(answer.return_code) > CODE_MOST - len(RETURN):  # kept as RETURN_<return_code> when there is no err_code
        odd.append(f"return_code longer than {CODE_MOST - len(RETURN)} characters")
    value = answer.fields.get(ref)
    if value is not None and not (isinstance(value, str) and len(value) <= CODE_MOST):
        odd.append(f"{ref} {value!r:.80} is not a text of at most {CODE_MOST} characters")
    if not odd:
        return None
    why = f"WeChat's answer could not be read ({'; '.join(odd)}); queried again"
    return RailResult(Outcome.UNKNOWN, "UNREADABLE_ANSWER", why)


def _disagreement(answer: RedpackResult, external_no: str, request: dict[str, Any]) -> str | None:
    """Our number and amount must be the answer's; so must the openid of whoever opened it, if anyone did."""
    expected = {"mch_billno": external_no, "total_amount": request["total_amount"]}
    wrong = disagreement(expected, answer.fields)
    receivers = answer.fields.get("hblist") or []
    receivers = receivers if isinstance(receivers, list) else [receivers]
    strangers = [r.get("openid") for r in receivers if isinstance(r, dict) and r.get("openid") != request["re_openid"]]
    if strangers:
        wrong = "; ".join(filter(None, [wrong, f"opened by {strangers!r}, not our payee"]))
    return wrong


def _refund(answer: RedpackResult, request: dict[str, Any], ref: str | None) -> RailResult:
    """REFUND: nobody opened the packet and WeChat returned it to the merchant account (after 24 h).

    UNCLAIMED (the money goes back to the user's balance) only when WeChat says the whole
    amount came back; any other refund amount is a MISMATCH: an operator at once, nothing moved.
    """
    refunded = str(answer.fields.get("refund_amount", ""))
    if refunded.isdecimal() and int(refunded) == int(request["total_amount"]):
        why = f"nobody opened the red packet; WeChat refunded {refunded} fen after 24 h"
        when = refund_time(answer.fields.get("refund_time"))
        details = {"refund_time": when} if when else {}
        return RailResult(Outcome.UNCLAIMED, "REFUND", why, wechat_ref=ref, details=details)
    why = f"REFUND of {refunded or '?'} fen does not match our {request['total_amount']} fen; nothing moved"
    return RailResult(Outcome.MISMATCH, "REFUND_MISMATCH", why, wechat_ref=ref)


def refund_time(value: object) -> datetime | None:
    """gethbinfo's ``refund_time`` (``yyyy-MM-dd HH:mm:ss``, Beijing time) in UTC; None when absent or not that
    form (the money's return is then dated by our check: ``payouts.unclaimed.record_check``)."""
    try:
        local = datetime.strptime(str(value), "%Y-%m-%d %H:%M:%S")  # noqa: DTZ007 - Beijing time, set below
        return local.replace(tzinfo=BEIJING).astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: a date at the calendar's ends (0001-01-01) has no UTC
        return None


def in_quiet_hours(now: datetime) -> bool:
    return beijing(now).time() < QUIET_END


def at_8am(now: datetime) -> datetime:
    """The next 08:00 Beijing time at or after ``now`` (today's when still in quiet hours)."""
    local = beijing(now)
    day = local.date() if local.time() < QUIET_END else local.date() + timedelta(days=1)
    return datetime.combine(day, QUIET_END, BEIJING).astimezone(now.tzinfo)


def next_morning(now: datetime) -> datetime:
    """08:00 Beijing of the next Beijing day: when per-user daily caps have reset and quiet hours ended."""
    return at_8am(next_beijing_midnight(now))
