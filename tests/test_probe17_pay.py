"""Probe 17: payments and refunds as WeChat (and an attacker) drive them.

A verified callback carrying a value our tables cannot hold must be refused the same way on SQLite and on
PostgreSQL (400, nothing written), never applied on one and a 500 on the other.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import Order, Refund, db
from tests.test_wechat_callbacks import (  # noqa: F401  (fixtures)
    NOTIFY,
    REFUND_NOTIFY,
    deliver,
    deliver_refund,
    make_order,
    no_network,
    refund_resource,
    table_counts,
    transaction_resource,
)

TOO_LONG_ID = "EV-" + "7" * 62  # 65 characters: payment_notifications.notification_id holds 64


@pytest.mark.parametrize("path", [NOTIFY, REFUND_NOTIFY])
def test_a_signed_payment_notification_whose_id_is_too_long_to_store_is_refused_and_changes_no_table(
    app, client, make_order, no_network, path
):
    # given: an unpaid order
    order = make_order()
    before = table_counts()
    # when: WeChat's (signed) notification names an id longer than we can record
    response = deliver(client, app, transaction_resource(app, order), path=path, notification_id=TOO_LONG_ID)
    # then: refused as malformed on every database (it was applied on SQLite and a 500 on PostgreSQL)
    assert response.status_code == 400
    assert response.json["code"] == "FAIL"
    assert "MALFORMED_BODY" in response.json["message"]
    assert table_counts() == before


def test_a_signed_notification_whose_id_is_64_characters_is_applied_once(app, client, make_order, no_network):
    order = make_order()
    longest = "EV-" + "7" * 61
    assert deliver(client, app, transaction_resource(app, order), notification_id=longest).status_code == 204
    assert deliver(client, app, transaction_resource(app, order), notification_id=longest).status_code == 204
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "paid"


@pytest.mark.parametrize("event", ["REFUND.SUCCESS", "REFUND.ABNORMAL"])
def test_a_refund_begun_elsewhere_whose_number_is_too_long_to_store_is_refused_and_changes_no_table(
    app, client, make_order, no_network, event
):
    # given: a paid order
    order = make_order()
    assert deliver(client, app, transaction_resource(app, order)).status_code == 204
    db.session.rollback()
    order = db.session.get(Order, order.id)
    before = table_counts()
    # when: WeChat tells of a refund (begun on the merchant platform, say) whose out_refund_no is past WeChat's 64
    resource = refund_resource(app, order, "R" * 65, 4_000, event.removeprefix("REFUND."))
    response = deliver_refund(client, app, resource, event=event)
    # then: refused as malformed on every database (booked on SQLite, a 500 on PostgreSQL), nothing written
    assert response.status_code == 400
    assert "out_refund_no" in response.json["message"]
    assert table_counts() == before
    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 0
    assert db.session.execute(select(Refund.id)).all() == []
