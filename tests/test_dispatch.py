"""The payout dispatcher's state machine and recovery, driven by a scripted rail."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobs.payouts import dispatch_due
from ledger import account, balance
from models import AccountKind, LedgerEntry, Payout, PayoutAttempt, RailControl, db, utcnow
from payouts import MoneySettings, enqueue_payout, faults
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from payouts.transitions import PayoutStateError, move


class ScriptedRail:
    """Answers from a script; records every call. ``sent`` is what WeChat really holds."""

    name = "wechat_change"
    rate_per_second = 100

    def __init__(self, *send_answers: RailResult, query_answers: tuple[RailResult, ...] = ()):
        self.send_answers, self.query_answers = list(send_answers), list(query_answers)
        self.calls: list[tuple[str, str]] = []

    def build_request(self, payout, now):
        return {"amount_fen": payout.amount_fen, "openid": f"openid-{payout.user_id}"}

    def send(self, external_no, request):
        self.calls.append(("send", external_no))
        return self.send_answers.pop(0)

    def query(self, external_no, request):
        self.calls.append(("query", external_no))
        return self.query_answers.pop(0) if self.query_answers else RailResult(Outcome.NOT_FOUND)


def ok(ref="bill-1"):
    return RailResult(Outcome.SUCCEEDED, "SUCCESS", wechat_ref=ref)


@pytest.fixture
def funded_payout(app, make_user):
    """A 5-yuan transfer queued from a user's cash balance (as a cash rebate leaves it)."""

    def make(amount_fen=5_00, rail="wechat_change"):
        user = make_user()
        cash = account(AccountKind.USER_CASH, "user", user.id)
        from ledger import Leg, post_entry

        post_entry(
            f"fund:{user.id}",
            "rebate",
            [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen), Leg(cash, amount_fen)],
        )
        payout = enqueue_payout(
            number_prefix="",
            rail=rail,
            user_id=user.id,
            amount_fen=amount_fen,
            source=cash,
            key=f"t:{user.id}",
            memo="test payout",
        )
        db.session.commit()
        return payout, cash

    return make


def run(rail, settings=None, at=None):
    result = dispatch_due(
        {rail.name: rail},
        settings=settings or DispatchSettings(money=MoneySettings()),
        clock=(lambda: at) if at else utcnow,
    )
    db.session.expire_all()
    return result


def test_success_moves_money_out_through_transit_and_closes_the_flow(funded_payout):
    # given
    payout, cash = funded_payout()
    rail = ScriptedRail(ok())
    # when
    run(rail)
    # then
    payout = db.session.get(Payout, payout.id)
    assert (payout.status, payout.wechat_ref, payout.attempts) == ("succeeded", "bill-1", 1)
    assert rail.calls == [("send", payout.external_no)]
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 0
    assert balance(account(AccountKind.REBATE_PAYABLE)) == 0
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00
    assert balance(cash) == 0
    assert db.session.query(PayoutAttempt).filter_by(payout_id=payout.id).count() == 1


def test_timeout_then_success_pays_exactly_once_by_querying_before_any_resend(funded_payout):
    # given: WeChat accepts the bill but our call times out
    payout, _ = funded_payout()
    rail = ScriptedRail(RailResult(Outcome.UNKNOWN, "TIMEOUT"), query_answers=(ok(),))
    # when: the first pass times out; the next pass (after the backoff) runs
    run(rail)
    assert db.session.get(Payout, payout.id).status == "unknown"
    run(rail, at=utcnow() + timedelta(days=1))
    # then: the second pass only queried; one send in all, with the same number
    assert rail.calls == [("send", payout.external_no), ("query", payout.external_no)]
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00


def test_unknown_that_wechat_never_saw_is_resent_with_the_same_number(funded_payout):
    payout, _ = funded_payout()
    rail = ScriptedRail(RailResult(Outcome.UNKNOWN, "TIMEOUT"), ok(), query_answers=(RailResult(Outcome.NOT_FOUND),))
    run(rail)
    run(rail, at=utcnow() + timedelta(days=1))
    assert rail.calls == [("send", payout.external_no), ("query", payout.external_no), ("send", payout.external_no)]
    assert db.session.get(Payout, payout.id).status == "succeeded"


