"""Bans: who or what is banned now, in one statement, and why.

A ban names a subject (``user``, ``device``, ``merchant``, ``net``) and a value: the user's or merchant's
id, the server-issued device id, or a network address — a single IP or the /24 (/48) ``risk.net.net_of``
gives; an address is banned when either its own value or its network's is. A ban is active from its
creation until ``ends_at`` (None: until lifted) unless lifted. A ban two operators made (``made_by_two``: a review
case's ban outcome a second reviewer approved) takes two to lift as well. Creating and lifting bans, and what they do
to a person's money, are operations above this module (``rebate.ban_ops``); here only the facts, and the
check a claim folds into its first read (``banned_column``: no statement of its own on the hot path).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import String, and_, bindparam, exists, or_, select

from models import Ban, BanSubject, ReviewCase, db
from risk.net import address_of, net_of


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
        ip = address_of(ip) or ip
        pairs.append(("net", ip))
        net = net_of(ip)
        if net and net != ip:
            pairs.append(("net", net))
    if merchant_id is not None:
        pairs.append(("merchant", str(merchant_id)))
    return pairs


def in_force(now, ban=Ban):
    """The condition that a ban (``ban``: the table or an alias) is in force at ``now`` (a value or a parameter)."""
    return and_(ban.lifted_at.is_(None), or_(ban.ends_at.is_(None), ban.ends_at > now))


# Two lifts whose clocks are this close are not ordered by them: a lift's ``now`` is taken when its request starts
# (it may then wait on the other's locks) and another node's clock may run a little behind. Within it, a ban lifted
# after a release's lift does not count as having stood then (``stood_at``): both lifts' releases pay, rather than
# each finding the other standing and neither paying.
LIFTS_APART = timedelta(minutes=1)


def stood_at(at, ban=Ban):
    """The condition that a ban stood at the past instant ``at``: made by then, and neither ended nor lifted by then
    (one lifted at ``at`` itself no longer stood; nor one lifted less than ``LIFTS_APART`` after it)."""
    return and_(
        ban.created_at <= at,
        or_(ban.lifted_at.is_(None), ban.lifted_at > at + LIFTS_APART),
        or_(ban.ends_at.is_(None), ban.ends_at > at),
    )


def active_bans(pairs: Iterable[tuple[str, str]], now: datetime, *, or_at: datetime | None = None) -> list[Ban]:
    """The bans active at ``now`` on any of ``pairs``, oldest first (one statement; none asked: none); with ``or_at``
    also those that stood then (``stood_at``: a lift's release replays as of its lift, when other bans may have
    stood that are lifted since)."""
    pairs = list(pairs)
    if not pairs:
        return []
    standing = in_force(now) if or_at is None else or_(in_force(now), stood_at(or_at))
    stmt = select(Ban).where(or_(*(and_(Ban.subject == s, Ban.value == v) for s, v in pairs)), standing)
    return list(db.session.execute(stmt.order_by(Ban.id)).scalars())


def made_by_two(ban_ids: Iterable[int]) -> set[int]:
    """Which of these bans two operators made (one statement; none asked: none): those of a review case decided by a
    second reviewer approving what a first proposed (``rebate.reviews``: a case holding more than
    ``RISK_SECOND_APPROVAL_FEN``). A decided case never changes, so neither does the answer. A ban from the bans
    screen, or of a case one reviewer decided alone, is one operator's."""
    ids = sorted(set(ban_ids))
    if not ids:
        return set()
    stmt = (
        select(Ban.id)
        .join(ReviewCase, ReviewCase.id == Ban.case_id)
        .where(Ban.id.in_(ids), ReviewCase.proposed_by.is_not(None))
    )
    return set(db.session.execute(stmt).scalars())


IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def normalise_net(value: str) -> str:
    """A banned network address as bans keep it: one IP (``"10.1.2.7"``) or a network (``"10.1.2.0/24"``).

    ``ValueError`` for anything else. A network must be an IPv4 /24 or an IPv6 /48 (what ``net_of`` gives and
    claims look up), or a single address written as /32 or /128. An IPv4 network written IPv4-mapped
    (``::ffff:10.1.2.0/120``, as a dual-stack socket logs its clients) is that IPv4 network: requests from such
    addresses are looked up as IPv4 (``risk.net``), so an IPv6 network reaching over them would ban none of them."""
    text = value.strip()
    if "%" in text:
        raise ValueError("a banned address has no zone id (the part after %): it names an interface of one machine")
    if "/" not in text:
        return address_of(text) or str(ipaddress.ip_address(text))
    network = ipaddress.ip_network(text, strict=False)
    if network.version == 6 and network.overlaps(IPV4_MAPPED):
        if network.prefixlen < IPV4_MAPPED.prefixlen:
            raise ValueError(
                f"{network} reaches over the IPv4-mapped addresses (::ffff:a.b.c.d), which are looked up as IPv4: "
                "ban the IPv4 address or /24 itself"
            )
        mapped = network.network_address.ipv4_mapped
        network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - IPV4_MAPPED.prefixlen}")
    if network.prefixlen == network.max_prefixlen:
        return address_of(str(network.network_address))
    wanted = 24 if network.version == 4 else 48
    if network.prefixlen != wanted:
        raise ValueError(
            f"a banned network is an IPv{network.version} /{wanted} or one address, not /{network.prefixlen}"
        )
    return str(network)


@functools.cache
def banned_column():
    """``EXISTS`` an active ban on the bound device or address, as a column a claim's first read selects.

    Binds ``ban_device``, ``ban_ip``, ``ban_net`` (None: nothing to match) and ``ban_now`` (``ban_params``)."""
    now = bindparam("ban_now", type_=Ban.__table__.c.created_at.type)
    device, ip, net = (bindparam(name, type_=String) for name in ("ban_device", "ban_ip", "ban_net"))
    return (
        exists()
        .where(
            or_(
                and_(Ban.subject == "device", Ban.value == device), and_(Ban.subject == "net", Ban.value.in_([ip, net]))
            ),
            in_force(now),
        )
        .label("banned")
    )


def ban_params(device: str | None, ip: str | None, now: datetime) -> dict:
    """The values ``banned_column`` is bound with for a claim from ``device`` at address ``ip``."""
    return {"ban_device": device, "ban_ip": address_of(ip) or ip, "ban_net": net_of(ip), "ban_now": now}


def refused_by(bans: Iterable[Ban], buyer_id: int) -> dict[tuple[str, int], str]:
    """Whom ``bans`` refuse on an order of ``buyer_id``, with the first ban's words for each: the person or merchant
    banned, and for a ban on the order's device or network, the buyer."""
    refused: dict[tuple[str, int], str] = {}
    for ban in bans:
        on_order = ban.subject in (BanSubject.DEVICE, BanSubject.NET)
        refused.setdefault(("user", buyer_id) if on_order else (ban.subject, int(ban.value)), ban_words(ban))
    return refused


def ban_words(ban: Ban) -> str:
    """What a refusal says in the trace: which ban, on what, and why."""
    until = f" until {ban.ends_at:%Y-%m-%d %H:%M} UTC" if ban.ends_at else ""
    return f"{ban.subject} {ban.value} is banned{until} (ban {ban.id}: {ban.reason})"
