"""The empty route, and metrics summed across processes (the Prometheus client's multiprocess mode).

Under gunicorn every worker counts its own requests; with ``PROMETHEUS_MULTIPROC_DIR`` set (the
master sets it: deploy/gunicorn.conf.py) they write to files there and ``/metrics`` reads them all.
Two worker processes are played by two apps writing files under two process ids.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from sqlalchemy import event

from models import db
from tests.conftest import TEST_SETTINGS

ROOT = Path(__file__).resolve().parent.parent


def test_livez_answers_204_without_touching_the_database(app, client):
    statements = []

    def count(conn, cursor, statement, *rest):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        response = client.get("/livez")
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert response.status_code == 204
    assert response.get_data() == b""
    assert statements == []


def test_metrics_are_summed_over_every_process_writing_to_the_multiprocess_directory(app, tmp_path, monkeypatch):
    # given: two apps as two gunicorn workers would run them, answering /livez 2 and 3 times. The client
    # chooses where values live when first imported (from the environment); here each "worker" gets
    # the multiprocess value class it would have chosen, with its own process id (its own files).
    from prometheus_client import values

    from app import create_app

    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    settings = {**app.config, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    for pid, requests in ((1001, 2), (1002, 3)):
        monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue(process_identifier=lambda pid=pid: pid))
        worker = create_app(settings).test_client()
        for _ in range(requests):
            assert worker.get("/livez").status_code == 204
    # when: any worker of the node answers /metrics
    body = worker.get("/metrics").get_data(as_text=True)
    # then: the sum over both processes, read from their files
    assert sorted(p.name for p in metrics_dir.iterdir()) == [
        "counter_1001.db",
        "counter_1002.db",
        "histogram_1001.db",
        "histogram_1002.db",
    ]
    assert 'http_requests_total{endpoint="ops.livez",method="GET",status="204"} 5.0' in body
    assert 'http_request_duration_seconds_count{endpoint="ops.livez",method="GET"} 5.0' in body


def test_without_the_directory_each_app_counts_alone(app, client):
    client.get("/livez")
    body = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="ops.livez",method="GET",status="204"} 1.0' in body


def test_a_directory_that_does_not_exist_is_refused_at_start(tmp_path):
    from config import ConfigError, load_config

    try:
        load_config({**TEST_SETTINGS, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")}, environ={})
    except ConfigError as exc:
        assert "PROMETHEUS_MULTIPROC_DIR" in str(exc)
    else:
        raise AssertionError("a missing metrics directory was accepted")


def test_gunicorn_master_empties_the_directory_and_hands_it_to_the_workers(tmp_path, monkeypatch):
    # given: files a previous run left (they would be counted again)
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    config = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    # when
    directory = config["prepare_metrics_dir"]()
    # then
    assert directory == str(tmp_path) == os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_gunicorn_master_makes_a_directory_when_none_is_given(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    config = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    directory = config["prepare_metrics_dir"]()
    try:
        assert Path(directory).is_dir() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory
    finally:
        config["on_exit"](None)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # set by the hook itself, not by monkeypatch
    assert not Path(directory).exists()