def test_definitive_failure_returns_the_money_and_retries_with_a_new_payout_and_number(funded_payout):
    # given
    payout, cash = funded_payout()
    rail = ScriptedRail(RailResult(Outcome.FAILED, "FAIL", "bank refused"), ok("bill-2"))
    # when
    run(rail)
    # then: the old row failed (terminal), its money went back to the balance, a new row took it again
    old = db.session.get(Payout, payout.id)
    assert old.status == "failed"
    retry = db.session.query(Payout).filter_by(retry_of_id=old.id).one()
    assert retry.external_no != old.external_no and retry.amount_fen == old.amount_fen
    assert balance(cash) == 0  # back, then queued again
    run(rail)
    assert db.session.get(Payout, retry.id).status == "succeeded"
    with pytest.raises(PayoutStateError):
        move(db.session.get(Payout, old.id), "pending")


def test_waiting_for_user_confirmation_keeps_package_info_and_money_in_transit(funded_payout):
    payout, _ = funded_payout()
    run(ScriptedRail(RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info="pkg-abc")))
    payout = db.session.get(Payout, payout.id)
    assert (payout.status, payout.package_info) == ("waiting_user_confirm", "pkg-abc")
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00


@pytest.mark.parametrize(
    "learned_nothing",
    [
        RailResult(Outcome.UNKNOWN, "SYSTEM_ERROR", "WeChat answered 500"),
        RailResult(Outcome.UNKNOWN, "UNREADABLE_ANSWER", "not an object"),
        RailResult(Outcome.RETRY, "FREQUENCY_LIMITED", "too fast"),
    ],
)
def test_a_recheck_that_learns_nothing_leaves_the_offered_bill_confirmable(funded_payout, learned_nothing):
    # given: a transfer offered to the user (its package_info known)
    payout, cash = funded_payout()
    rail = ScriptedRail(
        RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info="pkg-abc"),
        query_answers=(learned_nothing, ok()),
    )
    run(rail)
    # when: the 6-hourly recheck meets a 5xx (or a rate limit, or an answer it cannot read)
    run(rail, at=utcnow() + timedelta(hours=7))
    # then: still offered (the confirm button stays: the API gives package_info only while waiting), asked
    # again after a backoff, and not a second POST of the bill
    payout = db.session.get(Payout, payout.id)
    assert (payout.status, payout.package_info) == ("waiting_user_confirm", "pkg-abc")
    assert payout.next_attempt_at < utcnow() + timedelta(hours=7, minutes=30)
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00
    run(rail, at=utcnow() + timedelta(hours=8))
    assert [c for c, _ in rail.calls] == ["send", "query", "query"]
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert balance(cash) == 0


def test_an_offered_bill_wechat_moved_on_from_is_in_transit_not_confirmable(funded_payout):
    # given: a transfer offered to the user, which the user then confirmed (WeChat is transferring it)
    payout, _ = funded_payout()
    rail = ScriptedRail(
        RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info="pkg-abc"),
        query_answers=(RailResult(Outcome.IN_PROGRESS, "TRANSFERING"),),
    )
    run(rail)
    run(rail, at=utcnow() + timedelta(hours=7))
    # then: in transit, no confirm button offered again
    assert db.session.get(Payout, payout.id).status == "unknown"


def test_cancelled_bill_returns_money_to_the_balance_without_resending(funded_payout):
    payout, cash = funded_payout()
    rail = ScriptedRail(
        RailResult(Outcome.WAITING_USER_CONFIRM, package_info="p"),
        query_answers=(RailResult(Outcome.CANCELLED, "CANCELLED"),),
    )
    run(rail)
    run(rail, at=utcnow() + timedelta(days=1))
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert db.session.query(Payout).filter_by(retry_of_id=payout.id).count() == 0
    assert balance(cash) == 5_00  # the user withdraws it when they want


def test_unconfirmed_transfer_is_cancelled_at_wechat_after_the_confirmation_window(funded_payout):
    # given: a transfer waiting for the user's confirmation
    payout, cash = funded_payout()

    class Cancellable(ScriptedRail):
        def cancel(self, external_no):
            self.calls.append(("cancel", external_no))
            return RailResult(Outcome.CANCELLED, "CANCELLED")

    waiting = RailResult(Outcome.WAITING_USER_CONFIRM, package_info="p")
    rail = Cancellable(waiting, query_answers=(waiting, waiting))
    run(rail)
    # when: a check inside the window leaves it waiting; one after the window cancels it
    run(rail, at=utcnow() + timedelta(hours=7))
    assert db.session.get(Payout, payout.id).status == "waiting_user_confirm"
    run(rail, at=utcnow() + timedelta(hours=80))
    # then
    assert [c for c, _ in rail.calls] == ["send", "query", "query", "cancel"]
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert balance(cash) == 5_00


