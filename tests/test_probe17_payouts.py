"""Probe of the payouts as WeChat's payout APIs would answer them (round 17): odd v2 red-packet answers, a ban while a
transfer is with WeChat."""

from __future__ import annotations

from datetime import timedelta

import pytest
import responses

from jobs.payouts import dispatch_due
from ledger import account, balance, check_ledger
from models import AccountKind, Alert, Payout, db, utcnow
from payouts import MoneySettings
from payouts.dispatch import call_wechat, claim, record
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from payouts.redpack_rail import CODE_MOST
from payouts.transitions import mark_sent
from tests.test_payout_extras import queue_payout
from tests.test_payout_rails import (  # noqa: F401 - fixtures
    REQUEST,
    SEND_URL,
    answer,
    api_v2_key,
    beijing_at,
    funded_payout,
    oa_user,
    redpack_rail,
    run,
    wechat_http,
)

# -- a sendredpack refusal about another packet --------------------------------------------------------------


@pytest.mark.parametrize(
    "planted",
    [
        {"mch_billno": "RP9"},  # another number
        {"total_amount": "50000"},  # another amount
        {"re_openid": "someone-else"},  # another payee
    ],
)
@pytest.mark.parametrize("err_code", ["SEND_FAILED", "MONEY_LIMIT", "NO_AUTH"])
def test_a_refusal_naming_another_packet_never_frees_our_number(
    wechat_http, redpack_rail, api_v2_key, planted, err_code
):
    # given: sendredpack answers a definitive refusal (after which a new number, a fallback or the money back
    # would follow), but the answer names another packet (as a success naming another packet would)
    ours = {"mch_billno": "RP000000000001", "total_amount": "500", "re_openid": REQUEST["re_openid"]}
    body = answer(api_v2_key, result_code="FAIL", err_code=err_code, **{**ours, **planted})
    wechat_http.add(responses.POST, SEND_URL, body=body)
    # when
    result = redpack_rail().send("RP000000000001", REQUEST)
    # then: it is not about our packet: an operator looks, our number is not given up
    assert (result.outcome, result.code) == (Outcome.MISMATCH, "ANSWER_MISMATCH")


def test_a_send_failed_about_another_packet_sends_no_second_packet(
    wechat_http, redpack_rail, api_v2_key, oa_user, funded_payout
):
    # given: a packet of 5 yuan; WeChat's answer says SEND_FAILED, but for another mch_billno
    payout, cash = funded_payout(user=oa_user())
    body = answer(
        api_v2_key, result_code="FAIL", err_code="SEND_FAILED", mch_billno="RP000000999999", total_amount="500"
    )
    wechat_http.add(responses.POST, SEND_URL, body=body)
    # when
    run([redpack_rail()], at=beijing_at(10))
    # then: our packet is not failed, no packet with a new number is queued (ours may well be on its way):
    # an operator looks, alerted
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "needs_operator" and "ANSWER_MISMATCH" in payout.last_error
    assert db.session.query(Payout).count() == 1
    assert db.session.query(Alert).filter_by(kind="payout_answer_mismatch").count() == 1
    assert balance(cash) == 0
    assert check_ledger().ok


# -- an answer whose code does not fit where it is kept -----------------------------------------------------


def test_a_return_code_too_long_to_keep_is_an_unreadable_answer(wechat_http, redpack_rail):
    # given: a v2 answer with no err_code and a return_code longer than the attempt log's code column
    odd = "FAIL" + "X" * 80
    wechat_http.add(responses.POST, SEND_URL, body=f"<xml><return_code>{odd}</return_code></xml>".encode())
    # when
    result = redpack_rail().send("RP000000000001", REQUEST)
    # then: unknown (queried again), with a code that fits PayoutAttempt.response_code (64)
    assert result.outcome == Outcome.UNKNOWN
    assert len(result.code) <= CODE_MOST


