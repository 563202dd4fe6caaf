"""Payout jobs: the dispatcher, expiries, alert delivery and the daily reconciliation.

The jobs own the commits of ``payouts``: each pass commits what it prepared,
calls WeChat with no transaction open (the shared WeChat session refuses a call
inside one), then records the answer and commits (``call_between_commits``).
Every job, here and in ``jobs.orders``, reaches the configuration, the money
settings and the WeChat clients through one accessor, :func:`job_context`: the
clients are handed to :func:`install_job_context` at app set-up (never looked
up in the shell's objects). The rails are built from them; a rail whose
settings are missing is simply not dispatched (its payouts wait, and the
operator API shows them). Calls per second per rail come from
``PAYOUT_RATE_LIMITS``: a moving window on Redis when ``REDIS_URL`` is set
(shared by every process of every node) and in memory otherwise.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import requests
from flask import Flask, current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import Alert, Payout, call_between_commits, db, row_failure, unit_of_work, utcnow
from models.alerts import row_busy
from models.base import while_busy
from models.payouts import Rail
from models.sql import is_busy
from notices import enqueue_many
from notices.watch import failed_draft
from payouts import reconcile, unclaimed
from payouts.card_rail import CardRail, card_key
from payouts.coupon_rail import CouponRail
from payouts.dispatch import (
    Claimed,
    call_wechat,
    claim_batch,
    prepare_rails,
    rail_on_now,
    record,
    record_failed,
    record_group,
    release,
)
from payouts.faults import fault_point
from payouts.rails import Outcome, RailAdapter, RailResult, unconfigured_because
from payouts.reconcile import DailyChecks
from payouts.record import DispatchSettings
from payouts.redpack_rail import RedpackRail
from payouts.settings import MoneySettings
from payouts.transfer_rail import TransferRail
from rebate.covered_debts import SWEEP, people_owing, settle_covered
from wechat.mp import get_api_ticket
from wechat.pay import PayClient
from wechat.redpack import RedpackClient
from wechat.wecom import WEBHOOK_TEXT_BYTES

log = logging.getLogger(__name__)
EXTENSION = "jobs"  # the jobs' own entry in app.extensions
DISPATCH_RUN_SECONDS = 60.0  # one scheduled run's longest stretch; the next run (seconds later) goes on


@dataclass
class JobContext:
    """What every job works with: the configuration and the app's WeChat clients, handed over at set-up.

    ``wechat`` is the object the app's WeChat wiring built (``pay``, ``session`` — the shared session that
    refuses a call inside a transaction —, ``token_store``, ``transfer_notify_url``); the rails are built
    from it once, on first use (the scheduler builds them at start-up, so bad settings show there).
    """

    config: Mapping[str, Any]
    wechat: Any
    _rails: dict[str, RailAdapter] | None = field(default=None, repr=False)

    @property
    def rails(self) -> dict[str, RailAdapter]:
        if self._rails is None:
            self._rails = build_rails(self.config, self.wechat)
        return self._rails

    @property
    def pay(self) -> PayClient:
        return self.wechat.pay

    @property
    def money(self) -> MoneySettings:
        """The money settings every operation the jobs call is given (read from the configuration each time)."""
        return MoneySettings.from_config(self.config)


def install_job_context(app: Flask, wechat: Any) -> JobContext:
    app.extensions[EXTENSION] = context = JobContext(app.config, wechat)
    return context


def job_context(app: Flask | None = None) -> JobContext:
    """The context installed for ``app`` (default: the current app): the one way a job reaches WeChat."""
    return (app or current_app).extensions[EXTENSION]


def build_rails(cfg: Mapping[str, Any], wx: Any) -> dict[str, RailAdapter]:
    """The payout rails over the app's WeChat clients (``wx``); every client shares ``wx.session``."""
    rates = cfg["PAYOUT_RATE_LIMITS"]
    rails = {
        Rail.WECHAT_CHANGE: TransferRail(
            wx.pay,
            appid=cfg["WECHAT_APPID"],
            notify_url=wx.transfer_notify_url,
            activity=cfg["REDPACK_ACT_NAME"],
            rate_per_second=rates.get(Rail.WECHAT_CHANGE, 100),
        )
    }
    if unconfigured_because(Rail.CASH_RED_PACKET, cfg) is None:
        client = RedpackClient(
            cfg["WECHAT_MCHID"],
            cfg["WECHAT_OA_APPID"],
            cfg["WECHAT_API_V2_KEY"],
            cfg.get("WECHAT_MCH_CERT_PATH"),
            cfg.get("WECHAT_MCH_KEY_PATH"),
            api_base=cfg["WECHAT_PAY_API_BASE"],
            session=wx.session,
        )
        rails[Rail.CASH_RED_PACKET] = RedpackRail(
            client,
            oa_appid=cfg["WECHAT_OA_APPID"],
            send_name=cfg["REDPACK_SEND_NAME"],
            act_name=cfg["REDPACK_ACT_NAME"],
            wishing=cfg["REDPACK_WISHING"],
            remark=cfg["REDPACK_ACT_NAME"],
            client_ip=cfg["SERVER_IP"],
            rate_per_second=rates.get(Rail.CASH_RED_PACKET, 30),
        )
    if unconfigured_because(Rail.WECHAT_COUPON, cfg) is None:
        rails[Rail.WECHAT_COUPON] = CouponRail(
            wx.pay,
            appid=cfg["WECHAT_APPID"],
            stock_creator_mchid=cfg["WECHAT_MCHID"],
            stocks=cfg["WECHAT_COUPON_STOCKS"],
            rate_per_second=rates.get(Rail.WECHAT_COUPON, 500),
        )
    if unconfigured_because(Rail.CARD_COUPON, cfg) is None:
        ticket = functools.partial(
            get_api_ticket,
            wx.token_store,
            cfg["WECHAT_OA_APPID"],
            cfg["WECHAT_OA_SECRET"],
            cfg["WECHAT_API_BASE"],
            wx.session,
        )
        rails[Rail.CARD_COUPON] = CardRail(
            cfg["WECHAT_CARD_ID"],
            ticket,
            rate_per_second=rates.get(Rail.CARD_COUPON, 50),
            face_value_fen=cfg.get("WECHAT_CARD_FACE_VALUE_FEN"),
            outer_key=card_key(cfg["SECRET_KEY"]),
        )
    return rails


