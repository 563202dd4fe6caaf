"""The simulator apart: imported only in simulator mode, and one simulated WeChat for every process.

A web server (``flask run``) and a separate ``flask jobs run``, both in simulator mode on one
database (SQLite file, or PostgreSQL when ``TEST_DATABASE_URL`` is set): the jobs process sends a
transfer bill to its own in-process simulator, and the person confirms it on the web server's
``/_sim``, which knows the bill because the simulator's records and keys live in a shared store.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from models import Payout, db
from tests.conftest import TEST_SETTINGS
from tests.money_helpers import queue_from_balance
from wechat.pay import PayClient

ROOT = Path(__file__).resolve().parent.parent


# -- the simulator apart --------------------------------------------------------------------


def test_a_live_mode_app_never_imports_the_simulator(tmp_path):
    # given: a complete live configuration with real key files
    from wechat.crypto import private_key_pem, public_key_pem
    from wechat.sim.keys import generate_rsa_key

    (tmp_path / "apiclient_key.pem").write_text(private_key_pem(generate_rsa_key()))
    (tmp_path / "pub_key.pem").write_text(public_key_pem(generate_rsa_key().public_key()))
    env = {
        **_base_env(f"sqlite:///{tmp_path / 'live.db'}"),
        "WECHAT_MODE": "live",
        "SECRET_KEY": "Yq3v9-Tz8LkP2mW7xR4nB6cJ1hF5dS0gA_eU",
        "WECHAT_APPID": "wx1234567890abcdef",
        "WECHAT_APP_SECRET": "app-secret",
        "WECHAT_MCHID": "1900000001",
        "WECHAT_MCH_PRIVATE_KEY_PATH": str(tmp_path / "apiclient_key.pem"),
        "WECHAT_MCH_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "WECHAT_APIV3_KEY": "0123456789abcdef0123456789abcdef",
        "WECHAT_PAY_PUBLIC_KEY_PATH": str(tmp_path / "pub_key.pem"),
        "WECHAT_PAY_PUBLIC_KEY_ID": "PUB_KEY_ID_0114232134912410000000000000",
        "PUBLIC_BASE_URL": "https://rebate.example.com",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never connected to at start-up
    }
    script = (
        "import sys; from app import create_app; app = create_app({'TESTING': True});"
        "assert app.extensions['wechat'].simulator is None;"
        "print(sorted(m for m in sys.modules if m == 'wechat.sim' or m.startswith('wechat.sim.')))"
    )
    # when
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # then: the app was built, and no module of the simulator was loaded
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert not any(rule.startswith(("/_sim", "/admin/api/sim/")) for rule in _routes_of_live_app(env))


def _routes_of_live_app(env: dict) -> list[str]:
    script = "from app import create_app; print('\\n'.join(r.rule for r in create_app().url_map.iter_rules()))"
    done = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env(database_url: str) -> dict:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
    return {
        **{k: os.environ[k] for k in keep if k in os.environ},
        "FLASK_APP": "app",
        "DATABASE_URL": database_url,
        "DATA_ENCRYPTION_KEY": TEST_SETTINGS["DATA_ENCRYPTION_KEY"],
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def spawn(tmp_path):
    """Start a process of this app (``flask …``); every one is stopped at the end."""
    started: list[subprocess.Popen] = []

    def start(name: str, env: dict, *args: str) -> subprocess.Popen:
        with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(  # noqa: S603 - our own interpreter
                [sys.executable, "-m", "flask", *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_for(what: str, check, timeout_s: float, logs: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _payout(payout_id: int) -> Payout:
    payout = db.session.get(Payout, payout_id, populate_existing=True)
    db.session.expunge(payout)
    db.session.rollback()  # never keep SQLite's write lock while the other processes work
    return payout


@pytest.fixture
def app_settings(app_settings):
    """The URL the web process will serve: notify URLs and the simulator's paths are built from it."""
    return {**app_settings, "PUBLIC_BASE_URL": f"http://127.0.0.1:{_free_port()}"}


def test_two_processes_one_simulated_wechat(app, make_user, spawn, tmp_path):
    # given: a 5-yuan transfer queued in the database both processes use
    user = make_user(appid=app.config["WECHAT_APPID"])
    payout_id = queue_from_balance(user, 5_00, tag="two").id
    db.session.remove()
    base = app.config["PUBLIC_BASE_URL"]
    env = {**_base_env(app.config["DATABASE_URL"]), "WECHAT_MODE": "simulator", "PUBLIC_BASE_URL": base}
    env["SECRET_KEY"] = TEST_SETTINGS["SECRET_KEY"]
    # when: a web server and a separate `flask jobs run` start in simulator mode
    port = base.rsplit(":", 1)[1]
    spawn("web", env, "run", "--host", "127.0.0.1", "--port", port, "--no-reload", "--no-debugger")
    spawn("jobs", env, "jobs", "run")
    _wait_for("the web server", lambda: _healthy(base), 30, tmp_path)
    # then: the jobs process sends the transfer bill (to its own in-process simulator) …
    sent = _wait_for(
        "the transfer to wait for the user",
        lambda: (p := _payout(payout_id)).status == "waiting_user_confirm" and p,
        40,
        tmp_path,
    )
    # … and the web server's simulator knows it: the person confirms it there
    confirmed = requests.post(
        f"{base}/_sim/pay/transfer/confirm/{sent.package_info}", headers={"Accept": "application/json"}, timeout=20
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "SUCCESS"
    # the web server's simulator notifies the web app, which closes the payout
    done = _wait_for(
        "the payout to succeed", lambda: (p := _payout(payout_id)).status == "succeeded" and p, 20, tmp_path
    )
    assert done.wechat_ref == confirmed.json()["transfer_bill_no"]
    # and a third process (this one) signs with the same merchant key and verifies the web server's answer
    over_http = PayClient(app.extensions["wechat"].pay.config, session=requests.Session())
    assert over_http.query_transfer_bill(sent.external_no)["state"] == "SUCCESS"


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/_sim/", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
