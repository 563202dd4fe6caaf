"""Probe 21: WeChat Pay coupons around a spent stock, as an operator and WeChat see it (docs/wechat-rules.md §6.3).

The rail talks to ``responses`` standing in for WeChat (answers signed with WeChat's key), so every POST to the
coupon endpoint is counted: a payout of a paused stock that never reached WeChat waits (or falls back) without a
call, the pause's ``paused_since`` never moves back, and a stopped payout that WeChat provably never took is
cancelled, not sent again by the coupon's query (which is a resend)."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import timedelta
from itertools import count

import pytest
import requests
import responses
from sqlalchemy import select

from jobs.payouts import dispatch_due
from ledger import account, balance, check_ledger
from models import AccountKind, Payout, RailControl, db, utcnow
from models.operators import Actor
from payouts import MoneySettings
from payouts.controls import resume_stock
from payouts.coupon_rail import CouponRail, stock_key
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from tests.money_helpers import queue_from_balance
from tests.test_wechat_callbacks import simulator
from wechat.pay import PayClient

BASE = "http://wx.test"
COUPONS = re.compile(re.escape(BASE) + r"/v3/marketing/favor/users/[^/]+/coupons")
MCHID = "1900000109"
STOCK = "S-FIX-500"
STOCKS = [{"stock_id": STOCK, "denomination_fen": 500}, {"stock_id": "S-FIX-1000", "denomination_fen": 1_000}]
RATE_LIMITED = (429, {"code": "FREQUENCY_LIMITED", "message": "频率超限"})
NOT_ENOUGH = (403, {"code": "NOT_ENOUGH", "message": "批次预算不足"})
GATEWAY = (502, {"code": "SYSTEM_ERROR", "message": "网关超时"})
_seq = count(1)


class WeChatCoupons:
    """WeChat's coupon endpoint behind ``responses``: a stock answers its scripted error (else it issues the coupon,
    one per out_request_no), and every POST is kept."""

    def __init__(self, app, mock: responses.RequestsMock):
        self.app, self.posts, self.stocks, self.issued = app, [], {}, {}
        mock.add_callback(responses.POST, COUPONS, callback=self._answer)

    def _answer(self, request):
        body = json.loads(request.body)
        number, stock = body["out_request_no"], body["stock_id"]
        self.posts.append(number)
        status, data = self.stocks.get(stock) or (200, None)
        if data is None:
            data = {"coupon_id": self.issued.setdefault(number, f"C{len(self.issued) + 1:08d}")}
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        headers = simulator(self.app).keys.sign_headers(raw)
        return status, {**headers, "Content-Type": "application/json"}, raw

    def of(self, payout: Payout) -> int:
        """How many times WeChat was asked about this payout's number."""
        return self.posts.count(payout.external_no)


@pytest.fixture
def wechat(app):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield WeChatCoupons(app, mock)


@pytest.fixture
def rail(app, wechat):
    config = dataclasses.replace(app.extensions["wechat"].pay.config, api_base=BASE, backup_base="")
    client = PayClient(config, session=requests.Session())
    return CouponRail(client, appid=app.config["WECHAT_APPID"], stock_creator_mchid=MCHID, stocks=STOCKS)


@pytest.fixture
def coupon(app, make_user):
    """A coupon payout queued from the person's balance (as a rebate leaves it); ``fallback`` as its rule says."""

    def make(amount_fen: int = 500, fallback: str | None = None) -> Payout:
        user = make_user(appid=app.config["WECHAT_APPID"])
        return queue_from_balance(user, amount_fen, "wechat_coupon", "p21", number_prefix="", fallback=fallback)

    return make


@pytest.fixture
def admin(make_operator):
    return Actor(make_operator("admin")[0], "10.0.0.1")


def run(rail, at=None):
    outcomes = dispatch_due(
        {rail.name: rail}, settings=DispatchSettings(money=MoneySettings()), clock=lambda: at or utcnow()
    )
    db.session.expire_all()
    return outcomes


def fresh(payout: Payout) -> Payout:
    return db.session.get(Payout, payout.id)


def cash_of(payout: Payout) -> int:
    return balance(account(AccountKind.USER_CASH, "user", payout.user_id))


def spend_the_stock(wechat, rail, coupon) -> Payout:
    """A new payout's first send answered NOT_ENOUGH: the stock is paused (for 24 h)."""
    wechat.stocks[STOCK] = NOT_ENOUGH
    spent = coupon()
    run(rail)
    assert db.session.get(RailControl, stock_key(STOCK)).paused_until > utcnow() + timedelta(hours=23)
    assert fresh(spent).status == "pending" and wechat.of(spent) == 1
    return spent


