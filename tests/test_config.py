"""Configuration: defaults, environment, validation at start-up, masking."""

import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config import DEV_SECRET, LIVE_REQUIRED, SETTINGS, ConfigError, dev_data_key, load_config, masked

ROOT = Path(__file__).resolve().parent.parent
FERNET_KEY = "p2v0L5dTgd0l2Pz7o7m4k0o3QyYw5cYpXq3kJ0x8Q1A="
STRONG_SECRET = "Yq3v9-Tz8LkP2mW7xR4nB6cJ1hF5dS0gA_eU"  # 36 random-looking characters


@pytest.fixture
def live_env(tmp_path) -> dict[str, str]:
    """A complete live configuration (public-key mode)."""
    return {
        "SECRET_KEY": STRONG_SECRET,
        "DATA_ENCRYPTION_KEY": FERNET_KEY,
        "WECHAT_APPID": "wx1234567890abcdef",
        "WECHAT_APP_SECRET": "app-secret",
        "WECHAT_MCHID": "1900000001",
        "WECHAT_MCH_PRIVATE_KEY_PATH": str(tmp_path / "apiclient_key.pem"),
        "WECHAT_MCH_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "WECHAT_APIV3_KEY": "0123456789abcdef0123456789abcdef",
        "WECHAT_PAY_PUBLIC_KEY_PATH": str(tmp_path / "pub_key.pem"),
        "WECHAT_PAY_PUBLIC_KEY_ID": "PUB_KEY_ID_0114232134912410000000000000",
        "PUBLIC_BASE_URL": "https://rebate.example.com",
        "REDIS_URL": "redis://cache:6379/0",  # live runs several processes: they share the WeChat token
    }


