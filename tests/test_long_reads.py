"""Long reads (a risk rule backtest, an audience's count, a what-if replay) are gated (``models.sql.reading_apart``).

Each can read a million orders for up to a minute. An operator (or a stolen support token) firing them in a loop
had every database connection busy with them: now at most ``LONG_READS_AT_ONCE`` run at once, one at a time per
operator, the others answered 429 + Retry-After at once (nothing waits); on PostgreSQL the gate is advisory locks of
the read's own transaction (every process shares it). A read stops after ``LONG_READ_TIMEOUT_S``, all its statements
together, on both databases.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest
from sqlalchemy import func, select, text

from models import AuditLog, db
from models.sql import LongReadBusy, LongReadTooLong, in_time, long_reads_by, reading_apart
from tests.concurrency import writer_meanwhile
from tests.conftest import on_postgres
from tests.test_audiences import LAPSED_30
from tests.test_risk_backtest import BACKTEST, DRAFT
from tests.test_simulate import CURRENT, NOW, at, history, packet_campaign, shop  # noqa: F401 - fixtures
from web.errors import from_domain

PREVIEW = "/admin/api/audiences/preview"


@contextmanager
def held(app, reader: str | None = None) -> Iterator[None]:
    """A long read of ``reader``'s (None: nobody's in particular) running in another thread while inside."""
    started, finish, failed = threading.Event(), threading.Event(), []

    def read() -> None:
        try:
            with app.app_context(), long_reads_by(reader) if reader else nullcontext(), reading_apart() as reader_:
                reader_.execute(select(func.count()).select_from(AuditLog)).scalar()
                started.set()
                finish.wait(20)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            failed.append(exc)
            started.set()

    thread = threading.Thread(target=read)
    thread.start()
    assert started.wait(20)
    assert not failed, failed
    try:
        yield
    finally:
        finish.set()
        thread.join(20)


@pytest.fixture
def operators(make_operator):
    (one, one_headers), (other, other_headers) = make_operator("admin"), make_operator("admin")
    db.session.commit()
    return (one, one_headers), (other, other_headers)


def backtest(client, headers):
    return client.post(BACKTEST, json={"rules": DRAFT}, headers=headers)


def busy(response) -> bool:
    return (response.status_code, response.json["error"], response.headers.get("Retry-After")) == (
        429,
        "long_read_busy",
        "5",
    )


def test_an_operator_runs_one_long_read_at_a_time(app, client, operators):
    (one, one_headers), (_, other_headers) = operators
    # given: room for two long reads, and one of the first operator's running
    app.config["LONG_READS_AT_ONCE"] = 2
    with held(app, f"operator:{one.id}"):
        # when: the same operator asks for another; then another operator does
        mine, theirs = backtest(client, one_headers), backtest(client, other_headers)
    # then: the first is refused at once, the other runs; once it ended, the first operator's runs too
    assert busy(mine), (mine.status_code, mine.json)
    assert theirs.status_code == 200, theirs.json
    assert backtest(client, one_headers).status_code == 200


def test_long_reads_at_once_are_bounded_for_every_kind_of_long_read(
    app,
    client,
    operators,
    history,
    packet_campaign,  # noqa: F811
):
    (_, one_headers), _ = operators
    app.config["LONG_READS_AT_ONCE"] = 1
    simulate = f"/admin/api/campaigns/{packet_campaign.id}/simulate"
    db.session.commit()
    with held(app), at(NOW):  # the one slot taken, by nobody in particular
        answers = [
            backtest(client, one_headers),
            client.post(PREVIEW, json={"definition": LAPSED_30}, headers=one_headers),
            client.post(simulate, json={"rules": CURRENT, "days": 30}, headers=one_headers),
        ]
    assert all(busy(a) for a in answers), [(a.status_code, a.json) for a in answers]
    # and nothing was left taken: each runs again
    with at(NOW):
        assert backtest(client, one_headers).status_code == 200
        assert client.post(PREVIEW, json={"definition": LAPSED_30}, headers=one_headers).status_code == 200
        assert client.post(simulate, json={"rules": CURRENT, "days": 30}, headers=one_headers).status_code == 200


def test_a_long_read_that_failed_gives_its_slot_back(app):
    app.config["LONG_READS_AT_ONCE"] = 1
    db.session.commit()
    with pytest.raises(ZeroDivisionError), long_reads_by("operator:1"), reading_apart() as reader:
        reader.execute(select(1)).scalar()
        raise ZeroDivisionError
    with long_reads_by("operator:1"), reading_apart() as reader:
        assert reader.execute(select(1)).scalar() == 1


def test_the_errors_answer_429_and_422():
    busy_answer = from_domain(LongReadBusy("2 long reads are running; retry shortly"))
    assert (busy_answer.status, busy_answer.code, busy_answer.retry_after) == (429, "long_read_busy", 5)
    too_long = from_domain(LongReadTooLong("the read ran past 1 s"))
    assert (too_long.status, too_long.code) == (422, "read_too_long")


def closed(driver) -> bool:
    if isinstance(driver, sqlite3.Connection):
        try:
            driver.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            return True
        return False
    return driver.closed


COUNT_TO_A_BILLION = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c"
)


def test_a_long_statement_is_interrupted_at_the_deadline(app):
    app.config["LONG_READ_TIMEOUT_S"] = 1
    db.session.commit()
    started = time.monotonic()
    with pytest.raises(LongReadTooLong, match="past 1 s"), reading_apart() as reader:
        driver = reader.connection.driver_connection
        reader.execute(text(COUNT_TO_A_BILLION)).all()
    assert time.monotonic() - started < 2.8  # interrupted (PostgreSQL: a cancel, before its 3 s backstop; SQLite:
    # interrupt()), not finished
    assert closed(driver)  # never pooled again: a cancel still on its way stops nobody else's statement
    # the session's own statements are not limited by it
    assert db.session.execute(select(1)).scalar() == 1
    if on_postgres():
        assert db.session.execute(text("SHOW statement_timeout")).scalar() == "0"


def test_a_read_of_many_short_statements_ends_at_the_deadline_too(app):
    """A backtest reads a thousand orders at a time, and their campaigns: many statements, each short."""
    app.config["LONG_READ_TIMEOUT_S"] = 1
    db.session.commit()
    started, statements = time.monotonic(), 0
    with pytest.raises(LongReadTooLong), reading_apart() as reader:
        while time.monotonic() - started < 10:
            reader.execute(select(1)).scalar()
            statements += 1
            time.sleep(0.05)
    assert 1 <= time.monotonic() - started < 3 and statements >= 5


def test_a_batch_loop_checks_its_deadline_between_batches(app):
    app.config["LONG_READ_TIMEOUT_S"] = 1
    db.session.commit()
    with pytest.raises(LongReadTooLong), reading_apart():
        in_time()  # in time: nothing
        time.sleep(1.3)  # (the caller's own work between batches)
        in_time()
    in_time()  # outside a long read: nothing to check


def test_the_replay_is_read_apart_and_never_holds_the_writers(
    app,
    client,
    operators,
    history,
    packet_campaign,  # noqa: F811
):
    """On SQLite every transaction begins IMMEDIATE: a what-if replay over a year of a busy campaign held every
    payment, claim and job meanwhile. While it reads, a writer commits at once."""
    (_, headers), _ = operators
    campaign_id = packet_campaign.id
    reads_orders = lambda sql: "FROM orders" in sql and "red_packets" in sql  # noqa: E731
    touch = "UPDATE orders SET risk_score = risk_score WHERE id = (SELECT min(id) FROM orders)"
    db.session.commit()
    with writer_meanwhile(reads_orders, touch) as wrote_meanwhile, at(NOW):
        response = client.post(
            f"/admin/api/campaigns/{campaign_id}/simulate", json={"rules": CURRENT, "days": 30}, headers=headers
        )
    assert response.status_code == 200, response.json
    assert wrote_meanwhile and all(wrote_meanwhile)
    assert response.json["current"]["orders"] == 4
