"""The payout rails tried from outside: as WeChat answers them, and as the person waiting for the money."""

from __future__ import annotations

from datetime import timedelta

import pytest
import responses
from sqlalchemy import select

from jobs.payouts import dispatch_due
from ledger import account, balance
from models import AccountKind, Payout, PayoutAttempt, db, utcnow
from payouts import MoneySettings
from payouts.operations import cancel
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
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
from wechat.v2sign import parse_xml

# -- cash red packets: WeChat's daily amount limits -------------------------------------------------------------
# sendredpack's error table also names the daily amounts a merchant sets in its API security settings:
# RCVDAMOUNT_LIMIT (该用户今日领取金额超过限制: this person's packets today) and SENDAMOUNT_LIMIT
# (您的商户号今日发放金额超过限制: the merchant's packets today). Both pass with the Beijing day.


@pytest.mark.parametrize("err_code", ["RCVDAMOUNT_LIMIT", "SENDAMOUNT_LIMIT"])
def test_a_daily_amount_limit_waits_for_tomorrow_with_the_same_number(wechat_http, redpack_rail, api_v2_key, err_code):
    now = beijing_at(10)
    body = answer(api_v2_key, result_code="FAIL", err_code=err_code, err_code_des="今日金额超过限制")
    wechat_http.add(responses.POST, SEND_URL, body=body)
    result = redpack_rail(clock=lambda: now).send("RP000000000001", REQUEST)
    assert (result.outcome, result.code, result.retry_at) == (Outcome.DEFER, err_code, beijing_at(8, days=2))


def test_a_person_over_wechats_daily_amount_gets_the_packet_the_next_morning_not_an_operator(
    wechat_http, redpack_rail, oa_user, funded_payout, api_v2_key
):
    # given: the merchant set a lower daily amount per person at WeChat than we know of; today it is used up
    payout, _ = funded_payout(50_00, user=oa_user())
    refusals = {"left": 1}

    def callback(request):
        fields = parse_xml(request.body)
        if refusals["left"]:
            refusals["left"] -= 1
            return 200, {}, answer(api_v2_key, result_code="FAIL", err_code="RCVDAMOUNT_LIMIT")
        ok = answer(api_v2_key, result_code="SUCCESS", mch_billno=fields["mch_billno"], send_listid="L9")
        return 200, {}, ok

    wechat_http.add_callback(responses.POST, SEND_URL, callback=callback)
    clock = {"now": beijing_at(10)}
    rail = redpack_rail(clock=lambda: clock["now"])
    # when: the dispatcher passes several times today, then tomorrow morning
    for minutes in (0, 30, 120, 360, 600):
        clock["now"] = beijing_at(10) + timedelta(minutes=minutes)
        run([rail], at=clock["now"])
    waiting = db.session.get(Payout, payout.id)
    # then: one call today; it waits, unsent, for the next morning (no query, no operator)
    assert (waiting.status, waiting.next_attempt_at, waiting.sent_at) == ("pending", beijing_at(8, days=2), None)
    assert len(wechat_http.calls) == 1
    clock["now"] = beijing_at(8, 1, days=2)
    run([rail], at=clock["now"])
    paid = db.session.get(Payout, payout.id)
    numbers = [parse_xml(c.request.body)["mch_billno"] for c in wechat_http.calls]
    assert (paid.status, numbers) == ("succeeded", [payout.external_no, payout.external_no])
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 50_00
    actions = db.session.query(PayoutAttempt.action).filter_by(payout_id=payout.id).all()
    assert [a for (a,) in actions] == ["send", "send"]


# -- change transfers: an operator's cancel that meets a bill WeChat already failed ------------------------------


class ScriptedTransfers:
    """A transfer rail answering as WeChat would for one bill: offered, then whatever ``state`` says."""

    name, rate_per_second = "wechat_change", 100

    def __init__(self):
        self.state, self.sent = "WAIT_USER_CONFIRM", []

    def build_request(self, payout, now):
        return {"openid": f"o-{payout.user_id}", "amount_fen": payout.amount_fen, "wire": {"body": "{}"}}

    def send(self, external_no, request):
        self.sent.append(external_no)
        return RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info=f"pkg-{external_no}")

    def query(self, external_no, request):
        outcome = {"WAIT_USER_CONFIRM": Outcome.WAITING_USER_CONFIRM, "FAIL": Outcome.FAILED}[self.state]
        return RailResult(outcome, self.state, "超时未确认" if self.state == "FAIL" else "")

    def cancel(self, external_no):  # pragma: no cover - the bill is final before any cancel
        raise AssertionError("a failed bill is not cancelled")


def test_an_operators_cancel_met_by_a_failed_bill_sends_no_new_bill_and_returns_the_money_once(
    app, make_user, funded_payout
):
    # given: a 5-yuan transfer offered to the person; an operator asks to cancel it
    payout, cash = funded_payout(5_00, rail="wechat_change", user=make_user())
    rail = ScriptedTransfers()
    dispatch_due({rail.name: rail}, settings=DispatchSettings(money=MoneySettings()))
    db.session.expire_all()
    assert (db.session.get(Payout, payout.id).status, balance(cash)) == ("waiting_user_confirm", 0)
    cancel(db.session.get(Payout, payout.id), utcnow(), "paid to the wrong person")
    db.session.commit()
    # when: before our cancel reaches WeChat, WeChat has closed the bill unconfirmed (FAIL)
    rail.state = "FAIL"
    dispatch_due({rail.name: rail}, settings=DispatchSettings(money=MoneySettings()))
    dispatch_due(
        {rail.name: rail}, settings=DispatchSettings(money=MoneySettings()), clock=lambda: utcnow() + timedelta(days=1)
    )
    db.session.expire_all()
    # then: the payout is over, its money back in the balance once, and no new bill went out against the cancel
    over = db.session.get(Payout, payout.id)
    assert over.status == "failed"
    assert db.session.scalar(select(Payout).where(Payout.retry_of_id == payout.id)) is None
    assert rail.sent == [payout.external_no]
    assert balance(cash) == 5_00