def problems(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    return str(info.value)


def test_live_is_the_default_mode(live_env):
    values = load_config(environ=live_env)
    assert values["WECHAT_MODE"] == "live"
    assert values["MAX_CONTENT_LENGTH"] == 64 * 1024
    assert values["IDEMPOTENCY_TTL_HOURS"] == 25
    assert values["TRUSTED_PROXY_COUNT"] == 0
    assert values["SEED_DEMO_DATA"] is False
    assert values["WECHAT_PAY_API_BASE"] == "https://api.mch.weixin.qq.com"


def test_live_with_nothing_set_names_every_missing_key_at_once():
    message = problems({})
    for name in LIVE_REQUIRED:
        assert f"{name} is required in live mode" in message
    assert "WECHAT_PAY_PUBLIC_KEY_PATH" in message
    assert "WECHAT_PLATFORM_CERTS_DIR" in message
    assert "REDIS_URL is required in live mode with more than one process" in message
    assert message.count("\n  - ") == len(LIVE_REQUIRED) + 2


@pytest.mark.parametrize("name", LIVE_REQUIRED)
def test_live_names_the_one_missing_key(live_env, name):
    del live_env[name]
    message = problems(live_env)
    assert f"{name} is required in live mode" in message
    assert message.count("\n  - ") == 1


# -- more than one process needs Redis (issue 9 §3) -------------------------------------------


def test_live_without_redis_refuses_to_start_unless_declared_single_process(live_env):
    del live_env["REDIS_URL"]
    message = problems(live_env)
    assert "REDIS_URL is required in live mode with more than one process" in message
    assert "APP_PROCESSES=1" in message
    live_env["APP_PROCESSES"] = "2"
    assert "REDIS_URL is required" in problems(live_env)
    live_env["APP_PROCESSES"] = "1"
    assert load_config(environ=live_env)["APP_PROCESSES"] == 1


@pytest.mark.parametrize("processes", [None, "1"])
def test_several_gunicorn_workers_need_redis_whatever_app_processes_says(live_env, processes):
    del live_env["REDIS_URL"]
    live_env["WEB_CONCURRENCY"] = "4"
    if processes:
        live_env["APP_PROCESSES"] = processes
    assert "REDIS_URL is required in live mode: WEB_CONCURRENCY=4" in problems(live_env)
    live_env["REDIS_URL"] = "redis://cache:6379/0"
    assert load_config(environ=live_env)["WEB_CONCURRENCY"] == 4


@pytest.mark.parametrize("name", ["APP_PROCESSES", "WEB_CONCURRENCY"])
@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_process_counts_must_be_positive_integers(live_env, name, bad):
    live_env[name] = bad
    assert f"{name}:" in problems(live_env)


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_lock_timeout_must_be_at_least_a_second(bad):
    with pytest.raises(ConfigError, match="DATABASE_LOCK_TIMEOUT_S"):
        load_config(environ={"WECHAT_MODE": "simulator", "DATABASE_LOCK_TIMEOUT_S": bad})


def test_simulator_mode_without_redis_still_starts():
    assert load_config(environ={"WECHAT_MODE": "simulator", "WEB_CONCURRENCY": "3"})["REDIS_URL"] is None


# -- APIv3 key rotation and the backup host ------------------------------------------------------


def _in(hours: float) -> str:
    return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()


def test_previous_apiv3_key_with_its_end(live_env):
    live_env.update(
        {"WECHAT_APIV3_KEY_PREVIOUS": "fedcba9876543210fedcba9876543210", "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": _in(25)}
    )
    values = load_config(environ=live_env)
    assert values["WECHAT_APIV3_KEY_PREVIOUS_UNTIL"].tzinfo is not None
    assert masked(values)["WECHAT_APIV3_KEY_PREVIOUS"] == "***"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"WECHAT_APIV3_KEY_PREVIOUS": "fedcba9876543210fedcba9876543210"}, "go together"),
        ({"WECHAT_APIV3_KEY_PREVIOUS_UNTIL": "2026-12-01T10:00:00+08:00"}, "go together"),
        ({"WECHAT_APIV3_KEY_PREVIOUS": "short", "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": "+1"}, "must be exactly 32 bytes"),
        (
            {"WECHAT_APIV3_KEY_PREVIOUS": "0123456789abcdef0123456789abcdef", "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": "+1"},
            "is the current key",
        ),
        (
            {
                "WECHAT_APIV3_KEY_PREVIOUS": "fedcba9876543210fedcba9876543210",
                "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": "+200",
            },
            "more than 7 days ahead",
        ),
        (
            {
                "WECHAT_APIV3_KEY_PREVIOUS": "fedcba9876543210fedcba9876543210",
                "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": "2026-12-01T10:00:00",
            },
            "needs a UTC offset",
        ),
        ({"WECHAT_APIV3_KEY_PREVIOUS_UNTIL": "tomorrow"}, "WECHAT_APIV3_KEY_PREVIOUS_UNTIL:"),
    ],
)
def test_bad_apiv3_rotation_settings_are_refused(live_env, change, message):
    for name, value in change.items():
        live_env[name] = _in(float(value[1:])) if value.startswith("+") else value
    assert message in problems(live_env)


def test_an_overlap_that_ended_is_inert_not_fatal(live_env):
    live_env.update(
        {"WECHAT_APIV3_KEY_PREVIOUS": "fedcba9876543210fedcba9876543210", "WECHAT_APIV3_KEY_PREVIOUS_UNTIL": _in(-1)}
    )
    assert load_config(environ=live_env)["WECHAT_APIV3_KEY_PREVIOUS"]  # a restart after the overlap still starts


def test_backup_host_is_off_by_default_and_https_in_live(live_env):
    assert load_config(environ=live_env)["WECHAT_PAY_API_BACKUP_BASE"] is None
    live_env["WECHAT_PAY_API_BACKUP_BASE"] = "http://api2.mch.weixin.qq.com"
    assert "WECHAT_PAY_API_BACKUP_BASE must be https://" in problems(live_env)
    live_env["WECHAT_PAY_API_BACKUP_BASE"] = "https://api2.mch.weixin.qq.com"
    assert load_config(environ=live_env)["WECHAT_PAY_API_BACKUP_BASE"] == "https://api2.mch.weixin.qq.com"


def test_empty_environment_value_counts_as_missing(live_env):
    live_env["WECHAT_MCHID"] = ""
    assert "WECHAT_MCHID is required" in problems(live_env)


@pytest.mark.parametrize("mode", ["production", "SIMULATOR", "sim", "Live"])
def test_bad_wechat_mode(mode):
    assert f"WECHAT_MODE must be one of live, simulator, got {mode!r}" in problems({"WECHAT_MODE": mode})


