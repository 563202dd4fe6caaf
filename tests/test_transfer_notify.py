"""POST /wechat/transfer/notify: WeChat's MCHTRANSFER.BILL.FINISHED for our transfer bills.

The payouts reach ``waiting_user_confirm`` through the real rail and the app's
simulator; the notifications are built, encrypted and signed with the
simulator's keys exactly as WeChat sends them.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from sqlalchemy import select

from jobs.payouts import dispatch_due
from ledger import account, balance, check_ledger
from models import AccountKind, Alert, LedgerFlow, PaymentNotification, Payout, db
from payouts.transfer_rail import TransferRail
from tests.concurrency import together
from tests.money_helpers import queue_from_balance
from tests.test_wechat_callbacks import count, no_network, resign, simulator, table_counts  # noqa: F401 - fixture
from wechat.sim.keys import SimulatorKeys
from wechat.sim.state import SimulatorState

NOTIFY = "/wechat/transfer/notify"
EVENT = "MCHTRANSFER.BILL.FINISHED"


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def waiting(app, make_user, no_network):  # noqa: F811
    """A 5-yuan transfer sent to the simulator and waiting for the user's confirmation."""

    def make(amount_fen: int = 5_00) -> Payout:
        user = make_user(appid=app.config["WECHAT_APPID"])
        payout = queue_from_balance(user, amount_fen, tag="w")
        rail = TransferRail(
            app.extensions["wechat"].pay,
            appid=app.config["WECHAT_APPID"],
            notify_url=app.config["PUBLIC_BASE_URL"] + NOTIFY,
        )
        dispatch_due({rail.name: rail})
        db.session.expire_all()
        payout = db.session.get(Payout, payout.id)
        assert payout.status == "waiting_user_confirm" and payout.package_info
        return payout

    return make


def bill_resource(app, payout: Payout, state: str = "SUCCESS", **changes) -> dict:
    """What WeChat puts in the notification: the bill as its query shows it, in its final state."""
    sim = simulator(app)
    resource = dict(sim.transfer_view(sim.transfers[payout.external_no]))
    resource["state"] = state
    if state == "FAIL":
        resource["fail_reason"] = "PAYEE_ACCOUNT_ABNORMAL"
    resource.update(changes)
    return resource


def notification(app, resource: dict, **kw) -> tuple[dict, bytes]:
    return simulator(app).build_notification(EVENT, resource, "mch_payment", **kw)


def deliver(client, app, resource: dict, **kw):
    headers, body = notification(app, resource, **kw)
    return client.post(NOTIFY, data=body, headers=headers)


def money(user_id: int) -> dict:
    db.session.expire_all()
    return {
        "cash": balance(account(AccountKind.USER_CASH, "user", user_id)),
        "payable": balance(account(AccountKind.REBATE_PAYABLE)),
        "in_transit": balance(account(AccountKind.PAYOUT_IN_TRANSIT)),
        "settlement": balance(account(AccountKind.WECHAT_SETTLEMENT)),
    }


def state_of_everything(payout_id: int) -> dict:
    db.session.expire_all()
    payout = db.session.get(Payout, payout_id)
    snapshot = {"payout": (payout.status, payout.finished_at, payout.wechat_ref), "money": money(payout.user_id)}
    db.session.commit()  # reading a balance may have created an empty account
    return {**snapshot, "tables": table_counts()}


def failure_body(response) -> bool:
    return response.json["code"] == "FAIL" and bool(response.json["message"])


# -- final states --------------------------------------------------------------------


def test_success_settles_the_payout_and_closes_the_flow(app, client, waiting):
    # given
    payout = waiting(5_00)
    assert money(payout.user_id) == {"cash": 0, "payable": 0, "in_transit": 5_00, "settlement": 0}
    resource = bill_resource(app, payout, "SUCCESS")
    # when
    response = deliver(client, app, resource)
    # then
    assert (response.status_code, response.get_data()) == (204, b"")
    db.session.expire_all()
    paid = db.session.get(Payout, payout.id)
    assert (paid.status, paid.wechat_ref) == ("succeeded", resource["transfer_bill_no"])
    assert paid.finished_at is not None
    assert money(payout.user_id) == {"cash": 0, "payable": 0, "in_transit": 0, "settlement": 5_00}
    assert db.session.get(LedgerFlow, payout.flow).closed_at is not None
    assert check_ledger().ok
    [seen] = db.session.execute(select(PaymentNotification)).scalars()
    assert (seen.out_trade_no, seen.outcome) == (payout.external_no, "transfer_SUCCESS")


