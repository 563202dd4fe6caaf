"""The mini-program money path over HTTP: claim, order, wallet, rebates; every bad input changes nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from models import Campaign, IdempotencyRecord, LedgerEntry, Order, OrderLine, RedPacket, User, db, utcnow
from rebate.packets import generate_batch

CLAIM = "/api/v1/red-packets/claim"
ORDERS = "/api/v1/orders"
RULES = {
    "roles": [
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 20_00, "min_order_fen": 150_00},
    ]
}
RESERVATION = 10_00 + 20_00


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def snapshot() -> dict:
    """Everything a refused request must leave as it was."""
    db.session.rollback()
    packets = db.session.execute(
        select(RedPacket.id, RedPacket.status, RedPacket.owner_id, RedPacket.reserved_fen).order_by(RedPacket.id)
    ).all()
    budgets = db.session.execute(
        select(Campaign.id, Campaign.budget_reserved_fen, Campaign.budget_committed_fen).order_by(Campaign.id)
    ).all()
    return {
        "orders": count(Order),
        "lines": count(OrderLine),
        "entries": count(LedgerEntry),
        "packets": [tuple(p) for p in packets],
        "budgets": [tuple(b) for b in budgets],
    }


@pytest.fixture
def world(make_campaign, make_merchant, make_product, make_user, user_headers):
    no_limits = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}
    campaign = make_campaign(RULES, budget_limit_fen=1_000_00, packet_amount_fen=10_00, claim_limits=no_limits)
    codes = [p.claim_code for p in generate_batch(campaign, 3, utcnow(), batch_ref="b")]
    db.session.commit()
    merchant = make_merchant()
    product = make_product(merchant, price_fen=100_00)
    alice = make_user()
    return {
        "campaign": campaign,
        "codes": codes,
        "merchant": merchant,
        "product": product,
        "alice": alice,
        "headers": user_headers(alice),
    }


def claim(client, world, code=None, headers=None):
    response = client.post(CLAIM, json={"code": code or world["codes"][0]}, headers=headers or world["headers"])
    assert response.status_code == 201, response.json
    return response.json


# --- happy paths ---------------------------------------------------------------------------


def test_claim_then_list_my_packets(client, world):
    body = claim(client, world)

    assert (body["status"], body["amount_fen"], body["campaign_id"]) == ("issued", 10_00, world["campaign"].id)
    listed = client.get("/api/v1/me/red-packets", headers=world["headers"]).json["items"]
    assert [(p["id"], p["status"]) for p in listed] == [(body["id"], "issued")]
    db.session.rollback()
    campaign = db.session.get(Campaign, world["campaign"].id)
    assert (campaign.budget_reserved_fen, campaign.budget_committed_fen) == (RESERVATION, 0)


def test_claim_code_is_not_shown_to_others_and_listing_is_per_user(client, world, make_user, user_headers):
    claim(client, world)
    bob = user_headers(make_user())

    assert client.get("/api/v1/me/red-packets", headers=bob).json == {"items": []}
    response = client.post(CLAIM, json={"code": world["codes"][0]}, headers=bob)
    assert (response.status_code, response.json["error"]) == (404, "not_found")


def test_create_order_with_idempotency_key_replays_the_same_order(client, world):
    packet = claim(client, world)
    body = {"lines": [{"product_id": world["product"].id, "quantity": 2}], "red_packet_id": packet["id"]}
    headers = {**world["headers"], "Idempotency-Key": "order-1"}

    first = client.post(ORDERS, json=body, headers=headers)
    again = client.post(ORDERS, json=body, headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    order_fields = {k: v for k, v in first.json.items() if not k.startswith("payment")}
    assert {k: v for k, v in again.json.items() if not k.startswith("payment")} == order_fields
    assert (first.json["total_fen"], first.json["discount_fen"], first.json["payable_fen"]) == (200_00, 10_00, 190_00)
    assert count(Order) == 1
    # the same key with another body is refused and changes nothing
    before = snapshot()
    other = client.post(ORDERS, json={"lines": [{"product_id": world["product"].id, "quantity": 1}]}, headers=headers)
    assert (other.status_code, other.json["error"]) == (422, "idempotency_key_reused")
    assert snapshot() == before


def test_get_order_is_for_its_owner_only(client, world, make_user, user_headers, pay):
    created = client.post(
        ORDERS, json={"lines": [{"product_id": world["product"].id, "quantity": 1}]}, headers=world["headers"]
    ).json

    mine = client.get(f"{ORDERS}/{created['id']}", headers=world["headers"])
    theirs = client.get(f"{ORDERS}/{created['id']}", headers=user_headers(make_user()))
    missing = client.get(f"{ORDERS}/{created['id'] + 1000}", headers=world["headers"])

    assert mine.status_code == 200
    assert (mine.json["status"], mine.json["payable_fen"], mine.json["rebates"]) == ("created", 100_00, [])
    assert (theirs.status_code, theirs.json["error"]) == (404, "not_found")
    assert missing.status_code == 404


def test_wallet_and_rebates_explain_paid_and_skipped_rules(client, world, pay):
    # given: two packets; a 100-yuan order (90 paid) is below the rule's 150 minimum, a 200-yuan one (190) is not
    small_packet = claim(client, world, world["codes"][0])
    big_packet = claim(client, world, world["codes"][1])
    small = client.post(
        ORDERS,
        json={"lines": [{"product_id": world["product"].id, "quantity": 1}], "red_packet_id": small_packet["id"]},
        headers=world["headers"],
    ).json
    big = client.post(
        ORDERS,
        json={"lines": [{"product_id": world["product"].id, "quantity": 2}], "red_packet_id": big_packet["id"]},
        headers=world["headers"],
    ).json

    # when: both are paid
    pay(db.session.get(Order, small["id"]))
    pay(db.session.get(Order, big["id"]))

    # then: 5 % of 190 = 9.50 to the balance; the small order's rule is skipped and says why
    wallet = client.get("/api/v1/me/wallet", headers=world["headers"]).json
    assert wallet == {
        "cash_fen": 9_50,
        "points": 0,
        "held_for_orders_fen": 0,
        "points_held_for_orders": 0,
        "staked_fen": 0,
        "points_staked": 0,
        "receivables": [],
        "owed_to_merchants_fen": 0,
        "payouts_in_progress_fen": 0,
    }
    items = client.get("/api/v1/me/rebates", headers=world["headers"]).json["items"]
    by_order = {i["order_id"]: i for i in items}
    assert (by_order[big["id"]]["amount_fen"], by_order[big["id"]]["status"]) == (9_50, "awarded")
    assert by_order[big["id"]]["explanation"] == "Consumer rebate of 9.50 yuan as balance credit."
    assert by_order[big["id"]]["mine"] is True
    skipped = by_order[small["id"]]
    assert (skipped["amount_fen"], skipped["status"], skipped["reason_code"]) == (0, "skipped", "below_minimum")
    assert "below the rule's minimum" in skipped["explanation"]
    assert skipped["reasons"] == ["order 90.00 yuan is below the minimum of 150.00 yuan"]
    detail = client.get(f"{ORDERS}/{big['id']}", headers=world["headers"]).json
    assert (detail["status"], detail["paid_fen"], [r["amount_fen"] for r in detail["rebates"]]) == (
        "paid",
        190_00,
        [9_50],
    )


def test_idempotent_claim_replays(client, world):
    headers = {**world["headers"], "Idempotency-Key": "claim-1"}
    first = client.post(CLAIM, json={"code": world["codes"][0]}, headers=headers)
    again = client.post(CLAIM, json={"code": world["codes"][0]}, headers=headers)

    assert first.status_code == again.status_code == 201
    assert again.json == first.json
    db.session.rollback()
    assert db.session.get(Campaign, world["campaign"].id).budget_reserved_fen == RESERVATION


# --- bad input: orders ---------------------------------------------------------------------


def line(world, **overrides):
    return {"product_id": world["product"].id, "quantity": 1, **overrides}


BAD_ORDERS = {
    "missing lines": (lambda w: {}, 422),
    "empty lines": (lambda w: {"lines": []}, 422),
    "lines not a list": (lambda w: {"lines": line(w)}, 422),
    "quantity as a string": (lambda w: {"lines": [line(w, quantity="1")]}, 422),
    "quantity as a float": (lambda w: {"lines": [line(w, quantity=1.5)]}, 422),
    "quantity as a whole float": (lambda w: {"lines": [line(w, quantity=1.0)]}, 422),
    "quantity as a bool": (lambda w: {"lines": [line(w, quantity=True)]}, 422),
    "quantity zero": (lambda w: {"lines": [line(w, quantity=0)]}, 422),
    "quantity negative": (lambda w: {"lines": [line(w, quantity=-1)]}, 422),
    "quantity 1000": (lambda w: {"lines": [line(w, quantity=1000)]}, 422),
    "quantity missing": (lambda w: {"lines": [{"product_id": w["product"].id}]}, 422),
    "product id as a string": (lambda w: {"lines": [line(w, product_id=str(w["product"].id))]}, 422),
    "product id zero": (lambda w: {"lines": [line(w, product_id=0)]}, 422),
    "51 lines": (lambda w: {"lines": [line(w)] * 51}, 422),
    "unknown field": (lambda w: {"lines": [line(w)], "discount_fen": 100_00}, 422),
    "unknown line field": (lambda w: {"lines": [line(w, unit_price_fen=1)]}, 422),
    "packet id as a string": (lambda w: {"lines": [line(w)], "red_packet_id": "1"}, 422),
    "unknown product": (lambda w: {"lines": [line(w, product_id=w["product"].id + 999)]}, 404),
    "unknown packet": (lambda w: {"lines": [line(w)], "red_packet_id": 999_999}, 404),
    "body is a list": (lambda w: [line(w)], 422),
    "body is null": (lambda w: None, 422),
}


@pytest.mark.parametrize("case", BAD_ORDERS, ids=list(BAD_ORDERS))
def test_bad_order_requests_are_refused_and_change_nothing(client, world, case):
    make_body, status = BAD_ORDERS[case]
    claim(client, world)
    before = snapshot()

    response = client.post(
        ORDERS, data=json.dumps(make_body(world)), content_type="application/json", headers=world["headers"]
    )

    assert response.status_code == status, response.json
    assert set(response.json) >= {"error", "message"}
    assert snapshot() == before


def test_products_of_two_merchants_are_refused(client, world, make_product):
    other = make_product(price_fen=5_00)
    before = snapshot()

    response = client.post(
        ORDERS, json={"lines": [line(world), line(world, product_id=other.id)]}, headers=world["headers"]
    )

    assert (response.status_code, response.json["error"]) == (422, "mixed_merchants")
    assert snapshot() == before


def test_inactive_product_is_not_found(client, world):
    world["product"].active = False
    db.session.commit()
    before = snapshot()

    response = client.post(ORDERS, json={"lines": [line(world)]}, headers=world["headers"])

    assert (response.status_code, response.json["error"]) == (404, "product_not_found")
    assert snapshot() == before


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ("{", "application/json"),
        ('{"lines": [}', "application/json"),
        ('{"lines": [{"product_id": 1, "quantity": NaN}]}', "application/json"),
        ("", "application/json"),
        ("\xff\xfe", "application/json"),
        ('{"lines": []}', "text/plain"),
    ],
)
def test_malformed_json_is_refused(client, world, data, content_type):
    before = snapshot()

    response = client.post(ORDERS, data=data, content_type=content_type, headers=world["headers"])

    assert response.status_code == 422
    assert response.json["error"] in ("invalid_json", "validation_error")
    assert snapshot() == before


def test_bad_order_with_idempotency_key_is_answered_the_same_way_and_creates_nothing(client, world):
    headers = {**world["headers"], "Idempotency-Key": "bad-1"}
    body = {"lines": [line(world, product_id=world["product"].id + 999)]}
    before = snapshot()

    first = client.post(ORDERS, json=body, headers=headers)
    again = client.post(ORDERS, json=body, headers=headers)

    assert first.status_code == again.status_code == 404
    assert again.json == first.json
    assert snapshot() == before


def test_oversized_idempotency_key_is_refused(client, world):
    before = snapshot()
    response = client.post(
        ORDERS, json={"lines": [line(world)]}, headers={**world["headers"], "Idempotency-Key": "k" * 129}
    )
    assert (response.status_code, response.json["error"]) == (422, "invalid_idempotency_key")
    assert snapshot() == before
    assert count(IdempotencyRecord) == 0


# --- bad input: claims ---------------------------------------------------------------------

BAD_CLAIMS = {
    "missing code": ({}, 422),
    "code as a number": ({"code": 12345678}, 422),
    "code too short": ({"code": "ABC"}, 422),
    "code too long": ({"code": "A" * 33}, 422),
    "code with symbols": ({"code": "ABCD-EFGH-JKLM"}, 422),
    "code with SQL": ({"code": "' OR 1=1 --"}, 422),
    "unknown field": ({"code": "ABCDEFGH", "user_id": 1}, 422),
    "unknown code": ({"code": "ZZZZZZZZZZZZZZZZ"}, 404),
}


@pytest.mark.parametrize("case", BAD_CLAIMS, ids=list(BAD_CLAIMS))
def test_bad_claims_are_refused_and_change_nothing(client, world, case):
    body, status = BAD_CLAIMS[case]
    before = snapshot()

    response = client.post(CLAIM, json=body, headers=world["headers"])

    assert response.status_code == status, response.json
    assert snapshot() == before


def test_claim_with_malformed_json_is_refused(client, world):
    before = snapshot()
    response = client.post(CLAIM, data='{"code": ', content_type="application/json", headers=world["headers"])
    assert (response.status_code, response.json["error"]) == (422, "invalid_json")
    assert snapshot() == before


# --- who may call --------------------------------------------------------------------------

CALLS = [
    ("post", CLAIM, lambda w: {"code": w["codes"][0]}),
    ("get", "/api/v1/me/red-packets", None),
    ("post", ORDERS, lambda w: {"lines": [line(w)]}),
    ("get", ORDERS + "/1", None),
    ("get", "/api/v1/me/wallet", None),
    ("get", "/api/v1/me/rebates", None),
]


@pytest.mark.parametrize(("method", "url", "make_body"), CALLS, ids=[f"{m} {u}" for m, u, _ in CALLS])
@pytest.mark.parametrize(
    ("auth", "status"),
    [(None, 401), ("Bearer not-a-token", 401), ("Basic abc", 401), ("banned", 403)],
    ids=["no token", "bad token", "wrong scheme", "banned"],
)
def test_callers_without_a_valid_active_user_are_refused(client, world, method, url, make_body, auth, status):
    headers = {}
    if auth == "banned":
        world["alice"].status = "banned"
        db.session.commit()
        headers = world["headers"]
    elif auth is not None:
        headers = {"Authorization": auth}
    before = snapshot()

    kwargs = {"json": make_body(world)} if make_body else {}
    response = getattr(client, method)(url, headers=headers, **kwargs)

    assert response.status_code == status, response.json
    assert response.json["error"] in ("missing_token", "invalid_token", "user_banned")
    assert snapshot() == before


def test_token_of_a_deleted_user_is_refused(client, world, user_headers):
    ghost = User()
    db.session.add(ghost)
    db.session.flush()
    headers = user_headers(ghost)
    db.session.rollback()

    response = client.get("/api/v1/me/wallet", headers=headers)

    assert (response.status_code, response.json["error"]) == (401, "invalid_token")
