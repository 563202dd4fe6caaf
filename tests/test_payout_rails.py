"""The cash red packet, WeChat Pay coupon and card-package rails against real wire formats.

Red packets: RedpackClient against ``responses`` with v2 MD5-signed XML answers.
Coupons: the app's PayClient against the in-process simulator (signed v3 answers,
fault injection). Cards: the cardExt signature checked by hand.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from datetime import UTC, datetime, timedelta
from itertools import count
from zoneinfo import ZoneInfo

import pytest
import requests
import responses

from config import ConfigError, load_config
from jobs.payouts import dispatch_due
from ledger import Leg, account, balance, post_entry
from models import AccountKind, Payout, RailControl, UserIdentity, db, utcnow
from payouts import MoneySettings, enqueue_payout
from payouts.card_rail import CardRail, card_received
from payouts.coupon_rail import CouponRail
from payouts.rails import Outcome
from payouts.record import DispatchSettings, apply_result
from payouts.redpack_rail import SEND_OUTCOMES, RedpackRail
from payouts.transitions import mark_succeeded
from wechat.errors import WeChatBusinessError, WeChatError, WeChatUnavailable
from wechat.mp import MemoryTokenStore, consume_card_code
from wechat.redpack import RedpackClient
from wechat.v2sign import parse_xml, to_xml, v2_sign

BJ = ZoneInfo("Asia/Shanghai")
MCHID = "1900000109"
OA_APPID = "wxtestofficialacct"
PAY = "http://pay.test"
SEND_URL = f"{PAY}/mmpaymkttransfers/sendredpack"
QUERY_URL = f"{PAY}/mmpaymkttransfers/gethbinfo"
_seq = count(1)


def beijing_at(hour: int, minute: int = 0, days: int = 1) -> datetime:
    """``hour:minute`` Beijing time ``days`` Beijing days from today, as UTC (future: payouts are due)."""
    day = utcnow().astimezone(BJ).date() + timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=BJ).astimezone(UTC)


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def funded_payout(app, make_user):
    """A payout queued from a user's cash balance (as a cash rebate leaves it); copied from test_dispatch."""

    def make(amount_fen=5_00, rail="cash_red_packet", user=None):
        user = user or make_user()
        cash = account(AccountKind.USER_CASH, "user", user.id)
        n = next(_seq)
        post_entry(
            f"fund:{user.id}:{n}",
            "rebate",
            [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen), Leg(cash, amount_fen)],
        )
        payout = enqueue_payout(
            number_prefix="",
            rail=rail,
            user_id=user.id,
            amount_fen=amount_fen,
            source=cash,
            key=f"t:{user.id}:{n}",
            memo="test payout",
        )
        db.session.commit()
        return payout, cash

    return make


@pytest.fixture
def oa_user(make_user):
    """A person with a mini-program identity and an official-account identity (same User, linked by unionid)."""

    def make():
        user = make_user(unionid=f"union-{next(_seq)}")
        db.session.add(UserIdentity(user_id=user.id, appid=OA_APPID, openid=f"oa-{user.id}", channel="official"))
        db.session.commit()
        return user

    return make


@pytest.fixture(scope="session")
def api_v2_key() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


