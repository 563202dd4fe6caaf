"""Payout dispatch at the rail's rate: 1, then 2 jobs processes draining a backlog of change transfers.

Against PostgreSQL (``BENCH_DATABASE_URL``, e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/test``):
creates a throw-away database ``bench_dispatch_<pid>`` on that server (dropped at the end), seeds a backlog
of pending change transfers, starts the simulator-mode app under gunicorn as WeChat (its records in the
bench database), then jobs processes (``python -m bench.dispatch_bench --worker``: the app and nothing but
``jobs.payouts.dispatch_backlog`` with the configured limiter, what ``flask jobs run`` schedules) whose
WeChat Pay host is that server: the simulator's signing, checks and records are not the jobs' CPU.

Rates are shared through Redis (``BENCH_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) under a
merchant id of the run's own, so nothing else on that Redis counts against it. Figures, per process count:

- payouts/s in the steady state, and its ratio to the configured rate (goal ≥ 0.9): the sends in the whole
  seconds from 1 s after the first send to the last whole second before the last send, divided by those
  seconds. The first second is left out because a moving window lets a full window's worth go as fast as
  the calls can (its length says how quick the start-up is, not the rate kept), and the last partial second
  because the backlog runs out in it. Every 1 s window holds at most the rate's sends (the limiter's
  guarantee, checked by the next figure), so this figure can never read above 1.00× however the run is
  cut; it reads below only when the dispatcher cannot keep up. (An earlier figure, sends ÷ (first-to-last
  span + 1 s), counted the start-up second as if a window's worth went at once: with 16 calls in flight it
  takes most of a second, so a 4 s run read about 0.8× at best however fast the dispatcher was. It is still
  printed, as "whole run", for comparison.)
- the most sends in any 1 s window of the payouts' send times (the moments the shared window counted them;
  never above the rate), payouts each process sent, and SQL statements per payout in the jobs processes.

``BENCH_DISPATCH_RATE`` (default 100/s) and ``BENCH_DISPATCH_SECONDS`` (default 8: the backlog is rate ×
that × processes, so the steady state has several whole seconds to count).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, event, func, insert, select, text
from sqlalchemy.engine import make_url

from bench import harness

RATE = int(os.environ.get("BENCH_DISPATCH_RATE", "100"))
SECONDS = float(os.environ.get("BENCH_DISPATCH_SECONDS", "8"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = "BD"


def run() -> Iterator[str]:
    url = os.environ.get("BENCH_DATABASE_URL")
    if not url:
        yield "dispatch: skipped (set BENCH_DATABASE_URL to a PostgreSQL server)"
        return
    server = make_url(url)
    name = f"bench_dispatch_{os.getpid()}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        bench_url = server.set(database=name).render_as_string(hide_password=False)
        port = _free_port()
        env = {
            "BENCH_WORKER_DB": bench_url,
            "BENCH_WORKER_KEY": Fernet.generate_key().decode(),
            "BENCH_WORKER_MCHID": f"19{os.getpid() % 10**8:08d}",
            "BENCH_WORKER_WECHAT": f"http://127.0.0.1:{port}",
        }
        app = _app(env)
        with app.app_context():
            from models import db

            db.create_all()
        wechat = _start_wechat(port, env)
        try:
            yield f"dispatch (PostgreSQL, change transfers, the simulator under gunicorn as WeChat, rate {RATE}/s):"
            for processes in (1, 2):
                harness.progress(f"dispatch: seeding payouts for {processes} dispatcher process(es)")
                ids = _seed(app, int(RATE * SECONDS * processes))
                harness.progress(f"dispatch: draining with {processes} process(es)")
                yield _line(processes, ids, _drain(processes, env), app)
        finally:
            wechat.terminate()
            wechat.wait(timeout=30)
    finally:
        admin.dispose()
        with create_engine(server, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_wechat(port: int, env: dict[str, str]) -> subprocess.Popen:
    """The simulator-mode app under gunicorn (2 workers, 8 threads each), serving ``/_sim``; up once it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        + ["--worker-class", "gthread", "--threads", "8", "--log-level", "warning", "app:create_app()"],
        env={
            **os.environ,
            "DATABASE_URL": env["BENCH_WORKER_DB"],
            "WECHAT_MODE": "simulator",
            "DATA_ENCRYPTION_KEY": env["BENCH_WORKER_KEY"],
            "WECHAT_MCHID": env["BENCH_WORKER_MCHID"],
            "PUBLIC_BASE_URL": env["BENCH_WORKER_WECHAT"],
            "LOG_LEVEL": "WARNING",
            "APP_PROCESSES": "1",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{env['BENCH_WORKER_WECHAT']}/healthz", timeout=2):
                return server
        except urllib.error.HTTPError:  # it answers (503: the schema is create_all's, not the migrations')
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"the simulator server failed:\n{server.stderr.read().decode()[-3000:]}") from None
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("the simulator server did not answer /healthz within 60 s")


