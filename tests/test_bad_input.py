"""Bad input never answers 500: huge ids, deep JSON, chunked bodies over the limit, 405s, logged secrets."""

from __future__ import annotations

import io
import json
import logging

import pytest
from sqlalchemy import func, select

from models import Merchant, db
from web.guards import MAX_ID, MAX_JSON_DEPTH, json_depth
from web.logs import JsonFormatter

MERCHANTS = "/admin/api/merchants"


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def merchants() -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(Merchant)).scalar_one()


# --- ids beyond the column range ------------------------------------------------------------


@pytest.mark.parametrize("big", [MAX_ID + 1, 2**63, 2**64 + 7, 10**40])
def test_path_ids_beyond_an_integer_column_are_404_not_500(client, admin, make_user, user_headers, big):
    user = user_headers(make_user())
    for path, headers in [
        (f"/admin/api/merchants/{big}", admin),
        (f"/admin/api/campaigns/{big}", admin),
        (f"/admin/api/payouts/{big}", admin),
        (f"/admin/api/trace/users/{big}", admin),
        (f"/api/v1/orders/{big}", user),
        (f"/api/v1/merchants/{big}/products", user),
    ]:
        response = client.get(path, headers=headers)
        assert response.status_code == 404, (path, response.json)
        assert response.json["error"] == "not_found"
    response = client.post(f"/admin/api/payouts/{big}/cancel", json={"reason": "why not"}, headers=admin)
    assert response.status_code == 404


def test_the_largest_integer_id_is_still_a_plain_not_found(client, admin):
    response = client.get(f"/admin/api/merchants/{MAX_ID}", headers=admin)
    assert response.status_code == 404
    assert response.json["error"] == "merchant_not_found" or response.json["error"].endswith("not_found")


@pytest.mark.parametrize("big", [MAX_ID + 1, 2**62, 2**63 + 1])
def test_body_ids_beyond_an_integer_column_are_422(client, make_user, user_headers, big):
    headers = user_headers(make_user(), **{"Idempotency-Key": f"k-{big}"})
    body = {"lines": [{"product_id": big, "quantity": 1}]}
    response = client.post("/api/v1/orders", json=body, headers=headers)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    response = client.post(
        "/api/v1/orders", json={"lines": [{"product_id": 1, "quantity": 1}], "red_packet_id": big}, headers=headers
    )
    assert response.status_code == 422


# --- deeply nested JSON ---------------------------------------------------------------------


def test_json_nested_5000_deep_is_refused_with_422(client, admin):
    deep = "[" * 5000 + "]" * 5000
    response = client.post(MERCHANTS, data=deep, content_type="application/json", headers=admin)
    assert response.status_code == 422
    assert response.json["error"] == "json_too_deep"
    deep_object = '{"name": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}"
    response = client.post(MERCHANTS, data=deep_object, content_type="application/json", headers=admin)
    assert response.status_code == 422
    assert response.json["error"] == "json_too_deep"
    assert merchants() == 0


def test_deep_json_is_refused_on_an_idempotent_route_before_the_fingerprint(client, make_user, user_headers):
    headers = user_headers(make_user(), **{"Idempotency-Key": "deep-1"})
    deep = "[" * 5000 + "]" * 5000
    response = client.post("/api/v1/sign-in", data=deep, content_type="application/json", headers=headers)
    assert response.status_code < 500


