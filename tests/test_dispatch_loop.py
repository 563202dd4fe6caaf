"""The dispatcher at its rails' rates: batches while there is backlog, calls in flight, the shared window.

Counts and behaviour only, never time: the rails here answer at once (or wait on each other with a barrier),
and the moving window runs on a clock the test moves.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

import jobs.payouts as job_module
from jobs.payouts import MovingWindow, RailBusy, dispatch_backlog, rail_limiter
from models import Payout, PayoutAttempt, db, utcnow
from payouts import MoneySettings
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from tests.test_dispatch import ScriptedRail, _disarm, funded_payout, ok  # noqa: F401 - fixtures

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Paying(ScriptedRail):
    """Pays every send; thread-safe, as the rails' threads call it at once."""

    def __init__(self, rate_per_second: int = 100):
        super().__init__()
        self.rate_per_second = rate_per_second
        self.lock = threading.Lock()
        self.timing_out = False  # True: every send times out (WeChat may or may not hold the bill)

    def send(self, external_no, request):
        with self.lock:
            self.calls.append(("send", external_no))
        return RailResult(Outcome.UNKNOWN, "TIMEOUT") if self.timing_out else ok(external_no)

    def query(self, external_no, request):
        with self.lock:
            self.calls.append(("query", external_no))
        return RailResult(Outcome.NOT_FOUND)


def settings(batch=5):
    return DispatchSettings(money=MoneySettings(), batch=batch)


def statuses() -> list[str]:
    db.session.expire_all()
    return [p.status for p in db.session.query(Payout).order_by(Payout.id)]


def test_the_loop_takes_the_next_batch_at_once_while_there_is_backlog_and_stops_when_empty(funded_payout, monkeypatch):
    # given: 12 payouts due and batches of 5
    for i in range(12):
        funded_payout(amount_fen=1_00 + i)
    claims = []
    real_claim = job_module.claim_batch

    def counting_claim(*args, **kwargs):
        batch = real_claim(*args, **kwargs)
        claims.append(batch.rows)
        return batch

    monkeypatch.setattr(job_module, "claim_batch", counting_claim)
    rail = Paying()
    # when: one run of the dispatcher
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(batch=5), calls_in_flight=3)
    # then: 5, 5, 2, then a claim that finds nothing ends the run; every payout sent once
    assert claims == [5, 5, 2, 0]
    assert outcomes == {Outcome.SUCCEEDED: 12}
    assert len(rail.calls) == 12 and len({no for _, no in rail.calls}) == 12
    assert statuses() == ["succeeded"] * 12


def test_an_empty_backlog_is_one_claim_and_no_call(app, monkeypatch):
    claims = []
    real_claim = job_module.claim_batch
    monkeypatch.setattr(job_module, "claim_batch", lambda *a, **k: claims.append(1) or real_claim(*a, **k))
    rail = Paying()
    assert dispatch_backlog({rail.name: rail}, settings=settings()) == {}
    assert claims == [1] and rail.calls == []


def test_calls_in_flight_reach_but_never_exceed_the_configured_concurrency(funded_payout):
    # given: 9 payouts; each send waits until two others are in flight too (a barrier of 3)
    for i in range(9):
        funded_payout(amount_fen=1_00 + i)
    barrier = threading.Barrier(3, timeout=30)  # a safety net against a hang, never reached when correct
    state = {"now": 0, "most": 0}

    class Gathering(Paying):
        def send(self, external_no, request):
            with self.lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            barrier.wait()
            with self.lock:
                state["now"] -= 1
            return super().send(external_no, request)

    rail = Gathering()
    # when
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(batch=9), calls_in_flight=3)
    # then: three at a time, never a fourth
    assert outcomes == {Outcome.SUCCEEDED: 9}
    assert state["most"] == 3


def test_a_rail_never_has_more_calls_in_flight_than_its_rate(funded_payout):
    for i in range(4):
        funded_payout(amount_fen=1_00 + i)
    barrier = threading.Barrier(2, timeout=30)
    state = {"now": 0, "most": 0}

    class Slow(Paying):
        def send(self, external_no, request):
            with self.lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            barrier.wait()
            with self.lock:
                state["now"] -= 1
            return super().send(external_no, request)

    rail = Slow(rate_per_second=2)
    dispatch_backlog({rail.name: rail}, settings=settings(batch=4), calls_in_flight=16)
    assert state["most"] == 2


