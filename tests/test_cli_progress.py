"""Long command-line work shows progress on stderr, and stdout stays what scripts parse.

``flask seed-demo``, ``flask jobs reconcile``, ``flask risk simulate`` and the benchmarks (bench/).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import jobs.reconcile_cli
import web.risk_cli
from bench import harness
from jobs.reconcile_cli import reconcile_command
from tests.test_reconciliation import DAY, merchant_key, ours, pay_client, wechat, wechat_keys  # noqa: F401 - fixtures
from web.demo import seed_demo_command
from web.risk_cli import simulate_command


def test_seed_demo_shows_each_phase_on_stderr(app):
    result = app.test_cli_runner().invoke(seed_demo_command)

    assert result.exit_code == 0, result.output
    assert "seed-demo: three campaigns" in result.stderr and "seed-demo: committed" in result.stderr
    assert "admin token (1 day):" in result.stdout and "seed-demo:" not in result.stdout
    again = app.test_cli_runner().invoke(seed_demo_command)
    assert "already present: nothing to add" in again.stderr


def test_reconcile_shows_its_phases_on_stderr_and_the_runs_on_stdout(app, ours, wechat, pay_client, monkeypatch):  # noqa: F811
    monkeypatch.setattr(jobs.reconcile_cli, "job_context", lambda: SimpleNamespace(pay=pay_client))
    wechat.refuse("trade", "NO_STATEMENT_EXIST", "请求的账单文件不存在")
    wechat.refuse("fund", "NO_STATEMENT_EXIST", "请求的账单文件不存在")

    result = app.test_cli_runner().invoke(reconcile_command, ["--date", DAY])

    assert result.exit_code == 0, result.output
    for phase in ("marking the trade and fund-flow runs", "downloading both bills", "matching", "checking the ledger"):
        assert phase in result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{DAY} trade", f"{DAY} fundflow", "ledger"]
    assert "0 violations" in lines[-1]


@pytest.mark.parametrize("day", ["yesterday-ish", "2999-01-01", "", " ", "0001-01-01", "1999-12-31"])
def test_reconcile_refuses_a_bad_or_unfinished_day(app, day):
    result = app.test_cli_runner().invoke(reconcile_command, ["--date", day])
    assert result.exit_code == 2 and "--date" in result.output


def test_risk_simulate_progress_goes_to_stderr_and_the_json_alone_to_stdout(app, monkeypatch):
    def fake_run(config, create_app, progress, *, phase):
        phase("setting up the shops, campaigns and people")
        progress(3)
        return SimpleNamespace(as_json=lambda: {"config": {"seed": config.seed}})

    monkeypatch.setattr(web.risk_cli, "run", fake_run)
    result = app.test_cli_runner().invoke(simulate_command, ["--seed", "5", "--json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"config": {"seed": 5}}
    assert "risk simulate: setting up" in result.stderr and "simulating (seed 5)" in result.stderr


def test_bench_progress_is_a_line_on_stderr(capsys):
    harness.progress("claims: round 1 done")
    out, err = capsys.readouterr()
    assert out == "" and "claims: round 1 done" in err and err.startswith("[bench")


def test_a_runs_error_stays_on_its_one_line():
    from jobs.reconcile_cli import one_line

    assert one_line("SYSTEM_ERROR: 系统繁忙\r\n请稍后再试\nagain") == "SYSTEM_ERROR: 系统繁忙 请稍后再试 again"
