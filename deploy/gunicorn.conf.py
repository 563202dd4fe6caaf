"""gunicorn settings: ``gunicorn -c deploy/gunicorn.conf.py`` (README, Deployment).

Chosen by measurement (``python -m bench.gunicorn_sweep``: the paid-notification path and the
empty route ``/livez`` interleaved, PostgreSQL, this 2-core machine, 2026-11-30, three sweeps
while other test suites ran beside them: absolute figures swing ±30 %, so only what held in every
sweep counts):

====================  ===============  =====================  ==============================
shape                 empty route      notify (4 / 8 clients)  notify p99 (4 / 8 clients)
====================  ===============  =====================  ==============================
2 sync                304–499 req/s    4–6 / 4–5 req/s        1.2–1.3 s / 1.8–2.5 s
4 sync                268–355          3                      2.8–3.5 s / –
2 gthread × 1         673              5                      1.4 s / –
2 gthread × 2         606–645          4–5                    2.0–2.7 s / –
2 gthread × 4         531–705          4 / 3–4                1.8–2.7 s / 3.2–3.8 s
2 gthread × 8         479–584          2–3 / 3                3.3–3.6 s / 3.5–4.7 s
4 gthread × 2         628–944          5–7 / 3                1.9–3.1 s / 3.4–4.5 s
====================  ===============  =====================  ==============================

Re-run after the hot-path work of issue 11 (2026-12-01, the notification path no longer serialised on its
campaigns' rows; ``python -m bench.gunicorn_sweep``, now the claims path too, one sweep on a quiet machine,
4 clients, ratios to the empty route; the empty route answered 3,150–3,830 req/s in every shape, keep-alive
or not):

====================  ===============  ===========================
shape                 notify           claims on one hot campaign
====================  ===============  ===========================
2 sync                0.054×           0.185×
4 sync                0.053×           0.197×
5 sync                0.050×           0.188×
8 sync                0.046×           0.175×
2 gthread × 1         0.050×           0.147×
2 gthread × 2         0.045×           0.163×
2 gthread × 4         0.046×           0.152×
3 gthread × 2         0.047×           0.158×
4 gthread × 1         0.048×           0.158×
4 gthread × 2         0.045×           0.164×
====================  ===============  ===========================

With 2–5 workers ``sync`` answered 5–25 % more on both hot paths (claims 0.185–0.197× against
0.147–0.164×; app CPU per claim 1.9–2.0 ms against 2.0–2.2 ms), and keep-alive no longer shows on the
empty route. Still ``gthread``: a sync worker is one request in flight, and the requests that wait on
WeChat (login's ``jscode2session``, a prepay, an OAuth code: ~0.1–0.3 s each when WeChat is well, up to
13 s when not) are the flash sale's traffic too. A node serves at most (requests in flight) ÷ (WeChat's
answer time) of them: 8 in flight (2 × 4) at 0.15 s is ~53 a second, 4 sync workers ~27, and every
claim or notification queues behind them once the slots are full. Threads add slots for the price of a
thread; sync workers for the price of a process (memory, a database connection, a cold cache: 8 sync
workers lost most of the advantage, 0.046× / 0.175×). The gap is CPU per request on the hot paths, and
is closed there, not by giving up slots.

Worker class ``gthread``. It keeps connections alive (``sync`` closes each one after its answer),
which was worth 1.1–2.1× on the empty route with keep-alive clients in the first sweep (not in the
second); and a
request of this app often *waits*, on WeChat (a prepay or ``jscode2session`` call: up to 3 s to
connect + 10 s to read) and on PostgreSQL row locks (up to ``DATABASE_LOCK_TIMEOUT_S``): a sync
worker is one waiting request per process, so a handful of slow WeChat answers would stop the site,
while threads release the GIL as they wait. Not gevent: it would have to monkey-patch psycopg, ``requests``
and the scheduler's threads, and nothing here needs thousands of open connections.

Counts. ``workers``: ``WEB_CONCURRENCY`` if set, else one per CPU core and at least two (a worker
restarting never leaves the node without one). Four workers on two cores scored as well or
better in some runs, but on a machine shared with other busy processes more processes simply win
more of the scheduler's time; on a node of its own they only add memory and database connections
(``WEB_CONCURRENCY`` raises the count where a measurement says so). ``threads``: 4. Eight bought no
throughput on either path and had the longest notification tail in every paired run; four leave
each process several requests waiting on WeChat at once. Below the SQLAlchemy pool of 10
connections per process (app.py), so a thread never waits for a connection; a node then holds at
most workers × 4 (+ the jobs process's) PostgreSQL connections: size ``max_connections`` for it.

The settings are checked once, in the master, before any worker starts: a refused configuration
prints its list and exits 1 instead of every worker printing a traceback. The worker count is
passed to the app as ``WEB_CONCURRENCY`` so live mode knows it runs several processes (and
requires ``REDIS_URL``). Jobs never run here: ``flask jobs run`` is its own process. The app is
built in each worker, not preloaded in the master, so no database pool, Redis connection or thread
is shared across ``fork``. Metrics: the master sets ``PROMETHEUS_MULTIPROC_DIR`` (emptied at start)
before forking, so ``/metrics`` sums every worker (web/ops.py).
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

chdir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: `app` and `config` import
wsgi_app = "app:create_app()"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")  # behind the TLS-terminating proxy
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY") or max(2, os.cpu_count() or 1))
threads = 4  # measured: see above
preload_app = False
# Above the slowest legitimate request (a 20 s lock wait, or a WeChat connect + read of 13 s, twice
# when the backup host is tried), below what a stuck worker may be left alone.
timeout = 60
graceful_timeout = 30
keepalive = 5  # the proxy keeps connections to us open; close idle ones after 5 s
SHM = "/dev/shm"  # noqa: S108 - gunicorn makes its heartbeat files there with mkstemp
worker_tmp_dir = SHM if os.path.isdir(SHM) else None  # heartbeats off slow or full disks
# X-Forwarded-* are read by the app alone (TRUSTED_PROXY_COUNT, werkzeug's ProxyFix): one place
# decides how many hops to trust, so gunicorn does not interpret them too.
forwarded_allow_ips = ""
control_socket_disable = True  # no `gunicornc` here; two instances on one host would share its path
accesslog = None  # the app logs every request as a JSON line (web/ops.py)
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def on_starting(server):
    """Refuse to start with a bad configuration, once, as a list (before any worker is forked)."""
    os.environ["WEB_CONCURRENCY"] = str(server.cfg.workers)  # what `--workers` finally says
    prepare_metrics_dir()
    from config import ConfigError, load_config

    try:
        settings = load_config()
    except ConfigError as exc:
        remove_made_dirs()  # on_exit does not run when the master never started
        print(exc.report(), file=sys.stderr, flush=True)
        sys.exit(1)
    if settings.get("RUN_JOBS_IN_PROCESS"):
        server.log.warning("RUN_JOBS_IN_PROCESS is set: every worker runs the jobs; run `flask jobs run` instead")


MADE_HERE: list[str] = []


def prepare_metrics_dir() -> str:
    """``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory unless set), emptied, in the environment every worker inherits.

    The Prometheus client reads it when a worker first imports it and then writes that worker's
    counts to files there; ``/metrics`` sums the files of every worker, the ones that have exited
    included, so totals never go backwards while this master runs. Files of a previous run would
    be counted again, so the directory is emptied here, before any worker exists.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        directory = tempfile.mkdtemp(prefix="prometheus-")
        MADE_HERE.append(directory)
    Path(directory).mkdir(parents=True, exist_ok=True)
    for leftover in Path(directory).glob("*.db"):
        leftover.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def on_exit(server):
    """A directory this master made goes with it."""
    remove_made_dirs()


def remove_made_dirs() -> None:
    while MADE_HERE:
        shutil.rmtree(MADE_HERE.pop(), ignore_errors=True)


def child_exit(server, worker):
    """A worker is gone: its live gauges go with it (counters and histograms stay in the sums)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