def timed_out_payouts(funded_payout, rail, count=1):
    """Payouts whose send timed out: the next pass (a day later here) must query each before any resend."""
    made = [funded_payout(amount_fen=1_00 + i)[0] for i in range(count)]
    rail.timing_out = True
    dispatch_backlog({rail.name: rail}, settings=settings())
    rail.timing_out, rail.calls[:] = False, []
    assert statuses() == ["unknown"] * count
    return made


def test_the_limiter_is_asked_once_per_wechat_call(funded_payout):
    # given: one payout whose send timed out (query first, then send again) and one never sent
    rail = Paying()
    [lost] = timed_out_payouts(funded_payout, rail)
    fresh, _ = funded_payout(amount_fen=3_00)
    asked = []
    lock = threading.Lock()

    def limiter(rail, until=None):
        with lock:
            asked.append(rail)

    later = utcnow() + timedelta(days=1)
    # when
    dispatch_backlog({rail.name: rail}, settings=settings(), limiter=limiter, clock=lambda: later, calls_in_flight=4)
    # then: three calls (query + send; send), three turns asked of the rail's limit
    assert sorted(rail.calls) == sorted(
        [("query", lost.external_no), ("send", lost.external_no), ("send", fresh.external_no)]
    )
    assert asked == ["wechat_change"] * 3
    assert statuses() == ["succeeded"] * 2


def test_a_payouts_send_time_is_the_moment_the_rails_window_counted_it(funded_payout):
    payout, _ = funded_payout()
    granted = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    rail = Paying()
    dispatch_backlog({rail.name: rail}, settings=settings(), limiter=lambda rail, until=None: granted.timestamp())
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).sent_at == granted
    assert db.session.query(PayoutAttempt).filter_by(payout_id=payout.id).one().created_at == granted


def test_a_call_that_cannot_start_within_the_lease_puts_the_payout_back_untouched(funded_payout):
    # given: the rail's rate is taken by others until past the deadline
    payout, _ = funded_payout()

    def busy(rail, until=None):
        raise RailBusy(rail)

    rail = Paying()
    # when
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(), limiter=busy, max_passes=1)
    # then: nothing sent; the payout is pending again, due, its attempt given back
    assert outcomes == {"released": 1} and rail.calls == []
    db.session.expire_all()
    back = db.session.get(Payout, payout.id)
    assert (back.status, back.attempts, back.lease_until) == ("pending", 0, None)
    assert back.next_attempt_at <= utcnow()
    # and the next run sends it
    dispatch_backlog({rail.name: rail}, settings=settings())
    assert rail.calls == [("send", payout.external_no)]
    assert statuses() == ["succeeded"]


def test_an_unreachable_limiter_makes_no_call_and_ends_the_run(funded_payout):
    for i in range(3):
        funded_payout(amount_fen=1_00 + i)

    def down(rail, until=None):
        raise ConnectionError("redis down")

    rail = Paying()
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(batch=2), limiter=down)
    assert outcomes == {"released": 2} and rail.calls == []  # one batch, then the run stops
    assert statuses() == ["pending"] * 3


def test_a_payout_released_after_its_query_is_queried_again_first(funded_payout):
    rail = Paying()
    [payout] = timed_out_payouts(funded_payout, rail)
    turns = []

    def one_turn(rail, until=None):
        turns.append(rail)
        if len(turns) > 1:
            raise RailBusy(rail)

    later = utcnow() + timedelta(days=1)
    dispatch_backlog({rail.name: rail}, settings=settings(), limiter=one_turn, clock=lambda: later, max_passes=1)
    db.session.expire_all()
    back = db.session.get(Payout, payout.id)
    assert back.status == "sending" and back.lease_until == later  # as after a crash: the lease is over
    actions = [a.action for a in db.session.query(PayoutAttempt).filter_by(payout_id=payout.id).order_by("id")]
    assert actions == ["send", "query"]
    after = later + timedelta(seconds=1)
    dispatch_backlog({rail.name: rail}, settings=settings(), clock=lambda: after)
    assert rail.calls == [("query", payout.external_no), ("query", payout.external_no), ("send", payout.external_no)]
    assert statuses() == ["succeeded"]


