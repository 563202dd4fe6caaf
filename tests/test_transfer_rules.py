"""WeChat's real rules for transfer bills (issue 9 §3), end to end on the app's simulator.

package_info comes only in the create answer, so a lost create answer is repaired
by POSTing the same bill again; a bill closed unconfirmed returns to the balance;
below 10 fen nothing is sent; a 400 refusal is definite; an operator's cancel that
met a failed query is retried soon; every query answer must be about our payout.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from config import ConfigError, load_config
from jobs.payouts import dispatch_due, payout_rails
from ledger import account, balance
from models import AccountKind, Alert, Payout, User, db, unit_of_work, utcnow
from payouts import enqueue_payout, faults
from payouts.dispatch import claim
from payouts.operations import cancel
from payouts.rails import Outcome
from payouts.record import DispatchSettings
from tests.money_helpers import queue_from_balance
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import simulator
from wechat.errors import WeChatInvalidRequest, WeChatUnavailable

BILLS = "/v3/fund-app/mch-transfer/transfer-bills"


@pytest.fixture
def queued(app, make_user, delivered):
    """A transfer of ``amount_fen`` from a mini-program user's cash balance (WeChat's notifications reach us)."""

    def make(amount_fen: int = 5_00, real_name: str | None = None) -> Payout:
        user = make_user(appid=app.config["WECHAT_APPID"])
        user.real_name = real_name
        return queue_from_balance(user, amount_fen)

    return make


def run(app, at=None):
    """One dispatcher pass at ``at`` (UTC now by default), with the app's settings."""
    moment = at or utcnow()
    settings = DispatchSettings.from_config(app.config)
    return dispatch_due(payout_rails(app), settings=settings, clock=lambda: moment)


def fresh(payout_id: int) -> Payout:
    db.session.expire_all()
    return db.session.get(Payout, payout_id)


def cash_of(payout: Payout) -> int:
    return balance(account(AccountKind.USER_CASH, "user", payout.user_id))


def alerts(kind: str) -> int:
    return db.session.query(Alert).filter_by(kind=kind).count()


# -- a lost create answer: the same bill is POSTed again for its package_info ------------


@pytest.mark.parametrize(
    ("status", "code"),
    [(0, "DROPPED"), (0, "LATE_ANSWER"), (500, "SYSTEM_ERROR"), (429, "FREQUENCY_LIMITED")],
    ids=["dropped-connection", "late-answer", "500", "429"],
)
def test_a_lost_create_answer_ends_with_one_bill_its_package_info_and_one_payment(
    app, client, queued, delivered, status, code
):
    # given: WeChat creates the bill, but its answer is lost (or replaced by an error)
    payout = queued(5_00)
    sim = simulator(app)
    sim.inject_fault(BILLS, status, code, after=True)
    now = utcnow()
    # when: the dispatcher runs, then runs again when the payout is next due
    run(app, now)
    first = fresh(payout.id)
    assert first.status in ("unknown", "pending") and first.package_info is None
    assert list(sim.transfers) == [payout.external_no]  # WeChat holds the bill we never heard about
    run(app, first.next_attempt_at)
    # then: the same bill, re-POSTed, gave its package_info; the user can confirm it
    waiting = fresh(payout.id)
    bill = sim.transfers[payout.external_no]
    assert (waiting.status, waiting.package_info) == ("waiting_user_confirm", bill["package_info"])
    assert list(sim.transfers) == [payout.external_no]
    client.post(f"/_sim/pay/transfer/confirm/{waiting.package_info}", headers={"Accept": "application/json"})
    db.session.rollback()  # on SQLite every transaction holds the write lock: let the notification in
    delivered()
    assert fresh(payout.id).status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00  # paid exactly once
    assert not run(app, utcnow() + timedelta(days=2))


