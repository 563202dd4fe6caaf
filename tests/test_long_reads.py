"""Long reads (a risk rule backtest, an audience's count, a what-if replay) are gated (``models.sql.reading_apart``).

Each can read a million orders for up to a minute. An operator (or a stolen support token) firing them in a loop
had every database connection busy with them: now at most ``LONG_READS_AT_ONCE`` run at once, one at a time per
operator, the others answered 429 + Retry-After at once (nothing waits); on PostgreSQL the gate is advisory locks of
the read's own transaction (every process shares it) and a read stops after ``LONG_READ_TIMEOUT_S``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import pytest
from sqlalchemy import func, select, text

from models import AuditLog, db
from models.sql import LongReadBusy, LongReadTooLong, long_reads_by, reading_apart
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


@pytest.mark.skipif(not on_postgres(), reason="SQLite has no statement timeout")
def test_a_long_read_stops_after_its_timeout_on_postgresql(app):
    app.config["LONG_READ_TIMEOUT_S"] = 1
    db.session.commit()
    with pytest.raises(LongReadTooLong, match="past 1 s"), reading_apart() as reader:
        reader.execute(text("SELECT pg_sleep(3)")).all()
    # the timeout was the read's own transaction's: the session's statements are not limited by it
    assert db.session.execute(text("SHOW statement_timeout")).scalar() == "0"


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
