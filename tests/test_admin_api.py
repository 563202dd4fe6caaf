"""Admin API: merchants, products, operators, the audit log; roles, scopes and bad input."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from models import AuditLog, Merchant, Operator, OperatorToken, Product, db, utcnow
from web.auth import token_digest

MERCHANTS = "/admin/api/merchants"


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def table_counts() -> dict[str, int]:
    return {m.__name__: count(m) for m in (Merchant, Product, Operator, OperatorToken, AuditLog)}


def audit_rows() -> list[AuditLog]:
    db.session.rollback()
    return list(db.session.execute(select(AuditLog).order_by(AuditLog.id)).scalars())


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")


# --- happy paths ---------------------------------------------------------------------------


def test_admin_creates_merchant_with_one_audit_row(client, admin):
    operator, headers = admin
    response = client.post(MERCHANTS, json={"name": "  Noodle House ", "reason": "signed contract"}, headers=headers)
    assert response.status_code == 201, response.json
    body = response.json
    assert body["name"] == "Noodle House"
    assert body["status"] == "active"
    merchant = db.session.get(Merchant, body["id"])
    assert merchant.name == "Noodle House"
    [row] = audit_rows()
    assert (row.operator_id, row.action, row.target_type, row.target_id, row.reason) == (
        operator.id,
        "merchant.create",
        "merchant",
        str(body["id"]),
        "signed contract",
    )
    assert row.details == {"name": "Noodle House"}
    assert row.ip == "127.0.0.1"


def test_list_and_get_merchants(client, admin, make_merchant):
    _, headers = admin
    a, b = make_merchant("A"), make_merchant("B")
    listed = client.get(MERCHANTS, headers=headers)
    assert listed.status_code == 200
    assert [m["name"] for m in listed.json["items"]] == ["A", "B"]
    page = client.get(f"{MERCHANTS}?limit=1&offset=1", headers=headers)
    assert [m["id"] for m in page.json["items"]] == [b.id]
    one = client.get(f"{MERCHANTS}/{a.id}", headers=headers)
    assert one.status_code == 200
    assert one.json["name"] == "A"
    missing = client.get(f"{MERCHANTS}/999999", headers=headers)
    assert missing.status_code == 404
    assert missing.json["error"] == "not_found"


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=abc", "offset=-1", "color=red"])
def test_list_merchants_refuses_bad_paging(client, admin, query):
    response = client.get(f"{MERCHANTS}?{query}", headers=admin[1])
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"


def test_admin_creates_and_lists_products(client, admin, make_merchant):
    operator, headers = admin
    merchant = make_merchant()
    response = client.post(
        f"{MERCHANTS}/{merchant.id}/products",
        json={"name": "Beef noodles", "category": "food", "price_fen": 3_200},
        headers=headers,
    )
    assert response.status_code == 201, response.json
    assert response.json == {
        "id": response.json["id"],
        "merchant_id": merchant.id,
        "name": "Beef noodles",
        "category": "food",
        "price_fen": 3_200,
        "active": True,
    }
    listed = client.get(f"{MERCHANTS}/{merchant.id}/products", headers=headers)
    assert [p["price_fen"] for p in listed.json["items"]] == [3_200]
    [row] = audit_rows()
    assert (row.operator_id, row.action, row.target_id) == (operator.id, "product.create", str(response.json["id"]))
    assert row.details == {"merchant_id": merchant.id, "price_fen": 3_200}


def test_product_reason_is_audited(client, admin, make_merchant):
    merchant = make_merchant()
    response = client.post(
        f"{MERCHANTS}/{merchant.id}/products",
        json={"name": "Tea", "category": "drinks", "price_fen": 800, "reason": "menu update"},
        headers=admin[1],
    )
    assert response.status_code == 201, response.json
    assert audit_rows()[0].reason == "menu update"


def test_duplicate_product_is_409(client, admin, make_product):
    product = make_product(name="Tea")
    before = table_counts()
    response = client.post(
        f"{MERCHANTS}/{product.merchant_id}/products",
        json={"name": "Tea", "category": "drinks", "price_fen": 800},
        headers=admin[1],
    )
    assert response.status_code == 409
    assert response.json["error"] == "duplicate_product"
    assert table_counts() == before


def test_product_on_missing_merchant_is_404(client, admin):
    before = table_counts()
    response = client.post(
        f"{MERCHANTS}/4242/products", json={"name": "Tea", "category": "drinks", "price_fen": 800}, headers=admin[1]
    )
    assert response.status_code == 404
    assert table_counts() == before


def test_admin_creates_operator_whose_token_works(client, admin, make_merchant):
    operator, headers = admin
    merchant = make_merchant()
    response = client.post(
        "/admin/api/operators",
        json={
            "username": "li.wei",
            "display_name": "Li Wei",
            "role": "merchant_staff",
            "merchant_id": merchant.id,
            "reason": "new shop manager",
        },
        headers=headers,
    )
    assert response.status_code == 201, response.json
    token = response.json["token"]
    assert token.startswith("op_")
    assert response.json["role"] == "merchant_staff"
    created = db.session.get(Operator, response.json["id"])
    assert created.merchant_id == merchant.id
    # only the digest is stored
    stored = db.session.execute(select(OperatorToken).filter_by(operator_id=created.id)).scalar_one()
    assert stored.token_sha256 == token_digest(token)
    assert token not in stored.token_sha256
    mine = client.get(MERCHANTS, headers={"Authorization": f"Bearer {token}"})
    assert [m["id"] for m in mine.json["items"]] == [merchant.id]
    [row] = audit_rows()
    assert (row.operator_id, row.action, row.target_id, row.reason) == (
        operator.id,
        "operator.create",
        str(created.id),
        "new shop manager",
    )
    assert row.details == {"role": "merchant_staff", "merchant_id": merchant.id}


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        ({"role": "merchant_staff"}, 422, "merchant_scope"),
        ({"role": "finance", "merchant_id": 1}, 422, "merchant_scope"),
        ({"role": "merchant_staff", "merchant_id": 999}, 404, "not_found"),
        ({"role": "root"}, 422, "validation_error"),
        ({"role": "admin", "reason": "no"}, 422, "validation_error"),
        ({"role": "admin", "reason": None}, 422, "validation_error"),
    ],
)
def test_create_operator_refuses(client, admin, make_merchant, extra, status, code):
    make_merchant()
    before = table_counts()
    body = {"username": "x", "display_name": "X", "reason": "because", **extra}
    response = client.post("/admin/api/operators", json=body, headers=admin[1])
    assert response.status_code == status, response.json
    assert response.json["error"] == code
    assert table_counts() == before


def _full_width(name: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in name)


def _zero_width(name: str) -> str:
    return name[:1] + "\u200b" + name[1:]


# FIN1 beside fin1 (or ｆｉｎ１, or f​in1 with a zero-width space) would read as one person in the audit log
@pytest.mark.parametrize("same", [str, str.upper, _full_width, _zero_width])
def test_duplicate_operator_is_409(client, admin, same):
    operator, headers = admin
    before = table_counts()
    body = {"username": same(operator.username), "display_name": "X", "role": "support", "reason": "again"}
    response = client.post("/admin/api/operators", json=body, headers=headers)
    assert response.status_code == 409
    assert response.json["error"] == "duplicate_operator"
    assert table_counts() == before


def test_a_name_that_folds_long_is_stored_not_a_500(client, admin):
    body = {"username": "\ufdfa" * 64, "display_name": "X", "role": "support", "reason": "a long ligature"}
    assert client.post("/admin/api/operators", json=body, headers=admin[1]).status_code == 201


def test_the_database_refuses_a_second_name_the_app_check_did_not_see(app, admin):
    """Two creates at once both pass the app's read; the unique key stops the second (409, not 500)."""
    from sqlalchemy.exc import IntegrityError

    from models import Operator

    operator, _ = admin
    db.session.add(Operator(username=operator.username.upper(), display_name="X", role="support"))
    with pytest.raises(IntegrityError):
        db.session.flush()
    db.session.rollback()