def test_not_enough_pauses_the_rail_and_alerts_and_keeps_the_number(funded_payout):
    payout, _ = funded_payout()
    rail = ScriptedRail(RailResult(Outcome.PAUSE_RAIL, "NOT_ENOUGH", "balance insufficient"))
    run(rail)
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "pending"
    control = db.session.get(RailControl, "wechat_change")
    assert control.paused_until > utcnow()
    from models import Alert

    assert db.session.query(Alert).filter_by(kind="rail_paused").count() == 1
    # a paused rail dispatches nothing, even when due
    payout.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    run(rail)
    assert rail.calls == [("send", payout.external_no)]


def test_switched_off_rail_stops_at_once(funded_payout):
    funded_payout()
    db.session.add(RailControl(rail="wechat_change", enabled=False, reason="incident"))
    db.session.commit()
    rail = ScriptedRail()
    run(rail)
    assert rail.calls == []


def test_config_error_goes_to_an_operator(funded_payout):
    payout, _ = funded_payout()
    run(ScriptedRail(RailResult(Outcome.CONFIG_ERROR, "NO_AUTH", "product not enabled")))
    assert db.session.get(Payout, payout.id).status == "needs_operator"


def test_needs_operator_after_max_attempts(funded_payout):
    payout, _ = funded_payout()
    rail = ScriptedRail(*[RailResult(Outcome.RETRY, "SYSTEMERROR")] * 3)
    settings = DispatchSettings(money=MoneySettings(), max_attempts=3)
    for day in range(3):
        run(rail, settings, at=utcnow() + timedelta(days=day))
    assert db.session.get(Payout, payout.id).status == "needs_operator"
    assert len(rail.calls) == 3


def test_fallback_cancels_this_rail_and_queues_the_fallback(funded_payout):
    payout, _ = funded_payout(rail="cash_red_packet")

    class NoOA(ScriptedRail):
        name = "cash_red_packet"

        def build_request(self, payout, now):
            return RailResult(Outcome.FALLBACK, "NO_OA_OPENID", "no official-account openid")

    run(NoOA())
    assert db.session.get(Payout, payout.id).status == "cancelled"
    retry = db.session.query(Payout).filter_by(retry_of_id=payout.id).one()
    assert retry.rail == "wechat_change"


def test_crash_between_claim_commit_and_the_call_recovers_to_one_payout(funded_payout):
    # given: the worker dies right after committing its claim
    payout, _ = funded_payout()
    rail = ScriptedRail(ok())
    faults.arm("after_claim_commit")
    with pytest.raises(faults.SimulatedCrash):
        run(rail)
    assert db.session.get(Payout, payout.id).status == "sending"
    # when: another dispatcher runs after the lease expired
    run(rail, at=utcnow() + timedelta(minutes=6))
    # then: it queried first (WeChat never saw it), sent once, paid once
    assert rail.calls == [("query", payout.external_no), ("send", payout.external_no)]
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00


def test_crash_after_wechat_success_before_our_commit_recovers_by_query(funded_payout):
    # given: WeChat paid, then the worker died before recording it
    payout, _ = funded_payout()
    rail = ScriptedRail(ok(), query_answers=(ok(),))
    faults.arm("after_wechat_answer")
    with pytest.raises(faults.SimulatedCrash):
        run(rail)
    # when
    run(rail, at=utcnow() + timedelta(minutes=6))
    # then: no second send
    assert rail.calls == [("send", payout.external_no), ("query", payout.external_no)]
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00


def test_crash_in_the_recorder_after_the_send_leaves_the_payout_to_a_query_not_a_resend(funded_payout):
    # given: WeChat paid; the answer was handed to the recorder, which died before its commit
    payout, _ = funded_payout()
    rail = ScriptedRail(ok(), query_answers=(ok(),))
    faults.arm("before_record_commit")
    with pytest.raises(faults.SimulatedCrash):
        run(rail)
    back = db.session.get(Payout, payout.id)
    assert back.status == "sending" and back.sent_at is None  # nothing recorded, still under its lease
    assert db.session.query(PayoutAttempt).filter_by(payout_id=payout.id).count() == 0
    # when: a pass before the lease ends, then one after it
    run(rail)
    assert rail.calls == [("send", payout.external_no)]  # leased: not taken again
    run(rail, at=utcnow() + timedelta(minutes=6))
    # then: queried, never sent twice; paid once
    assert rail.calls == [("send", payout.external_no), ("query", payout.external_no)]
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00


