"""Application factory: ``create_app(overrides=None)``; ``flask --app app …`` finds it.

Importing this module does nothing: no app, no connections, no scheduler.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from flask_migrate import Migrate
from sqlalchemy import event, make_url
from sqlalchemy.exc import DisconnectionError
from werkzeug.middleware.proxy_fix import ProxyFix

from config import DEV_SECRET, ConfigError, dev_data_key, load_config, masked, previous_data_keys
from config.command_line import readable_on_command_line
from models import db, transaction_open
from models.base import DataKeys
from models.sql import READS_ONLY
from notices.quiet import QuietHours
from notices.watch import WatchSettings
from notices.watch import install as watch_payouts

if TYPE_CHECKING:
    from wechat.setup import WeChat

MIGRATIONS_DIR = str(Path(__file__).parent / "migrations")
log = logging.getLogger("app")


@readable_on_command_line  # `flask …` prints a refused configuration's list, not a traceback
def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    settings = load_config(overrides)
    app = Flask(__name__)
    app.session_interface = ConsoleOnlySessions()
    app.config.update(settings)
    _apply_dev_defaults(app)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=settings["DATABASE_URL"],
        SQLALCHEMY_ENGINE_OPTIONS=_engine_options(settings["DATABASE_URL"], settings["DATABASE_LOCK_TIMEOUT_S"]),
        JSON_SORT_KEYS=False,
    )
    if not app.config.get("TESTING"):
        from web.logs import configure_logging

        configure_logging(app.config["LOG_LEVEL"])
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    # writes use DATA_ENCRYPTION_KEY; reads try it, then each DATA_ENCRYPTION_KEY_PREVIOUS (a rotation, §18)
    keys = DataKeys.of(app.config["DATA_ENCRYPTION_KEY"], previous_data_keys(app.config))
    app.extensions["data_keys"] = keys
    app.extensions["fernet"] = keys.reading()
    db.init_app(app)
    Migrate(app, db, directory=MIGRATIONS_DIR, compare_type=True, render_as_batch=True)
    with app.app_context():
        _configure_sqlite(db.engine, settings["DATABASE_LOCK_TIMEOUT_S"])
        _ping_idle_connections(db.engine)
        _convert_long_statements_once(db.engine)
        # a payout's move that a person hears of writes its notice in the same transaction (§14)
        reminder = settings["NOTICE_TRANSFER_REMINDER_HOURS"]
        quiet = QuietHours.of(settings)  # a transfer's reminder goes before them, not lost in them
        watch_payouts(db.engine, WatchSettings(settings["TRANSFER_CONFIRM_HOURS"], reminder, quiet))
        database_url = db.engine.url.render_as_string(hide_password=False)  # SQLite: resolved in instance/
    if app.config["TRUSTED_PROXY_COUNT"]:
        n = app.config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(_forwarded_addresses_only(app.wsgi_app), x_for=n, x_proto=n, x_host=n)
    app.extensions["notice_templates"] = _notice_templates(app)
    app.extensions["challenge_settings"] = _challenge_settings(app.config)
    wechat = _build_wechat(app, database_url)
    app.extensions["wechat"] = wechat
    _install_web(app, wechat)
    if not app.config.get("REDIS_URL") and not app.config.get("TESTING"):
        log.warning(
            "REDIS_URL unset: the WeChat access token and payout rate limits are per process; "
            "run a single process or set REDIS_URL"
        )
    log.info("app configured", extra={"config": masked(settings)})
    return app


def _forwarded_addresses_only(wsgi_app):
    """Behind ProxyFix: the client address it read from X-Forwarded-For, when that is an IP address (less the port
    a proxy may write with it: ``203.0.113.7:51234``, ``[2001:db8::1]:443``); else the socket's (the proxy's). The
    hop read is the client's own text when a proxy passes the header on without appending or TRUSTED_PROXY_COUNT is
    one too many: a 100-character "address" failed the order's insert on PostgreSQL (500), and a host name or any
    word would be an address of its own to every per-address limit. A port is dropped (not kept as part of the
    address: each of a client's connections would count apart); refused before, every client of such a proxy was
    the proxy's one address to every per-address limit."""

    def call(environ, start_response):
        forwarded = environ.get("REMOTE_ADDR")
        socket_address = environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR")
        if forwarded != socket_address:
            environ["REMOTE_ADDR"] = _forwarded_address(forwarded or "") or socket_address
        return wsgi_app(environ, start_response)

    return call


_WITH_PORT = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+))(?::(?P<port>[0-9]{1,5}))?")


