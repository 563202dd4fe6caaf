"""``models.sql.write_changes``: a persistent object's changed columns written as Core UPDATEs, as the flush would.

A paid notification writes its order and its packets this way (issue 11): what is written must be exactly what
the unit of work would have written, the objects must be clean afterwards (no second UPDATE at the next flush),
and what it cannot write exactly is left to the flush.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm.exc import StaleDataError

from models import User, UserIdentity, db, utcnow
from models.preferences import UserPreference
from models.sql import write_changes
from tests.conftest import on_postgres
from tests.test_claim_sql import statements


@contextmanager
def counted():
    """The statements sent inside the block, SQLite's ``BEGIN IMMEDIATE`` left out (a list filled on exit)."""
    kept: list[str] = []
    with statements() as sent:
        yield kept
    kept += [s for s in sent if not s.startswith("BEGIN")]


def stored(user_id: int, column: str):
    return db.session.execute(text(f"SELECT {column} FROM users WHERE id = :id"), {"id": user_id}).scalar_one()  # noqa: S608


def test_changed_columns_are_written_by_key_and_the_objects_are_clean_after(app, make_user):
    # given: three users, two with the same columns changed, one with others (an encrypted one among them)
    a, b, c = make_user(), make_user(), make_user()
    a.region, b.region = "north", "south"
    c.nickname, c.phone = "c", "13800000000"
    # when
    with counted() as statements:
        write_changes([a, b, c])
    # then: one UPDATE per set of changed columns (the two alike in one executemany), nothing else
    assert len(statements) == 2, statements
    assert all(s.lstrip().upper().startswith("UPDATE USERS") for s in statements)
    # and the objects are clean: the flush (and the commit's) sends nothing more
    assert not db.session.dirty
    with counted() as again:
        db.session.flush()
    assert again == []
    # and the rows hold the values, written through the column types (the phone encrypted as the ORM writes it)
    assert (stored(a.id, "region"), stored(b.id, "region"), stored(c.id, "nickname")) == ("north", "south", "c")
    assert stored(c.id, "phone") not in (None, "13800000000")
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(User, c.id).phone == "13800000000"
    assert db.session.get(User, a.id).region == "north"


def test_what_it_cannot_write_exactly_is_left_to_the_flush(app, make_user):
    user, other = make_user(), make_user()
    db.session.add(UserPreference(user_id=user.id, rebate_form="points"))
    db.session.commit()
    preference = db.session.get(UserPreference, user.id)
    # given: a table with a column its UPDATE changes by itself (onupdate), a changed relationship, a pending row,
    # and an unchanged object
    user.identities.append(UserIdentity(appid="wx-other", openid="o-1"))  # (its lazy load autoflushes: first)
    preference.rebate_form = "balance"
    pending = User(region="east")
    db.session.add(pending)
    # when
    with counted() as statements:
        write_changes([preference, user, pending, other])
    # then: nothing is written, and all of it is still the flush's
    assert statements == []
    assert inspect(preference).modified and inspect(user).modified and pending in db.session.new
    db.session.flush()
    assert db.session.get(UserPreference, user.id).rebate_form == "balance"
    assert (
        db.session.execute(
            select(UserIdentity.openid).where(UserIdentity.user_id == user.id, UserIdentity.appid == "wx-other")
        ).scalar_one()
        == "o-1"
    )
    db.session.rollback()


def test_a_write_goes_with_its_transaction(app, make_user):
    # given: a change written this way
    user = make_user()
    user.region = "west"
    write_changes([user])
    # when: the transaction rolls back
    db.session.rollback()
    # then: the row is as it was, and so is the object (expired by the rollback, read again)
    assert stored(user.id, "region") is None
    assert db.session.get(User, user.id).region is None


