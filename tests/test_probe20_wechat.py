"""Probe round 20, the WeChat clients: what is taken as WeChat's word, and where a call may be led.

Found by a probe helper; each test failed before its fix.

* A Pay v3 error answer without WeChat's signature is not WeChat's word: WeChat signs every answer to a request
  whose signature it verified (errors too), so an unsigned refusal came from something between us and WeChat and
  says nothing about whether WeChat acted: outcome unknown (query first), never a definitive refusal.
* No WeChat call follows a redirect (Pay v3 already refused them): followed, it carried the access_token in the
  query, or the red packet's signed body over the merchant certificate, to whatever host the answer named.
* The merchant's own certificate in the platform certificates directory is refused at load, by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ledger import account, balance
from models import AccountKind, Alert, Payout, PayoutAttempt, db
from payouts.rails import Outcome
from tests.test_config import live_env  # noqa: F401 - a fixture
from tests.test_probe19_ops import live_files, start, start_refused  # noqa: F401 - fixtures and helpers
from tests.test_transfer_rail import (  # noqa: F401 - fixtures
    BILLS,
    NO,
    REQUEST,
    http_rail,
    payee,
    signed,
    transfer,
    wechat_http,
)
from wechat.errors import (
    WeChatBusinessError,
    WeChatConfigError,
    WeChatRateLimited,
    WeChatSignatureError,
    WeChatUnavailable,
)
from wechat.http import WeChatSession
from wechat.keys import VerifierKeys
from wechat.mp import MiniProgramClient
from wechat.redpack import RedpackClient
from wechat.sim.keys import generate_rsa_key, self_signed_certificate
from wechat.wecom import WebhookSender

# -- 1. an unsigned Pay v3 error answer is no refusal ----------------------------------------------------------


def _unsigned(status: int, code: str) -> dict:
    body = json.dumps({"code": code, "message": "模拟"}).encode()
    return {"status": status, "body": body, "content_type": "application/json"}


@pytest.mark.parametrize(("status", "code"), [(400, "PARAM_ERROR"), (400, "INVALID_REQUEST"), (302, "INVALID_REQUEST")])
def test_an_unsigned_refusal_of_a_transfer_is_unknown_not_refused(http_rail, wechat_http, status, code):
    # given: a 400 refusal that carries no WeChat signature (a proxy's, a load balancer's, an attacker's on the path)
    wechat_http.add(responses.POST, BILLS, **_unsigned(status, code))
    # when
    result = http_rail.send(NO, http_rail.with_wire(NO, REQUEST))
    # then: WeChat may have taken the bill: queried, never failed and sent again under a new number
    assert result.outcome == Outcome.UNKNOWN
    assert code in result.message


def test_the_same_refusal_signed_by_wechat_is_still_a_refusal(app, http_rail, wechat_http):
    wechat_http.add(responses.POST, BILLS, **signed(app, 400, {"code": "INVALID_REQUEST", "message": "模拟"}))
    assert http_rail.send(NO, http_rail.with_wire(NO, REQUEST)).outcome == Outcome.REFUSED


def test_an_unsigned_not_found_to_a_query_is_unknown(http_rail, wechat_http):
    # an unsigned 404 NOT_FOUND would say "WeChat never had this bill": a payout asked to stop was cancelled on it
    wechat_http.add(responses.GET, f"{BILLS}/out-bill-no/{NO}", **_unsigned(404, "NOT_FOUND"))
    assert http_rail.query(NO, REQUEST).outcome == Outcome.UNKNOWN


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(429, "FREQUENCY_LIMITED", WeChatRateLimited), (500, "SYSTEM_ERROR", WeChatUnavailable)],
)
def test_unsigned_busy_answers_stay_what_they_were(app, wechat_http, status, code, error):
    pay = _pay_client(app)
    wechat_http.add(responses.GET, f"{BILLS}/out-bill-no/{NO}", **_unsigned(status, code))
    with pytest.raises(error) as info:
        pay.query_transfer_bill(NO)
    assert info.value.code == code and info.value.http_status == status


def test_an_unsigned_refund_refusal_is_not_a_business_error(app, wechat_http):
    # jobs/orders fails a refund (its hold released) on a WeChatBusinessError
    pay = _pay_client(app)
    wechat_http.add(responses.POST, "http://wx.test/v3/refund/domestic/refunds", **_unsigned(403, "NOT_ENOUGH"))
    with pytest.raises(WeChatSignatureError) as info:
        pay.refund("ORDER0001", "REFUND0001", 100, 5000, "https://merchant.test/n")
    assert not isinstance(info.value, WeChatBusinessError)
    assert info.value.outcome_unknown and "NOT_ENOUGH" in info.value.message


def test_a_transfer_refused_without_a_signature_is_queried_not_failed(app, http_rail, wechat_http, payee, transfer):
    from jobs.payouts import dispatch_due

    # given: a payout whose create is answered with an unsigned 400 INVALID_REQUEST
    payout = transfer(payee())
    wechat_http.add(responses.POST, BILLS, **_unsigned(400, "INVALID_REQUEST"))
    # when
    outcomes = dispatch_due({http_rail.name: http_rail})
    db.session.expire_all()
    # then: in the hands of a query, its money still out (no reversal, no refusal alert)
    assert dict(outcomes) == {Outcome.UNKNOWN: 1}
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "unknown" and payout.sent_at is not None
    assert balance(account(AccountKind.USER_CASH, "user", payout.user_id)) == 0
    assert db.session.query(Alert).filter_by(kind="payout_refused").count() == 0
    assert [a.outcome for a in db.session.query(PayoutAttempt).filter_by(payout_id=payout.id)] == [Outcome.UNKNOWN]


def test_the_simulator_signs_its_error_answers(app):
    # make run: the simulator's refusals are WeChat's word, as before
    from tests.test_wechat_callbacks import simulator

    pay = app.extensions["wechat"].pay
    simulator(app).inject_fault("/v3/refund/domestic/refunds", 403, "NOT_ENOUGH", "余额不足")
    with pytest.raises(WeChatBusinessError) as info:
        pay.refund("ORDER0001", "REFUND0001", 100, 5000, "https://merchant.test/n")
    assert info.value.code == "NOT_ENOUGH" and not info.value.outcome_unknown


def _pay_client(app):
    import dataclasses

    from wechat.pay import PayClient

    config = dataclasses.replace(app.extensions["wechat"].pay.config, api_base="http://wx.test")
    return PayClient(config, session=requests.Session())


# -- 2. no WeChat call follows a redirect ------------------------------------------------------------------------

ELSEWHERE = "https://collector.example/steal"


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, ELSEWHERE, json={"openid": "o" * 28, "session_key": "k"})
        rsps.add(responses.POST, ELSEWHERE, body=b"<xml><return_code>SUCCESS</return_code></xml>")
        yield rsps


def _called_elsewhere(mocked) -> bool:
    return any(call.request.url.startswith(ELSEWHERE) for call in mocked.calls)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_the_shared_session_does_not_follow_a_redirect(mocked, status):
    mocked.add(
        responses.GET, "https://api.weixin.qq.com/sns/jscode2session", status=status, headers={"Location": ELSEWHERE}
    )
    client = MiniProgramClient("wx-app", "app-secret", session=WeChatSession())
    with pytest.raises(WeChatUnavailable):
        client.code_to_session("code-1")
    assert not _called_elsewhere(mocked)


def test_a_mini_program_call_on_a_plain_session_does_not_follow_a_redirect(mocked):
    mocked.add(
        responses.GET, "https://api.weixin.qq.com/sns/jscode2session", status=302, headers={"Location": ELSEWHERE}
    )
    with pytest.raises(WeChatUnavailable):
        MiniProgramClient("wx-app", "app-secret").code_to_session("code-1")
    assert not _called_elsewhere(mocked)


def test_a_red_packet_call_does_not_follow_a_redirect(mocked):
    url = "http://mch.test/mmpaymkttransfers/sendredpack"
    mocked.add(responses.POST, url, status=307, headers={"Location": ELSEWHERE})
    client = RedpackClient("1900000001", "wx-oa", "k" * 32, None, None, api_base="http://mch.test")
    with pytest.raises(WeChatUnavailable):
        client.send("RP000000000001", "oa-openid", 500, "店", "返利", "祝福", "备注", "127.0.0.1")
    assert not _called_elsewhere(mocked)


def test_a_group_webhook_post_does_not_follow_a_redirect(mocked):
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
    mocked.add(responses.POST, url, status=302, headers={"Location": ELSEWHERE}, json={"errcode": 0})
    sender = WebhookSender(lambda key: True, WeChatSession(), url)
    with pytest.raises(WeChatUnavailable):
        sender.send_text("robot-key", "hello")
    assert not _called_elsewhere(mocked)


# -- 3. the merchant's own certificate is no platform certificate --------------------------------------------------


def _certificate(key, serial: int | None = None) -> x509.Certificate:
    if serial is None:
        return self_signed_certificate(key, "merchant")
    cert = self_signed_certificate(key, "merchant")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "merchant")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )


def _write(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_a_certificate_of_the_merchant_key_is_refused_by_name(tmp_path):
    merchant = generate_rsa_key()
    _write(tmp_path / "wechatpay_1.pem", self_signed_certificate(generate_rsa_key(), "Tenpay"))
    _write(tmp_path / "apiclient_cert.pem", _certificate(merchant))
    keys = VerifierKeys()
    with pytest.raises(WeChatConfigError) as info:
        keys.load_certificate_dir(tmp_path, merchant_key=merchant.public_key())
    assert "apiclient_cert.pem" in info.value.message and "merchant" in info.value.message
    assert keys.certificate_serials == []  # nothing of the directory taken


def test_a_certificate_with_the_merchant_serial_is_refused_by_name(tmp_path):
    _write(tmp_path / "mine.pem", _certificate(generate_rsa_key(), serial=0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1))
    with pytest.raises(WeChatConfigError) as info:
        VerifierKeys().load_certificate_dir(tmp_path, merchant_serial="5157f09efdc096de15ebe81a47057a7232f1b8e1")
    assert "mine.pem" in info.value.message


def test_platform_certificates_still_load(tmp_path):
    _write(tmp_path / "wechatpay_1.pem", self_signed_certificate(generate_rsa_key(), "Tenpay"))
    merchant = generate_rsa_key()
    assert VerifierKeys().load_certificate_dir(tmp_path, merchant_serial="ABC", merchant_key=merchant.public_key()) == 1


def test_live_start_refuses_the_merchant_certificate_among_the_platform_certificates(live_files, tmp_path):
    certs = tmp_path / "platform-certs"
    certs.mkdir()
    _write(certs / "apiclient_cert.pem", _certificate(live_files["key"]))
    message = start_refused(WECHAT_PLATFORM_CERTS_DIR=str(certs))
    assert "WECHAT_PLATFORM_CERTS_DIR" in message and "apiclient_cert.pem" in message


def test_live_start_refuses_a_certificate_with_the_configured_merchant_serial(live_files, tmp_path):
    certs = tmp_path / "platform-certs"
    certs.mkdir()
    serial = int(live_files["WECHAT_MCH_CERT_SERIAL"], 16)
    _write(certs / "copy.pem", _certificate(generate_rsa_key(), serial=serial))
    message = start_refused(WECHAT_PLATFORM_CERTS_DIR=str(certs))
    assert "WECHAT_PLATFORM_CERTS_DIR" in message and "copy.pem" in message


def test_live_start_takes_wechats_certificates(live_files, tmp_path):
    certs = tmp_path / "platform-certs"
    certs.mkdir()
    _write(certs / "wechatpay.pem", self_signed_certificate(generate_rsa_key(), "Tenpay"))
    assert start(WECHAT_PLATFORM_CERTS_DIR=str(certs)).config["WECHAT_MODE"] == "live"