def test_a_waiting_transfer_never_stays_without_package_info(app, queued, monkeypatch):
    # given: the create answer was lost; a query then says WAIT_USER_CONFIRM (a query never has package_info)
    payout = queued(5_00)
    simulator(app).inject_fault(BILLS, 500, "SYSTEM_ERROR", after=True)
    run(app)
    # when: the re-POST's answer is lost too
    pay = app.extensions["wechat"].pay

    def lost(body, serial=None):
        raise WeChatUnavailable("timeout", code="NETWORK_ERROR")

    monkeypatch.setattr(pay, "post_transfer_bill", lost)
    run(app, fresh(payout.id).next_attempt_at)
    # then: it is not "waiting" (the user could never confirm); it stays unknown and is POSTed again soon
    pending = fresh(payout.id)
    assert pending.status == "unknown" and pending.package_info is None
    assert db.session.scalar(select(Payout).where(Payout.status == "waiting_user_confirm")) is None
    monkeypatch.undo()
    run(app, pending.next_attempt_at)
    assert fresh(payout.id).status == "waiting_user_confirm" and fresh(payout.id).package_info


def test_the_re_post_sends_the_same_bytes_even_with_an_encrypted_name(app, queued, monkeypatch):
    # given: a 2,000-yuan transfer, whose RSA-encrypted user_name differs on every encryption
    payout = queued(200_000, real_name="张三")
    pay = app.extensions["wechat"].pay
    posted: list[str] = []
    real_post = pay.post_transfer_bill
    monkeypatch.setattr(
        pay, "post_transfer_bill", lambda body, serial=None: posted.append(body) or real_post(body, serial)
    )
    simulator(app).inject_fault(BILLS, 0, "DROPPED", after=True)
    # when: the answer is lost and the dispatcher runs again
    run(app)
    run(app, fresh(payout.id).next_attempt_at)
    # then: both POSTs carried the very same body, kept with the payout
    assert len(posted) == 2 and posted[0] == posted[1] == fresh(payout.id).request["wire"]["body"]
    assert fresh(payout.id).status == "waiting_user_confirm"


# -- the confirmation window -----------------------------------------------------------


@pytest.mark.parametrize("hours", [25, 72, 0])
def test_a_confirmation_window_past_24_hours_is_refused_at_start(hours):
    with pytest.raises(ConfigError, match="TRANSFER_CONFIRM_HOURS"):
        load_config({"TRANSFER_CONFIRM_HOURS": hours, "WECHAT_MODE": "simulator"}, environ={})


def test_the_default_window_is_wechats_24_hours():
    assert load_config({"WECHAT_MODE": "simulator"}, environ={})["TRANSFER_CONFIRM_HOURS"] == 24


def test_a_bill_wechat_closed_unconfirmed_returns_to_the_balance_with_the_reason_and_no_new_bill(
    app, client, queued, user_headers, delivered
):
    # given: a bill offered to the user, who never confirms; WeChat closes it after 24 h
    payout = queued(5_00)
    run(app)
    assert cash_of(payout) == 0
    simulator(app).fail_transfer(payout.external_no, "超时未确认")
    # when: WeChat's notification arrives (or the dispatcher's next query finds it)
    db.session.rollback()  # on SQLite every transaction holds the write lock: let the notification in
    delivered()
    run(app, utcnow() + timedelta(hours=7))
    # then: the money is back in the balance, with the reason in the trace and the user's history
    closed = fresh(payout.id)
    assert closed.status == "failed" and "back in your balance" in closed.last_error
    assert cash_of(payout) == 5_00
    assert db.session.scalar(select(Payout).where(Payout.retry_of_id == payout.id)) is None
    [mine] = client.get("/api/v1/me/payouts", headers=user_headers(db.session.get(User, payout.user_id))).json["items"]
    assert mine["status"] == "failed" and "back in your balance" in mine["reason"]


def test_a_manual_transfer_left_unconfirmed_lands_in_the_users_balance(app, make_user, delivered):
    # given: a goodwill transfer from the platform fund, offered to the user
    user = make_user(appid=app.config["WECHAT_APPID"])
    fund = account(AccountKind.PLATFORM_MARKETING_FUND)
    payout = enqueue_payout(
        number_prefix="", rail="wechat_change", user_id=user.id, amount_fen=3_00, source=fund, key="m", memo="m"
    )
    db.session.commit()
    run(app)
    # when: the window passes and we cancel it at WeChat
    run(app, utcnow() + timedelta(hours=25))
    db.session.rollback()  # on SQLite every transaction holds the write lock: let the notification in
    delivered()
    run(app, utcnow() + timedelta(hours=26))
    # then: the user never took it, so it is theirs in the balance
    assert fresh(payout.id).status == "cancelled"
    assert simulator(app).transfers[payout.external_no]["state"] == "CANCELLED"
    assert cash_of(payout) == 3_00