def _app(env: dict[str, str]):
    """The simulator-mode app of the bench database; with ``BENCH_WORKER_WECHAT``, WeChat Pay is that server."""
    from app import create_app

    wechat = env.get("BENCH_WORKER_WECHAT")
    outside = {}
    if wechat and env.get("BENCH_WORKER_ROLE") == "jobs":
        # Another host name than PUBLIC_BASE_URL's: calls go out over HTTP, not to the in-process simulator.
        outside = {"WECHAT_PAY_API_BASE": wechat.replace("127.0.0.1", "localhost") + "/_sim/pay"}
    return create_app(
        {
            **outside,
            "PUBLIC_BASE_URL": wechat or "http://127.0.0.1:5000",
            "DATABASE_URL": env["BENCH_WORKER_DB"],
            "WECHAT_MODE": "simulator",
            "DATA_ENCRYPTION_KEY": env["BENCH_WORKER_KEY"],
            "WECHAT_MCHID": env["BENCH_WORKER_MCHID"],
            "WECHAT_NUMBER_PREFIX": PREFIX,
            "PAYOUT_RATE_LIMITS": {"wechat_change": RATE},
            "PAYOUT_BATCH": max(50, RATE // 2),
            "LOG_LEVEL": "WARNING",
            "APP_PROCESSES": 1,  # the bench's limiter is on Redis; the app's own REDIS_URL stays unset
            "TESTING": True,  # no request logging set-up, no scheduler
        }
    )


def _seed(app, count: int) -> list[int]:
    """``count`` people with a mini-program openid, a change transfer of 1-2 yuan queued for each."""
    from ledger import account
    from models import AccountKind, Payout, User, UserIdentity, db
    from payouts import enqueue_payout

    with app.app_context():
        first = db.session.execute(select(func.coalesce(func.max(User.id), 0))).scalar_one() + 1
        db.session.execute(insert(User), [{} for _ in range(count)])
        users = db.session.execute(select(User.id).where(User.id >= first).order_by(User.id)).scalars().all()
        appid = app.config["WECHAT_APPID"]
        db.session.execute(
            insert(UserIdentity), [{"user_id": u, "appid": appid, "openid": f"o-bench-{u}"} for u in users]
        )
        fund = account(AccountKind.PLATFORM_MARKETING_FUND)
        ids = []
        for user_id in users:
            payout = enqueue_payout(
                rail="wechat_change",
                user_id=user_id,
                amount_fen=100 + user_id % 100,
                source=fund,
                key=f"bench:{user_id}",
                memo="bench",
                number_prefix=PREFIX,
            )
            ids.append(payout.id)
        db.session.commit()
        assert db.session.query(Payout).filter(Payout.id.in_(ids), Payout.status == "pending").count() == count
        return ids


def _drain(processes: int, env: dict[str, str]) -> list[dict]:
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.dispatch_bench", "--worker"],
            env={**os.environ, **env, "BENCH_DISPATCH_RATE": str(RATE), "BENCH_WORKER_ROLE": "jobs"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        if worker.returncode != 0:
            raise RuntimeError(f"jobs process failed ({worker.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _line(processes: int, ids: list[int], results: list[dict], app) -> str:
    from models import Payout, PayoutAttempt, db

    with app.app_context():
        sends = db.session.execute(
            select(PayoutAttempt.payout_id, PayoutAttempt.created_at)
            .where(PayoutAttempt.payout_id.in_(ids), PayoutAttempt.action == "send")
            .order_by(PayoutAttempt.created_at)
        ).all()
        waiting = db.session.query(Payout).filter(Payout.id.in_(ids), Payout.status == "waiting_user_confirm").count()
        odd = db.session.execute(  # answers other than "waiting for the user" (e.g. a timeout): why
            select(PayoutAttempt.response_code, PayoutAttempt.message).where(
                PayoutAttempt.payout_id.in_(ids), PayoutAttempt.outcome != "waiting_user_confirm"
            )
        ).all()
    at = [s.created_at.timestamp() for s in sends]
    twice = len(sends) - len({s.payout_id for s in sends})
    rate, seconds = _steady(at)
    whole = len(at) / (at[-1] - at[0] + 1.0)  # the earlier figure (start-up second counted as instant)
    peak = _peak(at)
    statements = sum(r["statements"] for r in results) / max(1, sum(r["payouts"] for r in results))
    per_process = "+".join(str(r["payouts"]) for r in results)
    ended = sum((Counter(r["outcomes"]) for r in results), Counter())
    return (
        f"  {processes} jobs process{'es' if processes > 1 else ''}: {len(ids)} payouts "
        f"({per_process}), steady {rate:.1f} payouts/s over {seconds} s = {rate / RATE:.2f}x the rate (goal >= 0.9) "
        f"(whole run {whole / RATE:.2f}x); "
        f"busiest 1 s window {peak} sends = {peak / RATE:.2f}x (never > 1.00); "
        f"sends in each second from the first: {' '.join(map(str, _per_second(at)))}; "
        f"{statements:.1f} SQL statements/payout; waiting for the user {waiting}/{len(ids)}; sent twice {twice}; "
        f"outcomes {dict(ended)}" + _other_answers(odd)
    )


def _steady(at: list[float]) -> tuple[float, int]:
    """Sends per second over the whole seconds [first + 1 s, first + 1 s + n s) that end by the last send."""
    start = at[0] + 1.0
    seconds = int(at[-1] - start)
    if seconds < 1:
        return len(at) / (at[-1] - at[0] + 1.0), 0  # too short a run for a steady state: the whole run
    end = start + seconds
    return sum(1 for moment in at if start <= moment < end) / seconds, seconds


def _other_answers(odd: list) -> str:
    """The answers other than "waiting for the user" (a timeout, say), by code and message."""
    if not odd:
        return ""
    why = Counter(f"{code}: {(message or '')[:80]}" for code, message in odd)
    return f"; other answers {dict(why)}"


def _per_second(at: list[float]) -> list[int]:
    counts = Counter(int(moment - at[0]) for moment in at)
    return [counts[n] for n in range(max(counts) + 1)]


def _peak(at: list[float]) -> int:
    """The most send times in any window [t, t + 1 s): the window starting at each send is enough."""
    most, start = 0, 0
    for end, moment in enumerate(at):
        while moment - at[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def worker() -> None:
    """One jobs process: the dispatch loop until the backlog is empty; prints what it did as JSON."""
    from jobs.payouts import dispatch_backlog, dispatch_limiter, payout_rails
    from models import db
    from payouts.record import DispatchSettings

    env = os.environ
    app = _app(dict(env))
    with app.app_context():
        statements = [0]

        @event.listens_for(db.engine, "before_cursor_execute")
        def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ARG001
            statements[0] += len(parameters) if executemany and isinstance(parameters, list) else 1

        rails = payout_rails(app)
        settings = DispatchSettings.from_config(app.config)
        limiter = dispatch_limiter(rails, REDIS_URL, settings, mchid=env["BENCH_WORKER_MCHID"])
        started = time.monotonic()
        outcomes = dispatch_backlog(
            rails,
            settings=settings,
            limiter=limiter,
            calls_in_flight=app.config["PAYOUT_CALLS_IN_FLIGHT"],
            max_seconds=90,
        )
        print(
            json.dumps(
                {
                    "payouts": sum(outcomes.values()),
                    "outcomes": dict(outcomes),
                    "seconds": time.monotonic() - started,
                    "statements": statements[0],
                    "ended": datetime.now().isoformat(),
                }
            )
        )


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    worker()
