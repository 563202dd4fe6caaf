"""Each feature of ``risk.catalogue`` computed by ``risk.scoring`` from hand-made aggregates (one read), the weights'
verdict on honest shopping and on the planted frauds, and the incremental profile and pair updates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select

from models import Ban, BrowsingSession, RiskIdentifier, RiskPair, RiskProfile, User, db
from models.risk import EventKind
from risk import scoring, trail
from risk.catalogue import FEATURES
from risk.profiles import note_paid_order, note_pair, note_refunded_after_rebate
from risk.scoring import OrderFacts, PacketFacts, contributions, score_order
from tests.conftest import on_postgres
from tests.test_hot_path_sql import counted

NOW = datetime(2025, 3, 4, 6, 30, tzinfo=UTC)  # 14:30 Beijing time


@pytest.fixture
def people(app, make_user, make_merchant):
    buyer, issuer = make_user(), make_user()
    buyer.created_at = NOW - timedelta(days=400)
    db.session.commit()
    return buyer, issuer, make_merchant()


def session_row(user_id, **fields) -> BrowsingSession:
    base = {
        "user_id": user_id,
        "started_at": NOW - timedelta(minutes=20),
        "last_at": NOW - timedelta(minutes=1),
        "first_view_at": NOW - timedelta(minutes=19),
        "entry_kind": EventKind.SEARCH,
        "views": 5,
        "searches": 2,
        "compares": 1,
        "cart_adds": 1,
        "cart_removes": 0,
        "pages": 3,
        "shares": 0,
        "dwell_ms": 600_000,
        "gaps": 10,
        "gap_sum_ms": 1_100_000,
        "gap_sq_sum": 240_000_000_000,  # ms²: gaps of 110 s on average, spread widely
        "events_total": 12,
    }
    base.update(fields)
    return BrowsingSession(**base)


def identifier(kind, value, owner_id, owner_type="user") -> RiskIdentifier:
    return RiskIdentifier(
        kind=kind, value=value, owner_type=owner_type, owner_id=owner_id, first_seen=NOW, last_seen=NOW
    )


def paid_list(*minutes_before: float) -> str:
    """The profile's list of paid times, newest first, ``minutes_before`` NOW."""
    return ",".join(scoring.paid_key(NOW - timedelta(minutes=m)) for m in minutes_before)


def facts(buyer, merchant, **fields) -> OrderFacts:
    base = {"user_id": buyer.id, "merchant_id": merchant.id, "total_fen": 100_00, "paid_at": NOW}
    base.update(fields)
    return OrderFacts(**base)


def user_packet(issuer, **fields) -> PacketFacts:
    base = {"issuer_type": "user", "issuer_id": issuer.id, "claimed_at": NOW - timedelta(days=2), "min_spend_fen": 0}
    base.update(fields)
    return PacketFacts(**base)