def rate_limited_once(wechat, rail, payout: Payout) -> None:
    """The payout's first send was answered 429: WeChat did not take it; it is due again after a backoff."""
    wechat.stocks[STOCK] = RATE_LIMITED
    run(rail)
    rested = fresh(payout)
    assert (rested.status, rested.sent_at, wechat.of(payout)) == ("pending", None, 1)
    assert rested.request is not None  # its request (the stock, the openid) is fixed under its number


# -- 1. a paused stock's payouts that never reached WeChat are held back ---------------------------------------


def test_a_never_sent_payout_of_a_paused_stock_is_not_sent_until_the_stock_resumes(wechat, rail, coupon, admin):
    # given: a payout rate-limited once (never taken by WeChat), then the stock spent by another payout
    held = coupon()
    rate_limited_once(wechat, rail, held)
    spent = spend_the_stock(wechat, rail, coupon)
    # when: a pass once the first payout's backoff is over, the stock still paused
    run(rail, at=utcnow() + timedelta(minutes=10))
    # then: WeChat is not asked about it again; it waits for the stock, neither failed nor sent
    waiting = fresh(held)
    assert wechat.of(held) == 1
    assert (waiting.status, waiting.sent_at) == ("pending", None)
    assert waiting.next_attempt_at > utcnow() + timedelta(hours=23) and STOCK in waiting.last_error
    # when: the budget is raised at WeChat and an operator resumes the stock
    del wechat.stocks[STOCK]
    assert resume_stock(admin, STOCK, "budget raised", utcnow()) == 2
    db.session.commit()
    run(rail)
    # then: both coupons are issued once each, under their own numbers
    assert (fresh(held).status, fresh(spent).status) == ("succeeded", "succeeded")
    assert (wechat.of(held), wechat.of(spent)) == (2, 2) and len(wechat.issued) == 2
    assert check_ledger().ok


def test_a_never_sent_payout_of_a_paused_stock_goes_to_its_rules_fallback(wechat, rail, coupon):
    # given: a payout whose rule falls back to the balance, rate-limited once; then its stock is spent
    held = coupon(fallback="balance")
    rate_limited_once(wechat, rail, held)
    spend_the_stock(wechat, rail, coupon)
    before = cash_of(held)
    # when
    run(rail, at=utcnow() + timedelta(minutes=10))
    # then: on the fallback without asking WeChat again: cancelled, its value back in the balance
    done = fresh(held)
    assert wechat.of(held) == 1
    assert done.status == "cancelled" and STOCK in done.last_error
    assert cash_of(held) == before + 500
    assert check_ledger().ok


def test_a_payout_whose_answer_was_lost_is_still_settled_by_its_number_while_the_stock_is_paused(wechat, rail, coupon):
    # given: a payout whose first send got no answer (the coupon may exist); then its stock is spent
    lost = coupon(fallback="balance")
    wechat.stocks[STOCK] = GATEWAY
    run(rail)
    assert fresh(lost).status == "unknown" and fresh(lost).sent_at is not None
    spend_the_stock(wechat, rail, coupon)
    wechat.issued[lost.external_no] = "C-LOST-ANSWER"  # the first send had issued it
    wechat.stocks[STOCK] = None
    # when: its backoff is over
    run(rail, at=utcnow() + timedelta(minutes=10))
    # then: the same number is sent again (WeChat has no lookup by it) and answers the coupon already issued
    done = fresh(lost)
    assert (done.status, done.wechat_ref, wechat.of(lost)) == ("succeeded", "C-LOST-ANSWER", 2)
    assert check_ledger().ok


# -- 2. the pause's time never moves back; an older answer does not pause again -------------------------------


def not_enough_of(payout: Payout, call_at, settings=None) -> None:
    """WeChat's NOT_ENOUGH to a call about ``payout`` made at ``call_at``, recorded now (recorders run late)."""
    answer = RailResult(Outcome.PAUSE_STOCK, "NOT_ENOUGH", "批次预算不足", details={"stock_id": STOCK})
    payout = fresh(payout)
    payout.status = "sending"
    apply_result(payout, answer, call_at, settings or DispatchSettings(money=MoneySettings()))
    db.session.commit()


