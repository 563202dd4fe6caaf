"""Spike alerts: each campaign's and merchant's hourly claims, redemptions and rebates against their own baseline.

Keys (``spike_baselines.key``): ``campaign:<id>:<metric>`` and ``merchant:<id>:<metric>``, metric one of
``claims`` (``red_packets.claimed_at``; a packet's merchant is where it is spent, else its issuer; not the
packets an audience run issues, ``PUSHED_SOURCES``: an operator's batch, audited, is no burst of people claiming),
``redemptions`` (``red_packets.used_at``, at the order's merchant), ``rebates`` (rebates created with
``original_fen > 0``, at the order's merchant) and ``rebate_fen`` (their sum). Counts are read per whole
hour with one GROUP BY per metric over the hours to fold.

Baseline: an exponentially weighted mean and variance per key (``alpha``, ``RISK_SPIKE_ALPHA``)::

    diff = x - mean;  mean += alpha·diff;  var = (1 - alpha)·(var + alpha·diff²)

(the first hour sets mean = x, var = 0). Before an hour is folded in, it is a spike when the key has
at least ``warmup_hours`` (24) hours behind it, ``x ≥ min_count`` (``RISK_SPIKE_MIN_COUNT``; for
``rebate_fen``, ``min_fen``) and ``x > mean + sigma·sd`` (``RISK_SPIKE_SIGMA``). A spike raises an alert
(``models.raise_alert``, kind ``spike``, delivered by the alerts job) saying e.g. "campaign 3: 140 claims in
2026-11-30 14:00-15:00 Beijing, baseline 12.0 ± 4.0".

Exactly once per hour: the row ``_all`` holds the last hour folded; a run locks it and moves it on with
``UPDATE … WHERE hour < :hour`` (another node finding it moved does nothing), and every key's row moves
with the same condition on its own hour. Only complete hours are folded; missed hours are caught up (at
most ``catch_up_hours``, empty hours folding 0). Keys whose baseline is ~0 and that saw nothing are not
rewritten (folding 0 into 0 changes nothing); their next count catches them up.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Integer, cast, func, select, update

from models import Order, Rebate, RedPacket, SpikeBaseline, db, raise_alert
from models.base import beijing
from models.sql import insert_ignoring
from money import format_yuan

HOUR = timedelta(hours=1)
GUARD = "_all"
METRICS = ("claims", "redemptions", "rebates", "rebate_fen")
QUIET = 0.01  # a baseline mean and variance below this: folding an empty hour changes nothing
# Packets no person claimed: an audience run's batch (``rebate.audiences.SOURCE``), thousands in minutes by design.
PUSHED_SOURCES = ("audience",)


@dataclass(frozen=True)
class SpikeSettings:
    alpha: float = 0.1  # RISK_SPIKE_ALPHA
    sigma: float = 4.0  # RISK_SPIKE_SIGMA
    min_count: int = 20  # RISK_SPIKE_MIN_COUNT
    min_fen: int = 500_00  # the rebate_fen metric's minimum
    warmup_hours: int = 24
    catch_up_hours: int = 48
    resume_grace_hours: int = 6  # RISK_SPIKE_RESUME_GRACE_HOURS (jobs.risk.pause_spiking)


@dataclass(frozen=True)
class Spike:
    key: str
    hour: datetime  # its start (UTC)
    count: int
    mean: float
    sd: float
    message: str

    @property
    def campaign_id(self) -> int | None:
        kind, ident, _ = self.key.split(":")
        return int(ident) if kind == "campaign" else None


@dataclass
class Baseline:
    hours: int = 0
    mean: float = 0.0
    var: float = 0.0

    def fold(self, x: float, alpha: float) -> None:
        if self.hours == 0:
            self.mean, self.var = float(x), 0.0
        else:
            diff = x - self.mean
            self.mean += alpha * diff
            self.var = (1 - alpha) * (self.var + alpha * diff * diff)
        self.hours += 1

    def is_spike(self, x: float, minimum: float, settings: SpikeSettings) -> bool:
        if self.hours < settings.warmup_hours or x < minimum:
            return False
        return x > self.mean + settings.sigma * math.sqrt(max(self.var, 0.0))


def hour_floor(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _bucket(column):
    """The hour since the epoch a time falls in (an integer on both databases)."""
    if db.engine.dialect.name == "postgresql":
        return cast(func.floor(func.extract("epoch", column) / 3600), BigInteger)
    return cast(func.strftime("%s", column), Integer) // 3600


def _hour_of(bucket: int) -> datetime:
    return datetime.fromtimestamp(int(bucket) * 3600, UTC)


def hourly_counts(start: datetime, end: datetime) -> dict[str, dict[datetime, int]]:
    """key -> hour start -> count, for the whole hours in [start, end)."""
    out: dict[str, dict[datetime, int]] = defaultdict(lambda: defaultdict(int))

    def add(campaign_id, merchant_id, metric, bucket, n) -> None:
        hour = _hour_of(bucket)
        out[f"campaign:{campaign_id}:{metric}"][hour] += int(n)
        if merchant_id is not None:
            out[f"merchant:{merchant_id}:{metric}"][hour] += int(n)

    claimed = _bucket(RedPacket.claimed_at)
    where_merchant = func.coalesce(RedPacket.merchant_id, RedPacket.issuer_merchant_id)
    for campaign_id, merchant_id, bucket, n in db.session.execute(
        select(RedPacket.campaign_id, where_merchant, claimed, func.count())
        .where(RedPacket.claimed_at >= start, RedPacket.claimed_at < end, RedPacket.source.not_in(PUSHED_SOURCES))
        .group_by(RedPacket.campaign_id, where_merchant, claimed)
    ):
        add(campaign_id, merchant_id, "claims", bucket, n)

    used = _bucket(RedPacket.used_at)
    at = func.coalesce(Order.merchant_id, RedPacket.merchant_id)
    for campaign_id, merchant_id, bucket, n in db.session.execute(
        select(RedPacket.campaign_id, at, used, func.count())
        .select_from(RedPacket)
        .outerjoin(Order, Order.id == RedPacket.order_id)
        .where(RedPacket.used_at >= start, RedPacket.used_at < end)
        .group_by(RedPacket.campaign_id, at, used)
    ):
        add(campaign_id, merchant_id, "redemptions", bucket, n)

    created = _bucket(Rebate.created_at)
    for campaign_id, merchant_id, bucket, n, fen in db.session.execute(
        select(Rebate.campaign_id, Order.merchant_id, created, func.count(), func.sum(Rebate.original_fen))
        .join(Order, Order.id == Rebate.order_id)
        .where(Rebate.created_at >= start, Rebate.created_at < end, Rebate.original_fen > 0)
        .group_by(Rebate.campaign_id, Order.merchant_id, created)
    ):
        add(campaign_id, merchant_id, "rebates", bucket, n)
        add(campaign_id, merchant_id, "rebate_fen", bucket, fen or 0)
    return out


def describe(key: str, hour: datetime, count: int, baseline: Baseline) -> str:
    kind, ident, metric = key.split(":")
    local = beijing(hour)
    span = f"{local:%Y-%m-%d %H:00}-{beijing(hour + HOUR):%H:00} Beijing"
    sd = math.sqrt(max(baseline.var, 0.0))
    if metric == "rebate_fen":
        return (
            f"{kind} {ident}: {format_yuan(count)} yuan of rebates in {span}, "
            f"baseline {format_yuan(int(baseline.mean))} ± {format_yuan(int(sd))} yuan"
        )
    return f"{kind} {ident}: {count} {metric} in {span}, baseline {baseline.mean:.1f} ± {sd:.1f}"


def _take_guard(last: datetime, settings: SpikeSettings) -> datetime | None:
    """Move the ``_all`` row to ``last`` (the last complete hour); the hour folded before, or None when done."""
    table = SpikeBaseline.__table__
    first = last - settings.catch_up_hours * HOUR  # a first run catches up from history
    insert_ignoring(
        table, [{"key": GUARD, "hour": first - HOUR, "hours": 0, "mean": 0.0, "var": 0.0, "last_count": 0}], ("key",)
    )
    before = db.session.execute(
        select(SpikeBaseline.hour).where(SpikeBaseline.key == GUARD).with_for_update()
    ).scalar_one()
    moved = db.session.execute(
        update(SpikeBaseline)
        .where(SpikeBaseline.key == GUARD, SpikeBaseline.hour < last)
        .values(hour=last)
        .execution_options(synchronize_session=False)
    ).rowcount
    return before if moved == 1 else None


def fold_hours(now: datetime, settings: SpikeSettings) -> list[Spike]:
    """Fold every complete hour not yet folded into the baselines; the spikes found, alerted (flushes)."""
    end = hour_floor(now)
    last = end - HOUR
    before = _take_guard(last, settings)
    if before is None:
        return []
    start = max(before + HOUR, end - settings.catch_up_hours * HOUR)
    counts = hourly_counts(start, end)
    stored = {
        row.key: row for row in db.session.execute(select(SpikeBaseline).where(SpikeBaseline.key != GUARD)).scalars()
    }
    spikes: list[Spike] = []
    new_rows = []
    for key in sorted(set(stored) | set(counts)):
        seen = counts.get(key, {})
        row = stored.get(key)
        if row is not None:
            if not seen and row.mean < QUIET and row.var < QUIET:
                continue
            base = Baseline(row.hours, row.mean, row.var)
            first = max(row.hour + HOUR, start)
        else:
            base = Baseline()
            first = min(seen)
        minimum = settings.min_fen if key.endswith(":rebate_fen") else settings.min_count
        alerted = row.alerted_at if row is not None else None
        hour, x = first, 0
        while hour < end:
            x = seen.get(hour, 0)
            if base.is_spike(x, minimum, settings):
                spike = Spike(key, hour, x, base.mean, math.sqrt(base.var), describe(key, hour, x, base))
                spikes.append(spike)
                alerted = hour + HOUR
            base.fold(x, settings.alpha)
            hour += HOUR
        values = {
            "hour": last,
            "hours": base.hours,
            "mean": base.mean,
            "var": base.var,
            "last_count": int(x),
            "alerted_at": alerted,
        }
        if row is None:
            new_rows.append({"key": key, **values})
            continue
        moved = db.session.execute(
            update(SpikeBaseline)
            .where(SpikeBaseline.key == key, SpikeBaseline.hour < last)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved != 1:  # another run folded it: its spikes are that run's
            spikes = [s for s in spikes if s.key != key]
    written = {k for (k,) in insert_ignoring(SpikeBaseline.__table__, new_rows, ("key",), ("key",))}
    spikes = [s for s in spikes if s.key in written or s.key in stored]
    for spike in spikes:
        raise_alert("spike", spike.key, spike.message)
    db.session.flush()
    return spikes