@pytest.mark.parametrize(
    "update_time, kept",
    [("confirmed", True), ("before sending", False), ("in the future", False), (None, False)],
)
def test_a_payout_is_dated_by_wechats_time_of_success_when_it_says_a_plausible_one(
    app, client, waiting, update_time, kept
):
    """The fund-flow bill lists a transfer on the day WeChat finished it: one confirmed at 23:59:58 and told to us
    after midnight belongs to the day before (found by a probe: it was a false finding on the next day's run)."""
    from datetime import timedelta

    from models import utcnow

    payout = waiting(5_00)
    confirmed = (payout.sent_at + timedelta(seconds=1)).replace(microsecond=0)  # whole seconds, as WeChat writes
    while utcnow() <= confirmed:  # (told to us after it happened)
        time.sleep(0.05)
    times = {
        "confirmed": confirmed,
        "before sending": payout.sent_at - timedelta(hours=1),
        "in the future": utcnow() + timedelta(hours=1),
    }
    resource = bill_resource(app, payout, "SUCCESS")
    if update_time is None:
        resource.pop("update_time", None)
    else:
        resource["update_time"] = times[update_time].astimezone().isoformat(timespec="seconds")
    assert deliver(client, app, resource).status_code == 204
    db.session.expire_all()
    finished = db.session.get(Payout, payout.id).finished_at
    if kept:
        assert finished == confirmed
    else:
        assert finished > confirmed


def test_fail_of_an_offered_bill_returns_the_money_to_the_balance_and_sends_no_new_bill(app, client, waiting):
    # given: a bill offered to the user (it has package_info)
    payout = waiting(5_00)
    # when: WeChat closes it (an unconfirmed bill ends FAIL after 24 h)
    response = deliver(client, app, bill_resource(app, payout, "FAIL"))
    # then: the money is back in the balance with the reason, and no new bill was queued unasked
    # (before issue 9 a new bill was sent, again and again, to a user who never confirmed)
    assert response.status_code == 204
    db.session.expire_all()
    failed = db.session.get(Payout, payout.id)
    assert failed.status == "failed" and "PAYEE_ACCOUNT_ABNORMAL" in failed.last_error
    assert "back in your balance" in failed.last_error
    assert db.session.execute(select(Payout).filter_by(retry_of_id=payout.id)).scalar_one_or_none() is None
    assert money(payout.user_id) == {"cash": 5_00, "payable": 0, "in_transit": 0, "settlement": 0}
    assert db.session.get(LedgerFlow, failed.flow).closed_at is not None


def test_cancelled_returns_the_money_to_the_balance(app, client, waiting):
    payout = waiting(5_00)
    response = deliver(client, app, bill_resource(app, payout, "CANCELLED"))
    assert response.status_code == 204
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert money(payout.user_id) == {"cash": 5_00, "payable": 0, "in_transit": 0, "settlement": 0}
    assert db.session.get(LedgerFlow, payout.flow).closed_at is not None


def test_a_final_answer_also_settles_a_payout_whose_call_timed_out(app, client, waiting):
    payout = waiting()
    db.session.get(Payout, payout.id).status = "unknown"
    db.session.commit()
    assert deliver(client, app, bill_resource(app, payout, "SUCCESS")).status_code == 204
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "succeeded"


# -- exactly once --------------------------------------------------------------------


