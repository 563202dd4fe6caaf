"""The newcomer path and the deployment, run for real: servers in their own processes, played by ``make demo``.

* ``make run``'s shape: one ``flask run`` process, SQLite, the jobs inside it; the demo runs twice
  (fresh people each time, so a second run must work as well as the first).
* Production's shape (README, Deployment): gunicorn with ``deploy/gunicorn.conf.py`` and 2 workers,
  ``flask jobs run`` as its own process, PostgreSQL (a fresh database next to ``TEST_DATABASE_URL``),
  Redis on 127.0.0.1:6379, the simulator; skipped only without ``TEST_DATABASE_URL`` or Redis.

Every server runs in its own process group, killed in a ``finally``; a failure shows the demo's
output and the tail of every server log.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, make_url, text

from config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
REDIS = ("127.0.0.1", 6379)
BOOT_TIMEOUT_S = 30
DEMO_TIMEOUT_S = 40  # per asynchronous step; the dispatcher looks for due payouts every 2 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(**settings: str) -> dict[str, str]:
    """This machine's environment without any of our settings, then the run's own."""
    env = {k: v for k, v in os.environ.items() if k not in {s.name for s in SETTINGS}}
    return {**env, "FLASK_APP": "app", "PYTHONUNBUFFERED": "1", **settings}


class Servers:
    """Processes started in their own groups, with their output in files; ``stop`` kills every group."""

    def __init__(self, logs: Path):
        self.logs, self.started = logs, []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with (self.logs / f"{name}.log").open("wb") as log:  # the child keeps its own handle
            process = subprocess.Popen(  # noqa: S603 - our own interpreter
                [sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append((name, process))
        return process

    def wait_healthy(self, base_url: str) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in self.started:
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode} while starting\n{self.tails()}")
            try:
                if requests.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        pytest.fail(f"{base_url}/healthz not healthy after {BOOT_TIMEOUT_S} s\n{self.tails()}")

    def stop(self) -> None:
        for _, process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def tails(self, lines: int = 40) -> str:
        shown = []
        for path in sorted(self.logs.glob("*.log")):
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            shown.append(f"--- {path.name} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(shown)


def run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def play_demo(servers: Servers, base_url: str, env: dict[str, str]) -> str:
    demo = run(["-m", "demo", "--base-url", base_url, "--timeout", str(DEMO_TIMEOUT_S)], env, timeout=150)
    assert demo.returncode == 0, f"demo failed:\n{demo.stdout}\n{demo.stderr}\n{servers.tails()}"
    return demo.stdout


def assert_whole_story(output: str) -> None:
    for told in (
        "Alice paid 40.00 yuan for a 50.00 order",
        "rebate 4.00 to balance",
        "Her balance: 4.00.",
        "paid 200.00 yuan for a 200.00 order",
        "payout #",
        "succeeded: 40.00 in her WeChat change",
        "0 violations",
    ):
        assert told in output, f"the demo did not tell {told!r}; it said:\n{output}"


@pytest.fixture
def servers(tmp_path):
    started = Servers(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def test_make_run_shape_plays_the_demo_twice(tmp_path, servers):
    # given: what `make run` starts (one process, SQLite, jobs inside, per-address limits off)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = base_env(
        WECHAT_MODE="simulator",
        DATABASE_URL=f"sqlite:///{tmp_path / 'demo.db'}",
        PUBLIC_BASE_URL=base_url,
        RUN_JOBS_IN_PROCESS="1",
        CLAIM_IP_PER_DAY="0",
        CLAIM_IP_INTERVAL_SECONDS="0",
        CHALLENGE_SETTLE_SECONDS="5",  # as `make run`: the demo waits for the challenge's settlement
    )
    migrated = run(["-m", "flask", "db", "upgrade"], env, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    servers.start("flask-run", ["-m", "flask", "run", "--port", str(port), "--no-reload", "--with-threads"], env)
    servers.wait_healthy(base_url)
    # when
    first = play_demo(servers, base_url, env)
    second = play_demo(servers, base_url, env)
    # then
    assert_whole_story(first)
    assert_whole_story(second)
    assert "Demo run" in second and second.split()[2] != first.split()[2]  # fresh people: another run id


@pytest.fixture
def fresh_postgres():
    """A database of its own beside TEST_DATABASE_URL's (the suite truncates that one), dropped afterwards."""
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("set TEST_DATABASE_URL: the production-like run needs PostgreSQL")
    name = f"deploy_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_redis():
    """A Redis database of its own, emptied before and after: the simulated WeChat starts clean.

    One of databases 1–15, claimed by a key in database 0 (``make test`` runs the SQLite and the
    PostgreSQL suites at once, each may be here at the same moment).
    """
    import redis

    try:
        socket.create_connection(REDIS, timeout=1).close()
    except OSError:
        pytest.skip(f"Redis is not reachable at {REDIS[0]}:{REDIS[1]}")
    claims = redis.Redis.from_url(f"redis://{REDIS[0]}:{REDIS[1]}/0")
    number = next((n for n in range(1, 16) if claims.set(f"tests:redis-db:{n}", os.getpid(), nx=True, ex=900)), None)
    if number is None:
        pytest.skip("every Redis database 1-15 is claimed by another test run")
    claim = f"tests:redis-db:{number}"
    url = f"redis://{REDIS[0]}:{REDIS[1]}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
        claims.delete(claim)
        claims.close()


def test_gunicorn_jobs_postgres_redis_play_the_demo(servers, fresh_postgres, fresh_redis):
    # given: production's shape, the simulator in place of WeChat, keys made as the README says
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = base_env(
        WECHAT_MODE="simulator",
        DATABASE_URL=fresh_postgres,
        REDIS_URL=fresh_redis,
        SECRET_KEY=secrets.token_urlsafe(48),
        DATA_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        PUBLIC_BASE_URL=base_url,
        CLAIM_IP_PER_DAY="0",
        CLAIM_IP_INTERVAL_SECONDS="0",
        CHALLENGE_SETTLE_SECONDS="5",  # as `make run`: the demo waits for the challenge's settlement
    )
    migrated = run(["-m", "flask", "db", "upgrade"], env, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    gunicorn = ["-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    servers.start("gunicorn", gunicorn, env)
    servers.start("jobs", ["-m", "flask", "jobs", "run"], env)
    servers.wait_healthy(base_url)
    # when
    output = play_demo(servers, base_url, env)
    # then
    assert_whole_story(output)
    assert "Booting worker" in servers.tails(200) and "Using worker: gthread" in servers.tails(200)