def _forwarded_address(hop: str) -> str | None:
    """The IP address a forwarded hop names (``ipaddress``), as written, or less its port (``a.b.c.d:port``,
    ``[v6]:port``, ``[v6]``: the address as ``ipaddress`` writes it); ``None`` for anything else: a name, a
    port out of range, an IPv6 zone (``%eth0``: meaningless from afar, and of any length)."""
    try:
        address = ipaddress.ip_address(hop)
    except ValueError:
        address = None
    if address is not None:
        return hop if getattr(address, "scope_id", None) is None else None
    found = _WITH_PORT.fullmatch(hop)
    if found is None or (found["port"] is not None and int(found["port"]) > 65535):
        return None
    if found["v4"] is not None and found["port"] is None:
        return None  # (a bare IPv4 address that ``ipaddress`` refused: not one)
    try:
        address = ipaddress.ip_address(found["v6"] or found["v4"])
    except ValueError:
        return None
    if address.version != (6 if found["v6"] is not None else 4):
        return None  # ``[203.0.113.7]``: brackets are for IPv6 only
    return str(address)


def _challenge_settings(cfg) -> Any:
    """The challenges' limits as a value (``challenges`` never reads the configuration)."""
    from challenges import ChallengeSettings

    return ChallengeSettings(
        max_participants=cfg["CHALLENGE_MAX_PARTICIPANTS"],
        max_days=cfg["CHALLENGE_MAX_DAYS"],
        max_lead_days=cfg["CHALLENGE_MAX_LEAD_DAYS"],
        steps_daily_cap=cfg["CHALLENGE_STEPS_DAILY_CAP"],
        steps_repeat_days=cfg["CHALLENGE_STEPS_REPEAT_DAYS"],
        reading_interval_minutes=cfg["CHALLENGE_READING_INTERVAL_MINUTES"],
        reading_daily_cap=cfg["CHALLENGE_READING_DAILY_CAP"],
        report_grace_hours=cfg["CHALLENGE_REPORT_GRACE_HOURS"],
        loser_rebate_bps=cfg["CHALLENGE_LOSER_REBATE_BPS"],
        packet_valid_days=cfg["CHALLENGE_PACKET_VALID_DAYS"],
        quiz_seconds=cfg["CHALLENGE_QUIZ_SECONDS"],
    )


CONSOLE_PREFIX = "/console"


class ConsoleOnlySessions(SecureCookieSessionInterface):
    """A Flask cookie session for the operator console (``/console/…``) only. Everyone else carries a
    bearer token (users, operators) or a signature (WeChat), and OAuth's state is a server-side row
    (web/login.py): for them ``flask.session`` is a read-only empty ``NullSession`` (writing to it
    raises), and no signing serializer is built per request. The console's cookie holds only its
    session id and CSRF secret (the session is a row: web/console/auth.py)."""

    def open_session(self, app, request):
        if not request.path.startswith(CONSOLE_PREFIX):
            return None  # Flask then uses make_null_session
        return super().open_session(app, request)

    def save_session(self, app, session, response):
        if self.is_null_session(session):
            return None
        return super().save_session(app, session, response)