# -- below 10 fen, and a definite refusal ----------------------------------------------


def test_below_10_fen_nothing_is_sent_and_the_money_stays_in_the_balance(app, queued):
    payout = queued(9)
    run(app)
    assert fresh(payout.id).status == "cancelled" and "BELOW_WECHAT_MINIMUM" in fresh(payout.id).last_error
    assert simulator(app).transfers == {}
    assert cash_of(payout) == 9


def test_the_client_refuses_below_10_fen_before_any_call(app):
    pay = app.extensions["wechat"].pay
    with pytest.raises(WeChatInvalidRequest, match="10 fen"):
        pay.transfer_bill_body("TB1", "o", 9, "返现", [], "https://x.test/n")


@pytest.mark.parametrize("name", ["PAYOUT_MIN_FEN", "WITHDRAWAL_MIN_FEN"])
def test_minimums_below_wechats_are_refused_at_start(name):
    with pytest.raises(ConfigError, match=name):
        load_config({name: 9, "WECHAT_MODE": "simulator"}, environ={})


@pytest.mark.parametrize("code", ["INVALID_REQUEST", "PARAM_ERROR"])
def test_a_400_refusal_is_a_definite_failure_back_to_the_balance_without_a_retry(app, queued, code):
    payout = queued(5_00)
    simulator(app).inject_fault(BILLS, 400, code, "转账金额不得低于0.1元")
    run(app)
    failed = fresh(payout.id)
    assert failed.status == "failed" and code in failed.last_error
    assert cash_of(payout) == 5_00
    assert db.session.scalar(select(Payout).where(Payout.retry_of_id == payout.id)) is None
    assert alerts("payout_refused") == 1


# -- an operator's cancel --------------------------------------------------------------


def test_an_operators_cancel_that_met_a_failed_query_is_retried_soon(app, queued, delivered):
    # given: a bill waiting for the user; an operator cancels it
    payout = queued(5_00)
    run(app)
    now = utcnow()
    cancel(fresh(payout.id), now, "wrong person")
    db.session.commit()
    # when: the query fails
    simulator(app).inject_fault(BILLS, 500, "SYSTEM_ERROR")
    run(app, now)
    unknown = fresh(payout.id)
    # then: the next try is soon (backoff), not the 6-hour recheck, and it cancels at WeChat
    assert unknown.next_attempt_at - now < timedelta(hours=1)
    run(app, unknown.next_attempt_at)
    assert simulator(app).transfers[payout.external_no]["state"] == "CANCELLED"
    db.session.rollback()  # on SQLite every transaction holds the write lock: let the notification in
    delivered()
    run(app, fresh(payout.id).next_attempt_at)
    assert fresh(payout.id).status == "cancelled" and cash_of(payout) == 5_00


# -- lease and recheck are settings ----------------------------------------------------


def test_lease_and_recheck_come_from_the_settings(app, queued):
    app.config.update(PAYOUT_LEASE_SECONDS=7, PAYOUT_CONFIRM_RECHECK_SECONDS=60)
    settings = DispatchSettings.from_config(app.config)
    assert (settings.lease, settings.confirm_recheck) == (timedelta(seconds=7), timedelta(seconds=60))
    payout = queued(5_00)
    now = utcnow()
    with unit_of_work():  # the job commits its claim
        [job] = claim(payout_rails(app), now, settings)
    assert fresh(job.payout_id).lease_until == now + timedelta(seconds=7)
    # the worker "died": after 7 s another pass resolves it by a query, then rechecks a minute later
    run(app, now + timedelta(seconds=8))
    waiting = fresh(payout.id)
    assert waiting.status == "waiting_user_confirm"
    assert waiting.next_attempt_at - (now + timedelta(seconds=8)) == timedelta(seconds=60)


