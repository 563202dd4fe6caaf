"""``insert_ignoring``: a multi-row ``INSERT … ON CONFLICT (…) DO NOTHING [RETURNING …]`` compiled once.

SQLAlchemy 2.0's dialect ``insert()`` (postgresql and sqlite, the only ones with ``on_conflict_do_*``)
sets ``inherit_cache = False``: every execution of such a statement is compiled again ("[no key]" in
the engine log), which cost the payment path three compilations per notification. The statement
here is a ``text()`` with typed bind parameters (so ``UTCDateTime`` and the other column types still
process their values), built once per table, column list and row count, and cached by SQLAlchemy
like any other: identical SQL on PostgreSQL and SQLite (≥ 3.35 for ``RETURNING``).

``execute_core``: a Core statement on the session's connection, without the ORM's execution layer (the hot
paths' statements that load no ORM object). ``write_changes``: loaded objects' changed columns as Core UPDATEs,
without the unit of work (a paid notification's order and packets). ``wrote_nothing_yet``: whether the open
transaction has written anything (flushed, executed, or pending), noted here for both ways of running a statement.
"""

from __future__ import annotations

import copy
import hashlib
import sqlite3
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from functools import cache

from flask import current_app
from sqlalchemy import (
    ClauseElement,
    Executable,
    Table,
    bindparam,
    delete,
    event,
    inspect,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.state import InstanceState

from models.base import db

# Marks a text() statement that writes: SQLAlchemy sees no INSERT / UPDATE in a text() statement, and
# ``wrote_nothing_yet`` (below) must know whether a transaction has written anything yet (``rebate.claims``: a
# refused claim that was the transaction's first write rolls back everything).
WRITES = {"writes": True}
CHUNK_ROWS = 100  # rows per statement: bounded SQL text and bind parameters (SQLite allows 32,766)
WROTE = "sql:wrote"  # session.info: this transaction has written something (``wrote_nothing_yet``)


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, _context) -> None:
    session.info[WROTE] = True


