"""Payout jobs: the dispatcher, expiries, alert delivery and the daily reconciliation.

The rails are built from the app's WeChat clients and configuration; a rail
whose settings are missing is simply not dispatched (its payouts wait, and
the operator API shows them). Rate limits per rail come from
``PAYOUT_RATE_LIMITS`` through the ``limits`` library, on Redis when
``REDIS_URL`` is set (shared by every node) and in memory otherwise.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter

import requests
from flask import current_app
from limits import RateLimitItemPerSecond, storage, strategies
from sqlalchemy import select

from models import Alert, db, utcnow
from models.payouts import Rail
from payouts.card_rail import CardRail
from payouts.coupon_rail import CouponRail
from payouts.dispatch import dispatch_due
from payouts.reconcile import run_daily_checks
from payouts.record import DispatchSettings
from payouts.redpack_rail import RedpackRail
from payouts.transfer_rail import TransferRail
from payouts.unclaimed import check_unclaimed
from rebate.milestones import expire_held_rebates
from rebate.packets import expire_due_packets
from wechat.mp import get_api_ticket
from wechat.redpack import RedpackClient

log = logging.getLogger(__name__)


def build_rails(app) -> dict:
    cfg, wx = app.config, app.extensions["wechat"]
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
    if cfg.get("WECHAT_API_V2_KEY") and cfg.get("WECHAT_OA_APPID"):
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
    if cfg.get("WECHAT_COUPON_STOCKS"):
        rails[Rail.WECHAT_COUPON] = CouponRail(
            wx.pay,
            appid=cfg["WECHAT_APPID"],
            stock_creator_mchid=cfg["WECHAT_MCHID"],
            stocks=cfg["WECHAT_COUPON_STOCKS"],
            rate_per_second=rates.get(Rail.WECHAT_COUPON, 500),
        )
    if cfg.get("WECHAT_CARD_ID") and cfg.get("WECHAT_OA_APPID"):
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


def payout_rails(app) -> dict:
    """The rails, built once per app (the scheduler builds them at start-up, so bad settings show there)."""
    if "payout_rails" not in app.extensions:
        app.extensions["payout_rails"] = build_rails(app)
    return app.extensions["payout_rails"]


def dispatch_payouts() -> Counter:
    app = current_app._get_current_object()
    rails = payout_rails(app)
    settings = DispatchSettings.from_config(app.config)
    return dispatch_due(rails, settings=settings, limiter=rail_limiter(rails, app.config.get("REDIS_URL")))


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


def daily_reconciliation() -> Counter:
    checks = run_daily_checks(current_app.extensions["wechat"].pay, utcnow())
    return Counter(runs=len(checks.runs), ledger_violations=len(checks.ledger.violations))
