"""``models.sql.Precompiled``: a Core statement compiled once and run by its text (issue 11).

What it sends must be what ``Connection.execute`` would send for the same statement and values: every value
through its column type's bind processor (a timezone-aware ``UTCDateTime``, JSON), the statement's literal values
as compiled, and a statement refused when a named value is missing, before anything is sent.
"""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest
from sqlalchemy import bindparam, insert, literal, select

from models import RedPacket, db, utcnow
from models.sql import Precompiled
from tests.test_claim_sql import statements

PACKETS = RedPacket.__table__


def packet_values(campaign_id: int, owner_id: int, now) -> dict:
    return {
        "campaign_id": campaign_id,
        "rules_version": 1,
        "owner_id": owner_id,
        "min_spend_fen": 0,
        "products": [],
        "reserved_fen": 5_00,
        "issuer_type": "platform",
        "amount_fen": 5_00,
        "categories": ["food", "drink"],
        "tiers": [{"min_spend_fen": 20_00, "amount_fen": 5_00}],
        "valid_from": now,
        "expires_at": now + timedelta(days=3),
        "created_at": now,
        "source": "precompiled",
    }


def packet_insert(*returning):
    """An INSERT of an issued packet from typed values (``packet_values``' names), RETURNING ``returning``."""
    names = list(packet_values(0, 0, utcnow()))
    columns = [PACKETS.c[n] for n in names]
    return (
        insert(PACKETS)
        .from_select(
            names + ["status"],
            select(*[bindparam(n, type_=c.type) for n, c in zip(names, columns, strict=True)], literal("issued")),
        )
        .returning(*returning)
    )


def test_it_sends_what_execute_would_and_the_types_process_the_values(app, make_user, make_campaign):
    # given: an INSERT … RETURNING with typed values (JSON, UTCDateTime), a literal, and its precompiled form
    campaign = make_campaign({"roles": []})
    user = make_user()
    statement = packet_insert(PACKETS.c.id, PACKETS.c.status)
    precompiled = Precompiled(statement, db.engine.dialect)
    beijing_now = utcnow().astimezone(timezone(timedelta(hours=8)))  # the type stores it as UTC
    values = packet_values(campaign.id, user.id, beijing_now)

    # when: it runs, and the same statement runs through Connection.execute
    with statements() as sent:
        mine = precompiled.execute(db.session.connection(), values).one()
    theirs = db.session.connection().execute(statement, {**values, "source": "execute"}).one()

    # then: the same SQL text was sent, and both rows hold the same values, processed by their types
    assert [s for s in sent if not s.startswith("BEGIN")] == [precompiled.sql]
    assert mine.status == theirs.status == "issued"
    stored = {
        row.source: row
        for row in db.session.execute(select(RedPacket).where(RedPacket.id.in_([mine.id, theirs.id]))).scalars()
    }
    for source in ("precompiled", "execute"):
        packet = stored[source]
        assert packet.categories == ["food", "drink"] and packet.tiers == values["tiers"]
        assert packet.valid_from == beijing_now and packet.valid_from.utcoffset() == timedelta(0)
    assert precompiled.params == frozenset(values)


def test_a_statement_relying_on_python_side_defaults_is_refused(app):
    # given: an INSERT of a packet that leaves its defaulted columns (min_spend_fen, products, …) to SQLAlchemy
    statement = insert(PACKETS).values(campaign_id=bindparam("campaign_id", type_=PACKETS.c.campaign_id.type))
    # when / then: refused, since running it by its text would write NULL there
    with pytest.raises(ValueError, match="Python-side column defaults"):
        Precompiled(statement, db.engine.dialect)


def test_a_statement_with_values_rendered_at_execution_is_refused(app):
    # given: an expanding IN (SQLAlchemy renders its placeholders per execution, by the list's length)
    statement = select(PACKETS.c.id).where(PACKETS.c.id.in_(bindparam("ids", expanding=True)))
    # when / then: refused, since its compiled text is not the statement sent
    with pytest.raises(ValueError, match="rendered at execution"):
        Precompiled(statement, db.engine.dialect)