@pytest.fixture
def wechat_http():
    """Every outbound call must be registered here; an unmatched one is a connection error."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def redpack_rail(api_v2_key):
    def make(clock=utcnow, **overrides):
        client = RedpackClient(MCHID, OA_APPID, api_v2_key, None, None, api_base=PAY)
        settings = {"send_name": "双向返利", "act_name": "消费返利", "wishing": "恭喜发财", "remark": "订单返利"}
        return RedpackRail(client, oa_appid=OA_APPID, client_ip="10.0.0.1", clock=clock, **{**settings, **overrides})

    return make


def answer(api_key: str, **fields) -> bytes:
    """A v2 answer signed like WeChat signs it."""
    fields = {"return_code": "SUCCESS", "return_msg": "", **fields}
    return to_xml({**fields, "sign": v2_sign(fields, api_key)}).encode()


def sent_ok(api_key: str):
    """A sendredpack callback answering success for whatever mch_billno was sent."""

    def callback(request):
        fields = parse_xml(request.body)
        return 200, {}, answer(api_key, result_code="SUCCESS", mch_billno=fields["mch_billno"], send_listid="L1")

    return callback


REQUEST = {
    "re_openid": "oa-1",
    "total_amount": 500,
    "send_name": "双向返利",
    "act_name": "消费返利",
    "wishing": "恭喜发财",
    "remark": "订单返利",
    "client_ip": "10.0.0.1",
    "scene_id": "PRODUCT_5",
}


def run(rails, at=None, settings=None):
    result = dispatch_due(
        {rail.name: rail for rail in rails},
        settings=settings or DispatchSettings(money=MoneySettings()),
        clock=(lambda: at) if at else utcnow,
    )
    db.session.expire_all()
    return result


# -- red packet: the error table -----------------------------------------------------------

ERROR_TABLE = [
    ("SYSTEMERROR", Outcome.RETRY),
    ("PROCESSING", Outcome.IN_PROGRESS),
    ("NOTENOUGH", Outcome.PAUSE_RAIL),
    ("FREQ_LIMIT", Outcome.RETRY),
    ("SECOND_OVER_LIMITED", Outcome.RETRY),
    ("DAY_OVER_LIMITED", Outcome.RETRY),
    ("SENDNUM_LIMIT", Outcome.DEFER),
    ("MONEY_LIMIT", Outcome.FALLBACK),
    ("SEND_FAILED", Outcome.FAILED),
    ("TIME_LIMITED", Outcome.DEFER),
    ("FATAL_ERROR", Outcome.CONFIG_ERROR),
    ("NO_AUTH", Outcome.GIVE_UP_USER),
    ("OPENID_ERROR", Outcome.CONFIG_ERROR),
    ("ILLEGAL_APPID", Outcome.CONFIG_ERROR),
    ("PARAM_ERROR", Outcome.CONFIG_ERROR),
    ("XML_ERROR", Outcome.CONFIG_ERROR),
    ("SIGN_ERROR", Outcome.CONFIG_ERROR),
    ("CA_ERROR", Outcome.CONFIG_ERROR),
    ("A_CODE_WECHAT_ADDS_NEXT_YEAR", Outcome.UNKNOWN),
]


def test_the_error_table_is_covered_row_by_row():
    assert dict(ERROR_TABLE[:-1]) == SEND_OUTCOMES


@pytest.mark.parametrize(("err_code", "outcome"), ERROR_TABLE)
def test_each_sendredpack_error_code_maps_to_its_outcome(wechat_http, redpack_rail, api_v2_key, err_code, outcome):
    # given: WeChat refuses with this code at 10:00 Beijing
    now = beijing_at(10)
    # naming our number, as WeChat answers (one that does not frees no number: test_probe21_redpack)
    body = answer(
        api_v2_key, result_code="FAIL", err_code=err_code, err_code_des="描述不可用于判断", mch_billno="RP000000000001"
    )
    wechat_http.add(responses.POST, SEND_URL, body=body)
    # when
    result = redpack_rail(clock=lambda: now).send("RP000000000001", REQUEST)
    # then
    assert (result.outcome, result.code) == (outcome, err_code)
    if err_code == "TIME_LIMITED":
        assert result.retry_at == beijing_at(8, days=2)  # it is 10:00 already: tomorrow 08:00
    elif err_code == "SENDNUM_LIMIT":
        assert result.retry_at == beijing_at(8, days=2)
    else:
        assert result.retry_at is None


def test_time_limited_inside_quiet_hours_defers_to_this_mornings_8am(wechat_http, redpack_rail, api_v2_key):
    now = beijing_at(7, 59)
    wechat_http.add(responses.POST, SEND_URL, body=answer(api_v2_key, result_code="FAIL", err_code="TIME_LIMITED"))
    result = redpack_rail(clock=lambda: now).send("RP000000000001", REQUEST)
    assert (result.outcome, result.retry_at) == (Outcome.DEFER, beijing_at(8))


def test_success_carries_send_listid_and_every_fixed_field(wechat_http, redpack_rail, api_v2_key):
    wechat_http.add_callback(responses.POST, SEND_URL, callback=sent_ok(api_v2_key))
    result = redpack_rail().send("RP000000000001", REQUEST)
    assert (result.outcome, result.wechat_ref) == (Outcome.SUCCEEDED, "L1")
    sent = parse_xml(wechat_http.calls[0].request.body)
    assert sent["sign"] == v2_sign(sent, api_v2_key)
    assert {k: sent[k] for k in REQUEST} == {k: str(v) for k, v in REQUEST.items()}
    assert (sent["mch_billno"], sent["total_num"], sent["wxappid"]) == ("RP000000000001", "1", OA_APPID)


@pytest.mark.parametrize(
    "planted",
    [
        {"mch_billno": "RP9"},  # another number
        {"mch_billno": "RP000000000001", "total_amount": "50000"},  # another amount
        {"mch_billno": "RP000000000001", "re_openid": "someone-else"},  # another payee
        {"total_amount": "499"},  # no number, a wrong amount
    ],
)
def test_success_for_another_packet_is_a_mismatch_never_a_success(wechat_http, redpack_rail, api_v2_key, planted):
    wechat_http.add(responses.POST, SEND_URL, body=answer(api_v2_key, result_code="SUCCESS", **planted))
    result = redpack_rail().send("RP000000000001", REQUEST)
    assert (result.outcome, result.code) == (Outcome.MISMATCH, "ANSWER_MISMATCH")


def test_success_naming_our_number_amount_and_payee_is_believed(wechat_http, redpack_rail, api_v2_key):
    ours = {
        "mch_billno": "RP000000000001",
        "total_amount": str(REQUEST["total_amount"]),
        "re_openid": REQUEST["re_openid"],
    }
    wechat_http.add(responses.POST, SEND_URL, body=answer(api_v2_key, result_code="SUCCESS", send_listid="L2", **ours))
    result = redpack_rail().send("RP000000000001", REQUEST)
    assert (result.outcome, result.wechat_ref) == (Outcome.SUCCEEDED, "L2")


def test_a_mismatched_send_answer_goes_to_an_operator_and_is_not_paid(
    wechat_http, redpack_rail, api_v2_key, oa_user, funded_payout
):
    from models import Alert

    payout, _ = funded_payout(user=oa_user())
    body = answer(api_v2_key, result_code="SUCCESS", mch_billno=f"RP{payout.id:012d}", total_amount="1")
    wechat_http.add(responses.POST, SEND_URL, body=body)
    run([redpack_rail()], at=beijing_at(10))
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "needs_operator" and "ANSWER_MISMATCH" in payout.last_error
    assert db.session.query(Alert).filter_by(kind="payout_answer_mismatch").count() == 1


XXE = (
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b"<xml><return_code>SUCCESS</return_code><result_code>&xxe;</result_code></xml>"
)
BILLION_LAUGHS = b'<!DOCTYPE xml [<!ENTITY a "SUCCESS">]><xml><return_code>&a;</return_code></xml>'


@pytest.mark.parametrize(
    "reply",
    [
        {"body": XXE},
        {"body": BILLION_LAUGHS},
        {"body": b"<xml><return_code>SUCCESS</return_code>"},
        {"body": b"<xml><return_code>FAIL</return_code><return_msg>busy</return_msg></xml>"},
        {"body": requests.exceptions.ReadTimeout("read timed out")},
        {"body": requests.exceptions.ConnectionError("reset")},
        {"status": 502, "body": b"bad gateway"},
    ],
)
def test_unsafe_unparseable_or_absent_answers_are_unknown(wechat_http, redpack_rail, reply):
    wechat_http.add(responses.POST, SEND_URL, **reply)
    assert redpack_rail().send("RP000000000001", REQUEST).outcome == Outcome.UNKNOWN


def test_an_answer_with_a_forged_sign_is_unknown(wechat_http, redpack_rail):
    wechat_http.add(responses.POST, SEND_URL, body=answer("F" * 32, result_code="SUCCESS"))
    assert redpack_rail().send("RP000000000001", REQUEST).outcome == Outcome.UNKNOWN


def test_xxe_answer_leaves_the_payout_unknown_and_changes_nothing_else(
    wechat_http, redpack_rail, oa_user, funded_payout
):
    # given
    payout, cash = funded_payout(user=oa_user())
    wechat_http.add(responses.POST, SEND_URL, body=XXE)
    # when
    outcomes = run([redpack_rail()], at=beijing_at(10))
    # then: unknown, same number kept for the status query; no failure, no fallback, no new row
    payout = db.session.get(Payout, payout.id)
    assert dict(outcomes) == {Outcome.UNKNOWN: 1}
    assert (payout.status, payout.external_no) == ("unknown", f"RP{payout.id:012d}")
    assert db.session.query(Payout).count() == 1
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00 and balance(cash) == 0
    assert "passwd" not in (payout.last_error or "") and "root:" not in (payout.last_error or "")


def test_systemerror_is_retried_with_the_same_number_and_pays_once(
    wechat_http, redpack_rail, oa_user, funded_payout, api_v2_key
):
    # given: WeChat is busy once, then sends the packet
    payout, _ = funded_payout(user=oa_user())
    replies = [answer(api_v2_key, result_code="FAIL", err_code="SYSTEMERROR")]

    def callback(request):
        return (200, {}, replies.pop(0)) if replies else sent_ok(api_v2_key)(request)

    wechat_http.add_callback(responses.POST, SEND_URL, callback=callback)
    rail = redpack_rail()
    # when
    run([rail], at=beijing_at(10))
    assert db.session.get(Payout, payout.id).status == "pending"
    run([rail], at=beijing_at(12))
    # then: the same mch_billno both times, one packet
    numbers = [parse_xml(c.request.body)["mch_billno"] for c in wechat_http.calls]
    assert numbers == [payout.external_no, payout.external_no]
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00


# -- red packet: status query ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"result_code": "SUCCESS", "status": "SENDING"}, Outcome.IN_PROGRESS),
        ({"result_code": "SUCCESS", "status": "SENT"}, Outcome.SUCCEEDED),
        ({"result_code": "SUCCESS", "status": "RECEIVED"}, Outcome.SUCCEEDED),
        ({"result_code": "SUCCESS", "status": "FAILED", "reason": "风控"}, Outcome.FAILED),
        ({"result_code": "SUCCESS", "status": "RFUND_ING"}, Outcome.IN_PROGRESS),
        # unopened, refunded by WeChat: back to the user's balance (before issue 9: FAILED and a new packet)
        ({"result_code": "SUCCESS", "status": "REFUND", "refund_amount": "500"}, Outcome.UNCLAIMED),
        # a refund that is not our whole amount (or does not say how much): an operator at once, nothing moved
        ({"result_code": "SUCCESS", "status": "REFUND"}, Outcome.MISMATCH),
        ({"result_code": "SUCCESS", "status": "REFUND", "refund_amount": "1"}, Outcome.MISMATCH),
        ({"result_code": "SUCCESS", "status": "NEW_STATE"}, Outcome.UNKNOWN),
        (
            {"result_code": "FAIL", "err_code": "NOT_FOUND"},
            Outcome.NOT_FOUND,
        ),  # may still be processing: resend same no
        ({"result_code": "FAIL", "err_code": "SYSTEMERROR"}, Outcome.UNKNOWN),
        ({"result_code": "FAIL", "err_code": "SIGN_ERROR"}, Outcome.CONFIG_ERROR),
    ],
)
def test_gethbinfo_status_maps_to_outcome(wechat_http, redpack_rail, api_v2_key, fields, outcome):
    body = answer(api_v2_key, mch_billno="RP1", detail_id="D1", total_amount="500", **fields)
    wechat_http.add(responses.POST, QUERY_URL, body=body)
    result = redpack_rail().query("RP1", REQUEST)
    assert result.outcome == outcome
    sent = parse_xml(wechat_http.calls[0].request.body)
    assert (sent["mch_billno"], sent["bill_type"], sent["appid"]) == ("RP1", "MCHT", OA_APPID)


@pytest.mark.parametrize(
    "planted",
    [
        {"mch_billno": "RP2", "total_amount": "500"},  # another number
        {"mch_billno": "RP1", "total_amount": "50000"},  # another amount
        {"mch_billno": "RP1"},  # no amount at all
    ],
)
def test_gethbinfo_about_another_packet_is_a_mismatch_never_a_success(wechat_http, redpack_rail, api_v2_key, planted):
    body = answer(api_v2_key, result_code="SUCCESS", status="RECEIVED", detail_id="D1", **planted)
    wechat_http.add(responses.POST, QUERY_URL, body=body)
    result = redpack_rail().query("RP1", REQUEST)
    assert (result.outcome, result.code) == (Outcome.MISMATCH, "ANSWER_MISMATCH")


def test_gethbinfo_opened_by_someone_else_is_a_mismatch(wechat_http, redpack_rail, api_v2_key):
    fields = {"mch_billno": "RP1", "total_amount": "500", "status": "RECEIVED", "result_code": "SUCCESS"}
    xml = answer(api_v2_key, **fields).decode()
    stranger = "<hblist><hbinfo><openid>oa-stranger</openid><amount>500</amount></hbinfo></hblist>"
    wechat_http.add(responses.POST, QUERY_URL, body=xml.replace("</xml>", stranger + "</xml>").encode())
    assert redpack_rail().query("RP1", REQUEST).outcome == Outcome.MISMATCH


def test_gethbinfo_xxe_is_unknown(wechat_http, redpack_rail):
    wechat_http.add(responses.POST, QUERY_URL, body=XXE)
    assert redpack_rail().query("RP1", REQUEST).outcome == Outcome.UNKNOWN


# -- red packet: what is decided before the number is used ---------------------------------


@pytest.mark.parametrize("amount_fen", [99, 20_001])
def test_amounts_outside_1_to_200_yuan_fall_back(redpack_rail, oa_user, funded_payout, amount_fen):
    payout, _ = funded_payout(amount_fen, user=oa_user())
    result = redpack_rail().build_request(payout, beijing_at(10))
    assert (result.outcome, result.code) == (Outcome.FALLBACK, "AMOUNT_OUT_OF_RANGE")


@pytest.mark.parametrize("amount_fen", [100, 20_000])
def test_amounts_at_the_bounds_are_sent_with_a_scene(redpack_rail, oa_user, funded_payout, amount_fen):
    user = oa_user()
    payout, _ = funded_payout(amount_fen, user=user)
    request = redpack_rail().build_request(payout, beijing_at(10))
    assert request == {**REQUEST, "re_openid": f"oa-{user.id}", "total_amount": amount_fen}


def test_a_mini_program_openid_alone_falls_back(redpack_rail, make_user, funded_payout):
    payout, _ = funded_payout(user=make_user())  # only the mini-program identity
    result = redpack_rail().build_request(payout, beijing_at(10))
    assert (result.outcome, result.code) == (Outcome.FALLBACK, "NO_OA_OPENID")


@pytest.mark.parametrize(("hour", "minute"), [(0, 0), (3, 30), (7, 59)])
def test_quiet_hours_defer_to_8am_beijing(redpack_rail, oa_user, funded_payout, hour, minute):
    payout, _ = funded_payout(user=oa_user())
    result = redpack_rail().build_request(payout, beijing_at(hour, minute))
    assert (result.outcome, result.retry_at) == (Outcome.DEFER, beijing_at(8))


def test_8am_is_no_longer_quiet(redpack_rail, oa_user, funded_payout):
    payout, _ = funded_payout(user=oa_user())
    assert isinstance(redpack_rail().build_request(payout, beijing_at(8)), dict)


def test_quiet_hours_keep_the_number_and_send_it_at_8am(wechat_http, redpack_rail, oa_user, funded_payout, api_v2_key):
    # given
    payout, _ = funded_payout(user=oa_user())
    wechat_http.add_callback(responses.POST, SEND_URL, callback=sent_ok(api_v2_key))
    rail = redpack_rail()
    # when: a pass at 03:00 Beijing
    run([rail], at=beijing_at(3))
    # then: nothing sent, still pending until 08:00, request not fixed yet
    deferred = db.session.get(Payout, payout.id)
    assert (deferred.status, deferred.next_attempt_at, deferred.request) == ("pending", beijing_at(8), None)
    assert len(wechat_http.calls) == 0
    # when: the 08:00 pass
    run([rail], at=beijing_at(8))
    # then: sent once, with the same number
    assert [parse_xml(c.request.body)["mch_billno"] for c in wechat_http.calls] == [payout.external_no]
    assert db.session.get(Payout, payout.id).status == "succeeded"


def test_no_oa_openid_cancels_and_queues_the_wechat_change_fallback(
    wechat_http, redpack_rail, make_user, funded_payout
):
    # given: a person known only through the mini-program
    payout, cash = funded_payout(amount_fen=8_88, user=make_user())
    # when
    outcomes = run([redpack_rail()], at=beijing_at(10))
    # then: no call, the packet is cancelled, a transfer to change carries the money under a new number
    assert dict(outcomes) == {} and len(wechat_http.calls) == 0
    old = db.session.get(Payout, payout.id)
    assert old.status == "cancelled" and old.last_error.startswith("NO_OA_OPENID")
    fallback = db.session.query(Payout).filter_by(retry_of_id=old.id).one()
    assert (fallback.rail, fallback.amount_fen, fallback.status) == ("wechat_change", 8_88, "pending")
    assert fallback.external_no != old.external_no and fallback.user_id == old.user_id
    assert balance(cash) == 0 and balance(account(AccountKind.REBATE_PAYABLE)) == 8_88


# -- red packet: per-user daily caps -------------------------------------------------------


def paid_packet(funded_payout, user, amount_fen, at):
    payout, _ = funded_payout(amount_fen, user=user)
    payout.status = "sending"
    mark_succeeded(payout, at, "earlier")
    db.session.commit()
    return payout


def test_tenth_packet_today_is_the_last_the_eleventh_waits_for_tomorrow(redpack_rail, oa_user, funded_payout):
    # given: ten packets already sent today (Beijing), one yesterday evening
    user = oa_user()
    paid_packet(funded_payout, user, 100, beijing_at(23, 59, days=0))
    for _ in range(9):
        paid_packet(funded_payout, user, 100, beijing_at(9))
    payout, _ = funded_payout(100, user=user)
    # then: the tenth of today still goes
    assert isinstance(redpack_rail().build_request(payout, beijing_at(10)), dict)
    paid_packet(funded_payout, user, 100, beijing_at(9, 30))
    # when / then: the eleventh is deferred to tomorrow 08:00, number unchanged
    result = redpack_rail().build_request(payout, beijing_at(10))
    assert (result.outcome, result.code, result.retry_at) == (Outcome.DEFER, "USER_DAILY_CAP", beijing_at(8, days=2))


def test_daily_amount_cap_counts_fen_per_beijing_day(redpack_rail, oa_user, funded_payout):
    user = oa_user()
    for _ in range(4):
        paid_packet(funded_payout, user, 20_000, beijing_at(8, 30))
    payout, _ = funded_payout(20_000, user=user)
    assert isinstance(redpack_rail().build_request(payout, beijing_at(10)), dict)  # exactly 1,000 yuan
    paid_packet(funded_payout, user, 1, beijing_at(9))
    assert redpack_rail().build_request(payout, beijing_at(10)).outcome == Outcome.DEFER
    assert isinstance(redpack_rail().build_request(payout, beijing_at(8, days=2)), dict)  # a new day


def test_packets_of_one_pass_count_against_the_cap_before_they_are_sent(
    wechat_http, redpack_rail, oa_user, funded_payout, api_v2_key
):
    # given: nine sent today, two more due in the same pass
    user = oa_user()
    for _ in range(9):
        paid_packet(funded_payout, user, 100, beijing_at(9))
    first, _ = funded_payout(100, user=user)
    second, _ = funded_payout(100, user=user)
    wechat_http.add_callback(responses.POST, SEND_URL, callback=sent_ok(api_v2_key))
    # when
    run([redpack_rail()], at=beijing_at(10))
    # then: one is sent, the other waits for tomorrow morning
    assert db.session.get(Payout, first.id).status == "succeeded"
    waiting = db.session.get(Payout, second.id)
    assert (waiting.status, waiting.next_attempt_at) == ("pending", beijing_at(8, days=2))
    assert len(wechat_http.calls) == 1


def test_settings_shown_to_the_user_are_checked_at_start_up(redpack_rail):
    with pytest.raises(ValueError, match="send_name"):
        redpack_rail(send_name="名" * 33)


# -- WeChat Pay coupons --------------------------------------------------------------------

STOCKS = [
    {"stock_id": "S-FIX-500", "denomination_fen": 500},
    {"stock_id": "S-FIX-1000", "denomination_fen": 1_000},
]


class RecordingPay:
    """The real PayClient, with every coupon send's out_request_no written down."""

    def __init__(self, pay):
        self.pay, self.numbers = pay, []

    def send_favor_coupon(self, openid, stock_id, out_request_no, *args, **kwargs):
        self.numbers.append(out_request_no)
        return self.pay.send_favor_coupon(openid, stock_id, out_request_no, *args, **kwargs)


