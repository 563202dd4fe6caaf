"""The WeChat-change rail (2025 ``transfer-bills``, scene 1000) against real wire formats.

Two WeChats: the app's own simulator (served in-process, real RSA and AES
keys, signed answers) and ``responses`` in front of a PayClient built from the
same keys but pointed at ``http://wx.test``, with answers signed by the
simulator's keys. No call leaves the process.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
import requests
import responses
from sqlalchemy import text

from jobs.payouts import dispatch_due
from ledger import Leg, account, post_entry
from models import AccountKind, Payout, User, UserIdentity, db, utcnow
from payouts import enqueue_payout
from payouts.rails import Outcome
from payouts.transfer_rail import REAL_NAME_FROM_FEN, TransferRail
from tests.test_wechat_callbacks import simulator
from wechat import crypto
from wechat.pay import PayClient

BASE = "http://wx.test"
BILLS = f"{BASE}/v3/fund-app/mch-transfer/transfer-bills"
NO = "TB000000000001"
NOTIFY = "https://merchant.test/wechat/transfer/notify"
REPORT = [{"info_type": "活动名称", "info_content": "消费返利"}, {"info_type": "奖励说明", "info_content": "订单返利"}]
REQUEST = {"openid": "mp-openid-1", "amount_fen": 5_00, "remark": "订单返利", "report": REPORT}


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def sim_rail(app):
    """The rail on the app's PayClient: every call is served by the in-process simulator."""
    return TransferRail(app.extensions["wechat"].pay, appid=app.config["WECHAT_APPID"], notify_url=NOTIFY)


@pytest.fixture
def wechat_http():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def http_rail(app, wechat_http):
    """The rail on a PayClient with the app's real keys, pointed at ``responses``."""
    config = dataclasses.replace(app.extensions["wechat"].pay.config, api_base=BASE)
    return TransferRail(PayClient(config, session=requests.Session()), appid=config.appid, notify_url=NOTIFY)


