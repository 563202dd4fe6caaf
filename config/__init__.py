"""Configuration: embedded defaults, the environment, then explicit overrides.

Every key the app reads is declared in ``SETTINGS`` with its type and default,
so the README table, start-up validation and ``load_config`` agree. Secrets
never have a default that could reach production: in ``live`` WeChat mode
every missing secret is named in one error at start-up.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet

MIN_IDEMPOTENCY_TTL_HOURS = 25  # answers are kept at least this long (DESIGN §4)
URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@/\s]+(@)", re.IGNORECASE)


class ConfigError(RuntimeError):
    """Start-up refused: the message names every bad or missing key."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any] = str
    doc: str = ""
    secret: bool = False


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _json_list(text: str) -> list:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError("must be a JSON list")
    return value


def _rates(text: str) -> dict[str, int]:
    rates = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        rail, _, rate = part.partition("=")
        if not rate.strip().isdigit() or int(rate) <= 0:
            raise ValueError(f"{part!r} is not rail=calls_per_second")
        rates[rail.strip()] = int(rate)
    return rates


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {value}")
    return value


SETTINGS: tuple[Setting, ...] = (
    Setting("SECRET_KEY", None, doc="Signs user bearer tokens and OAuth state. Required.", secret=True),
    Setting(
        "DATA_ENCRYPTION_KEY",
        None,
        doc="Fernet key for fields encrypted at rest (session_key, real name, phone). Required in live mode.",
        secret=True,
    ),
    Setting(
        "DATABASE_URL",
        "sqlite:///rebate.db",
        doc="SQLAlchemy URL; PostgreSQL in production (postgresql+psycopg://…).",
    ),
    Setting(
        "DATABASE_LOCK_TIMEOUT_S",
        20,
        _positive_int,
        doc="How long a request waits for a contended lock before answering 503 + Retry-After: SQLite's busy "
        "timeout for its `BEGIN IMMEDIATE` transactions, PostgreSQL's `lock_timeout` for row locks.",
    ),
    Setting(
        "REDIS_URL",
        None,
        doc="Redis for the shared WeChat access token and card ticket and the payout rails' calls-per-second "
        "limits. Unset: in-process fallback (single process only; the app warns at start-up). Claim limits "
        "and budgets live in the database either way.",
    ),
    Setting("WECHAT_MODE", "live", doc="`live` (default) or `simulator` (the local WeChat of `make run`)."),
    Setting("WECHAT_APPID", None, doc="Mini-program appid."),
    Setting("WECHAT_APP_SECRET", None, doc="Mini-program app secret.", secret=True),
    Setting("WECHAT_OA_APPID", None, doc="Official-account appid (OAuth, cash red packets)."),
    Setting("WECHAT_OA_SECRET", None, doc="Official-account secret.", secret=True),
    Setting("WECHAT_MCHID", None, doc="WeChat Pay merchant id."),
    Setting("WECHAT_MCH_PRIVATE_KEY_PATH", None, doc="Path to the merchant API private key (apiclient_key.pem)."),
    Setting("WECHAT_MCH_CERT_SERIAL", None, doc="Serial number of the merchant API certificate."),
    Setting("WECHAT_APIV3_KEY", None, doc="32-character APIv3 key.", secret=True),
    Setting("WECHAT_PAY_PUBLIC_KEY_PATH", None, doc="WeChat Pay public key (public-key mode)."),
    Setting("WECHAT_PAY_PUBLIC_KEY_ID", None, doc="Its id, `PUB_KEY_ID_…`."),
    Setting(
        "WECHAT_PLATFORM_CERTS_DIR",
        None,
        doc="Directory of platform certificates (certificate mode; refreshed from /v3/certificates).",
    ),
    Setting("WECHAT_API_BASE", "https://api.weixin.qq.com", doc="WeChat API host."),
    Setting("WECHAT_PAY_API_BASE", "https://api.mch.weixin.qq.com", doc="WeChat Pay API host."),
    Setting("WECHAT_OPEN_BASE", "https://open.weixin.qq.com", doc="WeChat OAuth host."),
    Setting("PUBLIC_BASE_URL", None, doc="Public https base of this app; notify URLs are built from it."),
    Setting(
        "TRUSTED_PROXY_COUNT",
        0,
        _positive_int,
        doc="Number of trusted reverse proxies; X-Forwarded-For is read only behind them.",
    ),
    Setting("MAX_CONTENT_LENGTH", 64 * 1024, _positive_int, doc="Largest request body in bytes (413 above)."),
    Setting("USER_TOKEN_TTL_SECONDS", 7 * 24 * 3600, _positive_int, doc="Lifetime of user bearer tokens."),
    Setting("IDEMPOTENCY_TTL_HOURS", 25, _positive_int, doc="How long Idempotency-Key answers are kept."),
    Setting("POINT_VALUE_FEN", 1, _positive_int, doc="Cost of one point in fen, for reports."),
    Setting(
        "CLAIM_IP_PER_DAY",
        5,
        _positive_int,
        doc="Red packets a Beijing day per network address across the whole platform: claims, codes, share "
        "links, registration, sign-in and referral packets alike (0: off). Campaign limits apply on top.",
    ),
    Setting("CLAIM_DEVICE_PER_DAY", 5, _positive_int, doc="The same per device token (0: off)."),
    Setting("CLAIM_PERSON_PER_DAY", 5, _positive_int, doc="The same per person (0: off)."),
    Setting(
        "CLAIM_IP_INTERVAL_SECONDS",
        600,
        _positive_int,
        doc="Seconds between two red packets from one network address, across the platform (0: off).",
    ),
    Setting("CLAIM_DEVICE_INTERVAL_SECONDS", 600, _positive_int, doc="The same per device token (0: off)."),
    Setting("CLAIM_PERSON_INTERVAL_SECONDS", 600, _positive_int, doc="The same per person (0: off)."),
    Setting("LOG_LEVEL", "INFO", doc="Log level of the JSON logs."),
    Setting(
        "SEED_DEMO_DATA", False, _bool, doc="Seed demo merchants, products and campaigns at start (set by `make run`)."
    ),
    Setting("RUN_JOBS_IN_PROCESS", False, _bool, doc="Start the scheduler inside the web process (demo only)."),
    # Payouts (issue 5)
    Setting(
        "WECHAT_API_V2_KEY", None, doc="v2 API key (cash red packets). Unset: the red-packet rail is off.", secret=True
    ),
    Setting("WECHAT_MCH_CERT_PATH", None, doc="Merchant client certificate (apiclient_cert.pem) for v2 red packets."),
    Setting("WECHAT_MCH_KEY_PATH", None, doc="Its key (apiclient_key.pem)."),
    Setting(
        "WECHAT_COUPON_STOCKS",
        [],
        _json_list,
        doc='WeChat Pay coupon stocks as JSON: [{"stock_id", '
        '"denomination_fen" or null for set-value, "min_fen", "max_fen"}]. Empty: the coupon rail is off.',
    ),
    Setting("WECHAT_CARD_ID", None, doc="Card-package card id for card rebates. Unset: the card rail is off."),
    Setting("REDPACK_SEND_NAME", "返利红包", doc="Sender name on cash red packets (≤ 32 chars)."),
    Setting("REDPACK_ACT_NAME", "消费返利", doc="Activity name on cash red packets and transfers."),
    Setting("REDPACK_WISHING", "感谢您的支持", doc="Wishing text on cash red packets."),
    Setting("SERVER_IP", "127.0.0.1", doc="This server's IP, sent as client_ip with v2 red packets."),
    Setting(
        "PAYOUT_MIN_FEN",
        100,
        _positive_int,
        doc="Cash rebates below this stay in the balance instead of being sent one by one.",
    ),
    Setting("WITHDRAWAL_MIN_FEN", 100, _positive_int, doc="Smallest withdrawal of cash balance."),
    Setting(
        "MANUAL_PAYOUT_APPROVAL_FEN",
        50_000,
        _positive_int,
        doc="Manual payouts from this amount need a second operator's approval.",
    ),
    Setting("PAYOUT_MAX_ATTEMPTS", 8, _positive_int, doc="Calls before a payout goes to an operator."),
    Setting(
        "TRANSFER_CONFIRM_HOURS",
        72,
        _positive_int,
        doc="Transfers (and cards) the user has not confirmed after this are cancelled; the money waits in "
        "their balance.",
    ),
    Setting("PAYOUT_BATCH", 50, _positive_int, doc="Payouts one dispatcher pass claims."),
    Setting(
        "PAYOUT_RATE_LIMITS",
        {"wechat_change": 100, "cash_red_packet": 30, "wechat_coupon": 500, "card_coupon": 50},
        _rates,
        doc="Calls per second per rail, e.g. `wechat_change=100,cash_red_packet=30` (defaults: the reference's).",
    ),
    Setting("ALERT_WEBHOOK_URL", None, doc="Alerts are also posted here (a WeCom group robot URL, say)."),
)