# -- every answer is about our payout --------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("transfer_amount", 1), ("openid", "someone-else"), ("out_bill_no", "TB999")]
)
def test_a_query_answer_about_another_payout_never_marks_it_paid(app, queued, field, value):
    # given: a bill the simulator reports as paid, but with a planted different amount / openid / number
    payout = queued(5_00)
    run(app)
    sim = simulator(app)
    sim.transfers[payout.external_no]["state"] = "SUCCESS"  # no notification: only the query tells
    original = sim.transfer_view
    sim.transfer_view = lambda bill: {**original(bill), field: value}
    # when
    run(app, utcnow() + timedelta(hours=7))
    # then: an operator looks; nothing is marked paid
    stuck = fresh(payout.id)
    assert stuck.status == "needs_operator" and "ANSWER_MISMATCH" in stuck.last_error
    assert alerts("payout_answer_mismatch") == 1
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 0


def test_numbers_carry_the_environment_prefix(app, queued):
    app.config["WECHAT_NUMBER_PREFIX"] = "STG1"
    payout = queued(5_00)
    assert payout.external_no == f"STG1TB{payout.id:012d}"
    run(app)
    assert list(simulator(app).transfers) == [payout.external_no]
    assert fresh(payout.id).status == "waiting_user_confirm"


@pytest.mark.parametrize("prefix", ["stg-1", "TOOLONGPREFIX", "环境"])
def test_a_bad_prefix_is_refused_at_start(prefix):
    with pytest.raises(ConfigError, match="WECHAT_NUMBER_PREFIX"):
        load_config({"WECHAT_NUMBER_PREFIX": prefix, "WECHAT_MODE": "simulator"}, environ={})


def test_outcome_names_fit_the_attempt_log():
    assert all(len(o.value) <= 32 for o in Outcome)


# -- the body is fixed at claim time: a crash never turns an existing bill into a failure ---


def in_transit() -> int:
    return balance(account(AccountKind.PAYOUT_IN_TRANSIT))


def test_the_body_is_built_and_committed_at_claim_before_any_call(app, queued):
    # given: a 2,000-yuan transfer with a real name (its RSA-encrypted user_name differs on every encryption)
    payout = queued(200_000, real_name="张三")
    # when: a dispatcher only claims it
    with unit_of_work():  # the job commits its claim
        claim(payout_rails(app), utcnow(), DispatchSettings.from_config(app.config))
    # then: the exact bytes every POST of this number will send are committed with the payout, before any call
    db.session.rollback()
    wire = fresh(payout.id).request["wire"]
    assert json.loads(wire["body"])["out_bill_no"] == payout.external_no
    assert json.loads(wire["body"])["user_name"] and "张三" not in wire["body"]
    assert simulator(app).transfers == {}


@pytest.mark.parametrize("point", ["after_wechat_answer", "after_claim_commit"])
def test_a_crash_around_the_post_of_a_named_2000_yuan_transfer_ends_with_one_bill_and_its_package_info(
    app, client, queued, delivered, point
):
    # given: a 2,000-yuan transfer with a real name; the jobs process dies (kill -9) at ``point``,
    # i.e. after WeChat created the bill and answered, before we recorded anything (or before the POST)
    payout = queued(200_000, real_name="张三")
    sim = simulator(app)
    now = utcnow()
    faults.arm(point)
    with pytest.raises(faults.SimulatedCrash):
        run(app, now)
    db.session.rollback()
    assert fresh(payout.id).status == "sending" and fresh(payout.id).sent_at is None
    # when: another pass runs once the lease has expired
    run(app, now + DispatchSettings.from_config(app.config).lease + timedelta(seconds=1))
    # then: exactly one bill, the same one, with what the user confirms with; never failed, money in transit
    waiting = fresh(payout.id)
    assert list(sim.transfers) == [payout.external_no]
    assert (waiting.status, waiting.package_info) == (
        "waiting_user_confirm",
        sim.transfers[payout.external_no]["package_info"],
    )
    assert cash_of(payout) == 0 and in_transit() == 200_000
    assert sim.transfers[payout.external_no]["user_name"] == "张三"
    # and the user confirms: paid exactly once, nothing back in the balance
    client.post(f"/_sim/pay/transfer/confirm/{waiting.package_info}", headers={"Accept": "application/json"})
    db.session.rollback()  # on SQLite every transaction holds the write lock: let the notification in
    delivered()
    assert fresh(payout.id).status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 200_000 and cash_of(payout) == 0
    assert not run(app, utcnow() + timedelta(days=2))


