"""What a newcomer meets first (issue 10): the command line in live mode, the Makefile's demo, and the
small answers that were wrong (/metrics content type, 413 without its limit, unconfigured rails shown
as enabled, the clawback's words).
"""

from __future__ import annotations

import ast
import json
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from config import SETTINGS
from models import Payout, RebateAdjustment, db
from tests.test_bad_input import MERCHANTS, chunked
from tests.test_deployment import free_port
from tests.test_refunds import refund, story  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parent.parent
RAILS = "/admin/api/rails"


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


# --- live mode with nothing set: the list, never a traceback ---------------------------------


def live_env(tmp_path) -> dict[str, str]:
    """Live mode (the default) with none of our settings, run from an empty directory."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "FLASK_APP": "app"}


def run_in(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, *args], cwd=tmp_path, env=live_env(tmp_path), capture_output=True, text=True, timeout=60
    )


def assert_only_the_list(text: str) -> None:
    assert "Traceback" not in text
    assert "SECRET_KEY is required in live mode" in text
    assert "PUBLIC_BASE_URL is required in live mode" in text
    assert [line for line in text.splitlines() if "WECHAT_MODE=simulator" in line] == [
        "To try the app without WeChat credentials, run it with WECHAT_MODE=simulator (the local WeChat of `make run`)."
    ]


@pytest.mark.parametrize("command", [["db", "upgrade"], ["jobs", "run"], ["run"]])
def test_a_flask_command_in_live_mode_with_nothing_set_prints_only_the_list(tmp_path, command):
    # when
    result = run_in(tmp_path, "-m", "flask", *command)
    # then: exit 1, "Error: invalid configuration:", one line per problem, the simulator line; nothing else
    assert result.returncode == 1, result.stderr
    assert_only_the_list(result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Error: invalid configuration:"
    assert all(line.startswith("  - ") for line in lines[1:-1]) and len(lines) < 15
    assert list(tmp_path.iterdir()) == []  # nothing created on the way out


def test_flask_help_works_in_live_mode_with_nothing_set(tmp_path):
    # when
    result = run_in(tmp_path, "-m", "flask", "--help")
    # then: the help, with the list above it instead of a traceback
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "Commands:" in result.stdout
    assert_only_the_list(result.stderr)


def test_flask_help_in_simulator_mode_lists_the_apps_commands(tmp_path):
    env = {**live_env(tmp_path), "WECHAT_MODE": "simulator", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "flask", "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert {"db", "jobs", "ledger", "seed-demo", "operators"} <= set(re.findall(r"^  (\S+)", result.stdout, re.M))


def test_gunicorn_in_live_mode_with_nothing_set_prints_only_the_list(tmp_path):
    conf = str(ROOT / "deploy" / "gunicorn.conf.py")
    result = run_in(tmp_path, "-m", "gunicorn", "-c", conf, "--bind", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert_only_the_list(result.stderr)
    assert "REDIS_URL is required in live mode: WEB_CONCURRENCY=" in result.stderr  # it knows its worker count
    assert "Booting worker" not in result.stderr


def test_the_gunicorn_config_is_threaded_and_builds_the_app_in_each_worker():
    settings = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    assert settings["worker_class"] == "gthread" and settings["threads"] == 4  # chosen by measurement (its docstring)
    assert settings["threads"] < 10  # below the database pool of each process (app.py)
    assert settings["workers"] >= 2 and settings["preload_app"] is False
    assert settings["wsgi_app"] == "app:create_app()" and Path(settings["chdir"]) == ROOT


# --- make demo / make reset ------------------------------------------------------------------


def test_the_demo_speaks_http_only():
    ours = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    ours -= {"demo"}
    for path in (ROOT / "demo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            assert not {n.split(".")[0] for n in names} & ours, f"{path.name} imports our code: {names}"


def test_the_makefile_runs_the_demo_and_resets_with_the_per_address_limits_off():
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(  # noqa: S603 - make, in the checkout
        [make, "-n", "run", "demo", "reset"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "-m demo --base-url http://127.0.0.1:5000" in dry
    assert "rm -rf instance" in dry
    for line in dry.splitlines():
        if "flask run" in line or "-m demo" in line:
            assert "CLAIM_IP_PER_DAY=0" in line and "CLAIM_IP_INTERVAL_SECONDS=0" in line
            assert "CLAIM_PERSON" not in line  # the per-person limits stay on


def test_the_demo_reports_a_server_error_by_its_json_and_exits_1(tmp_path):
    # a refused request answers {"error", "message"}: the demo says so instead of a KeyError
    from demo.client import Client, DemoFailure

    class Answer:
        status_code, content, text, headers = 429, b"{}", "", {"Retry-After": "30"}

        def json(self):
            return {"error": "platform_ip_daily_limit", "message": "at most 5 red packets a day"}

    client = Client("http://127.0.0.1:1")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("demo.client.requests.request", lambda *a, **k: Answer())
        with pytest.raises(DemoFailure) as failure:
            client.call("claim the newcomer packet", "POST", "/api/v1/red-packets/claim")
    assert str(failure.value) == (
        "claim the newcomer packet: POST /api/v1/red-packets/claim answered 429 platform_ip_daily_limit: "
        "at most 5 red packets a day (retry after 30 s)"
    )


def test_the_demo_says_when_no_server_is_listening(tmp_path):
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "demo", "--base-url", f"http://127.0.0.1:{free_port()}", "--admin-token", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "is `make run` serving there?" in result.stderr and "Traceback" not in result.stderr


# --- /metrics, 413 ---------------------------------------------------------------------------


def test_metrics_content_type_is_exactly_the_text_format(client):
    assert client.get("/metrics").headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_a_413_names_the_limit_in_bytes(client, admin, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = json.dumps({"name": "x", "reason": "y" * limit}).encode()
    sized = client.post(MERCHANTS, data=body, headers={**admin, "Content-Type": "application/json"})
    unsized = chunked(client, MERCHANTS, body, admin)
    for response in (sized, unsized):
        assert response.status_code == 413
        assert response.json == {
            "error": "request_entity_too_large",
            "message": f"the request body is larger than the limit of {limit} bytes (MAX_CONTENT_LENGTH)",
        }


# --- /admin/api/rails ------------------------------------------------------------------------


def test_unconfigured_rails_are_listed_as_not_configured_and_disabled_with_why(client, admin):
    listed = {r["rail"]: r for r in client.get(RAILS, headers=admin).json["items"]}
    assert listed["wechat_change"] == {
        "rail": "wechat_change",
        "configured": True,
        "enabled": True,
        "paused_until": None,
        "reason": None,
    }
    assert listed["wechat_coupon"] == {
        "rail": "wechat_coupon",
        "configured": False,
        "enabled": False,
        "paused_until": None,
        "reason": "not configured: set WECHAT_COUPON_STOCKS",
    }
    assert listed["card_coupon"]["reason"] == "not configured: set WECHAT_CARD_ID"
    assert (listed["card_coupon"]["configured"], listed["card_coupon"]["enabled"]) == (False, False)


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"WECHAT_COUPON_STOCKS": [{"stock_id": "s-1", "denomination_fen": 100}], "WECHAT_CARD_ID": "card-1"},
        {"WECHAT_OA_APPID": "", "WECHAT_CARD_ID": "card-1"},
    ],
)
def test_the_listing_says_configured_exactly_for_the_rails_the_dispatcher_builds(app_settings, settings):
    from app import create_app
    from jobs.payouts import build_rails
    from payouts.rails import unconfigured_because

    other = create_app({**app_settings, **settings})
    with other.app_context():
        built = set(build_rails(other.config, other.extensions["wechat"]))
        rails = ("wechat_change", "cash_red_packet", "wechat_coupon", "card_coupon")
        configured = {rail for rail in rails if unconfigured_because(rail, other.config) is None}
    assert built == configured


# --- the clawback says where the money came back from ----------------------------------------


def reasons() -> list[str]:
    return db.session.execute(select(RebateAdjustment.reason).order_by(RebateAdjustment.id)).scalars().all()


def test_a_clawback_of_money_credited_at_once_says_it_came_from_the_balance(story):  # noqa: F811
    _, _, _, order = story(form="balance")
    refund(order, "R1", 100_00)
    assert reasons() == ["refund R1: taken back from the balance it was credited to"]


def test_a_clawback_of_a_payout_not_yet_sent_says_so(story):  # noqa: F811
    _, _, _, order = story(form="wechat_change")
    refund(order, "R1", 30_00)
    assert reasons() == ["refund R1: taken back from a payout not yet sent"]


def test_a_clawback_of_money_that_had_left_says_it_is_owed_back(story):  # noqa: F811
    _, _, _, order = story(form="wechat_change")
    [payout] = db.session.execute(select(Payout)).scalars().all()
    payout.status = "succeeded"
    db.session.commit()
    refund(order, "R1", 100_00)
    assert reasons() == ["refund R1: had already left; owed back from the next rebate"]


def test_every_setting_the_makefile_sets_exists():
    makefile = (ROOT / "Makefile").read_text()
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", makefile)) - {"TEST_DB_BACKEND", "FLASK_APP"}
    assert names <= {s.name for s in SETTINGS}, names - {s.name for s in SETTINGS}


def test_the_demo_referral_window_covers_a_payment_in_the_second_it_was_seeded(app):
    # given: the demo data, seeded now
    from datetime import datetime

    from models import Campaign, CampaignRules, utcnow
    from web.demo import seed

    seeded_at = utcnow()
    seed()
    db.session.commit()
    referral = db.session.execute(select(Campaign).where(Campaign.name.like("Invite friends%"))).scalar_one()
    rules = db.session.execute(select(CampaignRules.rules).where(CampaignRules.campaign_id == referral.id)).scalar_one()
    (window,) = rules["roles"][0]["windows"]

    # then: a payment WeChat stamps with the seed's whole second (success_time has no fraction) is inside it
    paid_at = seeded_at.replace(microsecond=0)
    assert datetime.fromisoformat(window["starts_at"]) <= paid_at < datetime.fromisoformat(window["ends_at"])
