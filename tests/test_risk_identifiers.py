"""Devices and network addresses noted per person and per merchant: at login, order, events and staff requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select

from models import Order, db
from models.risk import RiskIdentifier
from risk import identifiers
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from web import api

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
ADDRESS = {"REMOTE_ADDR": "10.1.2.7"}


def rows(owner_type: str | None = None) -> list[tuple]:
    db.session.rollback()
    stmt = select(RiskIdentifier.owner_type, RiskIdentifier.owner_id, RiskIdentifier.kind, RiskIdentifier.value)
    if owner_type:
        stmt = stmt.where(RiskIdentifier.owner_type == owner_type)
    return sorted(db.session.execute(stmt.order_by(RiskIdentifier.id)).tuples())


def device_of(app, token: str) -> str:
    from itsdangerous import URLSafeSerializer

    return URLSafeSerializer(app.config["SECRET_KEY"], salt="device-token-v1").loads(token)["d"]


@pytest.fixture
def device(app, client, make_user, user_headers):
    """A device token we issued, and the device id it carries."""
    token = client.post("/api/v1/devices", headers=user_headers(make_user()), environ_base=ADDRESS).json["device_token"]
    return token, device_of(app, token)


def test_note_adds_the_device_and_the_network_and_moves_last_seen_only_when_stale(app):
    identifiers.note("user", 7, "dev-a", "10.1.2.7", T0)
    db.session.commit()
    assert rows() == [("user", 7, "device", "dev-a"), ("user", 7, "net", "10.1.2.0/24")]
    identifiers.note("user", 7, "dev-a", "10.1.2.99", T0 + timedelta(minutes=9))  # fresh: not rewritten
    db.session.commit()
    seen = {r.kind: r for r in db.session.execute(select(RiskIdentifier)).scalars()}
    assert seen["device"].last_seen == T0 and seen["net"].last_seen == T0
    identifiers.note("user", 7, "dev-a", None, T0 + timedelta(minutes=11))  # stale: moved, first_seen kept
    db.session.commit()
    db.session.expire_all()
    seen = {r.kind: r for r in db.session.execute(select(RiskIdentifier)).scalars()}
    assert seen["device"].last_seen == T0 + timedelta(minutes=11) and seen["device"].first_seen == T0
    assert seen["net"].last_seen == T0
    identifiers.note("user", 7, None, "not-an-address", T0)  # nothing to note: no statement, no row
    identifiers.note("user", 8, None, "2001:db8:1:2::5", T0)
    db.session.commit()
    assert ("user", 8, "net", "2001:db8:1::/48") in rows()


def test_accounts_on_counts_people_and_shared_compares_owners(app):
    for owner_type, owner_id, device, ip in [
        ("user", 1, "dev-a", "10.0.0.1"),
        ("user", 2, "dev-a", "10.0.0.2"),
        ("user", 3, "dev-b", "10.0.9.3"),
        ("merchant", 5, "dev-a", "192.168.1.1"),  # staff: not a person on the device
    ]:
        identifiers.note(owner_type, owner_id, device, ip, T0)
    identifiers.note("user", 1, "dev-a", "10.0.0.1", T0 + timedelta(hours=1))  # again: still one person
    db.session.commit()
    assert identifiers.accounts_on("device", "dev-a") == 2
    assert identifiers.accounts_on("net", "10.0.0.0/24") == 2
    assert identifiers.accounts_on("device", "dev-z") == 0
    buyer = identifiers.identifiers_of("user", 2)
    assert buyer == [("device", "dev-a"), ("net", "10.0.0.0/24")]
    assert identifiers.shared(buyer, ("merchant", 5)) is True  # the device
    assert identifiers.shared(buyer, ("user", 3)) is False
    assert identifiers.shared([("net", "10.0.9.0/24")], ("user", 3)) is True
    assert identifiers.shared([("device", "10.0.9.0/24")], ("user", 3)) is False  # kind and value together
    assert identifiers.shared([], ("user", 3)) is False


def test_events_note_the_persons_device_and_network(client, make_user, make_product, user_headers, device):
    user, product = make_user(), make_product()
    token, device_id = device
    headers = {**user_headers(user), "X-Device-Token": token}
    batch = {"events": [{"kind": "view", "product_id": product.id}]}
    assert client.post("/api/v1/events", json=batch, headers=headers, environ_base=ADDRESS).status_code == 202
    assert rows() == [("user", user.id, "device", device_id), ("user", user.id, "net", "10.1.2.0/24")]


def test_a_refused_batch_notes_nothing(client, make_user, user_headers, device):
    user = make_user()
    headers = {**user_headers(user), "X-Device-Token": device[0]}
    batch = {"events": [{"kind": "view", "product_id": 999}]}
    assert client.post("/api/v1/events", json=batch, headers=headers, environ_base=ADDRESS).status_code == 422
    assert rows() == []


def test_mini_program_login_notes_the_device_and_network(app, client, no_network, device):  # noqa: F811
    token, device_id = device
    answer = client.post(
        "/api/v1/auth/login", json={"code": "code-alice"}, headers={"X-Device-Token": token}, environ_base=ADDRESS
    )
    assert answer.status_code == 200, answer.json
    uid = answer.json["user"]["id"]
    assert rows() == [("user", uid, "device", device_id), ("user", uid, "net", "10.1.2.0/24")]


def test_official_account_login_notes_the_network(app, client, no_network):  # noqa: F811
    location = client.get("/oauth/authorize", query_string={"next": "/me"}).headers["Location"]
    state = parse_qs(urlsplit(location.split("#")[0]).query)["state"][0]
    code = simulator(app).issue_oauth_code("bob")
    answer = client.get("/oauth/callback", query_string={"code": code, "state": state}, environ_base=ADDRESS)
    assert answer.status_code == 302
    ((owner_type, _, kind, value),) = rows()
    assert (owner_type, kind, value) == ("user", "net", "10.1.2.0/24")


def test_an_order_keeps_its_device_and_address_and_notes_them(
    app, client, make_user, make_product, user_headers, device
):
    user, product = make_user(appid=app.config["WECHAT_APPID"]), make_product()
    token, device_id = device
    headers = {**user_headers(user), "X-Device-Token": token}
    body = {"lines": [{"product_id": product.id, "quantity": 1}]}
    answer = client.post("/api/v1/orders", json=body, headers=headers, environ_base=ADDRESS)
    assert answer.status_code == 201, answer.json
    order = db.session.get(Order, answer.json["id"])
    assert (order.device, order.ip) == (device_id, "10.1.2.7")
    assert rows() == [("user", user.id, "device", device_id), ("user", user.id, "net", "10.1.2.0/24")]


def test_an_order_without_a_device_keeps_the_address(app, client, make_user, make_product, user_headers):
    user, product = make_user(appid=app.config["WECHAT_APPID"]), make_product()
    body = {"lines": [{"product_id": product.id, "quantity": 1}]}
    answer = client.post("/api/v1/orders", json=body, headers=user_headers(user), environ_base=ADDRESS)
    assert answer.status_code == 201, answer.json
    order = db.session.get(Order, answer.json["id"])
    assert (order.device, order.ip) == (None, "10.1.2.7")
    assert rows() == [("user", user.id, "net", "10.1.2.0/24")]


def test_merchant_staff_requests_note_the_merchants_identifiers_once_per_ten_minutes(
    client, make_operator, device, monkeypatch
):
    staff, headers = make_operator("merchant_staff")
    merchant_id = staff.merchant_id
    token, device_id = device
    headers = {**headers, "X-Device-Token": token}
    path = f"/admin/api/merchants/{merchant_id}"
    assert client.get(path, headers=headers, environ_base=ADDRESS).status_code == 200  # a GET: committed all the same
    expected = [("merchant", merchant_id, "device", device_id), ("merchant", merchant_id, "net", "10.1.2.0/24")]
    assert rows() == expected
    # within ten minutes: no write at all (the row deleted behind its back stays deleted)
    db.session.execute(RiskIdentifier.__table__.delete())
    db.session.commit()
    assert client.get(path, headers=headers, environ_base=ADDRESS).status_code == 200
    assert rows() == []
    # from another address: noted at once
    assert client.get(path, headers=headers, environ_base={"REMOTE_ADDR": "172.16.5.5"}).status_code == 200
    assert rows() == [expected[0], ("merchant", merchant_id, "net", "172.16.5.0/24")]
    # ten minutes on: noted again
    later = api.time.monotonic() + api.STAFF_NOTE_EVERY_S
    monkeypatch.setattr(api.time, "monotonic", lambda: later)
    assert client.get(path, headers=headers, environ_base=ADDRESS).status_code == 200
    assert len(rows()) == 3


def test_platform_operators_and_bad_device_tokens_note_nothing_or_only_the_address(
    client, make_operator, make_merchant
):
    merchant = make_merchant()
    _, admin_headers = make_operator("admin")
    assert client.get(f"/admin/api/merchants/{merchant.id}", headers=admin_headers).status_code == 200
    assert rows() == []
    staff, headers = make_operator("merchant_staff", merchant=merchant)
    forged = {**headers, "X-Device-Token": "made-up"}
    assert client.get(f"/admin/api/merchants/{merchant.id}", headers=forged, environ_base=ADDRESS).status_code == 200
    assert rows() == [("merchant", merchant.id, "net", "10.1.2.0/24")]
