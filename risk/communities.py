"""Collusion: a graph of people, merchants, devices and network addresses, its communities, and their scores.

The graph covers the last ``days`` (``RISK_GRAPH_DAYS``) and is read with a handful of GROUP BY queries
(never row by row), each capped at ``max_rows`` rows (the heaviest first):

* ``user:<id>`` – ``merchant:<id>``: paid orders, weight ``orders / ln(customers of the merchant + e)``
  (FRAUDAR's column weighting: a busy shop's hundreds of honest customers do not glue a ring to it);
* packet issuer (``user:<id>`` or ``merchant:<id>``) – spender ``user:<id>``: packets spent, weighted
  the same way by the issuer's number of spenders (platform packets link nobody);
* ``user:<id>`` / ``merchant:<id>`` (its staff) – ``device:<token>`` (weight 3) and ``net:<cidr>`` (weight 1)
  from ``risk_identifiers``, for identifiers seen with 2 to ``max_owners`` owners (a leaf adds nothing; a
  public Wi-Fi or a carrier's address block would join strangers);
* inviter – invitee (``users.inviter_id``), weight 1.

Payees add nothing: a payout goes to its user (``payouts.user_id``, through that user's own openid), so
``payee:<openid>`` would be a leaf of ``user:<id>``; they are left out.

Communities: ``networkx.community.louvain_communities(G, weight="weight", resolution, seed)`` (fixed
seed: the same data gives the same communities on every node). Each community of at least 3 members
with at least one user is scored in [0, 1]::

    score = S × (0.25 + 0.75·P) × (0.25 + 0.75·N) × (0.75 + 0.25·R)

* S, the shared-identity ratio: (its users sharing a device with another member or a merchant's staff
  + 0.3 × those sharing only a network address) ÷ max(users, 4). Honest shoppers have their own phones,
  so a community without shared identifiers scores 0 whatever else it does; fewer than 4 users cannot
  reach S = 1 (two people on one family phone score at most 0.5 × …).
* P, the promotion share: the larger of (its users' orders that spent a packet ÷ their orders) and
  (its users invited by a member ÷ its users).
* N, the new-account share: its users younger than 7 days at their first order (or now, without one).
* R, refunds after a rebate: rebated orders refunded ÷ rebated orders (0 without any); it raises the
  score, it never zeroes it.

A community that is not suspicious as a whole has its identity cores scored too: its members joined
by shared devices or network addresses, two users or more (a ring ordering at a busy shop with the
shop's packets is tied to the shop as strongly as to its phone, so Louvain may put it in the shop's
community). A community is suspicious when score ≥ ``threshold`` (``RISK_COMMUNITY_THRESHOLD``, default 0.4: e.g. 4
accounts on one device, all new, 70 % of orders with a packet, no refunds → 1 × 0.775 × 1 × 0.75 = 0.58).
Communities scoring at least half the threshold are stored (``risk_communities``, the watch list; the
rest are not, so the table does not grow by every shop's customers every run). The fingerprint is the
SHA-256 of the sorted members: the same community is stored once (``INSERT … ON CONFLICT DO NOTHING``)
and its case opened once (``review_cases.community_id`` is unique); one stored on the watch list that scores
suspicious later (the same members, more packets or refunds) takes its new score and reasons then and opens its
case (a conditional UPDATE: once, whatever the nodes at once). A changed community has a new
fingerprint; while a stored suspicious community sharing ≥ 80 % of its members (Jaccard) still has an
undecided case, the new one is stored but opens no second case (its reasons say which it continues).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import networkx as nx
from sqlalchemy import and_, case, func, or_, select

from models import (
    CaseStatus,
    Order,
    OrderStatus,
    Rebate,
    RedPacket,
    ReviewCase,
    RiskCommunity,
    RiskIdentifier,
    RiskProfile,
    User,
    db,
)
from models.sql import insert_ignoring
from risk.cases import open_community_case

NEW_ACCOUNT = timedelta(days=7)
DEVICE_WEIGHT = 3.0
NET_WEIGHT = 1.0
REFERRAL_WEIGHT = 1.0
NET_ONLY_CREDIT = 0.3
OVERLAP = 0.8  # Jaccard at which a new community continues an open case's community


@dataclass(frozen=True)
class GraphSettings:
    days: int = 30  # RISK_GRAPH_DAYS
    threshold: float = 0.4  # RISK_COMMUNITY_THRESHOLD
    resolution: float = 1.0
    seed: int = 12
    max_rows: int = 200_000  # per aggregate query (the heaviest rows first)
    max_owners: int = 50  # an identifier with more owners is public (Wi-Fi, carrier block) and ignored


@dataclass
class Facts:
    """What the queries read, keyed by node name."""

    orders: Counter = field(default_factory=Counter)  # user -> paid orders
    packet_orders: Counter = field(default_factory=Counter)  # user -> orders that spent a packet
    by_issuer: dict = field(default_factory=lambda: defaultdict(Counter))  # user -> issuer node -> orders
    at_merchant: dict = field(default_factory=lambda: defaultdict(Counter))  # user -> merchant node -> orders
    rebated: Counter = field(default_factory=Counter)  # user -> orders with a rebate
    refunded_rebated: Counter = field(default_factory=Counter)
    new_account: dict = field(default_factory=dict)  # user -> bool
    inviter: dict = field(default_factory=dict)  # user -> inviter node
    owners: dict = field(default_factory=lambda: defaultdict(set))  # device / net node -> owner nodes
    rebate_fen: dict = field(default_factory=lambda: defaultdict(Counter))  # buyer -> beneficiary node -> fen
    truncated: list = field(default_factory=list)  # which queries hit max_rows


@dataclass
class Graph:
    graph: nx.Graph
    facts: Facts
    read_seconds: float = 0.0


@dataclass
class Scored:
    members: list[str]
    score: float
    suspicious: bool
    reasons: list[str]
    merchant_id: int | None
    concerned_fen: int
    users: list[str]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.members).encode()).hexdigest()


def _u(i: int) -> str:
    return f"user:{i}"


def _m(i: int) -> str:
    return f"merchant:{i}"


def _add(g: nx.Graph, a: str, b: str, w: float) -> None:
    if a == b:
        return
    if g.has_edge(a, b):
        g[a][b]["weight"] += w
    else:
        g.add_edge(a, b, weight=w)


def _capped(stmt, cap: int, name: str, facts: Facts) -> list:
    rows = db.session.execute(stmt.limit(cap)).all()
    if len(rows) >= cap:
        facts.truncated.append(name)
    return rows


def build_graph(now: datetime, settings: GraphSettings) -> Graph:
    """Read the last ``settings.days`` with aggregate queries and build the weighted graph."""
    started = time.perf_counter()
    since = now - timedelta(days=settings.days)
    cap = settings.max_rows
    facts = Facts()
    paid = and_(Order.paid_at >= since, Order.paid_at < now, Order.status.in_((OrderStatus.PAID, OrderStatus.REFUNDED)))
    count = func.count()

    # Orders, by buyer, merchant and the first packet's issuer.
    keys = (
        Order.user_id,
        Order.merchant_id,
        RedPacket.issuer_type,
        RedPacket.issuer_user_id,
        RedPacket.issuer_merchant_id,
        Order.packet_id.is_not(None),
    )
    rows = _capped(
        select(*keys, count)
        .select_from(Order)
        .outerjoin(RedPacket, RedPacket.id == Order.packet_id)
        .where(paid)
        .group_by(*keys)
        .order_by(count.desc()),
        cap,
        "orders",
        facts,
    )
    pair_orders: Counter = Counter()  # (user, merchant) -> orders
    issued: Counter = Counter()  # (issuer, user) -> packets spent
    for user_id, merchant_id, issuer_type, issuer_user, issuer_merchant, with_packet, n in rows:
        user, merchant = _u(user_id), _m(merchant_id)
        pair_orders[user, merchant] += n
        facts.orders[user] += n
        facts.at_merchant[user][merchant] += n
        if with_packet:
            facts.packet_orders[user] += n
            issuer = (
                _u(issuer_user)
                if issuer_type == "user" and issuer_user
                else _m(issuer_merchant)
                if issuer_type == "merchant" and issuer_merchant
                else "platform"
            )
            facts.by_issuer[user][issuer] += n
            if issuer != "platform":
                issued[issuer, user] += n

    # Orders with a rebate, and those refunded afterwards.
    rebated = select(Rebate.order_id).where(Rebate.original_fen > 0)
    rows = _capped(
        select(Order.user_id, count, func.sum(case((Order.refunded_fen > 0, 1), else_=0)))
        .where(paid, Order.id.in_(rebated))
        .group_by(Order.user_id)
        .order_by(count.desc()),
        cap,
        "rebated",
        facts,
    )
    for user_id, n, refunded in rows:
        facts.rebated[_u(user_id)] = n
        facts.refunded_rebated[_u(user_id)] = int(refunded or 0)

    # Rebates each buyer's orders paid, by beneficiary (what a community's case concerns).
    keys, total = (
        (Order.user_id, Rebate.beneficiary_type, Rebate.beneficiary_id),
        func.sum(Rebate.amount_fen + Rebate.held_fen),
    )
    rows = _capped(
        select(*keys, total)
        .join(Order, Order.id == Rebate.order_id)
        .where(paid, Rebate.original_fen > 0, Rebate.beneficiary_type.in_(("user", "merchant")))
        .group_by(*keys)
        .order_by(total.desc()),
        cap,
        "rebate_fen",
        facts,
    )
    for user_id, kind, beneficiary, fen in rows:
        facts.rebate_fen[_u(user_id)][f"{kind}:{beneficiary}"] += int(fen or 0)

    # The people: age at first order, inviter.
    first = (
        select(Order.user_id.label("user_id"), func.min(Order.paid_at).label("first_at"))
        .where(paid)
        .group_by(Order.user_id)
        .subquery()
    )
    rows = _capped(
        select(User.id, User.created_at, User.inviter_id, first.c.first_at, RiskProfile.first_order_at)
        .outerjoin(first, first.c.user_id == User.id)
        .outerjoin(RiskProfile, RiskProfile.user_id == User.id)
        .where(or_(first.c.user_id.is_not(None), User.created_at >= since, User.invited_at >= since))
        .order_by(User.id.desc()),
        cap,
        "users",
        facts,
    )
    for user_id, created_at, inviter_id, first_at, profile_first in rows:
        starts = [t for t in (first_at, profile_first) if t is not None]
        at = min(starts) if starts else now
        facts.new_account[_u(user_id)] = at - created_at < NEW_ACCOUNT
        if inviter_id is not None:
            facts.inviter[_u(user_id)] = _u(inviter_id)

    # Identifiers seen with 2 to max_owners owners.
    ident = RiskIdentifier
    shared = (
        select(ident.kind, ident.value)
        .where(ident.last_seen >= since)
        .group_by(ident.kind, ident.value)
        .having(func.count().between(2, settings.max_owners))
        .subquery()
    )
    rows = _capped(
        select(ident.kind, ident.value, ident.owner_type, ident.owner_id)
        .join(shared, and_(shared.c.kind == ident.kind, shared.c.value == ident.value))
        .where(ident.last_seen >= since)
        .order_by(ident.kind, ident.value),
        cap,
        "identifiers",
        facts,
    )
    for kind, value, owner_type, owner_id in rows:
        facts.owners[f"{kind}:{value}"].add(f"{owner_type}:{owner_id}")

    g = nx.Graph()
    customers = Counter(merchant for _, merchant in pair_orders)
    for (user, merchant), n in pair_orders.items():
        _add(g, user, merchant, n / math.log(customers[merchant] + math.e))
    spenders = Counter(issuer for issuer, _ in issued)
    for (issuer, user), n in issued.items():
        _add(g, issuer, user, n / math.log(spenders[issuer] + math.e))
    for node, owners in facts.owners.items():
        weight = DEVICE_WEIGHT if node.startswith("device:") else NET_WEIGHT
        for owner in owners:
            _add(g, owner, node, weight)
    for user, inviter in facts.inviter.items():
        _add(g, inviter, user, REFERRAL_WEIGHT)
    return Graph(g, facts, time.perf_counter() - started)


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _pct(x: float) -> str:
    return f"{round(100 * x)} %"


def score_community(members: set[str], graph: Graph, settings: GraphSettings) -> Scored | None:
    """The community's score and its reasons in words; None when it is not scored (< 3 members, no user)."""
    users = sorted(m for m in members if m.startswith("user:"))
    if len(members) < 3 or not users:
        return None
    f = graph.facts
    identifiers = [m for m in members if m.startswith(("device:", "net:"))]
    # Who shares what with another member (or with any merchant's staff: the merchant may sit elsewhere).
    on_device: set[str] = set()
    on_net: set[str] = set()
    reasons: list[str] = []
    for node in sorted(identifiers, key=lambda n: -len(f.owners.get(n, ()))):
        owners = f.owners.get(node, set())
        inside = {o for o in owners if o in members or o.startswith("merchant:")}
        people = sorted(o for o in inside if o.startswith("user:"))
        if len(inside) < 2 or not people:
            continue
        (on_device if node.startswith("device:") else on_net).update(people)
        staff = sorted(o for o in inside if o.startswith("merchant:"))
        what = "device" if node.startswith("device:") else "network address"
        words = f"{len(people)} accounts share 1 {what} ({node.split(':', 1)[1]})"
        if staff:
            words += ", also used by the staff of " + ", ".join(staff)
        reasons.append(words)
    shared = len(on_device) + NET_ONLY_CREDIT * len(on_net - on_device)
    s = min(1.0, shared / max(len(users), 4))

    orders = sum(f.orders[u] for u in users)
    packet = sum(f.packet_orders[u] for u in users)
    invited = sum(1 for u in users if f.inviter.get(u) in members)
    p = max(_share(packet, orders), _share(invited, len(users)))
    new = sum(1 for u in users if f.new_account.get(u, False))
    n = _share(new, len(users))
    rebated = sum(f.rebated[u] for u in users)
    refunded = sum(f.refunded_rebated[u] for u in users)
    r = _share(refunded, rebated)
    score = s * (0.25 + 0.75 * p) * (0.25 + 0.75 * n) * (0.75 + 0.25 * r)

    issuers: Counter = Counter()
    merchants: Counter = Counter()
    for u in users:
        issuers.update(f.by_issuer.get(u, {}))
        merchants.update(f.at_merchant.get(u, {}))
    if orders:
        top_issuer, top_n = issuers.most_common(1)[0] if issuers else (None, 0)
        if top_issuer is not None:
            reasons.append(f"{_pct(top_n / orders)} of {orders} orders spent a packet of {top_issuer}")
        else:
            reasons.append(f"{orders} orders, none with a packet")
    if invited:
        inviters = Counter(f.inviter[u] for u in users if f.inviter.get(u) in members)
        who, k = inviters.most_common(1)[0]
        reasons.append(f"{invited} of {len(users)} accounts invited by members ({k} by {who})")
    reasons.append(f"{new} of {len(users)} accounts under 7 days old at their first order")
    if rebated:
        reasons.append(f"{refunded} of {rebated} rebated orders refunded afterwards")
    suspicious = score >= settings.threshold
    reasons.append(
        f"score {score:.2f} {'≥' if suspicious else '<'} {settings.threshold:g} "
        f"(shared identity {s:.2f}, promotion share {p:.2f}, new accounts {n:.2f}, refunds after rebate {r:.2f})"
    )

    merchant_members = [m for m in members if m.startswith("merchant:")]
    top_merchant = merchants.most_common(1)[0][0] if merchants else (merchant_members[0] if merchant_members else None)
    merchant_id = int(top_merchant.split(":")[1]) if top_merchant else None
    concerned = 0
    for u in users:
        for beneficiary, fen in f.rebate_fen.get(u, {}).items():
            if beneficiary in members or beneficiary == top_merchant:
                concerned += fen
    return Scored(sorted(members), round(score, 4), suspicious, reasons, merchant_id, concerned, users)


