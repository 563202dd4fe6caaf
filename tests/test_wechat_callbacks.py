"""POST /wechat/pay/notify and /wechat/pay/refund-notify: verification, exactly-once, refusals.

Notifications are built and signed by the app's own simulator (real RSA keys
and a real APIv3 key, made once per test session); nothing leaves the process.
"""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import responses
from sqlalchemy import func, select

from ledger import check_ledger
from models import Alert, LedgerEntry, Order, PaymentNotification, Refund, db, utcnow
from rebate import begin_refund, create_order
from rebate.orders import LineRequest
from tests.concurrency import together
from wechat.sim.keys import SimulatorKeys
from wechat.sim.state import SimulatorState

NOTIFY = "/wechat/pay/notify"
REFUND_NOTIFY = "/wechat/pay/refund-notify"


# -- helpers (imported by the other WeChat test modules) -----------------------------


def simulator(app) -> SimulatorState:
    return app.extensions["wechat"].simulator


def count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def table_counts() -> dict[str, int]:
    db.session.rollback()
    with db.engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in db.metadata.sorted_tables
            if db.inspect(conn).has_table(t.name)
        }


def transaction_resource(app, order: Order, **changes) -> dict:
    resource = {
        "appid": app.config["WECHAT_APPID"],
        "mchid": app.config["WECHAT_MCHID"],
        "out_trade_no": order.out_trade_no,
        "transaction_id": f"4200{order.id:010d}",
        "trade_type": "JSAPI",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": "2026-11-25T10:00:00+08:00",
        "payer": {"openid": "sim-openid-alice"},
        "amount": {
            "total": order.payable_fen,
            "payer_total": order.payable_fen,
            "currency": "CNY",
            "payer_currency": "CNY",
        },
    }
    resource.update(changes)
    return resource


def deliver(client, app, resource, path=NOTIFY, event="TRANSACTION.SUCCESS", kind="transaction", **kw):
    headers, body = simulator(app).build_notification(event, resource, kind, **kw)
    return client.post(path, data=body, headers=headers)


def resign(app, body: bytes, **headers) -> dict:
    sim = simulator(app)
    return {"Content-Type": "application/json", **sim.keys.sign_headers(body, serial=sim.keys.public_key_id), **headers}