@pytest.fixture
def sim(app):
    return app.extensions["wechat"].simulator


@pytest.fixture
def coupon_rail(app):
    pay = RecordingPay(app.extensions["wechat"].pay)
    return CouponRail(pay, appid=app.config["WECHAT_APPID"], stock_creator_mchid=MCHID, stocks=STOCKS)


@pytest.fixture
def coupon_payout(app, make_user, funded_payout):
    def make(amount_fen):
        return funded_payout(amount_fen, rail="wechat_coupon", user=make_user(appid=app.config["WECHAT_APPID"]))[0]

    return make


def test_fixed_denomination_stock_carries_its_exact_amount(coupon_rail, coupon_payout, sim):
    payout = coupon_payout(1_000)
    number, request = payout.external_no, coupon_rail.build_request(payout, utcnow())
    assert request["stock_id"] == "S-FIX-1000" and "coupon_value_fen" not in request
    db.session.commit()  # no transaction open during the call
    result = coupon_rail.send(number, request)
    assert result.outcome == Outcome.SUCCEEDED and result.wechat_ref.startswith("sim-coupon-")
    issued = sim.coupons[number]
    assert issued["request"]["stock_id"] == "S-FIX-1000" and "coupon_value" not in issued["request"]


def test_each_amount_goes_to_the_stock_of_that_denomination(coupon_rail):
    assert coupon_rail.pick_stock(500)["stock_id"] == "S-FIX-500"
    assert coupon_rail.pick_stock(1_000)["stock_id"] == "S-FIX-1000"
    assert coupon_rail.pick_stock(777) is None


