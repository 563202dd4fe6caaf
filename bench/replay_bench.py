"""``python -m bench replay`` (alias ``simulate``): what-if replay against a naive per-order ORM loop.

The replay is one column query + the pure engine.

Seeds ``BENCH_ORDERS`` (default 50,000) paid packet orders over 30 days in a
temporary SQLite file (and in a throw-away database beside ``BENCH_DATABASE_URL``
when set), then times, over the same rows in the same run:

* replay: ``insights.simulate.load_rows`` (one query, plain columns) and
  ``project`` (``rebate.rules.evaluate`` per order in memory);
* naive: the ids, then each order loaded as an ORM object with its own
  queries for its packet and its buyer, then ``evaluate``.

Both must agree on every role's total before a figure is printed. The naive
loop runs over the same rows, oldest first, for at most ``BENCH_NAIVE_SECONDS``
(default 5) to keep the run short; its rate is per order either way.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select

from bench import harness
from insights.simulate import ISSUING, load_rows, project, replay_query
from models import Campaign, CampaignRules, Merchant, Order, OrderPacket, RedPacket, User, db
from rebate.campaigns import rules_of
from rebate.rules import Form, OrderFacts, evaluate, parse_rules

ORDERS = int(os.environ.get("BENCH_ORDERS", "50000"))
NAIVE_SECONDS = float(os.environ.get("BENCH_NAIVE_SECONDS", "5"))
PEOPLE = 5_000
DAYS = 30
NOW = datetime(2025, 6, 1, tzinfo=UTC)
CURRENT = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": Form.MERCHANT_CREDIT, "cap_fen": 100_00},
        {"role": "consumer", "rate_bps": 500, "form": Form.BALANCE, "cap_fen": 50_00, "min_order_fen": 50_00},
    ]
}
DRAFT = {
    "roles": [
        {"role": "issuer", "rate_bps": 800, "form": Form.MERCHANT_CREDIT, "cap_fen": 80_00},
        {
            "role": "consumer",
            "rate_bps": 800,
            "form": Form.POINTS,
            "cap_fen": 30_00,
            "tiers": [{"min_order_fen": 300_00, "rate_bps": 1000}],
        },
    ]
}


def run() -> Iterator[str]:
    for backend, figures in harness.on_each_backend("replay", measure):
        yield line(backend, *figures)


def line(backend: str, rows: int, fast: float, naive_rows: int, naive: float) -> str:
    return (
        f"replay ({backend}, {rows:,} orders; naive over {naive_rows:,}): {fast:,.0f} orders/s "
        f"vs naive {naive:,.0f} orders/s → {fast / naive:.1f}x"
    )


def measure(url: str) -> tuple[int, float, int, float]:
    with harness.simulator_app(url):
        campaign_id = seed()
        return compare(db.session.get(Campaign, campaign_id))


def seed() -> int:
    """One merchant campaign, 5,000 people (half invited), one used packet per paid order."""
    rnd = random.Random(6)
    merchant = Merchant(name="bench shop")
    db.session.add(merchant)
    db.session.flush()
    campaign = Campaign(
        name="bench",
        status="active",
        issuer_type="merchant",
        issuer_merchant_id=merchant.id,
        funder_type="merchant_deposit",
        funder_merchant_id=merchant.id,
        packet_amount_fen=10_00,
    )
    db.session.add(campaign)
    db.session.flush()
    db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=CURRENT))
    start = NOW - timedelta(days=DAYS)
    joined = start - timedelta(days=60)
    db.session.execute(insert(User), [{"created_at": joined} for _ in range(PEOPLE // 2)])
    inviters = db.session.execute(select(User.id)).scalars().all()
    db.session.execute(insert(User), [{"created_at": joined, "inviter_id": i} for i in inviters])
    people = db.session.execute(select(User.id)).scalars().all()
    paid_at = sorted(start + timedelta(seconds=rnd.randrange(DAYS * 86_400)) for _ in range(ORDERS))
    owners = [rnd.choice(people) for _ in range(ORDERS)]
    packets = [_packet(campaign, merchant.id, owners[i], paid_at[i], i) for i in range(ORDERS)]
    db.session.execute(insert(RedPacket), packets)
    first_packet = db.session.execute(select(RedPacket.id).order_by(RedPacket.id)).scalars().first()
    orders = [_order(merchant.id, owners[i], first_packet + i, paid_at[i], rnd, i) for i in range(ORDERS)]
    db.session.execute(insert(Order), orders)
    spent = db.session.execute(select(Order.id, Order.packet_id).order_by(Order.id)).all()
    db.session.execute(  # what an order spent, as rebate.orders writes it (the replay reads a campaign's packets here)
        insert(OrderPacket), [{"order_id": o, "packet_id": p, "discount_fen": 10_00} for o, p in spent]
    )
    db.session.commit()
    return campaign.id


def _packet(campaign: Campaign, merchant_id: int, owner: int, at: datetime, i: int) -> dict:
    return {
        "campaign_id": campaign.id,
        "rules_version": 1,
        "issuer_type": "merchant",
        "issuer_merchant_id": merchant_id,
        "owner_id": owner,
        "amount_fen": 10_00,
        "merchant_id": merchant_id,
        "status": "used",
        "reserved_fen": 0,
        "valid_from": at - timedelta(days=1),
        "expires_at": at + timedelta(days=29),
        "source": "bench",
        "source_ref": str(i),
        "created_at": at - timedelta(days=1),
        "claimed_at": at - timedelta(days=1),
        "used_at": at,
    }


def _order(merchant_id: int, user_id: int, packet_id: int, at: datetime, rnd: random.Random, i: int) -> dict:
    total = rnd.randrange(20_00, 600_00)
    return {
        "out_trade_no": f"B{i:012d}",
        "user_id": user_id,
        "merchant_id": merchant_id,
        "status": "paid",
        "total_fen": total,
        "packet_id": packet_id,
        "discount_fen": 10_00,
        "payable_fen": total - 10_00,
        "paid_fen": total - 10_00,
        "refunded_fen": 0,
        "transaction_id": f"T{i:012d}",
        "paid_at": at,
        "time_expire": at + timedelta(minutes=30),
        "created_at": at - timedelta(minutes=1),
    }


def compare(campaign: Campaign) -> tuple[int, float, int, float]:
    current, draft = rules_of(campaign), parse_rules(DRAFT, budgeted=False)
    since = NOW - timedelta(days=DAYS + 1)
    fast, rows = _best_of(3, lambda: _replay(campaign, current, draft, since))
    db.session.expunge_all()
    started = time.perf_counter()
    naive_totals, naive_rows = naive_replay(campaign, current, draft, since, NAIVE_SECONDS)
    naive = time.perf_counter() - started
    expected = project(rows[:naive_rows], draft)["by_role"]
    if naive_totals != {role: v["amount_fen"] for role, v in expected.items()}:
        raise AssertionError(f"naive and replay disagree: {naive_totals} vs {expected}")
    return len(rows), len(rows) / fast, naive_rows, naive_rows / naive


def _best_of(n: int, job):
    best, result = None, None
    for _ in range(n):
        db.session.expunge_all()
        started = time.perf_counter()
        result = job()
        elapsed = time.perf_counter() - started
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def _replay(campaign, current, draft, since):
    rows = load_rows(campaign, current, since, NOW)
    project(rows, draft)
    return rows


def naive_replay(campaign, current, draft, since, seconds: float) -> tuple[dict[str, int], int]:
    """What one would write first: ids, then an ORM object per order and a query for its packet and its buyer."""
    ids = db.session.execute(replay_query(campaign, current, since, NOW).with_only_columns(Order.id)).scalars()
    totals: Counter[str] = Counter({r.role: 0 for r in draft.roles})
    count, deadline = 0, time.perf_counter() + seconds
    for order_id in ids.all():
        if count % 100 == 0 and time.perf_counter() > deadline:
            break
        order = db.session.execute(select(Order).where(Order.id == order_id)).scalar_one()
        packet = db.session.execute(select(RedPacket).where(RedPacket.id == order.packet_id)).scalar_one()
        buyer = db.session.execute(select(User).where(User.id == order.user_id)).scalar_one()
        net_paid = order.net_paid_fen
        facts = OrderFacts(
            order_total_fen=order.net_total_fen,
            paid_fen=net_paid,
            paid_at=order.paid_at,
            has_issuer=packet.issuer_type in ISSUING,
            has_inviter=buyer.inviter_id is not None,
        )
        for decision in evaluate(draft, facts):
            totals[decision.role] += decision.amount_fen
        count += 1
    return dict(totals), count
