"""``python -m bench risk``: the seeded risk simulation's figures, and what scoring adds to a payment notification.

Runs ``flask risk simulate``'s code (web/risk_simulation.py, ``BENCH_RISK_SEED``, default 1, with its
default populations) on a temporary SQLite file (and in a PostgreSQL database of its own beside ``BENCH_DATABASE_URL``'s
when set, dropped afterwards) and prints the same table: precision, recall, per fraud type, the honest false-positive
rate, rings found as communities, claims refused by the limits.

Then, in the same run and on the same database, the scoring cost: ``BENCH_RISK_ORDERS`` (default 200)
fresh orders (new shoppers with a device, five orders each after a product view, the first with a shop
packet when the limits allow) are paid
at the simulator's checkout with the simulator's signed notifications captured instead of delivered;
those notifications are then POSTed to ``/wechat/pay/notify`` in-process (Flask's test client), in
alternating blocks of 10: one block with scoring as it is, the next with everything it adds switched
off (``risk.scoring.score_order`` replaced by a stub answering a verdict it gave before, an "allow"
when it gave one, and the profile and pair upserts skipped). The line is the
mean time of a notification with scoring over the mean without: the goal is at most 1.20x. Ratios
only: the milliseconds depend on the machine.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from app import create_app
from bench.harness import progress
from web.risk_simulation import Device, SimConfig, report_lines
from web.risk_simulation import run as simulate

SEED = int(os.environ.get("BENCH_RISK_SEED") or 1)
ORDERS = int(os.environ.get("BENCH_RISK_ORDERS") or 200)
BLOCK = 10
ORDERS_EACH = 5  # orders per bench shopper (the first with a shop packet when the limits allow)
GOAL = 1.20


def run() -> Iterator[str]:
    yield from measure("sqlite", None)
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        yield from measure("postgresql", url)


def measure(backend: str, url: str | None) -> Iterator[str]:
    cost: list[str] = []
    result = simulate(
        SimConfig(seed=SEED, database_url=url),
        create_app,
        hook=lambda app, sim: cost.append(scoring_cost(sim)),
        phase=lambda words: progress(f"risk simulation ({backend}): {words}"),
    )
    yield f"risk simulation ({backend}):"
    yield from ("  " + line for line in report_lines(result))
    yield f"  {cost[0] if cost else 'scoring cost: not measured'}"


def scoring_cost(sim) -> str:
    try:
        from risk import scoring
    except ImportError:
        scoring = None
    if scoring is None or not hasattr(scoring, "score_order"):
        return "scoring cost per notification: scoring not present (risk.scoring.score_order)"
    notifications = captured_notifications(sim, ORDERS)
    if len(notifications) < 2 * BLOCK:
        return f"scoring cost per notification: only {len(notifications)} notifications captured, not measured"
    timings: dict[bool, list[float]] = {True: [], False: []}
    with switchable(scoring) as scoring_on:
        for start in range(0, len(notifications), BLOCK):
            on = (start // BLOCK) % 2 == 0
            scoring_on(on)
            for path, headers, body in notifications[start : start + BLOCK]:
                sim.clock.advance(1)
                began = time.perf_counter()
                answer = sim.client.post(path, data=body, headers=headers)
                timings[on].append(time.perf_counter() - began)
                if answer.status_code >= 300:
                    return f"scoring cost per notification: a notification answered {answer.status_code}, not measured"
    on_ms, off_ms = (1000 * statistics.fmean(timings[k]) for k in (True, False))
    ratio = on_ms / off_ms
    verdict = "within" if ratio <= GOAL else "over"
    return (
        f"scoring cost per notification ({len(timings[True])} with, {len(timings[False])} without): "
        f"{on_ms:.2f} ms vs {off_ms:.2f} ms → {ratio:.2f}x ({verdict} the {GOAL:.2f}x goal)"
    )


@contextmanager
def switchable(scoring) -> Iterator[Callable[[bool], None]]:
    """Everything scoring adds to a payment, switchable off: ``score_order`` (replaced everywhere it was imported
    by a stub replaying a verdict it gave before, an "allow" when it gave one) and the profile and pair upserts
    (``risk.profiles.note_paid_order``, ``note_pair``: no-ops when off)."""
    from risk import profiles

    real = scoring.score_order
    seen: list = []

    def recording(*args, **kwargs):
        verdict = real(*args, **kwargs)
        if not seen or verdict.score < 60:
            seen[:] = [verdict]
        return verdict

    def stub(*args, **kwargs):
        return seen[0] if seen else None

    def nothing(*args, **kwargs):
        return None

    switched = {
        "score_order": (real, recording, stub),
        "note_paid_order": (profiles.note_paid_order, profiles.note_paid_order, nothing),
        "note_pair": (profiles.note_pair, profiles.note_pair, nothing),
    }
    holders = [
        (module, name)
        for module in list(sys.modules.values())
        for name, (original, _, _) in switched.items()
        if getattr(module, name, None) is original
    ]

    def scoring_on(on: bool) -> None:
        for module, name in holders:
            setattr(module, name, switched[name][1] if on else switched[name][2])

    try:
        yield scoring_on
    finally:
        for module, name in holders:
            setattr(module, name, switched[name][0])


def captured_notifications(sim, count: int) -> list[tuple[str, dict, bytes]]:
    """``count`` fresh orders paid at the checkout; the simulator's signed notifications kept, not delivered."""
    captured: list[tuple[str, dict, bytes]] = []
    state = sim.simulator
    delivering = state.dispatcher.transport

    def capture(url: str, headers: dict, body: bytes) -> int:
        captured.append((urlsplit(url).path, dict(headers), body))
        return 204

    rng = random.Random(SEED + 1)
    state.dispatcher.transport = capture
    try:
        shoppers = []
        for n in range(max(1, count // ORDERS_EACH)):
            ip = f"10.250.{n // 250}.{n % 250 + 2}"
            device = Device()  # its token is asked for at the first sign-in
            token, _ = sim.login(f"bench-{n}", ip, device, "bench")
            shoppers.append((ip, device, token, rng.choice(sim.shops)))
        for n in range(count):
            ip, device, token, shop = shoppers[n % len(shoppers)]
            sim.clock.advance(rng.uniform(300, 1200))  # past the claim intervals since the last claim
            product = rng.choice(shop.products)
            sim.events(ip, token, device, [{"kind": "view", "product_id": product["id"], "dwell_ms": 20_000}])
            packet = sim.claim(shop, ip, token, device, "bench") if n < len(shoppers) else None
            quantity = max(1, -(-shop.min_spend_fen // product["price_fen"]))
            order = sim.order(ip, token, device, [(product["id"], quantity)], packet, "bench")
            if order is not None:
                sim.clock.advance(rng.uniform(20, 90))
                sim.pay(ip, order, "bench")
    finally:
        state.dispatcher.wait_idle(30)
        state.dispatcher.transport = delivering
    sim.clock.advance(60)
    return captured
