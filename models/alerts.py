"""Alerts: something an operator must look at. Written in the caller's transaction and logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime

from sqlalchemy import String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, db, utcnow

log = logging.getLogger("alerts")


class Alert(Base):
    """Something an operator must look at (amount mismatch, failed refund, …)."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), index=True)
    subject: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # sent to ALERT_WEBHOOK_URL


def raise_alert(kind: str, subject: str, message: str) -> Alert:
    alert = Alert(kind=kind, subject=subject[:64], message=message)
    db.session.add(alert)
    log.warning("alert", extra={"alert_kind": kind, "subject": subject, "alert_message": message})
    return alert


def alert_once(kind: str, subject: str, message: str | None = None, *, text: str | None = None) -> None:
    """Raise an alert unless the same one is still open (WeChat retries a callback for 24 h).

    Same means same kind and subject, and also the same message when ``message`` is given to match on;
    ``text`` is what a new alert says when it differs from the matched message.
    """
    match = [Alert.kind == kind, Alert.subject == subject[:64], Alert.resolved_at.is_(None)]
    if message is not None:
        match.append(Alert.message == message)
    if db.session.execute(select(Alert.id).where(*match)).first() is None:
        raise_alert(kind, subject, text or message or "")


def guarded_row(kind: str, what: str, row_id: int, step, *args) -> bool:
    """``step(*args)`` in a savepoint: True when it ran; on a failure its work is rolled back alone, logged with the
    row's id and an operator alerted once (``kind``), and False (a job's batch goes on with the next row)."""
    try:
        with db.session.begin_nested():
            step(*args)
    except Exception as exc:
        row_failure(kind, what, row_id, exc)
        return False
    return True


def row_failure(kind: str, what: str, row_id: int | str, error: Exception) -> None:
    """A job's row that failed (its work rolled back): logged with its id, an operator told once (``kind``, subject
    ``<what> <id>``). In the caller's transaction."""
    log.error("%s %s failed", what, row_id, exc_info=error, extra={f"{what}_id": row_id})
    alert_once(kind, f"{what} {row_id}", text=f"{what} {row_id} failed and was skipped: {error!r}"[:2000])


def resolve_alerts(kind: str, subject: str, message: str | None = None) -> int:
    """Mark the open alerts ``alert_once`` would match resolved (what they said is over); how many. In the caller's
    transaction. The next time it happens, ``alert_once`` raises it again."""
    match = [Alert.kind == kind, Alert.subject == subject[:64], Alert.resolved_at.is_(None)]
    if message is not None:
        match.append(Alert.message == message)
    done = db.session.execute(
        update(Alert).where(*match).values(resolved_at=utcnow()).execution_options(synchronize_session="fetch")
    )
    return done.rowcount or 0


_busy_rows: ContextVar[set[tuple[str, str, str]] | None] = ContextVar("busy_rows", default=None)


@contextmanager
def noting_busy_rows() -> Iterator[set[tuple[str, str, str]]]:
    """The rows (``kind``, ``what``, ``row id``) a job's run deferred as busy (``row_busy``), gathered while it runs
    (``jobs.scheduler.in_app``, which alerts when the same row stays busy run after run)."""
    rows: set[tuple[str, str, str]] = set()
    token = _busy_rows.set(rows)
    try:
        yield rows
    finally:
        _busy_rows.reset(token)


def row_busy(kind: str, what: str, row_id: int | str) -> None:
    """A job's row deferred to its next run: the database busy. Noted for the run around it, if any."""
    rows = _busy_rows.get()
    if rows is not None:
        rows.add((kind, what, str(row_id)))