@pytest.mark.parametrize("amount_fen", [99, 777, 2_001, 5_000])
def test_an_amount_no_stock_can_carry_falls_back(coupon_rail, coupon_payout, amount_fen):
    # (a set-value stock told the amount in coupon_value used to take 777: that field is not open at WeChat)
    result = coupon_rail.build_request(coupon_payout(amount_fen), utcnow())
    assert (result.outcome, result.code) == (Outcome.FALLBACK, "NO_STOCK_FOR_AMOUNT")


def test_the_simulator_refuses_coupon_value_as_wechat_does(app, coupon_rail, coupon_payout, sim):
    payout = coupon_payout(500)
    openid = coupon_rail.build_request(payout, utcnow())["openid"]
    pay = app.extensions["wechat"].pay
    body = {"stock_id": "S-FIX-500", "out_request_no": payout.external_no, "appid": pay.config.appid}
    body |= {"stock_creator_mchid": MCHID, "coupon_value": 500}
    db.session.commit()  # no transaction open during the call
    with pytest.raises(WeChatError) as info:
        pay.request("POST", f"/v3/marketing/favor/users/{openid}/coupons", json_body=body)
    assert info.value.code == "PARAM_ERROR" and sim.coupons == {}


def test_a_user_without_an_openid_under_the_appid_falls_back(coupon_rail, make_user, funded_payout):
    payout, _ = funded_payout(500, rail="wechat_coupon", user=make_user(appid="wx-other-app"))
    assert coupon_rail.build_request(payout, utcnow()).code == "NO_OPENID"


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (403, "NOT_ENOUGH", Outcome.PAUSE_STOCK),  # that stock waits, the rail goes on (test_probe20_coupons)
        (403, "RULE_LIMIT", Outcome.FALLBACK),
        (429, "FREQUENCY_LIMITED", Outcome.RETRY),
        (500, "SYSTEM_ERROR", Outcome.UNKNOWN),
        (400, "PARAM_ERROR", Outcome.CONFIG_ERROR),
        (403, "NO_AUTH", Outcome.CONFIG_ERROR),
        (404, "RESOURCE_NOT_EXISTS", Outcome.CONFIG_ERROR),
        (400, "SOME_NEW_CODE", Outcome.CONFIG_ERROR),
    ],
)
def test_coupon_errors_map_to_outcomes(coupon_rail, coupon_payout, sim, status, code, outcome):
    payout = coupon_payout(500)
    sim.inject_fault("/v3/marketing/favor", status, code, "模拟")
    number, request = payout.external_no, coupon_rail.build_request(payout, utcnow())
    db.session.commit()  # no transaction open during the call
    result = coupon_rail.send(number, request)
    assert (result.outcome, result.code) == (outcome, code)


