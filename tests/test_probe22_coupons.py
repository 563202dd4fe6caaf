"""Probe 22: WeChat Pay coupons around retries and the failover to WeChat's backup host (docs/wechat-rules.md §6.3).

Two hosts stand behind ``responses``: the main one and the backup (``api2``). The pay client sends a call that
failed on the main host to the backup with the same out_request_no. A main host whose connection dropped after
the request went out may have issued the coupon, so whatever the backup answers (a 429 included) the payout may
have been sent: a stop settles it by its number, never cancels it as "never sent". A connection that was never made
(refused, connect timeout) told WeChat nothing. And an operator cancels a coupon whose sends issued nothing (a 429)
as a stop does: cancelled, never issued later."""

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
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from jobs.payouts import dispatch_due
from ledger import account, balance, check_ledger
from models import AccountKind, Payout, PayoutStatus, db, utcnow
from payouts import MoneySettings
from payouts.coupon_rail import CouponRail
from payouts.operations import PayoutError, cancel, lock_payout
from payouts.record import DispatchSettings
from tests.money_helpers import queue_from_balance
from tests.test_wechat_callbacks import simulator
from wechat.http import WeChatSession, may_have_arrived, watch_calls
from wechat.pay import PayClient

MAIN, BACKUP = "http://wx.test", "http://wx2.test"
PATH = r"/v3/marketing/favor/users/[^/]+/coupons"
MCHID = "1900000109"
STOCK = "S-FIX-500"
STOCKS = [{"stock_id": STOCK, "denomination_fen": 500}]
RATE_LIMITED = (429, {"code": "FREQUENCY_LIMITED", "message": "频率超限"})
NOT_ENOUGH = (403, {"code": "NOT_ENOUGH", "message": "批次预算不足"})
RULE_LIMIT = (403, {"code": "RULE_LIMIT", "message": "用户领取数量达到上限"})
NO_AUTH = (403, {"code": "NO_AUTH", "message": "无权限"})
_seq = count(1)


def dropped() -> requests.ConnectionError:
    """What requests raises when the connection closes after the request was written (WeChat may have it)."""
    return requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer")))


def refused() -> requests.ConnectionError:
    """What requests raises when no connection could be made at all (nothing reached WeChat)."""
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    return requests.ConnectionError(MaxRetryError(None, "/v3/marketing/favor", reason))


class Host:
    """One WeChat host: issues a coupon per out_request_no (shared by both hosts: one WeChat), or answers its
    scripted error; ``then_drop``: the coupon is issued, then the connection drops before the answer."""

    def __init__(self, wechat: WeChat, base: str):
        self.wechat, self.base, self.answer, self.then_drop, self.error = wechat, base, None, False, None

    def __call__(self, request):
        number = json.loads(request.body)["out_request_no"]
        self.wechat.posts.append((self.base, number))
        if self.error is not None:
            return self.error
        if self.answer is None or self.then_drop:
            coupon = self.wechat.issued.setdefault(number, f"C{len(self.wechat.issued) + 1:08d}")
            if self.then_drop:
                return dropped()
            status, data = 200, {"coupon_id": coupon}
        else:
            status, data = self.answer
        raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        return status, {**simulator(self.wechat.app).keys.sign_headers(raw), "Content-Type": "application/json"}, raw


class WeChat:
    def __init__(self, app, mock: responses.RequestsMock):
        self.app, self.posts, self.issued = app, [], {}
        self.main, self.backup = Host(self, MAIN), Host(self, BACKUP)
        mock.add_callback(responses.POST, re.compile(re.escape(MAIN) + PATH), callback=self.main)
        mock.add_callback(responses.POST, re.compile(re.escape(BACKUP) + PATH), callback=self.backup)

    def of(self, payout: Payout) -> list[str]:
        """The hosts asked about this payout's number, in order."""
        return [base for base, number in self.posts if number == payout.external_no]

    def numbers(self) -> set[str]:
        return {number for _, number in self.posts}


@pytest.fixture
def wechat(app):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield WeChat(app, mock)


