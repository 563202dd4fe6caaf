"""Profit-sharing jobs (service-provider mode): share the orders whose refund window closed, follow up the results.

``share_due_orders``: opens a share for every paid profit-sharing order, fetches the maximum ratio of the
sub-merchants about to share (no transaction open), claims due shares (``FOR UPDATE SKIP LOCKED``; the first
claim plans each share and fixes its body), commits, then for each share adds the missing receivers and POSTs
it with no transaction open, and records the answer in a new transaction. A ratio WeChat refuses for good (not a
timeout nor a frequency limit: a sub-merchant that ended its authorisation of the service provider, say) alerts an
operator once (``profit_share_ratio_refused``): its shares can never be planned.
Before anything else it books the shares never sent whose order's money WeChat has unfrozen to the merchant by itself,
180 days after the payment (``release_lapsed``), whether the rail is switched on or not.
Every share not finished a week before that deadline warns an operator once (``warn_frozen_deadline``), rail on or
off.
``query_profit_shares``: the shares WeChat is still working on (results are asynchronous), and any whose
answer was lost, queried by their number before anything is sent again.

Both do nothing unless ``FUND_FLOW=service_provider``. While an operator has the rail switched off nothing is sent,
but shares WeChat may hold are still asked about (a query is not a new share: the books follow WeChat's answers).
"""

from __future__ import annotations

import logging
from collections import Counter

from jobs.payouts import job_context
from models import alert_once, db, unit_of_work, utcnow
from payouts import profit_share
from payouts.profit_share import ShareSettings
from wechat.errors import WeChatError, WeChatRateLimited
from wechat.profitsharing import ProfitSharingClient

log = logging.getLogger(__name__)


def _context() -> tuple[ShareSettings, ProfitSharingClient] | None:
    ctx = job_context()
    if ctx.config.get("FUND_FLOW") != "service_provider":
        return None
    settings = ShareSettings.from_config(ctx.config)
    return settings, ProfitSharingClient(ctx.pay, settings.sp_appid)


def share_due_orders() -> Counter:
    """Open, plan and send the shares of orders whose refund window has closed."""
    context = _context()
    if context is None:
        return Counter()
    settings, client = context
    outcomes: Counter = Counter()
    with unit_of_work():
        outcomes["opened"] = profit_share.open_shares(utcnow(), settings)
        # WeChat unfroze these orders' money by itself: booked whether the rail is on or not
        outcomes["lapsed"] = profit_share.release_lapsed(utcnow())
        outcomes["too_late"] = profit_share.strand_late_payouts()
        rail_on = profit_share.rail_enabled(utcnow())
        # every share not finished a week before that deadline warns an operator once, rail on or off
        outcomes["deadline_near"] = profit_share.warn_frozen_deadline(utcnow(), rail_on)
        if not rail_on:
            outcomes["rail_off"] += 1
            return +outcomes
        wanted = profit_share.ratios_to_fetch(utcnow(), settings)
    ratios, refused = {}, {}
    for sub_mchid in wanted:  # no transaction open: WeChat is asked
        try:
            ratios[sub_mchid] = client.max_ratio_bps(sub_mchid)
        except WeChatError as exc:
            log.warning("profit sharing ratio not fetched", extra={"sub_mchid": sub_mchid, "code": exc.code})
            outcomes["ratio_unavailable"] += 1
            if not exc.outcome_unknown and not isinstance(exc, WeChatRateLimited):
                refused[sub_mchid] = exc
    with unit_of_work():
        for sub_mchid, ratio in ratios.items():
            profit_share.store_ratio(sub_mchid, ratio, utcnow())
        for sub_mchid, exc in refused.items():  # its shares are never planned until an operator sees to it
            alert_once(
                "profit_share_ratio_refused",
                sub_mchid,
                text=f"WeChat refuses sub-merchant {sub_mchid}'s maximum profit-sharing ratio ({exc.code}: "
                f"{exc.message}): its orders' shares wait, unplanned, and WeChat unfreezes their money to the "
                "merchant after 180 days (is its authorisation of the service provider still in force?)",
            )
    outcomes.update(_run(settings, client, querying=False))
    return +outcomes


def query_profit_shares() -> Counter:
    """Ask WeChat about the shares it is working on, or whose answer was lost."""
    context = _context()
    if context is None:
        return Counter()
    settings, client = context
    with unit_of_work():
        rail_on = profit_share.rail_enabled(utcnow())
    # a query is not a new share: asked with the rail off too (WeChat finishes what it holds, and unfreezes the
    # rest 180 days after the payment regardless), only nothing is sent then
    outcomes = _run(settings, client, querying=True, may_send=rail_on)
    if not rail_on:
        outcomes["rail_off"] += 1
    return outcomes


def _run(settings: ShareSettings, client: ProfitSharingClient, *, querying: bool, may_send: bool = True) -> Counter:
    outcomes: Counter = Counter()
    with unit_of_work():
        jobs = profit_share.claim(utcnow(), settings, client, querying=querying, may_send=may_send)
    for job in jobs:
        result = profit_share.call(job, client)  # no transaction open
        try:
            with unit_of_work():
                outcomes[profit_share.record(job, result, utcnow(), settings)] += 1
        except Exception:  # its lease ends and the next pass queries it
            log.exception("profit share not recorded", extra={"share": job.out_order_no})
            outcomes["not_recorded"] += 1
        finally:
            db.session.remove()
    return outcomes
