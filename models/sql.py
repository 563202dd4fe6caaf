"""``insert_ignoring``: a multi-row ``INSERT … ON CONFLICT (…) DO NOTHING [RETURNING …]`` compiled once.

SQLAlchemy 2.0's dialect ``insert()`` (postgresql and sqlite, the only ones with ``on_conflict_do_*``)
sets ``inherit_cache = False``: every execution of such a statement is compiled again ("[no key]" in
the engine log), which cost the payment path three compilations per notification. The statement
here is a ``text()`` with typed bind parameters (so ``UTCDateTime`` and the other column types still
process their values), built once per table, column list and row count, and cached by SQLAlchemy
like any other: identical SQL on PostgreSQL and SQLite (≥ 3.35 for ``RETURNING``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from sqlalchemy import Executable, Table, bindparam, text

from models.base import db

# Marks a text() statement that writes: SQLAlchemy sees no INSERT / UPDATE in a text() statement, and
# ``rebate.claims`` notes whether a transaction has written anything yet (a refused claim that was the
# transaction's first write rolls back everything).
WRITES = {"writes": True}
CHUNK_ROWS = 100  # rows per statement: bounded SQL text and bind parameters (SQLite allows 32,766)


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
    if not rows:
        return []
    columns = tuple(rows[0])
    out: list[tuple] = []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        stmt = _statement(table, columns, len(chunk), conflict, returning)
        params = {f"{c}_{i}": row[c] for i, row in enumerate(chunk) for c in columns}
        result = db.session.execute(stmt, params, execution_options=None if counts_as_write else {"writes": False})
        if returning:
            out.extend(result.tuples().all())
    return out


@cache
def _statement(
    table: Table, columns: tuple[str, ...], count: int, conflict: tuple[str, ...], returning: tuple[str, ...]
) -> Executable:
    names = ", ".join(columns)
    values = ", ".join("(" + ", ".join(f":{c}_{i}" for c in columns) + ")" for i in range(count))
    sql = f"INSERT INTO {table.name} ({names}) VALUES {values}"  # noqa: S608 (our names)
    if conflict:
        sql += f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    stmt = text(sql).bindparams(*(bindparam(f"{c}_{i}", type_=table.c[c].type) for i in range(count) for c in columns))
    typed = stmt.columns(*(table.c[r] for r in returning)) if returning else stmt
    return typed.execution_options(**WRITES)
