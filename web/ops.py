"""Operations endpoints: liveness, health, Prometheus metrics, the OpenAPI document; request logs.

Metrics: one registry per app, so ``make run`` and every test count alone. Under gunicorn,
``deploy/gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports the
client: every worker then writes its counts to files there (the client's multiprocess mode) and
``/metrics``, whichever worker answers, reads the sum over all of them.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

from models import db
from web.openapi import UNAVAILABLE, build_openapi, documented, json_response

bp = Blueprint("ops", __name__)
log = logging.getLogger(__name__)
# generate_latest writes the classic text format (names escaped with underscores): version 0.0.4.
# Given whole as the content type (a mimetype would get a second charset from Flask).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # the method label's values
HEALTH = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ok", "fail"]},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def migrations_current() -> tuple[bool, str]:
    script = ScriptDirectory.from_config(current_app.extensions["migrate"].migrate.get_config())
    # The request's own connection: on SQLite a second one would wait for this transaction's lock.
    current = set(MigrationContext.configure(db.session.connection()).get_current_heads())
    heads = set(script.get_heads())
    return current == heads, f"at {sorted(current) or 'nothing'}, head {sorted(heads)}"


@bp.get("/healthz")
@documented(
    summary="Database reachable and migrations current",
    responses={"200": json_response("Healthy", HEALTH), "503": json_response("Unhealthy", HEALTH)},
)
def healthz():
    checks = {}
    try:
        db.session.execute(text("select 1"))
        checks["database"] = "ok"
        current, detail = migrations_current()
        checks["migrations"] = "ok" if current else f"behind: {detail}"
    except Exception as exc:  # reported, not raised: health must answer
        checks["database"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if healthy else "fail", "checks": checks}), 200 if healthy else 503


@bp.get("/livez")
@documented(
    summary="The process answers (touches nothing: no database, no WeChat)", responses={"204": {"description": "alive"}}
)
def livez():
    """Liveness for a load balancer or orchestrator, and the benchmarks' empty route (bench/harness.py).

    ``/healthz`` asks the database and the migrations; this asks nothing, so it costs exactly what
    every request costs in this app (guards, metrics, the request log line) and no more.
    """
    return Response(status=204)


@bp.get("/metrics")
@documented(
    summary="Prometheus metrics (of every worker of this node in multiprocess mode)",
    responses={
        "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        "401": {"description": "METRICS_TOKEN is set and the request does not carry it"},
    },
)
def metrics():
    """The counters say how many refunds, payouts and sign-ins there were: with ``METRICS_TOKEN`` only its holder
    reads them."""
    token = current_app.config.get("METRICS_TOKEN")
    if token and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), f"Bearer {token}".encode()):
        return Response(
            "metrics need the scraper's token\n", status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'}
        )
    return Response(generate_latest(current_app.extensions["metrics"].collected()), content_type=METRICS_CONTENT_TYPE)


@bp.get("/openapi.json")
@documented(
    summary="This document",
    responses={"200": json_response("OpenAPI 3.1", {"type": "object"}), "503": UNAVAILABLE},
)
def openapi():
    return jsonify(build_openapi(current_app))


class Metrics:
    """The request counters of one app; ``collected`` is what ``/metrics`` shows.

    ``multiproc_dir`` (``PROMETHEUS_MULTIPROC_DIR``): the directory every process of the node
    writes to; ``/metrics`` then reads all of them. The client decides where the values live when
    it is first imported, from the environment, so the directory must be in the environment of
    the process from the start (gunicorn's master puts it there before forking the workers).
    """

    def __init__(self, multiproc_dir: str | None = None) -> None:
        self.multiproc_dir = multiproc_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "endpoint"], registry=self.registry
        )
        self._children: dict[tuple[str, str, int], tuple] = {}

    def collected(self) -> CollectorRegistry:
        """This app's registry; in multiprocess mode, a registry reading every process's files."""
        if not self.multiproc_dir:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiproc_dir)
        return registry

    def observe(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """Count one request. The labelled children are looked up once per (method, endpoint, status):
        ``labels()`` takes a lock and builds a key on every call. A method of the client's own invention
        (gunicorn passes any token of 3-20 characters) is counted as ``other``: one series per made-up
        method would grow the scrape, the multiprocess files and this memo without end."""
        if method not in HTTP_METHODS:
            method = "other"
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, endpoint, str(status)), self.latency.labels(method, endpoint))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def multiproc_dir(app: Flask) -> str | None:
    """The multiprocess directory ``/metrics`` reads (``PROMETHEUS_MULTIPROC_DIR``), if any."""
    configured = app.config.get("PROMETHEUS_MULTIPROC_DIR")
    if configured and os.environ.get("PROMETHEUS_MULTIPROC_DIR") != configured:
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR is configured but not in this process's environment: "
            "/metrics shows the other processes' counts, not this one's"
        )
    return configured


def install_request_metrics(app: Flask) -> None:
    app.extensions["metrics"] = metrics_ = Metrics(multiproc_dir(app))
    request_log = app.logger

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def record(response):
        req = request._get_current_object()  # one context lookup, not one per attribute
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        status = response.status_code
        metrics_.observe(req.method, req.endpoint or "unmatched", status, elapsed)
        if request_log.isEnabledFor(logging.INFO):
            request_log.info(
                "request",
                extra={"method": req.method, "path": req.path, "status": status, "ms": round(elapsed * 1000, 1)},
            )
        return response
