"""``python -m bench.gunicorn_sweep``: the notify and claims benchmarks under several gunicorn shapes, a line each.

How deploy/gunicorn.conf.py's worker class, worker count and threads were chosen (its docstring and
the README, Deployment, carry the figures). One database, one seeded shop (bench/notify_bench.py) and
one hot claim campaign (bench/claims_bench.py) for every shape, a fresh server per shape, the empty route
and the real path interleaved as usual. Not a ``*_bench`` module: ``python -m bench`` does not run it (minutes).
``BENCH_SHAPES`` overrides the list: ``sync:2,gthread:2:8,...``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from bench import harness
from bench.claims_bench import CLAIM_SETTINGS, ClaimsBench, People, campaign
from bench.harness import BenchWeChat, Clients, CpuMeter, Server, ServerShape
from bench.notify_bench import CLIENTS, HISTORY, NotifyBench, Shop

SHAPES = "sync:2,sync:4,gthread:2:1,gthread:2:2,gthread:2:4,gthread:3:2,gthread:4:1,gthread:4:2"


def shapes() -> list[ServerShape]:
    out = []
    for item in (os.environ.get("BENCH_SHAPES") or SHAPES).split(","):
        kind, workers, *threads = item.split(":")
        out.append(ServerShape(kind, int(workers), int(threads[0]) if threads else 1))
    return out


def run() -> Iterator[str]:
    url = harness.database_url()
    if not url:
        yield "gunicorn sweep: set BENCH_DATABASE_URL=postgresql+psycopg://…"
        return
    clients = Clients(CLIENTS)
    try:
        with harness.workspace() as tmp, harness.ThrowAwayDatabase(url, "sweep") as database:
            wechat = BenchWeChat(tmp)
            settings = harness.app_settings(database.url, wechat, **CLAIM_SETTINGS)
            harness.migrate(settings)
            app = harness.in_process_app(settings)
            shop = Shop(app, wechat)
            shop.database = database.name
            shop.setup()
            people, hot = People(app), campaign(app, 10**12, "hot")
            for shape in shapes():
                notify, claims = NotifyBench(url), ClaimsBench(url)
                notify.shape = claims.shape = shape
                notify.database = claims.database = database  # (their run() sets it: ANALYZE after seeding)
                with Server(settings, shape, tmp) as server:
                    m = notify.measure(shop, clients, server, history=HISTORY)
                    empty, real = claims.measure(clients, server, people, hot, CpuMeter(server, database.name))
                yield notify.line("notify", shop, m)
                yield harness.ratio_line("claims on one hot campaign", shape, CLIENTS, empty, real)
    finally:
        clients.close()


if __name__ == "__main__":
    for line in run():
        print(line, flush=True)
    sys.exit(0)
