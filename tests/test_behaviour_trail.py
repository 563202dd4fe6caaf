"""The behaviour trail: POST /api/v1/events checks whole batches, rate-limits, places in time, stores and folds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from models import db
from models.limits import LimitCounter
from models.risk import BehaviourEvent, BrowsingSession, EventKind
from risk import trail
from risk.scoring import OrderFacts, score_order
from tests.concurrency import post_together, together

EVENTS = "/api/v1/events"
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def session_of(user) -> BrowsingSession:
    db.session.rollback()
    return db.session.get(BrowsingSession, user.id, populate_existing=True)


@pytest.fixture
def shop(make_user, make_product, user_headers):
    user, product = make_user(), make_product()
    return user, product, user_headers(user)


def device_headers(client, headers: dict) -> dict:
    token = client.post("/api/v1/devices", headers=headers).json["device_token"]
    return {**headers, "X-Device-Token": token}


def test_a_batch_is_stored_placed_by_the_server_in_the_clients_order_and_folded(client, shop, monkeypatch):
    user, product, headers = shop
    monkeypatch.setattr("web.events_api.utcnow", lambda: T0)
    long_query = "红包" * 40  # 80 characters: kept, truncated to 64
    batch = [  # the client's clock is 5 s fast: only the offsets count, the latest event is at the receive time
        {"kind": "search", "query": long_query, "client_at": "2026-03-02T17:59:58+08:00"},
        {"kind": "view", "product_id": product.id, "dwell_ms": 4000, "client_at": "2026-03-02T09:59:50Z"},
        {"kind": "page", "path": "/pages/cart", "dwell_ms": 1500},  # no client_at: the view's time, after it
        {"kind": "cart_add", "product_id": product.id, "client_at": "2026-03-02T10:00:05Z"},
    ]
    answer = client.post(EVENTS, json={"events": batch}, headers=headers)
    assert answer.status_code == 202, answer.json
    assert answer.json == {"accepted": 4}
    rows = db.session.execute(select(BehaviourEvent).order_by(BehaviourEvent.id)).scalars().all()
    assert [r.kind for r in rows] == [EventKind.VIEW, EventKind.PAGE, EventKind.SEARCH, EventKind.CART_ADD]
    seconds = [timedelta(seconds=s) for s in (15, 15, 7, 0)]
    assert [r.at for r in rows] == [T0 - s for s in seconds]
    assert rows[2].detail == long_query[:64] and rows[1].detail == "/pages/cart"
    assert rows[0].product_id == product.id and rows[0].dwell_ms == 4000 and rows[0].user_id == user.id
    s = session_of(user)
    assert (s.views, s.searches, s.pages, s.cart_adds, s.compares, s.shares) == (1, 1, 1, 1, 0, 0)
    start = T0 - timedelta(seconds=15)
    assert s.entry_kind == EventKind.VIEW and s.started_at == start and s.first_view_at == start
    assert s.last_cart_at == T0 and s.last_at == T0 and s.dwell_ms == 5500 and s.events_total == 4
    assert (s.gaps, s.gap_sum_ms, s.gap_sq_sum) == (3, 15_000, 8000**2 + 7000**2)  # ms and ms²


def at_client(minutes: float) -> str:
    """A client time (Beijing offset, as the phone says it) ``minutes`` after an arbitrary moment of the phone."""
    return (datetime(2026, 3, 2, 18, 0, tzinfo=timezone(timedelta(hours=8))) + timedelta(minutes=minutes)).isoformat()


def test_a_buffered_batch_is_spread_back_by_its_client_offsets(client, shop, monkeypatch, make_merchant):
    user, product, headers = shop
    monkeypatch.setattr("web.events_api.utcnow", lambda: T0)
    batch = [  # ten minutes of browsing, sent at checkout
        {"kind": "view", "product_id": product.id, "client_at": at_client(0)},
        {"kind": "search", "query": "tea", "client_at": at_client(3)},
        {"kind": "compare", "product_id": product.id, "client_at": at_client(7)},
        {"kind": "cart_add", "product_id": product.id, "client_at": at_client(10)},
    ]
    assert client.post(EVENTS, json={"events": batch}, headers=headers).status_code == 202
    stored = db.session.execute(select(BehaviourEvent.at).order_by(BehaviourEvent.id)).scalars().all()
    assert stored == [T0 - timedelta(minutes=m) for m in (10, 7, 3, 0)]
    s = session_of(user)
    assert s.first_view_at == T0 - timedelta(minutes=10) and s.started_at == T0 - timedelta(minutes=10)
    assert s.last_cart_at == T0 and (s.gaps, s.gap_sum_ms) == (3, 600_000)
    # paid 20 s later: ten minutes after the first view, not 20 s
    scored = score_order(OrderFacts(user.id, make_merchant().id, 100_00, T0 + timedelta(seconds=20)))
    assert scored.values["seconds_from_first_view"] == 620 and scored.values["cart_to_pay_seconds"] == 20


def test_client_offsets_older_than_thirty_minutes_are_clamped(client, shop, monkeypatch):
    user, product, headers = shop
    monkeypatch.setattr("web.events_api.utcnow", lambda: T0)
    batch = [
        {"kind": "view", "product_id": product.id, "client_at": at_client(-24 * 60)},  # a day before: clamped
        {"kind": "page", "path": "/a"},  # the view's time
        {"kind": "search", "query": "tea", "client_at": at_client(-10)},
        {"kind": "cart_add", "product_id": product.id, "client_at": at_client(0)},
    ]
    assert client.post(EVENTS, json={"events": batch}, headers=headers).status_code == 202
    stored = db.session.execute(select(BehaviourEvent.at).order_by(BehaviourEvent.id)).scalars().all()
    assert stored == [T0 - timedelta(minutes=30), T0 - timedelta(minutes=30), T0 - timedelta(minutes=10), T0]
    s = session_of(user)
    assert s.first_view_at == T0 - timedelta(minutes=30) and s.last_at == T0


def test_a_client_clock_in_the_future_places_nothing_after_the_receive_time(client, shop, monkeypatch):
    user, product, headers = shop
    monkeypatch.setattr("web.events_api.utcnow", lambda: T0)
    batch = [
        {"kind": "page", "path": "/first"},  # nothing before it in the batch: the receive time
        {"kind": "view", "product_id": product.id, "client_at": "2030-01-01T00:00:00Z"},  # the future: now
        {"kind": "share", "product_id": product.id},
    ]
    assert client.post(EVENTS, json={"events": batch}, headers=headers).status_code == 202
    assert set(db.session.execute(select(BehaviourEvent.at)).scalars()) == {T0}
    s = session_of(user)
    assert s.first_view_at == T0 and s.last_at == T0 and (s.gaps, s.gap_sum_ms) == (2, 0)


def test_a_batch_is_never_placed_before_the_sessions_last_event(client, shop, monkeypatch):
    user, product, headers = shop
    clock = {"now": T0}
    monkeypatch.setattr("web.events_api.utcnow", lambda: clock["now"])
    assert client.post(EVENTS, json={"events": [{"kind": "page", "path": "/a"}]}, headers=headers).status_code == 202
    clock["now"] = T0 + timedelta(minutes=2)
    batch = [
        {"kind": "view", "product_id": product.id, "client_at": at_client(-5)},  # before the last event: at it
        {"kind": "search", "query": "tea", "client_at": at_client(-1)},
        {"kind": "cart_add", "product_id": product.id, "client_at": at_client(0)},
    ]
    assert client.post(EVENTS, json={"events": batch}, headers=headers).status_code == 202
    stored = db.session.execute(select(BehaviourEvent.at).order_by(BehaviourEvent.id)).scalars().all()
    assert stored == [T0, T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    s = session_of(user)
    assert s.started_at == T0 and s.first_view_at == T0 and (s.gaps, s.gap_sum_ms) == (3, 120_000)


def test_sessions_fold_across_batches_by_hand(client, shop, monkeypatch):
    user, product, headers = shop
    clock = {"now": T0}
    monkeypatch.setattr("web.events_api.utcnow", lambda: clock["now"])

    def send(at: datetime, *events):
        clock["now"] = at
        assert client.post(EVENTS, json={"events": list(events)}, headers=headers).status_code == 202

    view = {"kind": "view", "product_id": product.id, "dwell_ms": 1000}
    send(T0, {"kind": "page", "path": "/home"}, view)
    # uniform gaps of 2.5 s: 2500 ms each, squared 6,250,000 ms²
    send(T0 + timedelta(milliseconds=2500), {"kind": "cart_add", "product_id": product.id})
    send(T0 + timedelta(milliseconds=5000), {"kind": "compare", "product_id": product.id})
    s = session_of(user)
    assert s.started_at == T0 and s.entry_kind == EventKind.PAGE and s.first_view_at == T0
    assert s.last_cart_at == T0 + timedelta(milliseconds=2500)
    assert (s.gaps, s.gap_sum_ms, s.gap_sq_sum) == (3, 5000, 12_500_000)
    assert (s.pages, s.views, s.cart_adds, s.compares, s.dwell_ms, s.events_total) == (1, 1, 1, 1, 1000, 4)
    # exactly 30 minutes later: the same session (a gap of 1,800,000 ms: 3.24e12 ms²)
    late = T0 + timedelta(milliseconds=5000) + timedelta(minutes=30)
    send(late, {"kind": "share", "product_id": product.id})
    s = session_of(user)
    assert s.started_at == T0 and (s.gaps, s.gap_sum_ms, s.gap_sq_sum) == (4, 1_805_000, 3_240_012_500_000)
    # more than 30 minutes later: a new session, its counters reset, the lifetime total goes on
    again = late + timedelta(minutes=30, milliseconds=1)
    send(again, {"kind": "search", "query": "shoes"}, view)
    s = session_of(user)
    assert s.started_at == again and s.entry_kind == EventKind.SEARCH and s.first_view_at == again
    assert s.last_cart_at is None and s.last_at == again
    assert (s.views, s.searches, s.cart_adds, s.compares, s.shares, s.pages) == (1, 1, 0, 0, 0, 0)
    assert (s.gaps, s.gap_sum_ms, s.gap_sq_sum, s.dwell_ms, s.events_total) == (1, 0, 0, 1000, 7)


def test_fold_counts_gaps_in_ms_and_their_squares_in_ms2_exactly():
    at = [T0, T0 + timedelta(seconds=1.5), T0 + timedelta(seconds=4), T0 + timedelta(seconds=4, milliseconds=999)]
    state = trail.fold(None, [(EventKind.VIEW, t, None) for t in at])
    # gaps 1500, 2500, 999 ms: nothing rounded away
    assert (state["gaps"], state["gap_sum_ms"], state["gap_sq_sum"]) == (3, 4999, 1500**2 + 2500**2 + 999**2)
    assert state["views"] == 4 and state["first_view_at"] == T0 and state["last_at"] == at[-1]


BAD_EVENTS = [
    ("unknown kind", {"kind": "purchase", "product_id": 1}, "events.1"),
    ("view without product", {"kind": "view"}, "events.1"),
    ("compare without product", {"kind": "compare"}, "events.1"),
    ("cart_add without product", {"kind": "cart_add"}, "events.1"),
    ("cart_remove without product", {"kind": "cart_remove"}, "events.1"),
    ("search without query", {"kind": "search"}, "events.1"),
    ("page without path", {"kind": "page"}, "events.1"),
    ("query on a view", {"kind": "view", "product_id": "P", "query": "x"}, "events.1"),
    ("path on a search", {"kind": "search", "query": "x", "path": "/a"}, "events.1"),
    ("product id zero", {"kind": "view", "product_id": 0}, "events.1.product_id"),
    ("product id as text", {"kind": "view", "product_id": "7"}, "events.1.product_id"),
    ("query over 256", {"kind": "search", "query": "q" * 257}, "events.1.query"),
    ("path over 256", {"kind": "page", "path": "/" + "p" * 256}, "events.1.path"),
    ("empty query", {"kind": "search", "query": "   "}, "events.1.query"),
    ("control character", {"kind": "search", "query": "a\nb"}, "events.1.query"),
    ("negative dwell", {"kind": "page", "path": "/a", "dwell_ms": -1}, "events.1.dwell_ms"),
    ("dwell over an hour", {"kind": "page", "path": "/a", "dwell_ms": 3_600_001}, "events.1.dwell_ms"),
    ("dwell as float", {"kind": "page", "path": "/a", "dwell_ms": 1.5}, "events.1.dwell_ms"),
    ("naive client_at", {"kind": "page", "path": "/a", "client_at": "2026-03-02T10:00:00"}, "events.1.client_at"),
    ("bad client_at", {"kind": "page", "path": "/a", "client_at": "yesterday"}, "events.1.client_at"),
    ("unknown field", {"kind": "page", "path": "/a", "user_id": 9}, "events.1.user_id"),
    ("not an object", "view", "events.1"),
]


@pytest.mark.parametrize(("case", "event", "field"), BAD_EVENTS, ids=[c for c, _, _ in BAD_EVENTS])
def test_one_bad_event_refuses_the_whole_batch_naming_it(client, shop, case, event, field):
    user, product, headers = shop
    if isinstance(event, dict) and event.get("product_id") == "P":
        event = {**event, "product_id": product.id}
    good = {"kind": "view", "product_id": product.id}
    answer = client.post(EVENTS, json={"events": [good, event, good]}, headers=headers)
    assert answer.status_code == 422, (case, answer.json)
    fields = [d["field"] for d in answer.json["details"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), (case, fields)
    assert count(BehaviourEvent) == 0 and count(BrowsingSession) == 0 and count(LimitCounter) == 0


@pytest.mark.parametrize("events", [[], [{"kind": "page", "path": "/a"}] * 101, None, {"kind": "page"}])
def test_empty_oversized_and_malformed_batches_are_422(client, shop, events):
    _, _, headers = shop
    answer = client.post(EVENTS, json={"events": events}, headers=headers)
    assert answer.status_code == 422
    assert client.post(EVENTS, json={"events": [], "extra": 1}, headers=headers).status_code == 422
    assert count(BehaviourEvent) == 0


def test_a_batch_of_100_is_the_most_accepted(client, shop):
    _, product, headers = shop
    answer = client.post(EVENTS, json={"events": [{"kind": "view", "product_id": product.id}] * 100}, headers=headers)
    assert answer.status_code == 202 and answer.json == {"accepted": 100}
    assert count(BehaviourEvent) == 100


def test_an_unknown_or_inactive_product_refuses_the_batch_naming_the_event(client, shop, make_product):
    _, product, headers = shop
    retired = make_product()
    retired.active = False
    db.session.commit()
    batch = [
        {"kind": "view", "product_id": product.id},
        {"kind": "cart_add", "product_id": 999_999},
        {"kind": "share", "product_id": retired.id},
    ]
    answer = client.post(EVENTS, json={"events": batch}, headers=headers)
    assert answer.status_code == 422
    assert answer.json["error"] == "unknown_product"
    assert "events.1.product_id" in answer.json["message"]
    assert [d["field"] for d in answer.json["details"]] == ["events.1.product_id", "events.2.product_id"]
    assert count(BehaviourEvent) == 0 and count(BrowsingSession) == 0


def test_events_need_a_signed_in_person_and_a_device_token_we_issued(client, shop):
    _, product, headers = shop
    batch = {"events": [{"kind": "view", "product_id": product.id}]}
    assert client.post(EVENTS, json=batch).status_code == 401
    forged = client.post(EVENTS, json=batch, headers={**headers, "X-Device-Token": "made-up"})
    assert forged.status_code == 422 and forged.json["error"] == "invalid_device_token"
    assert count(BehaviourEvent) == 0


def test_the_rate_per_person_refuses_a_whole_batch_and_stores_nothing_of_it(app, client, shop):
    user, product, headers = shop
    app.config["RISK_EVENTS_PER_MINUTE"] = 5
    view = {"kind": "view", "product_id": product.id}
    assert client.post(EVENTS, json={"events": [view] * 3}, headers=headers).status_code == 202
    refused = client.post(EVENTS, json={"events": [view] * 3}, headers=headers)
    assert refused.status_code == 429
    assert refused.json["error"] == "events_rate_limited" and "per person" in refused.json["message"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert count(BehaviourEvent) == 3 and session_of(user).events_total == 3
    assert client.post(EVENTS, json={"events": [view] * 2}, headers=headers).status_code == 202
    assert client.post(EVENTS, json={"events": [view] * 6}, headers=headers).status_code == 429  # more than a minute's
    assert count(BehaviourEvent) == 5


def test_the_rate_per_device_is_shared_by_the_people_on_it(app, client, shop, make_user, user_headers):
    _, product, headers = shop
    app.config["RISK_EVENTS_PER_MINUTE"] = 4
    with_device = device_headers(client, headers)
    other = {**user_headers(make_user()), "X-Device-Token": with_device["X-Device-Token"]}
    view = {"kind": "view", "product_id": product.id}
    assert client.post(EVENTS, json={"events": [view] * 3}, headers=with_device).status_code == 202
    refused = client.post(EVENTS, json={"events": [view] * 2}, headers=other)
    assert refused.status_code == 429 and "per device" in refused.json["message"]
    assert count(BehaviourEvent) == 3
    assert count(BrowsingSession) == 1  # the refused person's session was not started either
    assert client.post(EVENTS, json={"events": [view] * 2}, headers=user_headers(make_user())).status_code == 202


def test_the_rate_window_turns_over_each_minute(app, client, shop, monkeypatch):
    _, product, headers = shop
    app.config["RISK_EVENTS_PER_MINUTE"] = 2
    clock = {"now": T0 + timedelta(seconds=50)}
    monkeypatch.setattr("web.events_api.utcnow", lambda: clock["now"])
    batch = {"events": [{"kind": "view", "product_id": product.id}] * 2}
    assert client.post(EVENTS, json=batch, headers=headers).status_code == 202
    refused = client.post(EVENTS, json=batch, headers=headers)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "10"
    clock["now"] = T0 + timedelta(seconds=60)
    assert client.post(EVENTS, json=batch, headers=headers).status_code == 202
    assert count(BehaviourEvent) == 4


@pytest.mark.parametrize("per_minute", [600, 0], ids=["rate-limited", "no-rate-limit"])
def test_concurrent_batches_of_one_person_lose_no_count(app, client, shop, per_minute):
    user, product, headers = shop
    app.config["RISK_EVENTS_PER_MINUTE"] = per_minute  # 0: only the session's row lock orders them
    batches = 6
    events = [{"kind": "view", "product_id": product.id, "dwell_ms": 10}, {"kind": "search", "query": "tea"}]
    results = post_together(app, [(EVENTS, headers, {"events": events})] * batches)
    assert results == [(202, None)] * batches
    s = session_of(user)
    assert (s.views, s.searches, s.events_total, s.dwell_ms) == (batches, batches, 2 * batches, 10 * batches)
    assert s.gaps == 2 * batches - 1  # one session: every event but the first has a gap
    assert count(BehaviourEvent) == 2 * batches


def test_concurrent_first_batches_of_one_person_make_one_session(app, shop):
    user, _, _ = shop
    user_id = user.id

    def first(_: int) -> None:
        trail.fold_session(user_id, [(trail.Event(EventKind.VIEW, dwell_ms=5), None)], T0)

    assert together(4, first, app=app) == [None] * 4
    s = session_of(user)
    assert (s.views, s.events_total, s.gaps, s.dwell_ms) == (4, 4, 3, 20)


def test_purge_removes_only_old_events_in_batches(app, make_user):
    user = make_user()
    now = T0 + timedelta(days=40)
    old = [(EventKind.PAGE, T0 + timedelta(hours=h)) for h in range(7)]  # 40 days old and more
    young = [(EventKind.VIEW, now - timedelta(days=35) + timedelta(seconds=1)), (EventKind.PAGE, now)]
    for kind, at in old + young:
        db.session.add(BehaviourEvent(user_id=user.id, kind=kind, at=at))
    edge = BehaviourEvent(user_id=user.id, kind=EventKind.SHARE, at=now - timedelta(days=35))  # exactly 35 days
    db.session.add(edge)
    db.session.commit()
    commits = []
    removed = trail.purge_events(now, keep_days=35, batch=3, commit=lambda: commits.append(db.session.commit()))
    assert removed == 7
    assert len(commits) == 3  # 3 + 3 + 1
    left = sorted(db.session.execute(select(BehaviourEvent.at)).scalars())
    assert left == sorted([edge.at] + [at for _, at in young])
    assert trail.purge_events(now, keep_days=35) == 0


def test_a_batch_costs_the_same_few_statements_however_many_events_and_sessions(client, shop, make_user, user_headers):
    from tests.test_hot_path_sql import counted

    user, product, headers = shop
    device = device_headers(client, headers)
    view = {"kind": "view", "product_id": product.id}
    assert client.post(EVENTS, json={"events": [view]}, headers=device).status_code == 202  # the session exists
    for _ in range(3):  # other people's sessions and events
        other = device_headers(client, user_headers(make_user()))
        assert client.post(EVENTS, json={"events": [view] * 5}, headers=other).status_code == 202
    costs = []
    for size in (1, 100):
        with counted() as statements:
            answer = client.post(
                EVENTS, json={"events": [view, {"kind": "search", "query": "x"}] * (size // 2 or 1)}, headers=device
            )
        assert answer.status_code == 202
        writes = [s.split()[0] for s in statements if s.split()[0] in ("INSERT", "UPDATE", "DELETE")]
        costs.append((len([s for s in statements if not s.startswith("BEGIN")]), writes))
    # the user, the products, the rate, the session (read, write), the events, the identifiers; BEGIN/COMMIT aside
    assert costs[0] == costs[1] == (7, ["INSERT", "UPDATE", "INSERT", "INSERT"])


def test_a_late_count_of_the_minute_before_never_turns_the_window_back(app, shop):
    """A batch received at 12:00:59.9 whose count lands after one received at 12:01:00 (it waited for the counter's
    row) counts in the newer minute; it had set the counter back a minute and started the new minute's count over."""
    user, _, _ = shop
    taken_at = T0 + timedelta(seconds=60)
    trail.take_event_rate(user.id, None, 2, 3, taken_at)  # 12:01:00, 2 of 3
    trail.take_event_rate(user.id, None, 1, 3, taken_at - timedelta(milliseconds=100))  # late: 3 of 3 in 12:01
    with pytest.raises(trail.EventsLimited):
        trail.take_event_rate(user.id, None, 1, 3, taken_at + timedelta(seconds=1))
    row = db.session.get(LimitCounter, f"ev:person:{user.id}")
    assert (row.window, row.count) == (trail.minute_window(taken_at), 3)
    db.session.rollback()