def _apply_dev_defaults(app: Flask) -> None:
    """Simulator mode runs with no secrets set; live mode never gets here without them."""
    if app.config["WECHAT_MODE"] != "simulator":
        return
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = DEV_SECRET
    if not app.config.get("DATA_ENCRYPTION_KEY"):
        app.config["DATA_ENCRYPTION_KEY"] = dev_data_key(app.config["SECRET_KEY"])
    if app.config.get("SECRET_KEY") == DEV_SECRET and not app.config.get("TESTING"):
        log.warning("simulator mode with the built-in development SECRET_KEY")


def _build_wechat(app: Flask, database_url: str) -> WeChat:
    """The WeChat clients; in simulator mode the simulator first (imported only then)."""
    from wechat.setup import WeChatSettingError, build_wechat

    local = None
    if app.config["WECHAT_MODE"] == "simulator":
        from wechat import sim

        local = sim.install(
            app,
            database_url=database_url,
            redis_url=app.config.get("REDIS_URL"),
            busy_timeout_s=app.config["DATABASE_LOCK_TIMEOUT_S"],
        )
    try:
        return build_wechat(app.config, local=local, transaction_open=transaction_open)
    except WeChatSettingError as exc:
        raise ConfigError(f"invalid configuration:\n  - {exc.setting}: {exc.message}") from None


def _notice_templates(app: Flask):
    """NOTICE_TEMPLATES checked at start-up (WeChat's field rules, no marketing words)."""
    from notices.templates import TemplateError, load_templates

    try:
        return load_templates(app.config.get("NOTICE_TEMPLATES"), simulator=app.config["WECHAT_MODE"] == "simulator")
    except TemplateError as exc:
        raise ConfigError(f"invalid configuration:\n  - {exc}") from None


# A database error never carries the row's values (openids, session keys, names) into a log line or an alert:
# SQLAlchemy's ``[parameters: …]`` says they were hidden (``web.logs`` masks them too, and PostgreSQL's own detail).
HIDE_PARAMETERS = True


def _engine_options(url: str, lock_timeout_s: int) -> dict:
    # A request waits for a free pooled connection no longer than for a lock (then 503 + Retry-After, as a lock
    # held too long): every connection can be held by requests queued behind one long writer (SQLite).
    if url.startswith("sqlite"):
        # pysqlite's own transaction handling is switched off in _configure_sqlite; the busy
        # timeout is what makes a contended BEGIN IMMEDIATE wait instead of failing at once.
        options = {"connect_args": {"timeout": lock_timeout_s}, "hide_parameters": HIDE_PARAMETERS}
        if make_url(url).database not in (None, "", ":memory:"):  # a file's QueuePool (memory: one connection)
            options["pool_timeout"] = lock_timeout_s
        return options
    # No pool_pre_ping: a ping on every checkout is a round trip on every request (one of a claim's
    # five); _ping_idle_connections pings only a connection that sat idle (issue 11).
    options: dict = {
        "pool_size": 10,
        "max_overflow": 20,
        "pool_timeout": lock_timeout_s,
        "connect_args": {},
        "hide_parameters": HIDE_PARAMETERS,
    }
    parsed = make_url(url)
    if url.startswith("postgresql") and lock_timeout_s:
        # A row lock held too long (a stuck transaction) fails the waiter with lock_not_available,
        # answered 503 + Retry-After, instead of piling up every worker behind it. Added to the URL's own
        # ``options`` (a search_path, say), which connect_args would otherwise replace.
        given = parsed.query.get("options")
        given = " ".join(given) if isinstance(given, tuple) else given
        lock = f"-c lock_timeout={lock_timeout_s * 1000}"
        options["connect_args"]["options"] = f"{given} {lock}" if given else lock
    if parsed.get_driver_name() == "psycopg":
        from models.described_lazily import DescribedLazily  # noqa: PLC0415 - psycopg's, only with psycopg

        # a statement's columns described when asked for, not after every statement (a tenth of a payment)
        options["connect_args"]["cursor_factory"] = DescribedLazily
    return options