@pytest.mark.parametrize("apiv3", ["short", "0123456789abcdef0123456789abcdef0", "密" * 11])
def test_apiv3_key_must_be_32_bytes(live_env, apiv3):
    live_env["WECHAT_APIV3_KEY"] = apiv3
    assert "WECHAT_APIV3_KEY must be exactly 32 bytes" in problems(live_env)


@pytest.mark.parametrize("url", ["http://rebate.example.com", "rebate.example.com", "ftp://x"])
def test_public_base_url_must_be_https_in_live(live_env, url):
    live_env["PUBLIC_BASE_URL"] = url
    assert "PUBLIC_BASE_URL must be https://" in problems(live_env)


def test_public_base_url_may_be_http_in_simulator():
    values = load_config(environ={"WECHAT_MODE": "simulator", "PUBLIC_BASE_URL": "http://127.0.0.1:5000"})
    assert values["PUBLIC_BASE_URL"] == "http://127.0.0.1:5000"


def test_needs_public_key_or_certificates(live_env):
    del live_env["WECHAT_PAY_PUBLIC_KEY_PATH"]
    assert "WECHAT_PLATFORM_CERTS_DIR (certificate mode)" in problems(live_env)
    live_env["WECHAT_PLATFORM_CERTS_DIR"] = "/etc/wechat/certs"
    # a key id without its file is half of public-key mode: named, not silently ignored
    assert "WECHAT_PAY_PUBLIC_KEY_ID needs WECHAT_PAY_PUBLIC_KEY_PATH" in problems(live_env)
    del live_env["WECHAT_PAY_PUBLIC_KEY_ID"]
    values = load_config(environ=live_env)
    assert (values["WECHAT_PLATFORM_CERTS_DIR"], values["WECHAT_PAY_PUBLIC_KEY_ID"]) == ("/etc/wechat/certs", None)


def test_data_encryption_key_must_be_a_fernet_key(live_env):
    live_env["DATA_ENCRYPTION_KEY"] = "not-a-fernet-key"
    assert "DATA_ENCRYPTION_KEY must be" in problems(live_env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CONTENT_LENGTH", "abc"),
        ("MAX_CONTENT_LENGTH", "-1"),
        ("MAX_CONTENT_LENGTH", "0"),
        ("MAX_CONTENT_LENGTH", "1.5"),
        ("TRUSTED_PROXY_COUNT", "two"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        ("USER_TOKEN_TTL_SECONDS", "1e5"),
        ("USER_TOKEN_TTL_SECONDS", "0"),
        ("IDEMPOTENCY_TTL_HOURS", "24"),
        ("IDEMPOTENCY_TTL_HOURS", "x"),
        ("POINT_VALUE_FEN", "-3"),
        ("SEED_DEMO_DATA", "maybe"),
        ("RUN_JOBS_IN_PROCESS", "2"),
    ],
)
def test_bad_values_are_named(name, value):
    message = problems({"WECHAT_MODE": "simulator", name: value})
    assert name in message


def test_bad_values_are_all_named_together(live_env):
    live_env.update({"MAX_CONTENT_LENGTH": "big", "TRUSTED_PROXY_COUNT": "-2", "WECHAT_MODE": "simulator"})
    message = problems(live_env)
    assert "MAX_CONTENT_LENGTH" in message and "TRUSTED_PROXY_COUNT" in message


def test_env_values_are_parsed():
    values = load_config(
        environ={
            "WECHAT_MODE": "simulator",
            "MAX_CONTENT_LENGTH": "1024",
            "TRUSTED_PROXY_COUNT": "2",
            "SEED_DEMO_DATA": "yes",
            "RUN_JOBS_IN_PROCESS": "0",
        }
    )
    assert values["MAX_CONTENT_LENGTH"] == 1024
    assert values["TRUSTED_PROXY_COUNT"] == 2
    assert values["SEED_DEMO_DATA"] is True
    assert values["RUN_JOBS_IN_PROCESS"] is False


def test_simulator_mode_starts_with_no_secrets():
    values = load_config(environ={"WECHAT_MODE": "simulator"})
    assert values["SECRET_KEY"] is None
    assert values["WECHAT_APIV3_KEY"] is None
    assert values["DATABASE_URL"] == "sqlite:///rebate.db"


