"""Simulator end to end: prepay → checkout → a signed, encrypted notification is
POSTed after the request finished, verifies with our verifier, and is retried on
non-2xx following WeChat's (compressed) schedule."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import responses
from wechat_testkit import NOTIFY_URL

from wechat.notifications import verify_and_decrypt
from wechat.sim.delivery import WECHAT_RETRY_SCHEDULE_S

EXPIRE = datetime.now(UTC) + timedelta(hours=2)
REPORT = [{"info_type": "活动名称", "info_content": "双向返利"}, {"info_type": "奖励说明", "info_content": "消费返现"}]


def _notify_calls(rsps):
    return [c.request for c in rsps.calls if c.request.url == NOTIFY_URL]


def test_checkout_delivers_verifiable_notification_after_the_request(
    sim_http, sim_app, sim_state, pay_client, verifier_keys, apiv3_key
):
    # given an order and a merchant notify endpoint that is slow to be reachable
    gate = threading.Event()

    def notify_endpoint(request):
        gate.wait(5)
        return 204, {}, b""

    sim_http.add_callback(responses.POST, NOTIFY_URL, callback=notify_endpoint)
    prepay_id = pay_client.jsapi_prepay(
        "ORDERE2E1", "奶茶", 2990, "sim-openid-alice", NOTIFY_URL, EXPIRE, attach="packet:1"
    )
    # when the user pays on the checkout page
    client = sim_app.test_client()
    assert "确认支付" in client.get(f"/_sim/pay/checkout/{prepay_id}").get_data(as_text=True)
    paid = client.post(f"/_sim/pay/checkout/{prepay_id}", headers={"Accept": "application/json"})
    # then the page answered before the notification was delivered
    assert paid.status_code == 200 and paid.get_json()["trade_state"] == "SUCCESS"
    assert not sim_state.dispatcher.deliveries[0].delivered
    gate.set()
    assert sim_state.dispatcher.wait_idle(5)
    (call,) = _notify_calls(sim_http)
    note = verify_and_decrypt(call.headers, call.body, verifier_keys, apiv3_key)
    assert note.event_type == "TRANSACTION.SUCCESS" and note.original_type == "transaction"
    r = note.resource
    assert (r["out_trade_no"], r["amount"]["total"], r["attach"], r["trade_state"]) == (
        "ORDERE2E1",
        2990,
        "packet:1",
        "SUCCESS",
    )
    assert r["transaction_id"] and r["payer"]["openid"] == "sim-openid-alice"
    assert sim_state.dispatcher.deliveries[0].delivered


def test_notification_retried_until_acknowledged(sim_http, sim_state, pay_client, verifier_keys, apiv3_key):
    sim_http.add(responses.POST, NOTIFY_URL, status=500, json={"code": "FAIL", "message": "busy"})
    prepay_id = pay_client.jsapi_prepay("ORDERE2E2", "d", 100, "sim-openid-bob", NOTIFY_URL, EXPIRE)
    sim_state.pay(prepay_id)
    # let two attempts fail, then acknowledge
    for _ in range(200):
        if len(_notify_calls(sim_http)) >= 2:
            break
        threading.Event().wait(0.01)
    sim_http.replace(responses.POST, NOTIFY_URL, status=200)
    assert sim_state.dispatcher.wait_idle(5)
    delivery = sim_state.dispatcher.deliveries[0]
    assert delivery.delivered and delivery.statuses[-1] == 200 and delivery.statuses[0] == 500
    calls = _notify_calls(sim_http)
    assert len({c.body for c in calls}) == 1  # same notification id and resource every time
    for call in calls:
        verify_and_decrypt(call.headers, call.body, verifier_keys, apiv3_key)


def test_notification_abandoned_after_the_schedule(sim_http, sim_state):
    sim_http.add(responses.POST, NOTIFY_URL, status=404)
    sim_state.dispatcher.time_scale = 0.00001
    sim_state.notify(NOTIFY_URL, "TRANSACTION.SUCCESS", {"out_trade_no": "X"}, "transaction")
    assert sim_state.dispatcher.wait_idle(5)
    delivery = sim_state.dispatcher.deliveries[0]
    assert delivery.abandoned and delivery.attempts == len(WECHAT_RETRY_SCHEDULE_S) + 1


def test_refund_and_transfer_notifications(sim_http, sim_app, sim_state, pay_client, verifier_keys, apiv3_key):
    sim_http.add(responses.POST, NOTIFY_URL, status=204)
    sim_state.pay(pay_client.jsapi_prepay("ORDERE2E3", "d", 1000, "sim-openid-carol", NOTIFY_URL, EXPIRE))
    pay_client.refund("ORDERE2E3", "REFUNDE2E3", 400, 1000, NOTIFY_URL)
    answer = pay_client.transfer_bill("TBE2E3", "sim-openid-carol", 80, "返现", REPORT, NOTIFY_URL)
    page = sim_app.test_client().post(
        f"/_sim/pay/transfer/confirm/{answer['package_info']}", headers={"Accept": "application/json"}
    )
    assert page.get_json()["state"] == "SUCCESS"
    assert sim_state.dispatcher.wait_idle(5)
    notes = {
        n.event_type: n
        for n in (verify_and_decrypt(c.headers, c.body, verifier_keys, apiv3_key) for c in _notify_calls(sim_http))
    }
    assert set(notes) == {"TRANSACTION.SUCCESS", "REFUND.SUCCESS", "MCHTRANSFER.BILL.FINISHED"}
    refund = notes["REFUND.SUCCESS"]
    assert (
        refund.original_type == "refund"
        and refund.resource["refund_status"] == "SUCCESS"
        and refund.resource["amount"]["refund"] == 400
    )
    transfer = notes["MCHTRANSFER.BILL.FINISHED"]
    assert (
        transfer.original_type == "mch_payment"
        and transfer.resource["state"] == "SUCCESS"
        and transfer.resource["out_bill_no"] == "TBE2E3"
    )


def test_random_key_mode_signs_with_both_keys(sim_state, sim_keys, verifier_keys, apiv3_key):
    sim_state.key_mode = "random"
    serials = set()
    for _ in range(40):
        headers, body = sim_state.build_notification("TRANSACTION.SUCCESS", {"n": 1}, "transaction")
        serials.add(headers["Wechatpay-Serial"])
        assert verify_and_decrypt(headers, body, verifier_keys, apiv3_key).resource == {"n": 1}
    assert serials == {sim_keys.public_key_id, sim_keys.platform_serial}


def test_unsigned_request_is_refused_by_simulator(sim_app):
    resp = sim_app.test_client().post("/_sim/pay/v3/pay/transactions/jsapi", json={"a": 1})
    assert resp.status_code == 401 and resp.get_json()["code"] == "SIGN_ERROR"
    assert resp.headers["Wechatpay-Signature"]


def test_overview_page_lists_state(sim_http, sim_app, pay_client):
    pay_client.jsapi_prepay("ORDERVIEW1", "<script>x</script>", 100, "o", NOTIFY_URL, EXPIRE)
    html = sim_app.test_client().get("/_sim/").get_data(as_text=True)
    assert "ORDERVIEW1" in html and "<script>" not in html


def test_checkout_unknown_prepay_is_404(sim_app):
    assert sim_app.test_client().get("/_sim/pay/checkout/wx-nope").status_code == 404


def test_overview_page_lists_refunds(sim_http, sim_app, sim_state, pay_client):
    prepay_id = pay_client.jsapi_prepay("ORDERVIEW2", "面", 1_000, "o", NOTIFY_URL, EXPIRE)
    sim_state.pay(prepay_id)
    pay_client.refund("ORDERVIEW2", "REFUNDVIEW2", 300, 1_000, NOTIFY_URL)
    html = sim_app.test_client().get("/_sim/").get_data(as_text=True)
    assert "Refunds" in html and "REFUNDVIEW2" in html and "ORDERVIEW2" in html