def test_held_payouts_wait_for_the_refund(funded_payout):
    payout, _ = funded_payout()
    payout.held = True
    db.session.commit()
    rail = ScriptedRail()
    run(rail)
    assert rail.calls == []


@pytest.fixture(autouse=True)
def _disarm():
    yield
    faults.disarm_all()


def test_two_dispatchers_at_once_never_send_one_payout_twice(app, funded_payout):
    import threading

    from tests.conftest import release_test_session

    # PostgreSQL: row locks with SKIP LOCKED; SQLite: BEGIN IMMEDIATE serialises the claims
    payouts = [funded_payout(amount_fen=1_00 + i)[0].external_no for i in range(20)]

    class Paying(ScriptedRail):
        lock = threading.Lock()

        def send(self, external_no, request):
            with self.lock:
                self.calls.append(("send", external_no))
            return ok(external_no)

    rail = Paying()
    barrier = threading.Barrier(2)

    def worker():
        with app.app_context():
            barrier.wait()
            for _ in range(3):
                dispatch_due({rail.name: rail}, settings=DispatchSettings(money=MoneySettings(), batch=5))
            db.session.remove()

    release_test_session()
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = [no for _, no in rail.calls]
    assert sorted(sent) == sorted(payouts)  # every payout once, none twice
    assert db.session.query(Payout).filter_by(status="succeeded").count() == 20


def test_a_recorder_group_records_every_answer_and_a_bad_one_fails_alone(app, funded_payout):
    # given: three claimed transfers answered by WeChat, one answer about a payout that does not exist
    from concurrent.futures import Future

    from jobs.payouts import _Recorder
    from payouts.dispatch import Claimed, claim

    payouts = [funded_payout()[0] for _ in range(3)]
    rail, settings, now = ScriptedRail(), DispatchSettings(money=MoneySettings()), utcnow()
    jobs = claim({rail.name: rail}, now, settings)
    db.session.commit()
    waiting = RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM", package_info="pkg", wechat_ref="b")
    ghost = Claimed(10**9, rail.name, "nowhere", {}, False)
    group = [(job, [("send", waiting, 5)], now, Future()) for job in [*jobs, ghost]]
    # when: one recorder records them as one group
    _Recorder(app, settings, threads=0)._record(group)
    # then: the three are recorded (money in transit, waiting), the ghost's error goes to its caller only
    db.session.expire_all()
    assert [group[i][3].result() for i in range(3)] == [None, None, None]
    assert group[3][3].exception() is not None
    for payout in payouts:
        payout = db.session.get(Payout, payout.id)
        assert payout.status == "waiting_user_confirm" and payout.sent_at is not None
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == sum(p.amount_fen for p in payouts)


# -- a payout that cannot be built or recorded never holds the others up, nor loops forever ----------------


class PoisonRail(ScriptedRail):
    """Builds every request but ``bad``'s: that one raises (in Python, or in SQL that breaks the transaction)."""

    def __init__(self, bad_id, *answers, how="python"):
        super().__init__(*answers)
        self.bad_id, self.how = bad_id, how

    def build_request(self, payout, now):
        if payout.id == self.bad_id:
            if self.how == "sql":
                from sqlalchemy import text

                db.session.execute(text("SELECT no_such_column FROM payouts"))
            raise ValueError("cannot build this one")
        return super().build_request(payout, now)


@pytest.mark.parametrize("how", ["python", "sql"])
def test_a_payout_whose_request_cannot_be_built_is_set_aside_and_the_others_go_out(funded_payout, how):
    # given: the head of the queue cannot be built, the one behind it can
    from models import Alert

    (bad, _), (good, _) = funded_payout(), funded_payout()
    settings = DispatchSettings(money=MoneySettings(), max_attempts=3)
    rail = PoisonRail(bad.id, ok(), how=how)
    # when: the dispatcher runs
    run(rail, settings)
    # then: the good one went out; the bad one is back in the queue later, its error noted, an operator told once
    assert rail.calls == [("send", good.external_no)]
    assert db.session.get(Payout, good.id).status == "succeeded"
    bad = db.session.get(Payout, bad.id)
    assert (bad.status, bad.attempts, bad.request, bad.sent_at) == ("pending", 1, None, None)
    assert bad.last_error.startswith("BUILD_FAILED") and bad.next_attempt_at > utcnow()
    assert db.session.query(Alert).filter_by(kind="payout_request_not_built", subject=bad.external_no).count() == 1
    # and: once its attempts are used it is an operator's (never called at WeChat), its money untouched
    later = utcnow()
    for _ in range(3):
        later += timedelta(hours=7)
        run(rail, settings, at=later)
    bad = db.session.get(Payout, bad.id)
    assert (bad.status, bad.attempts, bad.sent_at) == ("needs_operator", 3, None)
    assert rail.calls == [("send", good.external_no)]
    assert db.session.query(Alert).filter_by(kind="payout_request_not_built", subject=bad.external_no).count() == 1
    assert db.session.query(Alert).filter_by(kind="payout_needs_operator", subject=bad.external_no).count() == 1