def test_audit_log_lists_newest_first_for_admin_and_finance(client, admin, make_operator):
    _, headers = admin
    client.post(MERCHANTS, json={"name": "One"}, headers=headers)
    client.post(MERCHANTS, json={"name": "Two", "reason": "second shop"}, headers=headers)
    for role in ("admin", "finance"):
        hdrs = headers if role == "admin" else make_operator("finance")[1]
        response = client.get("/admin/api/audit-log", headers=hdrs)
        assert response.status_code == 200
        assert [(a["action"], a["reason"], a["details"]) for a in response.json["items"]] == [
            ("merchant.create", "second shop", {"name": "Two"}),
            ("merchant.create", None, {"name": "One"}),
        ]
    for role in ("support", "merchant_staff"):
        assert client.get("/admin/api/audit-log", headers=make_operator(role)[1]).status_code == 403


def test_audit_log_filters_by_operator_action_target_and_time(client, admin, make_operator):
    operator, headers = admin
    one = client.post(MERCHANTS, json={"name": "One"}, headers=headers).json["id"]
    other, other_headers = make_operator("admin")
    client.post(MERCHANTS, json={"name": "Two"}, headers=other_headers)
    client.post(
        f"{MERCHANTS}/{one}/products", json={"name": "Tea", "category": "tea", "price_fen": 100}, headers=headers
    )

    def actions(query: str) -> list[str]:
        answer = client.get(f"/admin/api/audit-log?{query}", headers=headers)
        assert answer.status_code == 200, answer.json
        return [a["action"] for a in answer.json["items"]]

    assert actions(f"operator_id={other.id}") == ["merchant.create"]
    assert actions("action=merchant.create") == ["merchant.create", "merchant.create"]
    assert actions("action=product.") == ["product.create"]
    assert actions(f"target_type=merchant&target_id={one}") == ["merchant.create"]
    now = utcnow()
    assert len(actions(f"since={(now - timedelta(minutes=5)).isoformat().replace('+', '%2B')}")) == 3
    assert actions(f"until={(now - timedelta(minutes=5)).isoformat().replace('+', '%2B')}") == []
    before = table_counts()
    for bad in ("action=DROP%20TABLE", "operator_id=abc", "since=yesterday", "since=2026-01-01T00:00", "colour=red"):
        answer = client.get(f"/admin/api/audit-log?{bad}", headers=headers)
        assert answer.status_code == 422, bad
    assert table_counts() == before


