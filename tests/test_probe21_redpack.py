"""Probe of the v2 cash red packet's answers that free a number (round 21).

A sendredpack refusal after which money may leave again — SEND_FAILED (a new number), MONEY_LIMIT (another rail),
NO_AUTH (the money back to the balance) — is acted on only in an answer with return_code SUCCESS (WeChat decided);
one with return_code FAIL (a communication failure, a proxy's page) or a wrong sign is an unknown outcome: gethbinfo
decides, the same number is sent again when WeChat has no record of it, and after the dispatcher's attempts an
operator is alerted. A refusal without a sign, or naming no number, is taken as WeChat's (public copies of the answer
table disagree on whether either is carried in a refusal); one naming another packet goes to an operator. gethbinfo's
FAILED and REFUND are read only from an answer with return_code SUCCESS naming our number (guards: they held before).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import responses

from ledger import account, balance, check_ledger
from models import AccountKind, Alert, Payout, db
from payouts import MoneySettings
from payouts.rails import Outcome
from payouts.record import DispatchSettings
from tests.test_payout_rails import (  # noqa: F401 - fixtures
    MCHID,
    OA_APPID,
    QUERY_URL,
    REQUEST,
    SEND_URL,
    api_v2_key,
    beijing_at,
    funded_payout,
    oa_user,
    redpack_rail,
    run,
    wechat_http,
)
from wechat.v2sign import parse_xml, to_xml, v2_sign

NO = "RP000000000001"
FREEING = {"SEND_FAILED": Outcome.FAILED, "MONEY_LIMIT": Outcome.FALLBACK, "NO_AUTH": Outcome.GIVE_UP_USER}


def refusal(err_code: str, billno: str = NO, openid: str = REQUEST["re_openid"], amount: int = 500) -> dict:
    """A sendredpack refusal's fields as WeChat answers them (before the sign)."""
    return {
        "return_code": "SUCCESS",
        "return_msg": "发放失败",
        "result_code": "FAIL",
        "err_code": err_code,
        "err_code_des": "发放失败",
        "mch_billno": billno,
        "mch_id": MCHID,
        "wxappid": OA_APPID,
        "re_openid": openid,
        "total_amount": str(amount),
    }


def signed(fields: dict, key: str) -> bytes:
    return to_xml({**fields, "sign": v2_sign(fields, key)}).encode()


def unsigned(fields: dict) -> bytes:
    return to_xml(fields).encode()


def anonymous(fields: dict) -> bytes:
    """An answer that is not WeChat's word about our packet: return_code FAIL (a proxy's page, a forgery on the way)."""
    return unsigned({**fields, "return_code": "FAIL"})


def hbinfo(billno: str, status: str, amount: int = 500, **more) -> dict:
    """A gethbinfo answer's fields as WeChat answers them (before the sign)."""
    return {
        "return_code": "SUCCESS",
        "return_msg": "OK",
        "result_code": "SUCCESS",
        "mch_billno": billno,
        "mch_id": MCHID,
        "detail_id": "1000041701201411170000",
        "status": status,
        "send_type": "API",
        "hb_type": "NORMAL",
        "total_num": "1",
        "total_amount": str(amount),
        "send_time": "2026-12-04 10:00:00",
        **more,
    }


def not_found() -> dict:
    return {
        "return_code": "SUCCESS",
        "return_msg": "指定单号数据不存在",
        "result_code": "FAIL",
        "err_code": "NOT_FOUND",
        "err_code_des": "指定单号数据不存在",
    }


def untrusted(err_code: str, key: str) -> dict[str, bytes]:
    """The ways an answer saying ``err_code`` is not WeChat's word."""
    return {
        "wrong_key": signed(refusal(err_code), "F" * 32),
        "return_fail": unsigned({**refusal(err_code), "return_code": "FAIL"}),
        "return_fail_signed": signed({**refusal(err_code), "return_code": "FAIL"}, key),
    }


UNTRUSTED_FORMS = ["wrong_key", "return_fail", "return_fail_signed"]


# -- 1. sendredpack: a refusal that is not WeChat's word frees nothing ------------------------------------------------