def test_coupon_query_resends_the_same_number_and_request(coupon_rail, coupon_payout, sim):
    # WeChat finds no coupon by out_request_no: the query is the same send again, never a new number
    payout = coupon_payout(500)
    number, request = payout.external_no, coupon_rail.build_request(payout, utcnow())
    db.session.commit()  # no transaction open during the calls
    sent = coupon_rail.send(number, request)
    asked = coupon_rail.query(number, request)
    assert (asked.outcome, asked.wechat_ref) == (Outcome.SUCCEEDED, sent.wechat_ref)
    assert coupon_rail.client.numbers == [number, number] and list(sim.coupons) == [number]


@pytest.mark.parametrize(
    ("code", "outcome"), [("RULE_LIMIT", Outcome.ASK_OPERATOR), ("NOT_ENOUGH", Outcome.PAUSE_STOCK)]
)
def test_a_refused_coupon_query_never_falls_back(coupon_rail, coupon_payout, sim, code, outcome):
    # the coupon our first send may have issued can be what reached the cap or spent the budget
    payout = coupon_payout(500)
    number, request = payout.external_no, coupon_rail.build_request(payout, utcnow())
    sim.inject_fault("/v3/marketing/favor", 403, code, "模拟")
    db.session.commit()  # no transaction open during the call
    asked = coupon_rail.query(number, request)
    assert (asked.outcome, asked.code) == (outcome, code) and coupon_rail.client.numbers == [number]


