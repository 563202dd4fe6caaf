"""Where the simulated WeChat keeps what it remembers: memory, a database, or Redis.

Every process of one deployment (gunicorn workers, ``flask jobs run``) runs its own copy of the
simulator; they are one WeChat because they share this store. A record is a JSON document named by
``(kind, key)``: an order by ``out_trade_no``, a transfer bill by ``out_bill_no``, and so on.

``store.lock`` is a re-entrant transaction: everything the simulator reads and writes inside it
is one serialised step, across threads and processes (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL
advisory transaction lock, a Redis lock). Steps are short (no HTTP call inside); callbacks are
queued with ``after_commit`` and leave only once the step is committed.

The database store has its own engine and metadata and creates its one table itself: it is not
part of the application's schema and never appears in ``migrations/``. On PostgreSQL the table
lives in its own schema ``wechat_sim`` (Alembic's autogenerate looks at ``public`` only); on
SQLite in a file beside the application's (``rebate.db`` → ``rebate.wechat_sim.db``), so the
simulator never waits on the application's write lock, nor the application on the simulator's.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, Text, create_engine, delete, event, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

PG_SCHEMA = "wechat_sim"
PG_LOCK_KEY = 0x5743_5349_4D  # "WCSIM": one advisory lock serialises every simulator step
metadata = MetaData()
records = Table(
    "wechat_sim_records",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
    schema=PG_SCHEMA,
)


class Store:
    """Records by (kind, key) and a re-entrant, cross-process transaction around them."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.lock = _Lock(self)

    # -- what a backend provides ---------------------------------------------------
    def _begin(self) -> Any: ...
    def _end(self, handle: Any, commit: bool) -> None: ...
    def _get(self, handle: Any, kind: str, key: str) -> str | None: ...
    def _put(self, handle: Any, kind: str, key: str, value: str) -> None: ...
    def _delete(self, handle: Any, kind: str, key: str) -> None: ...
    def _items(self, handle: Any, kind: str) -> list[tuple[str, str]]: ...
    def _clear(self, handle: Any, keep: frozenset[str]) -> None: ...

    # -- records --------------------------------------------------------------------
    def get(self, kind: str, key: str) -> Any:
        with self.lock:
            raw = self._get(self._handle(), kind, key)
        return None if raw is None else json.loads(raw)

    def put(self, kind: str, key: str, value: Any) -> None:
        with self.lock:
            self._put(self._handle(), kind, key, json.dumps(value, ensure_ascii=False))

    def delete(self, kind: str, key: str) -> None:
        with self.lock:
            self._delete(self._handle(), kind, key)

    def items(self, kind: str) -> list[tuple[str, Any]]:
        with self.lock:
            rows = self._items(self._handle(), kind)
        return sorted((key, json.loads(raw)) for key, raw in rows)

    def peek(self, kind: str) -> list[tuple[str, Any]]:
        """``items`` read outside any step: no lock taken, so it may be a moment old. For a quick "is there
        anything?" before a step that re-reads under the lock (e.g. faults, checked on every request)."""
        if getattr(self._local, "depth", 0):
            return self.items(kind)
        return sorted((key, json.loads(raw)) for key, raw in self._peek(kind))

    def _peek(self, kind: str) -> list[tuple[str, str]]:
        with self.lock:
            return self._items(self._handle(), kind)

    def add_if_absent(self, kind: str, key: str, value: Any) -> Any:
        """The stored record, ``value`` when there was none (the first process to start wins)."""
        with self.lock:
            current = self.get(kind, key)
            if current is None:
                self.put(kind, key, value)
                return value
            return current

    def increment(self, kind: str, key: str) -> int:
        with self.lock:
            value = (self.get(kind, key) or 0) + 1
            self.put(kind, key, value)
            return value

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Forget everything but the kinds in ``keep`` (between tests)."""
        with self.lock:
            self._clear(self._handle(), frozenset(keep))

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current step is committed (at once outside a step)."""
        if getattr(self._local, "depth", 0):
            self._local.callbacks.append(callback)
        else:
            callback()

    def collection(self, kind: str) -> Collection:
        return Collection(self, kind)

    def close(self) -> None:
        return None

    # -- the transaction --------------------------------------------------------------
    def _handle(self) -> Any:
        return self._local.handle

    def keyed(self, kind: str, key: str) -> _Lock:
        """A step that reads and writes only the record ``(kind, key)`` (and nothing else, nested steps
        included): on PostgreSQL it runs beside other steps of other records, still excluded by every
        whole-store step. Elsewhere it is the whole-store step."""
        return _Lock(self, (kind, key))

    def _begin_keyed(self, record: tuple[str, str]) -> Any:
        return self._begin()

    def _enter(self, record: tuple[str, str] | None = None) -> None:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            handle = self._begin() if record is None else self._begin_keyed(record)
            self._local.handle, self._local.callbacks = handle, []
        self._local.depth = depth + 1

    def _exit(self, failed: bool) -> None:
        self._local.depth -= 1
        if self._local.depth:
            return
        handle, callbacks = self._local.handle, self._local.callbacks
        self._local.handle, self._local.callbacks = None, []
        self._end(handle, commit=not failed)
        if not failed:
            for callback in callbacks:
                callback()