def score_graph(graph: Graph, settings: GraphSettings) -> list[Scored]:
    """Louvain communities of the graph, scored (those with fewer than 3 members or no user are left out)."""
    if graph.graph.number_of_edges() == 0:
        return []
    parts = nx.community.louvain_communities(
        graph.graph, weight="weight", resolution=settings.resolution, seed=settings.seed
    )
    scored = []
    for part in parts:
        whole = score_community(set(part), graph, settings)
        if whole is not None:
            scored.append(whole)
        if whole is not None and whole.suspicious:
            continue
        for core in identity_cores(set(part), graph):
            if core != set(part) and (found := score_community(core, graph, settings)) is not None:
                scored.append(found)
    return sorted(scored, key=lambda s: -s.score)


def identity_cores(part: set[str], graph: Graph) -> list[set[str]]:
    """The groups of a community's members joined by shared devices or network addresses (2 users or more).

    A ring ordering at a busy shop with the shop's packets is tied to that shop as strongly as to its
    phone, so Louvain may put it in the shop's community; its core is scored on its own.
    """
    g = nx.Graph()
    for node in part:
        if node.startswith(("device:", "net:")):
            for owner in graph.facts.owners.get(node, ()):
                if owner in part:
                    g.add_edge(owner, node)
    cores = []
    for component in nx.connected_components(g):
        if sum(1 for m in component if m.startswith("user:")) >= 2:
            cores.append(set(component))
    return sorted(cores, key=lambda c: sorted(c))