def test_json_depth_counts_brackets_outside_strings_only():
    assert json_depth(b'{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert json_depth(b'"\\"[[["') == 0
    assert json_depth(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) == MAX_JSON_DEPTH


def test_json_at_the_depth_limit_still_parses(client, admin):
    nested = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    body = '{"name": "deep but fine", "tags": ' + nested + "}"
    response = client.post(MERCHANTS, data=body, content_type="application/json", headers=admin)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"  # parsed; the model refuses the unknown field


# --- chunked bodies -------------------------------------------------------------------------


def chunked(client, path: str, body: bytes, headers: dict, content_type: str = "application/json"):
    """What gunicorn or the dev server hands the app for ``Transfer-Encoding: chunked``: no
    Content-Length, a de-chunked ``wsgi.input`` and ``wsgi.input_terminated``."""
    environ = {
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "HTTP_TRANSFER_ENCODING": "chunked",
        "CONTENT_TYPE": content_type,
    }
    return client.open(path, method="POST", headers=headers, environ_overrides=environ)


def test_chunked_body_over_the_limit_is_413_not_truncated(client, admin, app):
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = json.dumps({"name": "chunky"}).encode()
    body = body + b" " * (limit + 1 - len(body))  # valid JSON once truncated at the limit
    response = chunked(client, MERCHANTS, body, admin)
    assert response.status_code == 413
    assert response.json["error"] == "request_entity_too_large"
    assert merchants() == 0


def test_chunked_body_within_the_limit_is_processed_whole(client, admin):
    response = chunked(client, MERCHANTS, json.dumps({"name": "chunky"}).encode(), admin)
    assert response.status_code == 201
    assert response.json["name"] == "chunky"


def test_chunked_wechat_callback_over_the_limit_is_413_in_wechat_format(client, app):
    body = b"{" + b" " * app.config["MAX_CONTENT_LENGTH"] + b"}"
    for path in ("/wechat/pay/notify", "/wechat/pay/refund-notify", "/wechat/transfer/notify"):
        response = chunked(client, path, body, {})
        assert response.status_code == 413, path
        assert response.json["code"] == "FAIL"
        assert isinstance(response.json["message"], str)


def test_chunked_wechat_callback_over_its_own_16k_limit_is_413(client):
    response = chunked(client, "/wechat/pay/notify", b"{" + b" " * 20_000 + b"}", {})
    assert response.status_code == 413
    assert response.json == {"code": "FAIL", "message": "body larger than 16384 bytes"}


# --- 405 ----------------------------------------------------------------------------------------


def test_405_carries_an_allow_header_and_the_json_error(client, admin):
    response = client.delete(MERCHANTS, headers=admin)
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert response.json["error"] == "method_not_allowed"
    response = client.get("/wechat/pay/notify")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.json["code"] == "FAIL"


# --- logs ---------------------------------------------------------------------------------------


def logged(message: str, *args, **extra) -> str:
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return JsonFormatter().format(record)


@pytest.mark.parametrize(
    "secret_param",
    ["token", "access_token", "device_token", "ticket", "jsapi_ticket", "sign", "password", "state", "key"],
)
def test_query_string_secrets_are_masked_in_logs(secret_param):
    line = logged('"GET /oauth/callback?%s=SUPERSECRET123&x=1 HTTP/1.1" 302 -', secret_param)
    assert "SUPERSECRET123" not in line
    assert "x=1" in line
    line = logged("request", url=f"https://api.weixin.qq.com/cgi-bin/ticket/getticket?{secret_param}=SUPERSECRET123")
    assert "SUPERSECRET123" not in line


def test_redirect_fragments_and_share_link_paths_are_masked_in_logs():
    assert "SECRETTOKEN" not in logged("redirect to /next#token=SECRETTOKEN")
    assert "sharetok123" not in logged("request", path="/api/v1/share-links/sharetok123/claim")


# --- NUL characters (PostgreSQL text cannot hold one) ------------------------------------------


def test_nul_in_a_json_string_is_refused_before_anything_is_written(client, admin):
    before = merchants()
    response = client.post(MERCHANTS, data=b'{"name": "shop\\u0000"}', content_type="application/json", headers=admin)
    assert (response.status_code, response.json["error"]) == (422, "invalid_json")
    assert "NUL" in response.json["message"]
    assert merchants() == before


def test_nul_in_the_path_is_404_and_in_the_query_422(client, make_user, user_headers):
    headers = user_headers(make_user())
    assert client.post("/api/v1/share-links/tok%00en/claim", headers=headers).status_code == 404
    response = client.get("/api/v1/me/payouts?limit=1%00", headers=headers)
    assert response.status_code == 422, response.json


def test_idempotency_key_reused_for_another_amount_after_its_record_expired_is_409(client, admin, make_merchant):
    from ledger import Leg, account, balance, post_entry
    from models import AccountKind, IdempotencyRecord

    shop = make_merchant()
    credit = account(AccountKind.MERCHANT_MARKETING_CREDIT, "merchant", shop.id)
    post_entry(
        "test:credit", "credit earned", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -10_00), Leg(credit, 10_00)]
    )
    db.session.commit()
    url = f"/admin/api/merchants/{shop.id}/credit/spends"
    headers = {**admin, "Idempotency-Key": "spend-1"}
    assert client.post(url, json={"amount_fen": 3_00, "reason": "promo 1"}, headers=headers).status_code == 201
    db.session.execute(IdempotencyRecord.__table__.delete())  # 25 h later: our record of the key is gone
    db.session.commit()

    again = client.post(url, json={"amount_fen": 2_00, "reason": "promo 1"}, headers=headers)

    assert (again.status_code, again.json["error"]) == (409, "ledger_key_reused"), again.json
    db.session.rollback()
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)) == 3_00


