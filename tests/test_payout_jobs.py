"""The payout jobs: per-rail rate limits, alert delivery, which rails exist, and the dispatcher end to end.

The end-to-end story runs on the app's simulator: the simulator's notification
transport posts into this app's test client once the user has confirmed.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import requests
import responses
from sqlalchemy import select

from jobs.payouts import build_rails, deliver_alerts, dispatch_payouts, rail_limiter
from ledger import account, balance
from models import AccountKind, Alert, LedgerFlow, Payout, db, raise_alert
from payouts.coupon_rail import CouponRail
from payouts.redpack_rail import RedpackRail
from payouts.transfer_rail import TransferRail
from tests.money_helpers import queue_from_balance
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixtures
from tests.test_wechat_callbacks import simulator

WEBHOOK = "https://qyapi.test/cgi-bin/webhook/send?key=robot-key"


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def webhook():
    """``responses`` in front of every outbound call; the webhook is registered by each test."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def queued_transfer(app):
    def make(user, amount_fen: int) -> Payout:
        return queue_from_balance(user, amount_fen, tag="j")

    return make


class FakeRail:
    def __init__(self, rate_per_second: int):
        self.rate_per_second = rate_per_second


# -- rail_limiter --------------------------------------------------------------------


def test_rail_limiter_never_lets_more_than_the_rate_through_in_any_second():
    # given: a rail of 5 calls a second and a burst of 30 callers at once
    name = f"burst-{uuid.uuid4().hex[:8]}"
    wait_for = rail_limiter({name: FakeRail(5)}, None, max_wait_s=15.0)
    barrier = threading.Barrier(30)
    stamps: list[float] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait()
        wait_for(name)
        now = time.monotonic()  # the moment the call to WeChat would start
        with lock:
            stamps.append(now)

    # when
    threads = [threading.Thread(target=call) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then: every call got through, and any 6 consecutive calls span at least a second
    stamps.sort()
    assert len(stamps) == 30
    slack = 0.05  # thread scheduling between the limiter's hit and our timestamp; not a speed target
    tightest = min(stamps[i + 5] - stamps[i] for i in range(len(stamps) - 5))
    assert tightest >= 1.0 - slack, f"6 calls within {tightest:.3f} s"
    assert stamps[-1] - stamps[0] >= 5.0 - slack  # 30 calls at 5/s: six one-second waves


def test_rail_limiter_counts_each_rail_on_its_own_and_gives_up_after_max_wait():
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    wait_for = rail_limiter({a: FakeRail(5), b: FakeRail(5)}, None, max_wait_s=0.0)
    for _ in range(5):
        wait_for(a)
    for _ in range(5):
        wait_for(b)  # rail a's full window does not hold rail b back
    with pytest.raises(TimeoutError, match=a):
        wait_for(a)


# -- deliver_alerts ------------------------------------------------------------------


def alerts_notified() -> dict[str, bool]:
    db.session.expire_all()
    return {a.subject: a.notified_at is not None for a in db.session.execute(select(Alert)).scalars()}


def test_each_new_alert_is_posted_once(app, webhook):
    # given
    app.config["ALERT_WEBHOOK_URL"] = WEBHOOK
    webhook.add(responses.POST, WEBHOOK, json={"errcode": 0, "errmsg": "ok"})
    raise_alert("rail_paused", "wechat_change", "NOT_ENOUGH: top up the operating account")
    raise_alert("payout_needs_operator", "TB000000000007", "configuration problem")
    db.session.commit()
    # when
    first = deliver_alerts()
    second = deliver_alerts()
    # then
    assert first == {"sent": 2} and not second
    assert [json.loads(c.request.body) for c in webhook.calls] == [
        {
            "msgtype": "text",
            "text": {"content": "[rail_paused] wechat_change: NOT_ENOUGH: top up the operating account"},
        },
        {"msgtype": "text", "text": {"content": "[payout_needs_operator] TB000000000007: configuration problem"}},
    ]
    assert alerts_notified() == {"wechat_change": True, "TB000000000007": True}


def test_an_unreachable_webhook_leaves_the_alert_for_a_later_run(app, webhook):
    # given
    app.config["ALERT_WEBHOOK_URL"] = WEBHOOK
    webhook.add(responses.POST, WEBHOOK, body=requests.exceptions.ConnectionError("no route"))
    raise_alert("rail_paused", "wechat_change", "NOT_ENOUGH")
    db.session.commit()
    # when
    down = deliver_alerts()
    # then
    assert down == {"failed": 1}
    assert alerts_notified() == {"wechat_change": False}
    # when: the webhook is back
    webhook.replace(responses.POST, WEBHOOK, json={"errcode": 0, "errmsg": "ok"})
    assert deliver_alerts() == {"sent": 1}
    assert alerts_notified() == {"wechat_change": True}
    assert len(webhook.calls) == 2


def test_a_timeout_counts_as_unreachable(app, webhook):
    app.config["ALERT_WEBHOOK_URL"] = WEBHOOK
    webhook.add(responses.POST, WEBHOOK, body=requests.exceptions.ReadTimeout("slow"))
    raise_alert("payout_returned", "TB000000000001", "kept in balance")
    db.session.commit()
    assert deliver_alerts() == {"failed": 1}
    assert alerts_notified() == {"TB000000000001": False}


@pytest.mark.parametrize(
    "reply",
    [
        {"status": 500, "body": "internal error"},
        {"status": 200, "json": {"errcode": 93000, "errmsg": "invalid webhook url"}},
    ],
    ids=["http_500", "wecom_errcode"],
)
def test_a_refused_post_leaves_the_alert_for_a_later_run(app, webhook, reply):
    app.config["ALERT_WEBHOOK_URL"] = WEBHOOK
    webhook.add(responses.POST, WEBHOOK, **reply)
    raise_alert("rail_paused", "wechat_change", "NOT_ENOUGH")
    db.session.commit()
    deliver_alerts()
    assert alerts_notified() == {"wechat_change": False}


def test_without_a_webhook_nothing_is_posted(app, webhook):
    raise_alert("rail_paused", "wechat_change", "NOT_ENOUGH")
    db.session.commit()
    assert not deliver_alerts()
    assert len(webhook.calls) == 0 and alerts_notified() == {"wechat_change": False}


def test_a_long_backlog_goes_out_twenty_a_run(app, webhook):
    app.config["ALERT_WEBHOOK_URL"] = WEBHOOK
    webhook.add(responses.POST, WEBHOOK, json={"errcode": 0, "errmsg": "ok"})
    for n in range(25):
        raise_alert("payout_returned", f"TB{n:012d}", "kept in balance")
    db.session.commit()
    assert deliver_alerts() == {"sent": 20}
    assert deliver_alerts() == {"sent": 5}
    assert not deliver_alerts()
    assert len(webhook.calls) == 25 and all(alerts_notified().values())


# -- build_rails ---------------------------------------------------------------------


def test_simulator_mode_builds_the_transfer_and_red_packet_rails(app):
    rails = build_rails(app.config, app.extensions["wechat"])
    assert set(rails) == {"wechat_change", "cash_red_packet"}
    transfer = rails["wechat_change"]
    assert isinstance(transfer, TransferRail) and isinstance(rails["cash_red_packet"], RedpackRail)
    assert transfer.appid == app.config["WECHAT_APPID"]
    assert transfer.notify_url == app.config["PUBLIC_BASE_URL"] + "/wechat/transfer/notify"
    assert (transfer.rate_per_second, rails["cash_red_packet"].rate_per_second) == (100, 30)


def test_the_coupon_rail_exists_only_with_stocks(app):
    app.config["WECHAT_COUPON_STOCKS"] = [{"stock_id": "S-500", "denomination_fen": 500}]
    rails = build_rails(app.config, app.extensions["wechat"])
    assert set(rails) == {"wechat_change", "cash_red_packet", "wechat_coupon"}
    assert isinstance(rails["wechat_coupon"], CouponRail) and rails["wechat_coupon"].rate_per_second == 500


def test_the_card_rail_exists_only_with_a_card_id(app):
    app.config["WECHAT_CARD_ID"] = "pFS7Fjg8kV1IdDz01r4SQwMkuCKc"
    assert set(build_rails(app.config, app.extensions["wechat"])) == {"wechat_change", "cash_red_packet", "card_coupon"}


def test_without_a_v2_key_there_is_no_red_packet_rail(app):
    app.config["WECHAT_API_V2_KEY"] = None
    assert set(build_rails(app.config, app.extensions["wechat"])) == {"wechat_change"}


def test_rates_come_from_the_setting(app):
    app.config["PAYOUT_RATE_LIMITS"] = {"wechat_change": 7, "cash_red_packet": 3}
    rails = build_rails(app.config, app.extensions["wechat"])
    assert (rails["wechat_change"].rate_per_second, rails["cash_red_packet"].rate_per_second) == (7, 3)


# -- dispatch_payouts end to end -----------------------------------------------------


def test_a_queued_transfer_waits_for_the_user_then_lands_when_confirmed(
    app, client, make_user, user_headers, queued_transfer, delivered
):
    # given: 8.88 yuan queued for a person known to the mini-program
    user = make_user(appid=app.config["WECHAT_APPID"])
    payout = queued_transfer(user, 8_88)
    # when: the dispatcher job runs
    outcomes = dispatch_payouts()
    # then: WeChat holds a bill waiting for the user's confirmation
    assert dict(outcomes) == {"waiting_user_confirm": 1}
    db.session.expire_all()
    waiting = db.session.get(Payout, payout.id)
    bill = simulator(app).transfers[payout.external_no]
    assert (waiting.status, waiting.package_info, waiting.wechat_ref) == (
        "waiting_user_confirm",
        bill["package_info"],
        bill["transfer_bill_no"],
    )
    assert bill["request"]["transfer_amount"] == 8_88
    assert bill["request"]["notify_url"] == app.config["PUBLIC_BASE_URL"] + "/wechat/transfer/notify"
    [mine] = client.get("/api/v1/me/payouts", headers=user_headers(user)).json["items"]
    assert mine["package_info"] == bill["package_info"]
    # when: the user confirms in wx.requestMerchantTransfer and WeChat notifies us
    confirmed = client.post(
        f"/_sim/pay/transfer/confirm/{mine['package_info']}", headers={"Accept": "application/json"}
    )
    delivered()
    # then
    assert confirmed.status_code == 200 and confirmed.json["state"] == "SUCCESS"
    [delivery] = simulator(app).dispatcher.deliveries
    assert delivery.statuses == [204] and delivery.delivered
    paid = db.session.get(Payout, payout.id)
    assert (paid.status, paid.wechat_ref) == ("succeeded", bill["transfer_bill_no"])
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 8_88
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 0
    assert db.session.get(LedgerFlow, paid.flow).closed_at is not None
    assert not dispatch_payouts()  # nothing left to do
    assert client.get("/api/v1/me/payouts", headers=user_headers(user)).json["items"][0].get("package_info") is None


def test_a_person_without_a_mini_program_openid_keeps_the_money_in_the_balance(
    app, make_user, queued_transfer, delivered
):
    user = make_user(appid=app.config["WECHAT_OA_APPID"])
    payout = queued_transfer(user, 3_00)
    assert not dispatch_payouts()  # decided before any call
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == 3_00
    assert simulator(app).transfers == {}


# -- one person whose covered debts cannot be settled never stops the others ------------------------------


def test_a_person_who_cannot_be_settled_is_skipped_and_everyone_after_them_is_settled(app, monkeypatch):
    import jobs.payouts as jobs_payouts

    # given: three people owing; settling the first one fails after it wrote something
    settled: list[int] = []

    def settle(user_id, point_value_fen):
        raise_alert("test_write", f"user {user_id}", "written inside the person's transaction")
        if user_id == 101:
            raise RuntimeError("cannot settle this one")
        settled.append(user_id)
        return 1_00

    monkeypatch.setattr(jobs_payouts, "people_owing", lambda after: [101, 102, 103] if after == 0 else [])
    monkeypatch.setattr(jobs_payouts, "settle_covered", settle)
    # when: the job runs, twice
    first = jobs_payouts.settle_covered_debts()
    second = jobs_payouts.settle_covered_debts()
    # then: the others are settled each run; the bad one's writes are rolled back, it is logged and alerted once
    assert first == second == {"people": 2, "settled_fen": 2_00, "failed": 1}
    assert settled == [102, 103, 102, 103]
    db.session.rollback()
    written = {a.subject for a in db.session.execute(select(Alert).where(Alert.kind == "test_write")).scalars()}
    assert written == {"user 102", "user 103"}
    failed = db.session.execute(select(Alert).where(Alert.kind == "covered_debt_failed")).scalars().all()
    assert [(a.subject, "cannot settle this one" in a.message) for a in failed] == [("user 101", True)]