def test_duplicate_notification_id_is_answered_204_and_does_nothing_again(app, client, waiting):
    # given
    payout = waiting()
    headers, body = notification(app, bill_resource(app, payout, "FAIL"))
    assert client.post(NOTIFY, data=body, headers=headers).status_code == 204
    before = state_of_everything(payout.id)
    # when
    again = client.post(NOTIFY, data=body, headers=headers)
    # then
    assert (again.status_code, again.get_data()) == (204, b"")
    assert state_of_everything(payout.id) == before
    assert count(Payout) == 1  # the failed one, and no new bill


@pytest.mark.parametrize(("first", "second"), [("SUCCESS", "SUCCESS"), ("FAIL", "FAIL"), ("FAIL", "CANCELLED")])
def test_a_payout_already_final_is_answered_204_and_nothing_moves(app, client, waiting, first, second):
    # given: paid (or failed, its money back in the balance)
    payout = waiting()
    assert deliver(client, app, bill_resource(app, payout, first)).status_code == 204
    before = state_of_everything(payout.id)
    # when: another notification id for the same bill, agreeing (failed and cancelled both: not paid)
    response = deliver(client, app, bill_resource(app, payout, second))
    # then: only the notification id is recorded
    assert (response.status_code, response.get_data()) == (204, b"")
    after = state_of_everything(payout.id)
    assert after["tables"].pop("payment_notifications") == before["tables"].pop("payment_notifications") + 1
    assert after == before


@pytest.mark.parametrize(("first", "second"), [("SUCCESS", "FAIL"), ("SUCCESS", "CANCELLED"), ("FAIL", "SUCCESS")])
def test_a_final_state_contradicted_alerts_an_operator_once_and_moves_nothing(app, client, waiting, first, second):
    # given: paid (or failed: its money back in the balance)
    payout = waiting()
    assert deliver(client, app, bill_resource(app, payout, first)).status_code == 204
    before = state_of_everything(payout.id)
    # when: WeChat says the other (not paid after paid; paid after the money came back: the person would have it
    # twice), and says it again
    resource = bill_resource(app, payout, second)
    answers = [deliver(client, app, resource), deliver(client, app, resource)]
    # then: refused (400, WeChat's format), one open alert naming both states, nothing else changed
    assert [a.status_code for a in answers] == [400, 400] and failure_body(answers[0])
    after = state_of_everything(payout.id)
    assert after["tables"].pop("alerts") == before["tables"].pop("alerts") + 1
    assert after == before
    [alert] = [a for a in db.session.execute(select(Alert)).scalars() if a.kind == "payout_answer_mismatch"]
    settled = {"SUCCESS": "succeeded", "FAIL": "failed"}[first]
    assert alert.subject == payout.external_no and f"says {second}" in alert.message and settled in alert.message


def test_concurrent_duplicates_have_one_set_of_effects(app, waiting):
    payout = waiting()
    headers, body = notification(app, bill_resource(app, payout, "FAIL"))
    statuses = together(8, lambda _: app.test_client().post(NOTIFY, data=body, headers=headers).status_code)
    assert statuses == [204] * 8
    db.session.rollback()
    assert count(PaymentNotification) == 1
    assert count(Payout) == 1  # an offered bill that failed sends no new bill (issue 9)
    assert money(payout.user_id) == {"cash": 5_00, "payable": 0, "in_transit": 0, "settlement": 0}


# -- refusals ------------------------------------------------------------------------


def _tampered(app, resource):
    headers, body = notification(app, resource)
    return headers, body.replace(b'"summary":"', b'"summary":"X')


def _wrong_serial(app, resource):
    headers, body = notification(app, resource)
    return {**headers, "Wechatpay-Serial": "PUB_KEY_ID_0000000000000000000000000000099"}, body


def _untrusted_key(app, resource):
    body = simulator(app).notification_body(EVENT, resource, "mch_payment")
    return {"Content-Type": "application/json", **SimulatorKeys().sign_headers(body)}, body


def _probe(app, resource):
    headers, body = notification(app, resource)
    return {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]}, body


def _stale(app, resource):
    return notification(app, resource, timestamp=int(time.time()) - 301)


def _wrong_apiv3_key(app, resource):
    sim = simulator(app)
    other = SimulatorState(mchid=sim.mchid, apiv3_key="K" * 32, keys=sim.keys)
    return other.build_notification(EVENT, resource, "mch_payment")