def test_a_missing_value_is_refused_before_anything_is_sent(app):
    # given: a precompiled statement with two named values
    statement = select(
        bindparam("a", type_=PACKETS.c.amount_fen.type) + bindparam("b", type_=PACKETS.c.amount_fen.type)
    )
    precompiled = Precompiled(statement, db.engine.dialect)
    # when / then: without one of them it refuses, and sends nothing
    with statements() as sent, pytest.raises(KeyError, match="'b'"):
        precompiled.execute(db.session.connection(), {"a": 1})
    with statements() as sent_too, pytest.raises(KeyError, match="no parameter.*'c'"):
        precompiled.execute(db.session.connection(), {"a": 1, "b": 2, "c": 3})  # a name it has not: refused too
    assert [s for s in sent + sent_too if not s.startswith("BEGIN")] == []
    assert precompiled.execute(db.session.connection(), {"a": 1, "b": 2}).scalar_one() == 3


def test_first_runs_it_on_the_driver_cursor_as_execute_would(app, make_user, make_campaign):
    # given: the INSERT … RETURNING above, precompiled, and a connection already in its transaction
    campaign = make_campaign({"roles": []})
    user = make_user()
    statement = packet_insert(PACKETS.c.id, PACKETS.c.amount_fen)
    precompiled = Precompiled(statement, db.engine.dialect)
    connection = db.session.connection()
    first_values, second_values = (packet_values(campaign.id, user.id, utcnow()) for _ in range(2))

    # when: it runs twice through ``first`` (the second reuses the row type made from the first description)
    with statements() as sent:
        one = precompiled.first(connection, first_values)
        two = precompiled.first(connection, second_values)

    # then: each statement was seen by the engine's listeners, and the rows are named as the statement says
    assert [s for s in sent if not s.startswith("BEGIN")] == [precompiled.sql, precompiled.sql]
    assert (one.amount_fen, two.amount_fen, two.id - one.id) == (5_00, 5_00, 1)
    assert one._fields == ("id", "amount_fen")
    assert db.session.get(RedPacket, two.id).categories == ["food", "drink"]


def test_first_answers_none_without_a_row_and_raises_a_driver_error_as_sqlalchemy_does(app):
    from sqlalchemy.exc import DBAPIError

    nothing = Precompiled(
        select(PACKETS.c.id).where(PACKETS.c.id == bindparam("id", type_=PACKETS.c.id.type)), db.engine.dialect
    )
    divided = Precompiled(
        select(bindparam("a", type_=PACKETS.c.amount_fen.type) / bindparam("b", type_=PACKETS.c.amount_fen.type)),
        db.engine.dialect,
    )
    with db.engine.connect() as connection:
        auto = connection.execution_options(isolation_level="AUTOCOMMIT")
        assert nothing.first(auto, {"id": -1}) is None
        if db.engine.dialect.name == "postgresql":  # SQLite answers NULL for a division by zero
            with pytest.raises(DBAPIError) as failed:
                divided.first(auto, {"a": 1, "b": 0})
            assert failed.value.orig.sqlstate == "22012"
        assert tuple(divided.first(auto, {"a": 6, "b": 3})) in ((2,), (2.0,))  # the connection is still usable


def test_first_refuses_a_connection_that_would_not_commit_what_it_wrote(app):
    statement = Precompiled(select(bindparam("a", type_=PACKETS.c.amount_fen.type)), db.engine.dialect)
    with db.engine.connect() as connection:  # no transaction begun, not AUTOCOMMIT: a write would be lost
        with pytest.raises(ValueError, match="AUTOCOMMIT"):
            statement.first(connection, {"a": 1})
        connection.begin()
        assert tuple(statement.first(connection, {"a": 1})) == (1,)  # in a transaction begun: fine