def test_an_answer_that_can_never_be_recorded_ends_with_an_operator_after_its_attempts(funded_payout, monkeypatch):
    # given: every answer about this payout fails to be recorded (its transaction rolled back)
    from models import Alert
    from payouts import dispatch

    def broken(payout, result, now, settings):
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(dispatch, "apply_result", broken)
    payout, _ = funded_payout()
    settings = DispatchSettings(money=MoneySettings(), max_attempts=3)
    rail = ScriptedRail(ok(), query_answers=tuple(RailResult(Outcome.UNKNOWN, "TIMEOUT") for _ in range(9)))
    # when: a pass, then passes after each lease
    assert dict(run(rail, settings)) == {"error": 1}
    back = db.session.get(Payout, payout.id)
    assert back.status == "sending" and "RECORD_FAILED" in back.last_error  # noted; the lease brings it back
    later = utcnow()
    for _ in range(5):
        later += timedelta(hours=1)
        run(rail, settings, at=later)
    # then: queried after each lease (never sent twice), and an operator's once its attempts are used
    back = db.session.get(Payout, payout.id)
    assert (back.status, back.attempts) == ("needs_operator", 3)
    assert rail.calls == [("send", payout.external_no)] + [("query", payout.external_no)] * 2
    noted = db.session.query(PayoutAttempt).filter_by(payout_id=payout.id, action="record").all()
    assert len(noted) == 3 and all("unhashable" in a.message for a in noted)
    assert db.session.query(Alert).filter_by(kind="payout_needs_operator", subject=payout.external_no).count() == 1
    # and the operator finds it sent (its call may have left: in transit), so a resend asks WeChat first
    assert back.sent_at is not None
    assert db.session.query(LedgerEntry).filter_by(idempotency_key=f"payout:{payout.id}:sent").count() == 1


def test_an_answer_with_a_message_that_is_not_text_is_still_recorded(funded_payout):
    payout, _ = funded_payout()
    run(ScriptedRail(RailResult(Outcome.UNKNOWN, "ODD", {"not": "text"})))  # type: ignore[arg-type]
    back = db.session.get(Payout, payout.id)
    assert back.status == "unknown"
    [attempt] = db.session.query(PayoutAttempt).filter_by(payout_id=payout.id).all()
    assert attempt.message == "{'not': 'text'}"


def test_a_payout_whose_calls_keep_raising_ends_with_an_operator_after_its_attempts(funded_payout):
    # given: the rail raises on every call about this payout (an error answer the client could not read, say)
    from models import Alert

    class Raising(ScriptedRail):
        def send(self, external_no, request):
            self.calls.append(("send", external_no))
            raise TypeError("unhashable type: 'list'")

        def query(self, external_no, request):
            self.calls.append(("query", external_no))
            raise TypeError("unhashable type: 'list'")

    payout, _ = funded_payout()
    settings = DispatchSettings(money=MoneySettings(), max_attempts=3)
    rail = Raising()
    # when: a pass, then passes after each lease
    assert dict(run(rail, settings)) == {"error": 1}
    assert "RECORD_FAILED" in db.session.get(Payout, payout.id).last_error
    later = utcnow()
    for _ in range(5):
        later += timedelta(hours=1)
        run(rail, settings, at=later)
    # then: queried after each lease (never sent twice), and an operator's once its attempts are used
    back = db.session.get(Payout, payout.id)
    assert (back.status, back.attempts) == ("needs_operator", 3)
    assert rail.calls == [("send", payout.external_no)] + [("query", payout.external_no)] * 2
    noted = db.session.query(PayoutAttempt).filter_by(payout_id=payout.id, action="record").all()
    assert len(noted) == 3 and all("the call raised" in a.message for a in noted)
    assert db.session.query(Alert).filter_by(kind="payout_needs_operator", subject=payout.external_no).count() == 1
    assert back.sent_at is not None  # the first call may have left: the operator's resend asks WeChat first
