"""Inputs an outside probe found answering 500 (2026-12-02): each now a clear refusal or the default, changing nothing.

Unicode digits that ``str.isdigit`` accepts but ``int`` does not ("²"), JSON nested past the API's depth in console
form fields, a ``next`` with a line break at the console's sign-in, a user token signed for an id beyond any row;
and two small leaks: push signatures in the access log, negative amounts turned to text in CSV exports."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from models import Ban, ConsoleSession, db
from tests.console_helpers import post
from tests.console_helpers import sign_in as console_sign_in

SUPERSCRIPT_TWO = "\u00b2"


@pytest.mark.parametrize(
    "path",
    [
        "/console/risk/rules?offset=²",
        "/console/challenges?offset=²",
        "/console/messages?offset=²",
        "/console/payouts?offset=²",
        "/console/audit?offset=²",
        "/console/lookup?kind=user&id=²",
        "/console/notices?user_id=²",
        "/console/statements?month=2026-12&merchant_id=²",
        "/console/merchant-settings?merchant_id=²",
    ],
)
def test_a_unicode_digit_in_a_console_query_is_no_number_not_a_500(client, make_operator, path):
    console_sign_in(client, make_operator("admin")[1])
    answer = client.get(path)
    assert answer.status_code < 500, answer.status_code


def test_a_unicode_digit_as_a_ban_value_is_422_and_bans_nobody(client, make_operator):
    _, admin = make_operator("admin")
    body = {"subject": "user", "value": SUPERSCRIPT_TWO, "reason": "probe"}
    answer = client.post("/admin/api/bans", json=body, headers=admin)
    assert answer.status_code == 422, answer.json
    assert db.session.execute(select(func.count()).select_from(Ban)).scalar_one() == 0


def test_console_forms_take_a_unicode_digit_as_the_api_would(client, make_operator, make_merchant):
    csrf = console_sign_in(client, make_operator("admin")[1])
    shop = make_merchant()
    for path, data in [
        (f"/console/merchants/{shop.id}/fee-rate", {"rate_bps": SUPERSCRIPT_TWO, "reason": "probe"}),
        ("/console/risk/rules/backtest", {"rule_set_id": SUPERSCRIPT_TWO}),
        ("/console/bans", {"subject": "user", "value": SUPERSCRIPT_TWO, "reason": "probe"}),
    ]:
        assert post(client, path, data, csrf).status_code < 500, path


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/console/campaigns/{id}/rules", "rules"),
        ("/console/campaigns/{id}/simulate", "what_if_rules"),
        ("/console/risk/rules", "rules"),
        ("/console/risk/rules/backtest", "rules"),
        ("/console/audiences", "definition"),
    ],
)
def test_json_nested_too_deep_in_a_console_form_is_refused_beside_the_field(
    client, make_operator, make_campaign, path, field
):
    campaign = make_campaign({"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance"}]})
    csrf = console_sign_in(client, make_operator("admin")[1])
    answer = post(client, path.format(id=campaign.id), {field: "[" * 20_000, "reason": "probe"}, csrf)
    assert answer.status_code < 500, answer.status_code


@pytest.mark.parametrize(
    ("target", "not_in_location"),
    [
        ("/console/x\r\nX-A: b", "\n"),  # a line break: a Location cannot carry it (was a 500, the session orphaned)
        ("/console/%2e%2e/oauth/authorize", "oauth"),  # out of the console by dot segments
    ],
)
def test_a_console_next_that_cannot_be_followed_lands_on_the_overview(client, make_operator, target, not_in_location):
    from tests.console_helpers import csrf_of, token_of

    _, headers = make_operator("admin")
    csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    answer = client.post("/console/sign-in", data={"csrf_token": csrf, "token": token_of(headers), "next": target})
    assert answer.status_code == 302 and not_in_location not in answer.headers["Location"]
    assert answer.headers["Location"].startswith("/console/")
    assert db.session.execute(select(func.count()).select_from(ConsoleSession)).scalar_one() == 1


def test_a_user_token_for_an_id_beyond_any_row_is_401(client):
    from web.auth import _serializer

    for uid in (2**70, 0, -1):
        token = _serializer().dumps({"uid": uid, "ch": "mini_program"})
        answer = client.get("/api/v1/me/wallet", headers={"Authorization": f"Bearer {token}"})
        assert (answer.status_code, answer.json["error"]) == (401, "invalid_token")


def test_push_signatures_and_echostr_are_masked_in_the_log():
    from web.logs import mask_text

    line = mask_text("POST /wechat/mp/push?signature=aa2c&timestamp=1&nonce=2&msg_signature=9069&echostr=xyz")
    assert "aa2c" not in line and "9069" not in line and "xyz" not in line and "timestamp=1" in line


def test_a_negative_amount_in_a_csv_stays_a_number_and_formulas_are_still_defused():
    from web.reports_api import safe_cell

    assert [safe_cell(v) for v in ("-2.50", "-250", "-0.01", "-y", "-2.50+cmd", "=1", "-1e5")] == [
        "-2.50",
        "-250",
        "-0.01",
        "'-y",
        "'-2.50+cmd",
        "'=1",
        "'-1e5",
    ]


# -- signed callbacks whose insides are malformed: a clear 400, never a 500 WeChat retries for a day (outside probe) --

V3_CALLBACKS = ["/wechat/pay/notify", "/wechat/pay/refund-notify", "/wechat/transfer/notify"]


def _signed_envelope(app, resource: dict) -> tuple[dict, bytes]:
    """A v3 callback envelope around ``resource`` (already its encrypted form), signed as WeChat signs."""
    import json

    sim = app.extensions["wechat"].simulator
    envelope = {
        "id": "EV-odd-1",
        "create_time": "2026-11-25T10:00:00+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM", **resource},
    }
    body = json.dumps(envelope).encode()
    headers = {"Content-Type": "application/json", **sim.keys.sign_headers(body, serial=sim.default_serial())}
    return headers, body


@pytest.mark.parametrize("path", V3_CALLBACKS)
@pytest.mark.parametrize(
    "field, value", [("nonce", 123456789012), ("nonce", None), ("associated_data", 7), ("ciphertext", ["x"])]
)
def test_a_signed_callback_with_a_non_string_crypto_field_is_400(app, client, path, field, value):
    from tests.test_wechat_callbacks import table_counts

    resource = {"ciphertext": "AAAA", "associated_data": "transaction", "nonce": "abcdefabcdef", field: value}
    headers, body = _signed_envelope(app, resource)
    before = table_counts()
    answer = client.post(path, data=body, headers=headers)
    assert answer.status_code == 400, answer.get_data(as_text=True)
    assert answer.get_json() == {"code": "FAIL", "message": "MALFORMED_BODY"}
    assert table_counts() == before


# Beyond the parser's depth; NaN or Infinity (or a number too large, read as one), which Python's JSON reader
# takes: no amount of WeChat's is one, and no JSON column keeps one (PostgreSQL refuses the row inside its insert).
NOT_OUR_JSON = {
    "nested": "[" * 5_000 + "]" * 5_000,
    "nan": '{"out_trade_no": "T1", "msgtype": "text", "amount": {"total": NaN}}',
    "infinity": '{"out_trade_no": "T1", "msgtype": "text", "amount": {"total": Infinity}}',
    "-infinity": '{"out_trade_no": "T1", "msgtype": "text", "amount": {"total": -Infinity}}',
    # no literal, yet a float too large to be finite: read as infinity
    "1e400": '{"out_trade_no": "T1", "msgtype": "text", "amount": {"total": 1e400}}',
    "-1e999": '{"out_trade_no": "T1", "msgtype": "text", "amount": {"total": -1e999}}',
}


@pytest.mark.parametrize("plain", NOT_OUR_JSON.values(), ids=NOT_OUR_JSON.keys())
@pytest.mark.parametrize("path", V3_CALLBACKS)
def test_a_signed_callback_whose_resource_is_no_json_we_read_is_400(app, client, path, plain):
    from tests.test_wechat_callbacks import table_counts
    from wechat.crypto import aes_gcm_encrypt

    sim = app.extensions["wechat"].simulator
    resource = {
        "ciphertext": aes_gcm_encrypt(sim.apiv3_key, "abcdefabcdef", plain, "transaction"),
        "associated_data": "transaction",
        "nonce": "abcdefabcdef",
    }
    headers, body = _signed_envelope(app, resource)
    before = table_counts()
    answer = client.post(path, data=body, headers=headers)
    assert (answer.status_code, answer.get_json()) == (400, {"code": "FAIL", "message": "MALFORMED_RESOURCE"})
    assert table_counts() == before


@pytest.mark.parametrize("plain", NOT_OUR_JSON.values(), ids=NOT_OUR_JSON.keys())
def test_a_wecom_bot_message_that_is_no_json_we_read_is_400(app, client, plain):
    import json

    from web.wecom_bot import bot_settings
    from wechat import wecom

    settings = bot_settings()
    built = wecom.build_callback(settings, {"msgtype": "text"})
    ciphertext = wecom.encrypt(settings.aes_key, plain)
    args = {
        **built.args,
        "msg_signature": wecom.sign(settings.token, built.args["timestamp"], built.args["nonce"], ciphertext),
    }
    answer = client.post(
        "/wechat/wecom/bot",
        query_string=args,
        data=json.dumps({"encrypt": ciphertext}),
        content_type="application/json",
    )
    assert (answer.status_code, answer.get_data(as_text=True)) == (400, "MALFORMED_JSON")
