"""Operations endpoints: health, Prometheus metrics, the OpenAPI document; request logs."""

from __future__ import annotations

import time

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text

from models import db
from web.openapi import UNAVAILABLE, build_openapi, documented, json_response

bp = Blueprint("ops", __name__)
# generate_latest writes the classic text format (names escaped with underscores): version 0.0.4.
# Given whole as the content type (a mimetype would get a second charset from Flask).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
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
    summary="Prometheus metrics of this process",
    responses={
        "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
def metrics():
    return Response(generate_latest(current_app.extensions["metrics"].registry), content_type=METRICS_CONTENT_TYPE)


@bp.get("/openapi.json")
@documented(
    summary="This document",
    responses={"200": json_response("OpenAPI 3.1", {"type": "object"}), "503": UNAVAILABLE},
)
def openapi():
    return jsonify(build_openapi(current_app))


class Metrics:
    """Per-app registry (one per worker process; see README for multiprocess mode)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total", "HTTP requests", ["method", "endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "endpoint"], registry=self.registry
        )


def install_request_metrics(app: Flask) -> None:
    app.extensions["metrics"] = metrics_ = Metrics()

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def record(response):
        endpoint = request.endpoint or "unmatched"
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        metrics_.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        metrics_.latency.labels(request.method, endpoint).observe(elapsed)
        app.logger.info(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "ms": round(elapsed * 1000, 1),
            },
        )
        return response