def test_duplicate_merchant_name_is_409_and_changes_nothing(client, admin, make_merchant):
    make_merchant("Noodle House")
    before = table_counts()
    response = client.post(MERCHANTS, json={"name": "Noodle House"}, headers=admin[1])
    assert response.status_code == 409
    assert response.json == {"error": "duplicate_merchant", "message": "a merchant named 'Noodle House' exists"}
    assert table_counts() == before


# --- bad input: 422 with {"error", "message"}, nothing changed -------------------------------

BAD_BODIES = [
    ("malformed json", b'{"name": "x"', "application/json", "invalid_json"),
    ("trailing garbage", b'{"name": "x"} x', "application/json", "invalid_json"),
    ("NaN literal", b'{"name": "x", "price_fen": NaN}', "application/json", "invalid_json"),
    ("wrong content type", b'{"name": "x"}', "text/plain", "invalid_json"),
    ("form content type", b"name=x", "application/x-www-form-urlencoded", "invalid_json"),
    ("empty body", b"", "application/json", "invalid_json"),
    ("not utf-8", b'{"name": "\xff"}', "application/json", "invalid_json"),
    ("array", b"[]", "application/json", "validation_error"),
    ("null", b"null", "application/json", "validation_error"),
    ("string", b'"x"', "application/json", "validation_error"),
]


@pytest.mark.parametrize(("case", "raw", "content_type", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_create_merchant_refuses_bad_bodies(client, admin, case, raw, content_type, code):
    before = table_counts()
    response = client.post(MERCHANTS, data=raw, content_type=content_type, headers=admin[1])
    assert response.status_code == 422, response.json
    assert response.json["error"] == code
    assert isinstance(response.json["message"], str) and response.json["message"]
    assert table_counts() == before


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"name": 12},
        {"name": ["x"]},
        {"name": "x" * 65},
        {"name": "ok", "unknown": 1},
        {"name": "ok", "reason": "x" * 501},
        {"name": "ok", "id": 5},
    ],
)
def test_create_merchant_refuses_bad_fields(client, admin, body):
    before = table_counts()
    response = client.post(MERCHANTS, json=body, headers=admin[1])
    assert response.status_code == 422, response.json
    assert response.json["error"] == "validation_error"
    assert response.json["message"] == "request does not validate"
    assert response.json["details"] and all({"field", "problem"} <= set(d) for d in response.json["details"])
    assert table_counts() == before


