"""What every HTTP benchmark shares: a throw-away PostgreSQL database, gunicorn, clients, interleaved rounds.

A benchmark here measures the app as production runs it: ``gunicorn -c deploy/gunicorn.conf.py``
as real server processes (live WeChat mode, so the real verification and decryption run, with
keys the bench generates and the app is configured to trust) against PostgreSQL. Every figure is
a ratio against the **empty route** (``GET /livez``: guards, metrics and the request log line, no
database) measured on the same server in the same run, in alternating short rounds, so whatever
else the machine does hits both.

* ``ThrowAwayDatabase``: ``CREATE DATABASE`` next to ``BENCH_DATABASE_URL`` (which must name a
  PostgreSQL database the user may create databases from), migrated with ``flask db upgrade``,
  dropped afterwards (``WITH (FORCE)``), whatever happened.
* ``BenchWeChat``: the WeChat side: a WeChat Pay public key pair and an APIv3 key; signs and
  encrypts notifications exactly as WeChat does, with ``cryptography`` directly (not the app's
  own ``wechat.crypto``, so the app's verification is checked against an independent signer).
* ``Server``: gunicorn with the repository's config, worker class / count / threads overridable
  (``BENCH_WORKER_CLASS``, ``BENCH_WORKERS``, ``BENCH_THREADS``), its log in a temporary file.
* ``Clients``: N client processes (``BENCH_CLIENTS``, default 4), each one keep-alive
  ``http.client`` connection: processes, not threads, so the load generator's own Python does not
  share one GIL; ``http.client``, not ``requests``, so it costs the server's two cores little.
* ``Figures``: a path's rounds (the benchmarks alternate rounds of the empty route and of the
  real path) as req/s and p50/p99; ``ratio_line`` prints the ratio.
* ``counted``: SQL statements per operation, counted in-process (Flask test client, a
  ``before_cursor_execute`` listener; an executemany counts once) on the same seeded data.

Never run by the test suite: figures depend on the machine; only the ratios mean much.
"""

from __future__ import annotations

import base64
import http.client
import json
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parent.parent
EMPTY_PATH = "/livez"
BOOT_TIMEOUT_S = 60
BEIJING = timezone(timedelta(hours=8))
PUBLIC_KEY_ID = "PUB_KEY_ID_0114" + "0" * 18 + "BENCH"  # WeChat's form: PUB_KEY_ID_ + digits