# -- calls per second per rail ----------------------------------------------------------

RATE_WINDOW_S = 1.0  # WeChat's limits are calls per second: no rail gets more than its rate in any such window
# A turn is handed out as a stamp: the moment the shared window counts the call at (its send time). A call
# starts at or after its stamp, and within LATE_S after it or not at all (the turn is dropped): a turn
# reserved ahead is never used early, nor long after the window counted it.
LATE_S = 0.25
RESERVE_MOST = 8  # turns one round trip to the window may take for this process's threads
RESERVE_AHEAD_S = 0.1  # how far ahead of now those turns may be (no process holds the window's future long)
# The window's next free turns (up to ARGV[3], the first at once or the rest within ARGV[4] s from now), each
# checked and pushed in one atomic step on Redis's own clock: every process of every node is ordered by one
# clock, so the window is exact across processes (no client clock in it). The list holds the last ``limit``
# stamps, newest first and never decreasing; a new stamp is at least the ``limit``-th newest + the window,
# so any ``limit`` + 1 consecutive stamps span a whole window: never more than ``limit`` in any window.
_REDIS_WINDOW = """
local t = redis.call('TIME')
local function us(x) return math.floor(x * 1000000 + 0.5) / 1000000 end  -- to the microsecond, as stored
local now = us(tonumber(t[1]) + tonumber(t[2]) / 1000000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local most, ahead = tonumber(ARGV[3]), tonumber(ARGV[4])
local stamps = {}
for i = 1, most do
    local at = now
    local oldest = redis.call('LINDEX', KEYS[1], limit - 1)
    if oldest and tonumber(oldest) + window > at then at = tonumber(oldest) + window end
    local newest = redis.call('LINDEX', KEYS[1], 0)
    if newest and tonumber(newest) > at then at = tonumber(newest) end
    at = us(at)
    if at > now then
        if #stamps > 0 and at > now + ahead then break end
        if #stamps == 0 then return {math.max(1, math.ceil((at - now) * 1000000))} end
    end
    local stamp = string.format('%.6f', at)
    redis.call('LPUSH', KEYS[1], stamp)
    redis.call('LTRIM', KEYS[1], 0, limit - 1)
    stamps[#stamps + 1] = stamp
end
redis.call('PEXPIRE', KEYS[1], math.ceil((window + ahead) * 1000) + 1000)
return {0, string.format('%.6f', now), unpack(stamps)}
"""


class RailBusy(TimeoutError):
    """The rail's calls per second stayed taken until the deadline: nothing was sent."""


class RailStopped(RailBusy):
    """The rail was paused or switched off after the payout was claimed: nothing was sent."""


class Turn(NamedTuple):
    wait: float  # 0: granted; else the seconds until the oldest grant leaves the window
    at: float | None = None  # when granted: the moment (Unix time) the window counts this call at


class Turns(NamedTuple):
    """``reserve``'s answer: the seconds to wait (no turn), or turns on the window's clock, and its now."""

    wait: float
    now: float = 0.0
    stamps: tuple[float, ...] = ()
    to_unix: float = 0.0  # add to a stamp for Unix time (0 on Redis, whose clock is Unix time)