def test_not_enough_pauses_the_coupon_stock_not_the_rail_and_keeps_the_payout(coupon_rail, coupon_payout, sim):
    payout, other = coupon_payout(500), coupon_payout(1_000)
    openid = coupon_rail.build_request(payout, utcnow())["openid"]  # the 5-yuan stock's answer, whatever the order
    sim.inject_fault(f"/v3/marketing/favor/users/{openid}/", 403, "NOT_ENOUGH", "批次预算不足", times=1)
    db.session.commit()
    run([coupon_rail])
    # the spent stock is paused, with WeChat's answer; the rail is not: the other stock's coupon is issued
    stock = db.session.get(RailControl, "cs:S-FIX-500")
    assert stock is not None and stock.paused_until > utcnow() and "NOT_ENOUGH" in stock.reason
    rail = db.session.get(RailControl, "wechat_coupon")
    assert rail is None or (rail.enabled and rail.paused_until is None)
    assert db.session.get(Payout, other.id).status == "succeeded"
    # the payout is kept, under its number, waiting for its stock: no retry payout, no second send meanwhile
    kept = db.session.get(Payout, payout.id)
    assert kept.status == "pending" and kept.next_attempt_at > utcnow() and kept.external_no == payout.external_no
    assert db.session.query(Payout).filter_by(retry_of_id=payout.id).count() == 0
    run([coupon_rail])
    assert coupon_rail.client.numbers.count(payout.external_no) == 1


