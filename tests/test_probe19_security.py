"""Probe 19: authentication and cryptography as an attacker tries them.

User bearer tokens (other salts, other secrets, a revoked generation), the OAuth state, operator tokens,
Idempotency-Key scopes, WeChat Pay v3 signatures and timestamps, the APIv3 key's rotation, v2 XML answers and
the bill download. Each defect found has its test here; the sound behaviours pinned stay so.
"""

from __future__ import annotations

import gzip
import hashlib

import pytest
import responses

from wechat import bills
from wechat.errors import WeChatUnavailable
from wechat.keys import VerifierKeys
from wechat.pay import PayClient, PayConfig
from wechat.sim.keys import generate_rsa_key

PAY_BASE = "https://api.mch.weixin.qq.com"
BILL_URL = f"{PAY_BASE}/v3/billdownload/file?token=t1"


@pytest.fixture(scope="module")
def bare_pay_client() -> PayClient:
    """A client for the bill download alone: its answer is unsigned, so no WeChat key is needed."""
    config = PayConfig(
        mchid="1900000001",
        appid="wx0000000000000001",
        private_key=generate_rsa_key(),
        cert_serial="ABCDEF",
        apiv3_key="k" * 32,
        keys=VerifierKeys(),
    )
    return PayClient(config)


# -- the bill download: a huge answer -----------------------------------------------------------------------------


def test_a_bill_sent_with_content_encoding_gzip_is_unzipped_within_the_bound_too(bare_pay_client, monkeypatch):
    """A bill archive is unzipped within ``MAX_BILL_BYTES`` (``decompress_bill``); the same archive sent as
    ``Content-Encoding: gzip`` was unzipped whole by the HTTP client before that bound looked at it (a few
    kilobytes that unzip to gigabytes took the host's memory)."""
    monkeypatch.setattr(bills, "MAX_BILL_BYTES", 100_000)
    content = b"0" * 1_000_000
    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, BILL_URL, body=gzip.compress(content), headers={"Content-Encoding": "gzip"})
        with pytest.raises(WeChatUnavailable) as info:
            bare_pay_client.download_bill(BILL_URL, hashlib.sha1(content).hexdigest(), "SHA1")  # noqa: S324
    assert info.value.code == "BILL_TOO_LARGE"


def test_a_plain_bill_past_the_bound_is_refused(bare_pay_client, monkeypatch):
    """An answer that is no archive is the bill as it is: past ``MAX_BILL_BYTES`` it is no bill either."""
    monkeypatch.setattr(bills, "MAX_BILL_BYTES", 100_000)
    content = b"1" * 200_000
    with responses.RequestsMock() as mocked:
        mocked.add(responses.GET, BILL_URL, body=content)
        with pytest.raises(WeChatUnavailable) as info:
            bare_pay_client.download_bill(BILL_URL, hashlib.sha1(content).hexdigest(), "SHA1")  # noqa: S324
    assert info.value.code == "BILL_TOO_LARGE"


def test_a_bill_within_the_bound_still_downloads_in_every_form(bare_pay_client, monkeypatch):
    """The bound takes nothing from a real bill: plain, gzip archive (``tar_type=GZIP``), gzip in transit."""
    monkeypatch.setattr(bills, "MAX_BILL_BYTES", 100_000)
    content = "交易时间,商户订单号\r\n`2024-01-01 00:00:00,`O1\r\n".encode() * 100
    digest = hashlib.sha1(content).hexdigest()  # noqa: S324
    forms = [
        {"body": content},
        {"body": gzip.compress(content)},
        {"body": gzip.compress(content), "headers": {"Content-Encoding": "gzip"}},
    ]
    for form in forms:
        with responses.RequestsMock() as mocked:
            mocked.add(responses.GET, BILL_URL, **form)
            assert bytes(bare_pay_client.download_bill(BILL_URL, digest, "SHA1")) == content


# -- Idempotency-Key: one caller's key answers no one else --------------------------------------------------------

SIGN_IN = "/api/v1/sign-in"


def test_a_key_guessed_from_another_person_runs_for_the_guesser_and_replays_nothing(client, make_user, user_headers):
    alice, bob = make_user(), make_user()
    first = client.post(SIGN_IN, headers=user_headers(alice, **{"Idempotency-Key": "k-1"}), json={})
    assert first.status_code == 200, first.json
    again = client.post(SIGN_IN, headers=user_headers(alice, **{"Idempotency-Key": "k-1"}), json={})
    assert again.headers.get("Idempotent-Replayed") == "true"
    theirs = client.post(SIGN_IN, headers=user_headers(bob, **{"Idempotency-Key": "k-1"}), json={})
    assert theirs.status_code == 200 and theirs.headers.get("Idempotent-Replayed") is None


def test_a_revoked_token_is_answered_401_not_the_answer_its_key_stored(client, make_user, user_headers):
    alice = make_user()
    old = user_headers(alice, **{"Idempotency-Key": "k-2"})
    assert client.post(SIGN_IN, headers=old, json={}).status_code == 200
    assert client.post("/api/v1/auth/sign-out-everywhere", headers=old).status_code == 200
    replayed = client.post(SIGN_IN, headers=old, json={})
    assert (replayed.status_code, replayed.json["error"]) == (401, "token_revoked")


# -- the bill download: another host ------------------------------------------------------------------------------


def test_a_redirect_from_the_download_url_to_another_host_is_not_followed(bare_pay_client):
    """``download_url`` must be on the WeChat Pay host (``FOREIGN_DOWNLOAD_URL``); a redirect from there led the
    client to any host at all (an internal address: a request from inside the network), and what it answered was
    read as the bill. WeChat Pay's APIv3 answers with no redirect: one is an answer we cannot use."""
    content = "交易时间,商户订单号\r\n`2024-01-01 00:00:00,`O1\r\n".encode()
    elsewhere = "http://169.254.169.254/latest/meta-data"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.add(responses.GET, BILL_URL, status=302, headers={"Location": elsewhere})
        mocked.add(responses.GET, elsewhere, body=content)
        with pytest.raises(WeChatUnavailable) as info:
            bare_pay_client.download_bill(BILL_URL, hashlib.sha1(content).hexdigest(), "SHA1")  # noqa: S324
        assert [call.request.url for call in mocked.calls] == [BILL_URL]
    assert info.value.code == "HTTP_302"