@pytest.mark.parametrize("form", UNTRUSTED_FORMS)
@pytest.mark.parametrize("err_code", sorted(FREEING))
def test_a_refusal_that_is_not_wechats_word_is_an_unknown_outcome(
    wechat_http, redpack_rail, api_v2_key, err_code, form
):
    # given: an answer that says "failed, send it again / elsewhere" but is not WeChat's word about our number
    wechat_http.add(responses.POST, SEND_URL, body=untrusted(err_code, api_v2_key)[form])
    # when
    result = redpack_rail().send(NO, REQUEST)
    # then: unknown (gethbinfo decides), never a new number, a fallback or the money back
    assert result.outcome == Outcome.UNKNOWN


WECHATS = {  # a refusal as WeChat may answer it: with or without a sign, naming our packet or nothing
    "signed": lambda fields, key: signed(fields, key),
    "unsigned": lambda fields, key: unsigned(fields),
    "no_billno": lambda fields, key: unsigned(
        {k: v for k, v in fields.items() if k not in ("mch_billno", "re_openid")}
    ),
}


@pytest.mark.parametrize("form", sorted(WECHATS))
@pytest.mark.parametrize("err_code", sorted(FREEING))
def test_a_refusal_from_wechat_is_acted_on(wechat_http, redpack_rail, api_v2_key, err_code, form):
    body = WECHATS[form](refusal(err_code), api_v2_key)
    wechat_http.add(responses.POST, SEND_URL, body=body)
    result = redpack_rail().send(NO, REQUEST)
    assert (result.outcome, result.code) == (FREEING[err_code], err_code)


def test_a_send_failed_not_from_wechat_sends_no_second_packet_and_the_query_decides(
    wechat_http, redpack_rail, api_v2_key, oa_user, funded_payout
):
    # given: a 5-yuan packet; the send is answered by a SEND_FAILED that is not WeChat's (the packet did leave);
    # gethbinfo, asked next, says SENT
    payout, cash = funded_payout(user=oa_user())
    openid = f"oa-{payout.user_id}"
    wechat_http.add(responses.POST, SEND_URL, body=anonymous(refusal("SEND_FAILED", payout.external_no, openid=openid)))
    wechat_http.add(responses.POST, QUERY_URL, body=signed(hbinfo(payout.external_no, "SENT"), api_v2_key))
    rail = redpack_rail()
    # when: the first pass
    run([rail], at=beijing_at(10))
    # then: unknown, in transit, no new payout
    first = db.session.get(Payout, payout.id)
    assert first.status == "unknown" and db.session.query(Payout).count() == 1
    assert balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00 and balance(cash) == 0
    # when: the next pass asks gethbinfo
    run([rail], at=beijing_at(12))
    # then: paid once, by its one number; one send and one query
    paths = [c.request.url.rsplit("/", 1)[-1] for c in wechat_http.calls]
    numbers = {parse_xml(c.request.body)["mch_billno"] for c in wechat_http.calls}
    assert paths == ["sendredpack", "gethbinfo"] and numbers == {payout.external_no}
    assert db.session.get(Payout, payout.id).status == "succeeded"
    assert db.session.query(Payout).count() == 1
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00 and balance(cash) == 0
    assert check_ledger().ok


@pytest.mark.parametrize("err_code", ["MONEY_LIMIT", "NO_AUTH"])
def test_a_money_limit_or_no_auth_not_from_wechat_moves_no_money(
    wechat_http, redpack_rail, oa_user, funded_payout, err_code
):
    payout, cash = funded_payout(user=oa_user())
    openid = f"oa-{payout.user_id}"
    wechat_http.add(responses.POST, SEND_URL, body=anonymous(refusal(err_code, payout.external_no, openid=openid)))
    run([redpack_rail()], at=beijing_at(10))
    payout = db.session.get(Payout, payout.id)
    # no fallback payout, no money back in the balance: in transit until gethbinfo says
    assert payout.status == "unknown" and db.session.query(Payout).count() == 1
    assert balance(cash) == 0 and balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00
    assert check_ledger().ok


