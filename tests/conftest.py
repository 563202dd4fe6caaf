"""Shared fixtures: a fresh app and database per test, factories, and the ledger check.

SQLite (default): each test gets its own database file, a copy of one built once with ``create_all``.
PostgreSQL (``TEST_DATABASE_URL`` set and ``TEST_DB_BACKEND`` not ``sqlite``):
the schema is built once by running the Alembic migrations, so database-level
guards are under test too, and every test starts from truncated tables.
"""

from __future__ import annotations

import os
import shutil
from itertools import count
from pathlib import Path

import pytest
from flask import Flask, current_app, has_app_context
from flask.testing import FlaskClient
from sqlalchemy import create_engine, inspect, text

from app import create_app
from models import Merchant, Operator, Product, User, UserIdentity, db


def _rule_builders_compiled_once() -> None:
    """Every test builds its own app, and werkzeug compiles each of the app's ~235 URL rules into Python code for
    ``url_for`` each time: 80 % of ``create_app``'s cost, a quarter of the suite's CPU. The code it makes depends
    only on the rule's text, its parsed parts (``_trace``), its defaults and their converters, and reaches the rule
    through its ``self`` argument: so it is made once per test process and bound to each rule as werkzeug does."""
    from werkzeug.routing.rules import Rule

    made: dict = {}
    compile_builder = Rule._compile_builder

    def once(self, append_unknown: bool = True):
        defaults = self.defaults or {}
        key = (
            self.rule,
            tuple(self._trace),
            append_unknown,
            tuple(sorted((str(k), repr(v)) for k, v in defaults.items())),
            tuple(sorted((k, _converter_key(c)) for k, c in self._converters.items() if k in defaults)),
        )
        if key not in made:
            made[key] = compile_builder(self, append_unknown)
        return made[key]

    Rule._compile_builder = once


def _converter_key(converter) -> str:
    """A URL converter as its ``to_url`` sees it (its settings; not the map it belongs to)."""
    return type(converter).__qualname__ + repr(sorted((a, repr(v)) for a, v in vars(converter).items() if a != "map"))


_rule_builders_compiled_once()

PG_URL = os.environ.get("TEST_DATABASE_URL") if os.environ.get("TEST_DB_BACKEND") != "sqlite" else None
TEST_SETTINGS = {
    "TESTING": True,
    "WECHAT_MODE": "simulator",
    "SECRET_KEY": "test-secret-key",
    "DATA_ENCRYPTION_KEY": "p2v0L5dTgd0l2Pz7o7m4k0o3QyYw5cYpXq3kJ0x8Q1A=",
    "LOG_LEVEL": "WARNING",
    # Long enough for every race test's threads to queue behind each other; lower it to find a
    # test that deadlocks against its own session quickly.
    "DATABASE_LOCK_TIMEOUT_S": int(os.environ.get("TEST_LOCK_TIMEOUT_S", "20")),
}
# The platform-wide claim limits are off in tests that do not test them (every test client is 127.0.0.1);
# tests/test_platform_limits.py switches them on.
NO_PLATFORM_LIMITS = {
    "CLAIM_IP_PER_DAY": 0,
    "CLAIM_DEVICE_PER_DAY": 0,
    "CLAIM_PERSON_PER_DAY": 0,
    "CLAIM_IP_INTERVAL_SECONDS": 0,
    "CLAIM_DEVICE_INTERVAL_SECONDS": 0,
    "CLAIM_PERSON_INTERVAL_SECONDS": 0,
}
TEST_SETTINGS.update(NO_PLATFORM_LIMITS)


def on_postgres() -> bool:
    return PG_URL is not None


def release_test_session(*, keep_writes: bool = True) -> None:
    """End the test's own transaction so requests, other apps and threads can take the database.

    On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (app.py), so a session left in
    a transaction holds the write lock every other connection waits for. In production each
    request and job has its own session, removed at the end. In a test, a request made while
    the test's app context is pushed shares the test's session and leaves it open; a second app
    or a thread has its own connection and would wait. Before a request the test's pending
    writes are committed (the test meant them); after it, what the request left open is rolled
    back, as its teardown would have done.
    """
    if has_app_context() and db.session.registry.has() and db.session().in_transaction():
        if keep_writes:
            db.session.commit()
        else:
            db.session.rollback()


class ReleasingClient(FlaskClient):
    def open(self, *args, **kwargs):
        release_test_session()
        try:
            return super().open(*args, **kwargs)
        finally:
            release_test_session(keep_writes=False)


Flask.test_client_class = ReleasingClient


@pytest.fixture(scope="session")
def pg_schema():
    """Drop everything and run the migrations once for the session."""
    if not on_postgres():
        yield None
        return
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    app = create_app({**TEST_SETTINGS, "DATABASE_URL": PG_URL})
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()
    yield PG_URL


_EMPTY_CHECK: dict[str, str] = {}