def test_merchant_name_of_64_chinese_characters_is_fine(client, admin):
    name = "面" * 64
    response = client.post(MERCHANTS, json={"name": name}, headers=admin[1])
    assert response.status_code == 201
    assert db.session.get(Merchant, response.json["id"]).name == name


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price_fen", "100"),
        ("price_fen", 1.5),
        ("price_fen", 100.0),
        ("price_fen", True),
        ("price_fen", False),
        ("price_fen", None),
        ("price_fen", -1),
        ("price_fen", 0),
        ("price_fen", 10**13 + 1),
        ("price_fen", 10**30),
        ("price_fen", [100]),
        ("name", "x" * 65),
        ("name", ""),
        ("category", ""),
        ("category", "c" * 33),
        ("category", "food; drop table"),
        ("merchant_id", 2),
        ("active", False),
    ],
)
def test_create_product_refuses_bad_fields(client, admin, make_merchant, field, value):
    merchant = make_merchant()
    before = table_counts()
    body = {"name": "Tea", "category": "drinks", "price_fen": 800, field: value}
    response = client.post(f"{MERCHANTS}/{merchant.id}/products", json=body, headers=admin[1])
    assert response.status_code == 422, response.json
    assert response.json["error"] == "validation_error"
    assert [d["field"] for d in response.json["details"]] == [field]
    assert table_counts() == before


def test_create_product_without_fields_names_each_missing_one(client, admin, make_merchant):
    merchant = make_merchant()
    response = client.post(f"{MERCHANTS}/{merchant.id}/products", json={}, headers=admin[1])
    assert response.status_code == 422
    assert sorted(d["field"] for d in response.json["details"]) == ["category", "name", "price_fen"]


def test_largest_price_is_accepted(client, admin, make_merchant):
    merchant = make_merchant()
    body = {"name": "Gold", "category": "luxury", "price_fen": 10**13}
    response = client.post(f"{MERCHANTS}/{merchant.id}/products", json=body, headers=admin[1])
    assert response.status_code == 201
    assert response.json["price_fen"] == 10**13


# --- authentication and roles ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer   "},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer op_not-a-real-token"},
    ],
)
def test_no_or_bad_token_is_401(client, headers):
    before = table_counts()
    for response in (
        client.get(MERCHANTS, headers=headers),
        client.post(MERCHANTS, json={"name": "x"}, headers=headers),
    ):
        assert response.status_code == 401
        assert response.json["error"] in {"missing_token", "invalid_token"}
    assert table_counts() == before


def test_user_token_is_not_an_operator_token(client, make_user, user_headers):
    response = client.get(MERCHANTS, headers=user_headers(make_user()))
    assert response.status_code == 401