# Each case: (feature, rows to add (buyer, issuer, merchant) -> list, facts' fields (buyer, issuer) -> dict, value,
# words expected in its contribution or None when it earns no points).
CASES = {
    "seconds_from_first_view": (
        lambda b, i, m: [session_row(b.id, first_view_at=NOW - timedelta(seconds=9))],
        lambda b, i: {},
        9,
        "paid 9 s after first view",
    ),
    "views_before_pay": (lambda b, i, m: [session_row(b.id, views=4)], lambda b, i: {}, 4, None),
    "browse_depth": (
        lambda b, i, m: [session_row(b.id, searches=2, compares=1, cart_adds=3)],
        lambda b, i: {},
        6,
        None,
    ),
    "no_browsing": (
        lambda b, i, m: [session_row(b.id, last_at=NOW - timedelta(minutes=31))],
        lambda b, i: {},
        True,
        "no browsing in the 30 minutes before paying",
    ),
    "deep_link": (
        lambda b, i, m: [session_row(b.id, entry_kind=EventKind.VIEW, views=1, searches=0)],
        lambda b, i: {},
        True,
        "came in on one product page and went straight to pay",
    ),
    "cart_to_pay_seconds": (
        lambda b, i, m: [session_row(b.id, last_cart_at=NOW - timedelta(seconds=4))],
        lambda b, i: {},
        4,
        "paid 4 s after adding to the cart",
    ),
    "gap_uniformity": (
        lambda b, i, m: [session_row(b.id, gaps=4, gap_sum_ms=20_000, gap_sq_sum=4 * 5000**2)],  # four gaps of 5 s
        lambda b, i: {},
        1.0,
        "events evenly spaced like a script (uniformity 1.00)",
    ),
    "claim_to_spend_seconds": (
        lambda b, i, m: [],
        lambda b, i: {"packet": user_packet(i, claimed_at=NOW - timedelta(seconds=40))},
        40,
        "spent the packet 40 s after claiming it",
    ),
    "above_min_spend_fen": (
        lambda b, i, m: [],
        lambda b, i: {"total_fen": 50_01, "packet": user_packet(i, min_spend_fen=50_00)},
        1,
        "order 1 fen above the packet's minimum",
    ),
    "triangle_repeats": (
        lambda b, i, m: [
            RiskPair(issuer_type="user", issuer_id=i.id, user_id=b.id, merchant_id=m.id, orders=3, last_at=NOW)
        ],
        lambda b, i: {"packet": user_packet(i)},
        3,
        "3 earlier orders with this issuer's packets by this buyer here",
    ),
    "shares_device_with_issuer": (
        lambda b, i, m: [identifier("device", "dev-1", i.id)],
        lambda b, i: {"device": "dev-1", "packet": user_packet(i)},
        True,
        "the packet's issuer and the buyer share a device",
    ),
    "shares_net_with_issuer": (
        lambda b, i, m: [identifier("net", "10.1.2.0/24", b.id), identifier("net", "10.1.2.0/24", i.id)],
        lambda b, i: {"net": "10.9.9.0/24", "packet": user_packet(i)},  # the buyer's own earlier network
        True,
        "the packet's issuer and the buyer share a network",
    ),
    "shares_with_merchant_staff": (
        lambda b, i, m: [identifier("device", "dev-9", b.id), identifier("device", "dev-9", m.id, "merchant")],
        lambda b, i: {},  # the order itself from no known device: the buyer's own history links them
        True,
        "the buyer shares a device or network with the merchant's staff",
    ),
    "accounts_on_device": (
        lambda b, i, m: (
            [identifier("device", "dev-2", b.id)] + [identifier("device", "dev-2", 10_000 + n) for n in range(3)]
        ),
        lambda b, i: {"device": "dev-2"},
        4,
        "4 accounts on this device",
    ),
    "accounts_on_net": (
        lambda b, i, m: [identifier("net", "10.3.3.0/24", 20_000 + n) for n in range(5)],
        lambda b, i: {"net": "10.3.3.0/24"},
        6,
        "6 accounts on this network",
    ),
    "account_age_hours": (
        lambda b, i, m: [],
        lambda b, i: {"user_created_at": NOW - timedelta(hours=5)},
        5,
        "account 5 hours old",
    ),
    "orders_before": (lambda b, i, m: [RiskProfile(user_id=b.id, paid_orders=7)], lambda b, i: {}, 7, None),
    "packet_order_share": (
        lambda b, i, m: [RiskProfile(user_id=b.id, paid_orders=4, packet_orders=4)],
        lambda b, i: {},
        1.0,
        "100% of 4 earlier orders spent a packet",
    ),
    "refund_after_rebate_rate": (
        lambda b, i, m: [RiskProfile(user_id=b.id, paid_orders=6, rebated_orders=4, refunded_after_rebate=2)],
        lambda b, i: {},
        0.5,
        "50% of the buyer's rebated orders were refunded afterwards",
    ),
    "night_order": (
        lambda b, i, m: [],
        lambda b, i: {"paid_at": datetime(2025, 3, 4, 18, 0, tzinfo=UTC)},  # 02:00 Beijing time
        True,
        "paid between 00:00 and 06:00 Beijing time",
    ),
    "orders_in_10_min": (
        lambda b, i, m: [RiskProfile(user_id=b.id, paid_orders=2, recent_paid_at=paid_list(5, 8))],
        lambda b, i: {},
        3,
        "3 orders in 10 minutes",
    ),
    "rebate_cycle": (
        lambda b, i, m: [
            RiskPair(issuer_type="user", issuer_id=b.id, user_id=i.id, merchant_id=m.id + 1, orders=1, last_at=NOW)
        ],
        lambda b, i: {"packet": user_packet(i)},
        True,
        "the buyer and the packet's issuer spend each other's packets",
    ),
}