@pytest.fixture
def rail(app, wechat):
    """The coupon rail on a pay client with a backup host, on the session every WeChat client shares."""
    config = dataclasses.replace(app.extensions["wechat"].pay.config, api_base=MAIN, backup_base=BACKUP)
    client = PayClient(config, session=WeChatSession())
    return CouponRail(client, appid=app.config["WECHAT_APPID"], stock_creator_mchid=MCHID, stocks=STOCKS)


@pytest.fixture
def coupon(app, make_user):
    def make(amount_fen: int = 500, fallback: str | None = None) -> Payout:
        user = make_user(appid=app.config["WECHAT_APPID"])
        return queue_from_balance(user, amount_fen, "wechat_coupon", "p22", number_prefix="", fallback=fallback)

    return make


def run(rail, at=None, settings=None):
    outcomes = dispatch_due(
        {rail.name: rail},
        settings=settings or DispatchSettings(money=MoneySettings()),
        clock=lambda: at or utcnow(),
    )
    db.session.expire_all()
    return outcomes


def later(minutes: int = 10):
    return utcnow() + timedelta(minutes=minutes)


def fresh(payout: Payout) -> Payout:
    return db.session.get(Payout, payout.id)


def cash_of(payout: Payout) -> int:
    return balance(account(AccountKind.USER_CASH, "user", payout.user_id))


def stop(payout: Payout, why: str = "a refund took the rebate back") -> None:
    """What a whole clawback does to a payout of the rebate still with the dispatcher (rebate.clawbacks)."""
    payout = fresh(payout)
    payout.cancel_requested = True
    payout.last_error = f"cancellation requested: {why}"
    db.session.commit()


def retried_on_the_backup(wechat, rail, payout, main_error, backup_answer) -> Payout:
    """The payout's first send: the main host fails with ``main_error`` (None: it issues the coupon and the
    connection drops), the backup answers ``backup_answer``."""
    if main_error is None:
        wechat.main.then_drop = True
    else:
        wechat.main.error = main_error
    wechat.backup.answer = backup_answer
    run(rail)
    wechat.main.then_drop, wechat.main.error, wechat.backup.answer = False, None, None
    assert wechat.of(payout) == [MAIN, BACKUP]
    return fresh(payout)


# -- 1. a dropped connection on the main host, a 429 from the backup -------------------------------------------


def test_a_coupon_issued_before_the_connection_dropped_and_rate_limited_on_the_backup_may_have_been_sent(
    wechat, rail, coupon
):
    # given: the main host issued the coupon, then its connection dropped; the backup answered 429
    payout = coupon()
    after = retried_on_the_backup(wechat, rail, payout, None, RATE_LIMITED)
    # then: the payout may have been sent: in transit, settled only by its number from now on
    assert after.sent_at is not None and after.status == PayoutStatus.UNKNOWN
    assert "may have" in after.last_error
    # when: a whole clawback stops it, and the next pass runs
    stop(payout)
    before = cash_of(payout)
    run(rail, at=later())
    # then: not cancelled as "never sent": the same number is sent again and answers the coupon already issued
    done = fresh(payout)
    assert wechat.of(payout) == [MAIN, BACKUP, MAIN]
    assert wechat.numbers() == {payout.external_no} and len(wechat.issued) == 1
    assert (done.status, done.wechat_ref) == ("succeeded", wechat.issued[payout.external_no])
    assert cash_of(payout) == before  # the person has the coupon: nothing comes back to the balance
    assert check_ledger().ok


def test_a_read_timeout_on_the_main_host_is_unknown_and_never_cancelled_by_a_stop(wechat, rail, coupon):
    # given: the main host issued the coupon, and its answer timed out (no failover: WeChat may be working on it)
    payout = coupon()

    wechat.main.error = requests.exceptions.ReadTimeout("read timed out")
    wechat.issued[payout.external_no] = "C-SLOW"
    run(rail)
    wechat.main.error = None
    assert wechat.of(payout) == [MAIN]
    assert fresh(payout).sent_at is not None and fresh(payout).status == "unknown"
    stop(payout)
    run(rail, at=later())
    done = fresh(payout)
    assert (done.status, done.wechat_ref) == ("succeeded", "C-SLOW") and len(wechat.issued) == 1
    assert check_ledger().ok