def test_a_call_thread_takes_the_next_payout_while_the_last_answer_is_being_recorded(funded_payout, monkeypatch):
    # given: three payouts, one call thread, and a recorder that holds its first group until all three are sent
    for i in range(3):
        funded_payout(amount_fen=1_00 + i)
    all_sent = threading.Event()

    class Counting(Paying):
        def send(self, external_no, request):
            answer = super().send(external_no, request)
            if len(self.calls) == 3:
                all_sent.set()
            return answer

    rail = Counting()
    sent_when_first_recorded = []
    real_record_group = job_module.record_group

    first = threading.Lock()

    def held_record_group(answers, settings):
        with first:  # (recorder threads: the first group in)
            if not sent_when_first_recorded:
                all_sent.wait(timeout=30)  # (a guard against a hang only: with one call thread waiting, never set)
                sent_when_first_recorded.append(len(rail.calls))
        return real_record_group(answers, settings)

    monkeypatch.setattr(job_module, "record_group", held_record_group)
    # when
    outcomes = dispatch_backlog({rail.name: rail}, settings=settings(), calls_in_flight=1)
    # then: the thread did not wait for the recorder; every answer is still recorded once, before the run ends
    assert sent_when_first_recorded == [3]
    assert outcomes == {Outcome.SUCCEEDED: 3}
    assert statuses() == ["succeeded"] * 3
    assert db.session.query(PayoutAttempt).filter_by(action="send").count() == 3


def test_one_failing_call_does_not_lose_the_other_answers(funded_payout):
    broken = funded_payout(amount_fen=1_00)[0].external_no
    funded_payout(amount_fen=2_00)

    class Flaky(Paying):
        def send(self, external_no, request):
            if external_no == broken:
                raise RuntimeError("bug in a rail")
            return super().send(external_no, request)

    outcomes = dispatch_backlog({"wechat_change": Flaky()}, settings=settings(), max_passes=1)
    assert outcomes == {Outcome.SUCCEEDED: 1, "error": 1}
    assert statuses() == ["sending", "succeeded"]  # the failed one waits for its lease, then a query