LIVE_REQUIRED = (
    "SECRET_KEY",
    "DATA_ENCRYPTION_KEY",
    "WECHAT_APPID",
    "WECHAT_APP_SECRET",
    "WECHAT_MCHID",
    "WECHAT_MCH_PRIVATE_KEY_PATH",
    "WECHAT_MCH_CERT_SERIAL",
    "WECHAT_APIV3_KEY",
    "PUBLIC_BASE_URL",
)
WECHAT_MODES = ("live", "simulator")


def load_config(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Merge defaults, environment and overrides, then validate. Raises ConfigError."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    values: dict[str, Any] = {}
    problems: list[str] = []
    for setting in SETTINGS:
        if setting.name in overrides:
            values[setting.name] = overrides[setting.name]
        elif environ.get(setting.name, "") != "":
            try:
                values[setting.name] = setting.parse(environ[setting.name])
            except ValueError as exc:
                problems.append(f"{setting.name}: {exc}")
        else:
            values[setting.name] = setting.default
    for key, value in overrides.items():
        values.setdefault(key, value)
    problems += _validate(values)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return values


def _validate(values: dict[str, Any]) -> list[str]:
    problems = []
    mode = values["WECHAT_MODE"]
    if mode not in WECHAT_MODES:
        problems.append(f"WECHAT_MODE must be one of {', '.join(WECHAT_MODES)}, got {mode!r}")
    if mode == "live":
        problems += [f"{name} is required in live mode" for name in LIVE_REQUIRED if not values.get(name)]
        has_public_key = values.get("WECHAT_PAY_PUBLIC_KEY_PATH") and values.get("WECHAT_PAY_PUBLIC_KEY_ID")
        if not has_public_key and not values.get("WECHAT_PLATFORM_CERTS_DIR"):
            problems.append(
                "set WECHAT_PAY_PUBLIC_KEY_PATH and WECHAT_PAY_PUBLIC_KEY_ID (public-key mode) "
                "and/or WECHAT_PLATFORM_CERTS_DIR (certificate mode)"
            )
        apiv3 = values.get("WECHAT_APIV3_KEY")
        if apiv3 and len(str(apiv3).encode()) != 32:
            problems.append("WECHAT_APIV3_KEY must be exactly 32 bytes")
        public = values.get("PUBLIC_BASE_URL") or ""
        if public and not str(public).startswith("https://"):
            problems.append("PUBLIC_BASE_URL must be https:// in live mode (WeChat only notifies https)")
    if values.get("MAX_CONTENT_LENGTH", 1) <= 0:
        problems.append("MAX_CONTENT_LENGTH must be positive")
    if values.get("USER_TOKEN_TTL_SECONDS", 1) <= 0:
        problems.append("USER_TOKEN_TTL_SECONDS must be positive")
    if values.get("IDEMPOTENCY_TTL_HOURS", MIN_IDEMPOTENCY_TTL_HOURS) < MIN_IDEMPOTENCY_TTL_HOURS:
        problems.append(f"IDEMPOTENCY_TTL_HOURS must be at least {MIN_IDEMPOTENCY_TTL_HOURS} (DESIGN §4)")
    key = values.get("DATA_ENCRYPTION_KEY")
    if key and not _is_fernet_key(key):
        problems.append("DATA_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64-encoded bytes)")
    return problems


def _is_fernet_key(key: object) -> bool:
    try:
        Fernet(key)
    except (ValueError, TypeError):
        return False
    return True


def _mask_url_password(value: object) -> object:
    """``scheme://user:secret@host`` → ``scheme://user:***@host``."""
    if not isinstance(value, str):
        return value
    return URL_PASSWORD.sub(r"\1***\2", value)


def masked(values: dict[str, Any]) -> dict[str, Any]:
    """The configuration with secrets replaced, for start-up logs."""
    secret_names = {s.name for s in SETTINGS if s.secret}
    return {k: ("***" if k in secret_names and v else _mask_url_password(v)) for k, v in values.items()}
