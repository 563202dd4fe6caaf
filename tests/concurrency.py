"""Races for tests, on SQLite and PostgreSQL alike: n threads released at once by a barrier."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from models import db
from tests.conftest import release_test_session


def together(n: int, work: Callable[[int], Any], app=None) -> list:
    """Run ``work(i)`` in n threads started together; returns each result or the exception it raised.

    The test's own transaction is ended first (on SQLite it would hold the lock every thread
    waits for). With ``app``, each thread runs in its own app context (its own session and
    connection) and commits what ``work`` did, or rolls it back when it raised.
    """
    release_test_session()
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def target(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except Exception as exc:  # collected and asserted on by the test
            results[i] = exc

    def in_context(i: int) -> None:
        with app.app_context():
            try:
                target(i)
                if isinstance(results[i], Exception):
                    db.session.rollback()
                else:
                    db.session.commit()
            except Exception as exc:  # a failed commit is the thread's result too
                db.session.rollback()
                results[i] = exc
            finally:
                db.session.remove()

    threads = [threading.Thread(target=in_context if app else target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results


def post_together(app, requests: list[tuple[str, dict, dict]], **kind) -> list[tuple[int, str | None]]:
    """POST every (path, headers, json or environ_base) at once; (status, error code) of each, -1 on exception.

    ``as_="environ_base"`` sends the third item as the WSGI environ (a client address), else as JSON.
    """
    field = kind.get("as_", "json")

    def post(i: int) -> tuple[int, str | None]:
        path, headers, extra = requests[i]
        resp = app.test_client().post(path, headers=headers, **{field: extra})
        return resp.status_code, (resp.get_json(silent=True) or {}).get("error")

    return [r if isinstance(r, tuple) else (-1, repr(r)) for r in together(len(requests), post, app=app)]


def wait_until_a_backend_waits_on_a_lock(probe, timeout_s: float = 10.0) -> None:
    """PostgreSQL: return once some backend of this database waits on a lock (or after ``timeout_s``).

    ``probe`` is a connection of its own; each look is its own transaction, since pg_stat_activity is a
    snapshot per transaction."""
    from sqlalchemy import text

    waiting = text(
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
    )
    for _ in range(int(timeout_s / 0.05)):
        seen = probe.execute(waiting).scalar_one()
        probe.rollback()
        if seen:
            return
        threading.Event().wait(0.05)


def is_row_locked(probe, locking_select) -> bool:
    """PostgreSQL: does another transaction hold the row ``locking_select`` (a SELECT … FOR …) would lock?"""
    from sqlalchemy.exc import OperationalError

    probe.begin()
    try:
        probe.execute(locking_select.with_for_update(key_share=True, nowait=True))
    except OperationalError as exc:
        if "could not obtain lock" not in str(exc):
            raise
        return True
    finally:
        probe.rollback()
    return False


@contextmanager
def writer_meanwhile(reads: Callable[[str], bool], sql: str, params: tuple = ()) -> Iterator[list]:
    """While inside, each statement ``reads`` picks (by its SQL) has another writer try ``sql`` as it starts: on SQLite
    a second connection takes the write lock (``BEGIN IMMEDIATE``, 0.2 s to get it), writes and commits, which works
    only if the statement's own transaction does not hold the lock (``models.sql.reading_apart``); on PostgreSQL the
    statement's connection must be one that only reads. The list yielded holds one True per such statement."""
    from sqlalchemy import event

    found: list = []

    def meanwhile(conn, cursor, statement, parameters, context, executemany):
        if not reads(statement):
            return
        if db.engine.dialect.name != "sqlite":
            found.append(conn.get_execution_options().get("reads_only"))
            return
        other = sqlite3.connect(db.engine.url.database, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute(sql, params)
            other.execute("COMMIT")
            found.append(True)
        finally:
            other.close()

    event.listen(db.engine, "before_cursor_execute", meanwhile)
    try:
        yield found
    finally:
        event.remove(db.engine, "before_cursor_execute", meanwhile)