def test_a_refused_re_post_of_a_bill_that_exists_asks_an_operator_and_keeps_the_money_in_transit(app, queued):
    # given: the worker died after WeChat created the bill (nothing recorded), and WeChat now refuses the
    # re-POST (a body that is not the first one: a row fixed before bodies were kept, say)
    payout = queued(5_00)
    sim = simulator(app)
    now = utcnow()
    faults.arm("after_wechat_answer")
    with pytest.raises(faults.SimulatedCrash):
        run(app, now)
    db.session.rollback()
    sim.transfers[payout.external_no]["fingerprint"] = "a different body"
    # when: the next pass queries (WAIT_USER_CONFIRM, no package_info) and POSTs again: 400 INVALID_REQUEST
    run(app, now + timedelta(minutes=6))
    # then: not failed, no money back (the bill can still be confirmed): an operator decides
    stuck = fresh(payout.id)
    assert stuck.status == "needs_operator" and "INVALID_REQUEST" in stuck.last_error
    assert cash_of(payout) == 0 and in_transit() == 5_00
    assert alerts("payout_needs_operator") == 1 and alerts("payout_refused") == 0
    assert list(sim.transfers) == [payout.external_no]


def test_a_query_refused_with_400_after_a_crash_asks_an_operator_never_fails(app, queued):
    # given: the bill exists at WeChat, nothing recorded (sent_at is still empty)
    payout = queued(5_00)
    now = utcnow()
    faults.arm("after_wechat_answer")
    with pytest.raises(faults.SimulatedCrash):
        run(app, now)
    db.session.rollback()
    # when: the recovering query is answered 400 INVALID_REQUEST
    simulator(app).inject_fault(BILLS, 400, "INVALID_REQUEST", "bad request")
    run(app, now + timedelta(minutes=6))
    # then: a 400 on a query says nothing about the bill: an operator, the money stays in transit
    stuck = fresh(payout.id)
    assert stuck.status == "needs_operator" and stuck.sent_at is not None
    assert cash_of(payout) == 0 and in_transit() == 5_00
    assert alerts("payout_refused") == 0


def test_a_refused_post_of_a_number_posted_before_asks_an_operator(app, queued):
    # given: WeChat created the bill but answered 429; the payout waits to be POSTed again (pending)
    payout = queued(5_00)
    sim = simulator(app)
    sim.inject_fault(BILLS, 429, "FREQUENCY_LIMITED", after=True)
    run(app)
    pending = fresh(payout.id)
    assert pending.status == "pending" and pending.sent_at is None
    sim.transfers[payout.external_no]["fingerprint"] = "a different body"
    # when: the POST again is refused with 400
    run(app, pending.next_attempt_at)
    # then: the bill may exist (it does): never failed, never back in the balance
    stuck = fresh(payout.id)
    assert stuck.status == "needs_operator" and cash_of(payout) == 0 and in_transit() == 5_00


def test_a_request_fixed_before_bodies_were_kept_gets_its_body_at_claim(app, queued):
    # given: a payout whose request was stored without a body (by an earlier version)
    payout = queued(5_00)
    rails = payout_rails(app)
    request = rails["wechat_change"].build_request(payout, utcnow())
    payout.request = {k: v for k, v in request.items() if k != "wire"}
    db.session.commit()
    # when
    with unit_of_work():  # the job commits its claim
        claim(rails, utcnow(), DispatchSettings.from_config(app.config))
    # then: the body is fixed and committed before the first POST
    db.session.rollback()
    assert json.loads(fresh(payout.id).request["wire"]["body"])["out_bill_no"] == payout.external_no


@pytest.fixture(autouse=True)
def _disarm():
    yield
    faults.disarm_all()