def test_429_is_resent_with_the_same_out_request_no_on_the_next_pass(coupon_rail, coupon_payout, sim):
    # given: WeChat rate-limits the first send
    payout = coupon_payout(500)
    sim.inject_fault("/v3/marketing/favor", 429, "FREQUENCY_LIMITED", "频率超限")
    # when: one pass now, one after the backoff
    run([coupon_rail])
    assert db.session.get(Payout, payout.id).status == "pending"
    run([coupon_rail], at=utcnow() + timedelta(days=1))
    # then: the same number twice, one coupon
    assert coupon_rail.client.numbers == [payout.external_no, payout.external_no]
    done = db.session.get(Payout, payout.id)
    assert done.status == "succeeded" and done.wechat_ref == sim.coupons[payout.external_no]["coupon_id"]
    assert len(sim.coupons) == 1


def test_a_lost_coupon_answer_is_resolved_by_resending_the_same_number(coupon_rail, coupon_payout, sim):
    # given: WeChat holds a coupon for this number, but our send only saw a 502
    payout = coupon_payout(500)
    openid = coupon_rail.build_request(payout, utcnow())["openid"]
    number = payout.external_no
    db.session.commit()  # no transaction open during the call
    issued = coupon_rail.client.pay.send_favor_coupon(openid, "S-FIX-500", number, MCHID)
    sim.inject_fault("/v3/marketing/favor", 502, "SYSTEM_ERROR", "网关超时")
    # when: a pass (502 → unknown), then the next one (query → resend the same number)
    run([coupon_rail])
    assert db.session.get(Payout, payout.id).status == "unknown"
    run([coupon_rail], at=utcnow() + timedelta(days=1))
    # then: the coupon WeChat already held, not a second one
    done = db.session.get(Payout, payout.id)
    assert (done.status, done.wechat_ref) == ("succeeded", issued["coupon_id"]) and len(sim.coupons) == 1
    assert coupon_rail.client.numbers == [payout.external_no, payout.external_no]


@pytest.mark.parametrize(
    "stocks",
    [
        [{"stock_id": "S", "min_fen": 500}],
        [{"stock_id": "S-RANGE", "denomination_fen": None, "min_fen": 100, "max_fen": 2_000}],  # set value: not open
        [{"stock_id": "S", "denomination_fen": 0}],
        [{"stock_id": "A", "denomination_fen": 500}, {"stock_id": "B", "denomination_fen": 500}],
    ],
)
def test_a_misconfigured_stock_is_refused_at_start_up(stocks):
    with pytest.raises(ValueError):
        CouponRail(None, appid="a", stock_creator_mchid=MCHID, stocks=stocks)


def test_configuration_refuses_set_value_stocks():
    stocks = [{"stock_id": "S-RANGE", "denomination_fen": None, "min_fen": 100, "max_fen": 2_000}]
    with pytest.raises(ConfigError, match="WECHAT_COUPON_STOCKS"):
        load_config({"WECHAT_COUPON_STOCKS": stocks, "WECHAT_MODE": "simulator"}, environ={})


# -- card package ----------------------------------------------------------------------------

CARD_ID = "pFS7Fjg8kV1IdDz01r4SQwMkuCKc"
TICKET = "sim-ticket-wx_card"


def sha1_of_sorted(values: list[str]) -> str:
    """The cardExt signature computed by hand: SHA-1 of the sorted values, concatenated."""
    return hashlib.sha1("".join(sorted(values)).encode()).hexdigest()  # noqa: S324 - WeChat's protocol


def card_rail(**kwargs) -> CardRail:
    return CardRail(CARD_ID, lambda: TICKET, clock=lambda: 1_700_000_000.7, **kwargs)


def test_card_ext_signature_is_sha1_of_the_sorted_values(app, oa_user, funded_payout):
    # given: a card bound to the user's official-account openid
    user = oa_user()
    payout, _ = funded_payout(500, rail="card_coupon", user=user)
    rail = card_rail(openid_appid=OA_APPID)
    # when
    request = rail.build_request(payout, utcnow())
    result = rail.send(payout.external_no, request)
    # then
    assert result.outcome == Outcome.WAITING_USER_CONFIRM and request["card_id"] == CARD_ID
    ext = json.loads(result.package_info)
    assert '"timestamp":1700000000,' in result.package_info and type(ext["timestamp"]) is int
    values = sorted([TICKET, "1700000000", ext["nonce_str"], CARD_ID, f"oa-{user.id}"])
    assert ext["signature"] == sha1_of_sorted(values)
    assert ext["openid"] == f"oa-{user.id}" and "code" not in ext and ext["outer_str"] == payout.external_no


def test_card_ext_of_an_unbound_card_signs_without_openid_and_a_custom_code_card_gets_our_number():
    plain = json.loads(card_rail().send("CD000000000007", {"card_id": CARD_ID}).package_info)
    assert "openid" not in plain and "code" not in plain
    values = sorted([TICKET, "1700000000", plain["nonce_str"], CARD_ID])
    assert plain["signature"] == sha1_of_sorted(values)
    coded = json.loads(card_rail(custom_code=True).send("CD000000000007", {"card_id": CARD_ID}).package_info)
    values = sorted([TICKET, "1700000000", coded["nonce_str"], CARD_ID, "CD000000000007"])
    assert coded["code"] == "CD000000000007"
    assert coded["signature"] == sha1_of_sorted(values)


def test_card_fallbacks_before_anything_is_signed(app, make_user, funded_payout):
    payout, _ = funded_payout(500, rail="card_coupon", user=make_user())
    assert card_rail(openid_appid=OA_APPID).build_request(payout, utcnow()).code == "NO_OPENID"
    assert card_rail(face_value_fen=1_000).build_request(payout, utcnow()).code == "NO_CARD_FOR_AMOUNT"