def test_overrides_win_over_the_environment():
    values = load_config({"WECHAT_MODE": "simulator", "EXTRA_FLAG": 1}, environ={"WECHAT_MODE": "live"})
    assert values["WECHAT_MODE"] == "simulator"
    assert values["EXTRA_FLAG"] == 1


def test_every_setting_has_a_doc_and_secrets_have_no_default():
    for setting in SETTINGS:
        assert setting.doc, setting.name
        if setting.secret:
            assert setting.default is None, setting.name


def test_masked_hides_secrets(live_env):
    values = load_config(environ=live_env)
    shown = masked(values)
    for name in ("SECRET_KEY", "DATA_ENCRYPTION_KEY", "WECHAT_APP_SECRET", "WECHAT_APIV3_KEY"):
        assert shown[name] == "***"
    assert shown["WECHAT_MCHID"] == "1900000001"
    assert "0123456789abcdef0123456789abcdef" not in str(shown)
    assert STRONG_SECRET not in str(shown)


def test_masked_hides_passwords_in_urls():
    values = load_config(
        environ={
            "WECHAT_MODE": "simulator",
            "DATABASE_URL": "postgresql+psycopg://app:hunter2@db.internal:5432/rebate",
            "REDIS_URL": "redis://:redispw@cache:6379/0",
        }
    )
    shown = str(masked(values))
    assert "hunter2" not in shown and "redispw" not in shown
    assert masked(values)["DATABASE_URL"] == "postgresql+psycopg://app:***@db.internal:5432/rebate"
    assert masked(values)["REDIS_URL"] == "redis://:***@cache:6379/0"


def test_masked_keeps_unset_secrets_visible_as_unset():
    shown = masked(load_config(environ={"WECHAT_MODE": "simulator"}))
    assert shown["SECRET_KEY"] is None


def test_importing_app_has_no_side_effects(tmp_path):
    # live mode with nothing set: if import built an app, it would raise ConfigError
    code = (
        "import sys, app\n"
        "assert 'create_app' in dir(app)\n"
        "from models import db\n"
        "assert not db._app_engines, 'an engine was created at import'\n"
        "import flask\n"
        "assert not flask.has_app_context()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WECHAT_MODE": "", "HOME": str(tmp_path)}
    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == [], "importing app created files"


def test_create_app_refuses_live_without_settings(monkeypatch):
    from app import create_app

    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    with pytest.raises(ConfigError, match="SECRET_KEY is required in live mode"):
        create_app({"TESTING": True})


# --- weak secrets refuse to start in live mode (issue 9 §4) ---------------------------------


@pytest.mark.parametrize(
    "weak, problem",
    [
        ("a", "SECRET_KEY must be at least 32 characters"),
        ("x" * 31, "SECRET_KEY must be at least 32 characters"),
        ("s" * 40, "SECRET_KEY is too predictable"),
        ("abababababababababababababababab", "SECRET_KEY is too predictable"),
        (DEV_SECRET, "SECRET_KEY is the published simulator secret"),
    ],
)
def test_create_app_refuses_a_weak_or_published_secret_key_in_live_mode(live_env, monkeypatch, weak, problem):
    from app import create_app

    for name, value in {**live_env, "SECRET_KEY": weak}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=problem):
        create_app({"TESTING": True})
    with pytest.raises(ConfigError, match=problem):
        create_app({"TESTING": True, "SECRET_KEY": weak})


@pytest.mark.parametrize("derived_from", [DEV_SECRET, STRONG_SECRET])
def test_create_app_refuses_a_data_key_derived_the_simulator_way_in_live_mode(live_env, monkeypatch, derived_from):
    from app import create_app

    for name, value in live_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="DATA_ENCRYPTION_KEY is derived from a SECRET_KEY"):
        create_app({"TESTING": True, "DATA_ENCRYPTION_KEY": dev_data_key(derived_from)})


def test_random_secrets_pass_the_strength_check(live_env):
    for _ in range(200):
        load_config(environ={**live_env, "SECRET_KEY": secrets.token_hex(16)})
        load_config(environ={**live_env, "SECRET_KEY": secrets.token_urlsafe(32)})


