"""Probe round 21: the WeChat Pay public key at start-up, and what a log line may carry.

Found by a probe helper; each test failed before its fix.

* Public-key mode took our own merchant key's public half as WeChat Pay's public key (``openssl rsa -pubout`` of
  ``apiclient_key.pem``, exported by mistake): every answer and notification signed with our own private key passed
  for WeChat's, and WeChat's own were refused as forged. Refused at start-up by name, as certificate mode already
  refuses our merchant certificate in the platform certificates directory.
* A log line carried a request's text raw: a path (or a nickname, a header's value, an exception's text) with NEL,
  a line or paragraph separator, a C1 control or a bidi override split the line in a log viewer, or showed it
  reversed (a forged line). They are written as ``\\uXXXX`` escapes; Chinese text stays readable.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.test_config import live_env  # noqa: F401 - a fixture
from tests.test_probe19_ops import live_files, start, start_refused  # noqa: F401 - fixtures and helpers
from web.logs import JsonFormatter
from wechat.crypto import public_key_pem
from wechat.errors import WeChatConfigError
from wechat.sim.keys import generate_rsa_key

# --- public-key mode: WeChat's key, never our own -------------------------------------------------------------


def _merchant_public_pem(live_files) -> bytes:  # noqa: F811 - the fixture
    return (
        live_files["key"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_live_start_refuses_our_own_public_key_as_wechats(live_files):  # noqa: F811 - the fixture
    # given: the merchant key's public half where WeChat Pay's public key belongs
    Path(live_files["WECHAT_PAY_PUBLIC_KEY_PATH"]).write_bytes(_merchant_public_pem(live_files))
    # then: refused at start-up, naming the setting and why
    message = start_refused()
    assert "WECHAT_PAY_PUBLIC_KEY_PATH" in message
    assert "merchant" in message and "WECHAT_MCH_PRIVATE_KEY_PATH" in message


def test_live_start_refuses_it_beside_platform_certificates_too(live_files, tmp_path):  # noqa: F811 - the fixture
    # given: a migration between the modes: WeChat's certificates, and our own key as the public key
    certs = tmp_path / "platform-certs"
    certs.mkdir()
    Path(live_files["WECHAT_PAY_PUBLIC_KEY_PATH"]).write_bytes(_merchant_public_pem(live_files))
    assert "WECHAT_PAY_PUBLIC_KEY_PATH" in start_refused(WECHAT_PLATFORM_CERTS_DIR=str(certs))


def test_live_start_takes_wechats_own_public_key(live_files):  # noqa: F811 - the fixture
    Path(live_files["WECHAT_PAY_PUBLIC_KEY_PATH"]).write_text(public_key_pem(generate_rsa_key().public_key()))
    app = start()
    keys = app.extensions["wechat"].keys
    assert keys.public_key_mode
    assert keys.public_key.public_numbers() != live_files["key"].public_key().public_numbers()


def test_the_check_compares_the_keys_themselves():
    from wechat.keys import refuse_merchant_public_key

    merchant, wechat = generate_rsa_key(), generate_rsa_key()
    with pytest.raises(WeChatConfigError) as info:
        # the same key read again from its PEM: another object, the same numbers
        refuse_merchant_public_key(
            serialization.load_pem_public_key(public_key_pem(merchant.public_key()).encode()), merchant.public_key()
        )
    assert info.value.code == "MERCHANT_KEY"
    refuse_merchant_public_key(wechat.public_key(), merchant.public_key())  # WeChat's: taken


# --- log lines: one line, nothing reversed ---------------------------------------------------------------------

FORGING = [
    "\x85",  # NEL
    "\u2028",  # LINE SEPARATOR
    "\u2029",  # PARAGRAPH SEPARATOR
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",  # the bidi embeddings and overrides
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",  # the bidi isolates
    "\u200e",
    "\u200f",
    "\u061c",  # the bidi marks
    "\x7f",
    "\x9b",  # DEL, CSI (a C1 control: a terminal's escape sequence)
    "\ufeff",  # an invisible format character
]


def _escaped(char: str) -> str:
    return f"\\u{ord(char):04x}"


def _assert_one_safe_line(line: str) -> dict:
    assert line.splitlines() == [line]  # str.splitlines() splits at NEL, U+2028, U+2029 and the C0 separators
    for char in FORGING:
        assert char not in line
    return json.loads(line)  # still JSON, and the values still what was logged


def logged(message: str, *args, **extra) -> str:
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return JsonFormatter().format(record)


@pytest.mark.parametrize("char", FORGING)
def test_a_forging_character_in_a_message_or_a_field_is_escaped(char):
    nickname = f"张三{char}admin logged in"
    line = logged("user %s", nickname, nickname=nickname, tags=[nickname], detail={"who": nickname})
    entry = _assert_one_safe_line(line)
    assert _escaped(char) in line
    assert entry["msg"] == f"user {nickname}"
    assert entry["nickname"] == entry["tags"][0] == entry["detail"]["who"] == nickname


def test_chinese_text_stays_readable():
    line = logged("领取成功", nickname="王小明　（测试）")  # an ideographic space is text, not a control
    assert "领取成功" in line and "王小明　（测试）" in line
    assert "\\u" not in line


def test_the_werkzeug_request_line_of_make_run_is_one_line():
    # `flask run` escapes C0 and C1 controls in the request line, not the separators and bidi controls that
    # uri_to_iri decoded from the path; the line goes through the JSON formatter (configure_logging)
    line = logged('"%s" %s %s', 'GET /api/v1/\u202egnp.exe\u2028127.0.0.1 - - "GET /admin HTTP/1.1" 200', "404", "-")
    _assert_one_safe_line(line)
    assert "\\u202e" in line and "\\u2028" in line


def test_an_exception_text_is_escaped_too():
    try:
        raise ValueError("bad nickname 甲\u2029乙\x85丙")
    except ValueError:
        import sys

        record = logging.LogRecord("web.errors", logging.ERROR, __file__, 1, "unhandled error", (), sys.exc_info())
    line = JsonFormatter().format(record)
    entry = _assert_one_safe_line(line)
    assert "\\u2029" in line and "\\u0085" in line
    assert "bad nickname 甲\u2029乙\x85丙" in entry["exc"]


@pytest.fixture
def log_stream():
    """Every record at INFO and above, formatted as production writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_request_path_with_forging_characters_is_logged_on_one_line(client, log_stream):
    # given: a path carrying a line separator, an override and NEL (percent-encoded as a client sends them)
    path = "/api/v1/nope/%E2%80%AEfdp.exe%E2%80%A8%C2%85%E2%81%A6%E2%80%A9"
    # and: a WeChat callback with headers of a client's own (NEL as a raw header byte arrives as U+0085)
    client.get(path, headers={"User-Agent": "x\x85y", "X-Note": "a\u2028b"})
    client.post(
        "/wechat/pay/notify%E2%80%A8%E2%80%AE",
        data=b"{}",
        headers={"Wechatpay-Serial": "PUB_KEY_ID_\x85\u2028", "Wechatpay-Timestamp": "1\u202e"},
    )
    client.post(
        "/wechat/pay/notify",
        data=b"{}",
        headers={
            "Wechatpay-Serial": "PUB_KEY_ID_\x85",
            "Wechatpay-Timestamp": "x",
            "Wechatpay-Nonce": "n\u2028",
            "Wechatpay-Signature": "s\u202e",
        },
    )
    # then: every record is one line of JSON, the characters escaped
    lines = log_stream.getvalue().split("\n")[:-1]  # the handler's own terminator only
    entries = [_assert_one_safe_line(line) for line in lines]
    paths = [entry.get("path") for entry in entries if entry.get("msg") == "request"]
    assert "/api/v1/nope/\u202efdp.exe\u2028\x85\u2066\u2029" in paths
    text = log_stream.getvalue()
    for char in ("\u202e", "\u2028", "\u2029", "\x85", "\u2066"):
        assert _escaped(char) in text
