"""``models.described_lazily``: the engine's psycopg cursors describe a result as psycopg does, when asked; a paid
notification, its statements run before, makes no column description at all (PostgreSQL only)."""

from __future__ import annotations

import psycopg
import pytest

from models import db
from models.described_lazily import DescribedLazily, LazyDescription
from tests.conftest import on_postgres

pytestmark = pytest.mark.skipif(not on_postgres(), reason="psycopg's cursors: PostgreSQL only")

STATEMENTS = [
    "SELECT 1 AS one, 'x'::varchar(12) AS short, 12.5::numeric(10, 2) AS money, ARRAY['a']::text[] AS words, "
    "now() AS at, '{}'::json AS doc, NULL AS nothing",
    "SELECT id, out_trade_no, total_fen FROM orders WHERE false",  # no rows: still described
    "SELECT",  # rows of no column: an empty description, not None
    "INSERT INTO t_described VALUES (1)",
    "INSERT INTO t_described VALUES (2) RETURNING id, id * 2 AS twice",
    "UPDATE t_described SET id = id + 1",
]
FIELDS = ("name", "type_code", "display_size", "internal_size", "precision", "scale", "null_ok")


def _dbapi_connection():
    return db.session.connection().connection.dbapi_connection


def _described(cursor) -> list[tuple] | None:
    found = cursor.description
    return None if found is None else [tuple(getattr(c, f) for f in FIELDS) + (tuple(c),) for c in found]


def test_the_engines_cursors_describe_every_result_as_psycopg_does(app):
    connection = _dbapi_connection()
    ours = connection.cursor()
    assert isinstance(ours, DescribedLazily)
    ours.execute("CREATE TEMPORARY TABLE t_described (id int)")
    assert ours.description is None
    for sql in STATEMENTS:
        plain = psycopg.Cursor(connection)  # psycopg's own, on the same connection
        plain.execute(sql)
        expected = _described(plain)
        ours.execute(sql)
        got = ours.description
        if expected is None:
            assert got is None, sql
            continue
        assert isinstance(got, LazyDescription) and len(got) == len(expected), sql
        assert _described(ours) == expected, sql
        assert [c.name for c in got[:2]] == [e[0] for e in expected[:2]]
        assert (got == []) == (expected == [])
    db.session.rollback()


def test_a_description_read_before_the_cursor_moved_on_still_describes_its_result(app):
    cursor = _dbapi_connection().cursor()
    cursor.execute("SELECT 1 AS first, 2 AS second")
    kept = cursor.description
    cursor.execute("SELECT 'a' AS other")
    assert [c.name for c in kept] == ["first", "second"] and [c.name for c in cursor.description] == ["other"]
    db.session.rollback()


def test_a_paid_notification_makes_no_column_descriptions(app, make_user, make_product, pay, monkeypatch):
    """Every statement of a payment, once compiled, has its rows' shape kept by SQLAlchemy: no ``Column`` is made."""
    from models import utcnow
    from rebate.orders import LineRequest, create_order

    product = make_product(price_fen=100_00)

    def paid_order():
        order = create_order(make_user(), [LineRequest(product.id, 1)], None, utcnow())
        db.session.commit()
        pay(order)

    paid_order()  # every statement compiled once
    made = []
    real_init = psycopg.Column.__init__

    def counted(self, cursor, index):
        made.append(index)
        real_init(self, cursor, index)

    monkeypatch.setattr(psycopg.Column, "__init__", counted)
    paid_order()
    assert made == []
