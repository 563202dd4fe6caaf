"""Payout jobs: the dispatcher, expiries, alert delivery and the daily reconciliation.

The jobs own the commits of ``payouts``: each pass commits what it prepared,
calls WeChat with no transaction open (the shared WeChat session refuses a call
inside one), then records the answer and commits (``call_between_commits``).
Every job, here and in ``jobs.orders``, reaches the configuration, the money
settings and the WeChat clients through one accessor, :func:`job_context`: the
clients are handed to :func:`install_job_context` at app set-up (never looked
up in the shell's objects). The rails are built from them; a rail whose
settings are missing is simply not dispatched (its payouts wait, and the
operator API shows them). Rate limits per rail come from
``PAYOUT_RATE_LIMITS`` through the ``limits`` library, on Redis when
``REDIS_URL`` is set (shared by every node) and in memory otherwise.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import requests
from flask import Flask, current_app
from limits import RateLimitItemPerSecond, storage, strategies
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import Alert, call_between_commits, db, unit_of_work, utcnow
from models.payouts import Rail
from payouts import reconcile, unclaimed
from payouts.card_rail import CardRail
from payouts.coupon_rail import CouponRail
from payouts.dispatch import call_wechat, claim, prepare_rails, record
from payouts.faults import fault_point
from payouts.rails import Outcome, RailAdapter, RailResult, unconfigured_because
from payouts.reconcile import DailyChecks
from payouts.record import DispatchSettings
from payouts.redpack_rail import RedpackRail
from payouts.settings import MoneySettings
from payouts.transfer_rail import TransferRail
from rebate.milestones import expire_held_rebates
from rebate.packets import expire_due_packets
from wechat.mp import get_api_ticket
from wechat.pay import PayClient
from wechat.redpack import RedpackClient

log = logging.getLogger(__name__)
EXTENSION = "jobs"  # the jobs' own entry in app.extensions


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
            cfg["WECHAT_CARD_ID"], ticket, rate_per_second=rates.get(Rail.CARD_COUPON, 50)
        )
    return rails


@functools.cache
def _limiter(redis_url: str | None) -> strategies.MovingWindowRateLimiter:
    backend = storage.storage_from_string(redis_url) if redis_url else storage.MemoryStorage()
    return strategies.MovingWindowRateLimiter(backend)


def rail_limiter(rails: dict, redis_url: str | None, max_wait_s: float = 5.0):
    """Blocks until the rail has a free call in its one-second window (never more than its rate)."""
    limiter = _limiter(redis_url)

    def wait_for(rail: str) -> None:
        item = RateLimitItemPerSecond(rails[rail].rate_per_second)
        deadline = time.monotonic() + max_wait_s
        while not limiter.hit(item, "payout-rail", rail):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rate limit of {rail} still full after {max_wait_s} s")
            time.sleep(0.02)

    return wait_for


def payout_rails(app: Flask) -> dict[str, RailAdapter]:
    """The app's rails, built once."""
    return job_context(app).rails


# -- the dispatcher ---------------------------------------------------------------------