def test_every_feature_of_the_catalogue_has_a_case():
    assert set(CASES) == set(FEATURES)


@pytest.mark.parametrize("feature", sorted(CASES))
def test_each_feature_is_computed_from_the_aggregates(people, feature):
    # given
    buyer, issuer, merchant = people
    rows, fields, expected, words = CASES[feature]
    db.session.add_all(rows(buyer, issuer, merchant))
    fields = fields(buyer, issuer)
    created = fields.pop("user_created_at", None)
    if created is not None:
        db.session.get(User, buyer.id).created_at = created
    db.session.commit()
    asked = facts(buyer, merchant, **fields)
    # when
    with counted() as statements:
        scored = score_order(asked)
    # then: one read, the value, and the words of its contribution
    assert len([s for s in statements if not s.startswith("BEGIN")]) == 1
    assert scored.values[feature] == expected
    said = {c["feature"]: c["words"] for c in scored.contributions}
    if words is not None:
        assert said[feature] == words


def test_a_feature_unknown_for_the_order_is_none(people):
    buyer, _, merchant = people
    scored = score_order(facts(buyer, merchant))  # no packet, no device, no network, no session
    for name in ("claim_to_spend_seconds", "above_min_spend_fen", "triangle_repeats", "shares_device_with_issuer"):
        assert scored.values[name] is None, name
    assert scored.values["accounts_on_device"] is None and scored.values["accounts_on_net"] is None
    assert scored.values["seconds_from_first_view"] is None and scored.values["no_browsing"] is True
    assert scored.values["orders_before"] == 0 and scored.values["orders_in_10_min"] == 1


def test_the_window_counts_only_the_ten_minutes_up_to_the_payment(people):
    buyer, _, merchant = people
    # 10 minutes before exactly, 11 before, and one noted for a later time: none is in (NOW - 10 min, NOW]
    db.session.add(RiskProfile(user_id=buyer.id, paid_orders=3, recent_paid_at=paid_list(-1, 10, 11)))
    db.session.commit()
    assert score_order(facts(buyer, merchant)).values["orders_in_10_min"] == 1


def test_orders_in_10_min_is_a_sliding_window(people):
    # orders every 4 minutes: each one's window (10 minutes up to it) holds it and the two before it
    buyer, _, merchant = people
    counted_orders = []
    for minutes in range(0, 28, 4):
        at = NOW + timedelta(minutes=minutes)
        counted_orders.append(score_order(facts(buyer, merchant, paid_at=at)).values["orders_in_10_min"])
        note_paid_order(buyer.id, at, packet=False, rebated=False, night=False)
        db.session.commit()
    assert counted_orders == [1, 2, 3, 3, 3, 3, 3]


def test_the_profile_keeps_the_last_eight_paid_times_and_the_window_counts_them(people):
    buyer, _, merchant = people
    for seconds in range(0, 600, 50):  # 12 orders in 10 minutes
        note_paid_order(buyer.id, NOW - timedelta(minutes=10) + timedelta(seconds=seconds + 1), **NOTHING)
    db.session.commit()
    profile = db.session.get(RiskProfile, buyer.id)
    db.session.refresh(profile)
    kept = profile.recent_paid_at.split(",")
    assert profile.paid_orders == 12 and len(kept) == scoring.RECENT_ORDERS and len(profile.recent_paid_at) <= 111
    assert kept[0] == scoring.paid_key(NOW - timedelta(minutes=10) + timedelta(seconds=551))  # the newest first
    assert score_order(facts(buyer, merchant)).values["orders_in_10_min"] == scoring.RECENT_ORDERS + 1


NOTHING = {"packet": False, "rebated": False, "night": False}


