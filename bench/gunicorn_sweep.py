"""``python -m bench.gunicorn_sweep``: the notify benchmark under several gunicorn shapes, one line each.

How deploy/gunicorn.conf.py's worker class, worker count and threads were chosen (its docstring and
the README, Deployment, carry the figures). One database and one seeded shop for every shape
(bench/notify_bench.py), a fresh server per shape, the empty route and paid notifications
interleaved as usual. Not a ``*_bench`` module: ``python -m bench`` does not run it (minutes).
``BENCH_SHAPES`` overrides the list: ``sync:2,gthread:2:8,...``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from bench import harness
from bench.harness import BenchWeChat, Clients, Server, ServerShape
from bench.notify_bench import CLIENTS, HISTORY, NotifyBench, Shop

SHAPES = "sync:2,sync:3,sync:4,gthread:2:2,gthread:2:4,gthread:2:8,gthread:3:2,gthread:3:4,gthread:4:1,gthread:4:2"


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
            settings = harness.app_settings(database.url, wechat)
            harness.migrate(settings)
            shop = Shop(harness.in_process_app(settings), wechat)
            shop.setup()
            for shape in shapes():
                bench = NotifyBench(url)
                bench.shape = shape
                with Server(settings, shape, tmp) as server:
                    m = bench.measure(shop, clients, server, history=HISTORY)
                yield bench.line("notify", shop, m)
    finally:
        clients.close()


if __name__ == "__main__":
    for line in run():
        print(line, flush=True)
    sys.exit(0)