_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr (a phase, a round): stdout keeps only the result lines."""
    print(f"[bench {time.monotonic() - _STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


def database_url() -> str | None:
    return os.environ.get("BENCH_DATABASE_URL") or None


# -- the database ---------------------------------------------------------------------------


class ThrowAwayDatabase:
    """A database of its own beside ``BENCH_DATABASE_URL``'s, dropped on exit; nothing else is touched."""

    def __init__(self, url: str, label: str) -> None:
        from sqlalchemy import make_url

        self.admin_url = url
        self.name = f"bench_{label}_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = make_url(url).set(database=self.name).render_as_string(hide_password=False)

    def __enter__(self) -> ThrowAwayDatabase:
        self._execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def analyze(self) -> None:
        """``ANALYZE`` the whole database after seeding: what autovacuum does in production. A server with
        autovacuum off (this machine's) keeps the statistics of the empty tables it was migrated with, and
        the planner, believing every table nearly empty, reads a payment's packets by scanning every packet
        ever issued: the cost then grows with the history, as it never would in production. The servers'
        prepared statements are planned again at their next execution (ANALYZE invalidates their plans)."""
        if not self._analyzed_note:
            self._analyzed_note = True
            if self._execute("SHOW autovacuum", self.url) == "off":
                progress("autovacuum is off on this server: the bench runs ANALYZE itself after seeding")
        self._execute("ANALYZE", self.url)

    _analyzed_note = False

    def _execute(self, sql: str, url: str | None = None):
        from sqlalchemy import create_engine, text

        engine = create_engine(url or self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(text(sql))
                return result.scalar() if result.returns_rows else None
        finally:
            engine.dispose()


def on_each_backend(label: str, measure: Callable[[str], Any]) -> Iterator[tuple[str, Any]]:
    """``(backend, measure(url))`` on a SQLite file of its own, then (``BENCH_DATABASE_URL`` set) on a PostgreSQL
    database of its own beside it, dropped afterwards (the simulator's schema with it): nothing else is touched."""
    with tempfile.TemporaryDirectory() as tmp:
        progress(f"{label}: SQLite")
        yield "sqlite", measure(f"sqlite:///{tmp}/bench.db")
    url = database_url()
    if url:
        progress(f"{label}: PostgreSQL")
        with ThrowAwayDatabase(url, label) as database:
            yield "postgresql", measure(database.url)


@contextmanager
def simulator_app(url: str) -> Iterator[Any]:
    """The app on ``url`` in simulator mode, its tables made (``create_all``), its app context pushed; quiet."""
    from app import create_app
    from models import db

    app = create_app(
        {
            "DATABASE_URL": url,
            "TESTING": True,
            "WECHAT_MODE": "simulator",
            "SECRET_KEY": "bench-only-secret",
            "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "LOG_LEVEL": "WARNING",
        }
    )
    with app.app_context():
        db.create_all()
        try:
            yield app
        finally:
            db.session.remove()
            db.engine.dispose()


# -- WeChat's side ----------------------------------------------------------------------------


class BenchWeChat:
    """WeChat Pay as the app sees it: the platform's signing key (public-key mode) and the APIv3 key."""

    def __init__(self, directory: Path) -> None:
        self.platform_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        merchant_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.apiv3_key = secrets.token_hex(16)  # 32 characters, as WeChat's
        self.public_key_path = directory / "wechatpay_public_key.pem"
        self.public_key_path.write_bytes(
            self.platform_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.merchant_key_path = directory / "apiclient_key.pem"
        self.merchant_key_path.write_bytes(
            merchant_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.mchid, self.appid = "1900000109", "wxbench0000000001"

    def settings(self) -> dict[str, str]:
        """What a merchant configures to trust this WeChat (live mode, public-key verification)."""
        return {
            "WECHAT_MODE": "live",
            "WECHAT_APPID": self.appid,
            "WECHAT_APP_SECRET": secrets.token_hex(16),
            "WECHAT_MCHID": self.mchid,
            "WECHAT_MCH_PRIVATE_KEY_PATH": str(self.merchant_key_path),
            "WECHAT_MCH_CERT_SERIAL": secrets.token_hex(20).upper(),
            "WECHAT_APIV3_KEY": self.apiv3_key,
            "WECHAT_PAY_PUBLIC_KEY_PATH": str(self.public_key_path),
            "WECHAT_PAY_PUBLIC_KEY_ID": PUBLIC_KEY_ID,
        }

    def notification(self, resource: dict[str, Any], event_type: str = "TRANSACTION.SUCCESS") -> tuple[bytes, dict]:
        """(body, headers): the resource AEAD_AES_256_GCM-encrypted with the APIv3 key, the body RSA-SHA256 signed
        over ``timestamp\\nnonce\\nbody\\n`` (docs/wechat-rules.md §3)."""
        nonce = secrets.token_hex(6)
        plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
        ciphertext = AESGCM(self.apiv3_key.encode()).encrypt(nonce.encode(), plaintext, b"transaction")
        envelope = {
            "id": str(uuid.uuid4()),
            "create_time": datetime.now(BEIJING).isoformat(timespec="seconds"),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "associated_data": "transaction",
                "nonce": nonce,
            },
        }
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp, sign_nonce = str(int(time.time())), secrets.token_hex(16)
        message = f"{timestamp}\n{sign_nonce}\n".encode() + body + b"\n"
        signature = self.platform_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        headers = {
            "Content-Type": "application/json",
            "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": sign_nonce,
            "Wechatpay-Signature": base64.b64encode(signature).decode(),
            "Wechatpay-Serial": PUBLIC_KEY_ID,
            "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        }
        return body, headers

    def paid(self, out_trade_no: str, amount_fen: int, openid: str = "bench-openid") -> dict[str, Any]:
        """A ``TRANSACTION.SUCCESS`` resource for an order of ours paid in full."""
        return {
            "appid": self.appid,
            "mchid": self.mchid,
            "out_trade_no": out_trade_no,
            "transaction_id": f"4200{secrets.randbelow(10**18):018d}",
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "bank_type": "OTHERS",
            "success_time": datetime.now(BEIJING).isoformat(timespec="seconds"),
            "payer": {"openid": openid},
            "amount": {"total": amount_fen, "payer_total": amount_fen, "currency": "CNY", "payer_currency": "CNY"},
        }


def app_settings(database: str, wechat: BenchWeChat, **extra: str) -> dict[str, str]:
    """The server's environment: production's defaults, live mode, the bench's WeChat keys."""
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")  # live mode needs it for >1 process
    return {
        **wechat.settings(),
        "DATABASE_URL": database,
        "REDIS_URL": redis_url,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "DATA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "PUBLIC_BASE_URL": "https://bench.invalid",
        **extra,
    }


def in_process_app(settings: dict[str, str]):
    """The same app in this process (seeding, statement counts), quiet: warnings only."""
    from app import create_app
    from config import SETTINGS

    parse = {s.name: s.parse for s in SETTINGS}
    overrides = {k: parse[k](v) if k in parse else v for k, v in settings.items()}
    overrides["LOG_LEVEL"] = "WARNING"
    return create_app(overrides)


def child_env(settings: dict[str, str]) -> dict[str, str]:
    """This machine's environment without any of the app's settings, then the run's own."""
    from config import SETTINGS

    names = {s.name for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "FLASK_APP": "app", "PYTHONUNBUFFERED": "1", **settings}


def migrate(settings: dict[str, str]) -> None:
    progress("migrating the throw-away database")
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "flask", "db", "upgrade"],
        cwd=ROOT,
        env=child_env(settings),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed:\n{done.stderr[-3000:]}")


# -- the server -------------------------------------------------------------------------------


@dataclass
class ServerShape:
    worker_class: str = "gthread"
    workers: int = 2
    threads: int = 8

    @classmethod
    def from_env(cls) -> ServerShape:
        """The repository's configuration unless ``BENCH_WORKER_CLASS`` / ``BENCH_WORKERS`` / ``BENCH_THREADS`` say."""
        config = load_gunicorn_config()
        return cls(
            os.environ.get("BENCH_WORKER_CLASS") or config["worker_class"],
            env_int("BENCH_WORKERS", config["workers"]),
            env_int("BENCH_THREADS", config["threads"]),
        )

    def __str__(self) -> str:
        threads = f" x {self.threads} threads" if self.worker_class == "gthread" else ""
        return f"{self.workers} {self.worker_class} workers{threads}"


def load_gunicorn_config() -> dict[str, Any]:
    """deploy/gunicorn.conf.py's own values (what ``gunicorn -c`` would read)."""
    namespace: dict[str, Any] = {"__file__": str(ROOT / "deploy" / "gunicorn.conf.py")}
    exec(compile((ROOT / "deploy" / "gunicorn.conf.py").read_text(), "gunicorn.conf.py", "exec"), namespace)  # noqa: S102
    return namespace


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn with deploy/gunicorn.conf.py in its own process group; ``stop`` kills the group."""

    def __init__(self, settings: dict[str, str], shape: ServerShape, log_dir: Path) -> None:
        self.port = free_port()
        self.shape = shape
        self.log_path = log_dir / f"gunicorn-{self.port}.log"
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "deploy/gunicorn.conf.py",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(shape.workers),
            "--worker-class",
            shape.worker_class,
            "--threads",
            str(shape.threads),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter
                args, cwd=ROOT, env=child_env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def __enter__(self) -> Server:
        progress(f"starting gunicorn ({self.shape})")
        try:
            self.wait_ready()
            progress("server ready")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.tail()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    self._warm()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"gunicorn not healthy after {BOOT_TIMEOUT_S} s:\n{self.tail()}")

    def _warm(self) -> None:
        """Every worker has imported and connected before a round is timed (each answers a few requests)."""
        for _ in range(20 * self.shape.workers):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


class CpuMeter:
    """CPU seconds (user + system) used so far by the server's processes (gunicorn's process group) and by
    PostgreSQL's backends serving the bench database, read from /proc (Linux; zeros elsewhere).

    Sampled around each round, it splits a path's cost per request between the app and the database: on a
    machine whose cores the app, PostgreSQL and the clients share, that split says where the ceiling is."""

    def __init__(self, server: Server, database: str) -> None:
        self.pgid, self.database = server.process.pid, database
        self.ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __call__(self) -> tuple[float, float]:
        app = db = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
            except OSError:
                continue
            used = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            if int(fields[2]) == self.pgid:  # the process group (field 5)
                app += used
            elif cmdline.startswith(b"postgres: ") and f" {self.database} ".encode() in cmdline:
                db += used
        return app / self.ticks, db / self.ticks


# -- the clients ------------------------------------------------------------------------------

Request = tuple[str, str, bytes | None, dict[str, str]]  # method, path, body, headers


@dataclass
class Sample:
    """One client's round: how many answered, their latencies, which prepared requests it sent."""

    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    errors: list[str] = field(default_factory=list)


def _client(job: tuple[int, Request | None, list[tuple[int, Request]] | None, float]) -> Sample:
    """One client: the same request until the deadline, or each prepared request once (until the deadline)."""
    port, repeated, prepared, deadline = job
    sample = Sample(started=time.monotonic())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    queue = iter(prepared or ())
    try:
        while time.monotonic() < deadline:
            if repeated is not None:
                index, (method, path, body, headers) = -1, repeated
            else:
                nxt = next(queue, None)
                if nxt is None:
                    break
                index, (method, path, body, headers) = nxt
            began = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            sample.latencies.append(time.perf_counter() - began)
            sample.statuses[response.status] += 1
            if index >= 0:
                sample.sent.append(index)
            if response.status >= 400 and len(sample.errors) < 3:
                sample.errors.append(f"{response.status} {answer[:200]!r}")
    finally:
        conn.close()
        sample.ended = time.monotonic()
    return sample


class Clients:
    """``count`` client processes (forked before this process opens any database connection)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool = multiprocessing.get_context("fork").Pool(count)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def repeat(self, port: int, request: Request, seconds: float) -> Round:
        deadline = time.monotonic() + seconds
        return Round(self.pool.map(_client, [(port, request, None, deadline)] * self.count))

    def each(self, port: int, requests: list[Request], seconds: float) -> Round:
        """Every prepared request at most once, shared out round-robin, for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        shares = [[(i, r) for i, r in enumerate(requests) if i % self.count == c] for c in range(self.count)]
        return Round(self.pool.map(_client, [(port, None, share, deadline) for share in shares]))


@dataclass
class Round:
    samples: list[Sample]

    @property
    def answered(self) -> int:
        return sum(sum(s.statuses.values()) for s in self.samples)

    @property
    def seconds(self) -> float:
        return max(s.ended for s in self.samples) - min(s.started for s in self.samples)

    @property
    def latencies(self) -> list[float]:
        return [x for s in self.samples for x in s.latencies]

    @property
    def sent(self) -> set[int]:
        return {i for s in self.samples for i in s.sent}

    @property
    def statuses(self) -> Counter:
        total: Counter = Counter()
        for s in self.samples:
            total.update(s.statuses)
        return total

    @property
    def errors(self) -> list[str]:
        return [e for s in self.samples for e in s.errors]


@dataclass
class Figures:
    """A path's rounds: requests per second over the rounds' time, latency percentiles."""

    name: str
    rounds: list[Round] = field(default_factory=list)
    cpu_app: float = 0.0  # CPU seconds of the server's processes during the rounds (``measured``)
    cpu_db: float = 0.0  # and of PostgreSQL's backends

    def add(self, r: Round) -> None:
        self.rounds.append(r)

    def measured(self, meter: CpuMeter | None, round_: Callable[[], Round]) -> Round:
        """Run one round, add it, and charge the CPU used meanwhile to this path."""
        before = meter() if meter else (0.0, 0.0)
        r = round_()
        if meter:
            after = meter()
            self.cpu_app += after[0] - before[0]
            self.cpu_db += after[1] - before[1]
        self.add(r)
        progress(f"{self.name}: round {len(self.rounds)} done, {r.answered} answered in {r.seconds:.1f} s")
        return r

    def cpu_per_request(self) -> str:
        answered = sum(r.answered for r in self.rounds)
        if not answered or not (self.cpu_app or self.cpu_db):
            return ""
        app, db = 1000 * self.cpu_app / answered, 1000 * self.cpu_db / answered
        return f"CPU/request app {app:.2f} ms + PostgreSQL {db:.2f} ms"

    @property
    def rate(self) -> float:
        seconds = sum(r.seconds for r in self.rounds)
        return sum(r.answered for r in self.rounds) / seconds if seconds else 0.0

    def percentile(self, p: float) -> float:
        values = sorted(x for r in self.rounds for x in r.latencies)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000

    @property
    def statuses(self) -> Counter:
        total: Counter = Counter()
        for r in self.rounds:
            total.update(r.statuses)
        return total

    def summary(self) -> str:
        return f"{self.rate:,.0f} req/s, p50 {self.percentile(50):.1f} ms, p99 {self.percentile(99):.1f} ms"


def empty_request() -> Request:
    return ("GET", EMPTY_PATH, None, {})


def ratio_line(name: str, shape: ServerShape, clients: int, empty: Figures, real: Figures, extra: str = "") -> str:
    ratio = real.rate / empty.rate if empty.rate else float("nan")
    cpu = ""
    if real.cpu_per_request():
        cpu = f"; {real.cpu_per_request()} (empty route: {empty.cpu_per_request() or 'n/a'})"
    return (
        f"{name} ({shape}, {clients} clients): {real.summary()} vs empty route {empty.summary()} → {ratio:.3f}x"
        f"{cpu}{extra}"
    )


def check_statuses(figures: Figures, ok: set[int]) -> None:
    """Stop the run when any answer was not one of ``ok``: a figure of failures would mean nothing."""
    bad = {s: n for s, n in figures.statuses.items() if s not in ok}
    if bad:
        errors = [e for r in figures.rounds for e in r.errors][:5]
        raise RuntimeError(f"{figures.name}: unexpected answers {bad}: {errors}")


# -- statements -------------------------------------------------------------------------------


@contextmanager
def counted(engine) -> Iterator[list[str]]:
    """Every statement ``engine`` sends while inside (an executemany is one)."""
    from sqlalchemy import event

    statements: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def now_utc() -> datetime:
    return datetime.now(UTC)


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        yield Path(tmp)