@pytest.mark.parametrize("never_connected", [refused, lambda: requests.exceptions.ConnectTimeout("connect timeout")])
def test_a_main_host_never_reached_then_a_429_is_still_never_sent_and_a_stop_cancels_it(
    wechat, rail, coupon, never_connected
):
    # given: no connection to the main host could be made (nothing reached WeChat); the backup answered 429
    payout = coupon()
    after = retried_on_the_backup(wechat, rail, payout, never_connected(), RATE_LIMITED)
    assert (after.status, after.sent_at) == ("pending", None)
    # when: stopped
    stop(payout)
    before = cash_of(payout)
    run(rail, at=later())
    # then: cancelled as never sent, without a resend that would issue it now
    done = fresh(payout)
    assert wechat.of(payout) == [MAIN, BACKUP] and wechat.issued == {}
    assert done.status == "cancelled" and cash_of(payout) == before + 500
    assert check_ledger().ok


# -- 2. the backup's refusals after a dropped connection are a resend's ------------------------------------------


def test_a_rule_limit_from_the_backup_after_a_drop_asks_an_operator_never_the_fallback(wechat, rail, coupon):
    # given: a payout whose rule falls back to the balance; the main host issued it (the user's cap now reached),
    # the connection dropped, and the backup answered RULE_LIMIT
    payout = coupon(fallback="balance")
    before = cash_of(payout)
    after = retried_on_the_backup(wechat, rail, payout, None, RULE_LIMIT)
    # then: an operator looks (the coupon may exist); nothing is paid on the fallback rail
    assert after.status == "needs_operator" and after.sent_at is not None
    assert db.session.execute(select(Payout).where(Payout.retry_of_id == payout.id)).first() is None
    assert cash_of(payout) == before
    # and: an operator's cancel is refused (the coupon may exist), nothing changed
    with pytest.raises(PayoutError) as refused_cancel:
        cancel(lock_payout(payout.id), utcnow(), "customer asked")
    db.session.rollback()
    assert "may have been issued" in str(refused_cancel.value)
    assert fresh(payout).status == "needs_operator"
    assert check_ledger().ok


def test_a_spent_stock_answered_by_the_backup_after_a_drop_waits_never_falls_back(wechat, rail, coupon):
    payout = coupon(fallback="balance")
    before = cash_of(payout)
    after = retried_on_the_backup(wechat, rail, payout, None, NOT_ENOUGH)
    assert after.status == "pending" and after.sent_at is not None
    assert after.next_attempt_at > utcnow() + timedelta(hours=23)
    assert db.session.execute(select(Payout).where(Payout.retry_of_id == payout.id)).first() is None
    assert cash_of(payout) == before
    assert check_ledger().ok


def test_another_refusal_from_the_backup_after_a_drop_leaves_the_payout_in_transit(wechat, rail, coupon):
    payout = coupon()
    after = retried_on_the_backup(wechat, rail, payout, None, NO_AUTH)
    assert after.status == "needs_operator" and after.sent_at is not None
    with pytest.raises(PayoutError):
        cancel(lock_payout(payout.id), utcnow(), "customer asked")
    db.session.rollback()
    assert fresh(payout).status == "needs_operator"


# -- 3. an operator cancels a coupon whose sends issued nothing ------------------------------------------------


def rate_limited_once(wechat, rail, payout) -> Payout:
    wechat.main.answer = RATE_LIMITED
    run(rail)
    wechat.main.answer = None
    rested = fresh(payout)
    assert (rested.status, rested.sent_at, rested.request is not None) == ("pending", None, True)
    assert wechat.of(payout) == [MAIN]
    return rested


def test_an_operator_cancels_a_coupon_whose_first_send_was_rate_limited(wechat, rail, coupon):
    payout = coupon()
    rate_limited_once(wechat, rail, payout)
    before = cash_of(payout)
    # when
    cancel(lock_payout(payout.id), utcnow(), "customer asked")
    db.session.commit()
    # then: cancelled now, its money back where it came from
    done = fresh(payout)
    assert done.status == "cancelled" and "customer asked" in done.last_error
    assert cash_of(payout) == before + 500
    # and: no later pass issues it
    run(rail, at=later(60))
    assert wechat.of(payout) == [MAIN] and wechat.issued == {}
    assert check_ledger().ok


