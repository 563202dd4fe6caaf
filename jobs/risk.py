"""Risk jobs: the collusion graph (hourly), spike alerts (every few minutes; each whole hour folded once) and
the end of timed bans (every minute), the release of what a lifted ban held (every half minute, a batch of orders
per transaction) and the behaviour trail's retention (daily).

Both are safe on several nodes at once. ``collusion_job`` reads the graph, ends that read transaction,
finds and scores the communities with no transaction open, then records them in one short transaction:
a community is stored once (unique fingerprint, ``ON CONFLICT DO NOTHING``) and its case opened once
(unique ``review_cases.community_id``). ``spike_job`` moves the ``_all`` baseline row on with a conditional
UPDATE, so one node folds an hour and the others find it done; a spike of a campaign with
``spike_auto_pause`` also pauses it (``rebate.campaign_ops.transition``), audited as the system.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from time import monotonic
from typing import Any

from sqlalchemy import and_, func, or_, select

from jobs.payouts import job_context, row_failed
from models import AuditLog, Campaign, CampaignStatus, Operator, OperatorRole, alert_once, db, unit_of_work, utcnow
from models.alerts import resolve_alerts
from models.operators import Actor
from payouts import MoneySettings
from rebate import ban_ops, campaign_ops
from rebate.errors import RebateError
from rebate.orders import fill_order_networks
from risk.communities import GraphSettings, build_graph, record_communities, score_graph
from risk.spikes import Spike, SpikeSettings, fold_hours
from risk.trail import purge_events

log = logging.getLogger(__name__)


def graph_settings(config: Mapping[str, Any]) -> GraphSettings:
    return GraphSettings(days=config["RISK_GRAPH_DAYS"], threshold=config["RISK_COMMUNITY_THRESHOLD"])


def spike_settings(config: Mapping[str, Any]) -> SpikeSettings:
    return SpikeSettings(
        alpha=config["RISK_SPIKE_ALPHA"],
        sigma=config["RISK_SPIKE_SIGMA"],
        min_count=config["RISK_SPIKE_MIN_COUNT"],
        resume_grace_hours=config["RISK_SPIKE_RESUME_GRACE_HOURS"],
    )


def system_actor() -> Actor:
    """The jobs acting on their own: a platform actor with no operator row (the audit line's operator is empty)."""
    return Actor(Operator(username="system", display_name="system (risk jobs)", role=OperatorRole.ADMIN), None)


def run_collusion(now: datetime, settings: GraphSettings) -> Counter:
    graph = build_graph(now, settings)
    db.session.rollback()  # the read is over: no transaction open while Louvain runs
    scored = score_graph(graph, settings)
    with unit_of_work():
        summary = record_communities(scored, now, settings)
    summary.update(nodes=graph.graph.number_of_nodes(), edges=graph.graph.number_of_edges())
    for name in graph.facts.truncated:
        summary[f"truncated:{name}"] += 1
    return summary


def collusion_job() -> Counter:
    """Find, score and store collusion communities; open one case per new suspicious community."""
    return run_collusion(utcnow(), graph_settings(job_context().config))


def _activated_by_a_person(campaign_ids: list[int]) -> dict[int, datetime]:
    """When a person (not the jobs: their audit lines have no operator) last activated each of these campaigns."""
    rows = db.session.execute(
        select(AuditLog.target_id, func.max(AuditLog.created_at))
        .where(
            AuditLog.action == "campaign.activate",
            AuditLog.target_type == "campaign",
            AuditLog.target_id.in_([str(i) for i in campaign_ids]),
            AuditLog.operator_id.is_not(None),
        )
        .group_by(AuditLog.target_id)
    )
    return {int(target): at for target, at in rows}


def pause_spiking(spikes: list[Spike], settings: SpikeSettings | None = None) -> list[int]:
    """Pause the active campaigns among the spikes' whose ``spike_auto_pause`` is on; their ids.

    A spike of an hour that began before a person last activated the campaign (or within the settings'
    ``resume_grace_hours`` after) pauses nothing: that person resumed it knowing of the burst (a catch-up of
    old hours, or the same burst going on), and would otherwise find it paused again every hour. Its alert
    still goes out."""
    grace = timedelta(hours=(settings or SpikeSettings()).resume_grace_hours)
    spiking = sorted({spike.campaign_id for spike in spikes if spike.campaign_id is not None})
    activated = _activated_by_a_person(spiking) if spiking else {}
    by_campaign: dict[int, Spike] = {}
    for spike in spikes:
        at = activated.get(spike.campaign_id)
        if spike.campaign_id is not None and (at is None or spike.hour >= at + grace):
            by_campaign.setdefault(spike.campaign_id, spike)
    if not by_campaign:
        return []
    ids = db.session.execute(
        select(Campaign.id).where(
            Campaign.id.in_(sorted(by_campaign)),
            Campaign.spike_auto_pause.is_(True),
            # paused for its deposit it still awards the packets out: a spike among them is paused for good
            or_(
                Campaign.status == CampaignStatus.ACTIVE,
                and_(Campaign.status == CampaignStatus.PAUSED, Campaign.paused_for_deposit.is_(True)),
            ),
        )
    ).scalars()
    paused = []
    actor = system_actor()
    for campaign_id in sorted(ids):
        reason = f"spike auto-pause: {by_campaign[campaign_id].message}"
        try:
            campaign_ops.transition(actor, campaign_id, "pause", reason)
        except RebateError as exc:  # changed state meanwhile: nothing to pause
            log.warning("spike auto-pause skipped", extra={"campaign_id": campaign_id, "error": str(exc)})
            continue
        paused.append(campaign_id)
    return paused


def run_spikes(now: datetime, settings: SpikeSettings) -> Counter:
    with unit_of_work():
        spikes = fold_hours(now, settings)
        paused = pause_spiking(spikes, settings)
    return Counter(spikes=len(spikes), paused=len(paused))


def spike_job() -> Counter:
    """Fold the hours completed since the last run into the spike baselines; alert (and auto-pause) on spikes."""
    return run_spikes(utcnow(), spike_settings(job_context().config))


EXPIRED_BANS_BATCH = 500


def lift_expired_bans(now: datetime, batch: int = EXPIRED_BANS_BATCH, *, money: MoneySettings | None = None) -> Counter:
    """Every ban past its end lifted in its own transaction: one whose lift fails is rolled back, logged and alerted
    once (``ban_lift_failed``), and the others are lifted all the same (it is tried again on the next run)."""
    money = money or job_context().money  # a person active again is paid the milestones met meanwhile
    outcomes: Counter = Counter(lifted=0)
    after = 0
    while True:
        with unit_of_work():
            due = ban_ops.expired_ban_ids(now, batch, after)
        for ban_id in due:
            try:
                with unit_of_work():
                    outcomes["lifted"] += ban_ops.lift_expired(ban_id, now, money=money)
            except Exception as exc:  # one ban that cannot be lifted must not keep the others in force
                row_failed("ban_lift_failed", "ban", ban_id, exc)
                outcomes["error"] += 1
        if len(due) < batch:
            return outcomes
        after = due[-1]


def lift_expired_bans_job() -> Counter:
    """Bans past their end are lifted and their effects undone (a person active again, a merchant no longer
    suspended), each ban in its own transaction; several nodes at once lift each ban once (under its row lock)."""
    return lift_expired_bans(utcnow())


RELEASE_BATCH = 500  # orders of a lifted ban's release per transaction
RELEASE_RUN_SECONDS = 50  # a run goes on while releases have orders left, up to this (the next run goes on)


def release_lifted_bans(
    now: datetime | None = None, *, batch: int | None = None, money: MoneySettings | None = None
) -> Counter:
    """The releases of lifted bans still running (``rebate.ban_ops.release_batch``), a batch of ``RELEASE_BATCH``
    orders per transaction, until each is done or the run's time is up. A batch that fails is rolled back, alerted
    once (``ban_release_failed``) and tried again next run, from the same order (nothing of it was kept); the other
    releases go on. A release with no batch for ``ban_ops.RELEASE_STALLED_AFTER`` is alerted
    (``ban_release_stalled``), resolved when it ends. Several nodes at once: each batch holds its ban's row, and
    another node's run skips that ban meanwhile (each order walked once)."""
    money = money or job_context().money
    batch = batch or RELEASE_BATCH
    ends = monotonic() + RELEASE_RUN_SECONDS
    outcomes: Counter = Counter(orders=0)
    with unit_of_work():
        ban_ids = ban_ops.releasing_ban_ids()
    for ban_id in ban_ids:
        while monotonic() < ends:
            at = now or utcnow()
            try:
                with unit_of_work():
                    done = ban_ops.release_batch(ban_id, at, batch, money=money)
                    if done is not None and not done.more:
                        resolve_alerts("ban_release_stalled", f"ban {ban_id}")
            except Exception as exc:  # one release that fails must not hold up the others
                row_failed("ban_release_failed", "ban", ban_id, exc)
                outcomes["error"] += 1
                break
            if done is None:  # ended meanwhile, or another node's batch holds it: that node goes on
                break
            outcomes["batches"] += 1
            outcomes["orders"] += done.orders
            outcomes["paid_fen"] += done.paid_fen
            if not done.more:
                outcomes["released"] += 1
                break
    with unit_of_work():
        for ban in ban_ops.stalled_releases(now or utcnow()):
            outcomes["stalled"] += 1
            alert_once(
                "ban_release_stalled",
                f"ban {ban.id}",
                text=f"the release of what ban {ban.id} ({ban.subject} {ban.value}) held has not moved since "
                f"{(ban.release_moved_at or ban.lifted_at):%Y-%m-%d %H:%M} UTC: {ban.release_orders} orders "
                f"walked; see GET /admin/api/bans/{ban.id} and the ban_release_failed alerts",
            )
    return outcomes


def release_lifted_bans_job() -> Counter:
    """Lifted bans' held rebates released, a batch of orders per transaction (``release_lifted_bans``)."""
    return release_lifted_bans()


FILL_BATCHES = 20  # batches of ``fill_order_networks`` per run, each its own transaction


def fill_order_networks_job() -> Counter:
    """Orders written before their network was kept (migration 0046) get it, a thousand per transaction, up to
    ``FILL_BATCHES`` a run: once they are all filled each run is one empty look through a partial index. Several nodes
    at once fill disjoint orders (the rows are locked, skipping those another holds)."""
    filled = 0
    for _ in range(FILL_BATCHES):
        with unit_of_work():
            done = fill_order_networks()
        filled += done
        if done == 0:
            break
    return Counter(filled=filled)


def purge_behaviour_events_job() -> Counter:
    """Behaviour events older than ``RISK_EVENTS_KEEP_DAYS`` deleted in batches, each its own short transaction
    (several nodes at once delete disjoint or already-gone rows: nothing twice, nothing wrong)."""
    try:
        keep_days = job_context().config["RISK_EVENTS_KEEP_DAYS"]
        return Counter(purged=purge_events(utcnow(), keep_days, commit=db.session.commit))
    except BaseException:
        db.session.rollback()
        raise