# -- gethbinfo: a FAILED or REFUND that is not WeChat's word moves nothing -------------------------------------------


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        (hbinfo(NO, "FAILED", reason="风控"), Outcome.FAILED),
        (hbinfo(NO, "REFUND", refund_amount="500", refund_time="2026-12-05 10:00:00"), Outcome.UNCLAIMED),
    ],
)
def test_a_failed_or_refund_query_answer_not_from_wechat_is_unknown(
    wechat_http, redpack_rail, api_v2_key, fields, outcome
):
    rail = redpack_rail()
    wechat_http.add(responses.POST, QUERY_URL, body=unsigned({k: v for k, v in fields.items() if k != "mch_billno"}))
    wechat_http.add(responses.POST, QUERY_URL, body=unsigned({**fields, "return_code": "FAIL"}))
    wechat_http.add(responses.POST, QUERY_URL, body=signed(fields, "F" * 32))
    wechat_http.add(responses.POST, QUERY_URL, body=signed(fields, api_v2_key))
    assert rail.query(NO, REQUEST).outcome == Outcome.MISMATCH  # not naming our number: an operator looks
    assert rail.query(NO, REQUEST).outcome == Outcome.UNKNOWN  # return_code FAIL
    assert rail.query(NO, REQUEST).outcome == Outcome.UNKNOWN  # a wrong key's sign
    assert rail.query(NO, REQUEST).outcome == outcome  # WeChat's own


# -- 2. gethbinfo has no record: the same number again, then an operator ------------------------------------------


def settings(max_attempts: int = 4) -> DispatchSettings:
    return DispatchSettings(money=MoneySettings(), max_attempts=max_attempts, backoff_base_s=1.0)


def test_not_found_resends_the_same_number_until_an_operator_is_alerted(
    wechat_http, redpack_rail, api_v2_key, oa_user, funded_payout
):
    # given: every send is answered by a SEND_FAILED that is not WeChat's (return_code FAIL), every gethbinfo
    # by WeChat's "no record"
    payout, cash = funded_payout(user=oa_user())
    openid = f"oa-{payout.user_id}"
    wechat_http.add(responses.POST, SEND_URL, body=anonymous(refusal("SEND_FAILED", payout.external_no, openid=openid)))
    wechat_http.add(responses.POST, QUERY_URL, body=signed(not_found(), api_v2_key))
    rail, start = redpack_rail(), beijing_at(10)
    # when: more passes than the dispatcher's attempts
    for minute in range(8):
        run([rail], at=start + timedelta(minutes=minute), settings=settings(4))
    # then: 4 attempts (a send; then a query and the same number again, three times), then an operator, alerted
    paths = [c.request.url.rsplit("/", 1)[-1] for c in wechat_http.calls]
    assert paths == ["sendredpack"] + ["gethbinfo", "sendredpack"] * 3
    assert {parse_xml(c.request.body)["mch_billno"] for c in wechat_http.calls} == {payout.external_no}
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "needs_operator" and db.session.query(Payout).count() == 1
    assert db.session.query(Alert).filter_by(kind="payout_needs_operator", subject=payout.external_no).count() == 1
    assert balance(cash) == 0 and balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00
    assert check_ledger().ok


def test_a_query_that_keeps_failing_ends_with_an_operator_and_no_resend(
    wechat_http, redpack_rail, api_v2_key, oa_user, funded_payout
):
    # given: the send times out (unknown), and gethbinfo answers a proxy's error page every time
    payout, cash = funded_payout(user=oa_user())
    wechat_http.add(responses.POST, SEND_URL, status=504, body=b"gateway timeout")
    wechat_http.add(
        responses.POST, QUERY_URL, body=b"<xml><return_code>FAIL</return_code><return_msg>x</return_msg></xml>"
    )
    rail, start = redpack_rail(), beijing_at(10)
    for minute in range(8):
        run([rail], at=start + timedelta(minutes=minute), settings=settings(4))
    # then: one send, three queries, never a second send nor a new number; an operator, alerted
    paths = [c.request.url.rsplit("/", 1)[-1] for c in wechat_http.calls]
    assert paths == ["sendredpack", "gethbinfo", "gethbinfo", "gethbinfo"]
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "needs_operator" and db.session.query(Payout).count() == 1
    assert db.session.query(Alert).filter_by(kind="payout_needs_operator", subject=payout.external_no).count() == 1
    assert balance(cash) == 0 and balance(account(AccountKind.PAYOUT_IN_TRANSIT)) == 5_00
    assert check_ledger().ok