def _configure_sqlite(engine, lock_timeout_s: int) -> None:
    """Serialise every SQLite transaction, as SQLAlchemy documents for pysqlite.

    SQLite ignores ``SELECT … FOR UPDATE`` and pysqlite opens no transaction until the first
    write, so a read-check-write in two requests would interleave. Taking over transaction
    control and opening every transaction with ``BEGIN IMMEDIATE`` takes SQLite's write lock
    at the start: transactions run one at a time, and a contended one waits up to the busy
    timeout (then the request answers 503 + Retry-After, see ``web.errors``).
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.isolation_level = None  # no implicit BEGIN from pysqlite; we issue our own
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={lock_timeout_s * 1000}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):
        # A connection of ``models.sql.read_apart`` only reads: a deferred BEGIN, a WAL reader that neither waits for
        # the writer nor makes it wait.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READS_ONLY) else "BEGIN IMMEDIATE")


PSYCOPG_CACHED_STATEMENT_LENGTH = 16384
PSYCOPG_CACHED_STATEMENT_PARAMS = 200


def _convert_long_statements_once(engine) -> None:
    """Let psycopg keep its conversion of our longer statements (issue 11).

    psycopg turns each statement's ``%(name)s`` placeholders into ``$1 …`` by parsing its text, and keeps the
    result (an LRU of 128) only for a statement of at most 4,096 characters and 50 parameters. The hot paths'
    statements are longer: a claim's one statement (some 7,000 characters, 60 parameters) and a payment's reads
    and writes were parsed again on every execution, a fifth of a claim's own work. Our statements are few shapes
    built once per process (an INSERT's row count varies by chunk), and psycopg's LRU of 128 bounds what is kept.
    psycopg has no setting for it: these are module constants its ``convert`` reads on each call (psycopg 3.1 to
    3.3); when they are not there it logs a warning and changes nothing (tests/test_claim_at_once.py fails then)."""
    if engine.dialect.driver != "psycopg":
        return
    from psycopg import _queries  # noqa: PLC0415 - only with psycopg

    for name, value in (
        ("MAX_CACHED_STATEMENT_LENGTH", PSYCOPG_CACHED_STATEMENT_LENGTH),
        ("MAX_CACHED_STATEMENT_PARAMS", PSYCOPG_CACHED_STATEMENT_PARAMS),
    ):
        if isinstance(getattr(_queries, name, None), int):
            setattr(_queries, name, max(getattr(_queries, name), value))
        else:
            logging.getLogger(__name__).warning(
                "psycopg has no %s: long statements are parsed on every execution (slower, still correct)", name
            )


IDLE_PING_S = 10.0


def _ping_idle_connections(engine) -> None:
    """Ping a pooled connection before use only when it sat idle more than ``IDLE_PING_S``.

    A connection in steady use is known to be alive: it answered a moment ago. One that sat idle
    may have been closed meanwhile (a database restart, a failover, an idle timeout in a proxy):
    it is pinged, and a dead one is replaced before the request sees it (the pool retries the
    checkout with a fresh connection). A connection that dies between two busy moments fails one
    statement; SQLAlchemy then recognises the disconnect and empties the pool, and the request
    answers 503 (a WeChat callback is retried by WeChat).
    """
    if engine.dialect.name == "sqlite":
        return

    @event.listens_for(engine, "checkin")
    def on_checkin(_dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def on_checkout(dbapi_conn, record, _proxy):
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError("an idle pooled connection no longer answers") from exc
        if not alive:
            raise DisconnectionError("an idle pooled connection no longer answers")


def _install_web(app: Flask, wechat) -> None:
    from web import register_blueprints
    from web.cli import register_cli
    from web.errors import register_error_handlers
    from web.guards import install_guards
    from web.ops import install_request_metrics

    install_guards(app)
    register_error_handlers(app)
    install_request_metrics(app)
    register_blueprints(app)
    app.extensions["app_factory"] = create_app  # `flask risk simulate` builds a throw-away app of its own
    register_cli(app)
    from jobs.scheduler import install_jobs

    install_jobs(app, wechat)


__all__ = ["DEV_SECRET", "ConfigError", "create_app"]