def dispatch_due(
    rails: dict[str, RailAdapter],
    *,
    settings: DispatchSettings | None = None,
    limiter: Callable[[str], None] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> Counter:
    """One dispatcher pass; returns how many payouts ended in each outcome.

    The claim of the batch is committed before the first call; then each payout is asked about with no
    transaction open and its answer recorded and committed at once (a crash loses at most one answer, and
    the payout's lease brings it back to a query).
    """
    settings = settings or DispatchSettings(money=job_context().money)
    limiter = limiter or (lambda rail: None)
    prepare_rails(rails)  # may fetch WeChat's certificate: before the claim's transaction
    with unit_of_work():
        jobs = claim(rails, clock(), settings)
    outcomes: Counter = Counter()
    for job in jobs:
        fault_point("after_claim_commit")
        calls = call_wechat(job, rails[job.rail], limiter)
        fault_point("after_wechat_answer")
        with unit_of_work():
            record(job, calls, clock(), settings)
        outcomes[calls[-1][1].outcome] += 1
    return outcomes


def dispatch_payouts() -> Counter:
    app = current_app._get_current_object()
    rails = payout_rails(app)
    settings = DispatchSettings.from_config(app.config)
    return dispatch_due(rails, settings=settings, limiter=rail_limiter(rails, app.config.get("REDIS_URL")))


# -- red packets nobody opened --------------------------------------------------------------


def check_unclaimed(rail: RailAdapter, now: datetime, clock: Callable[[], datetime] | None = None) -> Counter:
    """One pass: close packets past the query window, then query each due packet and record its answer."""
    outcomes: Counter = Counter()
    with unit_of_work():
        expired = unclaimed.expired_checks(now)
    for payout_id in expired:
        with unit_of_work():
            if unclaimed.close_expired(payout_id, now):
                outcomes[Outcome.ASK_OPERATOR] += 1
    with unit_of_work():
        due = unclaimed.due_checks(now)
    at = clock or (lambda: now)
    for payout_id, external_no, request in due:
        outcomes[_check_packet(rail, payout_id, external_no, request, at).outcome] += 1
    return outcomes


def _check_packet(rail: RailAdapter, payout_id: int, external_no: str, request: dict, at) -> RailResult:
    """Query one packet (nothing to fix first: its number and request are stored), then record the answer."""

    def record_answer(_: None, answer: RailResult) -> RailResult:
        unclaimed.record_check(payout_id, request, answer, at())
        return answer

    return call_between_commits(
        lambda: None, lambda _: unclaimed.as_check(rail.query(external_no, request)), record_answer
    )


def check_unclaimed_red_packets() -> Counter:
    """Red packets past WeChat's 24-hour refund time: opened (done) or refunded (back to the balance)."""
    rail = payout_rails(current_app._get_current_object()).get(Rail.CASH_RED_PACKET)
    return check_unclaimed(rail, utcnow(), clock=utcnow) if rail else Counter()


def expire_packets_and_conditions() -> Counter:
    now = utcnow()
    result = Counter(packets=expire_due_packets(now), held_rebates=expire_held_rebates(now))
    db.session.commit()
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
            answer = requests.post(url, json={"msgtype": "text", "text": {"content": text[:2000]}}, timeout=(3, 5))
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


# -- reconciliation ----------------------------------------------------------------------


def reconcile_day(
    pay_client: PayClient,
    bill_date: date | str,
    now: datetime,
    *,
    account_type: str = "BASIC",
    tar_type: str | None = "GZIP",
) -> list:
    """Reconcile one finished Beijing day; returns the trade and fund-flow runs.

    Runs marked ``running`` (commit) → both bills fetched with no transaction open → results written
    (commit). A bill that cannot be fetched, verified or parsed fails its run and records nothing else.
    """
    day = reconcile.bill_day(bill_date, now)
    fetched: dict[str, list] = {}

    def fetch(_: None) -> list:
        fetched["bills"] = reconcile.fetch_bills(pay_client, day, account_type=account_type, tar_type=tar_type)
        return fetched["bills"]

    try:
        return call_between_commits(
            lambda: reconcile.start_runs(day, now), fetch, lambda _, bills: reconcile.write_results(day, bills, now)
        )
    except IntegrityError:  # another node wrote the same rows first: redo on top of theirs
        if "bills" not in fetched:
            raise
        with unit_of_work():
            return reconcile.write_results(day, fetched["bills"], now)


def run_daily_checks(pay_client: PayClient, now: datetime) -> DailyChecks:
    """Reconcile yesterday (Beijing) and check the ledger, alerting on violations."""
    runs = reconcile_day(pay_client, reconcile.beijing(now).date() - timedelta(days=1), now)
    with unit_of_work():
        report = reconcile.check_ledger_and_alert()
    return DailyChecks(runs, report)


def daily_reconciliation() -> Counter:
    checks = run_daily_checks(job_context().pay, utcnow())
    return Counter(runs=len(checks.runs), ledger_violations=len(checks.ledger.violations))
