"""``DescribedLazily``: a psycopg cursor whose ``description`` makes its columns when one is first asked for.

psycopg builds ``cursor.description`` anew on every read: a ``Column`` per column of the result, its name decoded
and its type looked up. SQLAlchemy reads it after every statement that answers rows, and for a statement it has
compiled before it only asks whether it is None: the shape of the rows is kept with the compiled statement. A
paid notification's reads answer some 150 columns (the order, its buyer and inviter, its campaigns, its packets),
so those columns, made and thrown away, were a tenth of the notification's own work (issue 11).

Here ``description`` is None exactly when psycopg's is, and otherwise a sequence whose ``Column`` objects are made
from that result, as psycopg makes them, the first time an item, an iteration or a comparison asks for them: the
same values, later, once. It describes the result it was read for even when the cursor has moved on since.

The engine gets it as its connections' ``cursor_factory`` (``app._engine_options``, psycopg only); psycopg's
``Column`` reads three attributes of a cursor (``pgresult``, ``adapters``, ``_encoding``: psycopg 3.1 to 3.3, the
version is pinned), kept here per result; ``tests/test_described_lazily.py`` compares every field with psycopg's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import Column, Cursor, pq

_ROWS = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.SINGLE_TUPLE, pq.ExecStatus.TUPLES_CHUNK)


class _Result:
    """What psycopg's ``Column`` reads of its cursor, kept for one result."""

    __slots__ = ("_encoding", "adapters", "pgresult")

    def __init__(self, cursor: Cursor, pgresult: Any) -> None:
        self.pgresult, self.adapters, self._encoding = pgresult, cursor.adapters, cursor._encoding  # noqa: SLF001


class LazyDescription(Sequence):
    """A result's ``Column`` objects, made when first asked for; its length is known at once."""

    __slots__ = ("_columns", "_count", "_result")

    def __init__(self, result: _Result, count: int) -> None:
        self._result, self._count, self._columns = result, count, None

    def _made(self) -> list[Column]:
        if self._columns is None:
            self._columns = [Column(self._result, i) for i in range(self._count)]  # type: ignore[arg-type]
        return self._columns

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        return self._made()[index]

    def __iter__(self):
        return iter(self._made())

    def __eq__(self, other: object) -> bool:
        return list(self._made()) == (list(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # a description is a list: unhashable, as psycopg's

    def __repr__(self) -> str:
        return repr(self._made())


class DescribedLazily(Cursor):
    """psycopg's cursor, with ``description`` made lazily (``LazyDescription``)."""

    @property
    def description(self) -> LazyDescription | None:
        res = self.pgresult
        # psycopg's own test: columns when the result has fields, or says it answered rows ("SELECT ;")
        if res and (res.nfields or res.status in _ROWS):
            return LazyDescription(_Result(self, res), res.nfields)
        return None