def test_two_dispatcher_loops_at_once_never_send_one_payout_twice(app, funded_payout):
    from tests.conftest import release_test_session

    # PostgreSQL: row locks with SKIP LOCKED; SQLite: BEGIN IMMEDIATE serialises the claims
    payouts = [funded_payout(amount_fen=1_00 + i)[0].external_no for i in range(24)]
    rail = Paying()
    barrier = threading.Barrier(2)

    def dispatcher():
        with app.app_context():
            barrier.wait()
            dispatch_backlog({rail.name: rail}, settings=settings(batch=4), calls_in_flight=3)
            db.session.remove()

    release_test_session()
    threads = [threading.Thread(target=dispatcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(no for _, no in rail.calls) == sorted(payouts)  # every payout once, none twice
    assert statuses() == ["succeeded"] * 24


# -- the moving window ------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_window_grants_the_rate_then_says_how_long_until_the_oldest_leaves():
    clock = FakeClock()
    window = MovingWindow(None, window_s=1.0, clock=clock)
    granted = []
    for _ in range(20):  # 20 tries over 5 s, a quarter of a second apart
        if window.try_take("r", 3).wait == 0:
            granted.append(clock.now)
        clock.now += 0.25
    # three a second, each as soon as the oldest leaves the window: never 4 within any second
    assert all(granted[i + 3] - granted[i] >= 1.0 for i in range(len(granted) - 3))
    assert granted[:6] == [1000.0, 1000.25, 1000.5, 1001.0, 1001.25, 1001.5]
    assert len(granted) == 15
    clock.now = 2000.0
    for _ in range(3):
        assert window.try_take("r", 3).wait == 0
    clock.now = 2000.25
    assert window.try_take("r", 3).wait == pytest.approx(0.75)
    assert window.try_take("other", 3).wait == 0  # each key on its own


def test_the_limiter_waits_exactly_until_a_turn_is_free(monkeypatch):
    class Rail:
        rate_per_second = 2

    clock = FakeClock()
    slept = []

    def sleep(seconds):
        slept.append(round(seconds, 6))
        clock.now += seconds

    window = MovingWindow(None, clock=clock)
    monkeypatch.setattr(job_module, "_window", lambda url: window)
    wait_for = rail_limiter({"r": Rail()}, None, max_wait_s=10, clock=clock, sleep=sleep)
    for _ in range(6):
        wait_for("r")
    assert slept == [1.0, 1.0]  # 2 at once, 2 a second later, 2 a second after that
    with pytest.raises(RailBusy):
        wait_for("r", until=clock.now + 0.5)  # the next turn is later than the deadline: no call


def _redis_or_skip():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    return client


def test_two_processes_on_one_redis_share_one_window_exactly():
    # given: two limiters as two processes would have them (their own connections, one Redis)
    client = _redis_or_skip()
    key = f"payout-rate:test:{uuid.uuid4().hex}"
    one, two = MovingWindow(REDIS_URL, window_s=60), MovingWindow(REDIS_URL, window_s=60)
    try:
        # when: both ask, in turns, for more than the rate
        granted = [w.try_take(key, 5).wait == 0 for _ in range(4) for w in (one, two)]
        # then: five turns in all, whoever asked; the others are told to wait about the window
        assert granted.count(True) == 5
        assert 59 < one.try_take(key, 5).wait <= 60
        assert client.llen(key) == 5
    finally:
        client.delete(key)


def test_reserved_turns_keep_the_window_at_the_rate_whoever_takes_them():
    # given: one window, asked in turns by two "processes" for several turns at once, some ahead of now
    clock = FakeClock()
    window = MovingWindow(None, window_s=1.0, clock=clock)
    stamps = []
    for step in range(200):
        turns = window.reserve("r", 10, most=1 + step % 8, ahead=0.3)
        if not turns.wait:
            assert turns.stamps[0] == clock.now  # the first turn is free now, the others may be ahead
            assert all(clock.now <= s <= clock.now + 0.3 for s in turns.stamps)
            stamps.extend(turns.stamps)
        clock.now += 0.037
    # then: never 11 within any second, and the window's turns were taken (about the rate over the run)
    stamps.sort()
    assert all(stamps[i + 10] - stamps[i] >= 1.0 for i in range(len(stamps) - 10))
    assert len(stamps) >= 10 * int(clock.now - 1000.0)


def test_a_reserved_turn_not_used_in_time_is_dropped_never_used_late(monkeypatch):
    class Rail:
        rate_per_second = 10

    clock = FakeClock()
    window = MovingWindow(None, window_s=1.0, clock=clock, wall=lambda: clock.now + 5000.0)
    monkeypatch.setattr(job_module, "_window", lambda url: window)
    wait_for = rail_limiter({"r": Rail()}, None, max_wait_s=10, clock=clock, sleep=lambda s: None, most=8)
    # when: one call takes a turn (the process reserves 8), then the next call comes half a second later
    first = wait_for("r")
    clock.now += job_module.LATE_S + 0.01
    second = wait_for("r")
    # then: the 7 turns stamped before LATE_S ago are dropped; the call gets a turn stamped now
    later = 6000.0 + job_module.LATE_S + 0.01
    assert first == 6000.0 and second == pytest.approx(later)
    assert len(window._grants["payout-rate:-:r"]) == 10  # 8 + 2: the window counts the dropped turns too
    assert wait_for("r") == pytest.approx(later)  # the other turn reserved with it
    with pytest.raises(RailBusy):
        wait_for("r", until=clock.now + 0.1)  # the window is full until a second after the first 8


def test_two_processes_reserving_turns_on_one_redis_never_exceed_the_rate(monkeypatch):
    # given: two dispatcher processes' limiters (each its own reserved turns) on one Redis, 10 threads each
    _redis_or_skip()

    class Rail:
        rate_per_second = 20

    mchid = f"test-{uuid.uuid4().hex[:8]}"
    limiters = [rail_limiter({"r": Rail()}, REDIS_URL, max_wait_s=30, mchid=mchid) for _ in range(2)]
    counted, started, early = [], [], []
    lock = threading.Lock()

    def calls(wait_for):
        for _ in range(4):
            at = wait_for("r")
            now = job_module.time.time()  # the moment the call to WeChat would start
            with lock:
                counted.append(at)
                started.append(now)
                early.append(at - now)

    # when: 80 calls at 20/s
    threads = [threading.Thread(target=calls, args=(limiters[n % 2],)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then: any 21 consecutive stamps (send times) span a whole second; no call starts before its stamp
    counted.sort()
    assert len(counted) == 80
    assert all(counted[i + 20] - counted[i] >= 1.0 - 1e-6 for i in range(len(counted) - 20))
    assert max(early) <= 0.002  # (Redis's clock and this one: the same machine's, read a moment apart)
    started.sort()
    slack = 0.05  # thread scheduling between the limiter's answer and our timestamp; not a speed target
    assert all(started[i + 20] - started[i] >= 1.0 - slack for i in range(len(started) - 20))
