"""Signing and encryption round trips, cross-checked with the independent
``wechatpayv3`` package (PKCS#1 v1.5 is deterministic, so signatures must be equal)."""

from __future__ import annotations

import json

import pytest
from cryptography.exceptions import InvalidTag
from wechat_testkit import APPID, MCHID, MERCHANT_SERIAL
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3 import utils as wpv3_utils

from wechat import crypto
from wechat.errors import WeChatConfigError


@pytest.fixture
def wpv3(merchant_key, apiv3_key, sim_keys):
    return WeChatPay(
        wechatpay_type=WeChatPayType.MINIPROG,
        mchid=MCHID,
        private_key=crypto.private_key_pem(merchant_key),
        cert_serial_no=MERCHANT_SERIAL,
        appid=APPID,
        apiv3_key=apiv3_key,
        public_key=sim_keys.public_key_pem,
        public_key_id=sim_keys.public_key_id,
    )


def test_sign_and_verify_round_trip(merchant_key):
    signature = crypto.sign_rsa("hello\n", merchant_key)
    assert crypto.verify_rsa("hello\n", signature, merchant_key.public_key())
    assert not crypto.verify_rsa("hello!\n", signature, merchant_key.public_key())
    assert not crypto.verify_rsa("hello\n", "not base64!!", merchant_key.public_key())


def test_authorization_has_the_five_items_and_verifies(merchant_key):
    header = crypto.build_authorization(
        "POST",
        "/v3/pay/transactions/jsapi",
        '{"a":1}',
        MCHID,
        MERCHANT_SERIAL,
        merchant_key,
        timestamp=1554208460,
        nonce="593BEC0C930BF1AFEB40B4A08C8FB242",
    )
    items = crypto.parse_authorization(header)
    assert header.startswith("WECHATPAY2-SHA256-RSA2048 ")
    assert items["mchid"] == MCHID and items["serial_no"] == MERCHANT_SERIAL and items["timestamp"] == "1554208460"
    message = 'POST\n/v3/pay/transactions/jsapi\n1554208460\n593BEC0C930BF1AFEB40B4A08C8FB242\n{"a":1}\n'
    assert crypto.verify_rsa(message, items["signature"], merchant_key.public_key())


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        (
            "POST",
            "/v3/pay/transactions/jsapi",
            json.dumps({"description": "测试", "amount": {"total": 1}}, ensure_ascii=False),
        ),
        ("GET", "/v3/bill/tradebill?bill_date=2024-01-01&bill_type=ALL", ""),
        ("GET", "/v3/certificates", ""),
    ],
)
def test_authorization_signature_equals_wechatpayv3(merchant_key, monkeypatch, method, url, body):
    # given wechatpayv3's clock frozen at the same second and the same nonce
    monkeypatch.setattr(wpv3_utils.time, "time", lambda: 1700000000)
    theirs = wpv3_utils.build_authorization(
        url, method, MCHID, MERCHANT_SERIAL, merchant_key, data=body or None, nonce_str="N0NCE"
    )
    # when we sign the same request
    ours = crypto.build_authorization(
        method, url, body, MCHID, MERCHANT_SERIAL, merchant_key, timestamp=1700000000, nonce="N0NCE"
    )
    # then both signatures are byte-identical
    assert crypto.parse_authorization(ours)["signature"] == crypto.parse_authorization(theirs)["signature"]
    assert crypto.parse_authorization(ours) == crypto.parse_authorization(theirs)


def test_pay_sign_equals_wechatpayv3(merchant_key, wpv3):
    params = crypto.jsapi_pay_params(
        APPID,
        "wx201410272009395522657a690389285100",
        merchant_key,
        timestamp=1414561699,
        nonce="5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
    )
    assert params["timeStamp"] == "1414561699" and isinstance(params["timeStamp"], str)
    assert params["package"] == "prepay_id=wx201410272009395522657a690389285100"
    assert params["signType"] == "RSA"
    assert params["paySign"] == wpv3.sign([APPID, params["timeStamp"], params["nonceStr"], params["package"]])


def test_aes_gcm_round_trip_and_tamper(apiv3_key):
    ct = crypto.aes_gcm_encrypt(apiv3_key, "0123456789ab", '{"x":"支付"}', "transaction")
    assert crypto.aes_gcm_decrypt(apiv3_key, "0123456789ab", ct, "transaction") == '{"x":"支付"}'.encode()
    assert wpv3_utils.aes_decrypt("0123456789ab", ct, "transaction", apiv3_key) == '{"x":"支付"}'
    with pytest.raises(InvalidTag):
        crypto.aes_gcm_decrypt(apiv3_key, "0123456789ab", ct, "refund")
    with pytest.raises(WeChatConfigError):
        crypto.aes_gcm_decrypt("short", "0123456789ab", ct, "transaction")


def test_rsa_oaep_round_trip_interoperates(sim_keys):
    cipher = crypto.rsa_oaep_encrypt("张三", sim_keys.public_key)
    assert wpv3_utils.rsa_decrypt(cipher, sim_keys.public_key_private) == "张三"
    assert (
        crypto.rsa_oaep_decrypt(wpv3_utils.rsa_encrypt("李四", sim_keys.public_key), sim_keys.public_key_private)
        == "李四"
    )


def test_key_loading_helpers(merchant_key, sim_keys):
    assert (
        crypto.load_private_key(crypto.private_key_pem(merchant_key)).private_numbers()
        == merchant_key.private_numbers()
    )
    assert crypto.load_public_key(sim_keys.public_key_pem).public_numbers() == sim_keys.public_key.public_numbers()
    cert = crypto.load_certificate(sim_keys.platform_cert_pem)
    assert crypto.certificate_serial(cert) == sim_keys.platform_serial


@pytest.mark.parametrize(
    "header", ["Bearer abc", 'WECHATPAY2-SHA256-RSA2048 mchid="1"', "WECHATPAY2-SHA256-RSA2048 mchid=1"]
)
def test_parse_authorization_refuses_malformed(header):
    with pytest.raises(ValueError):
        crypto.parse_authorization(header)