def test_a_late_answer_to_an_older_call_never_moves_the_pause_back(client, make_operator, wechat, rail, coupon):
    # given: the stock paused by the answer to a call at `paused`
    spend_the_stock(wechat, rail, coupon)
    switch = db.session.get(RailControl, stock_key(STOCK))
    paused, until = switch.updated_at, switch.paused_until
    headers = make_operator("support")[1]
    [shown] = client.get("/admin/api/rails", headers=headers).json["paused_stocks"]
    # when: the NOT_ENOUGH to a call made a minute earlier is recorded afterwards
    older = coupon()
    older_call = paused - timedelta(minutes=1)
    not_enough_of(older, older_call)
    # then: the pause is still the one WeChat's latest answer set: paused since then, until then
    db.session.expire_all()
    switch = db.session.get(RailControl, stock_key(STOCK))
    assert (switch.updated_at, switch.paused_until) == (paused, until)
    [listed] = client.get("/admin/api/rails", headers=headers).json["paused_stocks"]
    assert (listed["paused_since"], listed["paused_until"]) == (shown["paused_since"], shown["paused_until"])
    # and: that payout waits for the stock like the others
    assert fresh(older).status == "pending" and fresh(older).next_attempt_at == until


def test_an_older_answer_does_not_pause_a_resumed_stock_again(wechat, rail, coupon, admin):
    # given: the stock spent, then resumed by an operator after the budget was raised
    spent = spend_the_stock(wechat, rail, coupon)
    in_flight = coupon()
    sent_at = utcnow()
    del wechat.stocks[STOCK]
    resume_stock(admin, STOCK, "budget raised", utcnow() + timedelta(seconds=1))
    db.session.commit()
    # when: the NOT_ENOUGH to a send that started before the resume is recorded after it
    not_enough_of(in_flight, sent_at)
    # then: the stock stays resumed; both payouts go out on the next pass
    assert db.session.get(RailControl, stock_key(STOCK)).paused_until is None
    run(rail, at=utcnow() + timedelta(hours=1))
    assert (fresh(spent).status, fresh(in_flight).status) == ("succeeded", "succeeded")
    assert wechat.of(in_flight) == 1 and len(wechat.issued) == 2
    assert check_ledger().ok


# -- 3. a stopped payout that WeChat never took is cancelled, not sent again by the query -----------------------


def stop(payout: Payout, why: str = "a refund took the rebate back") -> None:
    """What a whole clawback does to a payout of the rebate still with the dispatcher (rebate.clawbacks)."""
    payout = fresh(payout)
    payout.cancel_requested = True
    payout.last_error = f"cancellation requested: {why}"
    db.session.commit()


def test_a_stopped_coupon_whose_first_send_was_rate_limited_is_cancelled_without_a_resend(wechat, rail, coupon):
    # given: the first send got 429 (WeChat did not take it); then the payout is asked to stop
    stopped = coupon()
    rate_limited_once(wechat, rail, stopped)
    stop(stopped)
    before = cash_of(stopped)
    del wechat.stocks[STOCK]  # WeChat would issue it now
    # when: its backoff is over
    run(rail, at=utcnow() + timedelta(minutes=10))
    # then: cancelled as a never-sent payout is, no coupon, its money back where it came from
    done = fresh(stopped)
    assert wechat.of(stopped) == 1 and wechat.issued == {}
    assert done.status == "cancelled" and done.wechat_ref is None
    assert cash_of(stopped) == before + 500
    assert check_ledger().ok


def test_a_stopped_coupon_of_a_paused_stock_is_cancelled_not_held(wechat, rail, coupon):
    stopped = coupon(fallback="balance")
    rate_limited_once(wechat, rail, stopped)
    spend_the_stock(wechat, rail, coupon)
    stop(stopped)
    run(rail, at=utcnow() + timedelta(minutes=10))
    done = fresh(stopped)
    assert wechat.of(stopped) == 1 and done.status == "cancelled"
    assert db.session.execute(select(Payout).where(Payout.retry_of_id == stopped.id)).first() is None
    assert check_ledger().ok


def test_a_stopped_coupon_whose_answer_was_lost_is_still_settled_by_its_number(wechat, rail, coupon):
    # given: the first send got no answer: the coupon may exist, and only a resend of its number tells
    stopped = coupon()
    wechat.stocks[STOCK] = GATEWAY
    run(rail)
    wechat.issued[stopped.external_no] = "C-ISSUED-FIRST"
    stop(stopped)
    del wechat.stocks[STOCK]
    # when
    run(rail, at=utcnow() + timedelta(minutes=10))
    # then: the resend answers the coupon the first send issued: the payout succeeded (the person has it)
    done = fresh(stopped)
    assert (done.status, done.wechat_ref, wechat.of(stopped)) == ("succeeded", "C-ISSUED-FIRST", 2)
    assert check_ledger().ok