class MovingWindow:
    """At most ``rate`` turns in any ``window`` seconds per key.

    ``reserve`` takes up to ``most`` turns at once: the first only if free now, the others at the window's
    next free moments within ``ahead`` seconds (a stamp in the future: the caller waits for it); with no free
    turn it says how long until one is. ``try_take`` is one turn, now or never. On Redis (``redis_url``) one
    list per key holds the last ``rate`` stamps, checked and pushed by one script on the server's clock, so
    every process sharing the Redis shares the window exactly. Without Redis the same list lives in this
    process (one process only: ``config`` refuses more in live mode).
    """

    def __init__(
        self, redis_url: str | None, window_s: float = RATE_WINDOW_S, clock=time.monotonic, wall=time.time
    ) -> None:
        self.window_s, self.clock, self.wall = window_s, clock, wall
        self._script = None
        if redis_url:
            import redis

            self._script = redis.Redis.from_url(redis_url).register_script(_REDIS_WINDOW)
        self._grants: dict[str, deque] = {}  # newest first, as the Redis list
        self._lock = threading.Lock()

    def try_take(self, key: str, rate: int) -> Turn:
        turns = self.reserve(key, rate)
        return Turn(turns.wait) if turns.wait else Turn(0.0, turns.stamps[0] + turns.to_unix)

    def reserve(self, key: str, rate: int, most: int = 1, ahead: float = 0.0) -> Turns:
        if self._script is not None:
            answer = self._script(keys=[key], args=[rate, self.window_s, max(1, most), ahead])
            if int(answer[0]) != 0:
                return Turns(int(answer[0]) / 1_000_000)
            return Turns(0.0, float(answer[1]), tuple(float(stamp) for stamp in answer[2:]))
        with self._lock:  # the script's steps, in this process
            grants = self._grants.setdefault(key, deque())
            now, stamps = self.clock(), []
            for _ in range(max(1, most)):
                at = now
                if len(grants) >= rate:
                    at = max(at, grants[rate - 1] + self.window_s)
                if grants:
                    at = max(at, grants[0])
                if at > now and (stamps and at > now + ahead):
                    break
                if at > now and not stamps:
                    return Turns(at - now)
                grants.appendleft(at)
                while len(grants) > rate:
                    grants.pop()
                stamps.append(at)
            return Turns(0.0, now, tuple(stamps), self.wall() - now)


@functools.cache
def _window(redis_url: str | None) -> MovingWindow:
    return MovingWindow(redis_url)


def rate_key(rail: str, mchid: str | None = None) -> str:
    """WeChat counts calls per merchant: every deployment on one merchant id shares the key (staging too)."""
    return f"payout-rate:{mchid or '-'}:{rail}"


class _Permit(NamedTuple):
    early: float  # the stamp on this process's monotonic clock, at the earliest it can be (asked at)
    late: float  # and at the latest (answered at): the call never starts before it
    at: float  # the stamp, Unix time: the call's send time


def rail_limiter(
    rails: dict[str, Any],
    redis_url: str | None,
    max_wait_s: float = 5.0,
    *,
    mchid: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    most: int = RESERVE_MOST,
):
    """``wait_for(rail, until=None)``: once the rail has a turn (never more than its rate), returns the
    moment the shared window counts it at (Unix time): the call's send time. The caller calls at once.

    One round trip to the window takes up to ``most`` turns for this process (``MovingWindow.reserve``): the
    first free now, the others at the window's next free moments within ``RESERVE_AHEAD_S``; the threads of
    the process share them, each waiting until its turn's stamp. Never above the rate, across processes:
    every turn of every process is a stamp in the one shared window, which the script keeps to at most
    ``rate`` stamps in any ``RATE_WINDOW_S`` (each new stamp is at least the ``rate``-th newest + the window,
    on Redis's one clock), exactly as when each call took its own turn; reserving ahead only puts stamps in
    the near future, where the same rule holds. A turn's stamp is mapped to this process's clock between the
    moment it was asked for (``early``) and the moment the answer came (``late``): a call never starts
    before ``late`` (so never before its stamp, whatever the round trip took) and never after ``early +
    LATE_S`` (a turn not used by then is dropped, never used late; a dropped or unused turn only costs
    throughput). So each call starts at its send time, give or take this process's scheduling, as before.

    Raises ``RailBusy`` when no turn is free by ``until`` (a ``time.monotonic`` deadline) or after
    ``max_wait_s``; it sleeps exactly until the window has a free turn, not in fixed steps. The deadline holds
    when Redis is slow too: round trips slower than ``LATE_S`` (whose turns are all dropped) are asked again
    only until it, and another thread's hung round trip is waited for only until it.
    """
    window = _window(redis_url)
    held: dict[str, deque[_Permit]] = {}
    lock = threading.Lock()

    def usable(permits: deque[_Permit]) -> _Permit | None:
        now = clock()
        while permits and now > permits[0].early + LATE_S:
            permits.popleft()  # too late for it now: dropped
        return permits.popleft() if permits else None

    def take(key: str, rate: int, deadline: float) -> _Permit | float:
        """A turn held by this process, else one round trip: a turn, or the seconds until one is free (0: ask
        again; infinite: not before the deadline). The lock is waited for until the deadline only: another
        thread's round trip may hang (a Redis that stopped answering, up to its socket timeout)."""
        if not lock.acquire(timeout=max(0.0, deadline - clock())):
            return math.inf
        try:
            permits = held.setdefault(key, deque())
            permit = usable(permits)
            if permit is not None:
                return permit
            asked = clock()
            turns = window.reserve(key, rate, most=max(1, min(most, rate)), ahead=RESERVE_AHEAD_S)
            answered = clock()
            if turns.wait:
                return turns.wait
            permits.extend(
                _Permit(asked + (s - turns.now), answered + (s - turns.now), s + turns.to_unix) for s in turns.stamps
            )
            # a round trip slower than LATE_S brings only turns already too late: the caller asks again once its
            # deadline is checked (asked again inside the lock, a slow Redis kept the call here past any deadline,
            # each round trip taking turns of the window every other process shares)
            permit = usable(permits)
            return 0.0 if permit is None else permit
        finally:
            lock.release()

    def busy(rail: str) -> RailBusy:
        return RailBusy(f"rate limit of {rail} still full at the deadline (at most {max_wait_s} s)")

    def wait_for(rail: str, until: float | None = None) -> float:
        rate = rails[rail].rate_per_second
        key = rate_key(rail, mchid)
        deadline = clock() + max_wait_s
        deadline = deadline if until is None else min(deadline, until)
        while True:
            permit = take(key, rate, deadline)
            if isinstance(permit, float):
                if clock() + permit > deadline:
                    raise busy(rail)
                sleep(permit)
                continue
            pause = permit.late - clock()
            if pause > 0:
                if clock() + pause > deadline:
                    raise busy(rail)
                sleep(pause)
            if clock() <= permit.early + LATE_S:
                return permit.at
            # woke too late for this turn (never used late): the next one, if there is time
            if clock() > deadline:
                raise busy(rail)

    return wait_for


