"""Probe of the payout dispatcher's rate control (round 19): a call that starts after its lease ran out, a slow or hung
Redis behind the rails' shared window, and two dispatchers on one payout."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

import jobs.payouts as job_module
from jobs.payouts import MovingWindow, RailBusy, dispatch_backlog, rail_limiter
from ledger import balance
from models import Payout, db, utcnow
from payouts import MoneySettings
from payouts.record import DispatchSettings
from tests.test_dispatch import funded_payout, ok  # noqa: F401 - fixture
from tests.test_dispatch_loop import FakeClock, Paying


class OneRail:
    rate_per_second = 100


def test_a_call_queued_past_half_its_lease_is_not_made_after_another_dispatcher_cancelled_it(app, funded_payout):
    """A's one call thread is held up by a slow WeChat answer while the second payout it claimed waits in its queue.
    The lease runs out, the rebate is taken back (cancel asked) and dispatcher B, finding the payout's lease over,
    queries it (WeChat never had it) and cancels it: its money is back in the balance. A's thread then reaches the
    payout: sending it now pays the person money the ledger already took back. README: "a call that gets no turn
    within half of PAYOUT_LEASE_SECONDS is not made, and its payout goes back untouched"."""
    from tests.conftest import release_test_session

    first, _ = funded_payout(amount_fen=1_00)
    second, cash = funded_payout(amount_fen=2_00)
    in_send, go = threading.Event(), threading.Event()

    class Slow(Paying):
        def send(self, external_no, request):
            if external_no == first.external_no:
                in_send.set()
                go.wait(timeout=30)  # (a guard against a hang only)
            return super().send(external_no, request)

    rail_a, rail_b = Slow(), Paying()
    short = DispatchSettings(money=MoneySettings(), batch=5, lease=timedelta(seconds=0.2))
    outcomes = {}

    def dispatcher_a():
        with app.app_context():
            outcomes.update(dispatch_backlog({rail_a.name: rail_a}, settings=short, calls_in_flight=1, max_passes=1))
            db.session.remove()

    release_test_session()
    a = threading.Thread(target=dispatcher_a)
    a.start()
    try:
        assert in_send.wait(timeout=30)
        # the second payout's rebate is taken back while it is with the dispatcher (rebate.clawbacks marks it)
        db.session.get(Payout, second.id).cancel_requested = True
        db.session.commit()
        later = utcnow() + timedelta(seconds=5)  # both leases are over for dispatcher B
        dispatch_backlog({rail_b.name: rail_b}, settings=DispatchSettings(money=MoneySettings()), clock=lambda: later)
        db.session.expire_all()
        assert db.session.get(Payout, second.id).status == "cancelled"
        time.sleep(0.15)  # past half of A's lease (0.1 s) on the monotonic clock
    finally:
        release_test_session()
        go.set()
        a.join(timeout=30)
    # then: A never sent the cancelled payout; the money stays in the person's balance, paid nowhere
    assert ("send", second.external_no) not in rail_a.calls
    assert rail_b.calls[-1] == ("query", second.external_no)
    assert outcomes.get("released") == 1
    db.session.expire_all()
    assert db.session.get(Payout, second.id).status == "cancelled"
    assert balance(cash) == 2_00


def test_a_slow_window_whose_turns_all_come_too_late_ends_at_the_deadline_not_in_an_endless_loop(monkeypatch):
    """Each round trip to Redis takes longer than LATE_S: every turn it brings is already too late and dropped.
    The limiter asked again at once, inside its lock, forever: the deadline never checked, the run never ending, and
    every round trip taking 8 turns of the window all the other jobs processes share."""
    clock = FakeClock()

    class Slow(MovingWindow):
        trips = 0

        def reserve(self, key, rate, most=1, ahead=0.0):
            self.trips += 1
            if self.trips > 100:
                raise AssertionError("still asking the window long after the deadline")
            clock.now += 0.15  # the request on its way to Redis
            turns = super().reserve(key, rate, most, ahead)
            clock.now += 0.15  # and the answer on its way back
            return turns

    window = Slow(None, clock=clock)
    monkeypatch.setattr(job_module, "_window", lambda url: window)
    wait_for = rail_limiter({"r": OneRail()}, None, max_wait_s=10, clock=clock, sleep=lambda s: None)
    with pytest.raises(RailBusy):
        wait_for("r", until=clock.now + 2.0)
    assert window.trips <= 8  # about 2 s of 0.3 s round trips, then no call


def test_a_hung_round_trip_to_the_window_does_not_hold_other_calls_past_their_deadline(monkeypatch):
    """One thread's round trip to Redis hangs (up to redis-py's socket timeout, 5 s); the process's other threads wait
    for the limiter's lock. A call whose deadline passes meanwhile must be told so then, not get a turn after it."""
    hung, release = threading.Event(), threading.Event()

    class Hanging(MovingWindow):
        def reserve(self, key, rate, most=1, ahead=0.0):
            if not hung.is_set():
                hung.set()
                release.wait(timeout=30)  # (a guard against a hang only)
            return super().reserve(key, rate, most, ahead)

    monkeypatch.setattr(job_module, "_window", lambda url: Hanging(None))
    wait_for = rail_limiter({"r": OneRail()}, None, max_wait_s=30)
    first = threading.Thread(target=wait_for, args=("r",), daemon=True)
    first.start()
    assert hung.wait(timeout=30)
    answer = {}

    def second():
        try:
            answer["turn"] = wait_for("r", until=time.monotonic() + 0.2)
        except RailBusy as busy:
            answer["busy"] = busy

    other = threading.Thread(target=second, daemon=True)
    other.start()
    other.join(timeout=5)
    ended_in_time = not other.is_alive()
    release.set()
    other.join(timeout=30)
    first.join(timeout=30)
    assert ended_in_time and "busy" in answer


def test_a_stale_dispatcher_does_not_undo_the_claim_of_the_one_that_took_the_payout_over(app, funded_payout):
    """A claimed a payout and stalled (a paused process, a hung limiter) past its lease; B took the payout over (its
    lease, its call). A's "no turn" then put the payout back to pending, attempt given back, no lease: B's call was
    still out, and the answer B recorded (WeChat paid) was only logged, the payout left pending."""
    from models import unit_of_work
    from payouts.dispatch import claim, record
    from tests.conftest import release_test_session

    payout, _ = funded_payout()
    stalled, go = threading.Event(), threading.Event()

    def stalling(rail, until=None):
        stalled.set()
        go.wait(timeout=30)  # (a guard against a hang only)
        raise RailBusy(rail)

    rail = Paying()
    outcomes = {}

    def dispatcher_a():
        with app.app_context():
            outcomes.update(dispatch_backlog({rail.name: rail}, settings=settings(), limiter=stalling, max_passes=1))
            db.session.remove()

    release_test_session()
    a = threading.Thread(target=dispatcher_a)
    a.start()
    try:
        assert stalled.wait(timeout=30)
        later = utcnow() + timedelta(minutes=10)  # A's lease is over: B takes the payout over
        with unit_of_work():
            [taken] = claim({rail.name: rail}, later, settings())
        release_test_session()
    finally:
        go.set()
        a.join(timeout=30)
    assert outcomes == {"released": 1}
    db.session.expire_all()
    held = db.session.get(Payout, payout.id)
    assert (held.status, held.attempts, held.lease_until) == ("sending", 2, later + settings().lease)
    # and B's answer is recorded
    with unit_of_work():
        record(taken, [("query", ok(), 5)], later, settings())
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "succeeded"


def settings():
    return DispatchSettings(money=MoneySettings(), batch=5)