def _truncate_all() -> None:
    """Empty every table a test wrote to and rewind the sequences it used.

    TRUNCATE makes new files for every table it reaches, and a CASCADE from ``users`` reaches most
    of them (~80–180 ms a test). One query finds the tables with rows; as a superuser (the test
    databases' ``postgres``) they are emptied with DELETE under ``session_replication_role =
    replica`` (no foreign-key or ledger triggers fire: everything goes), otherwise truncated. The
    sequences that moved (a rolled-back insert moves one too) restart: ids begin at 1 again.
    """
    with db.engine.begin() as conn:
        if "sql" not in _EMPTY_CHECK:
            # Only tables the migrations created: a model whose migration is not written
            # yet fails its own tests, not everyone's set-up.
            existing = set(inspect(conn).get_table_names())
            names = [t.name for t in db.metadata.sorted_tables if t.name in existing]
            _EMPTY_CHECK["sql"] = " UNION ALL ".join(
                f"SELECT '{name}' WHERE EXISTS (SELECT 1 FROM \"{name}\")"  # noqa: S608 - our own table names
                for name in names
            )
            _EMPTY_CHECK["superuser"] = conn.execute(text("SELECT current_setting('is_superuser')")).scalar()
        written = conn.execute(text(_EMPTY_CHECK["sql"])).scalars().all()
        if written and _EMPTY_CHECK["superuser"] == "on":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for name in written:
                conn.execute(text(f'DELETE FROM "{name}"'))  # noqa: S608 - our own table names
        elif written:
            tables = ", ".join(f'"{name}"' for name in written)
            conn.execute(text(f"TRUNCATE {tables} CASCADE"))
        moved = conn.execute(
            text(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename) FROM pg_sequences "
                "WHERE schemaname = current_schema() AND last_value IS NOT NULL"
            )
        ).scalars()
        for sequence in moved.all():
            conn.execute(text(f"ALTER SEQUENCE {sequence} RESTART"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path | None:
    """An empty SQLite database built once (``create_all`` and the migrations' stamp); each test
    starts from a copy of it instead of building its own (~50 ms a test)."""
    if on_postgres():
        return None
    path = tmp_path_factory.mktemp("template") / "template.db"
    app = create_app({**TEST_SETTINGS, "DATABASE_URL": f"sqlite:///{path}"})
    with app.app_context():
        db.create_all()
        from flask_migrate import stamp

        stamp()
        db.session.remove()
        db.engine.dispose()
    return path


@pytest.fixture
def app_settings(tmp_path, pg_schema) -> dict:
    url = pg_schema or f"sqlite:///{tmp_path / 'test.db'}"
    return {**TEST_SETTINGS, "DATABASE_URL": url}


@pytest.fixture
def app(app_settings, sqlite_template):
    database_file = _sqlite_file(app_settings["DATABASE_URL"])
    fresh_copy = database_file is not None and sqlite_template is not None and not database_file.exists()
    if fresh_copy:
        shutil.copyfile(sqlite_template, database_file)
    app = create_app(app_settings)
    with app.app_context():
        _reset_simulator(app)
        if on_postgres():
            _truncate_all()
        elif not fresh_copy:  # a test's own database (in memory, or one it built itself)
            db.create_all()
            from flask_migrate import stamp

            stamp()
        yield app
        db.session.remove()
        _assert_ledger_balanced()
        db.engine.dispose()


def _sqlite_file(url: str) -> Path | None:
    prefix = "sqlite:///"
    path = Path(url[len(prefix) :]) if url.startswith(prefix) else None
    return path if path is not None and path.is_absolute() else None  # relative: in instance/


def _reset_simulator(app: Flask) -> None:
    """The simulated WeChat forgets the previous test too (its records outlive an app on PostgreSQL)."""
    state = app.extensions["wechat"].simulator
    if state is not None:
        from wechat.sim import reset

        reset(state)


def _assert_ledger_balanced() -> None:
    """Every test that touches money leaves a ledger that passes the check."""
    from ledger import check_ledger

    report = check_ledger(current_app.config["POINT_VALUE_FEN"])
    db.session.remove()
    assert report.ok, "ledger check failed after the test:\n" + "\n".join(report.violations)


@pytest.fixture
def client(app):
    return app.test_client()


_seq = count(1)


@pytest.fixture
def make_merchant(app):
    def make(name: str | None = None) -> Merchant:
        merchant = Merchant(name=name or f"merchant-{next(_seq)}")
        db.session.add(merchant)
        db.session.commit()
        return merchant

    return make


@pytest.fixture
def make_product(app, make_merchant):
    def make(
        merchant: Merchant | None = None, price_fen: int = 10_000, category: str = "general", name: str | None = None
    ) -> Product:
        merchant = merchant or make_merchant()
        product = Product(
            merchant_id=merchant.id, name=name or f"product-{next(_seq)}", category=category, price_fen=price_fen
        )
        db.session.add(product)
        db.session.commit()
        return product

    return make


@pytest.fixture
def make_user(app):
    def make(
        unionid: str | None = None, inviter: User | None = None, appid: str = "wx-test-app", region: str | None = None
    ) -> User:
        n = next(_seq)
        user = User(unionid=unionid, inviter_id=inviter.id if inviter else None, region=region)
        db.session.add(user)
        db.session.flush()
        db.session.add(UserIdentity(user_id=user.id, appid=appid, openid=f"openid-{n}"))
        db.session.commit()
        return user

    return make


@pytest.fixture
def user_headers(app):
    from web.auth import issue_user_token

    def headers(user: User, **extra) -> dict:
        return {"Authorization": f"Bearer {issue_user_token(user)}", **extra}

    return headers


@pytest.fixture
def make_operator(app, make_merchant):
    """Returns (operator, headers) for a role; merchant staff get a merchant of their own."""
    from web.auth import issue_operator_token

    def make(role: str = "admin", merchant: Merchant | None = None) -> tuple[Operator, dict]:
        if role == "merchant_staff" and merchant is None:
            merchant = make_merchant()
        operator = Operator(
            username=f"op-{next(_seq)}",
            display_name="Test operator",
            role=role,
            merchant_id=merchant.id if role == "merchant_staff" else None,
        )
        db.session.add(operator)
        db.session.flush()
        token = issue_operator_token(operator)
        db.session.commit()
        return operator, {"Authorization": f"Bearer {token}"}

    return make


DEPOSIT_FEN = 1_000_000_00  # what make_campaign tops a merchant's marketing deposit up with


def fund_deposit(merchant_id: int, amount_fen: int = DEPOSIT_FEN) -> None:
    """The merchant pays into its marketing deposit (flushes; the caller commits)."""
    from rebate.deposits import top_up

    top_up(merchant_id, amount_fen, f"test-{next(_seq)}", "test top-up")


@pytest.fixture
def make_campaign(app):
    """An active campaign with version 1 of ``rules``; platform-funded unless told otherwise.

    A merchant-funded campaign's deposit is topped up with ``fund_deposit_fen`` (the deposit limits what it
    may pay); ``fund_deposit_fen=0`` leaves it as it is."""
    from models import Campaign, CampaignRules

    def make(rules: dict, fund_deposit_fen: int = DEPOSIT_FEN, **fields) -> Campaign:
        fields.setdefault("name", f"campaign-{next(_seq)}")
        fields.setdefault("issuer_type", "platform")
        fields.setdefault("funder_type", "platform_fund")
        fields.setdefault("status", "active")
        campaign = Campaign(**fields)
        db.session.add(campaign)
        db.session.flush()
        db.session.add(CampaignRules(campaign_id=campaign.id, version=1, rules=rules))
        if campaign.funder_type == "merchant_deposit" and fund_deposit_fen:
            fund_deposit(campaign.funder_merchant_id, fund_deposit_fen)
        db.session.commit()
        return campaign

    return make


@pytest.fixture
def pay(app):
    """Apply a WeChat payment of exactly the payable amount and commit, as the callback would."""
    from models import utcnow
    from tests.payment_helpers import pay_as_wechat

    def do(order, at=None, amount_fen=None, notification_id=None):
        outcome = pay_as_wechat(
            order.out_trade_no,
            f"tx-{order.out_trade_no}",
            amount_fen or order.payable_fen,
            at or utcnow(),
            notification_id=notification_id,
        )
        db.session.commit()
        return outcome

    return do


@pytest.fixture
def education(make_user, make_merchant, make_product, make_campaign):
    """The reverse story (docs/architecture.md §1) set up: a teacher's 50-yuan enrolment packet at a school; the
    teacher earns 10 % of the tuition paid, held until 10 lessons are done and the test is passed, released in
    two parts.
    Returns (school, course, teacher, campaign, student, packet)."""
    from models import utcnow
    from rebate import issue_packet

    school = make_merchant("school")
    course = make_product(school, price_fen=2_000_00, category="course")
    teacher = make_user()
    condition = {"milestones": ["lessons_10", "test_passed"], "window_days": 180, "release": "parts"}
    campaign = make_campaign(
        {"roles": [{"role": "issuer", "rate_bps": 1000, "form": "balance", "cap_fen": 300_00, "condition": condition}]},
        issuer_type="user",
        issuer_user_id=teacher.id,
        funder_type="merchant_deposit",
        funder_merchant_id=school.id,
        budget_limit_fen=10_000_00,
        packet_amount_fen=50_00,
        packet_merchant_id=school.id,
    )
    student = make_user()
    packet = issue_packet(campaign, student, source="enrolment", source_ref="s1", now=utcnow())
    db.session.commit()
    return school, course, teacher, campaign, student, packet
