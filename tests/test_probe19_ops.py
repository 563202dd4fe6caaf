"""Probe round 19, operations: settings refused at start-up with their name (never a traceback, never a
silently wrong value), the metrics' labels bounded, the client address behind a proxy.

Found by a probe helper; each test failed before its fix.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from config import ConfigError, load_config
from models import Order, db
from tests.test_config import live_env  # noqa: F401 - the complete live configuration, a fixture

ROOT = Path(__file__).resolve().parent.parent
SIMULATOR = {"WECHAT_MODE": "simulator"}


def refused(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    return str(info.value)


# --- metrics: the method label is one of HTTP's, never whatever a client sends --------------------------------


def test_a_request_with_a_made_up_method_is_counted_under_one_label(client):
    # given: requests with methods of a client's own invention (gunicorn passes any token of 3-20 characters)
    for n in range(5):
        assert client.open("/livez", method=f"PROBE{n}").status_code == 405
    # when: Prometheus reads the counters
    body = client.get("/metrics").get_data(as_text=True)
    # then: one series for all of them, not one per made-up method (the scrape and the process would grow forever)
    assert 'method="PROBE' not in body
    assert 'http_requests_total{endpoint="unmatched",method="other",status="405"} 5.0' in body
    assert 'http_requests_total{endpoint="ops.livez",method="GET"' not in body  # (nothing else counted as GET)


# --- LOG_LEVEL -----------------------------------------------------------------------------------------------


def test_a_lower_case_log_level_is_read_as_the_level_it_names():
    assert load_config(environ={**SIMULATOR, "LOG_LEVEL": "info"})["LOG_LEVEL"] == "INFO"
    assert load_config(environ={**SIMULATOR, "LOG_LEVEL": " debug "})["LOG_LEVEL"] == "DEBUG"


def test_an_unknown_log_level_is_named_at_start_up():
    assert "LOG_LEVEL" in refused({**SIMULATOR, "LOG_LEVEL": "verbose"})


def test_a_command_with_a_lower_case_log_level_runs_without_a_traceback(tmp_path):
    # gunicorn's own log level is written in lower case (deploy/gunicorn.conf.py lowers LOG_LEVEL): the same value
    # made every `flask …` command and every gunicorn worker die on logging's "Unknown level: 'info'"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "WECHAT_MODE": "simulator",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "LOG_LEVEL": "info",
    }
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-m", "flask", "--app", "app", "jobs", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0


# --- URLs of the database and Redis ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["nonsense", "postgres://app:hunter2secret@db.internal/rebate", "mysqll://x@h/d"])
def test_a_database_url_that_cannot_be_used_is_named_without_its_password(url):
    message = refused({**SIMULATOR, "DATABASE_URL": url})
    assert "DATABASE_URL" in message
    assert "hunter2secret" not in message


def test_the_heroku_style_postgres_scheme_says_what_to_write_instead():
    assert "postgresql+psycopg://" in refused({**SIMULATOR, "DATABASE_URL": "postgres://app@db.internal/rebate"})


@pytest.mark.parametrize("url", ["localhost:6379", "http://cache:6379/0", "redis//cache"])
def test_a_redis_url_without_a_redis_scheme_is_named(url):
    assert "REDIS_URL" in refused({**SIMULATOR, "REDIS_URL": url})


# --- the merchant's and WeChat's keys (live mode) ---------------------------------------------------------------


@pytest.fixture
def live_files(live_env, tmp_path, monkeypatch):  # noqa: F811 - the fixture imported above
    """A live configuration with real key files, in the environment; returns it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    Path(live_env["WECHAT_MCH_PRIVATE_KEY_PATH"]).write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    wechat_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # WeChat's, never our own
    Path(live_env["WECHAT_PAY_PUBLIC_KEY_PATH"]).write_bytes(
        wechat_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    live_env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'live.db'}"
    live_env.pop("REDIS_URL")
    live_env["APP_PROCESSES"] = "1"
    for name, value in live_env.items():
        monkeypatch.setenv(name, value)
    live_env["key"] = key
    return live_env


def start(**overrides):
    from app import create_app

    app = create_app({"TESTING": True, **overrides})
    with app.app_context():
        db.engine.dispose()
    return app


def start_refused(**overrides) -> str:
    with pytest.raises(ConfigError) as info:
        start(**overrides)
    return str(info.value)


def test_the_live_files_start(live_files):
    assert start().config["WECHAT_MODE"] == "live"