def test_a_column_set_to_the_value_it_had_is_not_written_and_a_missing_row_raises(app, make_user):
    user, gone = make_user(region="north"), make_user()
    assert user.region == "north"  # (loaded: a value set over an unloaded one is written, as the flush does)
    user.region = "north"  # the same value: the flush would write nothing
    # when / then: nothing is written, and the object is clean
    with counted() as statements:
        write_changes([user])
    assert statements == []
    assert not inspect(user).modified
    # given: a row deleted behind the object's back, then the object changed
    gone_id = gone.id
    db.session.execute(text("DELETE FROM user_identities WHERE user_id = :id"), {"id": gone_id})
    db.session.execute(text("DELETE FROM users WHERE id = :id"), {"id": gone_id})
    gone.region = "south"
    # when / then: as the flush, a row that is not there is an error, not a silent nothing
    with pytest.raises(StaleDataError):
        write_changes([gone])
    db.session.rollback()


def test_inside_a_savepoint_or_with_an_expression_or_update_listeners_it_is_the_flushs(app, make_user, make_campaign):
    user, other = make_user(), make_user()
    campaign = make_campaign({"roles": []})
    # given: a change made inside a savepoint (whose rollback must expire what was written)
    with db.session.begin_nested():
        user.region = "east"
        with counted() as statements:
            write_changes([user])
        assert statements == [] and inspect(user).modified
    # and a value that is a SQL expression, and a mapper with a before_update listener (Campaign: _denormalise)
    other.nickname = User.__table__.c.region + "!"
    campaign.name = "renamed"
    with counted() as statements:
        write_changes([other, campaign])
    # then: nothing is written here; the flush writes all of it
    assert statements == []
    db.session.flush()
    assert stored(user.id, "region") == "east"
    db.session.rollback()


@pytest.mark.skipif(not on_postgres(), reason="insert_in_order is PostgreSQL's (the payouts' numbering trigger)")
def test_rows_inserted_in_order_come_back_in_that_order(app):
    from models.sql import CHUNK_ROWS, insert_in_order

    # given: more rows than one statement takes, in an order that is not any column's
    regions = [f"r{(i * 37) % 1000:03d}" for i in range(CHUNK_ROWS + 50)]
    rows = [{"region": region, "status": "active", "created_at": utcnow()} for region in regions]
    # when
    answered = insert_in_order(User.__table__, rows, ("region", "id"))
    # then: one answer per row, in the rows' order, the ids increasing with it; and they are the rows written
    assert [region for region, _ in answered] == regions
    ids = [user_id for _, user_id in answered]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(stored(user_id, "region") == region for region, user_id in answered)
    db.session.rollback()


def test_the_ordered_insert_casts_every_column_without_a_length_and_rows_must_match(app):
    from models import Payout
    from models.sql import _statement, insert_ignoring, insert_in_order

    # given: the payouts' ordered INSERT (PostgreSQL's form), as text
    columns = ("held", "request", "external_no", "retry_of_id")
    sql = str(_statement(Payout.__table__, columns, 2, (), ("external_no", "id"), ordered=True))
    # then: each column cast in the SELECT (a VALUES column NULL in every row would be text), and never to
    # VARCHAR(n), which would cut a value the INSERT must refuse
    for cast in ("CAST(held AS BOOLEAN)", "CAST(request AS JSON)", "CAST(external_no AS VARCHAR)"):
        assert cast in sql, sql
    assert "VARCHAR(" not in sql and "ORDER BY n_" in sql
    # and rows that name different columns are refused, not written with a column dropped
    rows = [{"region": "a", "status": "active"}, {"region": "b", "status": "active", "nickname": "x"}]
    with pytest.raises(ValueError, match="different columns"):
        insert_ignoring(User.__table__, rows, ())
    if on_postgres():
        with pytest.raises(ValueError, match="different columns"):
            insert_in_order(User.__table__, rows, ("region", "id"))
    else:  # SQLite names no VALUES columns: the ordered form is PostgreSQL's
        with pytest.raises(NotImplementedError):
            insert_in_order(User.__table__, rows[:1], ("region", "id"))
    db.session.rollback()
