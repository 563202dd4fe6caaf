"""The `make run` story end to end on the simulator: log in, order, pay at /_sim checkout, get notified.

The simulator delivers its signed notifications through a transport that
posts into this app's test client, after the triggering request finished.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from models import LedgerEntry, db
from tests.test_wechat_callbacks import count, no_network, simulator  # noqa: F401 - fixture


@pytest.fixture
def app_settings(app_settings):
    holder: dict = {}

    def post_into_app(url: str, headers: dict, body: bytes) -> int:
        return holder["app"].test_client().post(urlsplit(url).path, data=body, headers=headers).status_code

    return {
        **app_settings,
        "WECHAT_SIM_NOTIFY_TRANSPORT": post_into_app,
        "WECHAT_SIM_NOTIFY_DELAY_S": 0.01,
        "WECHAT_RETRY_BACKOFF_S": 0,
        "_NOTIFY_HOLDER": holder,
    }


@pytest.fixture
def delivered(app):
    """Wait until the simulator has delivered everything it queued; stops its thread at the end."""
    app.config["_NOTIFY_HOLDER"]["app"] = app
    sim = simulator(app)

    def wait() -> None:
        assert sim.dispatcher.wait_idle(10)
        db.session.rollback()

    yield wait
    sim.dispatcher.wait_idle(10)  # nothing may still be writing when the database goes away
    sim.dispatcher.stop()


def login(client, name: str) -> dict:
    response = client.post("/api/v1/auth/login", json={"code": f"code-{name}"})
    assert response.status_code == 200, response.json
    return {"Authorization": f"Bearer {response.json['token']}"}


def pay_at_checkout(client, payment: dict) -> dict:
    path = urlsplit(payment["simulator_checkout_url"]).path
    response = client.post(path, headers={"Accept": "application/json"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def test_login_order_pay_and_get_notified(app, client, make_product, delivered, no_network):  # noqa: F811
    # given
    alice = login(client, "alice")
    product = make_product(price_fen=5_000)
    entries = count(LedgerEntry)
    # when
    created = client.post("/api/v1/orders", json={"lines": [{"product_id": product.id, "quantity": 1}]}, headers=alice)
    assert created.status_code == 201, created.json
    checkout_page = client.get(urlsplit(created.json["payment"]["simulator_checkout_url"]).path)
    transaction = pay_at_checkout(client, created.json["payment"])
    delivered()
    # then
    assert checkout_page.status_code == 200
    assert transaction["trade_state"] == "SUCCESS"
    order = client.get(f"/api/v1/orders/{created.json['id']}", headers=alice).json
    assert order["status"] == "paid"
    assert order["paid_fen"] == 5_000
    assert count(LedgerEntry) == entries + 1
    [delivery] = simulator(app).dispatcher.deliveries
    assert delivery.statuses == [204] and delivery.delivered