def test_a_merchant_key_file_under_a_passphrase_is_named(live_files):
    # the merchant tool writes apiclient_key.pem unencrypted; one encrypted since has no passphrase setting here
    path = Path(live_files["WECHAT_MCH_PRIVATE_KEY_PATH"])
    path.write_bytes(
        live_files["key"].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    assert "WECHAT_MCH_PRIVATE_KEY_PATH" in start_refused()


def test_a_file_in_the_certificates_directory_that_is_no_certificate_is_named(live_files, tmp_path):
    certs = tmp_path / "platform-certs"
    certs.mkdir()
    (certs / "apiclient_key.pem").write_bytes(Path(live_files["WECHAT_MCH_PRIVATE_KEY_PATH"]).read_bytes())
    message = start_refused(WECHAT_PLATFORM_CERTS_DIR=str(certs))
    assert "WECHAT_PLATFORM_CERTS_DIR" in message and "apiclient_key.pem" in message


def test_a_public_key_file_without_its_id_beside_certificates_is_refused_not_ignored(live_env, tmp_path):  # noqa: F811
    # given: certificate mode, and the public key of a migration to public-key mode without its id
    certs = tmp_path / "platform-certs"
    certs.mkdir()
    live_env.update({"WECHAT_PLATFORM_CERTS_DIR": str(certs), "WECHAT_PAY_PUBLIC_KEY_ID": ""})
    # then: refused (the key was silently not loaded: every notification signed with it was refused as forged)
    message = refused(live_env)
    assert "WECHAT_PAY_PUBLIC_KEY_PATH" in message and "WECHAT_PAY_PUBLIC_KEY_ID" in message


def test_a_public_key_id_without_its_prefix_is_refused(live_env):  # noqa: F811
    # WeChat names its key PUB_KEY_ID_… in Wechatpay-Serial; an id without it never matched a notification
    live_env["WECHAT_PAY_PUBLIC_KEY_ID"] = "0114232134912410000000000000"
    assert "WECHAT_PAY_PUBLIC_KEY_ID" in refused(live_env)


# --- values that were taken and then meant something else --------------------------------------------------------


def test_a_payout_rate_for_a_rail_that_does_not_exist_is_refused():
    # a typo left the rail it meant at its default rate without a word
    message = refused({**SIMULATOR, "PAYOUT_RATE_LIMITS": "wechat_chnage=10"})
    assert "PAYOUT_RATE_LIMITS" in message and "wechat_chnage" in message
    assert load_config(environ={**SIMULATOR, "PAYOUT_RATE_LIMITS": "cash_red_packet=10"})["PAYOUT_RATE_LIMITS"] == {
        "cash_red_packet": 10
    }


@pytest.mark.parametrize("name", ["WECHAT_PAY_API_BASE", "WECHAT_API_BASE", "WECHAT_OPEN_BASE", "WECOM_API_BASE"])
def test_live_mode_talks_to_wechat_over_https_only(live_env, name):  # noqa: F811
    # the backup host was held to https; the main hosts (signed payment calls, the app secret in a query) were not
    live_env[name] = "http://api.example.com"
    assert name in refused(live_env)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_spike_sigma_that_is_not_a_finite_number_is_refused(value):
    # nan compares false with everything: no hour was ever a spike, and the check let it through
    assert "RISK_SPIKE_SIGMA" in refused({**SIMULATOR, "RISK_SPIKE_SIGMA": value})


@pytest.mark.parametrize(
    "url", ["https://", "https:///path", "https://pay.example.com/?from=x", "https://pay.example.com/#top"]
)
def test_a_public_base_url_without_a_host_or_with_a_query_is_refused(live_env, url):  # noqa: F811
    # the notify URLs are this plus a path: WeChat refuses a notify_url without a host or with a query, every prepay
    live_env["PUBLIC_BASE_URL"] = url
    assert "PUBLIC_BASE_URL" in refused(live_env)


@pytest.mark.parametrize(
    "name, value", [("REDPACK_SEND_NAME", "名" * 33), ("REDPACK_ACT_NAME", "x" * 33), ("REDPACK_WISHING", "w" * 129)]
)
def test_red_packet_texts_longer_than_wechat_takes_are_named_at_start_up(name, value):
    # the red-packet rail refused them only when the jobs first built it: the web started, the jobs died
    assert name in refused({**SIMULATOR, name: value})


def test_a_server_ip_that_is_no_address_is_refused():
    # sent as client_ip with every cash red packet: WeChat refuses every one
    assert "SERVER_IP" in refused({**SIMULATOR, "SERVER_IP": "pay-server-1"})


# --- the client's address behind a trusted proxy --------------------------------------------------------------------


@pytest.fixture
def proxied(app_settings):
    from app import create_app

    behind = create_app({**app_settings, "TRUSTED_PROXY_COUNT": 2})
    yield behind
    with behind.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("hop", ["x" * 100, "not-an-address", "example.com:443"])
def test_a_forwarded_hop_that_is_not_an_address_leaves_the_socket_address(
    proxied, make_product, make_user, user_headers, hop
):
    # given: two trusted hops configured, and a client whose own header lands in the hop read as its address
    product, buyer = make_product(), make_user()
    headers = user_headers(buyer, **{"Idempotency-Key": "xff", "X-Forwarded-For": f"{hop}, 10.0.0.2"})
    # when: it orders
    response = proxied.test_client().post(
        "/api/v1/orders",
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
        headers=headers,
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    # then: served (PostgreSQL refused the 100 characters in orders.ip: a 500), under the socket's address
    assert response.status_code == 201, response.get_json()
    db.session.rollback()
    assert db.session.execute(select(Order.ip)).scalar_one() == "10.0.0.1"


def test_a_forwarded_hop_that_is_an_address_is_still_read(proxied, make_product, make_user, user_headers):
    product, buyer = make_product(), make_user()
    headers = user_headers(buyer, **{"Idempotency-Key": "xff", "X-Forwarded-For": "198.51.100.4, 10.0.0.2"})
    response = proxied.test_client().post(
        "/api/v1/orders",
        json={"lines": [{"product_id": product.id, "quantity": 1}]},
        headers=headers,
        environ_base={"REMOTE_ADDR": "10.0.0.1"},
    )
    assert response.status_code == 201
    db.session.rollback()
    assert db.session.execute(select(Order.ip)).scalar_one() == "198.51.100.4"


# --- the start-up log line of the configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("password", ["pa/ss+x=", "Zm9v/YmFy+cXV4", "p/"])
def test_a_database_password_with_a_slash_is_masked_in_the_configuration_logged(password):
    # a secret store's random password is base64, "/" and "+" included, and SQLAlchemy takes it as written: the
    # "app configured" line (INFO) showed it whole
    from config import masked

    values = load_config(
        environ={**SIMULATOR, "DATABASE_URL": f"postgresql+psycopg://app:{password}@db.internal:5432/rebate"}
    )
    shown = masked(values)["DATABASE_URL"]
    assert password not in shown
    assert shown == "postgresql+psycopg://app:***@db.internal:5432/rebate"
