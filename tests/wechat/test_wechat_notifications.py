"""Callback verification: each bad input rejected with its own reason, both key
modes at once, and agreement with wechatpayv3's ``callback``."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC

import pytest
from wechat_testkit import APPID, MCHID, MERCHANT_SERIAL
from wechatpayv3 import WeChatPay, WeChatPayType

from wechat import crypto
from wechat.errors import NotificationRejected, WeChatSignatureError
from wechat.keys import VerifierKeys
from wechat.notifications import failure_response_body, verify_and_decrypt, verify_response
from wechat.sim.keys import generate_rsa_key

RESOURCE = {
    "out_trade_no": "ORDER1",
    "mchid": MCHID,
    "appid": APPID,
    "trade_state": "SUCCESS",
    "amount": {"total": 5000, "payer_total": 4000},
}


@pytest.fixture
def signed(sim_state):
    return sim_state.build_notification("TRANSACTION.SUCCESS", RESOURCE, "transaction")


def _reject(headers, body, keys, apiv3_key, **kw) -> str:
    with pytest.raises(NotificationRejected) as info:
        verify_and_decrypt(headers, body, keys, apiv3_key, **kw)
    return info.value.reason


def test_valid_notification_decrypts(signed, verifier_keys, apiv3_key):
    headers, body = signed
    note = verify_and_decrypt(headers, body, verifier_keys, apiv3_key)
    assert note.event_type == "TRANSACTION.SUCCESS" and note.resource == RESOURCE
    assert note.resource_type == "encrypt-resource" and note.original_type == "transaction"
    assert note.id.startswith("EV-") and note.summary == "支付成功"


def test_header_names_are_case_insensitive(signed, verifier_keys, apiv3_key):
    headers, body = signed
    lower = {k.lower(): v for k, v in headers.items()}
    assert verify_and_decrypt(lower, body, verifier_keys, apiv3_key).resource == RESOURCE


def test_missing_signature_type_is_treated_as_rsa(signed, verifier_keys, apiv3_key):
    headers, body = signed
    headers = {k: v for k, v in headers.items() if k != "Wechatpay-Signature-Type"}
    assert verify_and_decrypt(headers, body, verifier_keys, apiv3_key).resource == RESOURCE


def test_tampered_body(signed, verifier_keys, apiv3_key):
    headers, body = signed
    assert _reject(headers, body.replace(b"TRANSACTION", b"TRANSACTIOM"), verifier_keys, apiv3_key) == "BAD_SIGNATURE"


def test_wrong_serial(signed, verifier_keys, apiv3_key):
    headers, body = signed
    assert (
        _reject(
            {**headers, "Wechatpay-Serial": "PUB_KEY_ID_0000000000000000000000000000099"},
            body,
            verifier_keys,
            apiv3_key,
        )
        == "UNKNOWN_SERIAL"
    )
    assert _reject({**headers, "Wechatpay-Serial": "ABCDEF0123"}, body, verifier_keys, apiv3_key) == "UNKNOWN_SERIAL"


def test_signtest_probe(signed, verifier_keys, apiv3_key):
    headers, body = signed
    probe = {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]}
    assert _reject(probe, body, verifier_keys, apiv3_key) == "SIGNATURE_PROBE"


@pytest.mark.parametrize(
    ("offset_s", "reason"), [(-301, "STALE_TIMESTAMP"), (301, "FUTURE_TIMESTAMP"), (-3600, "STALE_TIMESTAMP")]
)
def test_timestamp_outside_window(sim_state, verifier_keys, apiv3_key, offset_s, reason):
    now = time.time()
    headers, body = sim_state.build_notification(
        "TRANSACTION.SUCCESS", RESOURCE, "transaction", timestamp=int(now) + offset_s
    )
    assert _reject(headers, body, verifier_keys, apiv3_key, now=int(now)) == reason


@pytest.mark.parametrize("offset_s", [-299, 299, 0])
def test_timestamp_inside_window(sim_state, verifier_keys, apiv3_key, offset_s):
    now = int(time.time())
    headers, body = sim_state.build_notification(
        "TRANSACTION.SUCCESS", RESOURCE, "transaction", timestamp=now + offset_s
    )
    assert verify_and_decrypt(headers, body, verifier_keys, apiv3_key, now=now).resource == RESOURCE


def test_non_integer_timestamp(signed, verifier_keys, apiv3_key):
    headers, body = signed
    assert _reject({**headers, "Wechatpay-Timestamp": "soon"}, body, verifier_keys, apiv3_key) == "BAD_TIMESTAMP"


def _resign(sim_keys, body: bytes) -> dict[str, str]:
    return sim_keys.sign_headers(body, serial=sim_keys.public_key_id)


def _envelope(body: bytes) -> dict:
    return json.loads(body)


def test_gcm_tag_failure(signed, sim_keys, verifier_keys, apiv3_key):
    _, body = signed
    env = _envelope(body)
    ct = bytearray(base64.b64decode(env["resource"]["ciphertext"]))
    ct[-1] ^= 0x01
    env["resource"]["ciphertext"] = base64.b64encode(bytes(ct)).decode()
    forged = json.dumps(env).encode()
    assert _reject(_resign(sim_keys, forged), forged, verifier_keys, apiv3_key) == "DECRYPT_FAILED"


def test_wrong_apiv3_key(signed, verifier_keys):
    headers, body = signed
    assert _reject(headers, body, verifier_keys, "X" * 32) == "DECRYPT_FAILED"


@pytest.mark.parametrize(
    "missing", ["Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Signature", "Wechatpay-Serial"]
)
def test_missing_headers(signed, verifier_keys, apiv3_key, missing):
    headers, body = signed
    assert (
        _reject({k: v for k, v in headers.items() if k != missing}, body, verifier_keys, apiv3_key) == "MISSING_HEADERS"
    )


def test_unknown_signature_type(signed, verifier_keys, apiv3_key):
    headers, body = signed
    assert (
        _reject({**headers, "Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"}, body, verifier_keys, apiv3_key)
        == "UNSUPPORTED_SIGNATURE_TYPE"
    )


def test_malformed_json(sim_keys, verifier_keys, apiv3_key):
    body = b'{"id": "EV-1", "resource": '
    assert _reject(_resign(sim_keys, body), body, verifier_keys, apiv3_key) == "MALFORMED_BODY"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("resource_type", "plain-resource", "UNSUPPORTED_RESOURCE_TYPE"),
        ("algorithm", "AEAD_SM4_GCM", "UNSUPPORTED_ALGORITHM"),
    ],
)
def test_wrong_resource_type_or_algorithm(signed, sim_keys, verifier_keys, apiv3_key, field, value, reason):
    env = _envelope(signed[1])
    (env if field == "resource_type" else env["resource"])[field] = value
    body = json.dumps(env).encode()
    assert _reject(_resign(sim_keys, body), body, verifier_keys, apiv3_key) == reason


def test_failure_response_body():
    assert failure_response_body("验签失败") == {"code": "FAIL", "message": "验签失败"}


def test_public_key_and_certificate_mode_at_once(sim_state, sim_keys, verifier_keys, apiv3_key):
    # given a merchant mid-migration holding both keys
    for serial in (sim_keys.public_key_id, sim_keys.platform_serial):
        # when WeChat signs with either one
        headers, body = sim_state.build_notification("TRANSACTION.SUCCESS", RESOURCE, "transaction", serial=serial)
        # then both verify, the key being picked by Wechatpay-Serial
        assert headers["Wechatpay-Serial"] == serial
        assert verify_and_decrypt(headers, body, verifier_keys, apiv3_key).resource == RESOURCE


def test_certificate_only_merchant_refuses_public_key_signature(sim_state, sim_keys, apiv3_key):
    cert_only = sim_keys.verifier_keys(public_key=False, certificates=True)
    headers, body = sim_state.build_notification(
        "TRANSACTION.SUCCESS", RESOURCE, "transaction", serial=sim_keys.public_key_id
    )
    assert _reject(headers, body, cert_only, apiv3_key) == "UNKNOWN_SERIAL"


def test_unknown_serial_refreshes_once_per_gap(sim_state, sim_keys, apiv3_key):
    # given a verifier that knows no certificate and a refresher returning the platform cert
    calls = []
    clock = [1000.0]

    def refresher():
        calls.append(1)
        return [sim_keys.platform_cert]

    keys = VerifierKeys(refresher=refresher, unknown_serial_gap_s=60, clock=lambda: clock[0])
    headers, body = sim_state.build_notification(
        "TRANSACTION.SUCCESS", RESOURCE, "transaction", serial=sim_keys.platform_serial
    )
    # when a callback arrives, the certs are fetched once and it verifies
    assert verify_and_decrypt(headers, body, keys, apiv3_key).resource == RESOURCE
    assert len(calls) == 1
    # then random serials inside the gap do not trigger more downloads
    for n in range(5):
        with pytest.raises(NotificationRejected):
            verify_and_decrypt({**headers, "Wechatpay-Serial": f"DEAD{n}"}, body, keys, apiv3_key)
    assert len(calls) == 1
    clock[0] += 61
    with pytest.raises(NotificationRejected):
        verify_and_decrypt({**headers, "Wechatpay-Serial": "DEAD99"}, body, keys, apiv3_key)
    assert len(calls) == 2


def test_certificates_refresh_when_older_than_an_hour(sim_keys):
    calls, clock = [], [0.0]
    keys = VerifierKeys(refresher=lambda: calls.append(1) or [sim_keys.platform_cert], clock=lambda: clock[0])
    assert keys.key_for_serial(sim_keys.platform_serial) is not None
    clock[0] += 3599
    keys.key_for_serial(sim_keys.platform_serial)
    assert len(calls) == 1
    clock[0] += 2
    keys.key_for_serial(sim_keys.platform_serial)
    assert len(calls) == 2


def test_certificates_load_from_directory(tmp_path, sim_keys, sim_state, apiv3_key):
    (tmp_path / f"{sim_keys.platform_serial}.pem").write_text(sim_keys.platform_cert_pem)
    (tmp_path / "notes.txt").write_text("ignored")
    keys = VerifierKeys()
    assert keys.load_certificate_dir(tmp_path) == 1
    headers, body = sim_state.build_notification(
        "REFUND.SUCCESS", {"out_refund_no": "R1"}, "refund", serial=sim_keys.platform_serial
    )
    assert verify_and_decrypt(headers, body, keys, apiv3_key).resource == {"out_refund_no": "R1"}


def test_expired_certificate_is_not_used(sim_state, apiv3_key):
    from datetime import datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = generate_rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(now - timedelta(days=10))
        .not_valid_after(now - timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    keys = VerifierKeys(certificates=[cert])
    assert keys.lookup(crypto.certificate_serial(cert)) is None


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
def test_wechatpayv3_callback_agrees(sim_state, sim_keys, verifier_keys, apiv3_key, merchant_key, mode):
    # given wechatpayv3 in public-key mode (the cert it would otherwise download is handed in via cert_dir)
    serial = sim_keys.public_key_id if mode == "public_key" else sim_keys.platform_serial
    headers, body = sim_state.build_notification("TRANSACTION.SUCCESS", RESOURCE, "transaction", serial=serial)
    ours = verify_and_decrypt(headers, body, verifier_keys, apiv3_key)
    wpv3 = WeChatPay(
        wechatpay_type=WeChatPayType.MINIPROG,
        mchid=MCHID,
        private_key=crypto.private_key_pem(merchant_key),
        cert_serial_no=MERCHANT_SERIAL,
        appid=APPID,
        apiv3_key=apiv3_key,
        public_key=sim_keys.public_key_pem,
        public_key_id=sim_keys.public_key_id,
    )
    wpv3._core._certificates.append(sim_keys.platform_cert)
    # when wechatpayv3 verifies the same simulator-built callback
    theirs = wpv3.callback(headers, body)
    # then it accepts it and decrypts the same resource
    assert theirs is not None and theirs["resource"] == ours.resource
    assert theirs["id"] == ours.id and theirs["event_type"] == ours.event_type
    assert wpv3.callback(headers, body.replace(b"TRANSACTION", b"TRANSACTIOM")) is None


def test_verify_response_treats_unsigned_2xx_as_forged(verifier_keys):
    with pytest.raises(WeChatSignatureError) as info:
        verify_response({"Content-Type": "application/json"}, b"{}", verifier_keys)
    assert info.value.code == "FORGED_RESPONSE" and info.value.outcome_unknown


def test_verify_response_accepts_signed_body(sim_keys, verifier_keys):
    body = b'{"prepay_id":"wx1"}'
    verify_response(sim_keys.sign_headers(body), body, verifier_keys)
    with pytest.raises(WeChatSignatureError) as info:
        verify_response(sim_keys.sign_headers(body), b'{"prepay_id":"wx2"}', verifier_keys)
    assert info.value.code == "RESPONSE_BAD_SIGNATURE"
