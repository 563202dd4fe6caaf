"""Configuration: embedded defaults, the environment, then explicit overrides.

Every key the app reads is declared in ``SETTINGS`` with its type and default,
so the README table, start-up validation and ``load_config`` agree. Secrets
never have a default that could reach production: in ``live`` WeChat mode
every missing secret is named in one error at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MIN_IDEMPOTENCY_TTL_HOURS = 25  # answers are kept at least this long (docs/architecture.md §4)
DEV_SECRET = "dev-only-simulator-secret-never-in-live"  # noqa: S105 - published: simulator mode only
MIN_SECRET_CHARS = 32
MIN_SECRET_BITS = 80  # Shannon estimate from its own characters; a random 32-hex-char key scores ~100+
MAX_APIV3_OVERLAP_DAYS = 7  # a rotated-out APIv3 key is never accepted for long
MAX_TRANSFER_CONFIRM_HOURS = 24  # WeChat closes an unconfirmed transfer bill itself after 24 h
TRANSFER_MIN_FEN = 10  # WeChat's smallest transfer (0.1 yuan)
MIN_PAYOUT_LEASE_S = 60  # a payout's calls start within half its lease; two calls of 13 s each must end in it
# mch_billno is String(28), and our numbers are a 2-letter rail tag + 12 digits: 14 characters left.
NUMBER_PREFIX_MAX = 8
NUMBER_PREFIX = re.compile(rf"^[0-9A-Za-z]{{0,{NUMBER_PREFIX_MAX}}}$")
MAX_LOCK_TIMEOUT_S = 50  # below deploy/gunicorn.conf.py's 60 s worker timeout
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PAYOUT_RAILS = ("wechat_change", "cash_red_packet", "wechat_coupon", "card_coupon")  # the rails with a rate
# WeChat's field lengths of v2 sendredpack (payouts/redpack_rail.py refuses them too, but only when the jobs build it)
REDPACK_TEXT_LIMITS = {"REDPACK_SEND_NAME": 32, "REDPACK_ACT_NAME": 32, "REDPACK_WISHING": 128}
REDIS_SCHEMES = ("redis", "rediss", "unix")  # what redis-py's from_url takes
PUBLIC_KEY_ID_PREFIX = "PUB_KEY_ID_"  # WeChat names its public key so in Wechatpay-Serial
# the hosts every WeChat call goes to: signed payment calls, and the app secret in a query string
WECHAT_HOSTS = ("WECHAT_PAY_API_BASE", "WECHAT_API_BASE", "WECHAT_OPEN_BASE", "WECOM_API_BASE")
# A URL's password runs to the first "@", "/" included, as SQLAlchemy reads it (a base64 password has slashes).
URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+(@)", re.IGNORECASE)


SIMULATOR_HINT = (
    "To try the app without WeChat credentials, run it with WECHAT_MODE=simulator (the local WeChat of `make run`)."
)


class ConfigError(RuntimeError):
    """Start-up refused: the message names every bad or missing key."""

    def __init__(self, message: str, *, live: bool = False):
        super().__init__(message)
        self.live = live  # refused in live mode: the report says how to try the app without WeChat

    def report(self) -> str:
        """What a person reads: the list, and in live mode the one line on the simulator."""
        return f"{self}\n{SIMULATOR_HINT}" if self.live else str(self)


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


def _key_list(value: object) -> tuple[str, ...]:
    """Keys given comma-separated (the environment) or as a list (an override); blanks dropped."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else [value]
    return tuple(p.strip() if isinstance(p, str) else p for p in parts if not (isinstance(p, str) and not p.strip()))


def _json_list(text: str) -> list:
    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError("must be a JSON list")
    return value