def signed(app, status: int, data) -> dict:
    """An answer signed by WeChat's key, as ``responses`` keyword arguments."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    headers = simulator(app).keys.sign_headers(body)
    return {"status": status, "body": body, "headers": headers, "content_type": "application/json"}


@pytest.fixture
def payee(app, make_user):
    """A person with a mini-program openid and an official-account openid."""

    def make(real_name: str | None = None, mini_program: bool = True) -> User:
        user = make_user(appid=app.config["WECHAT_APPID"] if mini_program else app.config["WECHAT_OA_APPID"])
        if mini_program:
            db.session.add(UserIdentity(user_id=user.id, appid=app.config["WECHAT_OA_APPID"], openid=f"oa-{user.id}"))
        user.real_name = real_name
        db.session.commit()
        return user

    return make


@pytest.fixture
def transfer(app):
    def make(user: User, amount_fen: int = 5_00) -> Payout:
        cash = account(AccountKind.USER_CASH, "user", user.id)
        post_entry(
            f"fund:{user.id}:{amount_fen}",
            "rebate",
            [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen), Leg(cash, amount_fen)],
        )
        payout = enqueue_payout(
            number_prefix="",
            rail="wechat_change",
            user_id=user.id,
            amount_fen=amount_fen,
            source=cash,
            key=f"t:{user.id}",
            memo="t",
        )
        db.session.commit()
        return payout

    return make


def mini_program_openid(app, user: User) -> str:
    return user.identity_for(app.config["WECHAT_APPID"]).openid


# -- build_request -------------------------------------------------------------------


def test_request_carries_the_mini_program_openid_and_the_two_report_items(app, sim_rail, payee, transfer):
    # given: a person known under both appids
    user = payee()
    payout = transfer(user, 5_00)
    # when
    request = sim_rail.build_request(payout, utcnow())
    # then: the fields, and the body built from them once (every POST of the number sends these bytes)
    wire = request.pop("wire")
    assert json.loads(wire["body"])["openid"] == request["openid"]
    assert request == {
        "openid": mini_program_openid(app, user),
        "amount_fen": 5_00,
        "remark": "订单返利",
        "report": REPORT,
    }
    assert request["openid"] != f"oa-{user.id}"


def test_no_openid_under_the_mini_program_falls_back(sim_rail, payee, transfer):
    payout = transfer(payee(mini_program=False))
    result = sim_rail.build_request(payout, utcnow())
    assert (result.outcome, result.code) == (Outcome.FALLBACK, "NO_OPENID")


def test_from_2000_yuan_without_a_real_name_it_waits_for_the_user(sim_rail, payee, transfer):
    now = utcnow()
    payout = transfer(payee(), REAL_NAME_FROM_FEN)
    result = sim_rail.build_request(payout, now)
    assert (result.outcome, result.code) == (Outcome.DEFER, "REAL_NAME_REQUIRED")
    assert result.retry_at == now + timedelta(days=1)


def test_just_below_2000_yuan_no_name_is_needed_or_sent(sim_rail, payee, transfer):
    request = sim_rail.build_request(transfer(payee(), REAL_NAME_FROM_FEN - 1), utcnow())
    assert isinstance(request, dict) and "user_name" not in request


def test_with_a_real_name_the_request_carries_it(sim_rail, payee, transfer):
    from models.base import fernet

    request = sim_rail.build_request(transfer(payee(real_name="张三"), REAL_NAME_FROM_FEN), utcnow())
    assert "user_name" not in request and "张三" not in str(request)  # never in clear text with the payout
    assert fernet().decrypt(request["user_name_enc"].encode()).decode() == "张三"
    assert request["amount_fen"] == 200_000


def test_the_sent_body_has_the_name_rsa_encrypted_under_the_named_serial(app, http_rail, wechat_http):
    # given
    wechat_http.add(responses.POST, BILLS, **signed(app, 200, {"out_bill_no": NO, "state": "ACCEPTED"}))
    # when
    from models.base import fernet

    sealed = fernet().encrypt("张三".encode()).decode()
    http_rail.send(NO, http_rail.with_wire(NO, {**REQUEST, "amount_fen": 250_000, "user_name_enc": sealed}))
    # then
    sent = wechat_http.calls[0].request
    body = json.loads(sent.body)
    assert body["user_name"] != "张三" and "张三" not in sent.body.decode()
    serial = sent.headers["Wechatpay-Serial"]
    named, key = simulator(app).keys.private_for(serial)
    assert named == serial
    assert crypto.rsa_oaep_decrypt(body["user_name"], key) == "张三"


def test_the_simulator_decrypts_the_same_name(app, sim_rail, payee, transfer):
    payout = transfer(payee(real_name="李四"), 300_000)
    number, request = payout.external_no, sim_rail.build_request(payout, utcnow())
    db.session.commit()  # no transaction open during the calls
    result = sim_rail.send(number, request)
    assert result.outcome == Outcome.WAITING_USER_CONFIRM
    assert simulator(app).transfers[number]["user_name"] == "李四"


def test_the_real_name_is_not_stored_in_clear_text_with_the_payout(app, sim_rail, payee, transfer):
    # given
    payout = transfer(payee(real_name="王五"), 250_000)
    # when: the dispatcher claims it (the request is fixed and stored) and sends it
    dispatch_due({sim_rail.name: sim_rail})
    # then
    raw = db.session.execute(text("select request from payouts where id = :i"), {"i": payout.id}).scalar_one()
    assert "王五" not in str(raw) and "\\u738b\\u4e94" not in str(raw)


# -- the scene 1000 body -------------------------------------------------------------


def test_scene_1000_body_is_exactly_what_wechat_documents(app, http_rail, wechat_http):
    wechat_http.add(responses.POST, BILLS, **signed(app, 200, {"out_bill_no": NO, "state": "ACCEPTED"}))
    http_rail.send(NO, http_rail.with_wire(NO, REQUEST))
    body = json.loads(wechat_http.calls[0].request.body)
    assert body == {
        "appid": app.config["WECHAT_APPID"],
        "out_bill_no": NO,
        "transfer_scene_id": "1000",
        "openid": "mp-openid-1",
        "transfer_amount": 5_00,
        "transfer_remark": "订单返利",
        "notify_url": NOTIFY,
        "user_recv_perception": "现金奖励",
        "transfer_scene_report_infos": REPORT,
    }
    assert len(body["transfer_scene_report_infos"]) == 2
    assert wechat_http.calls[0].request.headers["Authorization"].startswith("WECHATPAY2-SHA256-RSA2048 ")


def test_the_simulator_receives_the_same_two_report_items(app, sim_rail, payee, transfer):
    payout = transfer(payee())
    number, request = payout.external_no, sim_rail.build_request(payout, utcnow())
    db.session.commit()  # no transaction open during the calls
    sim_rail.send(number, request)
    sent = simulator(app).transfers[number]["request"]
    assert sent["transfer_scene_report_infos"] == REPORT and sent["transfer_scene_id"] == "1000"


def test_a_long_activity_name_is_cut_to_32_characters(app):
    rail = TransferRail(None, appid="wx", notify_url=NOTIFY, activity="活" * 40, reward_text="奖" * 40)
    assert (len(rail.activity), len(rail.reward_text)) == (32, 32)


# -- send: answers -------------------------------------------------------------------


def test_the_simulator_answers_wait_user_confirm_with_package_info(app, sim_rail, payee, transfer):
    # given
    payout = transfer(payee())
    number, request = payout.external_no, sim_rail.build_request(payout, utcnow())
    db.session.commit()  # no transaction open during the calls
    # when
    first = sim_rail.send(number, request)
    again = sim_rail.send(number, request)  # same number, same bill
    # then
    bill = simulator(app).transfers[number]
    assert (first.outcome, first.code) == (Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM")
    assert first.package_info == bill["package_info"] and first.wechat_ref == bill["transfer_bill_no"]
    assert again == first and len(simulator(app).transfers) == 1


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ({"state": "WAIT_USER_CONFIRM", "package_info": "pkg-xyz"}, Outcome.WAITING_USER_CONFIRM),
        ({"state": "SUCCESS"}, Outcome.SUCCEEDED),
        ({"state": "FAIL", "fail_reason": "PAYEE_ACCOUNT_ABNORMAL"}, Outcome.FAILED),
        ({"state": "ACCEPTED"}, Outcome.IN_PROGRESS),
        ({"state": "PROCESSING"}, Outcome.IN_PROGRESS),
        ({"state": "TRANSFERING"}, Outcome.IN_PROGRESS),
        ({"state": "A_STATE_FROM_NEXT_YEAR"}, Outcome.UNKNOWN),
        ({}, Outcome.UNKNOWN),
    ],
)
def test_send_answers_map_to_outcomes(app, http_rail, wechat_http, answer, outcome):
    data = {"out_bill_no": NO, "transfer_bill_no": "1330000001", "create_time": "2026-11-25T10:00:00+08:00", **answer}
    wechat_http.add(responses.POST, BILLS, **signed(app, 200, data))
    result = http_rail.send(NO, http_rail.with_wire(NO, REQUEST))
    assert (result.outcome, result.code) == (outcome, answer.get("state"))
    assert result.wechat_ref == "1330000001"
    assert result.package_info == answer.get("package_info")
    assert result.message == answer.get("fail_reason", "")


# -- send: errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (403, "NOT_ENOUGH", Outcome.PAUSE_RAIL),
        (403, "NO_AUTH", Outcome.CONFIG_ERROR),
        (429, "FREQUENCY_LIMITED", Outcome.RETRY),
        (500, "SYSTEM_ERROR", Outcome.UNKNOWN),
        (502, "SYSTEM_ERROR", Outcome.UNKNOWN),
        # 400 PARAM_ERROR / INVALID_REQUEST: WeChat refused the request itself (below 0.1 yuan, say)
        (400, "PARAM_ERROR", Outcome.REFUSED),
        (400, "INVALID_REQUEST", Outcome.REFUSED),
        (403, "INVALID_REQUEST", Outcome.UNKNOWN),  # any other non-200 is never a failure: query first
        (403, "A_CODE_FROM_NEXT_YEAR", Outcome.UNKNOWN),
    ],
)
def test_send_errors_map_to_outcomes(app, http_rail, wechat_http, status, code, outcome):
    wechat_http.add(responses.POST, BILLS, **signed(app, status, {"code": code, "message": "模拟"}))
    result = http_rail.send(NO, http_rail.with_wire(NO, REQUEST))
    assert (result.outcome, result.code) == (outcome, code)


@pytest.mark.parametrize(
    "exc", [requests.exceptions.ReadTimeout, requests.exceptions.ConnectTimeout, requests.exceptions.ConnectionError]
)
def test_timeouts_and_lost_connections_are_unknown(http_rail, wechat_http, exc):
    wechat_http.add(responses.POST, BILLS, body=exc("slow"))
    assert http_rail.send(NO, http_rail.with_wire(NO, REQUEST)).outcome == Outcome.UNKNOWN


def test_unsigned_or_unparseable_200_is_unknown(app, http_rail, wechat_http):
    wechat_http.add(responses.POST, BILLS, json={"out_bill_no": NO, "state": "SUCCESS"})  # not signed: forged
    body = b"<html>gateway</html>"
    wechat_http.add(responses.POST, BILLS, status=200, body=body, headers=simulator(app).keys.sign_headers(body))
    assert http_rail.send(NO, http_rail.with_wire(NO, REQUEST)).outcome == Outcome.UNKNOWN
    assert http_rail.send(NO, http_rail.with_wire(NO, REQUEST)).outcome == Outcome.UNKNOWN


def test_simulator_faults_map_the_same_way(app, sim_rail, payee, transfer):
    payout = transfer(payee())
    number, request = payout.external_no, sim_rail.build_request(payout, utcnow())
    db.session.commit()  # no transaction open during the calls
    sim = simulator(app)
    sim.inject_fault("/v3/fund-app/mch-transfer/transfer-bills", 403, "NOT_ENOUGH", "余额不足")
    sim.inject_fault("/v3/fund-app/mch-transfer/transfer-bills", 429, "FREQUENCY_LIMITED", "频率超限")
    assert sim_rail.send(number, request).outcome == Outcome.PAUSE_RAIL
    assert sim_rail.send(number, request).outcome == Outcome.RETRY
    assert number not in sim.transfers
    assert sim_rail.send(number, request).outcome == Outcome.WAITING_USER_CONFIRM


# -- query ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        ("SUCCESS", Outcome.SUCCEEDED),
        ("FAIL", Outcome.FAILED),
        ("CANCELLED", Outcome.CANCELLED),
        ("WAIT_USER_CONFIRM", Outcome.WAITING_USER_CONFIRM),
        ("ACCEPTED", Outcome.IN_PROGRESS),
        ("PROCESSING", Outcome.IN_PROGRESS),
        ("TRANSFERING", Outcome.IN_PROGRESS),
        ("CANCELING", Outcome.IN_PROGRESS),
        ("SOMETHING_NEW", Outcome.UNKNOWN),
    ],
)
def test_query_states_map_to_outcomes(app, http_rail, wechat_http, state, outcome):
    data = {"mch_id": app.config["WECHAT_MCHID"], "out_bill_no": NO, "transfer_bill_no": "1330000002", "state": state}
    data |= {"transfer_amount": REQUEST["amount_fen"], "openid": REQUEST["openid"]}
    wechat_http.add(responses.GET, f"{BILLS}/out-bill-no/{NO}", **signed(app, 200, data))
    result = http_rail.query(NO, REQUEST)
    assert (result.outcome, result.code, result.wechat_ref) == (outcome, state, "1330000002")


@pytest.mark.parametrize("code", ["NOT_FOUND", "RESOURCE_NOT_EXISTS"])
def test_query_404_means_wechat_never_saw_the_number(app, http_rail, wechat_http, code):
    wechat_http.add(
        responses.GET, f"{BILLS}/out-bill-no/{NO}", **signed(app, 404, {"code": code, "message": "记录不存在"})
    )
    assert http_rail.query(NO, REQUEST).outcome == Outcome.NOT_FOUND


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ({"status": 500, "code": "SYSTEM_ERROR"}, Outcome.UNKNOWN),
        ({"status": 429, "code": "FREQUENCY_LIMITED"}, Outcome.RETRY),
        ({"status": 403, "code": "NO_AUTH"}, Outcome.CONFIG_ERROR),
    ],
)
def test_query_errors_never_claim_not_found(app, http_rail, wechat_http, reply, outcome):
    data = {"code": reply["code"], "message": "x"}
    wechat_http.add(responses.GET, f"{BILLS}/out-bill-no/{NO}", **signed(app, reply["status"], data))
    assert http_rail.query(NO, REQUEST).outcome == outcome


def test_query_timeout_is_unknown(http_rail, wechat_http):
    wechat_http.add(responses.GET, f"{BILLS}/out-bill-no/{NO}", body=requests.exceptions.ReadTimeout("slow"))
    assert http_rail.query(NO, REQUEST).outcome == Outcome.UNKNOWN


def test_query_against_the_simulator(app, sim_rail, payee, transfer):
    payout = transfer(payee())
    number, request = payout.external_no, sim_rail.build_request(payout, utcnow())
    db.session.commit()  # no transaction open during the calls
    assert sim_rail.query(number, request).outcome == Outcome.NOT_FOUND
    sim_rail.send(number, request)
    found = sim_rail.query(number, request)
    bill_no = simulator(app).transfers[number]["transfer_bill_no"]
    assert (found.outcome, found.wechat_ref) == (Outcome.WAITING_USER_CONFIRM, bill_no)


# -- cancel --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ({"status": 200, "data": {"out_bill_no": NO, "state": "CANCELING"}}, Outcome.IN_PROGRESS),
        ({"status": 200, "data": {"out_bill_no": NO, "state": "CANCELLED"}}, Outcome.CANCELLED),
        ({"status": 500, "data": {"code": "SYSTEM_ERROR", "message": "x"}}, Outcome.UNKNOWN),
    ],
)
def test_cancel_answers(app, http_rail, wechat_http, reply, outcome):
    wechat_http.add(responses.POST, f"{BILLS}/out-bill-no/{NO}/cancel", **signed(app, reply["status"], reply["data"]))
    assert http_rail.cancel(NO).outcome == outcome
    assert wechat_http.calls[0].request.body in (b"{}", "{}")


# -- answers we cannot read -------------------------------------------------------------

ODD_ANSWERS = [
    {"state": ["SUCCESS"]},
    {"state": "FAIL", "fail_reason": 7},
    {"state": "WAIT_USER_CONFIRM", "package_info": {"p": "kg"}},
    {"state": "SUCCESS", "transfer_bill_no": {"n": 1}},
    {"state": "SUCCESS", "transfer_bill_no": "1" * 65},  # longer than Payout.wechat_ref holds
    {"state": "S" * 65},  # longer than PayoutAttempt.response_code holds
]


@pytest.mark.parametrize("answer", ODD_ANSWERS)
def test_a_signed_answer_with_a_field_of_the_wrong_type_is_unknown_never_decided_on(
    app, http_rail, wechat_http, answer
):
    data = {"out_bill_no": NO, "transfer_bill_no": "1330000001", **answer}
    wechat_http.add(responses.POST, BILLS, **signed(app, 200, data))
    result = http_rail.send(NO, http_rail.with_wire(NO, REQUEST))
    assert (result.outcome, result.code) == (Outcome.UNKNOWN, "UNREADABLE_ANSWER")
    assert "could not be read" in result.message
    assert result.wechat_ref is None and result.package_info is None


@pytest.mark.parametrize("code", [["PARAM_ERROR"], 400, "X" * 65])
def test_an_error_answer_with_an_unreadable_code_is_unknown(app, http_rail, wechat_http, code):
    wechat_http.add(responses.GET, f"{BILLS}/out-bill-no/{NO}", **signed(app, 500, {"code": code, "message": "x"}))
    result = http_rail.query(NO, REQUEST)  # (the client already reads such a code as none: the status says it)
    assert (result.outcome, result.code) in {(Outcome.UNKNOWN, "UNREADABLE_ANSWER"), (Outcome.UNKNOWN, "HTTP_500")}


@pytest.mark.parametrize("answer", ODD_ANSWERS[:4])
def test_a_payout_whose_answers_cannot_be_read_ends_with_an_operator_not_sending_forever(
    app, http_rail, wechat_http, payee, transfer, answer
):
    # given: WeChat's signed answers, to the POST and to every query, carry a field of the wrong type
    from payouts.record import DispatchSettings
    from payouts.settings import MoneySettings

    settings = DispatchSettings(money=MoneySettings())

    def run(at=None):
        out = dispatch_due({http_rail.name: http_rail}, settings=settings, clock=(lambda: at) if at else utcnow)
        db.session.expire_all()
        return out

    payout = transfer(payee())
    wechat_http.add(
        responses.POST,
        BILLS,
        **signed(app, 200, {"out_bill_no": payout.external_no, "transfer_bill_no": "1", **answer}),
    )
    # when: the first pass, then a pass every 7 hours (past any backoff)
    assert dict(run()) == {Outcome.UNKNOWN: 1}
    later = utcnow()
    for _ in range(10):
        later += timedelta(hours=7)
        query = {"mch_id": app.config["WECHAT_MCHID"], "out_bill_no": payout.external_no, "transfer_bill_no": "1"}
        query |= {"transfer_amount": 5_00, "openid": http_rail._openid(payout.user_id), **answer}
        db.session.rollback()
        wechat_http.add(responses.GET, f"{BILLS}/out-bill-no/{payout.external_no}", **signed(app, 200, query))
        run(later)
    # then: never decided on; after its attempts it is an operator's, with what was wrong in its history
    payout = db.session.get(Payout, payout.id)
    assert (payout.status, payout.attempts) == ("needs_operator", settings.max_attempts)
    assert payout.wechat_ref is None and payout.package_info is None and payout.finished_at is None
    from models import Alert, PayoutAttempt

    tried = db.session.query(PayoutAttempt).filter_by(payout_id=payout.id).all()
    assert len(tried) == settings.max_attempts and {a.response_code for a in tried} == {"UNREADABLE_ANSWER"}
    assert db.session.query(Alert).filter_by(kind="payout_needs_operator", subject=payout.external_no).count() == 1