def _open_suspicious(since: datetime) -> list[tuple[int, set[str], int]]:
    """(community id, members, case id) of the stored suspicious communities whose case is undecided."""
    rows = db.session.execute(
        select(RiskCommunity.id, RiskCommunity.members, ReviewCase.id)
        .join(ReviewCase, ReviewCase.community_id == RiskCommunity.id)
        .where(RiskCommunity.suspicious.is_(True), RiskCommunity.found_at >= since)
        .where(ReviewCase.status != CaseStatus.DECIDED)
    ).all()
    return [(community_id, set(members), case_id) for community_id, members, case_id in rows]


def _overlapping(members: set[str], open_ones: list[tuple[int, set[str], int]]) -> tuple[int, int] | None:
    """(community id, case id) of an open suspicious community with ≥ 80 % of these members."""
    for community_id, other, case_id in open_ones:
        if len(members & other) / len(members | other) >= OVERLAP:
            return community_id, case_id
    return None


def _turned_suspicious(fingerprint: str, row: dict) -> list[tuple]:
    """A stored community that was not suspicious and now is: its row takes the new score and reasons (one
    conditional UPDATE, so of two nodes at once one changes it and opens its case); ``[(id,)]``, or ``[]``."""
    table = RiskCommunity.__table__
    changed = db.session.execute(
        table.update()
        .where(table.c.fingerprint == fingerprint, table.c.suspicious.is_(False))
        .values(score=row["score"], suspicious=True, reasons=row["reasons"], found_at=row["found_at"])
        .returning(table.c.id)
    )
    return [tuple(found) for found in changed]


