"""Backtest: replay a draft rule set over past paid orders and their labels, writing nothing.

Each paid order keeps what scoring saw (``orders.risk["values"]``, its features by name) and its score
(``orders.risk_score``); the draft re-decides it with ``decide``, merged as ``rules_for`` would merge it:

* a **platform** draft replaces the platform's rules; each campaign the order touched keeps its active
  overrides, and the order's outcome is its most severe campaign decision (the platform's alone when it
  touched none);
* a **campaign** draft replaces that campaign's overrides; only orders that touched the campaign count, and
  the outcome is that campaign's decision.

The same orders are re-decided with the rules active now, so "changed" compares like with like (the
decision recorded at payment, under the rules of that day, is counted too). The campaigns an order touched
are its rebates' and those its stored verdict names (a blocked order may have no rebate). Labels are review
cases' (``kind='order'``): fraud is positive, "flagged" is review or block. Orders stream in batches
(``BATCH`` rows per fetch, a server-side cursor on PostgreSQL) with their labels; their rebates are read per
batch.
"""

from __future__ import annotations

from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from models import Order, Rebate, ReviewCase, db
from models.sql import in_time, reading_apart
from risk.rules import (
    ACTIONS,
    Rule,
    decide,
    effective_rules,
    most_severe,
    parse_scope,
    platform_rules,
    platform_scope,
)
from risk.rulesets import active_rules_now

BATCH = 1000
MAX_ORDERS = 1_000_000
EXAMPLES = 5


@dataclass
class Tally:
    """One rule set's outcomes over the orders, and over the labelled ones."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=lambda: {action: [] for action in ACTIONS})
    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0

    def add(self, order_id: int, action: str, label: str | None) -> None:
        self.counts[action] += 1
        if len(self.examples[action]) < EXAMPLES:
            self.examples[action].append(order_id)
        if label is None:
            return
        flagged = action != "allow"
        fraud = label == "fraud"
        if flagged and fraud:
            self.true_positive += 1
        elif flagged:
            self.false_positive += 1
        elif fraud:
            self.false_negative += 1
        else:
            self.true_negative += 1

    def to_json(self, examples: bool = True) -> dict:
        flagged_labelled = self.true_positive + self.false_positive
        fraud = self.true_positive + self.false_negative
        found = {action: self.counts[action] for action in ACTIONS}
        found["flagged"] = found["review"] + found["block"]
        found["precision"] = _ratio(self.true_positive, flagged_labelled)
        found["recall"] = _ratio(self.true_positive, fraud)
        found["confusion"] = {
            "true_positive": self.true_positive,
            "false_positive": self.false_positive,
            "false_negative": self.false_negative,
            "true_negative": self.true_negative,
        }
        if examples:
            found["examples"] = self.examples
        return found


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


class _Decider:
    """An order's outcome under one platform rule set and per-campaign overrides, effective rules memoised."""

    def __init__(self, platform: tuple[Rule, ...], overrides: dict[int, tuple[Rule, ...]]):
        self.platform = platform
        self.overrides = overrides
        self._merged: dict[int, tuple[Rule, ...]] = {}

    def rules(self, campaign_id: int) -> tuple[Rule, ...]:
        if campaign_id not in self._merged:
            self._merged[campaign_id] = effective_rules(self.platform, self.overrides.get(campaign_id, ()))
        return self._merged[campaign_id]

    def order(self, values: dict, campaigns: set[int]) -> str:
        if not campaigns:
            return decide(self.platform, values).action
        return most_severe(decide(self.rules(c), values).action for c in campaigns)

    def campaign(self, values: dict, campaign_id: int) -> str:
        return decide(self.rules(campaign_id), values).action