def dispatch_limiter(rails: dict[str, Any], redis_url: str | None, settings: DispatchSettings, *, mchid: str | None):
    """The dispatcher's limiter: a call waits for its turn until its batch's deadline (half the lease), no less."""
    return rail_limiter(rails, redis_url, max_wait_s=settings.lease.total_seconds(), mchid=mchid)


def payout_rails(app: Flask) -> dict[str, RailAdapter]:
    """The app's rails, built once."""
    return job_context(app).rails


# -- the dispatcher ---------------------------------------------------------------------


def _no_limit(rail: str, until: float | None = None) -> None:
    return None


def dispatch_due(
    rails: dict[str, RailAdapter],
    *,
    settings: DispatchSettings | None = None,
    limiter: Callable[..., None] | None = None,
    clock: Callable[[], datetime] = utcnow,
    calls_in_flight: int = 1,
) -> Counter:
    """One dispatcher pass (one claimed batch); returns how many payouts ended in each outcome."""
    return dispatch_backlog(
        rails, settings=settings, limiter=limiter, clock=clock, calls_in_flight=calls_in_flight, max_passes=1
    )


def dispatch_backlog(
    rails: dict[str, RailAdapter],
    *,
    settings: DispatchSettings | None = None,
    limiter: Callable[..., None] | None = None,
    clock: Callable[[], datetime] = utcnow,
    calls_in_flight: int = 1,
    max_passes: int | None = None,
    max_seconds: float | None = None,
) -> Counter:
    """Claim after claim while there is backlog, until a claim finds nothing due (or ``max_passes`` claims,
    or ``max_seconds``); returns how many payouts ended in each outcome.

    This thread claims (each claim committed before any of its calls) and hands each payout to its rail's
    pool: up to ``calls_in_flight`` threads (never more than the rail's rate), each waiting for the rail's
    turn (``limiter(rail, until)``, shared by every process), calling WeChat with no transaction open, then
    handing the answer to the recorder and taking the next payout at once: the recorder commits answers a
    few to a transaction on threads of its own, asynchronously to the calls. Until its answer is committed a
    payout stays ``sending`` under its lease, so no claim (here or elsewhere) takes it; a crash loses at
    most the answers not yet committed, and their leases bring them back to a query, never a blind resend.
    Each answer is recorded exactly once (``_Recorder``); the run ends only once every answer handed over
    is committed. The next batch is claimed while half of this one is still queued, in flight or being
    recorded, so the rails never wait for a claim; a claim that took less than a full batch is followed by
    one more only once its calls are done and recorded (they may have queued retries). A call that gets no
    turn within half the lease (the rail's rate taken by other processes all along, or the limiter
    unreachable) is not made: ``release`` puts the payout back, and the run ends after that batch rather
    than claiming it again at once.
    """
    settings = settings or DispatchSettings(money=job_context().money)
    limiter = limiter or _no_limit
    app = current_app._get_current_object()
    stop_at = None if max_seconds is None else time.monotonic() + max_seconds
    outcomes: Counter = Counter()
    running: dict = {}
    gate = _RailGate(clock)
    with _Recorder(app, settings) as recorder, _RailPools(rails, calls_in_flight) as pools:  # pools end first
        try:
            passes = 0
            while (max_passes is None or passes < max_passes) and not (outcomes["released"] or outcomes[STOPPED]):
                # (a payout released: its rail had no turn, or the limiter is unreachable, or it was paused or
                # switched off since the claim; the next run tries)
                passes += 1
                prepare_rails(rails)  # may fetch WeChat's certificate: before the claim's transaction
                with unit_of_work():
                    batch = claim_batch(rails, clock(), settings)
                start_by = time.monotonic() + settings.lease.total_seconds() / 2
                for job in batch.jobs:
                    fault_point("after_claim_commit")
                    outcome: Future = Future()  # set once the answer is committed (or the payout released)
                    work = pools[job.rail].submit(
                        _call_and_record, app, job, rails[job.rail], recorder, limiter, clock, start_by, outcome, gate
                    )
                    running[outcome] = (job, work)
                if stop_at is not None and time.monotonic() >= stop_at:
                    break
                if batch.rows < settings.batch:  # all that was due is taken: the next claim after these calls
                    if not batch.rows and not running:
                        break
                    _collect(running, outcomes, keep=0)
                else:
                    _collect(running, outcomes, keep=settings.batch // 2)
            _collect(running, outcomes, keep=0)
        finally:
            for _, work in running.values():
                work.cancel()  # a crash here: calls not started yet are not made (answers handed over are recorded)
    return outcomes


def _collect(running: dict, outcomes: Counter, keep: int) -> None:
    """Wait until at most ``keep`` payouts are still queued, in flight or being recorded, counting the outcomes
    of the others (an outcome is counted once its answer is committed)."""
    while len(running) > keep:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for work in done:
            job, _ = running.pop(work)
            try:
                outcomes[work.result()] += 1
            except Exception:  # the lease brings it back to a query, as after a crash; the others go on
                log.exception("payout call failed", extra={"payout_id": job.payout_id})
                outcomes["error"] += 1


STOPPED = "rail_stopped"  # a claimed payout put back untouched: its rail was paused or switched off since the claim
RAIL_RECHECK_S = 1.0  # a run's calls re-read their rail's switch at most this often


class _RailGate:
    """Whether a run may still call a rail: a batch is claimed on the rails that were on, but its calls go out over
    seconds. A rail an answer paused (``NOT_ENOUGH``) is stopped for the rest of the run at once, and a rail's switch
    is read again before its calls at most every ``RAIL_RECHECK_S`` (an operator's switch, another process's pause):
    the payouts claimed before either are put back untouched (``release``), never sent on a stopped rail."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        self._stopped: set[str] = set()
        self._read_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def stop(self, rail: str) -> None:
        with self._lock:
            self._stopped.add(rail)

    def check(self, rail: str, *, read: bool = True) -> None:
        """Raises ``RailStopped`` when the rail is stopped; ``read``: its switch read again when due (the read's
        transaction ended before this returns: a WeChat call follows)."""
        with self._lock:
            if rail in self._stopped:
                raise RailStopped(f"{rail} was paused or switched off after the claim")
            last = self._read_at.get(rail)
            read = read and (last is None or time.monotonic() - last >= RAIL_RECHECK_S)
            if read:
                self._read_at[rail] = time.monotonic()
        if not read:
            return
        try:
            on = rail_on_now(rail, self.clock())
        finally:
            db.session.rollback()
        if not on:
            self.stop(rail)
            raise RailStopped(f"{rail} was paused or switched off after the claim")


class _RailPools:
    """One small thread pool per rail, made on first use and shut down with the dispatcher."""

    def __init__(self, rails: dict[str, RailAdapter], calls_in_flight: int) -> None:
        self.rails, self.calls_in_flight = rails, max(1, calls_in_flight)
        self.pools: dict[str, ThreadPoolExecutor] = {}

    def __enter__(self) -> _RailPools:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)

    def __getitem__(self, rail: str) -> ThreadPoolExecutor:
        if rail not in self.pools:
            size = max(1, min(self.calls_in_flight, self.rails[rail].rate_per_second))
            self.pools[rail] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"payout-{rail}")
        return self.pools[rail]


class _Recorder:
    """Records the rails' answers a few to a transaction (group commit), on threads of its own.

    A call thread hands its answer over (``record`` returns a future at once) and goes on to its next payout;
    the future ends when the answer is committed (or with its error). Each recorder thread takes every answer
    waiting (up to ``most``) and records them in one transaction, their payouts locked by one SELECT: one
    commit and one connection checkout for the group, not one per payout. If the group fails, each answer is
    recorded alone, so one bad answer fails only itself; an answer's future ends exactly once. A crash
    before the commit loses the group's answers: their payouts are still ``sending`` under their leases,
    which bring them back to a query (never a resend unasked). ``__exit__`` records every answer handed
    over before it returns. No WeChat call is made here, so no transaction is open across one.
    """

    def __init__(self, app: Flask, settings: DispatchSettings, threads: int = 3, most: int = 32) -> None:
        self.app, self.settings, self.most = app, settings, most
        self.waiting: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._run, name=f"payout-recorder-{n}", daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> _Recorder:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for _ in self.threads:
            self.waiting.put(None)
        for thread in self.threads:
            thread.join()

    def record(self, job: Claimed, calls: list, at: datetime) -> Future:
        """Queue one answer; the future ends once it is committed (``None``) or with the record's error."""
        done: Future = Future()
        self.waiting.put((job, calls, at, done))
        return done

    def _run(self) -> None:
        with self.app.app_context():
            while True:
                first = self.waiting.get()
                if first is None:
                    return
                group = [first]
                while len(group) < self.most:
                    try:
                        more = self.waiting.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self.waiting.put(None)  # another thread's (or this one's next) stop
                        break
                    group.append(more)
                try:
                    self._record(group)
                except BaseException as exc:  # noqa: BLE001 - never leave an answer's future without an end
                    for *_, done in group:
                        if not done.done():
                            done.set_exception(exc)
                finally:
                    db.session.remove()

    def _record(self, group: list) -> None:
        def recorded() -> None:
            fault_point("before_record_commit")
            with unit_of_work():
                record_group([(job, calls, at) for job, calls, at, _ in group], self.settings)

        try:
            # WeChat's answers are in hand: a database busy for a while (a job holding SQLite's write lock) is waited
            # for again, as a call's record step is; dropped at once, a transfer WeChat took waited for its lease to
            # run out and a query
            while_busy(recorded)
        except Exception as exc:
            if len(group) == 1:
                self._failed(group[0], exc)
                return
            for job, calls, at, done in group:  # one at a time: only the bad answer fails
                try:
                    with unit_of_work():
                        record(job, calls, at, self.settings)
                except Exception as alone:  # noqa: BLE001 - handed to the call thread, which logs it
                    self._failed((job, calls, at, done), alone)
                else:
                    done.set_result(None)
            return
        for *_, done in group:
            done.set_result(None)

    def _failed(self, answer: tuple, error: Exception) -> None:
        """An answer that could not be recorded: noted on its payout, then its error handed to the call thread."""
        job, _, at, done = answer
        _note_failure(self.app, job, f"the answer could not be recorded: {error!r}", at, self.settings)
        done.set_exception(error)


def _note_failure(app: Flask, job: Claimed, why: str, at: datetime, settings: DispatchSettings) -> None:
    """A call or a record that raised, noted on its payout in a transaction of its own: it stays ``sending`` under
    its lease (the next pass queries it) and, once its attempts are used, an operator looks rather than the
    lease bringing it back forever (``payouts.record.unrecorded``)."""
    with app.app_context():
        try:
            with unit_of_work():
                record_failed(job, why, at, settings)
        except Exception:  # the lease still brings it back to a query
            log.exception("payout failure not noted", extra={"payout_id": job.payout_id})
        finally:
            db.session.remove()


def _call_and_record(
    app: Flask,
    job: Claimed,
    rail: RailAdapter,
    recorder: _Recorder,
    limiter: Callable[..., None],
    clock: Callable[[], datetime],
    start_by: float,
    outcome: Future,
    gate: _RailGate,
) -> None:
    """On a rail's thread: each call after its own turn in the rail's rate, then the answer handed to the recorder.

    The calls come first, in a fresh app context whose session has no transaction (the WeChat session
    checks); then the answer goes to the recorder and this thread is free for the next payout at once.
    ``outcome`` ends with the payout's outcome once its answer is committed (``released``: no call could
    start in time, the payout put back), or with the error of the call or of its record.
    """
    try:
        result = _call_and_hand_over(app, job, rail, recorder, limiter, clock, start_by, gate)
    except Exception as exc:  # a call that raised (an answer the rail could not read, say): noted, then raised
        _note_failure(app, job, f"the call raised: {exc!r}", clock(), recorder.settings)
        outcome.set_exception(exc)
        return
    except BaseException as exc:  # noqa: BLE001 - the dispatcher's thread raises it (a simulated crash too)
        outcome.set_exception(exc)
        return
    if isinstance(result, str):
        outcome.set_result(result)
        return
    answer, recorded = result

    def committed(record: Future) -> None:
        error = record.exception()
        if error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(answer)

    recorded.add_done_callback(committed)


def _call_and_hand_over(
    app: Flask,
    job: Claimed,
    rail: RailAdapter,
    recorder: _Recorder,
    limiter: Callable[..., None],
    clock: Callable[[], datetime],
    start_by: float,
    gate: _RailGate,
) -> str | tuple[str, Future]:
    calls: list = []
    first: list[datetime] = []

    def in_time(name: str) -> None:
        # Half the lease is the latest a call may start (whatever held it up: calls before it on this thread, a slow
        # limiter): a call started later may outlive the lease, and another dispatcher may have taken the payout
        # over meanwhile (queried it, cancelled it) and then this call would send what was cancelled.
        if time.monotonic() > start_by:
            raise RailBusy(f"{name}: the call could not start within half of its payout's lease")

    def wait_turn(name: str) -> None:
        gate.check(name)  # paused or switched off since the claim: no call (its switch read, no transaction left)
        in_time(name)
        try:
            granted_at = limiter(name, until=start_by)
        except RailBusy:
            raise
        except Exception as exc:  # e.g. Redis unreachable: no turn, so no call
            raise RailBusy(f"no turn for {name}: {exc!r}") from exc
        in_time(name)  # (a turn that came late is not used: it only costs the rate one call)
        gate.check(name, read=False)  # paused by an answer while this call waited for its turn
        if not first:  # the payout's send (or query) time: the moment the rail's window counts its first call at
            first.append(datetime.fromtimestamp(granted_at, UTC) if granted_at else clock())

    with app.app_context():
        try:
            try:
                call_wechat(job, rail, wait_turn, calls)
            except RailBusy as busy:
                log.warning("payout call not made", extra={"payout_id": job.payout_id, "why": str(busy)})
                with unit_of_work():
                    release(job, calls, first[0] if first else clock())
                return STOPPED if isinstance(busy, RailStopped) else "released"
            if calls[-1][1].outcome == Outcome.PAUSE_RAIL:  # NOT_ENOUGH: no more calls on this rail this run
                gate.stop(job.rail)
            fault_point("after_wechat_answer")
            return calls[-1][1].outcome, recorder.record(job, calls, first[0] if first else clock())
        finally:
            db.session.remove()


def dispatch_payouts() -> Counter:
    """The scheduled job: the whole backlog, at each rail's calls per second, for at most a minute a run."""
    app = current_app._get_current_object()
    cfg = app.config
    rails = payout_rails(app)
    settings = DispatchSettings.from_config(cfg)
    return dispatch_backlog(
        rails,
        settings=settings,
        limiter=dispatch_limiter(rails, cfg.get("REDIS_URL"), settings, mchid=cfg.get("WECHAT_MCHID")),
        calls_in_flight=cfg.get("PAYOUT_CALLS_IN_FLIGHT", 1),
        max_seconds=DISPATCH_RUN_SECONDS,
    )


# -- red packets nobody opened --------------------------------------------------------------


CLAIM_CHECK_BATCH = 50  # red packets read per batch of the claim check
CLAIM_CHECK_SECONDS = 60.0  # one run's longest stretch (the next run, 15 minutes later, goes on)


def check_unclaimed(
    rail: RailAdapter,
    now: datetime,
    clock: Callable[[], datetime] | None = None,
    max_seconds: float = CLAIM_CHECK_SECONDS,
) -> Counter:
    """One run: close packets past the query window, then query each due packet and record its answer, a batch
    after another while batches come full (for at most ``max_seconds``): one batch of 50 a run was 4,800 packets a
    day at most, so a busier day's packets waited ever longer for their money to come back, until past WeChat's
    30-day window. Each batch reads past the last (``after``): each packet is asked once a run, and packets WeChat
    keeps answering "not final" never keep the ones sent after them from being asked."""
    outcomes: Counter = Counter()
    stop_at = time.monotonic() + max_seconds
    for payout_id, _ in _batches(lambda after: unclaimed.expired_checks(now, CLAIM_CHECK_BATCH, after), stop_at):
        try:
            with unit_of_work():
                if unclaimed.close_expired(payout_id, now):
                    outcomes[Outcome.ASK_OPERATOR] += 1
        except Exception as exc:  # one packet that cannot be closed must not stop the others
            row_failed("payout_claim_check_failed", "payout", payout_id, exc)
            outcomes["error"] += 1
    at = clock or (lambda: now)
    due = _batches(lambda after: unclaimed.due_checks(now, CLAIM_CHECK_BATCH, after), stop_at)
    for payout_id, external_no, request, _ in due:
        try:
            outcomes[_check_packet(rail, payout_id, external_no, request, at).outcome] += 1
        except Exception as exc:  # one packet's answer that cannot be recorded must not keep the others' money back
            row_failed("payout_claim_check_failed", "payout", payout_id, exc)
            outcomes["error"] += 1
    return outcomes


def _batches(read: Callable, stop_at: float) -> Iterator:
    """The rows of ``read(after)`` batch after batch (each read in its own transaction), each batch past the last
    row of the one before (a row's id first, its sent_at last: the keyset), while batches come full and until
    ``stop_at`` (``time.monotonic()``): each row once a run."""
    after = None
    while True:
        with unit_of_work():
            batch = read(after)
        yield from batch
        if len(batch) < CLAIM_CHECK_BATCH or time.monotonic() >= stop_at:
            return
        after = (batch[-1][-1], batch[-1][0])


def row_failed(kind: str, what: str, row_id: int | str, error: Exception) -> None:
    """One row of a job failed (its transaction is rolled back): logged with its id, an operator told once; the
    job goes on with the next row. A database only busy (a lock held past the timeout) is no fault: the row waits
    for the next run, said as a warning (``jobs.scheduler.in_app`` says a busy job's run so), nobody paged."""
    db.session.rollback()
    if is_busy(error):
        log.warning("%s %s deferred: database busy", what, row_id, extra={f"{what}_id": row_id, "error": repr(error)})
        row_busy(kind, what, row_id)  # busy run after run: jobs.scheduler.in_app alerts (row_stuck_busy)
        return
    try:
        with unit_of_work():
            row_failure(kind, what, row_id, error)
    except Exception:  # the database away too: the row's failure in the log, and why no alert
        log.error("%s %s failed", what, row_id, exc_info=error, extra={f"{what}_id": row_id})
        log.exception("alert not raised", extra={f"{what}_id": row_id})


def _check_packet(rail: RailAdapter, payout_id: int, external_no: str, request: dict, at) -> RailResult:
    """Query one packet (nothing to fix first: its number and request are stored), then record the answer."""

    def record_answer(_: None, answer: RailResult) -> RailResult:
        unclaimed.record_check(payout_id, request, answer, at())
        if answer.outcome == Outcome.UNCLAIMED:  # its money is back in the person's balance: they are told
            enqueue_many([failed_draft(db.session.get(Payout, payout_id), "unclaimed")])
        return answer

    return call_between_commits(
        lambda: None, lambda _: unclaimed.as_check(rail.query(external_no, request)), record_answer
    )


def check_unclaimed_red_packets() -> Counter:
    """Red packets past WeChat's 24-hour refund time: opened (done) or refunded (back to the balance)."""
    rail = payout_rails(current_app._get_current_object()).get(Rail.CASH_RED_PACKET)
    return check_unclaimed(rail, utcnow(), clock=utcnow) if rail else Counter()


def settle_covered_debts() -> Counter:
    """What people's balances have covered of their receivables since (``rebate.covered_debts``): a payout returned
    to the balance, a red packet nobody opened, a stake back. Everyone who owes, one person per transaction."""
    point_value_fen = job_context().money.point_value_fen
    result: Counter = Counter()
    after = 0
    while people := people_owing(after):
        for user_id in people:
            try:
                with unit_of_work():
                    settled = settle_covered(user_id, point_value_fen)
            except Exception as exc:  # one person who cannot be settled must not stop everyone after them
                row_failed("covered_debt_failed", "user", user_id, exc)
                result["failed"] += 1
                continue
            if settled:
                result["people"] += 1
                result["settled_fen"] += settled
        if len(people) < SWEEP:
            break
        after = people[-1]
    return result


def deliver_alerts() -> Counter:
    """Post new alerts to ALERT_WEBHOOK_URL (a WeCom group robot takes this text message)."""
    url = current_app.config.get("ALERT_WEBHOOK_URL")
    if not url:
        return Counter()
    pending = db.session.execute(select(Alert).where(Alert.notified_at.is_(None)).order_by(Alert.id).limit(20))
    alerts = [(a.id, f"[{a.kind}] {a.subject}: {a.message}") for a in pending.scalars()]
    db.session.rollback()  # no transaction open during the HTTP calls
    sent = Counter()
    for alert_id, text in alerts:
        try:
            answer = requests.post(
                url, json={"msgtype": "text", "text": {"content": _webhook_text(text)}}, timeout=(3, 5)
            )
            answer.raise_for_status()
            body = answer.json() if answer.content else {}
            if isinstance(body, dict) and body.get("errcode", 0) != 0:  # WeCom answers 200 with an errcode
                raise requests.RequestException(f"webhook errcode {body.get('errcode')}")
        except (requests.RequestException, ValueError):
            log.warning("alert webhook unreachable", extra={"alert_id": alert_id})
            sent["failed"] += 1
            continue
        db.session.get(Alert, alert_id).notified_at = utcnow()
        db.session.commit()
        sent["sent"] += 1
    return sent


def _webhook_text(text: str) -> str:
    """An alert's text within what a WeCom robot takes (``WEBHOOK_TEXT_BYTES`` of UTF-8, not characters: a long
    Chinese reason was refused with an errcode at every run, never delivered)."""
    data = text.encode("utf-8")
    return text if len(data) <= WEBHOOK_TEXT_BYTES else data[: WEBHOOK_TEXT_BYTES - 3].decode("utf-8", "ignore") + "…"


# -- reconciliation ----------------------------------------------------------------------


def reconcile_day(
    pay_client: PayClient,
    bill_date: date | str,
    now: datetime,
    *,
    service_provider: bool = False,
    account_type: str = "BASIC",
    tar_type: str | None = "GZIP",
    step: Callable[[str], None] = lambda _: None,
) -> list:
    """Reconcile one finished Beijing day; returns the trade runs and the fund-flow run.

    Runs marked ``running`` (commit) → the bills fetched with no transaction open → results written
    (commit). A bill that cannot be fetched, verified or parsed fails its run and records nothing else.
    ``service_provider`` (``FUND_FLOW=service_provider``): a trade bill per sub-merchant instead of ours.
    ``step`` hears of each phase in words (``flask jobs reconcile`` prints them on stderr).
    """
    day = reconcile.bill_day(bill_date, now)
    fetched: dict[str, list] = {}

    def start() -> list[str]:
        step(f"{day}: marking the trade and fund-flow runs")
        subs = reconcile.sub_merchants_to_reconcile(day) if service_provider else [reconcile.OURS]
        reconcile.start_runs(day, now, subs)
        return subs

    def fetch(subs: list[str]) -> list:
        what = f"{len(subs)} sub-merchants' trade bills and the fund-flow bill" if service_provider else "both bills"
        step(f"{day}: downloading {what} from WeChat")
        fetched["bills"] = reconcile.fetch_bills(
            pay_client,
            day,
            sub_mchids=subs,
            account_type=account_type,
            tar_type=tar_type,
            number_prefix=MoneySettings.from_config(current_app.config).number_prefix,  # our payouts' numbers
        )
        return fetched["bills"]

    def write(_: list[str], bills: list) -> list:
        step(f"{day}: matching the bills against our orders, refunds and payouts")
        return reconcile.write_results(day, bills, now)

    try:
        return call_between_commits(start, fetch, write)
    except IntegrityError:  # another node wrote the same rows first: redo on top of theirs
        if "bills" not in fetched:
            raise
        with unit_of_work():
            return reconcile.write_results(day, fetched["bills"], now)


def run_daily_checks(
    pay_client: PayClient, now: datetime, *, point_value_fen: int, service_provider: bool = False
) -> DailyChecks:
    """Reconcile yesterday (Beijing), then the earlier days of the week no run reconciled (``days_to_catch_up``:
    the jobs were down at 10:30, a bill was not ready), and check the ledger, alerting on violations."""
    yesterday = reconcile.beijing(now).date() - timedelta(days=1)
    runs = reconcile_day(pay_client, yesterday, now, service_provider=service_provider)
    with unit_of_work():
        missed = reconcile.days_to_catch_up(yesterday, now)
    for day in missed:
        try:
            reconcile_day(pay_client, day, now, service_provider=service_provider)
        except Exception:  # that day's runs and alerts say what failed; yesterday's stand, the ledger is checked
            db.session.rollback()
            log.exception("reconciliation: catching up a missed day failed", extra={"bill_date": day.isoformat()})
    with unit_of_work():
        report = reconcile.check_ledger_and_alert(point_value_fen)
    return DailyChecks(runs, report, missed)


def daily_reconciliation() -> Counter:
    ctx = job_context()
    checks = run_daily_checks(
        ctx.pay,
        utcnow(),
        point_value_fen=ctx.config["POINT_VALUE_FEN"],
        service_provider=ctx.config.get("FUND_FLOW") == "service_provider",
    )
    return Counter(
        runs=len(checks.runs), caught_up=len(checks.caught_up), ledger_violations=len(checks.ledger.violations)
    )