class _Lock:
    def __init__(self, store: Store, record: tuple[str, str] | None = None) -> None:
        self.store, self.record = store, record

    def __enter__(self) -> _Lock:
        self.store._enter(self.record)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self.store._exit(failed=exc_type is not None)


class MemoryStore(Store):
    """One process only: the bare simulator of the ``wechat`` package's own tests."""

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, dict[str, str]] = {}
        self._mutex = threading.RLock()

    def _begin(self) -> None:
        self._mutex.acquire()

    def _end(self, handle: None, commit: bool) -> None:
        self._mutex.release()  # changes are not undone: every step raises before it writes

    def _get(self, handle: None, kind: str, key: str) -> str | None:
        return self._data.get(kind, {}).get(key)

    def _put(self, handle: None, kind: str, key: str, value: str) -> None:
        self._data.setdefault(kind, {})[key] = value

    def _delete(self, handle: None, kind: str, key: str) -> None:
        self._data.get(kind, {}).pop(key, None)

    def _items(self, handle: None, kind: str) -> list[tuple[str, str]]:
        return list(self._data.get(kind, {}).items())

    def _clear(self, handle: None, keep: frozenset[str]) -> None:
        for kind in list(self._data):
            if kind not in keep:
                del self._data[kind]


@dataclass
class _RedisStep:
    """One step on Redis: the lock it holds and the writes it will apply if it ends well."""

    lock: Any
    writes: dict[tuple[str, str], str | None] = field(default_factory=dict)