def test_revoked_and_expired_operator_tokens_are_401(client, admin):
    operator, headers = admin
    token = db.session.execute(select(OperatorToken).filter_by(operator_id=operator.id)).scalar_one()
    assert client.get(MERCHANTS, headers=headers).status_code == 200
    token.revoked_at = utcnow()
    db.session.commit()
    assert client.get(MERCHANTS, headers=headers).status_code == 401
    token.revoked_at = None
    token.expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    response = client.get(MERCHANTS, headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "invalid_token"
    token.expires_at = utcnow() + timedelta(hours=1)
    db.session.commit()
    assert client.get(MERCHANTS, headers=headers).status_code == 200


def test_disabled_operator_is_403(client, admin):
    operator, headers = admin
    operator.active = False
    db.session.commit()
    before = table_counts()
    response = client.post(MERCHANTS, json={"name": "x"}, headers=headers)
    assert response.status_code == 403
    assert response.json["error"] == "operator_disabled"
    assert client.get(MERCHANTS, headers=headers).status_code == 403
    assert table_counts() == before


@pytest.mark.parametrize("role", ["support", "finance", "merchant_staff"])
def test_only_admin_creates_merchants_and_operators(client, make_operator, role):
    _, headers = make_operator(role)
    before = table_counts()
    response = client.post(MERCHANTS, json={"name": "x"}, headers=headers)
    assert response.status_code == 403
    assert response.json["error"] == "role_forbidden"
    body = {"username": "u", "display_name": "U", "role": "admin", "reason": "escalate"}
    assert client.post("/admin/api/operators", json=body, headers=headers).status_code == 403
    assert table_counts() == before


@pytest.mark.parametrize("role", ["support", "finance"])
def test_support_and_finance_cannot_create_products_but_can_read(client, make_operator, make_merchant, role):
    merchant = make_merchant()
    _, headers = make_operator(role)
    before = table_counts()
    body = {"name": "Tea", "category": "drinks", "price_fen": 800}
    assert client.post(f"{MERCHANTS}/{merchant.id}/products", json=body, headers=headers).status_code == 403
    assert table_counts() == before
    assert client.get(f"{MERCHANTS}/{merchant.id}", headers=headers).status_code == 200
    assert client.get(f"{MERCHANTS}/{merchant.id}/products", headers=headers).status_code == 200


def test_role_check_comes_before_body_validation(client, make_operator):
    _, headers = make_operator("support")
    response = client.post(MERCHANTS, data=b"{", content_type="application/json", headers=headers)
    assert response.status_code == 403


def test_merchant_staff_see_only_their_merchant(client, make_operator, make_merchant, make_product):
    own, other = make_merchant("Own"), make_merchant("Other")
    make_product(own, name="own tea")
    make_product(other, name="other tea")
    operator, headers = make_operator("merchant_staff", merchant=own)

    listed = client.get(MERCHANTS, headers=headers)
    assert [m["name"] for m in listed.json["items"]] == ["Own"]
    assert client.get(f"{MERCHANTS}/{own.id}", headers=headers).status_code == 200
    products = client.get(f"{MERCHANTS}/{own.id}/products", headers=headers)
    assert [p["name"] for p in products.json["items"]] == ["own tea"]

    # someone else's merchant does not exist for them: 404, not 403
    assert client.get(f"{MERCHANTS}/{other.id}", headers=headers).status_code == 404
    assert client.get(f"{MERCHANTS}/{other.id}/products", headers=headers).status_code == 404
    before = table_counts()
    body = {"name": "Sneaky", "category": "drinks", "price_fen": 800}
    response = client.post(f"{MERCHANTS}/{other.id}/products", json=body, headers=headers)
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert table_counts() == before

    # their own catalogue they may extend
    created = client.post(f"{MERCHANTS}/{own.id}/products", json=body, headers=headers)
    assert created.status_code == 201
    assert audit_rows()[-1].operator_id == operator.id


def test_unknown_admin_route_and_wrong_method_answer_json(client, admin):
    missing = client.get("/admin/api/nothing-here", headers=admin[1])
    assert missing.status_code == 404
    assert set(missing.json) == {"error", "message"}
    wrong = client.delete(MERCHANTS, headers=admin[1])
    assert wrong.status_code == 405
    assert wrong.json["error"] == "method_not_allowed"


# аdmin (a Cyrillic а) or Ωmega beside Omega reads as another operator in the audit log: refused before anything
@pytest.mark.parametrize("username", ["\u0430dmin", "p\u0430yp\u0430l", "\u03a9mega", "\u0430\u03b2c"])
def test_a_username_mixing_scripts_a_reader_cannot_tell_apart_is_422(client, admin, username):
    before = table_counts()
    body = {"username": username, "display_name": "X", "role": "support", "reason": "a lookalike"}
    response = client.post("/admin/api/operators", json=body, headers=admin[1])
    assert response.status_code == 422, response.json
    assert response.json["error"] == "username_mixed_scripts"
    assert "mixes the scripts" in response.json["message"]
    assert table_counts() == before


@pytest.mark.parametrize(
    "username", ["\u5f20san", "tanaka\u592a\u90ce", "\u0438\u0432\u0430\u043d", "caf\u00e9", "kim\uae40"]
)
def test_names_of_one_script_or_latin_beside_han_kana_or_hangul_are_taken(client, admin, username):
    body = {"username": username, "display_name": "X", "role": "support", "reason": "a colleague"}
    assert client.post("/admin/api/operators", json=body, headers=admin[1]).status_code == 201