def test_an_operator_cancels_a_rate_limited_coupon_through_the_admin_api(client, make_operator, wechat, rail, coupon):
    payout = coupon()
    rate_limited_once(wechat, rail, payout)
    before = cash_of(payout)
    _, finance = make_operator("finance")
    answer = client.post(f"/admin/api/payouts/{payout.id}/cancel", headers=finance, json={"reason": "customer asked"})
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "cancelled"
    db.session.expire_all()
    assert fresh(payout).status == "cancelled" and cash_of(payout) == before + 500
    run(rail, at=later(60))
    assert wechat.of(payout) == [MAIN] and wechat.issued == {}
    assert check_ledger().ok


def test_an_operator_cancels_a_coupon_sent_to_an_operator_after_its_429s(wechat, rail, coupon):
    # given: every send answered 429 until its attempts were used: with an operator, never issued
    payout = coupon()
    wechat.main.answer = RATE_LIMITED
    run(rail, settings=DispatchSettings(money=MoneySettings(), max_attempts=1))
    wechat.main.answer = None
    assert (fresh(payout).status, fresh(payout).sent_at) == ("needs_operator", None)
    before = cash_of(payout)
    cancel(lock_payout(payout.id), utcnow(), "customer asked")
    db.session.commit()
    assert fresh(payout).status == "cancelled" and cash_of(payout) == before + 500
    assert check_ledger().ok


def test_an_operator_cannot_cancel_a_coupon_that_may_have_been_issued(client, make_operator, wechat, rail, coupon):
    # given: dropped on the main host, 429 on the backup: the coupon may exist
    payout = coupon()
    retried_on_the_backup(wechat, rail, payout, None, RATE_LIMITED)
    _, finance = make_operator("finance")
    before = cash_of(payout)
    answer = client.post(f"/admin/api/payouts/{payout.id}/cancel", headers=finance, json={"reason": "customer asked"})
    # then: refused with the reason; nothing changed
    assert answer.status_code == 409, answer.json
    assert "may have been issued" in json.dumps(answer.json)
    db.session.expire_all()
    assert fresh(payout).status == "unknown" and cash_of(payout) == before


# -- 4. the watch of a call's attempts -------------------------------------------------------------------------


def test_which_network_errors_may_have_reached_wechat():
    assert may_have_arrived(dropped())
    assert may_have_arrived(requests.exceptions.ReadTimeout("slow"))
    assert may_have_arrived(requests.ConnectionError("something"))
    assert not may_have_arrived(refused())
    assert not may_have_arrived(requests.exceptions.ConnectTimeout("connect"))
    assert not may_have_arrived(requests.exceptions.InvalidURL("bad"))


def test_a_watch_sees_only_its_own_threads_calls():
    import threading

    session = WeChatSession()
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, "http://wx.test/x", body=dropped())
        with watch_calls() as watch:
            seen = []

            def elsewhere():
                try:
                    session.post("http://wx.test/x")
                except requests.ConnectionError:
                    seen.append(True)

            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join()
            assert seen and not watch.reached("POST", "/x")
            with pytest.raises(requests.ConnectionError):
                session.post("http://wx.test/x")
            assert watch.reached("POST", "/x") and not watch.reached("GET", "/x")


def test_the_apps_pay_client_is_on_the_watched_session(app):
    # the coupon rail's pay client is the app's (jobs.payouts): its calls are seen by ``watch_calls``
    assert isinstance(app.extensions["wechat"].pay.session, WeChatSession)


@responses.activate
def test_a_nested_watch_leaves_the_outer_one_watching_and_none_behind():
    from wechat.http import WeChatSession, _watching, watch_calls

    url = "https://api.mch.weixin.qq.com/v3/marketing/favor/users/o/coupons"
    responses.add(responses.POST, url, body=requests.exceptions.ReadTimeout("late"))
    session = WeChatSession(None)
    with watch_calls() as outer:
        with watch_calls():  # a helper watching its own call, nothing failed in it
            pass
        with pytest.raises(requests.RequestException):
            session.post(url)
    assert outer.reached("POST", "/v3/marketing/favor/users/") == "ReadTimeout"
    assert getattr(_watching, "watches", []) == []