def _int4(name: str) -> int:
    """A signed 32-bit key for a name (an advisory lock's key)."""
    value = zlib.crc32(name.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


class SqlStore(Store):
    """PostgreSQL (schema ``wechat_sim``) or SQLite (its own file); see the module note."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        with engine.begin() as conn:
            if self.postgres:
                # Every gunicorn worker and the jobs process get here at start-up: the same advisory
                # lock as every step serialises them, so two never race to create the schema or table.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
                conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
            metadata.create_all(self._options(conn), checkfirst=True)

    def _options(self, conn: Connection) -> Connection:
        return conn if self.postgres else conn.execution_options(schema_translate_map={PG_SCHEMA: None})

    def _begin(self) -> Connection:
        conn = self._options(self.engine.connect())
        conn.begin()  # SQLite: BEGIN IMMEDIATE (see sqlite_engine)
        if self.postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
        return conn

    def _begin_keyed(self, record: tuple[str, str]) -> Connection:
        if not self.postgres:
            return self._begin()
        conn = self.engine.connect()
        conn.begin()
        # Shared on the whole-store lock (whole-store steps take it exclusively), exclusive on the record's
        # own pair of keys (a key space apart from the single-key lock's): steps of different records run
        # side by side; a hash collision only makes two of them wait for each other.
        conn.execute(
            text("SELECT pg_advisory_xact_lock_shared(:key), pg_advisory_xact_lock(:kind, :record)"),
            {"key": PG_LOCK_KEY, "kind": _int4(record[0]), "record": _int4(record[1])},
        )
        return conn

    def _end(self, conn: Connection, commit: bool) -> None:
        try:
            conn.commit() if commit else conn.rollback()
        finally:
            conn.close()

    def _peek(self, kind: str) -> list[tuple[str, str]]:
        conn = self._options(self.engine.connect())
        if self.postgres:  # one statement, no BEGIN nor ROLLBACK around it
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        with conn:  # no advisory lock: a plain read
            return self._items(conn, kind)

    def _get(self, conn: Connection, kind: str, key: str) -> str | None:
        return conn.scalar(select(records.c.value).where(records.c.kind == kind, records.c.key == key))

    def _put(self, conn: Connection, kind: str, key: str, value: str) -> None:
        insert = (postgresql if self.postgres else sqlite_dialect).insert(records)  # one statement, not a read first
        upsert = insert.on_conflict_do_update(
            index_elements=[records.c.kind, records.c.key], set_={"value": insert.excluded.value}
        )
        conn.execute(upsert, {"kind": kind, "key": key, "value": value})

    def _delete(self, conn: Connection, kind: str, key: str) -> None:
        conn.execute(delete(records).where(records.c.kind == kind, records.c.key == key))

    def _items(self, conn: Connection, kind: str) -> list[tuple[str, str]]:
        query = select(records.c.key, records.c.value).where(records.c.kind == kind)
        return [(key, value) for key, value in conn.execute(query)]

    def _clear(self, conn: Connection, keep: frozenset[str]) -> None:
        conn.execute(delete(records).where(records.c.kind.not_in(keep)) if keep else delete(records))


class RedisStore(Store):
    """Redis: a hash per kind under ``wechat_sim:``, every step under one Redis lock.

    A step's writes are buffered and applied together in one MULTI/EXEC when it ends well, so a
    step that fails half-way leaves nothing behind (as the database stores roll back).
    """

    PREFIX = "wechat_sim:"

    def __init__(self, client: Any, lock_timeout_s: float = 30) -> None:
        super().__init__()
        self.client = client
        self.lock_timeout_s = lock_timeout_s

    def _begin(self) -> _RedisStep:
        lock = self.client.lock(self.PREFIX + "lock", timeout=self.lock_timeout_s, blocking_timeout=self.lock_timeout_s)
        if not lock.acquire():
            raise TimeoutError("the WeChat simulator's Redis lock is held too long")
        return _RedisStep(lock)

    def _end(self, step: _RedisStep, commit: bool) -> None:
        try:
            if commit and step.writes:
                pipe = self.client.pipeline(transaction=True)
                for (kind, key), value in step.writes.items():
                    if value is None:
                        pipe.hdel(self.PREFIX + kind, key)
                    else:
                        pipe.hset(self.PREFIX + kind, key, value)
                pipe.execute()
        finally:
            step.lock.release()

    def _get(self, step: _RedisStep, kind: str, key: str) -> str | None:
        if (kind, key) in step.writes:
            return step.writes[kind, key]
        raw = self.client.hget(self.PREFIX + kind, key)
        return None if raw is None else raw.decode()

    def _put(self, step: _RedisStep, kind: str, key: str, value: str) -> None:
        step.writes[kind, key] = value

    def _delete(self, step: _RedisStep, kind: str, key: str) -> None:
        step.writes[kind, key] = None

    def _peek(self, kind: str) -> list[tuple[str, str]]:
        return [(k.decode(), v.decode()) for k, v in self.client.hgetall(self.PREFIX + kind).items()]

    def _items(self, step: _RedisStep, kind: str) -> list[tuple[str, str]]:
        found = {k.decode(): v.decode() for k, v in self.client.hgetall(self.PREFIX + kind).items()}
        for (written_kind, key), value in step.writes.items():
            if written_kind == kind:
                found.pop(key, None) if value is None else found.__setitem__(key, value)
        return list(found.items())

    def _clear(self, lock: Any, keep: frozenset[str]) -> None:
        for name in self.client.scan_iter(match=self.PREFIX + "*"):
            kind = name.decode().removeprefix(self.PREFIX)
            if kind != "lock" and kind not in keep:
                self.client.delete(name)


class Collection(MutableMapping):
    """One kind of record as a mapping; a record read from it saves itself when changed."""

    def __init__(self, store: Store, kind: str) -> None:
        self.store, self.kind = store, kind

    def __getitem__(self, key: str) -> Any:
        value = self.store.get(self.kind, key)
        if value is None:
            raise KeyError(key)
        return self._tracked(key, value)

    def __setitem__(self, key: str, value: Any) -> None:
        self.store.put(self.kind, key, value)

    def __delitem__(self, key: str) -> None:
        self.store.delete(self.kind, key)

    def __iter__(self) -> Iterator[str]:
        return iter([key for key, _ in self.store.items(self.kind)])

    def __len__(self) -> int:
        return len(self.store.items(self.kind))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.store.get(self.kind, key) is not None

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override] - one read, not one per key
        return [(key, self._tracked(key, value)) for key, value in self.store.items(self.kind)]

    def values(self) -> list[Any]:  # type: ignore[override]
        return [value for _, value in self.items()]

    def _tracked(self, key: str, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return Record(value, lambda root: self.store.put(self.kind, key, root))


class Record(dict):
    """A stored document: setting a field (also of a nested dict) writes the whole document back."""

    def __init__(self, value: dict[str, Any], save: Callable[[Any], None], root: Record | None = None) -> None:
        super().__init__(value)
        self._save, self._root = save, root or self

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if isinstance(value, dict) and not isinstance(value, Record):
            value = Record(value, self._save, self._root)
            super().__setitem__(key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 - self[key] wraps a nested dict

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._save(self._root)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._save(self._root)

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._save(self._root)


def sqlite_engine(path: str, busy_timeout_s: int = 20) -> Engine:
    """One connection per step (NullPool: nothing left open between tests or after a fork)."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):  # noqa: ANN001
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA busy_timeout={busy_timeout_s * 1000}")

    @event.listens_for(engine, "begin")
    def on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def shared_engine(url: str) -> Engine:
    """One pooled engine per server database and process (every app of a test run shares it)."""
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = create_engine(url, pool_size=4, max_overflow=8, pool_pre_ping=True)  # a gthread worker's 8 threads
            os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
            _ENGINES[url] = engine
        return engine


def open_store(database_url: str | None, redis_url: str | None = None, busy_timeout_s: int = 20) -> Store:
    """Redis when set; else the application's database (see the module note); memory for ``sqlite://``."""
    if redis_url:
        import redis

        return RedisStore(redis.Redis.from_url(redis_url))
    if not database_url:
        return MemoryStore()
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return SqlStore(shared_engine(url.render_as_string(hide_password=False)))
    if not url.database or url.database == ":memory:":
        return MemoryStore()
    base, dot, ext = url.database.rpartition(".")
    path = f"{base}.wechat_sim.{ext}" if dot else f"{url.database}.wechat_sim"
    return SqlStore(sqlite_engine(path, busy_timeout_s))
