"""Scoring a paid order: every feature of ``risk.catalogue`` from aggregates, in ONE read statement.

The payment (``rebate.payments``) calls ``score_order`` under the order's lock, before any rebate is decided.
What it reads is bounded whatever a person's history: the buyer's browsing session row (``browsing_sessions``,
one row), their profile (``risk_profiles``, one row), the user row, the triangle pair and its reverse
(``risk_pairs``, by primary key), and counts of accounts on the order's device and network (capped at
``COUNT_CAP`` rows of ``risk_identifiers``). The spent packet is the payment's own row (already loaded). The
same statement answers two questions the payment asks anyway: is any of the (subject, value) ``bans`` banned
now (a pre-filter: ``risk.bans.active_bans`` is asked only when it says yes; it looks each subject's values up
along the (subject, value) index, never scanning the bans) and the packet issuer merchant's status.

``orders_in_10_min`` is a sliding window: the profile keeps the paid times of the buyer's last
``RECENT_ORDERS`` orders (``risk.profiles``), and the read counts those in the 10 minutes up to this payment
(so it counts up to ``RECENT_ORDERS`` + 1).

The score is the sum of the points each feature earns in ``WEIGHTS`` (one table, a comment on each), capped at
100; each contribution says in words what was seen ("paid 9 s after first view", "4 accounts on this device").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache

from sqlalchemy import BigInteger, Integer, String, and_, bindparam, exists, func, literal_column, or_, select
from sqlalchemy.orm import aliased

from models import Ban, BrowsingSession, Merchant, RiskIdentifier, RiskPair, RiskProfile, User, db
from models.base import UTCDateTime, beijing
from models.risk import BanSubject, EventKind
from risk.bans import in_force
from risk.catalogue import FEATURES

SESSION_GAP = timedelta(minutes=30)  # a session whose last event is older than this is "no browsing"
BURST_WINDOW = timedelta(minutes=10)  # orders_in_10_min's window, up to the payment
RECENT_ORDERS = 8  # the profile keeps the paid times of this many last orders (risk.profiles)
PAID_DIGITS = 13  # one paid time: epoch milliseconds, zero-padded (fixed width: 13 digits until the year 2286)
RECENT_CHARS = RECENT_ORDERS * (PAID_DIGITS + 1) - 1  # the comma-separated list's length
COUNT_CAP = 50  # accounts on a device / network are counted up to this (a bounded read)
NIGHT_HOURS = range(0, 6)  # Beijing time


@dataclass(frozen=True)
class PacketFacts:
    """The spent packet (the order's first), as the payment loaded it."""

    issuer_type: str  # platform | merchant | user
    issuer_id: int | None
    claimed_at: datetime | None
    min_spend_fen: int  # the threshold the order cleared (the highest tier at or below the total)


@dataclass(frozen=True)
class OrderFacts:
    """What the payment knows of the order when it asks for a score."""

    user_id: int
    merchant_id: int
    total_fen: int
    paid_at: datetime
    device: str | None = None
    net: str | None = None  # risk.net.net_of(order.ip)
    packet: PacketFacts | None = None
    bans: Sequence[tuple[str, str]] = ()  # (subject, value) pairs the payment will ask about (pre-filter)
    ban_at: datetime | None = None  # when bans must be active (default: paid_at)


@dataclass
class Score:
    score: int
    contributions: list[dict]  # [{"feature", "value", "points", "words"}], the largest first
    values: dict  # every feature of the catalogue: its value (None: unknown for this order)
    any_ban: bool = False  # some ban is active on one of the ban values (ask risk.bans.active_bans)
    issuer_merchant_status: str | None = None


# --- weights ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weight:
    feature: str
    points: int
    when: Callable[[object, dict], bool]  # (the feature's value, all values) -> it earns the points
    words: Callable[[object, dict], str]


def _n(value) -> str:
    return f"{value:,}"


def _age(hours: int) -> str:
    return f"{hours} hours" if hours < 48 else f"{hours // 24} days"


def _is(value) -> bool:
    return value is True


# One table. A feature may appear in several rows (bands); only its first matching row counts. Chosen so that
# honest shopping (several products viewed, a search, minutes of browsing, one account on the device) scores
# under 30 and the planted frauds of the simulation (a click farm, a merchant-consumer ring, sybil
# registrations) score 60 and above; the default rules review at 60 and block at 90.
#
# Two families: how this order was placed (``BEHAVIOUR``: browsing, speed, timing, the account's age and
# history) counts at most ``BEHAVIOUR_CAP`` points; links to other accounts, the issuer or the merchant
# (shared devices and networks, triangles, cycles, refunds after rebates) count in full. So behaviour alone
# never reaches the default review threshold: a fresh account paying at once without browsing is what many
# honest first orders look like too (a shared link, an app with no trail); a review needs a link as well.
BEHAVIOUR_CAP = 50
LINKS = frozenset(
    {
        "triangle_repeats",
        "shares_device_with_issuer",
        "shares_net_with_issuer",
        "shares_with_merchant_staff",
        "accounts_on_device",
        "accounts_on_net",
        "refund_after_rebate_rate",
        "rebate_cycle",
    }
)
WEIGHTS: tuple[Weight, ...] = (
    # No browsing at all in the 30 minutes before paying: a click farm or a script goes straight to pay.
    Weight("no_browsing", 25, lambda v, _: _is(v), lambda v, _: "no browsing in the 30 minutes before paying"),
    # Paid within seconds of the first product view: no person reads a product page that fast.
    Weight(
        "seconds_from_first_view",
        15,
        lambda v, _: v is not None and v < 30,
        lambda v, _: f"paid {v} s after first view",
    ),
    # ... or within two minutes: hurried, a weaker sign.
    Weight(
        "seconds_from_first_view",
        6,
        lambda v, _: v is not None and v < 120,
        lambda v, _: f"paid {v} s after first view",
    ),
    # Came in on one product page (a shared deep link) and paid with no search: how rings send their buyers.
    Weight("deep_link", 8, lambda v, _: _is(v), lambda v, _: "came in on one product page and went straight to pay"),
    # Browsed, but never searched, compared or used the cart: shallow (a small sign; honest deep links exist).
    Weight(
        "browse_depth",
        4,
        lambda v, values: v == 0 and values.get("no_browsing") is False,
        lambda v, _: "no search, comparison or cart before paying",
    ),
    # Only one product viewed before paying (with browsing): small, it adds to the signs above.
    Weight(
        "views_before_pay",
        3,
        lambda v, values: v is not None and v <= 1 and values.get("no_browsing") is False,
        lambda v, _: f"{v} product viewed before paying",
    ),
    # Paid within seconds of adding to the cart.
    Weight(
        "cart_to_pay_seconds",
        5,
        lambda v, _: v is not None and v < 10,
        lambda v, _: f"paid {v} s after adding to the cart",
    ),
    # Events at machine-even intervals (a script replaying a trail).
    Weight(
        "gap_uniformity",
        12,
        lambda v, _: v is not None and v >= 0.9,
        lambda v, _: f"events evenly spaced like a script (uniformity {v:.2f})",
    ),
    # The packet spent within a minute of claiming it (farms claim and spend at once; people browse first).
    Weight(
        "claim_to_spend_seconds",
        8,
        lambda v, _: v is not None and v < 60,
        lambda v, _: f"spent the packet {v} s after claiming it",
    ),
    # The order only just clears the packet's minimum spend (within 1 yuan): sized to earn, not to buy.
    Weight(
        "above_min_spend_fen",
        15,
        lambda v, _: v is not None and 0 <= v < 100,
        lambda v, _: f"order {v} fen above the packet's minimum",
    ),
    # ... within 5 yuan: weaker.
    Weight(
        "above_min_spend_fen",
        5,
        lambda v, _: v is not None and 0 <= v < 500,
        lambda v, _: f"order {v} fen above the packet's minimum",
    ),
    # The same issuer's packets spent by this buyer at this merchant again and again: a triangle on repeat.
    Weight(
        "triangle_repeats",
        15,
        lambda v, _: v is not None and v >= 3,
        lambda v, _: f"{v} earlier orders with this issuer's packets by this buyer here",
    ),
    Weight(
        "triangle_repeats",
        6,
        lambda v, _: v is not None and v >= 1,
        lambda v, _: f"{v} earlier order(s) with this issuer's packets by this buyer here",
    ),
    # Issuer and buyer on one device: the issuer is paying themselves (the two-way rebate's attack).
    Weight(
        "shares_device_with_issuer",
        25,
        lambda v, _: _is(v),
        lambda v, _: "the packet's issuer and the buyer share a device",
    ),
    # ... on one network (/24 or /48): one household or office; weaker (offices and campuses are honest).
    Weight(
        "shares_net_with_issuer",
        8,
        lambda v, _: _is(v),
        lambda v, _: "the packet's issuer and the buyer share a network",
    ),
    # The buyer shares a device or network with the merchant's own staff: the merchant ordering from itself.
    Weight(
        "shares_with_merchant_staff",
        20,
        lambda v, _: _is(v),
        lambda v, _: "the buyer shares a device or network with the merchant's staff",
    ),
    # Many accounts on one device: a farm's phone (a family shares one phone between two or three).
    Weight(
        "accounts_on_device",
        25,
        lambda v, _: v is not None and v >= 4,
        lambda v, _: f"{v} accounts on this device",
    ),
    Weight(
        "accounts_on_device",
        8,
        lambda v, _: v is not None and v >= 2,
        lambda v, _: f"{v} accounts on this device",
    ),
    # Many accounts on one network: a farm's room (capped low: offices and campuses share networks).
    Weight(
        "accounts_on_net",
        10,
        lambda v, _: v is not None and v >= 10,
        lambda v, _: f"{v} accounts on this network",
    ),
    Weight(
        "accounts_on_net",
        4,
        lambda v, _: v is not None and v >= 5,
        lambda v, _: f"{v} accounts on this network",
    ),
    # A fresh account (a day old): sybils register to claim newcomer packets.
    Weight(
        "account_age_hours",
        12,
        lambda v, _: v is not None and v < 24,
        lambda v, _: f"account {_age(v)} old",
    ),
    # ... a week old: weaker.
    Weight(
        "account_age_hours",
        5,
        lambda v, _: v is not None and v < 168,
        lambda v, _: f"account {_age(v)} old",
    ),
    # The first order (small: every honest customer has one; it adds to freshness and packet use).
    Weight("orders_before", 5, lambda v, _: v == 0, lambda v, _: "the buyer's first paid order"),
    # Nearly every earlier order spent a packet: shopping only for the subsidy.
    Weight(
        "packet_order_share",
        8,
        lambda v, values: v is not None and v >= 0.9 and (values.get("orders_before") or 0) >= 3,
        lambda v, values: f"{v:.0%} of {values.get('orders_before')} earlier orders spent a packet",
    ),
    # Rebated orders refunded afterwards: wash trades (pay, earn, refund); from the 4th order (one honest refund
    # of a first or second order is no pattern).
    Weight(
        "refund_after_rebate_rate",
        15,
        lambda v, values: v is not None and v >= 0.3 and (values.get("orders_before") or 0) >= 3,
        lambda v, _: f"{v:.0%} of the buyer's rebated orders were refunded afterwards",
    ),
    # Paid between midnight and 6 in the morning (small on its own).
    Weight("night_order", 3, lambda v, _: _is(v), lambda v, _: "paid between 00:00 and 06:00 Beijing time"),
    # Several orders in ten minutes: a burst.
    Weight(
        "orders_in_10_min",
        15,
        lambda v, _: v is not None and v >= 3,
        lambda v, _: f"{v} orders in 10 minutes",
    ),
    Weight(
        "orders_in_10_min",
        5,
        lambda v, _: v is not None and v == 2,
        lambda v, _: f"{v} orders in 10 minutes",
    ),
    # The buyer and the packet's issuer rebate each other (A issues to B, B issues to A).
    Weight(
        "rebate_cycle",
        20,
        lambda v, _: _is(v),
        lambda v, _: "the buyer and the packet's issuer spend each other's packets",
    ),
)
assert {w.feature for w in WEIGHTS} <= set(FEATURES)


def contributions(values: dict) -> tuple[int, list[dict]]:
    """The score and each feature's contribution, the largest first: behaviour's points up to
    ``BEHAVIOUR_CAP``, plus the links', capped at 100."""
    found, seen = [], set()
    for weight in WEIGHTS:
        value = values.get(weight.feature)
        if weight.feature in seen or not weight.when(value, values):
            continue
        seen.add(weight.feature)
        found.append(
            {
                "feature": weight.feature,
                "value": value,
                "points": weight.points,
                "words": weight.words(value, values),
            }
        )
    found.sort(key=lambda c: -c["points"])
    behaviour = sum(c["points"] for c in found if c["feature"] not in LINKS)
    links = sum(c["points"] for c in found if c["feature"] in LINKS)
    return min(100, min(BEHAVIOUR_CAP, behaviour) + links), found


# --- the one read -------------------------------------------------------------------------------


@cache
def _statement():
    """The read, built once per process; every input is a bound parameter (an expanding one for bans).

    Kept short (short table aliases, the code's own constants written in): psycopg caches the parsing of a
    statement only up to 4,096 characters, and this one runs with every payment."""
    uid = bindparam("uid", type_=BigInteger)
    mid = bindparam("mid", type_=BigInteger)
    device = bindparam("device", type_=String)
    net = bindparam("net", type_=String)
    issuer_type = bindparam("issuer_type", type_=String)
    issuer_id = bindparam("issuer_id", type_=BigInteger)
    issuer_user = bindparam("issuer_user", type_=BigInteger)
    issuer_merchant = bindparam("issuer_merchant", type_=Integer)
    now = bindparam("now", type_=UTCDateTime)
    ban_values = {subject: bindparam(f"ban_{subject}", expanding=True, type_=String) for subject in BanSubject}
    ri, other = aliased(RiskIdentifier, name="i"), aliased(RiskIdentifier, name="o")

    def const(value: str):  # a constant of this code, written into the SQL (no bound parameter, no cast)
        return literal_column(f"'{value}'")

    def accounts_on(kind, value):
        others = (
            select(ri.owner_id)
            .where(ri.kind == const(kind), ri.value == value, ri.owner_type == const("user"), ri.owner_id != uid)
            .limit(COUNT_CAP)
            .subquery()
        )
        return select(func.count()).select_from(others).scalar_subquery()

    def mine(kind):
        return select(ri.value).where(ri.kind == const(kind), ri.owner_type == const("user"), ri.owner_id == uid)

    def seen_with(kind, value):  # ``other`` used this kind of identifier that the buyer (or the order) used
        return and_(other.kind == const(kind), or_(other.value == value, other.value.in_(mine(kind))))

    def shares_with_issuer(kind, value):
        return exists().where(other.owner_type == issuer_type, other.owner_id == issuer_id, seen_with(kind, value))

    staff = exists().where(
        other.owner_type == const("merchant"),
        other.owner_id == mid,
        or_(seen_with("device", device), seen_with("net", net)),
    )
    pair, ban = aliased(RiskPair, name="r"), aliased(Ban, name="b")
    triangle = (
        select(pair.orders)
        .where(
            pair.issuer_type == issuer_type, pair.issuer_id == issuer_id, pair.user_id == uid, pair.merchant_id == mid
        )
        .scalar_subquery()
    )
    cycle = exists().where(pair.issuer_type == const("user"), pair.issuer_id == uid, pair.user_id == issuer_user)
    banned = exists().where(  # by (subject, value): the ix_risk_bans_subject_value index serves each subject
        or_(*(and_(ban.subject == const(subject), ban.value.in_(values)) for subject, values in ban_values.items())),
        in_force(now, ban),
    )
    shop = aliased(Merchant, name="m")
    merchant_status = select(shop.status).where(shop.id == issuer_merchant).scalar_subquery()
    bs, rp, buyer = aliased(BrowsingSession, name="s"), aliased(RiskProfile, name="p"), aliased(User, name="u")
    return (
        select(
            buyer.created_at,
            *(bs.started_at, bs.last_at, bs.first_view_at, bs.last_cart_at, bs.entry_kind, bs.views, bs.searches),
            bs.compares,
            *(bs.cart_adds, bs.gaps, bs.gap_sum_ms, bs.gap_sq_sum),
            *(rp.paid_orders, rp.packet_orders, rp.rebated_orders, rp.refunded_after_rebate),
            rp.recent_paid_at,
            accounts_on("device", device).label("accounts_on_device"),
            accounts_on("net", net).label("accounts_on_net"),
            shares_with_issuer("device", device).label("shares_device"),
            shares_with_issuer("net", net).label("shares_net"),
            staff.label("staff"),
            triangle.label("triangle"),
            cycle.label("cycle"),
            banned.label("banned"),
            merchant_status.label("issuer_merchant_status"),
        )
        .select_from(buyer)
        .outerjoin(bs, bs.user_id == buyer.id)
        .outerjoin(rp, rp.user_id == buyer.id)
        .where(buyer.id == uid)
    )


def _read(facts: OrderFacts):
    packet = facts.packet
    issuer = packet if packet is not None and packet.issuer_type in ("user", "merchant") else None
    # What is unknown goes in as a value no row has ("", 0), never NULL: with NULLs PostgreSQL re-plans the
    # prepared statement for every payment (a custom plan prunes the parts a NULL makes empty, so the generic
    # plan never looks cheaper), costing more than running it. ``features`` reads unknowns from ``facts``.
    params = {
        "uid": facts.user_id,
        "mid": facts.merchant_id,
        "device": facts.device or NOTHING,
        "net": facts.net or NOTHING,
        "issuer_type": issuer.issuer_type if issuer else NOTHING,
        "issuer_id": issuer.issuer_id if issuer else NO_ID,
        "issuer_user": issuer.issuer_id if issuer and issuer.issuer_type == "user" else NO_ID,
        "issuer_merchant": issuer.issuer_id if issuer and issuer.issuer_type == "merchant" else NO_ID,
        "now": facts.ban_at or facts.paid_at,
    }
    wanted: dict[str, dict[str, None]] = {subject: {} for subject in BanSubject}
    for subject, value in facts.bans:
        wanted[subject][value] = None
    params.update({f"ban_{subject}": list(values) or [NOTHING] for subject, values in wanted.items()})
    return db.session.connection().execute(_statement(), params).one()  # Core: no ORM loading for a plain row


NOTHING, NO_ID = "", 0  # no identifier, issuer type or ban value is empty; no row has id 0
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch_ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


def paid_key(at: datetime) -> str:
    """A paid time as the profile's list keeps it: epoch milliseconds, ``PAID_DIGITS`` digits."""
    return f"{_epoch_ms(at):0{PAID_DIGITS}d}"


def orders_in_window(recent_paid_at: str | None, at: datetime) -> int:
    """This order and the listed ones paid in the ``BURST_WINDOW`` up to it (``at - 10 min < paid <= at``)."""
    end = _epoch_ms(at)
    start = end - BURST_WINDOW // timedelta(milliseconds=1)
    paid = [int(key) for key in (recent_paid_at or "").split(",") if key]
    return 1 + sum(1 for ms in paid if start < ms <= end)


def _seconds(later: datetime, earlier: datetime | None) -> int | None:
    return None if earlier is None else max(0, int((later - earlier).total_seconds()))


def _uniformity(gaps: int, gap_sum_ms: int, gap_sq_sum: int) -> float | None:
    """1 - the coefficient of variation of the gaps between events (1: identical gaps); needs 3 gaps.

    From the session's exact integer sums (ms, ms²): cv = sqrt(n·Σg² - (Σg)²) / Σg, the square root of an
    integer the only inexact step."""
    if gaps < 3 or gap_sum_ms <= 0:
        return None
    spread = max(0, gaps * gap_sq_sum - gap_sum_ms * gap_sum_ms)
    return round(max(0.0, 1 - math.sqrt(spread) / gap_sum_ms), 3)


def features(facts: OrderFacts, row) -> dict:
    """Every feature's value from the read row (``None``: unknown for this order)."""
    at, packet = facts.paid_at, facts.packet
    # The paid time is WeChat's; the session is as the payment's notification (or the query job) finds it, so it
    # may hold events sent after paying. A session placed as begun after the payment tells nothing of browsing before
    # it (unknown: a quick buyer's short browse flushed after the pay sheet closed is placed at its arrival, so it
    # must not count as "no browsing" either); a first view or a cart addition after it is no time before paying.
    began_after = row.started_at is not None and row.started_at > at
    browsing = row.last_at is not None and row.last_at >= at - SESSION_GAP and not began_after
    first_view, last_cart = (
        t if browsing and t is not None and t <= at else None for t in (row.first_view_at, row.last_cart_at)
    )
    issuer = packet is not None and packet.issuer_type in ("user", "merchant")
    paid_before = row.paid_orders or 0
    rebated = row.rebated_orders or 0
    values = {
        "seconds_from_first_view": _seconds(at, first_view),
        "views_before_pay": None if began_after else row.views if browsing else 0,
        "browse_depth": None if began_after else (row.searches + row.compares + row.cart_adds) if browsing else 0,
        "no_browsing": None if began_after else not browsing,
        "deep_link": (row.entry_kind == EventKind.VIEW and row.searches == 0 and row.views <= 1) if browsing else None,
        "cart_to_pay_seconds": _seconds(at, last_cart),
        "gap_uniformity": _uniformity(row.gaps, row.gap_sum_ms, row.gap_sq_sum) if browsing else None,
        "claim_to_spend_seconds": _seconds(at, packet.claimed_at) if packet is not None else None,
        "above_min_spend_fen": (
            facts.total_fen - packet.min_spend_fen if packet is not None and packet.min_spend_fen > 0 else None
        ),
        "triangle_repeats": (row.triangle or 0) if issuer else None,
        # on the order's device or network or any the buyer has used (as for the staff): the order's device is an
        # optional header, and leaving it off must not hide an issuer paying themselves on their own phone
        "shares_device_with_issuer": bool(row.shares_device) if issuer else None,
        "shares_net_with_issuer": bool(row.shares_net) if issuer else None,
        "shares_with_merchant_staff": bool(row.staff),
        "accounts_on_device": row.accounts_on_device + 1 if facts.device else None,
        "accounts_on_net": row.accounts_on_net + 1 if facts.net else None,
        "account_age_hours": _seconds(at, row.created_at) // 3600,
        "orders_before": paid_before,
        "packet_order_share": round((row.packet_orders or 0) / paid_before, 3) if paid_before else None,
        "refund_after_rebate_rate": round((row.refunded_after_rebate or 0) / rebated, 3) if rebated else None,
        "night_order": beijing(at).hour in NIGHT_HOURS,
        "orders_in_10_min": orders_in_window(row.recent_paid_at, at),
        "rebate_cycle": bool(row.cycle) if issuer and packet.issuer_type == "user" else None,
    }
    return values


def score_order(facts: OrderFacts) -> Score:
    """Score the order from aggregates (one statement): every feature, the score and the words."""
    row = _read(facts)
    values = features(facts, row)
    score, found = contributions(values)
    return Score(
        score=score,
        contributions=found,
        values=values,
        any_ban=bool(row.banned),
        issuer_merchant_status=row.issuer_merchant_status,
    )