def _json_object(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _rates(text: str) -> dict[str, int]:
    rates = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        rail, _, rate = part.partition("=")
        if not rate.strip().isdigit() or int(rate) <= 0:
            raise ValueError(f"{part!r} is not rail=calls_per_second")
        rates[rail.strip()] = int(rate)
    return rates


def _log_level(text: str) -> str:
    """A level name as ``logging`` knows it, in any case (gunicorn's own is written ``info``)."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _int_between(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not minimum <= value <= maximum:
            raise ValueError(f"must be {minimum}-{maximum}, got {value}")
        return value

    return parse


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(0)  # "positive" as the settings have always read it: 0 switches a thing off
_process_count = _int_at_least(1)


def _quiet_hours(text: str) -> str:
    """Beijing ``HH:MM-HH:MM`` (it may run past midnight), normalized; ``off`` (or ``none``): no quiet hours."""
    value = "".join(text.split())
    if value.lower() in ("off", "none"):
        return "off"
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)", value)
    if match is None:
        raise ValueError(f"must be HH:MM-HH:MM (Beijing time) or off, got {text!r}")
    if match.group(1, 2) == match.group(3, 4):
        raise ValueError(f"starts and ends at the same minute: {text!r}")
    return value


def _aware_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError(f"{text!r} needs a UTC offset, e.g. +08:00")
    return value


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "SECRET_KEY",
        None,
        doc="Signs user bearer tokens, device tokens, chat binding codes and the console's session cookie "
        "(OAuth state is a random single-use row, not signed). Required. Live mode refuses one under 32 characters, "
        "a predictable one (few distinct characters) and the simulator's published secret.",
        secret=True,
    ),
    Setting(
        "DATA_ENCRYPTION_KEY",
        None,
        doc="Fernet key for fields encrypted at rest (session_key, real name, phone, a group's webhook key, a "
        "transfer's payee name, one-time tokens in stored idempotent answers). Required in live mode, "
        "and independent of SECRET_KEY (the key simulator mode derives from it is refused). Every write uses it.",
        secret=True,
    ),
    Setting(
        "DATA_ENCRYPTION_KEY_PREVIOUS",
        None,
        _key_list,
        doc="Earlier DATA_ENCRYPTION_KEYs, comma-separated, while a key is rotated: values encrypted under them are "
        "still read (the current key is tried first), never written. `flask keys reencrypt` re-encrypts every "
        "stored value under the current key; once a run re-encrypts nothing, remove the previous keys. Each must "
        "be a Fernet key other than the current one (live mode refuses one derived from a SECRET_KEY).",
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
        doc="Seconds (1 to 50: below gunicorn's 60 s worker timeout) a request waits for a contended lock before "
        "answering 503 + Retry-After: "
        "SQLite's busy timeout for its `BEGIN IMMEDIATE` transactions, PostgreSQL's `lock_timeout` for row locks; "
        "and for a free pooled connection (every one held by requests queued behind a long writer).",
    ),
    Setting(
        "LONG_READS_AT_ONCE",
        2,
        _int_between(1, 64),
        doc="Long reads (a risk rule backtest, an audience's count, a what-if replay) running at once: on "
        "PostgreSQL across every process (advisory locks), on SQLite in each process. One at a time per operator "
        "besides; more answer 429 + Retry-After.",
    ),
    Setting(
        "LONG_READ_TIMEOUT_S",
        120,
        _int_between(1, 3600),
        doc="Seconds a long read may run, all its statements together, before it is stopped (its statement "
        "interrupted) and answered 422 `read_too_long` (narrow its window).",
    ),
    Setting(
        "REDIS_URL",
        None,
        doc="Redis for the shared WeChat access token and card ticket and the payout rails' calls-per-second "
        "limits. Unset: in-process fallback, single process only: live mode refuses to start without it "
        "unless `APP_PROCESSES=1` (simulator mode warns). Claim limits and budgets live in the database "
        "either way. In simulator mode it also holds the simulator's records and keys (else they live "
        "in the database), shared by every process.",
    ),
    Setting(
        "APP_PROCESSES",
        None,
        _process_count,
        doc="How many processes of this deployment talk to WeChat: every gunicorn worker on every node plus "
        "every `flask jobs run`. Unset means more than one. Live mode without `REDIS_URL` starts only when "
        "this is 1 (one process serving the web with `RUN_JOBS_IN_PROCESS`).",
    ),
    Setting(
        "WEB_CONCURRENCY",
        None,
        _process_count,
        doc="gunicorn's worker count (gunicorn reads it too). Above 1, live mode requires `REDIS_URL` whatever "
        "`APP_PROCESSES` says.",
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
    Setting(
        "WECHAT_APIV3_KEY_PREVIOUS",
        None,
        doc="The APIv3 key before the last rotation: callbacks and certificates encrypted with it are still "
        "decrypted until `WECHAT_APIV3_KEY_PREVIOUS_UNTIL`, then refused.",
        secret=True,
    ),
    Setting(
        "WECHAT_APIV3_KEY_PREVIOUS_UNTIL",
        None,
        _aware_datetime,
        doc="End of the overlap, ISO 8601 with offset (`2026-12-01T10:00:00+08:00`), at most "
        f"{MAX_APIV3_OVERLAP_DAYS} days ahead; WeChat retries a notification for 24 h 4 min, so keep at least "
        "that after the rotation.",
    ),
    Setting("WECHAT_PAY_PUBLIC_KEY_PATH", None, doc="WeChat Pay public key (public-key mode)."),
    Setting("WECHAT_PAY_PUBLIC_KEY_ID", None, doc="Its id, `PUB_KEY_ID_…`."),
    Setting(
        "WECHAT_PLATFORM_CERTS_DIR",
        None,
        doc="Directory of platform certificates (certificate mode; refreshed from /v3/certificates).",
    ),
    Setting("WECHAT_API_BASE", "https://api.weixin.qq.com", doc="WeChat API host."),
    Setting("WECHAT_PAY_API_BASE", "https://api.mch.weixin.qq.com", doc="WeChat Pay API host."),
    Setting(
        "WECHAT_PAY_API_BACKUP_BASE",
        None,
        doc="WeChat Pay's backup host (`https://api2.mch.weixin.qq.com`). A v3 call that cannot connect to the "
        "main host is sent once more, same body and numbers, to this one; never after an HTTP answer or a "
        "read timeout. Unset: off.",
    ),
    Setting("WECHAT_OPEN_BASE", "https://open.weixin.qq.com", doc="WeChat OAuth host."),
    Setting("PUBLIC_BASE_URL", None, doc="Public https base of this app; notify URLs are built from it."),
    Setting(
        "TRUSTED_PROXY_COUNT",
        0,
        _positive_int,
        doc="Number of trusted reverse proxies; X-Forwarded-For is read only behind them.",
    ),
    Setting(
        "MAX_CONTENT_LENGTH",
        64 * 1024,
        _positive_int,
        doc="Largest request body in bytes (413 above, chunked bodies included; WeChat Pay callbacks: 16 KiB).",
    ),
    Setting("USER_TOKEN_TTL_SECONDS", 7 * 24 * 3600, _positive_int, doc="Lifetime of user bearer tokens."),
    Setting(
        "LOGIN_PER_IP_PER_MINUTE",
        300,
        _positive_int,
        doc="Mini-program logins (`POST /api/v1/auth/login`, each one a `jscode2session` call to WeChat, whatever "
        "its code) a UTC minute from one network address (an IPv4 address or an IPv6 address's /64), counted in the "
        "database for every worker; more are 429 `login_rate_limited` with `Retry-After`, before WeChat is called. "
        "A person logs in a few times a day, but a mobile carrier's NAT or a venue's Wi-Fi puts many people behind "
        "one address: 300 leaves room for a crowd; raise it where one address serves more (0: off).",
    ),
    Setting(
        "OAUTH_AUTHORIZE_PER_IP_PER_MINUTE",
        300,
        _positive_int,
        doc="Official-account sign-ins started (`GET /oauth/authorize`, each one a sign-in state row) a UTC minute "
        "from one network address, counted as logins are (apart from them); more are 429 `oauth_rate_limited` "
        "with `Retry-After` (0: off).",
    ),
    Setting("IDEMPOTENCY_TTL_HOURS", 25, _positive_int, doc="How long Idempotency-Key answers are kept."),
    Setting(
        "POINT_VALUE_FEN",
        1,
        _positive_int,
        doc="Cost of one point in fen, for reports, and what a point pays of an order when spent on it "
        "(`use_points`; fixed on the order when it is created).",
    ),
    Setting(
        "CLAIM_IP_PER_DAY",
        5,
        _positive_int,
        doc="Red packets a Beijing day per network address across the whole platform: claims, codes, share "
        "links, registration, sign-in and referral packets alike (0: off). A network address is an IPv4 address or "
        "an IPv6 address's /64. Campaign limits apply on top.",
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
    Setting("LOG_LEVEL", "INFO", _log_level, doc="Log level of the JSON logs."),
    Setting(
        "PROMETHEUS_MULTIPROC_DIR",
        None,
        doc="Directory where every process of a node writes its Prometheus metrics, so `/metrics` answers "
        "the sum over all gunicorn workers (the client's multiprocess mode; read by the client from the "
        "environment when it is imported). `deploy/gunicorn.conf.py` sets it (a fresh directory unless "
        "given) and empties it at start. Unset: each process counts alone (`make run`, tests).",
    ),
    Setting(
        "SEED_DEMO_DATA",
        False,
        _bool,
        doc="Lets `flask seed-demo` seed demo data in live mode (it refuses otherwise); `make run` sets it and runs "
        "`flask seed-demo` itself.",
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
        doc='WeChat Pay coupon stocks as JSON, one fixed-denomination stock per value: [{"stock_id", '
        '"denomination_fen"}] (WeChat\'s coupon_value is not open, so no set-value stocks). Empty: the coupon '
        "rail is off.",
    ),
    Setting("WECHAT_CARD_ID", None, doc="Card-package card id for card rebates. Unset: the card rail is off."),
    Setting(
        "WECHAT_CARD_FACE_VALUE_FEN",
        None,
        _int_at_least(1),
        doc="What the card of `WECHAT_CARD_ID` is worth, in fen (fixed when the card was made at WeChat): a card "
        "rebate of another amount falls back (to the campaign's fallback form, else the balance), never offered as a "
        "card worth something else. Required in live mode with `WECHAT_CARD_ID`; the simulator's card is worth any "
        "amount when unset.",
    ),
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
        doc="Manual payouts from this amount need a second operator's approval; so does one that brings what its "
        "operator, or anyone, paid its person without approval in the last 24 hours to this amount.",
    ),
    Setting("PAYOUT_MAX_ATTEMPTS", 8, _positive_int, doc="Calls before a payout goes to an operator."),
    Setting(
        "TRANSFER_CONFIRM_HOURS",
        24,
        _positive_int,
        doc="Transfer bills the user has not confirmed after this are cancelled at WeChat (at most 24: WeChat "
        "closes them itself then); the money goes back to the user's balance, and no new bill is sent unasked.",
    ),
    Setting("PAYOUT_BATCH", 50, _positive_int, doc="Payouts one dispatcher pass claims."),
    Setting(
        "PAYOUT_LEASE_SECONDS",
        300,
        _positive_int,
        doc="How long a dispatcher owns a claimed payout; after it, another pass resolves it by a query (at least 60).",
    ),
    Setting(
        "PAYOUT_CONFIRM_RECHECK_SECONDS",
        6 * 3600,
        _positive_int,
        doc="How often a transfer waiting for the user's confirmation is queried again.",
    ),
    Setting(
        "WECHAT_NUMBER_PREFIX",
        "",
        doc="Environment prefix of every number we send WeChat (mch_billno, out_bill_no, out_request_no), "
        "e.g. `S` on staging sharing the merchant id with production; at most "
        f"{NUMBER_PREFIX_MAX} letters or digits.",
    ),
    Setting(
        "PAYOUT_RATE_LIMITS",
        {"wechat_change": 100, "cash_red_packet": 30, "wechat_coupon": 500, "card_coupon": 50},
        _rates,
        doc="Calls per second per rail, e.g. `wechat_change=100,cash_red_packet=30` (defaults: WeChat's "
        "documented limits, the card rail's 50 ours; docs/wechat-rules.md §6). Shared by every process "
        "through `REDIS_URL`: more `flask jobs run` processes never send faster than this.",
    ),
    Setting(
        "PAYOUT_CALLS_IN_FLIGHT",
        16,
        _process_count,
        doc="Calls to WeChat one jobs process has in flight per rail (its threads; never more than the rail's "
        "rate). A rail reaches its rate when this is at least rate × WeChat's answer time (100/s × 0.15 s = 15).",
    ),
    Setting("ALERT_WEBHOOK_URL", None, doc="Alerts are also posted here (a WeCom group robot URL, say)."),
    Setting(
        "METRICS_TOKEN",
        None,
        doc="When set, `/metrics` answers only `Authorization: Bearer <this>` (Prometheus' `authorization` "
        "setting); unset, it is open, for a scraper on a private network.",
        secret=True,
    ),
    # risk: collusion communities and spike alerts
    Setting(
        "RISK_GRAPH_DAYS",
        30,
        _int_at_least(1),
        doc="Days of orders, packets, identifiers and referrals the collusion graph covers.",
    ),
    Setting(
        "RISK_COMMUNITY_THRESHOLD",
        0.4,
        float,
        doc="A community scoring at least this (0-1, risk/communities.py) is suspicious and opens a review case.",
    ),
    Setting("RISK_SPIKE_ALPHA", 0.1, float, doc="Weight of the newest hour in the spike baselines' EWMA (0-1)."),
    Setting(
        "RISK_SPIKE_SIGMA",
        4.0,
        float,
        doc="An hour is a spike above the baseline's mean + this many standard deviations.",
    ),
    Setting(
        "RISK_SPIKE_MIN_COUNT",
        20,
        _positive_int,
        doc="…and only with at least this many claims, redemptions or rebates.",
    ),
    Setting(
        "RISK_SPIKE_RESUME_GRACE_HOURS",
        6,
        _positive_int,
        doc="A campaign a person activated again is not auto-paused for spikes of hours that began before that, "
        "nor for this many hours after (a burst the operator judged real; the spike alerts still go out).",
    ),
    # risk: review cases
    Setting(
        "RISK_SECOND_APPROVAL_FEN",
        20000,
        _positive_int,
        doc="A review decision moving more than this (fen: what the case holds; a clawback also what was paid on "
        "its orders) is decided by two operators: the first decision is a proposal, carried out when a different "
        "operator decides the same outcome.",
    ),
    # risk: behaviour trail
    Setting(
        "RISK_EVENTS_PER_MINUTE",
        600,
        _positive_int,
        doc="Behaviour-trail events (`POST /api/v1/events`) a person, and a device, may send a minute; a batch "
        "that would pass it is refused whole (429). 0 switches the limit off.",
    ),
    Setting(
        "RISK_EVENTS_KEEP_DAYS",
        35,
        _process_count,
        doc="Days raw behaviour-trail events are kept (scoring reads the browsing sessions, not the raw rows).",
    ),
    # the operator console (/console/)
    Setting(
        "CONSOLE_SESSION_HOURS",
        8,
        _process_count,
        doc="A console sign-in lasts at most this many hours, however busy (then the operator signs in again).",
    ),
    Setting(
        "CONSOLE_IDLE_MINUTES",
        60,
        _process_count,
        doc="A console session unused for this many minutes ends.",
    ),
    Setting(
        "CONSOLE_COOKIE_SECURE",
        None,
        _bool,
        doc="Send the console's session cookie over HTTPS only. Unset: on, except in simulator mode (`make run` "
        "serves plain HTTP on 127.0.0.1).",
    ),
    # public campaign rules (`/c/<id>`, `GET /api/v1/campaigns/<id>/rules`)
    Setting("PLATFORM_NAME", "本平台 (this platform)", doc="The platform's name as people read it on public pages."),
    Setting(
        "COMPLAINT_CONTACT",
        "小程序 → 我的 → 客服 (in the mini-program: Me → Customer service)",
        doc="The platform's own complaint channel (service phone, URL or path in the app), shown on every "
        "campaign's public rules beside WeChat Pay's complaint path.",
    ),
    Setting(
        "INSIGHTS_ROLLUP_SECONDS",
        300,
        _int_at_least(10),
        doc="How often the jobs rebuild the reports' daily rollups of the days not final yet (today and the two "
        "days before it, and days never built); reports are this fresh. `make run` uses 30.",
    ),
    # WeChat message push (`/wechat/oa/push`, `/wechat/mp/push`)
    Setting(
        "WECHAT_OA_PUSH_TOKEN",
        None,
        doc="The official account's message-push Token (3-32 letters or digits, as entered in the OA admin: "
        "Settings and development → Basic configuration → Server configuration). Unset: `/wechat/oa/push` "
        "answers 404. Simulator mode fills in its own.",
        secret=True,
    ),
    Setting(
        "WECHAT_OA_ENCODING_AES_KEY",
        None,
        doc="The official account's EncodingAESKey (43 characters). Set it and choose safe mode (安全模式) in the "
        "admin: plaintext pushes are then refused. Simulator mode fills in its own.",
        secret=True,
    ),
    Setting(
        "WECHAT_OA_ENCODING_AES_KEY_PREVIOUS",
        None,
        doc="The EncodingAESKey before the last change, tried when the current one does not decrypt a push "
        "(WeChat may still use it for a while); remove it once pushes decrypt under the new one.",
        secret=True,
    ),
    Setting(
        "WECHAT_MP_PUSH_TOKEN",
        None,
        doc="The mini-program's message-push Token (mini-program admin: Development → Development settings → "
        "Message push). Unset: `/wechat/mp/push` answers 404. Simulator mode fills in its own.",
        secret=True,
    ),
    Setting(
        "WECHAT_MP_ENCODING_AES_KEY",
        None,
        doc="The mini-program's message-push EncodingAESKey (43 characters; safe mode, XML or JSON). "
        "Simulator mode fills in its own.",
        secret=True,
    ),
    Setting(
        "WECHAT_MP_ENCODING_AES_KEY_PREVIOUS",
        None,
        doc="The mini-program's EncodingAESKey before the last change (see WECHAT_OA_ENCODING_AES_KEY_PREVIOUS).",
        secret=True,
    ),
    Setting(
        "WECHAT_PUSH_MAX_AGE_SECONDS",
        300,
        _int_at_least(30),
        doc="A message push (official account or mini-program) whose signed timestamp is further than this from our "
        "clock is refused (403 `STALE`): the plain signature covers the Token, timestamp and nonce only, so an old "
        "signed query must not carry a new body. WeChat sends a push and its retries within seconds.",
    ),
    Setting(
        "MESSAGES_KEEP_DAYS",
        90,
        _int_at_least(1),
        doc="Days a pushed message applied or ignored is kept (then purged nightly; a failed one stays for an "
        "operator). A replay cannot bring one back: a push signed more than WECHAT_PUSH_MAX_AGE_SECONDS ago is "
        "refused.",
    ),
    Setting(
        "MESSAGES_MAX_ATTEMPTS",
        8,
        _int_at_least(1),
        doc="How many times the jobs try to apply a pushed message (backoff between tries) before marking it "
        "failed and alerting an operator.",
    ),
    # notices of money events (docs/architecture.md §14)
    Setting(
        "NOTICE_TRANSFER_REMINDER_HOURS",
        3,
        _positive_int,
        doc="A change transfer waiting for the user's confirmation is announced at once and reminded this many "
        "hours before it closes (its first hand-over plus `TRANSFER_CONFIRM_HOURS`); less than "
        "`TRANSFER_CONFIRM_HOURS`.",
    ),
    # audiences (`/admin/api/audiences`)
    Setting(
        "AUDIENCE_RUN_CHUNK",
        200,
        _int_at_least(1),
        doc="Treated members an audience run issues packets to per transaction (the job commits each chunk; "
        "a crash resumes at the first member not done).",
    ),
    Setting(
        "AUDIENCE_RUN_INLINE_MAX",
        500,
        _int_at_least(0),
        doc="An audience run of at most this many members is worked to the end in the request that starts "
        "it; a larger one is left to the `audience_runs_job` (every 10 s) and the answer says `pending`. "
        "0: always the job.",
    ),
    # notices to people (docs/architecture.md §14)
    Setting(
        "NOTICE_TEMPLATES",
        None,
        _json_object,
        doc="JSON object, per notice event: inbox `title` and `body`, the mini-program `page`, and optionally "
        '`subscribe` and `oa` (`{template_id, data: {thing1: "{issuer}", …}}`). Checked at start-up against '
        "WeChat's field rules and for marketing words. Unset: the built-in set (simulator template ids; in live "
        "mode inbox only).",
    ),
    Setting(
        "NOTICE_RATE_LIMITS",
        {"subscribe": 50, "oa_template": 50},
        _rates,
        doc="Messages per second per channel (`subscribe=50,oa_template=50`), shared by every process through "
        "Redis when REDIS_URL is set.",
    ),
    Setting(
        "NOTICES_KEEP_DAYS",
        180,
        _int_at_least(31),
        doc="Days a notice that is done with (sent, in the inbox, cancelled) is kept, in the person's inbox too; then "
        "purged nightly. Pending notices stay until they are sent.",
    ),
    Setting(
        "NOTICE_DAILY_CAP",
        3,
        _positive_int,
        doc="At most this many WeChat messages per person per Beijing day; more go to the inbox only (0: the inbox "
        "only). A transfer waiting for the person's confirmation is exempt (their money is at stake).",
    ),
    Setting(
        "NOTICE_QUIET_HOURS",
        None,
        _quiet_hours,
        doc="Beijing time `HH:MM-HH:MM` when no WeChat message goes out (`off`: none). A notice due then waits "
        "for the end (in the inbox meanwhile) and goes out once; one about something over by then (a packet "
        "expiring, a transfer closing before it) stays in the inbox only. A transfer waiting for the person's "
        "confirmation is never held back. Unset: `22:00-08:00` in live mode, off with the simulator.",
    ),  # challenge bots (issue 15): the WeCom intelligent robot, chat bindings, the group webhook
    Setting(
        "WECOM_BOT_TOKEN",
        None,
        doc="The WeCom intelligent robot's callback Token (robot → API mode → URL settings). Unset: "
        "`/wechat/wecom/bot` answers 404. Simulator mode fills in its own.",
        secret=True,
    ),
    Setting(
        "WECOM_BOT_ENCODING_AES_KEY",
        None,
        doc="The robot's EncodingAESKey (43 characters); callbacks and replies are always encrypted.",
        secret=True,
    ),
    Setting(
        "WECOM_BOT_ENCODING_AES_KEY_PREVIOUS",
        None,
        doc="The robot's EncodingAESKey before the last change, accepted for callbacks while WeCom may still use it.",
        secret=True,
    ),
    Setting(
        "WECOM_BOT_ID",
        None,
        doc="The robot's id (`aibotid`); set: a callback naming another robot is refused. Bindings are per robot.",
    ),
    Setting(
        "WECOM_BOT_MAX_AGE_SECONDS",
        300,
        _int_at_least(30),
        doc="A robot callback whose signed timestamp is further than this from our clock is refused (replay).",
    ),
    Setting(
        "CHAT_BINDING_CODE_MINUTES",
        10,
        _int_at_least(1),
        doc="How long a one-time chat binding code (asked for in a 1:1 chat with a bot) can be confirmed in the "
        "mini-program.",
    ),
    Setting(
        "CHAT_BINDING_MAX_FAILURES",
        5,
        _int_at_least(1),
        doc="Wrong binding codes a person may enter in 15 minutes before further attempts are refused (429).",
    ),
    Setting(
        "WECOM_API_BASE",
        "https://qyapi.weixin.qq.com",
        doc="WeCom's API host (the group webhook `/cgi-bin/webhook/send`); simulator mode points it at `/_sim/wecom`.",
    ),
    Setting(
        "WECOM_WEBHOOK_PER_MINUTE",
        20,
        _int_at_least(1),
        doc="Messages per minute per WeCom group webhook (WeCom's limit is 20; errcode 130101 beyond), shared by "
        "every process through Redis when REDIS_URL is set.",
    ),
    # challenges among friends (docs/architecture.md §16)
    Setting(
        "CHALLENGE_MAX_PARTICIPANTS",
        20,
        _int_at_least(2),
        doc="Most people in one challenge (a challenge may ask for fewer).",
    ),
    Setting("CHALLENGE_MAX_DAYS", 30, _int_at_least(1), doc="Longest challenge period, in Beijing days."),
    Setting(
        "CHALLENGE_MAX_LEAD_DAYS",
        30,
        _int_at_least(1),
        doc="Latest first day of a new challenge, in Beijing days after today (its stakes are held until it starts).",
    ),
    Setting(
        "CHALLENGE_STEPS_DAILY_CAP",
        98_800,
        _int_at_least(1),
        doc="WeRun steps above this in one day are implausible: kept, flagged, and counted as zero.",
    ),
    Setting(
        "CHALLENGE_STEPS_REPEAT_DAYS",
        3,
        _int_at_least(0),
        doc="The same non-zero step total this many days running is flagged and those days count as zero "
        "(0 or 1: off).",
    ),
    Setting(
        "CHALLENGE_READING_INTERVAL_MINUTES",
        30,
        _int_at_least(0),
        doc="Shortest time between two reading check-ins of one person (server time).",
    ),
    Setting(
        "CHALLENGE_READING_DAILY_CAP",
        3,
        _int_at_least(1),
        doc="Most reading check-ins of one person that count in a Beijing day.",
    ),
    Setting(
        "CHALLENGE_REPORT_GRACE_HOURS",
        24,
        _int_at_least(0),
        doc="Hours after a challenge's last day ends until its report deadline; then missing data counts as zero "
        "and the challenge settles.",
    ),
    Setting(
        "CHALLENGE_LOSER_REBATE_BPS",
        1000,
        _int_at_least(0),
        doc="The loser's share back (basis points of what the winner paid, capped at half the packet's value, from the "
        "platform marketing fund) when the winner spends the loser's packet.",
    ),
    Setting(
        "CHALLENGE_PACKET_VALID_DAYS",
        14,
        _int_at_least(1),
        doc="How long a challenge packet is valid; unused, its value goes back to the loser's balance.",
    ),
    Setting(
        "CHALLENGE_QUIZ_SECONDS",
        300,
        _int_at_least(10),
        doc="Time for one quiz attempt, from the moment the person fetches the questions.",
    ),
    Setting(
        "WERUN_MAX_AGE_SECONDS",
        600,
        _int_at_least(10),
        doc="A WeRun upload whose watermark timestamp is older than this (or this far in the future) is refused.",
    ),
    Setting(
        "CHALLENGE_SETTLE_SECONDS",
        60,
        _int_at_least(1),
        doc="How often the jobs start, cancel and settle due challenges (a challenge settles this long at most "
        "after its data decide it). `make run` uses 5.",
    ),
    Setting(
        "CHALLENGE_POST_HOUR",
        20,
        _int_between(0, 23),
        doc="From this hour (Beijing) each running group challenge's leaderboard is posted once a day to the "
        "group's WeCom webhook (set in the group with `设置推送`); results are posted after settlement.",
    ),
    Setting(
        "CHATTOOL_CARD_TEMPLATE_ID",
        None,
        doc="The chat-tool dynamic message template of a challenge card (`chattoolmsg/send` `template_id`). Unset: "
        "a chat-tool group challenge's card is not updated. Simulator mode fills in its own.",
    ),
    Setting(
        "FUND_FLOW",
        "direct",
        _one_of("direct", "service_provider"),
        doc="`direct`: the operator is the WeChat Pay merchant and the merchants are its own shops (statements, "
        "no settlement). `service_provider`: each merchant is a sub-merchant (`sub_mchid`) paid through the "
        "partner JSAPI; merchant-funded rebates leave the merchant's order money by profit sharing, and the "
        "platform never takes a merchant's money into its own account (no deposit top-ups).",
    ),
    Setting(
        "PLATFORM_FEE_BPS",
        0,
        _int_between(0, 10000),
        doc="The platform's service fee on each paid order, in basis points of the order total, for merchants "
        "without a rate of their own (`PUT /admin/api/merchants/<id>/fee-rate`). Accrued at payment, lowered "
        "by refunds, invoiced monthly with the merchant's marketing credit applied first.",
    ),
    Setting(
        "PROFIT_SHARING_HOLD_DAYS",
        7,
        _int_between(1, 179),
        doc="Service-provider mode: days after payment before an order's merchant-funded rebates are shared out "
        "of its frozen money (a share to a person cannot be returned, so it waits for the refund window: 7 "
        "days, the statutory no-reason return period; a later refund becomes a receivable). Below 180: WeChat "
        "unfreezes unshared money to the merchant by itself after 180 days.",
    ),
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
        raise ConfigError(
            "invalid configuration:\n  - " + "\n  - ".join(problems), live=values.get("WECHAT_MODE") == "live"
        )
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
        problems += _public_key_problems(values)
        apiv3 = values.get("WECHAT_APIV3_KEY")
        if apiv3 and len(str(apiv3).encode()) != 32:
            problems.append("WECHAT_APIV3_KEY must be exactly 32 bytes")
        problems += _live_secret_problems(values)
        problems += _public_base_url_problems(values.get("PUBLIC_BASE_URL") or "")
        problems += [
            f"{name} must be https:// in live mode (signed calls and secrets go there)"
            for name in WECHAT_HOSTS
            if values.get(name) and not str(values[name]).startswith("https://")
        ]
        problems += _shared_state_problems(values)
        problems += _live_rail_problems(values)
    if str(values.get("LOG_LEVEL", "INFO")).strip().upper() not in LOG_LEVELS:  # (an override is not parsed)
        problems.append(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    if values.get("DATABASE_LOCK_TIMEOUT_S", 1) < 1:
        problems.append("DATABASE_LOCK_TIMEOUT_S must be at least 1 (0 would refuse every contended request at once)")
    if values.get("DATABASE_LOCK_TIMEOUT_S", 1) > MAX_LOCK_TIMEOUT_S:  # the worker killed before its 503
        problems.append(
            f"DATABASE_LOCK_TIMEOUT_S must be at most {MAX_LOCK_TIMEOUT_S} (gunicorn kills a worker after 60 s: a "
            "request waiting longer is cut off with no answer)"
        )
    if values.get("MAX_CONTENT_LENGTH", 1) <= 0:
        problems.append("MAX_CONTENT_LENGTH must be positive")
    if values.get("USER_TOKEN_TTL_SECONDS", 1) <= 0:
        problems.append("USER_TOKEN_TTL_SECONDS must be positive")
    if values.get("IDEMPOTENCY_TTL_HOURS", MIN_IDEMPOTENCY_TTL_HOURS) < MIN_IDEMPOTENCY_TTL_HOURS:
        problems.append(f"IDEMPOTENCY_TTL_HOURS must be at least {MIN_IDEMPOTENCY_TTL_HOURS} (docs/architecture.md §4)")
    problems += _apiv3_rotation_problems(values)
    if not 0 < values.get("RISK_SPIKE_ALPHA", 0.1) <= 1:
        problems.append("RISK_SPIKE_ALPHA must be in (0, 1]")
    sigma = values.get("RISK_SPIKE_SIGMA", 4.0)
    if not (math.isfinite(sigma) and sigma > 0):  # nan compares false with everything: no hour would be a spike
        problems.append("RISK_SPIKE_SIGMA must be a positive number")
    if not 0 <= values.get("RISK_COMMUNITY_THRESHOLD", 0.4) <= 1:
        problems.append("RISK_COMMUNITY_THRESHOLD must be between 0 and 1")
    metrics_dir = values.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir and not os.path.isdir(metrics_dir):
        problems.append(f"PROMETHEUS_MULTIPROC_DIR {metrics_dir} is not a directory")
    backup = values.get("WECHAT_PAY_API_BACKUP_BASE") or ""
    if backup and mode == "live" and not str(backup).startswith("https://"):
        problems.append("WECHAT_PAY_API_BACKUP_BASE must be https:// in live mode")
    problems += _url_problems(values)
    problems += _payout_problems(values)
    problems += _push_problems(values)
    problems += _wecom_bot_problems(values)
    quiet = values.get("NOTICE_QUIET_HOURS")
    if quiet is not None:  # an override is not parsed on its way in
        try:
            _quiet_hours(quiet if isinstance(quiet, str) else repr(quiet))
        except ValueError as exc:
            problems.append(f"NOTICE_QUIET_HOURS: {exc}")
    unknown = set(values.get("NOTICE_RATE_LIMITS") or {}) - {"subscribe", "oa_template"}
    if unknown:
        problems.append(f"NOTICE_RATE_LIMITS: unknown channel {', '.join(sorted(unknown))} (subscribe, oa_template)")
    key = values.get("DATA_ENCRYPTION_KEY")
    if key and not _is_fernet_key(key):
        problems.append("DATA_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64-encoded bytes)")
    problems += _previous_data_key_problems(values)
    return problems


def previous_data_keys(values: dict[str, Any]) -> tuple[str, ...]:
    """DATA_ENCRYPTION_KEY_PREVIOUS as a tuple of keys, oldest last as given (validated by ``load_config``)."""
    return _key_list(values.get("DATA_ENCRYPTION_KEY_PREVIOUS"))


def _current_data_key(values: dict[str, Any]) -> str | None:
    """The key writes use: DATA_ENCRYPTION_KEY, or in simulator mode the one derived as app.py does."""
    key = values.get("DATA_ENCRYPTION_KEY")
    if key or values.get("WECHAT_MODE") != "simulator":
        return key
    return dev_data_key(str(values.get("SECRET_KEY") or DEV_SECRET))


def _previous_data_key_problems(values: dict[str, Any]) -> list[str]:
    """Each earlier key is a Fernet key, listed once, not the current one, and (live) not a derived one. A key
    is never quoted: it is named by its place in the list."""
    previous = previous_data_keys(values)
    if not previous:
        return []
    name = "DATA_ENCRYPTION_KEY_PREVIOUS"
    problems = [
        f"{name}: key {n} must be a Fernet key (32 url-safe base64-encoded bytes)"
        for n, key in enumerate(previous, 1)
        if not _is_fernet_key(key)
    ]
    current = _current_data_key(values)
    if current and current in previous:
        problems.append(f"{name} holds the current DATA_ENCRYPTION_KEY: nothing was rotated")
    if len(set(previous)) != len(previous):
        problems.append(f"{name} lists a key twice")
    if values.get("WECHAT_MODE") == "live":
        derived = {dev_data_key(DEV_SECRET), dev_data_key(str(values.get("SECRET_KEY") or ""))}
        if derived & set(previous):
            problems.append(
                f"{name} holds a key derived from a SECRET_KEY the way simulator mode does; live mode never had "
                "one: generate independent Fernet keys"
            )
    return problems


def _public_key_problems(values: dict[str, Any]) -> list[str]:
    """The WeChat Pay public key is a file and its id: a file without its id was silently not loaded (beside
    platform certificates the app started, and refused as forged every notification signed with the key)."""
    path, key_id = values.get("WECHAT_PAY_PUBLIC_KEY_PATH"), values.get("WECHAT_PAY_PUBLIC_KEY_ID")
    if path and not key_id:
        return ["WECHAT_PAY_PUBLIC_KEY_PATH needs WECHAT_PAY_PUBLIC_KEY_ID (public-key mode: the key and its id)"]
    if key_id and not path:  # beside platform certificates it was silently not used
        return ["WECHAT_PAY_PUBLIC_KEY_ID needs WECHAT_PAY_PUBLIC_KEY_PATH (public-key mode: the key and its id)"]
    if key_id and not str(key_id).startswith(PUBLIC_KEY_ID_PREFIX):
        return [
            f"WECHAT_PAY_PUBLIC_KEY_ID must start with {PUBLIC_KEY_ID_PREFIX} (as the merchant platform shows it; "
            "WeChat names the key so when it signs)"
        ]
    return []


def _public_base_url_problems(public: str) -> list[str]:
    """The notify URLs are this plus a path: WeChat takes only an https URL with a host and no query."""
    if not public:
        return []
    parts = urlsplit(str(public))
    if parts.scheme != "https":
        return ["PUBLIC_BASE_URL must be https:// in live mode (WeChat only notifies https)"]
    if not parts.hostname or parts.query or parts.fragment or "?" in str(public) or "#" in str(public):
        return ["PUBLIC_BASE_URL must be https://host[/path], with no query or fragment (the notify URLs end it)"]
    return []


def _url_problems(values: dict[str, Any]) -> list[str]:
    """The database's and Redis's URLs are used when the app is built: a bad one named here, not a traceback."""
    problems = []
    database = values.get("DATABASE_URL")
    if database:
        problem = _database_url_problem(str(database))
        if problem:
            problems.append(f"DATABASE_URL {problem}")
    redis_url = values.get("REDIS_URL")
    if redis_url and urlsplit(str(redis_url)).scheme not in REDIS_SCHEMES:
        problems.append("REDIS_URL must start with redis://, rediss:// or unix://")
    server_ip = values.get("SERVER_IP")
    try:
        ipaddress.ip_address(str(server_ip))
    except ValueError:
        problems.append("SERVER_IP must be an IP address (sent as client_ip with every cash red packet)")
    return problems


def _database_url_problem(url: str) -> str | None:
    """What is wrong with a database URL (never quoting it: it may hold a password), or None."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "is not a database URL (postgresql+psycopg://user:password@host/name, sqlite:///file.db)"
    if parsed.drivername in ("postgres", "postgresql"):
        return "must name its driver: postgresql+psycopg://… (psycopg 3, of requirements.txt)"
    try:
        parsed.get_dialect().import_dbapi()
    except Exception:  # noqa: BLE001 - a missing plugin or driver module, however the dialect reports it
        return f"names a database or driver that is not installed ({parsed.drivername})"
    return None


def dev_data_key(secret_key: str) -> str:
    """The data key simulator mode derives from SECRET_KEY when none is set (never acceptable live)."""
    digest = hashlib.sha256(secret_key.encode() + b"/data-key").digest()
    return base64.urlsafe_b64encode(digest).decode()


def secret_bits(secret: str) -> float:
    """Shannon estimate of a secret's entropy: length × bits per character of its own distribution."""
    counts = Counter(secret)
    return -sum(n * math.log2(n / len(secret)) for n in counts.values())


def _live_secret_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    secret = values.get("SECRET_KEY")
    if secret and str(secret) == DEV_SECRET:
        problems.append(
            "SECRET_KEY is the published simulator secret; generate one: python -c "
            "'import secrets; print(secrets.token_urlsafe(48))'"
        )
    elif secret and len(str(secret)) < MIN_SECRET_CHARS:
        problems.append(f"SECRET_KEY must be at least {MIN_SECRET_CHARS} characters")
    elif secret and secret_bits(str(secret)) < MIN_SECRET_BITS:
        problems.append("SECRET_KEY is too predictable (too few distinct characters); use a random one")
    data_key = values.get("DATA_ENCRYPTION_KEY")
    if data_key and data_key in {dev_data_key(DEV_SECRET), dev_data_key(str(secret or ""))}:
        problems.append(
            "DATA_ENCRYPTION_KEY is derived from a SECRET_KEY the way simulator mode does; "
            "generate an independent Fernet key"
        )
    return problems


def _apiv3_rotation_problems(values: dict[str, Any]) -> list[str]:
    previous, until = values.get("WECHAT_APIV3_KEY_PREVIOUS"), values.get("WECHAT_APIV3_KEY_PREVIOUS_UNTIL")
    if not previous and not until:
        return []
    if not previous or not until:
        return ["WECHAT_APIV3_KEY_PREVIOUS and WECHAT_APIV3_KEY_PREVIOUS_UNTIL go together"]
    problems = []
    if len(str(previous).encode()) != 32:
        problems.append("WECHAT_APIV3_KEY_PREVIOUS must be exactly 32 bytes")
    if previous == values.get("WECHAT_APIV3_KEY"):
        problems.append("WECHAT_APIV3_KEY_PREVIOUS is the current key: nothing was rotated")
    if not isinstance(until, datetime) or until.tzinfo is None:
        problems.append("WECHAT_APIV3_KEY_PREVIOUS_UNTIL must be a datetime with a UTC offset")
    elif until > datetime.now(UTC) + timedelta(days=MAX_APIV3_OVERLAP_DAYS):
        problems.append(f"WECHAT_APIV3_KEY_PREVIOUS_UNTIL is more than {MAX_APIV3_OVERLAP_DAYS} days ahead")
    return problems


def _shared_state_problems(values: dict[str, Any]) -> list[str]:
    """Several processes must share the WeChat access token and the rails' rate limits through Redis."""
    if values.get("REDIS_URL"):
        return []
    workers = values.get("WEB_CONCURRENCY") or 1
    if workers > 1:
        return [f"REDIS_URL is required in live mode: WEB_CONCURRENCY={workers} runs more than one process"]
    if values.get("APP_PROCESSES") != 1:
        return [
            "REDIS_URL is required in live mode with more than one process (web workers and `flask jobs run` "
            "share the WeChat access token and payout rate limits); set REDIS_URL, or APP_PROCESSES=1 when "
            "exactly one process serves the web and runs the jobs"
        ]
    return []


def _live_rail_problems(values: dict[str, Any]) -> list[str]:
    """A rail switched on by its own setting must have everything it needs, or the jobs process dies sending."""
    problems = []
    if values.get("WECHAT_API_V2_KEY"):
        needs = [n for n in ("WECHAT_OA_APPID", "WECHAT_MCH_CERT_PATH", "WECHAT_MCH_KEY_PATH") if not values.get(n)]
        if needs:
            problems.append(
                f"cash red packets (WECHAT_API_V2_KEY is set) also need {' and '.join(needs)} "
                "(the official account and the merchant client certificate of v2 sendredpack)"
            )
    if values.get("WECHAT_CARD_ID"):
        needs = [n for n in ("WECHAT_OA_APPID", "WECHAT_OA_SECRET", "WECHAT_CARD_FACE_VALUE_FEN") if not values.get(n)]
        if needs:
            problems.append(
                f"card coupons (WECHAT_CARD_ID is set) also need {' and '.join(needs)} "
                "(the card package belongs to the official account; the card's value is fixed at WeChat)"
            )
    return problems


def _payout_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    hours = values.get("TRANSFER_CONFIRM_HOURS", MAX_TRANSFER_CONFIRM_HOURS)
    if not 0 < hours <= MAX_TRANSFER_CONFIRM_HOURS:
        problems.append(
            f"TRANSFER_CONFIRM_HOURS must be 1-{MAX_TRANSFER_CONFIRM_HOURS} (WeChat closes unconfirmed bills "
            "after 24 h)"
        )
    reminder = values.get("NOTICE_TRANSFER_REMINDER_HOURS", 3)
    if 0 < hours <= MAX_TRANSFER_CONFIRM_HOURS and not 0 < reminder < hours:
        problems.append(
            f"NOTICE_TRANSFER_REMINDER_HOURS must be 1-{hours - 1}: a reminder before the transfer closes "
            f"(TRANSFER_CONFIRM_HOURS={hours} after it was offered), not before it was offered"
        )
    for name in ("PAYOUT_MIN_FEN", "WITHDRAWAL_MIN_FEN"):
        if values.get(name, TRANSFER_MIN_FEN) < TRANSFER_MIN_FEN:
            problems.append(f"{name} must be at least {TRANSFER_MIN_FEN} fen (WeChat's smallest transfer)")
    for name in ("PAYOUT_LEASE_SECONDS", "PAYOUT_CONFIRM_RECHECK_SECONDS"):
        if values.get(name, 1) <= 0:
            problems.append(f"{name} must be positive")
    if 0 < values.get("PAYOUT_LEASE_SECONDS", MIN_PAYOUT_LEASE_S) < MIN_PAYOUT_LEASE_S:
        problems.append(
            f"PAYOUT_LEASE_SECONDS must be at least {MIN_PAYOUT_LEASE_S}: a payout's calls start within half its lease "
            "and take up to 13 s each (connect and read), so a shorter lease can end while a call is at WeChat and "
            "let another pass take the payout over"
        )
    for stock in values.get("WECHAT_COUPON_STOCKS") or []:
        value = stock.get("denomination_fen") if isinstance(stock, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or not stock.get("stock_id"):
            problems.append(
                f"WECHAT_COUPON_STOCKS: {stock!r} needs a stock_id and a positive denomination_fen "
                "(coupon_value is not open at WeChat: fixed-denomination stocks only)"
            )
    unknown = set(values.get("PAYOUT_RATE_LIMITS") or {}) - set(PAYOUT_RAILS)
    if unknown:  # a typo left the rail it meant at its default rate
        problems.append(f"PAYOUT_RATE_LIMITS: unknown rail {', '.join(sorted(unknown))} ({', '.join(PAYOUT_RAILS)})")
    for name, most in REDPACK_TEXT_LIMITS.items():
        text = values.get(name)
        if not isinstance(text, str) or not text.strip() or len(text) > most:
            problems.append(f"{name} must be 1-{most} characters (WeChat's limit; people read it on the packet)")
    prefix = values.get("WECHAT_NUMBER_PREFIX") or ""
    if not isinstance(prefix, str) or not NUMBER_PREFIX.match(prefix):
        problems.append(f"WECHAT_NUMBER_PREFIX must be at most {NUMBER_PREFIX_MAX} letters or digits")
    return problems


PUSH_TOKEN = re.compile(r"^[A-Za-z0-9]{3,32}$")


def _encoding_aes_key_problem(name: str, key: object) -> str | None:
    """An EncodingAESKey is 43 characters of base64 (no padding) decoding to 32 bytes."""
    if not isinstance(key, str) or len(key) != 43:
        return f"{name} must be 43 characters (the EncodingAESKey shown in the WeChat admin)"
    try:
        raw = base64.b64decode(key + "=", validate=True)
    except ValueError:
        return f"{name} must be base64 (letters, digits, + and /)"
    return None if len(raw) == 32 else f"{name} must decode to 32 bytes"


def _push_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    for side in ("OA", "MP"):
        token = values.get(f"WECHAT_{side}_PUSH_TOKEN")
        key, previous = (
            values.get(f"WECHAT_{side}_ENCODING_AES_KEY"),
            values.get(f"WECHAT_{side}_ENCODING_AES_KEY_PREVIOUS"),
        )
        if token and not PUSH_TOKEN.match(str(token)):
            problems.append(f"WECHAT_{side}_PUSH_TOKEN must be 3-32 letters or digits (WeChat's rule)")
        if (key or previous) and not token:
            problems.append(
                f"WECHAT_{side}_ENCODING_AES_KEY needs WECHAT_{side}_PUSH_TOKEN (pushes are signed with it)"
            )
        for name, value in (
            (f"WECHAT_{side}_ENCODING_AES_KEY", key),
            (f"WECHAT_{side}_ENCODING_AES_KEY_PREVIOUS", previous),
        ):
            problem = _encoding_aes_key_problem(name, value) if value else None
            if problem:
                problems.append(problem)
        if previous and not key:
            problems.append(f"WECHAT_{side}_ENCODING_AES_KEY_PREVIOUS needs the current WECHAT_{side}_ENCODING_AES_KEY")
        if previous and previous == key:
            problems.append(f"WECHAT_{side}_ENCODING_AES_KEY_PREVIOUS is the current key: nothing was rotated")
        if token and not key and values.get("WECHAT_MODE") == "live":
            # plaintext mode signs only the token, timestamp and nonce, not the body: one leaked push URL
            # would let anyone post card events (money) and consents. Safe mode signs the ciphertext.
            problems.append(
                f"WECHAT_{side}_PUSH_TOKEN is set without WECHAT_{side}_ENCODING_AES_KEY: in live mode message "
                "push must use safe mode (安全模式), whose signature covers the message"
            )
    return problems


def _wecom_bot_problems(values: dict[str, Any]) -> list[str]:
    token, key = values.get("WECOM_BOT_TOKEN"), values.get("WECOM_BOT_ENCODING_AES_KEY")
    previous = values.get("WECOM_BOT_ENCODING_AES_KEY_PREVIOUS")
    problems = []
    if token and not PUSH_TOKEN.match(str(token)):
        problems.append("WECOM_BOT_TOKEN must be 3-32 letters or digits")
    if bool(token) != bool(key):
        problems.append("WECOM_BOT_TOKEN and WECOM_BOT_ENCODING_AES_KEY go together (the robot always encrypts)")
    for name, value in (("WECOM_BOT_ENCODING_AES_KEY", key), ("WECOM_BOT_ENCODING_AES_KEY_PREVIOUS", previous)):
        problem = _encoding_aes_key_problem(name, value) if value else None
        if problem:
            problems.append(problem)
    if previous and (not key or previous == key):
        problems.append("WECOM_BOT_ENCODING_AES_KEY_PREVIOUS needs a different current WECOM_BOT_ENCODING_AES_KEY")
    if values.get("WECOM_WEBHOOK_PER_MINUTE", 20) > 20:
        problems.append("WECOM_WEBHOOK_PER_MINUTE must be at most 20 (WeCom's limit per robot)")
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