def test_gap_uniformity_keeps_the_variance_of_short_gaps(people):
    # gaps of 0.2, 0.9, 0.4, 0.7, 0.3 s: irregular, as a person taps (a coefficient of variation of 0.52)
    buyer, _, merchant = people
    at, times = NOW - timedelta(seconds=10), []
    for gap_ms in (0, 200, 900, 400, 700, 300):
        at += timedelta(milliseconds=gap_ms)
        times.append(at)
    state = trail.fold(None, [(EventKind.VIEW, t, None) for t in times])
    assert (state["gaps"], state["gap_sum_ms"], state["gap_sq_sum"]) == (5, 2500, 1_590_000)
    db.session.add(BrowsingSession(user_id=buyer.id, **state))
    db.session.commit()
    scored = score_order(facts(buyer, merchant))
    assert scored.values["gap_uniformity"] == 0.478  # 1 - sqrt(5 × 1,590,000 - 2500²) / 2500
    assert "gap_uniformity" not in {c["feature"] for c in scored.contributions}


def test_gap_uniformity_of_identical_short_gaps_is_one():
    assert scoring._uniformity(4, 4 * 250, 4 * 250**2) == 1.0
    assert scoring._uniformity(5, 2500, 1_590_000) == 0.478
    assert scoring._uniformity(2, 500, 125_000) is None  # needs 3 gaps


def test_the_read_says_whether_a_ban_is_active_on_the_pairs_asked(people):
    buyer, _, merchant = people
    db.session.add_all(
        [
            Ban(subject="device", value="dev-x", reason="farm"),
            Ban(subject="device", value="dev-old", reason="old", lifted_at=NOW - timedelta(days=1)),
            Ban(subject="merchant", value=str(buyer.id), reason="a merchant with the buyer's number"),
        ]
    )
    db.session.commit()
    later = NOW + timedelta(days=1)
    assert score_order(facts(buyer, merchant, bans=[("device", "dev-x")], ban_at=later)).any_ban
    assert not score_order(facts(buyer, merchant, bans=[("device", "dev-old"), ("net", "dev-x")])).any_ban
    assert not score_order(facts(buyer, merchant, bans=[("user", str(buyer.id))])).any_ban  # not the merchant's
    assert score_order(facts(buyer, merchant, bans=[("merchant", str(buyer.id))])).any_ban
    assert not score_order(facts(buyer, merchant, bans=[("device", "dev-old"), ("device", "dev-y")])).any_ban