def backtest(
    draft: tuple[Rule, ...],
    scope: str,
    since: datetime,
    until: datetime,
    limit: int = MAX_ORDERS,
    *,
    rule_set_id: int | None = None,
    apart: bool = False,
) -> dict:
    """Replay ``draft`` (parsed for ``scope``) over the orders paid in [since, until), newest first, at most
    ``limit``: the counts per outcome under the draft and under the active rules, what changed, the labels,
    precision and recall of "flagged". Reads only. ``apart``: the orders are read on a connection of their own after
    the caller's transaction is ended (it must have written nothing: ``models.sql.reading_apart``; on SQLite up to a
    minute of reading no longer holds every other request)."""
    draft_campaign = parse_scope(scope)
    sets = active_rules_now()
    platform = sets.get(platform_scope())
    active_overrides = {
        parse_scope(s): rules for s, rules in sets.items() if s != platform_scope()
    }  # campaign id → its overrides
    active = _Decider(platform_rules(sets), active_overrides)
    if draft_campaign is None:
        proposed = _Decider(draft, active_overrides)
    else:
        proposed = _Decider(platform_rules(sets), {**active_overrides, draft_campaign: draft})

    labels_join = (ReviewCase.order_id == Order.id) & (ReviewCase.kind == "order") & ReviewCase.label.is_not(None)
    stmt = (
        select(Order.id, Order.risk_score, Order.risk, Order.risk_decision, ReviewCase.label)
        .outerjoin(ReviewCase, labels_join)  # one case per order at most (review_cases.order_id is unique)
        .where(Order.paid_at >= since, Order.paid_at < until)
        .order_by(Order.paid_at.desc())  # the index on paid_at, read backwards
        .limit(limit + 1)
        .execution_options(yield_per=BATCH)
    )
    drafted, now = Tally(), Tally()
    recorded: Counter = Counter()
    changes: Counter = Counter()
    changed_examples: list[int] = []
    labels: Counter = Counter()
    considered = unscored = seen = 0
    truncated = False
    with reading_apart() if apart else nullcontext(db.session) as reader, reader.execute(stmt) as result:
        for batch in result.partitions():
            in_time()  # a long read's deadline (models.sql.reading_apart) also ends it between batches
            if seen + len(batch) > limit:
                batch, truncated = batch[: limit - seen], True
            seen += len(batch)
            ids = [row.id for row in batch]
            touched = _campaigns_of(reader, ids)
            for row in batch:
                if row.risk_score is None or not isinstance(row.risk, dict):
                    unscored += 1
                    continue
                campaigns = touched.get(row.id, set()) | _named_campaigns(row.risk)
                if draft_campaign is not None and draft_campaign not in campaigns:
                    continue
                values = {**(row.risk.get("values") or {}), "score": row.risk_score}
                if draft_campaign is None:
                    new, old = proposed.order(values, campaigns), active.order(values, campaigns)
                else:
                    new, old = proposed.campaign(values, draft_campaign), active.campaign(values, draft_campaign)
                label = row.label
                considered += 1
                drafted.add(row.id, new, label)
                now.add(row.id, old, label)
                if row.risk_decision:
                    recorded[row.risk_decision] += 1
                if label is not None:
                    labels[label] += 1
                if new != old:
                    changes[f"{old}->{new}"] += 1
                    if len(changed_examples) < EXAMPLES:
                        changed_examples.append(row.id)
            if truncated:
                break
    return {
        "scope": scope,
        "rule_set_id": rule_set_id,
        "from": since.isoformat(),
        "to": until.isoformat(),
        "limit": limit,
        "truncated": truncated,
        "orders": considered,
        "unscored": unscored,
        "draft": drafted.to_json(),
        "active": {**now.to_json(examples=False), "defaults": platform is None},
        "recorded": {action: recorded[action] for action in ACTIONS},
        "changed": {"orders": sum(changes.values()), **dict(sorted(changes.items())), "examples": changed_examples},
        "labelled": {"orders": labels["fraud"] + labels["legit"], "fraud": labels["fraud"], "legit": labels["legit"]},
    }


def _campaigns_of(reader, order_ids: list[int]) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    if order_ids:
        rows = reader.execute(
            select(Rebate.order_id, Rebate.campaign_id).where(Rebate.order_id.in_(order_ids)).distinct()
        )
        for order_id, campaign_id in rows:
            found.setdefault(order_id, set()).add(campaign_id)
    return found


def _named_campaigns(risk: dict) -> set[int]:
    named = risk.get("campaigns") or {}
    return {int(k) for k in named if str(k).isdecimal()} if isinstance(named, dict) else set()


__all__ = ["BATCH", "MAX_ORDERS", "backtest"]