def test_no_ticket_means_retry_later():
    def no_ticket():
        raise WeChatUnavailable("busy", code="-1")

    rail = CardRail(CARD_ID, no_ticket)
    assert rail.send("CD1", {"card_id": CARD_ID}).outcome == Outcome.RETRY
    assert rail.query("CD1", {"card_id": CARD_ID}).outcome == Outcome.WAITING_USER_CONFIRM


def test_card_waits_for_the_user_then_user_get_card_settles_it(app, make_user, funded_payout):
    # given
    payout, _ = funded_payout(500, rail="card_coupon", user=make_user())
    rail = card_rail()
    # when: dispatched, then re-checked later
    run([rail])
    waiting = db.session.get(Payout, payout.id)
    assert waiting.status == "waiting_user_confirm" and json.loads(waiting.package_info)["outer_str"]
    run([rail], at=utcnow() + timedelta(days=1))
    assert db.session.get(Payout, payout.id).status == "waiting_user_confirm"
    # when: the OA event user_get_card arrives
    waiting = db.session.get(Payout, payout.id)
    apply_result(
        waiting, card_received(waiting.external_no, "123456789012"), utcnow(), DispatchSettings(money=MoneySettings())
    )
    db.session.commit()
    # then
    done = db.session.get(Payout, payout.id)
    assert (done.status, done.wechat_ref) == ("succeeded", "123456789012")
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00


class CountingTicket:
    def __init__(self):
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return TICKET


def test_a_card_is_signed_once_and_never_cancelled_or_returned_unasked(app, make_user, funded_payout):
    # given: a card offered to the user (costed at face value from now on)
    payout, _ = funded_payout(500, rail="card_coupon", user=make_user())
    ticket = CountingTicket()
    rail = CardRail(CARD_ID, ticket, clock=lambda: 1_700_000_000.7)
    run([rail])
    offered = db.session.get(Payout, payout.id)
    card_ext = offered.package_info
    assert offered.status == "waiting_user_confirm" and ticket.calls == 1
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00
    # when: days pass (before issue 9 it was re-signed at each recheck and cancelled after 72 h)
    for days in (1, 3, 4, 30):
        run(
            [rail],
            settings=DispatchSettings(money=MoneySettings(), confirm_ttl=timedelta(hours=24)),
            at=utcnow() + timedelta(days=days),
        )
    # then: the same cardExt, signed once; still offered; its value never came back by itself
    db.session.expire_all()
    still = db.session.get(Payout, payout.id)
    assert (still.status, still.package_info, ticket.calls) == ("waiting_user_confirm", card_ext, 1)
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00


def test_a_card_query_never_signs_again():
    ticket = CountingTicket()
    rail = CardRail(CARD_ID, ticket)
    result = rail.query("CD1", {"card_id": CARD_ID})
    assert (result.outcome, result.package_info, ticket.calls) == (Outcome.WAITING_USER_CONFIRM, None, 0)


def test_a_card_offered_after_a_lost_answer_is_signed_once_then_kept(app, make_user, funded_payout):
    # given: a card payout whose worker died after signing (nothing reached the user)
    payout, _ = funded_payout(500, rail="card_coupon", user=make_user())
    ticket = CountingTicket()
    rail = CardRail(CARD_ID, ticket)
    from payouts import faults

    faults.arm("after_wechat_answer")
    with pytest.raises(faults.SimulatedCrash):
        run([rail])
    db.session.rollback()
    # when: the lease expires and another pass finds it
    run([rail], at=utcnow() + timedelta(hours=1))
    run([rail], at=utcnow() + timedelta(days=3))
    # then: it is offered with one stored cardExt
    db.session.expire_all()
    offered = db.session.get(Payout, payout.id)
    assert offered.status == "waiting_user_confirm" and offered.package_info and ticket.calls == 2


def test_consume_card_code_uses_the_shared_access_token(wechat_http):
    store = MemoryTokenStore()
    store.set("access_token:wxoa", "TOKEN-1", 3600)
    wechat_http.add(
        responses.POST,
        "https://api.weixin.qq.com/card/code/consume",
        json={"errcode": 0, "errmsg": "ok", "card": {"card_id": CARD_ID}, "openid": "oa-9"},
        match=[
            responses.matchers.query_param_matcher({"access_token": "TOKEN-1"}),
            responses.matchers.json_params_matcher({"code": "110201201245", "card_id": CARD_ID}),
        ],
    )
    answer_ = consume_card_code(
        requests.Session(), "110201201245", CARD_ID, token_store=store, appid="wxoa", secret="s"
    )
    assert answer_["openid"] == "oa-9"


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        ({"json": {"errcode": 40099, "errmsg": "invalid code, this code has consumed."}}, WeChatBusinessError, "40099"),
        ({"json": {"errcode": -1, "errmsg": "system error"}}, WeChatUnavailable, "-1"),
        ({"status": 502, "body": "bad gateway"}, WeChatUnavailable, "HTTP_502"),
        ({"body": requests.exceptions.ReadTimeout("slow")}, WeChatUnavailable, "NETWORK_ERROR"),
    ],
)
def test_consume_card_code_errors_are_typed(wechat_http, reply, error, code):
    store = MemoryTokenStore()
    store.set("access_token:wxoa", "TOKEN-1", 3600)
    wechat_http.add(responses.POST, "https://api.weixin.qq.com/card/code/consume", **reply)
    with pytest.raises(error) as info:
        consume_card_code(requests.Session(), "1102", CARD_ID, token_store=store, appid="wxoa", secret="s")
    assert info.value.code == code