def _plan(statement: str, parameters) -> str:
    connection = db.session.connection()
    if on_postgres():
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a test's table is tiny: ask for the index
        rows = connection.exec_driver_sql("EXPLAIN " + statement, parameters).scalars()
    else:
        rows = (row[-1] for row in connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
    return "\n".join(rows)


def test_the_ban_read_looks_up_subject_and_value_along_the_index(people):
    # given a few bans and a payment asking about its buyer, device and network
    buyer, _, merchant = people
    db.session.add_all([Ban(subject="device", value=f"dev-{n}", reason="farm") for n in range(20)])
    db.session.commit()
    seen = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "risk_bans" in statement:
            seen.append((statement, parameters))

    asked = facts(buyer, merchant, bans=[("user", str(buyer.id)), ("device", "dev-3"), ("net", "10.1.2.0/24")])
    event.listen(db.engine, "before_cursor_execute", grab)
    try:
        assert score_order(asked).any_ban
    finally:
        event.remove(db.engine, "before_cursor_execute", grab)
    # then the plan reads the bans through (subject, value), never a scan of the table
    plan = _plan(*seen[0])
    if on_postgres():  # the InitPlan reading risk_bans: index scans on (subject, value), no scan of the table
        lines = plan.splitlines()
        first = next(i for i, line in enumerate(lines) if "risk_bans" in line)
        block = lines[first : next((i for i in range(first + 1, len(lines)) if "InitPlan" in lines[i]), len(lines))]
        conds = [line for line in block if "Index Cond" in line]
        assert "Seq Scan" not in "\n".join(block) and "ix_risk_bans_subject_value" in "\n".join(block), plan
        assert conds and all("(subject)::text =" in c and "(value)::text =" in c for c in conds), plan
    else:
        bans = [line for line in plan.splitlines() if "risk_bans" in line]
        assert bans and all("USING INDEX ix_risk_bans_subject_value (subject=? AND value=?)" in b for b in bans), plan


# --- the weights ----------------------------------------------------------------------------------


def values(**given) -> dict:
    found = dict.fromkeys(FEATURES)
    found.update(no_browsing=False, orders_before=5, orders_in_10_min=1, night_order=False, account_age_hours=2000)
    found.update(given)
    return found


HONEST = values(
    seconds_from_first_view=420, views_before_pay=6, browse_depth=3, deep_link=False, gap_uniformity=0.2,
    accounts_on_device=1, accounts_on_net=2, claim_to_spend_seconds=86_400, above_min_spend_fen=1_250,
    packet_order_share=0.4, shares_with_merchant_staff=False,
)  # fmt: skip
HONEST_NEWCOMER = values(
    seconds_from_first_view=300, views_before_pay=4, browse_depth=2, deep_link=False, accounts_on_device=1,
    account_age_hours=1, orders_before=0, claim_to_spend_seconds=30, above_min_spend_fen=80,
)  # fmt: skip
CLICK_FARM = values(
    no_browsing=True, views_before_pay=0, browse_depth=0, accounts_on_device=6, accounts_on_net=14,
    account_age_hours=2, orders_before=0, claim_to_spend_seconds=12, above_min_spend_fen=3_00,
)  # fmt: skip
RING = values(
    seconds_from_first_view=8, views_before_pay=1, browse_depth=0, deep_link=True, above_min_spend_fen=1,
    triangle_repeats=4, shares_device_with_issuer=True, shares_net_with_issuer=True,
    shares_with_merchant_staff=True, claim_to_spend_seconds=20, accounts_on_device=3,
)  # fmt: skip
SYBIL = values(
    no_browsing=True, accounts_on_device=5, accounts_on_net=11, account_age_hours=3, orders_before=0,
    claim_to_spend_seconds=50, above_min_spend_fen=0,
)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "given", "low", "high"),
    [
        ("honest", HONEST, 0, 29),
        ("honest newcomer", HONEST_NEWCOMER, 0, 49),
        ("click farm", CLICK_FARM, 60, 100),
        ("ring", RING, 90, 100),
        ("sybil", SYBIL, 60, 100),
    ],
)
def test_the_weights_keep_honest_shopping_low_and_the_planted_frauds_high(name, given, low, high):
    score, found = contributions(given)
    assert low <= score <= high, (name, score, found)


def test_behaviour_alone_stays_below_the_review_threshold():
    alone = values(
        no_browsing=True, account_age_hours=1, orders_before=0, claim_to_spend_seconds=5, above_min_spend_fen=0,
        orders_in_10_min=4, night_order=True,
    )  # fmt: skip
    score, found = contributions(alone)
    assert score == scoring.BEHAVIOUR_CAP < 60
    assert sum(c["points"] for c in found) > scoring.BEHAVIOUR_CAP  # each still said, in words


# --- the incremental updates ----------------------------------------------------------------------


def test_the_profile_counts_each_paid_order_and_its_paid_times(people):
    buyer, issuer, merchant = people
    note_paid_order(buyer.id, NOW, packet=True, rebated=True, night=False)
    note_paid_order(buyer.id, NOW + timedelta(minutes=4), packet=False, rebated=True, night=True)
    note_paid_order(buyer.id, NOW + timedelta(minutes=15), packet=True, rebated=False, night=False)
    note_refunded_after_rebate(buyer.id)
    db.session.commit()
    profile = db.session.get(RiskProfile, buyer.id)
    db.session.refresh(profile)
    assert (profile.paid_orders, profile.packet_orders, profile.rebated_orders, profile.night_orders) == (3, 2, 2, 1)
    assert profile.refunded_after_rebate == 1
    assert (profile.first_order_at, profile.last_order_at) == (NOW, NOW + timedelta(minutes=15))
    assert profile.recent_paid_at == paid_list(-15, -4, 0)  # newest first


def test_the_pair_counts_each_order_of_the_triangle(people):
    buyer, issuer, merchant = people
    note_pair("user", issuer.id, buyer.id, merchant.id, NOW)
    note_pair("user", issuer.id, buyer.id, merchant.id, NOW + timedelta(hours=1))
    db.session.commit()
    pair = db.session.execute(select(RiskPair)).scalar_one()
    assert (pair.orders, pair.last_at) == (2, NOW + timedelta(hours=1))