# --- JSON in another encoding: json.loads(bytes) would read UTF-16 and UTF-32, past the depth and NUL checks ----


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_json_that_is_not_utf8_is_refused_before_anything_is_written(client, admin, encoding):
    before = merchants()
    body = '{"name": "sh\\u0000op"}'.encode(encoding)
    response = client.post(MERCHANTS, data=body, content_type="application/json", headers=admin)
    assert (response.status_code, response.json["error"]) == (422, "invalid_json")
    assert "UTF-8" in response.json["message"]
    plain = '{"name": "a shop"}'.encode(encoding)  # even without a NUL: JSON between systems is UTF-8
    assert client.post(MERCHANTS, data=plain, content_type="application/json", headers=admin).status_code == 422
    assert merchants() == before


def test_utf16_cannot_hide_deep_nesting_from_the_depth_count(client, make_user, user_headers):
    # 丢 (U+4E22) is the bytes '"N' in UTF-16-LE: a byte-wise count would see a string swallowing the brackets
    deep = ('{"code": "丢", "x": ' + "[" * 5000 + "]" * 5000 + ', "y": "a"}').encode("utf-16-le")
    response = client.post("/api/v1/auth/login", data=deep, content_type="application/json")
    assert (response.status_code, response.json["error"]) == (422, "invalid_json")
    headers = user_headers(make_user(), **{"Idempotency-Key": "deep-16"})
    response = client.post("/api/v1/sign-in", data=deep, content_type="application/json", headers=headers)
    assert response.status_code == 200  # a route that reads no body: its key's fingerprint takes the bytes as they are


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul(client, admin):
    response = client.post(
        MERCHANTS, data=b'{"name": "C:\\\\u0000dir"}', content_type="application/json", headers=admin
    )
    assert response.status_code == 201, response.json
    assert response.json["name"] == "C:\\u0000dir"


def test_a_nul_in_a_key_or_deep_in_a_list_is_refused(client, admin):
    before = merchants()
    for body in (b'{"name": "shop", "x\\u0000": 1}', b'{"name": "shop", "tags": [["a", "b\\u0000"]]}'):
        response = client.post(MERCHANTS, data=body, content_type="application/json", headers=admin)
        assert (response.status_code, response.json["error"]) == (422, "invalid_json"), body
    assert merchants() == before


@pytest.mark.parametrize("written", ["1.0", "1_0", "+1", " 1", "1e1", "0x10", "\u0661"])  # \u0661: an Arabic-Indic one
def test_a_number_in_the_query_must_be_written_in_digits(client, make_user, user_headers, written):
    response = client.get("/api/v1/me/payouts", query_string={"limit": written}, headers=user_headers(make_user()))
    assert response.status_code == 422, response.json
    (detail,) = response.json["details"]
    assert detail["field"] == "limit"
    if written in ("1.0", "1_0", "+1", " 1"):  # what pydantic alone took for a number
        assert detail["problem"] == "Input should be a whole number written in digits"


def test_numbers_written_in_digits_still_page(client, make_user, user_headers):
    response = client.get("/api/v1/me/payouts?limit=2&offset=0", headers=user_headers(make_user()))
    assert response.status_code == 200, response.json


@pytest.mark.parametrize("escaped", ["\\ud800", "\\uDFFF", "a\\udc00b"])
def test_an_unpaired_surrogate_anywhere_in_the_json_is_refused_before_anything_is_written(client, admin, escaped):
    """A lone surrogate is no text a database column can hold (psycopg and sqlite3 cannot encode it): in a field
    pydantic checks as a string, or in a key or a free-form value it does not."""
    before = merchants()
    for body in (f'{{"name": "{escaped}"}}', f'{{"name": "shop", "{escaped}": 1}}', f'{{"name": ["x", "{escaped}"]}}'):
        response = client.post(MERCHANTS, data=body.encode(), content_type="application/json", headers=admin)
        assert (response.status_code, response.json["error"]) == (422, "invalid_json"), body
        assert "unpaired surrogate" in response.json["message"]
    assert merchants() == before