def test_after_not_found_a_signed_send_failed_allows_one_new_number(
    wechat_http, redpack_rail, api_v2_key, oa_user, funded_payout
):
    # given: the first send times out; gethbinfo has no record; the same number again is answered by WeChat's
    # signed SEND_FAILED naming it; the new number is sent
    payout, cash = funded_payout(user=oa_user())
    openid = f"oa-{payout.user_id}"
    sends = [(504, b"gateway timeout"), (200, signed(refusal("SEND_FAILED", payout.external_no, openid), api_v2_key))]

    def on_send(request):
        fields = parse_xml(request.body)
        if sends:
            status, body = sends.pop(0)
            return status, {}, body
        ok = {**refusal("SUCCESS", fields["mch_billno"], openid), "result_code": "SUCCESS", "send_listid": "L2"}
        return 200, {}, signed({k: v for k, v in ok.items() if k != "err_code_des"}, api_v2_key)

    wechat_http.add_callback(responses.POST, SEND_URL, callback=on_send)
    wechat_http.add(responses.POST, QUERY_URL, body=signed(not_found(), api_v2_key))
    rail, start = redpack_rail(), beijing_at(10)
    for minute in range(4):
        run([rail], at=start + timedelta(minutes=minute), settings=settings(8))
    # then: the first number failed at WeChat's word, the second carried the money; the ledger balances
    numbers = [parse_xml(c.request.body)["mch_billno"] for c in wechat_http.calls]
    retry = db.session.query(Payout).filter(Payout.retry_of_id == payout.id).one()
    assert numbers == [payout.external_no, payout.external_no, payout.external_no, retry.external_no]
    assert db.session.get(Payout, payout.id).status == "failed" and retry.status == "succeeded"
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00 and balance(cash) == 0
    assert check_ledger().ok


def test_a_refund_not_from_wechat_gives_no_money_back_until_wechat_says_it(
    wechat_http, redpack_rail, api_v2_key, oa_user, funded_payout
):
    from jobs.payouts import check_unclaimed

    # given: a 5-yuan packet WeChat accepted (signed); a day later gethbinfo is asked whether anybody opened it
    payout, cash = funded_payout(user=oa_user())
    openid = f"oa-{payout.user_id}"
    ok = {**refusal("SUCCESS", payout.external_no, openid), "result_code": "SUCCESS", "send_listid": "L1"}
    wechat_http.add(responses.POST, SEND_URL, body=signed(ok, api_v2_key))
    rail = redpack_rail()
    run([rail], at=beijing_at(10))
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "succeeded"
    refund = hbinfo(payout.external_no, "REFUND", refund_amount="500", refund_time="2026-12-06 10:00:00")
    wechat_http.add(responses.POST, QUERY_URL, body=anonymous(refund))
    # when: the check is answered REFUND in an answer that is not WeChat's word
    outcomes = check_unclaimed(rail, payout.sent_at + timedelta(hours=26))
    db.session.expire_all()
    # then: nothing moved (the packet may have been opened), asked again next time
    assert dict(outcomes) == {"unknown": 1} and balance(cash) == 0
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 5_00
    # when: WeChat's signed REFUND answers the next check
    wechat_http.replace(responses.POST, QUERY_URL, body=signed(refund, api_v2_key))
    outcomes = check_unclaimed(rail, payout.sent_at + timedelta(hours=27))
    db.session.expire_all()
    # then: the money is the user's again, once
    assert dict(outcomes) == {"unclaimed": 1} and balance(cash) == 5_00
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == 0
    assert check_ledger().ok