def record_communities(scored: list[Scored], now: datetime, settings: GraphSettings) -> Counter:
    """Store the scored communities (once per fingerprint) and open a case per new suspicious one (flushes)."""
    summary: Counter = Counter()
    table = RiskCommunity.__table__
    open_ones = _open_suspicious(now - timedelta(days=settings.days))  # read once, grown as cases open
    for s in scored:
        if s.score < settings.threshold / 2:
            continue
        summary["scored"] += 1
        reasons = list(s.reasons)
        continues = _overlapping(set(s.members), open_ones) if s.suspicious else None
        if continues is not None:
            reasons.append(f"continues community {continues[0]} (case {continues[1]}, still open)")
        row = {
            "fingerprint": s.fingerprint,
            "members": s.members,
            "size": len(s.members),
            "score": s.score,
            "suspicious": s.suspicious,
            "reasons": reasons,
            "found_at": now,
        }
        written = insert_ignoring(table, [row], ("fingerprint",), ("id",))
        if not written and s.suspicious:  # on the watch list until now: it turns suspicious (once, of two nodes)
            written = _turned_suspicious(s.fingerprint, row)
        if not written:
            summary["known"] += 1
            continue
        summary["stored"] += 1
        if not s.suspicious:
            continue
        summary["suspicious"] += 1
        if continues is not None:
            summary["continued"] += 1
            continue
        case = open_community_case(written[0][0], s.merchant_id, s.concerned_fen, reasons, now)
        open_ones.append((written[0][0], set(s.members), case.id))
        summary["cases"] += 1
    db.session.flush()
    return summary


def find_communities(now: datetime, settings: GraphSettings) -> Counter:
    """Build, score and record in the caller's transaction (the job ends the read before scoring instead)."""
    graph = build_graph(now, settings)
    summary = record_communities(score_graph(graph, settings), now, settings)
    summary["nodes"] = graph.graph.number_of_nodes()
    summary["edges"] = graph.graph.number_of_edges()
    return summary