def _gcm_tag(app, resource):
    body = json.loads(simulator(app).notification_body(EVENT, resource, "mch_payment"))
    sealed = bytearray(base64.b64decode(body["resource"]["ciphertext"]))
    sealed[-1] ^= 0x01
    body["resource"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    raw = json.dumps(body).encode()
    return resign(app, raw), raw


def _malformed_json(app, resource):
    raw = b'{"id": "EV-1", "resource": '
    return resign(app, raw), raw


def _oversized(app, resource):
    raw = json.dumps({"id": "EV-big", "padding": "x" * 70_000}).encode()
    return resign(app, raw), raw


def _missing_headers(app, resource):
    _, body = notification(app, resource)
    return {"Content-Type": "application/json"}, body


BAD = {
    "tampered_body": (_tampered, 401),
    "wrong_serial": (_wrong_serial, 401),
    "untrusted_key": (_untrusted_key, 401),
    "signtest_probe": (_probe, 401),
    "stale_timestamp": (_stale, 401),
    "wrong_apiv3_key": (_wrong_apiv3_key, 401),
    "gcm_tag_failure": (_gcm_tag, 401),
    "malformed_json": (_malformed_json, 400),
    "oversized_body": (_oversized, 413),
    "missing_headers": (_missing_headers, 401),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_unverifiable_notification_is_refused_and_changes_no_table(app, client, waiting, case):
    # given
    payout = waiting()
    build, status = BAD[case]
    headers, body = build(app, bill_resource(app, payout, "SUCCESS"))
    before = state_of_everything(payout.id)
    # when
    response = client.post(NOTIFY, data=body, headers=headers)
    # then
    assert response.status_code == status
    assert failure_body(response)
    assert state_of_everything(payout.id) == before
    assert before["payout"][0] == "waiting_user_confirm"


def test_unknown_out_bill_no_is_404_and_changes_nothing(app, client, waiting):
    payout = waiting()
    before = state_of_everything(payout.id)
    response = deliver(client, app, bill_resource(app, payout, "SUCCESS", out_bill_no="TB999999999999"))
    assert response.status_code == 404 and failure_body(response)
    assert state_of_everything(payout.id) == before


MISMATCHES = {
    "amount": {"transfer_amount": 5_01},
    "mchid": {"mch_id": "1999999999"},
    "appid": {"appid": "wx-someone-else"},
    "payee": {"openid": "sim-openid-somebody-else"},
    "bill number": {"transfer_bill_no": "ZZZ"},  # not the bill WeChat made when it took ours (outside probe)
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_verified_mismatch_sends_the_payout_to_an_operator_and_moves_no_money(app, client, waiting, case):
    # given: a signed notification about our number whose mchid, appid, amount or payee is not ours
    payout = waiting()
    resource = bill_resource(app, payout, "SUCCESS", **MISMATCHES[case])
    before = state_of_everything(payout.id)
    # when: WeChat retries it
    first = deliver(client, app, resource)
    again = deliver(client, app, resource)
    # then: refused both times; the payout waits for an operator (as a query answer not about it would),
    # no money moved, and the retry raised nothing new
    assert first.status_code == again.status_code == 400
    assert failure_body(first) and "operator" in first.json["message"]
    after = state_of_everything(payout.id)
    assert after["payout"] == ("needs_operator", *before["payout"][1:])
    assert after["money"] == before["money"] == {"cash": 0, "payable": 0, "in_transit": 5_00, "settlement": 0}
    assert after["tables"].pop("alerts") == before["tables"].pop("alerts") + 2
    assert after["tables"] == before["tables"]  # no ledger entry, no notification id recorded
    alerts = {a.kind: a for a in db.session.execute(select(Alert)).scalars()}
    assert set(alerts) == {"payout_answer_mismatch", "payout_needs_operator"}
    assert all(a.subject == payout.external_no for a in alerts.values())
    assert "transfer notification disagrees" in alerts["payout_answer_mismatch"].message
    assert "transfer notification disagrees" in db.session.get(Payout, payout.id).last_error


def test_a_mismatch_about_a_payout_already_final_alerts_once_and_changes_nothing_else(app, client, waiting):
    # given: paid
    payout = waiting()
    assert deliver(client, app, bill_resource(app, payout, "SUCCESS")).status_code == 204
    before = state_of_everything(payout.id)
    # when: a notification for the same number names another payee, twice
    resource = bill_resource(app, payout, "FAIL", openid="sim-openid-somebody-else")
    first, again = deliver(client, app, resource), deliver(client, app, resource)
    # then: one open alert; the payout stays paid
    assert first.status_code == again.status_code == 400
    after = state_of_everything(payout.id)
    assert after["tables"].pop("alerts") == before["tables"].pop("alerts") + 1
    assert after == before
    [alert] = db.session.execute(select(Alert)).scalars()
    assert (alert.kind, alert.subject) == ("payout_answer_mismatch", payout.external_no)
    assert "payee" in alert.message


def test_a_notification_without_appid_is_applied(app, client, waiting):
    # WeChat's documented notification fields do not include appid: it is compared when present
    payout = waiting()
    resource = bill_resource(app, payout, "SUCCESS")
    del resource["appid"]
    assert deliver(client, app, resource).status_code == 204
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "succeeded"


MALFORMED = {
    "amount_as_text": ({"transfer_amount": "500"}, "transfer_bill.transfer_amount"),
    "no_amount": ({"transfer_amount": None}, "transfer_bill.transfer_amount"),
    "no_payee": ({"openid": None}, "transfer_bill.openid"),
    "no_mch_id": ({"mch_id": None}, "transfer_bill.mch_id"),
    "no_transfer_bill_no": ({"transfer_bill_no": None}, "transfer_bill.transfer_bill_no"),
    "unknown_state": ({"state": "PAID"}, "transfer_bill.state"),
    "naive_update_time": ({"update_time": "2026-11-25T10:00:00"}, "transfer_bill.update_time"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_verified_but_malformed_bill_is_400_naming_the_field_and_changes_nothing(app, client, waiting, case):
    # given: a signed notification whose resource is not the shape WeChat documents
    payout = waiting()
    change, field = MALFORMED[case]
    resource = {k: v for k, v in {**bill_resource(app, payout, "SUCCESS"), **change}.items() if v is not None}
    before = state_of_everything(payout.id)
    # when
    response = deliver(client, app, resource)
    # then: 400 naming the field; nothing recorded, nothing flagged (WeChat retries)
    assert response.status_code == 400 and failure_body(response)
    assert "MALFORMED_RESOURCE" in response.json["message"] and field in response.json["message"]
    assert state_of_everything(payout.id) == before


def test_a_state_that_is_not_final_is_refused(app, client, waiting):
    payout = waiting()
    before = state_of_everything(payout.id)
    response = deliver(client, app, bill_resource(app, payout, "PROCESSING"))
    assert response.status_code == 400 and failure_body(response)
    assert state_of_everything(payout.id) == before


def test_another_event_type_is_acknowledged_and_ignored(app, client, waiting):
    payout = waiting()
    before = state_of_everything(payout.id)
    headers, body = simulator(app).build_notification(
        "MCHTRANSFER.BATCH.FINISHED", bill_resource(app, payout, "SUCCESS"), "mch_payment"
    )
    assert client.post(NOTIFY, data=body, headers=headers).status_code == 204
    assert state_of_everything(payout.id) == before


def test_an_id_noted_for_a_payment_does_not_make_a_transfer_notice_a_repeat(app, client, waiting):
    """A notification id is a repeat only for the same bill and kind (review of 2026-12-02): one noted for a payment
    neither drops this transfer's final answer nor fails it."""
    from models import utcnow

    payout = waiting(5_00)
    db.session.add(
        PaymentNotification(notification_id="EV-SHARED", out_trade_no="O-ELSE", outcome="applied", received_at=utcnow())
    )
    db.session.commit()
    response = deliver(client, app, bill_resource(app, payout, "SUCCESS"), notification_id="EV-SHARED")
    assert response.status_code == 204
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "succeeded"
