"""Bans: who or what is banned now, in one statement, and why.

A ban names a subject (``user``, ``device``, ``merchant``, ``net``) and a value: the user's or merchant's
id, the server-issued device id, or a network address — a single IP or the /24 (/48) ``risk.net.net_of``
gives; an address is banned when either its own value or its network's is. A ban is active from its
creation until ``ends_at`` (None: until lifted) unless lifted. Creating and lifting bans, and what they do
to a person's money, are operations above this module (``rebate.reviews``); here only the facts.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, or_, select

from models import Ban, db
from risk.net import net_of


def subjects(
    *, user_id: int | None = None, device: str | None = None, ip: str | None = None, merchant_id: int | None = None
) -> list[tuple[str, str]]:
    """The (subject, value) pairs a person, device, address or merchant is banned under."""
    pairs = []
    if user_id is not None:
        pairs.append(("user", str(user_id)))
    if device:
        pairs.append(("device", device))
    if ip:
        pairs.append(("net", ip))
        net = net_of(ip)
        if net and net != ip:
            pairs.append(("net", net))
    if merchant_id is not None:
        pairs.append(("merchant", str(merchant_id)))
    return pairs


def active_bans(pairs: Iterable[tuple[str, str]], now: datetime) -> list[Ban]:
    """The bans active at ``now`` on any of ``pairs``, oldest first (one statement; none asked: none)."""
    pairs = list(pairs)
    if not pairs:
        return []
    stmt = (
        select(Ban)
        .where(
            or_(*(and_(Ban.subject == s, Ban.value == v) for s, v in pairs)),
            Ban.lifted_at.is_(None),
            or_(Ban.ends_at.is_(None), Ban.ends_at > now),
        )
        .order_by(Ban.id)
    )
    return list(db.session.execute(stmt).scalars())


def ban_words(ban: Ban) -> str:
    """What a refusal says in the trace: which ban, on what, and why."""
    until = f" until {ban.ends_at:%Y-%m-%d %H:%M} UTC" if ban.ends_at else ""
    return f"{ban.subject} {ban.value} is banned{until} (ban {ban.id}: {ban.reason})"
