"""``python -m bench report``: a two-year report over 1,000,000 orders against a bare ``SELECT count(*)``.

In a database of its own beside ``BENCH_DATABASE_URL`` (PostgreSQL; dropped afterwards):
``BENCH_REPORT_ORDERS`` (default 1,000,000) paid orders over two years of Beijing days across 20
merchants, one line each in one of five categories, every tenth spending a 5-yuan packet of its
merchant's campaign, every twentieth half refunded the next day, all written by set-based SQL
(``generate_series``). The daily rollups are then built by the job's own code (``jobs.insights.rebuild``,
progress printed), and the same run times, median of ``BENCH_REPORT_REPEATS`` (default 5) after one
warm-up each: ``SELECT count(*) FROM orders`` and the platform-wide overview of the two years by month
(``insights.reports.overview``), then one merchant's campaign report. The goal: a report within 3x the
count. Ratios only: the milliseconds depend on the machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta

from bench import harness
from bench.harness import BenchWeChat

ORDERS = harness.env_int("BENCH_REPORT_ORDERS", 1_000_000)
REPEATS = harness.env_int("BENCH_REPORT_REPEATS", 5)
MERCHANTS = 20
USERS = 100_000
DAYS = 730
FIRST = date(2024, 1, 1)
GOAL = 3.0


def run() -> Iterator[str]:
    url = harness.database_url()
    if not url:
        yield "report: skipped (set BENCH_DATABASE_URL=postgresql+psycopg://… : it measures PostgreSQL)"
        return
    with harness.workspace() as tmp, harness.ThrowAwayDatabase(url, "report") as database:
        settings = harness.app_settings(database.url, BenchWeChat(tmp))
        harness.migrate(settings)
        app = harness.in_process_app(settings)
        with app.app_context():
            yield from measure()


def progress(message: str) -> None:
    print(f"  report: {message}", file=sys.stderr, flush=True)


def measure() -> Iterator[str]:
    from sqlalchemy import text

    from insights.reports import campaign_report, overview
    from jobs.insights import days_between, rebuild
    from models import Campaign, db, utcnow

    began = time.perf_counter()
    seed()
    progress(f"{ORDERS:,} orders written in {time.perf_counter() - began:.0f} s; building the rollups")
    days = days_between(FIRST, FIRST + timedelta(days=DAYS - 1))
    began = time.perf_counter()

    def step(day: date) -> None:
        done = (day - FIRST).days + 1
        if done % 73 == 0:
            progress(f"rollups: {done}/{DAYS} days, {time.perf_counter() - began:.0f} s")

    rebuild(days, utcnow(), step)
    built = time.perf_counter() - began
    db.session.execute(text("ANALYZE"))
    db.session.commit()
    count = timed(lambda: db.session.execute(text("SELECT count(*) FROM orders")).scalar())
    last = FIRST + timedelta(days=DAYS - 1)
    whole = timed(lambda: overview(FIRST, last, None, "month"))
    campaign = db.session.get(Campaign, 1)
    one = timed(lambda: campaign_report(campaign, FIRST, last, "month"))
    checked = overview(FIRST, last, None, "month")["totals"]["orders"]
    yield f"report over {checked:,} orders, {DAYS} Beijing days (rollups built in {built:.0f} s):"
    yield f"  SELECT count(*) FROM orders          {count * 1000:8.1f} ms (median of {REPEATS})"
    yield f"  overview, platform-wide, by month    {whole * 1000:8.1f} ms  = {whole / count:.2f}x the count"
    yield f"  campaign report, by month            {one * 1000:8.1f} ms  = {one / count:.2f}x the count"
    verdict = "met" if max(whole, one) <= GOAL * count else "NOT met"
    yield f"  goal: a report within {GOAL:.0f}x the count: {verdict}"


def timed(call: Callable[[], object]) -> float:
    from models import db

    call()  # warm-up: plans and caches
    db.session.rollback()
    times = []
    for _ in range(REPEATS):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
        db.session.rollback()
    return statistics.median(times)


def seed() -> None:
    """Merchants, products, campaigns and users, then orders, lines, packets and refunds in a few statements."""
    from sqlalchemy import text

    from models import Campaign, CampaignRules, Merchant, Product, db

    for m in range(1, MERCHANTS + 1):
        db.session.add(Merchant(id=m, name=f"bench-{m}"))
    db.session.flush()
    for m in range(1, MERCHANTS + 1):
        db.session.add(Product(id=m, merchant_id=m, name=f"p{m}", category="c", price_fen=100))
        campaign = Campaign(
            id=m,
            name=f"bench-{m}",
            status="active",
            issuer_type="merchant",
            issuer_merchant_id=m,
            funder_type="merchant_deposit",
            funder_merchant_id=m,
            packet_amount_fen=5_00,
            trigger={"kind": "claim"},
        )
        db.session.add(campaign)
        db.session.flush()
        db.session.add(CampaignRules(campaign_id=m, version=1, rules={"roles": []}))
    db.session.flush()
    start = f"TIMESTAMPTZ '{FIRST.isoformat()} 00:00:00+08'"
    statements = [
        f"""INSERT INTO users (id, status, created_at)
        SELECT g, 'active', {start} + (g % {DAYS}) * INTERVAL '1 day' FROM generate_series(1, {USERS}) g""",
        f"""INSERT INTO orders (id, out_trade_no, user_id, merchant_id, status, total_fen, discount_fen, payable_fen,
            paid_fen, refunded_fen, paid_at, time_expire, channel, created_at)
        SELECT g, 'B' || g, 1 + g % {USERS}, 1 + g % {MERCHANTS}, 'paid', t, d, t - d, t - d,
            CASE WHEN g % 20 = 1 THEN (t - d) / 2 ELSE 0 END, at, at, 'mini_program', at
        FROM (SELECT g, 1000 + (g * 7919) % 50000 AS t, CASE WHEN g % 10 = 0 THEN 500 ELSE 0 END AS d,
              {start} + (g % {DAYS}) * INTERVAL '1 day' + ((g * 37) % 86400) * INTERVAL '1 second' AS at
              FROM generate_series(1::bigint, {ORDERS}) g) s""",
        """INSERT INTO order_lines (order_id, product_id, category, quantity, unit_price_fen, line_total_fen)
        SELECT id, merchant_id, (ARRAY['course', 'book', 'toy', 'food', 'travel'])[1 + id % 5], 1, total_fen, total_fen
        FROM orders""",
        """INSERT INTO red_packets (id, campaign_id, rules_version, issuer_type, issuer_merchant_id, owner_id,
            amount_fen, min_spend_fen, categories, products, tiers, merchant_id, status, reserved_fen, valid_from,
            expires_at,
            source, source_ref, order_id, created_at, claimed_at, used_at)
        SELECT id, merchant_id, 1, 'merchant', merchant_id, user_id, 500, 0, '[]', '[]', '[]', merchant_id, 'used', 0,
            paid_at - INTERVAL '1 day', paid_at + INTERVAL '29 days', 'claim', 'b' || id, id,
            paid_at - INTERVAL '1 day', paid_at - INTERVAL '1 day', paid_at
        FROM orders WHERE discount_fen > 0""",
        "UPDATE orders SET packet_id = id WHERE discount_fen > 0",
        """INSERT INTO order_packets (order_id, packet_id, discount_fen)
        SELECT id, id, discount_fen FROM orders WHERE discount_fen > 0""",
        """INSERT INTO refunds (order_id, out_refund_no, amount_fen, status, created_at, finished_at)
        SELECT id, 'BR' || id, refunded_fen, 'succeeded', paid_at + INTERVAL '1 day', paid_at + INTERVAL '1 day'
        FROM orders WHERE refunded_fen > 0""",
    ]
    for n, sql in enumerate(statements, 1):
        db.session.execute(text(sql))
        progress(f"seed step {n}/{len(statements)}")
    for table in ("users", "orders", "red_packets", "refunds", "order_lines"):
        sequence = f"pg_get_serial_sequence('{table}', 'id')"
        db.session.execute(text(f"SELECT setval({sequence}, (SELECT max(id) FROM {table}))"))  # noqa: S608
    db.session.commit()
    db.session.execute(text("ANALYZE"))
    db.session.commit()