@pytest.fixture
def no_network():
    """Any outbound HTTP call fails the test."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def make_order(app, make_user, make_product):
    def make(price_fen: int = 10_000, user=None) -> Order:
        user = user or make_user(appid=app.config["WECHAT_APPID"])
        product = make_product(price_fen=price_fen)
        order = create_order(user, [LineRequest(product.id, 1)], None, utcnow())
        db.session.commit()
        return order

    return make


@pytest.fixture(scope="session")
def stranger_keys() -> SimulatorKeys:
    """WeChat-looking keys we do not trust (same public key id, other key pair)."""
    return SimulatorKeys()


# -- payment notification ------------------------------------------------------------


def test_valid_notification_pays_the_order_once(app, client, make_order, no_network):
    # given
    order = make_order()
    entries = count(LedgerEntry)
    resource = transaction_resource(app, order)
    headers, body = simulator(app).build_notification("TRANSACTION.SUCCESS", resource, "transaction")
    # when
    first = client.post(NOTIFY, data=body, headers=headers)
    again = client.post(NOTIFY, data=body, headers=headers)
    # then
    assert (first.status_code, first.get_data()) == (204, b"")
    assert (again.status_code, again.get_data()) == (204, b"")
    db.session.rollback()
    paid = db.session.get(Order, order.id)
    assert (paid.status, paid.transaction_id, paid.paid_fen) == ("paid", resource["transaction_id"], order.payable_fen)
    assert count(LedgerEntry) == entries + 1  # the sale
    assert count(PaymentNotification) == 1


def test_second_notification_id_for_the_same_payment_changes_nothing(app, client, make_order, no_network):
    order = make_order()
    resource = transaction_resource(app, order)
    assert deliver(client, app, resource).status_code == 204
    before = table_counts()
    response = deliver(client, app, resource)
    assert response.status_code == 204
    after = table_counts()
    assert after.pop("payment_notifications") == before.pop("payment_notifications") + 1
    assert after == before


def assert_paid_once(order: Order, entries_before: int) -> None:
    """The order is paid by its notification: one sale entry, one notification recorded, no flag."""
    db.session.rollback()
    paid = db.session.get(Order, order.id)
    assert (paid.status, paid.paid_fen, paid.review_reason) == ("paid", order.payable_fen, None)
    assert count(LedgerEntry) == entries_before + 1
    assert count(PaymentNotification) == 1


def test_missing_signature_type_is_treated_as_rsa(app, client, make_order, no_network):
    order = make_order()
    entries = count(LedgerEntry)
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    del headers["Wechatpay-Signature-Type"]
    assert client.post(NOTIFY, data=body, headers=headers).status_code == 204
    assert_paid_once(order, entries)


def test_platform_certificate_serial_is_accepted(app, client, make_order, no_network):
    order = make_order()
    entries = count(LedgerEntry)
    serial = simulator(app).keys.platform_serial
    assert deliver(client, app, transaction_resource(app, order), serial=serial).status_code == 204
    assert_paid_once(order, entries)


def _tampered(app, order):
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    return headers, body.replace(b'"summary":"', b'"summary":"X')


def _wrong_serial(app, order):
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    return {**headers, "Wechatpay-Serial": "PUB_KEY_ID_0000000000000000000000000000099"}, body


def _untrusted_key(app, order, stranger_keys):
    body = simulator(app).notification_body("TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction")
    return {"Content-Type": "application/json", **stranger_keys.sign_headers(body)}, body


def _probe(app, order):
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    return {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]}, body


def _stale(app, order):
    stale = int(time.time()) - 301
    return simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction", timestamp=stale
    )


def _future(app, order):
    future = int(time.time()) + 400
    return simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction", timestamp=future
    )


def _gcm_tag(app, order):
    body = json.loads(
        simulator(app).notification_body("TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction")
    )
    sealed = bytearray(base64.b64decode(body["resource"]["ciphertext"]))
    sealed[-1] ^= 0x01  # the last byte is the GCM tag
    body["resource"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    raw = json.dumps(body).encode()
    return resign(app, raw), raw


def _wrong_apiv3_key(app, order):
    sim = simulator(app)
    other = SimulatorState(mchid=sim.mchid, apiv3_key="K" * 32, keys=sim.keys)
    return other.build_notification("TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction")


def _malformed_json(app, order):
    raw = b'{"id": "EV-1", "resource": '
    return resign(app, raw), raw


def _oversized(app, order):
    raw = json.dumps({"id": "EV-big", "padding": "x" * 70_000}).encode()
    return resign(app, raw), raw


def _missing_headers(app, order):
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    return {"Content-Type": "application/json"}, body


BAD_DELIVERIES = {
    "tampered_body": (_tampered, 401),
    "wrong_serial": (_wrong_serial, 401),
    "untrusted_key": (_untrusted_key, 401),
    "signtest_probe": (_probe, 401),
    "stale_timestamp": (_stale, 401),
    "future_timestamp": (_future, 401),
    "gcm_tag_failure": (_gcm_tag, 401),
    "wrong_apiv3_key": (_wrong_apiv3_key, 401),
    "malformed_json": (_malformed_json, 400),
    "oversized_body": (_oversized, 413),
    "missing_headers": (_missing_headers, 401),
}


@pytest.mark.parametrize("case", sorted(BAD_DELIVERIES))
@pytest.mark.parametrize("path", [NOTIFY, REFUND_NOTIFY])
def test_unverifiable_callback_is_refused_and_changes_no_table(
    app, client, make_order, no_network, stranger_keys, case, path
):
    # given
    order = make_order()
    build, status = BAD_DELIVERIES[case]
    headers, body = build(app, order, stranger_keys) if build is _untrusted_key else build(app, order)
    before = table_counts()
    # when
    response = client.post(path, data=body, headers=headers)
    # then
    assert response.status_code == status
    assert response.json["code"] == "FAIL" and response.json["message"]
    assert table_counts() == before
    assert db.session.get(Order, order.id).status == "created"


# -- body size: the 413 states the limit ------------------------------------------------

CALLBACKS = [NOTIFY, REFUND_NOTIFY, "/wechat/transfer/notify"]
CALLBACK_LIMIT = 16 * 1024


def post_body(client, path: str, body: bytes, how: str):
    """Sized (Content-Length), or chunked as gunicorn hands it over (no Content-Length, input terminated)."""
    if how == "sized":
        return client.post(path, data=body, headers={"Content-Type": "application/json"})
    environ = {
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "HTTP_TRANSFER_ENCODING": "chunked",
        "CONTENT_TYPE": "application/json",
    }
    return client.open(path, method="POST", environ_overrides=environ)


@pytest.mark.parametrize("how", ["sized", "chunked"])
@pytest.mark.parametrize("path", CALLBACKS)
def test_a_callback_body_over_16_kib_is_413_stating_the_limit(app, client, no_network, path, how):
    # given: a body one byte over the callbacks' own limit (and well under MAX_CONTENT_LENGTH)
    body = b"{" + b" " * (CALLBACK_LIMIT - 1) + b"}"
    assert len(body) == CALLBACK_LIMIT + 1 < app.config["MAX_CONTENT_LENGTH"]
    before = table_counts()
    # when
    response = post_body(client, path, body, how)
    # then
    assert response.status_code == 413
    assert response.json == {"code": "FAIL", "message": "body larger than 16384 bytes"}
    assert table_counts() == before
    # and one byte less is read, and refused only for its missing signature
    assert post_body(client, path, body[1:], how).status_code == 401


@pytest.mark.parametrize("how", ["sized", "chunked"])
def test_a_callback_body_over_max_content_length_is_413_stating_that_limit(app, client, no_network, how):
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = post_body(client, NOTIFY, b"{" + b" " * limit + b"}", how)
    assert response.status_code == 413
    assert response.json["code"] == "FAIL" and f"{limit} bytes" in response.json["message"]


@pytest.mark.parametrize(
    "change",
    [
        {"amount": {"total": 1, "payer_total": 1, "currency": "CNY"}},
        {"appid": "wx-someone-else"},
        {"mchid": "1999999999"},
    ],
    ids=["amount", "appid", "mchid"],
)
def test_verified_mismatch_flags_the_order_and_alerts_once(app, client, make_order, no_network, change):
    order = make_order()
    entries = count(LedgerEntry)
    resource = transaction_resource(app, order, **change)
    first = deliver(client, app, resource)
    again = deliver(client, app, resource)
    assert first.status_code == again.status_code == 400
    assert first.json["code"] == "FAIL"
    db.session.rollback()
    flagged = db.session.get(Order, order.id)
    assert flagged.status == "created"
    assert flagged.review_reason
    assert count(LedgerEntry) == entries
    assert count(PaymentNotification) == 0
    assert count(Alert) == 1


MALFORMED = {
    "amount_as_text": {"amount": {"total": "100", "payer_total": 100}},
    "no_amount": {"amount": None},
    "no_transaction_id": {"transaction_id": None},
    "mchid_a_number": {"mchid": 1900000109},
    "naive_success_time": {"success_time": "2026-11-25T10:00:00"},
    "success_time_in_9999": {"success_time": "9999-12-31T23:59:59-14:00"},  # overflows when turned into UTC
    "success_time_in_year_1": {"success_time": "0001-01-01T00:00:00+14:00"},
    "success_time_in_1970": {"success_time": "1970-01-01T00:00:00+08:00"},
    "lone_surrogate": {"transaction_id": "42\ud800x"},  # parses, but is no UTF-8 a database can store
    "nul": {"transaction_id": "42\u0000x"},  # PostgreSQL text cannot hold one
    "transaction_id_of_65": {"transaction_id": "4" * 65},  # WeChat's are 32; our column holds 64
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_verified_but_malformed_resource_is_refused_and_changes_no_table(app, client, make_order, no_network, case):
    # given: a notification WeChat signed, whose resource is not the shape WeChat documents
    order = make_order()
    resource = {k: v for k, v in transaction_resource(app, order, **MALFORMED[case]).items() if v is not None}
    headers, body = simulator(app).build_notification("TRANSACTION.SUCCESS", resource, "transaction")
    before = table_counts()
    # when
    response = client.post(NOTIFY, data=body, headers=headers)
    # then: 400 naming the field, nothing recorded, nothing flagged (WeChat retries)
    assert response.status_code == 400
    assert response.json["code"] == "FAIL" and "MALFORMED_RESOURCE" in response.json["message"]
    assert table_counts() == before
    assert db.session.get(Order, order.id).review_reason is None


def test_a_transaction_that_is_not_paid_is_refused_and_changes_no_table(app, client, make_order, no_network):
    order = make_order()
    resource = transaction_resource(app, order, trade_state="NOTPAY", trade_state_desc="未支付")
    del resource["transaction_id"], resource["success_time"]
    before = table_counts()
    response = deliver(client, app, resource)
    assert response.status_code == 400 and response.json["code"] == "FAIL"
    assert table_counts() == before
    assert db.session.get(Order, order.id).status == "created"


def test_another_event_type_is_acknowledged_and_changes_no_table(app, client, make_order, no_network):
    order = make_order()
    before = table_counts()
    response = deliver(client, app, transaction_resource(app, order), event="TRANSACTION.CLOSED")
    assert (response.status_code, response.get_data()) == (204, b"")
    assert table_counts() == before
    assert db.session.get(Order, order.id).status == "created"


def test_unknown_out_trade_no_is_refused(app, client, make_order, no_network):
    order = make_order()
    before = table_counts()
    response = deliver(client, app, transaction_resource(app, order, out_trade_no="O20261125NOSUCHORDER"))
    assert response.status_code == 404
    assert response.json["code"] == "FAIL"
    assert table_counts() == before


# -- refund notification -------------------------------------------------------------


def refund_resource(app, order: Order, out_refund_no: str, refund_fen: int, status: str = "SUCCESS") -> dict:
    return {
        "mchid": app.config["WECHAT_MCHID"],
        "out_trade_no": order.out_trade_no,
        "transaction_id": order.transaction_id,
        "out_refund_no": out_refund_no,
        "refund_id": "5030" + out_refund_no[-8:],
        "refund_status": status,
        "success_time": "2026-11-25T11:00:00+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {
            "total": order.payable_fen,
            "refund": refund_fen,
            "payer_total": order.payable_fen,
            "payer_refund": refund_fen,
        },
    }


@pytest.fixture
def paid_order_with_refund(app, client, make_order, no_network):
    order = make_order()
    assert deliver(client, app, transaction_resource(app, order)).status_code == 204
    db.session.rollback()
    order = db.session.get(Order, order.id)
    refund = begin_refund(order, "R-TEST-00000001", 4_000, "test")
    db.session.commit()
    return order, refund


def deliver_refund(client, app, resource, event="REFUND.SUCCESS", **kw):
    return deliver(client, app, resource, path=REFUND_NOTIFY, event=event, kind="refund", **kw)


def test_refund_success_is_applied_once(app, client, paid_order_with_refund):
    order, refund = paid_order_with_refund
    resource = refund_resource(app, order, refund.out_refund_no, 4_000)
    headers, body = simulator(app).build_notification("REFUND.SUCCESS", resource, "refund")
    first = client.post(REFUND_NOTIFY, data=body, headers=headers)
    entries = count(LedgerEntry)
    again = client.post(REFUND_NOTIFY, data=body, headers=headers)
    other_id = deliver_refund(client, app, resource)
    assert (first.status_code, first.get_data()) == (204, b"")
    assert again.status_code == other_id.status_code == 204
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "succeeded"
    assert db.session.get(Order, order.id).refunded_fen == 4_000
    assert count(LedgerEntry) == entries


@pytest.mark.parametrize("event", ["REFUND.CLOSED", "REFUND.ABNORMAL"])
def test_refund_closed_or_abnormal_is_recorded_for_an_operator(app, client, paid_order_with_refund, event):
    order, refund = paid_order_with_refund
    entries = count(LedgerEntry)
    status = event.split(".")[1]
    response = deliver_refund(
        client, app, refund_resource(app, order, refund.out_refund_no, 4_000, status), event=event
    )
    assert response.status_code == 204
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == status.lower()
    assert db.session.get(Order, order.id).refunded_fen == 0
    assert count(LedgerEntry) == entries
    assert [a.kind for a in db.session.execute(select(Alert)).scalars()] == [f"refund_{status.lower()}"]


def test_refund_amount_mismatch_flags_and_refunds_nothing(app, client, paid_order_with_refund):
    order, refund = paid_order_with_refund
    entries = count(LedgerEntry)
    response = deliver_refund(client, app, refund_resource(app, order, refund.out_refund_no, 9_000))
    assert response.status_code == 400
    assert response.json["code"] == "FAIL"
    db.session.rollback()
    assert db.session.get(Refund, refund.id).status == "pending"
    assert db.session.get(Order, order.id).review_reason
    assert count(LedgerEntry) == entries


@pytest.mark.parametrize(
    ("amount", "status", "event"), [(3_000, "SUCCESS", "REFUND.SUCCESS"), (4_000, "CLOSED", "REFUND.CLOSED")]
)
def test_a_succeeded_refund_contradicted_is_flagged_and_nothing_moves(
    app, client, paid_order_with_refund, amount, status, event
):
    # given: refund of 40 yuan applied
    order, refund = paid_order_with_refund
    assert deliver_refund(client, app, refund_resource(app, order, refund.out_refund_no, 4_000)).status_code == 204
    before = table_counts()
    # when: WeChat then says it refunded 30, or that the refund closed, twice
    resource = refund_resource(app, order, refund.out_refund_no, amount, status)
    answers = [deliver_refund(client, app, resource, event=event) for _ in range(2)]
    # then: refused (WeChat's format), one alert and the order flagged for an operator; the refund stands as applied
    assert [a.status_code for a in answers] == [400, 400] and answers[0].json["code"] == "FAIL"
    after = table_counts()
    assert after.pop("alerts") == before.pop("alerts") + 1
    assert after == before
    db.session.rollback()
    assert (db.session.get(Refund, refund.id).status, db.session.get(Order, order.id).refunded_fen) == (
        "succeeded",
        4_000,
    )
    assert refund.out_refund_no in db.session.get(Order, order.id).review_reason


def test_refund_for_another_mchid_flags_and_refunds_nothing(app, client, paid_order_with_refund):
    order, refund = paid_order_with_refund
    resource = {**refund_resource(app, order, refund.out_refund_no, 4_000), "mchid": "1999999999"}
    before = table_counts()
    first, again = deliver_refund(client, app, resource), deliver_refund(client, app, resource)
    assert first.status_code == again.status_code == 400
    after = table_counts()
    assert after.pop("alerts") == before.pop("alerts") + 1
    assert after == before
    assert db.session.get(Refund, refund.id).status == "pending"
    assert "1999999999" in db.session.get(Order, order.id).review_reason


def test_malformed_refund_resource_is_refused_and_changes_no_table(app, client, paid_order_with_refund):
    order, refund = paid_order_with_refund
    resource = refund_resource(app, order, refund.out_refund_no, 4_000)
    resource["amount"] = {"total": order.payable_fen, "refund": "4000"}
    before = table_counts()
    response = deliver_refund(client, app, resource)
    assert response.status_code == 400 and "amount.refund" in response.json["message"]
    assert table_counts() == before
    # and an event naming another state than its resource
    closed = deliver_refund(
        client, app, refund_resource(app, order, refund.out_refund_no, 4_000), event="REFUND.CLOSED"
    )
    assert closed.status_code == 400
    assert table_counts() == before


def test_a_signed_refund_notification_without_mchid_is_refused_and_changes_no_table(
    app, client, paid_order_with_refund
):
    # given: WeChat signed it, but it does not say whose refund it is (before, the mchid check was skipped)
    order, refund = paid_order_with_refund
    resource = refund_resource(app, order, refund.out_refund_no, 4_000)
    del resource["mchid"]
    before = table_counts()
    # when
    response = deliver_refund(client, app, resource)
    # then: malformed, naming the field; nothing refunded, recorded or flagged
    assert response.status_code == 400
    assert response.json["code"] == "FAIL" and "refund.mchid" in response.json["message"]
    assert table_counts() == before
    assert db.session.get(Refund, refund.id).status == "pending"
    paid = db.session.get(Order, order.id)
    assert (paid.refunded_fen, paid.review_reason) == (0, None)


def test_refund_of_unknown_order_is_refused_and_a_closed_unknown_refund_of_ours_moves_nothing(
    app, client, paid_order_with_refund
):
    order, refund = paid_order_with_refund
    before = table_counts()
    unknown_order = refund_resource(app, order, refund.out_refund_no, 4_000)
    unknown_order["out_trade_no"] = "O20261125NOSUCHORDER"
    assert deliver_refund(client, app, unknown_order).status_code == 404
    assert table_counts() == before
    # a refund begun elsewhere (the merchant platform) on our order that WeChat closed: told, nothing to do
    unknown_refund = refund_resource(app, order, "R-NOT-OURS", 4_000, "CLOSED")
    assert deliver_refund(client, app, unknown_refund, event="REFUND.CLOSED").status_code == 204
    assert table_counts() == {**before, "payment_notifications": before["payment_notifications"] + 1}


# -- concurrency (PostgreSQL) --------------------------------------------------------


def test_ten_concurrent_deliveries_have_one_set_of_effects(app, make_order, no_network):
    order = make_order()
    entries = count(LedgerEntry)
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction"
    )
    statuses = together(10, lambda _: app.test_client().post(NOTIFY, data=body, headers=headers).status_code)
    assert statuses == [204] * 10
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "paid"
    assert count(LedgerEntry) == entries + 1
    assert count(PaymentNotification) == 1


# -- a notification reaching another of our URLs (outside probe) -----------------------------------------------


@pytest.mark.parametrize("path", [NOTIFY, "/wechat/transfer/notify"])
def test_a_refund_begun_elsewhere_notified_to_another_of_our_urls_is_booked_once(
    app, client, make_order, no_network, path
):
    # given: a paid order, refunded on the merchant platform, whose refund callback URL there is our payment URL
    order = make_order()
    assert deliver(client, app, transaction_resource(app, order)).status_code == 204
    db.session.rollback()
    order = db.session.get(Order, order.id)
    resource = refund_resource(app, order, "MP-REFUND-0001", 4_000)
    # when: WeChat tells it there, twice
    first = deliver(client, app, resource, path=path, event="REFUND.SUCCESS", kind="refund")
    entries = count(LedgerEntry)
    again = deliver(client, app, resource, path=path, event="REFUND.SUCCESS", kind="refund")
    # then: booked as a refund (once), as the refund URL would have
    assert first.status_code == again.status_code == 204
    db.session.rollback()
    assert db.session.get(Order, order.id).refunded_fen == 4_000
    assert db.session.execute(select(Refund.out_refund_no, Refund.status)).all() == [("MP-REFUND-0001", "succeeded")]
    assert count(LedgerEntry) == entries
    assert check_ledger().ok


def test_a_payment_notified_to_the_refund_url_is_applied(app, client, make_order, no_network):
    order = make_order()
    response = deliver(client, app, transaction_resource(app, order), path=REFUND_NOTIFY)
    assert response.status_code == 204
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "paid"


@pytest.mark.parametrize("notification_id", ["EV-\ud800", "EV-\x00"])
def test_a_signed_envelope_whose_id_cannot_be_stored_is_refused_and_changes_no_table(
    app, client, make_order, no_network, notification_id
):
    order = make_order()
    headers, body = simulator(app).build_notification(
        "TRANSACTION.SUCCESS", transaction_resource(app, order), "transaction", notification_id=notification_id
    )
    before = table_counts()
    response = client.post(NOTIFY, data=body, headers=headers)
    assert response.status_code == 400
    assert "MALFORMED_BODY" in response.json["message"]
    assert table_counts() == before