def test_a_packet_answered_with_an_overlong_return_code_is_recorded(wechat_http, redpack_rail, oa_user, funded_payout):
    payout, _ = funded_payout(user=oa_user())
    odd = "FAIL" + "X" * 80
    wechat_http.add(responses.POST, SEND_URL, body=f"<xml><return_code>{odd}</return_code></xml>".encode())
    outcomes = run([redpack_rail()], at=beijing_at(10))
    # then: its answer is recorded (unknown: queried before any resend), not an error of the recorder
    assert dict(outcomes) == {Outcome.UNKNOWN: 1}
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "unknown"
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00


# -- a ban while a transfer is with WeChat ------------------------------------------------------------------------


class Bills:
    """WeChat's transfer bills: a POST offers the bill (WAIT_USER_CONFIRM with package_info); cancel cancels it."""

    name, rate_per_second = "wechat_change", 100

    def __init__(self):
        self.calls = []

    def build_request(self, payout, now):
        return {"amount_fen": payout.amount_fen, "openid": f"openid-{payout.user_id}", "wire": {"body": "{}"}}

    def send(self, no, request):
        self.calls.append("send")
        return RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info="pkg")

    def query(self, no, request):
        self.calls.append("query")
        return RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM")

    def cancel(self, no):
        self.calls.append("cancel")
        return RailResult(Outcome.CANCELLED, "CANCELLED", "cancelled by the merchant")


def _ban(client, headers, user_id):
    answer = client.post(
        "/admin/api/bans", json={"subject": "user", "value": str(user_id), "reason": "fraud ring"}, headers=headers
    )
    assert answer.status_code == 201, answer.get_json()


def test_a_transfer_offered_after_its_payee_was_banned_is_cancelled_at_wechat(client, make_user, make_operator):
    # given: a 5-yuan withdrawal whose POST is with WeChat (claimed, committed, no answer yet)
    user = make_user()
    payout = queue_payout(user, 5_00)
    rail, now = Bills(), utcnow()
    settings = DispatchSettings(money=MoneySettings())
    [job] = claim({"wechat_change": rail}, now, settings)
    db.session.commit()
    # when: an operator bans the person meanwhile (the ban finds nothing offered yet), then the answer comes: the bill
    # is offered, waiting for the person's confirmation
    _ban(client, make_operator("admin")[1], user.id)
    calls = call_wechat(job, rail, lambda _: None)
    record(job, calls, now, settings)
    db.session.commit()
    # then: as for a bill offered before the ban, it is cancelled at WeChat by the next pass, not left confirmable
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).cancel_requested is True
    dispatch_due({"wechat_change": rail}, settings=settings, clock=lambda: now + timedelta(minutes=1))
    db.session.expire_all()
    assert rail.calls == ["send", "query", "cancel"]
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == 5_00
    assert check_ledger().ok


def test_a_transfer_unknown_when_its_payee_was_banned_is_cancelled_once_found_offered(client, make_user, make_operator):
    # given: a transfer whose POST timed out (unknown: it may be at WeChat); then the person is banned
    user = make_user()
    payout = queue_payout(user, 5_00, status="unknown", sent_at=utcnow(), request={"amount_fen": 500, "wire": {}})
    mark_sent(db.session.get(Payout, payout.id), utcnow())
    db.session.commit()
    _ban(client, make_operator("admin")[1], user.id)
    rail, settings = Bills(), DispatchSettings(money=MoneySettings())
    # when: the next passes find the bill offered (its package_info got again by a re-POST)
    later = utcnow() + timedelta(minutes=1)
    dispatch_due({"wechat_change": rail}, settings=settings, clock=lambda: later)
    dispatch_due({"wechat_change": rail}, settings=settings, clock=lambda: later + timedelta(minutes=1))
    # then: it is cancelled at WeChat, the money back with the (banned) person, never left confirmable
    db.session.expire_all()
    assert rail.calls == ["query", "send", "query", "cancel"]
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == 5_00
    assert check_ledger().ok
