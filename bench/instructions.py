"""``python -m bench.instructions [claims|keyed|notify ...]``: CPU instructions per request, counted by valgrind.

The gunicorn benchmarks (``bench claims``, ``bench notify``) give req/s against the empty route; on a shared
2-core virtual machine whose speed drifts (the same loop took 0.27 s and 0.6 s on one day, 2026-12-01) two
runs of one commit differ by ±15 %, more than most single changes to the hot paths are worth. This counts
instead: valgrind's callgrind runs one in-process app (the Flask WSGI app called directly, live WeChat mode,
PostgreSQL from ``BENCH_DATABASE_URL`` as the other benchmarks) and counts the instructions the app's process
executes for ``BENCH_INSTRUCTIONS_N`` requests (default 200) of the empty route, then as many of the path,
after a warm-up. The same commit gives the same count to a fraction of a percent, so two commits compare.

It counts the app's own Python only: not gunicorn's request handling, not PostgreSQL's work (the other
benchmarks' "CPU/request ... PostgreSQL" figure), not waiting. The line's ratio (empty route ÷ path) is
therefore not the gunicorn benchmarks' ratio; what it is for is telling whether a change to the app's code
made a path cheaper, and by how much.

Needs valgrind (``apt-get install valgrind``); several minutes per path (valgrind runs Python ~50× slower).
Not a ``*_bench`` module: ``python -m bench`` does not run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import harness

N = harness.env_int("BENCH_INSTRUCTIONS_N", 200)
WARM = 30
PATHS = ("claims", "keyed", "notify")
_TOTAL = re.compile(rb"^totals: (\d+)", re.MULTILINE)


def run(paths: list[str] | None = None) -> Iterator[str]:
    url = harness.database_url()
    if not url:
        yield "instructions: skipped (set BENCH_DATABASE_URL=postgresql+psycopg://…)"
        return
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        yield "instructions: skipped (needs valgrind: apt-get install valgrind)"
        return
    for path in paths or PATHS:
        harness.progress(f"instructions: {path} under valgrind (minutes)")
        empty, real = _counted(path)
        yield (
            f"instructions {path} (in-process, {N} requests each): {real / N:,.0f} per request vs empty route "
            f"{empty / N:,.0f} → {empty / real:.4f}x (the app's own instructions: no gunicorn, no PostgreSQL)"
        )


def _counted(path: str) -> tuple[int, int]:
    """(instructions of N empty requests, of N requests of ``path``), from a child run under callgrind."""
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        done = subprocess.run(  # noqa: S603 - valgrind and our own interpreter
            [
                "valgrind",
                "--tool=callgrind",
                "--cache-sim=no",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.instructions",
                "--child",
                path,
            ],
            cwd=harness.ROOT,
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            timeout=3600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the child under valgrind failed:\n{done.stderr[-3000:].decode(errors='replace')}")
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        if len(dumps) < 2:
            raise RuntimeError(f"expected two callgrind dumps, found {[p.name for p in dumps]}")
        empty, real = (_total(p) for p in dumps[:2])
        return empty, real


def _total(dump: Path) -> int:
    found = _TOTAL.search(dump.read_bytes())
    if not found:
        raise RuntimeError(f"no total in {dump}")
    return int(found.group(1))


# -- the child, under valgrind -----------------------------------------------------------------------


def _child(path: str) -> None:
    from werkzeug.test import EnvironBuilder

    with harness.workspace() as tmp, harness.ThrowAwayDatabase(harness.database_url(), "instr") as database:
        wechat = harness.BenchWeChat(tmp)
        app, requests = _prepared(path, wechat, database)
        environs = [
            EnvironBuilder(path=p, method=m, data=b, headers=h, environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()
            for m, p, b, h in requests
        ]
        empty_path = harness.EMPTY_PATH
        empties = [EnvironBuilder(path=empty_path, environ_base={"REMOTE_ADDR": "127.0.0.1"}).get_environ()]
        statuses: list[str] = []

        def call(environ: dict) -> None:
            body = app.wsgi_app(dict(environ), lambda status, headers, exc_info=None: statuses.append(status))
            b"".join(body)
            getattr(body, "close", lambda: None)()

        for environ in environs[:WARM]:
            call(environ)
        for _ in range(WARM):
            call(empties[0])
        _measured(lambda: [call(empties[0]) for _ in range(N)])  # the first dump
        _measured(lambda: [call(environ) for environ in environs[WARM:]])  # the second
        bad = {s for s in statuses if s[0] not in "2"}
        with app.app_context():
            from models import db

            db.engine.dispose()
        if bad:
            raise SystemExit(f"unexpected answers: {bad}")


def _measured(block) -> None:
    """Count the instructions of ``block`` only, then write them to a dump file of their own."""
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "--zero", pid], capture_output=True, check=True)  # noqa: S607
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)  # noqa: S607
    block()
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=True)  # noqa: S607
    subprocess.run(["callgrind_control", "--dump", pid], capture_output=True, check=True)  # noqa: S607


def _prepared(path: str, wechat, database) -> tuple:
    """The app and ``WARM + N`` requests of ``path`` (as the gunicorn benchmarks make them)."""
    if path == "notify":
        from bench.notify_bench import Shop

        settings = harness.app_settings(database.url, wechat)
        harness.migrate(settings)
        app = harness.in_process_app(settings)
        shop = Shop(app, wechat)
        shop.setup()
        requests = []
        for out_trade_no, amount in shop.take(WARM + N):
            body, headers = wechat.notification(wechat.paid(out_trade_no, amount))
            requests.append(("POST", "/wechat/pay/notify", body, headers))
        return app, requests
    from bench.claims_bench import CLAIM_SETTINGS, People, campaign, claims

    settings = harness.app_settings(database.url, wechat, **CLAIM_SETTINGS)
    harness.migrate(settings)
    app = harness.in_process_app(settings)
    hot = campaign(app, 10**12, "hot")
    return app, claims(hot, People(app).take(WARM + N), keyed=path == "keyed")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child(argv[1])
        return 0
    unknown = [a for a in argv if a not in PATHS]
    if unknown:
        print(f"unknown paths {unknown}: choose from {', '.join(PATHS)}", file=sys.stderr)
        return 2
    for line in run(argv or None):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