def test_simulator_mode_keeps_its_built_in_secret():
    values = load_config(environ={"WECHAT_MODE": "simulator", "SECRET_KEY": "a"})
    assert values["SECRET_KEY"] == "a"


# -- a rail switched on by its own setting must be complete (the jobs process would die sending) ---


def test_live_red_packets_need_the_client_certificate(live_env):
    live_env["WECHAT_API_V2_KEY"] = "v2-key-0123456789abcdef012345678"
    message = problems(live_env)
    assert "cash red packets (WECHAT_API_V2_KEY is set) also need WECHAT_OA_APPID and WECHAT_MCH_CERT_PATH" in message
    assert "WECHAT_MCH_KEY_PATH" in message
    assert message.count("\n  - ") == 1
    live_env |= {"WECHAT_OA_APPID": "wxoa", "WECHAT_MCH_CERT_PATH": "/c.pem", "WECHAT_MCH_KEY_PATH": "/k.pem"}
    assert load_config(environ=live_env)["WECHAT_API_V2_KEY"]


def test_live_card_coupons_need_the_official_account(live_env):
    live_env["WECHAT_CARD_ID"] = "pFS7Fjg8kV1IdDz01r4SQwMkuCKc"
    message = problems(live_env)
    assert (
        "card coupons (WECHAT_CARD_ID is set) also need WECHAT_OA_APPID and WECHAT_OA_SECRET and "
        "WECHAT_CARD_FACE_VALUE_FEN" in message
    )
    live_env |= {"WECHAT_OA_APPID": "wxoa", "WECHAT_OA_SECRET": "oa-secret", "WECHAT_CARD_FACE_VALUE_FEN": "500"}
    settled = load_config(environ=live_env)
    assert settled["WECHAT_CARD_ID"] and settled["WECHAT_CARD_FACE_VALUE_FEN"] == 500


def test_simulator_mode_needs_no_client_certificate():
    values = load_config(environ={"WECHAT_MODE": "simulator", "WECHAT_API_V2_KEY": "v2", "WECHAT_CARD_ID": "c"})
    assert values["WECHAT_API_V2_KEY"] == "v2"


def test_a_database_url_keeps_its_own_options_beside_the_lock_timeout():
    """``?options=-csearch_path=…`` in DATABASE_URL (a schema of one's own: the replay and balance benchmarks) was
    replaced by the lock timeout's connect option: the app wrote to ``public`` instead."""
    from sqlalchemy import create_engine, text

    from app import create_app
    from models import db
    from tests.conftest import PG_URL, TEST_SETTINGS, on_postgres

    if not on_postgres():
        pytest.skip("PostgreSQL's connect options")
    schema = f"cfg_{secrets.token_hex(4)}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
        app = create_app({**TEST_SETTINGS, "DATABASE_URL": url, "DATABASE_LOCK_TIMEOUT_S": 7})
        with app.app_context():
            with db.engine.connect() as conn:
                assert conn.execute(text("SHOW search_path")).scalar_one() == schema
                assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "7s"
            db.engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.mark.parametrize("lease", ["1", "59"])
def test_a_payout_lease_shorter_than_its_calls_is_refused(lease):
    """A payout's calls start within half its lease and take up to 13 s each: a lease that can end while a call is at
    WeChat lets another pass take the payout over (its query finds nothing yet, its send may be refused)."""
    with pytest.raises(ConfigError, match="PAYOUT_LEASE_SECONDS must be at least 60"):
        load_config(environ={"WECHAT_MODE": "simulator", "PAYOUT_LEASE_SECONDS": lease})
    settled = load_config(environ={"WECHAT_MODE": "simulator", "PAYOUT_LEASE_SECONDS": "60"})
    assert settled["PAYOUT_LEASE_SECONDS"] == 60


def test_the_lock_timeout_stays_below_the_workers_timeout():
    # a request waiting 60 s or more for a lock is killed with its worker before its promised 503
    simulator = {"WECHAT_MODE": "simulator"}
    assert "DATABASE_LOCK_TIMEOUT_S must be at most 50" in problems({**simulator, "DATABASE_LOCK_TIMEOUT_S": "60"})
    assert load_config(environ={**simulator, "DATABASE_LOCK_TIMEOUT_S": "50"})["DATABASE_LOCK_TIMEOUT_S"] == 50
