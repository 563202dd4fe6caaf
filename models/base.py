"""The shared declarative base, column types and the unit of work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app, has_app_context
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import DateTime, MetaData, Text
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

P = TypeVar("P")
R = TypeVar("R")
T = TypeVar("T")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


db = SQLAlchemy(model_class=Base)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on both PostgreSQL and SQLite.

    SQLite hands back naive datetimes; they are stored as UTC and re-tagged.
    Naive datetimes are refused on the way in: they are always a bug.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime refused: use UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class DataKeys:
    """The keys of data at rest: ``current`` (``DATA_ENCRYPTION_KEY``) encrypts every write; ``previous``
    (``DATA_ENCRYPTION_KEY_PREVIOUS``) only open what was written before a rotation (docs/architecture.md §18)."""

    current: Fernet
    previous: tuple[Fernet, ...] = ()

    @classmethod
    def of(cls, current: str, previous: tuple[str, ...] = ()) -> DataKeys:
        return cls(Fernet(current), tuple(Fernet(k) for k in previous))

    def reading(self) -> MultiFernet:
        """Encrypts with the current key; decrypts with the current key, then each previous one."""
        return MultiFernet([self.current, *self.previous])


def fernet() -> MultiFernet:
    """The app's data key for ``encrypt`` (always the current one) and ``decrypt`` (any configured one)."""
    return current_app.extensions["fernet"]


def data_keys() -> DataKeys:
    return current_app.extensions["data_keys"]


class EncryptedText(TypeDecorator):
    """Text encrypted at rest with the app's Fernet key (``DATA_ENCRYPTION_KEY``; read with the previous ones
    too while a key is rotated). A value no configured key opens fails the read (``ValueError``), never read as
    empty: ``flask keys reencrypt`` lists such rows."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect):
        if value is None:
            return None
        return fernet().encrypt(value.encode()).decode()

    def process_result_value(self, value: str | None, dialect):
        if value is None:
            return None
        try:
            return fernet().decrypt(value.encode()).decode()
        except InvalidToken:
            raise ValueError("encrypted column cannot be read with the configured key") from None


def transaction_open() -> bool:
    """Whether this context's session holds a database transaction (outside an app context: no)."""
    if not has_app_context():
        return False
    return db.session().in_transaction()


def call_between_commits(prepare: Callable[[], P], call: Callable[[P], R], record: Callable[[P, R], T]) -> T:
    """Prepare and commit, call WeChat with no transaction open, then record and commit.

    The one shape of every path that talks to WeChat: ``prepare`` fixes what will be sent
    (numbers, bodies, leases) and is committed before the call, so a crash after it finds
    the request again; ``call`` runs with no transaction (the WeChat session refuses one)
    and must not touch the database (return plain values from ``prepare``, not rows: a lazy
    load would open a transaction again); ``record`` applies the answer. An error in
    ``prepare`` or ``record`` rolls back their own transaction only.

    The call was made once ``record`` runs (a refund WeChat took, a card code it consumed): a database too busy to
    record it (``models.sql.is_busy``: a lock held past ``DATABASE_LOCK_TIMEOUT_S`` by a long writer, a job of
    ``make run``'s own scheduler, say) is waited for again, up to ``RECORD_TRIES`` transactions in all. Answered
    "busy, try again" at once, the caller's retry (a console form sent again carries a new key) did it again.
    """
    with unit_of_work():
        prepared = prepare()
    answer = call(prepared)

    def recorded() -> T:
        with unit_of_work():
            return record(prepared, answer)

    return while_busy(recorded)


RECORD_TRIES = 3  # transactions a step that must not be lost may take while the database is busy (``while_busy``)


def while_busy(attempt: Callable[[], T], tries: int = RECORD_TRIES) -> T:
    """``attempt()``, again while the database answers busy (``models.sql.is_busy``), up to ``tries`` in all; any
    other error, and the last busy one, raises. ``attempt`` commits its own transaction; one that failed is rolled
    back by the next attempt or by the caller."""
    for tries_left in reversed(range(tries)):
        try:
            return attempt()
        except Exception as exc:
            if not tries_left or not _busy(exc):
                raise
    raise AssertionError("unreachable")


def _busy(exc: BaseException) -> bool:
    from models.sql import is_busy  # noqa: PLC0415 - models.sql builds on this module

    return is_busy(exc)


def retried_once(attempt: Callable[[bool], T], retry_on: type[Exception] | tuple[type[Exception], ...]) -> T:
    """``attempt(False)``; when it raises ``retry_on``, roll the transaction back and return ``attempt(True)``.

    For an optimistic operation whose second try takes the locks the first one went without
    (``rebate.apply_payment`` and ``BudgetMoved``). Only for a transaction holding nothing else: the
    rollback drops everything done in it so far."""
    try:
        return attempt(False)
    except retry_on:
        db.session.rollback()
    return attempt(True)


@contextmanager
def unit_of_work() -> Iterator[None]:
    """Commit once at the end, roll back on any error. For jobs and CLI commands."""
    try:
        yield
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise


BEIJING = ZoneInfo("Asia/Shanghai")


def beijing(value: datetime) -> datetime:
    """Business days, daily limits, quiet hours and bill dates are Beijing time.

    An instant within hours of the calendar's ends (a far end stored before the API bounded them, web.guards) has
    no Beijing time of its own: it is shown as the calendar's first or last Beijing instant, never an error."""
    try:
        return value.astimezone(BEIJING)
    except OverflowError:
        return (datetime.max if value.year > 1 else datetime.min).replace(tzinfo=BEIJING)


def next_beijing_midnight(value: datetime) -> datetime:
    local = beijing(value)
    return datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), BEIJING).astimezone(UTC)