@event.listens_for(Session, "do_orm_execute")
def _executed(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete or state.execution_options.get("writes"):
        state.session.info[WROTE] = True  # "writes": a text statement that writes (WRITES)


@event.listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(WROTE, None)


def wrote_nothing_yet() -> bool:
    """Has this transaction written nothing yet (nothing flushed, executed or pending)? (``rebate.claims``: a
    refused claim that was its transaction's first write rolls the whole transaction back, no savepoint.)"""
    session = db.session()
    return not (session.info.get(WROTE) or session.new or session.dirty or session.deleted)


def execute_core(statement: Executable, params=None, *, writes: bool | None = None):
    """``db.session.execute`` for a Core statement (a table's or ``text()``, no ORM entity in it): run on the
    session's own connection and transaction, without the ORM's execution layer (its compile state, events
    and result wrapping: some ten to fifty thousand instructions per statement, issue 11).

    For such a statement ``Session.execute`` does nothing more than that but fire ``do_orm_execute``: it does
    not flush pending rows first (only ORM statements autoflush), and neither does this. What the event did
    is done here: a statement that writes (INSERT, UPDATE, DELETE, or a text one marked ``WRITES``) notes the
    transaction as having written (``WROTE``); ``writes=False``: it does not (a row that must go with whatever
    rolls the transaction back: an ``Idempotency-Key`` written with the effects). An ORM statement is refused:
    it would silently lose the ORM's semantics (attribute names, autoflush, synchronised sessions)."""
    if statement._propagate_attrs.get("compile_state_plugin") == "orm":  # noqa: SLF001 - SQLAlchemy's own mark
        raise TypeError("execute_core runs Core statements only; use db.session.execute for an ORM one")
    if writes is None:
        writes = statement.is_dml or bool(statement.get_execution_options().get("writes"))
    if writes:
        db.session.info[WROTE] = True
    return db.session.connection().execute(statement, params)


ONE_AT_A_TIME = 0x4F41  # "OA": the advisory lock class of ``one_at_a_time``


def one_at_a_time(key: str) -> None:
    """Until this transaction ends, no other transaction passes ``one_at_a_time`` with the same ``key``: for a count
    followed by the insert it limits (refused sign-ins per address), where no row exists yet to lock. PostgreSQL: a
    transaction-scoped advisory lock on the key's hash (another key of the same hash waits too: rare, harmless);
    SQLite: every writing transaction is already one at a time (``BEGIN IMMEDIATE``)."""
    if db.session.get_bind().dialect.name == "postgresql":
        execute_core(text("SELECT pg_advisory_xact_lock(:k, hashtext(:key))"), {"k": ONE_AT_A_TIME, "key": key})


def delete_in_batches(table: Table, where, order_by, batch: int, commit: Callable[[], None] | None = None) -> int:
    """``DELETE … WHERE id IN (the first ``batch`` ids of rows ``where``, by ``order_by``)`` until fewer than ``batch``
    go; how many. Each a short statement that locks few rows; a job passes ``commit`` (``db.session.commit``) to end
    the transaction after each batch, so a purge never holds a long one (without it the caller commits once)."""
    first = select(table.c.id).where(where).order_by(order_by).limit(batch).scalar_subquery()
    removed = 0
    while True:
        done = db.session.execute(delete(table).where(table.c.id.in_(first))).rowcount
        removed += done
        if commit is not None:
            commit()
        if done < batch:
            return removed


def insert_rows(table: Table, rows: Sequence[dict]) -> None:
    """Insert ``rows`` (dicts with the same keys) with the same cached multi-row statement, no conflict clause."""
    insert_ignoring(table, rows, ())


def insert_ignoring(
    table: Table,
    rows: Sequence[dict],
    conflict: tuple[str, ...],
    returning: tuple[str, ...] = (),
    *,
    counts_as_write: bool = True,
) -> list[tuple]:
    """Insert ``rows`` (dicts with the same keys), skipping those that hit the unique ``conflict`` columns (none
    named: a plain INSERT); the ``returning`` columns of the rows written (none for those skipped), in no
    particular order. ``counts_as_write=False``: the transaction is not noted as having written (``WRITES``), for
    a row that must go with whatever rolls the transaction back (an ``Idempotency-Key`` written with the effects)."""
    out: list[tuple] = []
    for result in _inserted_chunks(table, rows, conflict, returning, writes=counts_as_write):
        if returning:
            out.extend(result.tuples().all())
    return out


def insert_in_order(table: Table, rows: Sequence[dict], returning: tuple[str, ...]) -> list[tuple]:
    """PostgreSQL: insert ``rows`` (dicts with the same keys) and answer the ``returning`` columns (``id`` among them)
    in the order of ``rows``. The rows go in as ``INSERT … SELECT … FROM (VALUES …) ORDER BY`` their position, so
    the sequence numbers them in that order and the answer is sorted by ``id``: what SQLAlchemy's
    ``insertmanyvalues`` does for ``sort_by_parameter_order``, without building its batch anew for every execution
    (a statement cached per table, columns and row count, as ``insert_ignoring``'s)."""
    if rows and db.session.get_bind().dialect.name != "postgresql":
        raise NotImplementedError("insert_in_order is PostgreSQL's (SQLite names no VALUES columns)")
    at = returning.index("id")
    out: list[tuple] = []
    for result in _inserted_chunks(table, rows, (), returning, ordered=True):
        out.extend(sorted(result.tuples().all(), key=lambda row: row[at]))
    return out


def _inserted_chunks(
    table: Table,
    rows: Sequence[dict],
    conflict: tuple[str, ...],
    returning: tuple[str, ...],
    *,
    ordered: bool = False,
    writes: bool = True,
) -> Iterator:
    """The result of each cached INSERT of ``CHUNK_ROWS`` of ``rows`` (``insert_ignoring``, ``insert_in_order``)."""
    if not rows:
        return
    columns = _same_keys(rows)
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        stmt = _statement(table, columns, len(chunk), conflict, returning, ordered)
        yield execute_core(stmt, {f"{c}_{i}": row[c] for i, row in enumerate(chunk) for c in columns}, writes=writes)


def _cast_type(column) -> str:
    """The column's PostgreSQL type for a cast, without a length: a cast to ``VARCHAR(n)`` would cut a longer value
    silently where the INSERT refuses it."""
    type_ = getattr(column.type, "impl_instance", column.type)
    if getattr(type_, "length", None) is not None:
        type_ = copy.copy(type_)
        type_.length = None
    return type_.compile(dialect=postgresql.dialect())


def _same_keys(rows: Sequence[dict]) -> tuple[str, ...]:
    """The columns of ``rows``, which must all name the same ones (a row's extra key would be dropped)."""
    columns = tuple(rows[0])
    if any(row.keys() != rows[0].keys() for row in rows):
        raise ValueError(f"rows name different columns: {sorted({k for row in rows for k in row})}")
    return columns


@cache
def _statement(
    table: Table,
    columns: tuple[str, ...],
    count: int,
    conflict: tuple[str, ...],
    returning: tuple[str, ...],
    ordered: bool = False,
) -> Executable:
    names = ", ".join(columns)
    if ordered:  # PostgreSQL: numbered from the rows' positions (``insert_in_order``)
        values = ", ".join("(" + ", ".join(f":{c}_{i}" for c in columns) + f", {i})" for i in range(count))
        # Cast in the SELECT too, as SQLAlchemy's own form does: a VALUES column NULL in every row is text.
        typed = ", ".join(f"CAST({c} AS {_cast_type(table.c[c])})" for c in columns)
        sql = f"INSERT INTO {table.name} ({names}) SELECT {typed} FROM (VALUES {values}) AS v_({names}, n_) ORDER BY n_"  # noqa: S608,E501
    else:
        values = ", ".join("(" + ", ".join(f":{c}_{i}" for c in columns) + ")" for i in range(count))
        sql = f"INSERT INTO {table.name} ({names}) VALUES {values}"  # noqa: S608 (our names)
    if conflict:
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    stmt = text(sql).bindparams(*(bindparam(f"{c}_{i}", type_=table.c[c].type) for i in range(count) for c in columns))
    typed = stmt.columns(*(table.c[r] for r in returning)) if returning else stmt
    return typed.execution_options(**WRITES)


def write_changes(objects: Sequence[object]) -> None:
    """Write the changed columns of persistent ORM ``objects`` as Core UPDATEs by primary key, and mark them
    written: what the unit of work's flush would send for them, without its bookkeeping (a third of a
    paid notification's flush, issue 11).

    One statement per table and set of changed columns (an executemany for several rows); as the flush, a column
    set to the value it had is not written, and a row that is not there raises ``StaleDataError``. Values are
    written as they are on the object now, through the column types; the object is then marked written as the
    flush's end marks it (``InstanceState._commit_all_states``), so no flush writes it again, and a change made
    after this is the flush's again. No autoflush: other pending objects stay the flush's.

    Left to the flush, whole: an object this cannot write exactly as the flush would (a changed relationship or
    primary key, a value that is a SQL expression, a mapper with UPDATE listeners, a table whose columns change
    on UPDATE by themselves: ``onupdate``, a version counter), and everything inside a savepoint (whose rollback
    must expire what it wrote, which the flush arranges)."""
    session = db.session()
    if session.in_nested_transaction():
        return
    groups: dict[tuple[Table, tuple[str, ...]], list[tuple[InstanceState, dict]]] = {}
    unchanged: list[tuple[InstanceState, dict]] = []
    for obj in objects:
        state = inspect(obj)
        if not state.persistent or not state.committed_state or not _plain_table(state.mapper):
            continue
        keys = _changed_keys(state)
        if keys is None:
            continue
        (groups.setdefault((state.mapper.local_table, keys), []) if keys else unchanged).append((state, state.dict))
    for (table, keys), rows in groups.items():
        pk = _pk_keys(rows[0][0].mapper)[0]
        params = [{"pk_": state.identity[0], **{k: values[k] for k in keys}} for state, values in rows]
        result = execute_core(_update_statement(table, pk, keys), params if len(params) > 1 else params[0])
        if result.rowcount != len(params) and (len(params) == 1 or result.context.dialect.supports_sane_multi_rowcount):
            raise StaleDataError(f"UPDATE of {table.name} matched {result.rowcount} of {len(params)} rows")
        unchanged += rows
    if unchanged:  # as the flush's end does (``_register_persistent``): unmodified, out of the session's dirty set
        InstanceState._commit_all_states(unchanged, session.identity_map)  # noqa: SLF001


def _changed_keys(state: InstanceState) -> tuple[str, ...] | None:
    """The column keys whose value differs from the loaded one, as the flush compares them (none: nothing to
    write); None: the object is the flush's (see ``write_changes``)."""
    mapper, values, changed = state.mapper, state.dict, []
    for key, old in state.committed_state.items():
        if key not in mapper.column_attrs or key not in values or key in _pk_keys(mapper):
            return None
        value = values[key]
        if isinstance(value, ClauseElement) or hasattr(value, "__clause_element__"):
            return None
        if old is NO_VALUE or not state.manager[key].impl.is_equal(value, old):
            changed.append(key)
    return tuple(sorted(changed))


@cache
def _pk_keys(mapper) -> tuple[str, ...]:
    return tuple(mapper.get_property_by_column(c).key for c in mapper.primary_key)


@cache
def _plain_table(mapper) -> bool:
    """One table, one-column primary key, attribute keys that are column names, nothing changed by an UPDATE
    itself, no listener of the flush's UPDATEs (cached per mapper: listeners are registered when models import)."""
    table = mapper.local_table
    return (
        isinstance(table, Table)
        and len(mapper.primary_key) == 1
        and mapper.version_id_col is None
        and mapper.inherits is None
        and not mapper.dispatch.before_update
        and not mapper.dispatch.after_update
        and all(p.key == p.columns[0].key and len(p.columns) == 1 for p in mapper.column_attrs)
        and not any(c.onupdate is not None or c.server_onupdate is not None for c in table.columns)
    )


@cache
def _update_statement(table: Table, pk: str, keys: tuple[str, ...]) -> Executable:
    return (
        update(table)
        .where(table.c[pk] == bindparam("pk_"))
        .values({k: bindparam(k, type_=table.c[k].type) for k in keys})
    )


READS_ONLY = "reads_only"  # a connection's execution option: it only reads (SQLite: a deferred BEGIN; app.py)
QUERY_CANCELED = "57014"  # PostgreSQL: a statement_timeout (or a cancel) stopped the statement
# Advisory lock keys of the long reads (two int4 keys: a class, then a slot or a reader's hash): "LR" and "LS".
LONG_READ_SLOT, LONG_READ_READER = 0x4C52, 0x4C53
LONG_READ_RETRY_AFTER_S = 5
BACKSTOP_S = 2  # PostgreSQL's own statement_timeout: this long after a long read's deadline, should its cancel not come


class LongReadBusy(Exception):
    """Too many long reads at once, or this reader's previous one is still running (429 + Retry-After)."""

    code, kind, retry_after = "long_read_busy", "limit", LONG_READ_RETRY_AFTER_S


class LongReadTooLong(Exception):
    """A long read ran past ``LONG_READ_TIMEOUT_S`` and was stopped (422: narrow its window)."""

    code, kind = "read_too_long", "invalid"


_long_reader: ContextVar[str | None] = ContextVar("long_reader", default=None)


@contextmanager
def long_reads_by(reader: str) -> Iterator[None]:
    """The long reads (``reading_apart``) inside are ``reader``'s (an operator: ``"operator:7"``): one at a time."""
    token = _long_reader.set(reader)
    try:
        yield
    finally:
        _long_reader.reset(token)


class _ProcessGate:
    """SQLite's gate of the long reads: this process's (a SQLite database has few processes; PostgreSQL's gate is
    the database's own advisory locks, across every process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.readers: set[str] = set()

    @contextmanager
    def slot(self, reader: str | None, at_once: int) -> Iterator[None]:
        with self._lock:
            if self.running >= at_once or reader in self.readers:
                raise _busy(reader, at_once)
            self.running += 1
            if reader is not None:
                self.readers.add(reader)
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
                self.readers.discard(reader)


_PROCESS_GATE = _ProcessGate()


def _busy(reader: str | None, at_once: int) -> LongReadBusy:
    if reader is not None:
        return LongReadBusy(
            f"a long read ({reader}'s previous one, or {at_once} others) is still running; retry shortly"
        )
    return LongReadBusy(f"{at_once} long reads are running; retry shortly")


def _reader_key(reader: str) -> int:
    return int.from_bytes(hashlib.blake2b(reader.encode(), digest_size=4).digest(), "big", signed=True)


_GATE = (
    "SELECT set_config('statement_timeout', :ms, true) AS timeout, true AS mine, "
    "(SELECT s FROM generate_series(0, :slots - 1) AS s "
    "WHERE pg_try_advisory_xact_lock(:slot_class, s) LIMIT 1) AS slot"
)
_GATE_OF_READER = _GATE.replace("true AS mine", "pg_try_advisory_xact_lock(:reader_class, :reader_key) AS mine")


def _postgres_gate(connection, reader: str | None, at_once: int, timeout_s: int) -> None:
    """On the reading connection's transaction, in one statement: its statement timeout (a backstop to ``_Deadline``,
    should this process fail to send its cancel), the reader's own lock and the first free slot of ``at_once``; all
    transaction-scoped (released as the read ends, whatever ends it)."""
    row = connection.execute(
        text(_GATE_OF_READER if reader is not None else _GATE),
        {
            "ms": str((timeout_s + BACKSTOP_S) * 1000),
            "slots": at_once,
            "slot_class": LONG_READ_SLOT,
            **({"reader_class": LONG_READ_READER, "reader_key": _reader_key(reader)} if reader is not None else {}),
        },
    ).one()
    if not row.mine or row.slot is None:
        raise _busy(reader, at_once)


class _Deadline:
    """The end of a long read's time, however many statements it runs (a backtest fetches its orders a thousand at a
    time, then reads their campaigns: up to two thousand statements, each short). Past it: every statement the read's
    connection begins is refused (``before_cursor_execute``), ``in_time`` raises at the caller's next batch, and a
    watcher thread interrupts whatever statement is running (PostgreSQL: a cancel request; SQLite:
    ``Connection.interrupt``), again every ``INTERRUPT_EVERY_S`` until the read ends. A connection whose read ran
    out is closed, never pooled again: a cancel still on its way must not stop another request's statement."""

    INTERRUPT_EVERY_S = 0.5

    def __init__(self, connection, seconds: int) -> None:
        self.seconds, self.expired = seconds, False
        self._ended = threading.Event()
        self._lock = threading.Lock()  # an interrupt is never sent once ``end`` returned
        self._driver = connection.connection.driver_connection
        self._watcher = threading.Thread(target=self._watch, name="long-read-deadline", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        if self._ended.wait(self.seconds):
            return
        self.expired = True
        while True:
            with self._lock:
                if self._ended.is_set():
                    return
                if isinstance(self._driver, sqlite3.Connection):
                    self._driver.interrupt()
                else:
                    self._driver.cancel_safe()
            if self._ended.wait(self.INTERRUPT_EVERY_S):
                return

    def refuse_if_expired(self, *_args) -> None:
        if self.expired:
            raise self.too_long()

    def too_long(self) -> LongReadTooLong:
        return LongReadTooLong(f"the read ran past {self.seconds} s and was stopped; narrow its window or its limit")

    def end(self) -> None:
        with self._lock:
            self._ended.set()


_deadline: ContextVar[_Deadline | None] = ContextVar("long_read_deadline", default=None)


def in_time() -> None:
    """Inside a long read: raise ``LongReadTooLong`` once its time is up (a loop over batches calls it per batch)."""
    deadline = _deadline.get()
    if deadline is not None:
        deadline.refuse_if_expired()


@contextmanager
def reading_apart() -> Iterator:
    """A connection of its own for a long read (an audience's count over every order, a rule backtest, a what-if
    replay), the session's transaction ended first: the caller must have written nothing (refused:
    ``RuntimeError``). On SQLite every transaction begins ``IMMEDIATE``, holding the one write lock, and a read of
    seconds in the request's transaction held every other request (payments, claims, the jobs) for as long. This
    connection begins a deferred one, a WAL reader that neither waits for the writer nor makes it wait; on
    PostgreSQL it is one more pooled connection. The objects the session held are expired by the rollback: read
    what you need of them first.

    Gated: at most ``LONG_READS_AT_ONCE`` run at once, and one at a time per reader (``long_reads_by``); another
    raises ``LongReadBusy`` at once (nothing waits). On PostgreSQL the gate is advisory locks of the read's own
    transaction, across every process; on SQLite this process's. The read stops after ``LONG_READ_TIMEOUT_S``
    (``LongReadTooLong``: ``_Deadline``)."""
    if not wrote_nothing_yet():
        raise RuntimeError("reading apart ends the session's transaction, and this one has written")
    db.session.rollback()
    config = current_app.config
    at_once, timeout_s = config.get("LONG_READS_AT_ONCE", 2), config.get("LONG_READ_TIMEOUT_S", 120)
    reader = _long_reader.get()
    postgres = db.engine.dialect.name == "postgresql"
    with (
        nullcontext() if postgres else _PROCESS_GATE.slot(reader, at_once),
        db.engine.connect().execution_options(**{READS_ONLY: True}) as connection,
    ):
        if postgres:
            _postgres_gate(connection, reader, at_once, timeout_s)
        deadline = _Deadline(connection, timeout_s)
        event.listen(connection, "before_cursor_execute", deadline.refuse_if_expired)
        token = _deadline.set(deadline)
        try:
            yield connection
        except DBAPIError as failed:
            if deadline.expired or getattr(failed.orig, "sqlstate", None) == QUERY_CANCELED:
                raise deadline.too_long() from None
            raise
        finally:
            _deadline.reset(token)
            deadline.end()
            if deadline.expired:
                connection.invalidate()  # a cancel may still be on its way: this connection serves nobody else


def read_apart(statement: Executable, params=None) -> list:
    """The rows of one long read (``reading_apart``)."""
    with reading_apart() as connection:
        return list(connection.execute(statement, params))


AUTO = "AUTOCOMMIT"


class Precompiled:
    """A Core statement compiled once for a dialect, run by its SQL text (``Connection.exec_driver_sql``).

    ``Connection.execute`` spends, for every execution of a statement, a walk of the whole statement for its cache
    key and the processing of every bound value, literal ones included. For a long statement run on every
    request (a claim's one statement: five CTEs, 60 parameters) that was a sixth of the request's own work
    (issue 11). Here the statement is compiled once; an execution converts only the named values it is given, each
    by its column type's bind processor (``UTCDateTime``, JSON, …), adds the literal values converted at compile
    time, and sends the text. Events fire as for any statement (``before_cursor_execute``). Exactly the named bound
    parameters must be given: a missing or unknown one raises ``KeyError`` (a value given for a literal would
    otherwise be dropped silently). The rows' values come as the driver gives them (no result type processing):
    for statements answering ids, counts and flags."""

    def __init__(self, statement: Executable, dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            # Python-side column defaults are computed by SQLAlchemy's execution, not bound: give every column.
            raise ValueError("a statement relying on Python-side column defaults cannot be precompiled")
        if compiled.post_compile_params or compiled.literal_execute_params or compiled.escaped_bind_names:
            # rendered or renamed per execution by SQLAlchemy (an expanding IN, a literal_execute value, a name
            # with characters the paramstyle cannot carry): its text alone is not the statement
            raise ValueError("a statement with parameters rendered at execution cannot be precompiled")
        self.sql = compiled.string
        self._processors: dict[str, object] = {}
        self._fixed: dict[str, object] = {}
        named: set[str] = set()
        for bind, name in compiled.bind_names.items():
            processor = bind.type._cached_bind_processor(dialect)  # noqa: SLF001 - what SQLAlchemy itself uses
            if bind.required:
                named.add(name)
                if processor is not None:
                    self._processors[name] = processor
            else:  # a literal: its value converted now
                self._fixed[name] = processor(bind.effective_value) if processor else bind.effective_value
        self.params = frozenset(named)  # the names an execution must give, exactly
        self._order = tuple(compiled.positiontup) if dialect.positional else None  # SQLite's "?"
        self._row = None  # the named tuple of its rows, made from the first description (``first``)

    def execute(self, connection, values: dict):
        return connection.exec_driver_sql(self.sql, self._bound(values))

    def first(self, connection, values: dict):
        """The first row the statement answers (a named tuple, its values as the driver gives them), or None; run
        on ``connection``'s driver cursor directly. ``execute`` would build SQLAlchemy's execution context and
        result, and that result's column map from the cursor's description, on every run: a fifth of a claim's
        own work (issue 11). ``before_cursor_execute`` fires as for any statement; a driver error is raised as
        SQLAlchemy raises it (``DBAPIError``, the connection invalidated when it was lost).

        Only on a connection in AUTOCOMMIT or inside a transaction already begun: SQLAlchemy's own execution is what
        begins one, so a write here would otherwise not be committed by ``connection.commit()`` (refused:
        ``ValueError``). Listeners get no execution context (None); ``after_cursor_execute`` fires too."""
        if not connection.in_transaction() and connection.get_execution_options().get("isolation_level") != AUTO:
            raise ValueError("Precompiled.first runs on an AUTOCOMMIT connection or in a transaction already begun")
        params = self._bound(values)
        statement = self.sql
        cursor = connection.connection.cursor()
        try:
            listened = connection._has_events or connection.engine._has_events  # noqa: SLF001 - as SQLAlchemy asks
            if listened:
                for listener in connection.dispatch.before_cursor_execute:
                    statement, params = listener(connection, cursor, statement, params, None, False)
            try:
                cursor.execute(statement, params)
                row = cursor.fetchone() if cursor.description is not None else None
            except Exception as failed:  # noqa: BLE001 - wrapped and raised by SQLAlchemy, as for any statement
                connection._handle_dbapi_exception(failed, statement, params, cursor, None)  # noqa: SLF001
            if listened:
                connection.dispatch.after_cursor_execute(connection, cursor, statement, params, None, False)
            if row is None:
                return None
            if self._row is None:
                self._row = namedtuple("Row", [column[0] for column in cursor.description])  # noqa: PYI024
            return self._row(*row)
        finally:
            cursor.close()

    def _bound(self, values: dict):
        """The driver's parameters for ``values``: exactly the named ones, each converted by its type."""
        if values.keys() != self.params:
            missing, unknown = self.params.difference(values), set(values).difference(self.params)
            raise KeyError(f"no value for {sorted(missing)}" if missing else f"no parameter {sorted(unknown)}")
        processors = self._processors
        params = {**self._fixed}
        for name in self.params:
            value = values[name]
            processor = processors.get(name)
            params[name] = processor(value) if processor is not None else value
        if self._order is not None:
            return tuple(params[name] for name in self._order)
        return params


# PostgreSQL's answers to waiting too long or losing a race for a lock: lock_not_available (a
# lock_timeout), query_canceled (a statement_timeout), serialization_failure, deadlock_detected.
RETRYABLE_PG_STATES = frozenset({"55P03", "57014", "40001", "40P01"})


def is_busy(exc: BaseException) -> bool:
    """The database could not give this request its lock in time, or its connection died under it, or no pooled
    connection came free in time (every one held by requests queued behind a long writer: a burst on `make run`'s
    threads, where SQLite's pool holds 15): try again shortly (503), not a bug (500)."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:  # the connection died (a restart, a failover): the pool starts afresh
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        return "locked" in str(orig) or "busy" in str(orig)
    return getattr(orig, "sqlstate", None) in RETRYABLE_PG_STATES


def past(columns: Sequence, after: Sequence | None) -> list:
    """Keyset batches: the condition (a list, empty for the first batch) that reads past ``after``, the last row's
    values of ``columns`` (the batch's order), as one row-value comparison each value bound with its column's type."""
    if after is None:
        return []
    last = tuple_(*(literal(value, column.type) for column, value in zip(columns, after, strict=True)))
    return [tuple_(*columns) > last]
