"""WeChat Pay's backup host: used only when the main host could not be reached, with the identical
request body (so the same out numbers); APIv3 key rotation at the crypto level."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
import requests
import responses
from cryptography.exceptions import InvalidTag
from wechat_testkit import NOTIFY_URL, PAY_BASE
from wechatpayv3 import utils as wpv3_utils

from wechat import crypto
from wechat.errors import NotificationRejected, WeChatConfigError, WeChatUnavailable
from wechat.keys import ApiV3Keys
from wechat.notifications import verify_and_decrypt
from wechat.pay import PayClient

BACKUP = "https://api2.wxpay.test"
REPORT = [{"info_type": "活动名称", "info_content": "双向返利"}, {"info_type": "奖励说明", "info_content": "消费返现"}]
TRANSFER = "/v3/fund-app/mch-transfer/transfer-bills"


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def client_with_backup(pay_config) -> PayClient:
    return PayClient(dataclasses.replace(pay_config, backup_base=BACKUP + "/"))


def _signed(sim_keys, data, status=200) -> dict:
    body = json.dumps(data, separators=(",", ":")).encode()
    return {"status": status, "body": body, "headers": sim_keys.sign_headers(body), "content_type": "application/json"}


def _transfer(client) -> dict:
    return client.transfer_bill("TB000000000042", "o-user", 500, "返现", REPORT, NOTIFY_URL)


ACCEPTED = {"out_bill_no": "TB000000000042", "transfer_bill_no": "1330", "state": "WAIT_USER_CONFIRM"}


@pytest.mark.parametrize(
    "failure",
    [
        requests.exceptions.ConnectionError("refused"),
        requests.exceptions.ConnectTimeout("connect timeout"),
        requests.exceptions.SSLError("handshake"),
    ],
    ids=["refused", "connect_timeout", "tls"],
)
def test_a_connection_failure_is_sent_once_to_the_backup_with_the_same_body(
    mocked, client_with_backup, sim_keys, failure
):
    # given: the main host cannot be reached, the backup answers
    mocked.add(responses.POST, PAY_BASE + TRANSFER, body=failure)
    mocked.add(responses.POST, BACKUP + TRANSFER, **_signed(sim_keys, ACCEPTED))
    # when
    answer = _transfer(client_with_backup)
    # then: one call each; the body (and so out_bill_no) is byte-identical, each signature valid and fresh
    assert answer == ACCEPTED
    main, backup = (c.request for c in mocked.calls)
    assert main.url == PAY_BASE + TRANSFER and backup.url == BACKUP + TRANSFER
    assert main.body == backup.body and json.loads(backup.body)["out_bill_no"] == "TB000000000042"
    auth = [crypto.parse_authorization(r.headers["Authorization"]) for r in (main, backup)]
    assert auth[0]["nonce_str"] != auth[1]["nonce_str"]
    message = crypto.request_message(
        "POST", TRANSFER, int(auth[1]["timestamp"]), auth[1]["nonce_str"], backup.body.decode()
    )
    assert crypto.verify_rsa(message, auth[1]["signature"], client_with_backup.config.private_key.public_key())


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "json": {"code": "SYSTEM_ERROR", "message": "busy"}},
        {"status": 429, "json": {"code": "FREQUENCY_LIMITED", "message": "slow down"}},
        {"status": 400, "json": {"code": "INVALID_REQUEST", "message": "bad"}},
        {"body": requests.exceptions.ReadTimeout("the request went out; WeChat may be working on it")},
    ],
    ids=["500", "429", "400", "read_timeout"],
)
def test_an_http_answer_or_a_read_timeout_never_goes_to_the_backup(mocked, client_with_backup, answer):
    mocked.add(responses.GET, PAY_BASE + "/v3/pay/transactions/out-trade-no/O1", **answer)
    with pytest.raises(Exception):  # noqa: B017, PT011 - each maps to its own typed error
        client_with_backup.query_order("O1")
    assert [c.request.url.split("?")[0] for c in mocked.calls] == [PAY_BASE + "/v3/pay/transactions/out-trade-no/O1"]


def test_both_hosts_unreachable_is_one_unknown_outcome_after_two_calls(mocked, client_with_backup):
    mocked.add(responses.POST, PAY_BASE + TRANSFER, body=requests.exceptions.ConnectionError("down"))
    mocked.add(responses.POST, BACKUP + TRANSFER, body=requests.exceptions.ConnectionError("down too"))
    with pytest.raises(WeChatUnavailable) as info:
        _transfer(client_with_backup)
    assert info.value.code == "NETWORK_ERROR" and info.value.outcome_unknown
    assert len(mocked.calls) == 2


def test_without_a_backup_host_a_connection_failure_is_not_retried(mocked, pay_client):
    mocked.add(responses.POST, PAY_BASE + TRANSFER, body=requests.exceptions.ConnectionError("down"))
    with pytest.raises(WeChatUnavailable):
        _transfer(pay_client)
    assert len(mocked.calls) == 1


def test_a_bill_link_on_the_backup_host_is_downloaded(mocked, client_with_backup):
    content = "交易时间,商户订单号\r\n`2024-01-01 00:00:00,`O1\r\n".encode()
    mocked.add(responses.GET, f"{PAY_BASE}/v3/billdownload/file", body=requests.exceptions.ConnectionError("down"))
    mocked.add(responses.GET, f"{BACKUP}/v3/billdownload/file", body=gzip.compress(content))
    url = f"{BACKUP}/v3/billdownload/file?token=t"
    digest = hashlib.sha1(content).hexdigest()  # noqa: S324
    assert client_with_backup.download_bill(url, digest, "SHA1") == content


# -- APIv3 key rotation ---------------------------------------------------------------------------

OLD, NEW = "old-apiv3-key-0123456789abcdefgh", "new-apiv3-key-0123456789abcdefgh"


def _sealed(key: str) -> tuple[str, str]:
    return "0123456789ab", crypto.aes_gcm_encrypt(key, "0123456789ab", '{"x":1}', "transaction")


def test_previous_key_decrypts_only_before_its_end():
    until = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    keys = ApiV3Keys(NEW, OLD, until)
    nonce, old_ct = _sealed(OLD)
    assert keys.decrypt(nonce, old_ct, "transaction", now=until - timedelta(seconds=1)) == b'{"x":1}'
    with pytest.raises(InvalidTag):
        keys.decrypt(nonce, old_ct, "transaction", now=until)
    # the current key works at any time, and wechatpayv3 reads the same plaintext with the old key
    assert keys.decrypt(*_sealed(NEW), "transaction", now=until + timedelta(days=9)) == b'{"x":1}'
    assert wpv3_utils.aes_decrypt(nonce, old_ct, "transaction", OLD) == '{"x":1}'


@pytest.mark.parametrize(
    "kwargs",
    [
        {"previous": OLD},
        {"previous_until": datetime(2026, 12, 1, tzinfo=UTC)},
        {"previous": OLD, "previous_until": datetime(2026, 12, 1)},  # naive
    ],
)
def test_a_previous_key_needs_an_aware_end(kwargs):
    with pytest.raises(WeChatConfigError):
        ApiV3Keys(NEW, **kwargs)


def test_pay_config_refuses_a_previous_key_of_the_wrong_size(pay_config):
    with pytest.raises(WeChatConfigError):
        dataclasses.replace(pay_config, apiv3_key=ApiV3Keys(NEW, "short", datetime(2026, 12, 1, tzinfo=UTC)))


def test_notification_from_before_the_rotation(sim_state, verifier_keys, apiv3_key):
    # the simulator still encrypts with the key of before the rotation
    headers, body = sim_state.build_notification("TRANSACTION.SUCCESS", {"out_trade_no": "O1"}, "transaction")
    later = datetime.now(UTC) + timedelta(hours=1)
    rotated = ApiV3Keys(NEW, apiv3_key, later)
    assert verify_and_decrypt(headers, body, verifier_keys, rotated).resource == {"out_trade_no": "O1"}
    expired = ApiV3Keys(NEW, apiv3_key, datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(NotificationRejected) as info:
        verify_and_decrypt(headers, body, verifier_keys, expired)
    assert info.value.reason == "DECRYPT_FAILED"
