"""Pooled PostgreSQL connections are pinged only after sitting idle (app._ping_idle_connections).

A ping on every checkout was a round trip on every request; a busy connection skips it, and an
idle one that died meanwhile (a restart, a failover) is replaced before a request uses it.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, event, text

import app as app_module
from models import db
from tests.conftest import PG_URL, on_postgres

pytestmark = pytest.mark.skipif(not on_postgres(), reason="the pool's ping is PostgreSQL's (SQLite has no server)")


def _backend_pid() -> int:
    with db.engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(pid: int) -> None:
    """As a restart would: from a connection of another pool, while ours sits idle in its pool."""
    killer = create_engine(PG_URL)
    with killer.begin() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    killer.dispose()


def _statements_on_checkout() -> list[str]:
    seen: list[str] = []

    def listen(_conn, _cursor, statement, *_args):
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", listen)
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 41 + 1"))
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)
    return seen


def test_a_connection_in_steady_use_is_not_pinged(app):
    _backend_pid()  # the pool now holds a connection used a moment ago
    assert _statements_on_checkout() == ["SELECT 41 + 1"]


def test_an_idle_connection_that_died_is_replaced_before_use(app, monkeypatch):
    before = _backend_pid()
    _terminate(before)
    monkeypatch.setattr(app_module, "IDLE_PING_S", 0.0)  # every pooled connection now counts as idle
    after = _backend_pid()  # no error: the dead one was pinged, found dead and replaced
    assert after != before


def test_without_the_idle_ping_the_dead_connection_would_have_failed(app, monkeypatch):
    """The test above proves something: with the threshold out of reach, the same death is seen by the query."""
    before = _backend_pid()
    _terminate(before)
    monkeypatch.setattr(app_module, "IDLE_PING_S", 3600.0)
    with pytest.raises(Exception, match="terminat|closed|connection"):
        _backend_pid()
    assert _backend_pid() != before  # the pool saw the disconnect and starts afresh


def test_a_request_whose_connection_died_between_busy_moments_answers_503(
    app, client, monkeypatch, make_user, user_headers
):
    headers = user_headers(make_user())
    before = _backend_pid()
    _terminate(before)
    monkeypatch.setattr(app_module, "IDLE_PING_S", 3600.0)  # busy: no ping, the request meets the dead connection
    response = client.get("/api/v1/me/notices", headers=headers)
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert client.get("/api/v1/me/notices", headers=headers).status_code == 200  # the next one is served
