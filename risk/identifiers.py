"""Which devices and network addresses each person, and each merchant's staff, have used.

``note`` is called where a request says who is there and from where: the behaviour trail, logins, order
creation, and merchant staff's admin requests. It is ONE ``INSERT … ON CONFLICT DO UPDATE … WHERE`` (the
same SQL on PostgreSQL and SQLite) that adds what is new and moves ``last_seen`` only when the stored one is
older than ``FRESH`` (a busy person's requests do not rewrite their rows). The reads the scorer uses are
one statement each.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import String, bindparam, func, select, text, tuple_
from sqlalchemy.sql.elements import TextClause

from models import db
from models.risk import RiskIdentifier
from models.sql import WRITES
from risk.net import net_of

FRESH = timedelta(minutes=10)  # last_seen is moved when older than this
DEVICE, NET = "device", "net"
USER, MERCHANT = "user", "merchant"


def kinds_of(device: str | None, ip: str | None) -> list[tuple[str, str]]:
    """The (kind, value) pairs a request carries: its device and its network address (``risk.net.net_of``)."""
    net = net_of(ip)
    return [(kind, value) for kind, value in ((DEVICE, device), (NET, net)) if value]


def note(owner_type: str, owner_id: int, device: str | None, ip: str | None, now: datetime) -> None:
    """Record that this owner used this device and network address (one statement; none when neither is known)."""
    pairs = kinds_of(device, ip)
    if not pairs:
        return
    params: dict[str, object] = {"t": owner_type, "o": owner_id, "now": now, "stale": now - FRESH}
    for i, (kind, value) in enumerate(pairs):
        params[f"k{i}"], params[f"v{i}"] = kind, value
    db.session.execute(_upsert(len(pairs)), params)


@functools.cache
def _upsert(rows: int) -> TextClause:
    """``note``'s statement for 1 or 2 identifiers (device before net: one lock order on PostgreSQL)."""
    values = ", ".join(f"(:k{i}, :v{i}, :t, :o, :now, :now)" for i in range(rows))
    sql = (
        "INSERT INTO risk_identifiers (kind, value, owner_type, owner_id, first_seen, last_seen) "  # noqa: S608
        f"VALUES {values} ON CONFLICT (kind, value, owner_type, owner_id) "
        "DO UPDATE SET last_seen = excluded.last_seen WHERE risk_identifiers.last_seen < :stale"
    )
    when = RiskIdentifier.__table__.c.last_seen.type
    owner = RiskIdentifier.__table__.c.owner_id.type
    strings = [bindparam(f"{k}{i}", type_=String) for i in range(rows) for k in "kv"]
    return (
        text(sql)
        .bindparams(
            bindparam("now", type_=when),
            bindparam("stale", type_=when),
            bindparam("t", type_=String),
            bindparam("o", type_=owner),
            *strings,
        )
        .execution_options(**WRITES)
    )


def accounts_on(kind: str, value: str) -> int:
    """How many people (distinct user owners) have used this device or network address."""
    return db.session.execute(
        select(func.count(RiskIdentifier.owner_id.distinct())).where(
            RiskIdentifier.kind == kind, RiskIdentifier.value == value, RiskIdentifier.owner_type == USER
        )
    ).scalar_one()


def identifiers_of(owner_type: str, owner_id: int) -> list[tuple[str, str]]:
    """Every (kind, value) this owner has used."""
    rows = db.session.execute(
        select(RiskIdentifier.kind, RiskIdentifier.value)
        .where(RiskIdentifier.owner_type == owner_type, RiskIdentifier.owner_id == owner_id)
        .order_by(RiskIdentifier.kind, RiskIdentifier.value)
    )
    return [(kind, value) for kind, value in rows]


def shared(kind_values_of_a: Iterable[tuple[str, str]], owner_b: tuple[str, int]) -> bool:
    """Has ``owner_b`` (``("user", 12)``, ``("merchant", 3)``) used any of these (kind, value) pairs?"""
    pairs = list(dict.fromkeys(kind_values_of_a))
    if not pairs:
        return False
    owner_type, owner_id = owner_b
    found = db.session.execute(
        select(RiskIdentifier.id)
        .where(
            RiskIdentifier.owner_type == owner_type,
            RiskIdentifier.owner_id == owner_id,
            tuple_(RiskIdentifier.kind, RiskIdentifier.value).in_(pairs),
        )
        .limit(1)
    ).first()
    return found is not None
