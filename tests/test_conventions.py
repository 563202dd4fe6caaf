"""API conventions: Idempotency-Key, the OpenAPI document, error bodies, body size, user tokens."""

import re
from datetime import timedelta

import pytest
import time_machine
from flask import Blueprint
from sqlalchemy import func, select

from models import AuditLog, IdempotencyRecord, Merchant, User, UserStatus, db, utcnow
from tests.concurrency import together
from web.api import endpoint
from web.idempotency import request_fingerprint
from web.schemas import Model, Name

MERCHANTS = "/admin/api/merchants"
ROUTE = "POST /admin/api/merchants"


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def records() -> list[IdempotencyRecord]:
    db.session.rollback()
    return list(db.session.execute(select(IdempotencyRecord).order_by(IdempotencyRecord.id)).scalars())


def fingerprint(app, body: dict) -> str:
    with app.test_request_context(MERCHANTS, method="POST", json=body):
        return request_fingerprint()


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")


def with_key(headers: dict, key: str) -> dict:
    return {**headers, "Idempotency-Key": key}


# --- Idempotency-Key -----------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_answer(client, admin):
    operator, headers = admin
    first = client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(headers, "k-1"))
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    # the same JSON with other key order and spacing is the same request
    again = client.post(
        MERCHANTS, data='{ "name" :"Tea House" }', content_type="application/json", headers=with_key(headers, "k-1")
    )
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert count(Merchant) == 1
    assert count(AuditLog) == 1
    [record] = records()
    assert (record.scope, record.route, record.key, record.state) == (f"operator:{operator.id}", ROUTE, "k-1", "done")
    assert record.response_status == 201
    assert record.response_body == first.json
    assert timedelta(hours=24, minutes=59) < record.expires_at - record.created_at <= timedelta(hours=25)


def test_same_key_with_another_body_is_422(client, admin):
    _, headers = admin
    client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(headers, "k-2"))
    response = client.post(MERCHANTS, json={"name": "Coffee House"}, headers=with_key(headers, "k-2"))
    assert response.status_code == 422
    assert response.json["error"] == "idempotency_key_reused"
    assert count(Merchant) == 1


def test_same_key_on_another_route_is_independent(client, admin, make_merchant):
    _, headers = admin
    merchant = make_merchant()
    a = client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(headers, "k-3"))
    b = client.post(
        f"{MERCHANTS}/{merchant.id}/products",
        json={"name": "Tea", "category": "drinks", "price_fen": 500},
        headers=with_key(headers, "k-3"),
    )
    assert (a.status_code, b.status_code) == (201, 201)
    assert sorted(r.route for r in records()) == [ROUTE, "POST /admin/api/merchants/<int:merchant_id>/products"]


def test_in_progress_key_is_409(app, client, admin):
    operator, headers = admin
    body = {"name": "Tea House"}
    now = utcnow()
    db.session.add(
        IdempotencyRecord(
            scope=f"operator:{operator.id}",
            route=ROUTE,
            key="k-4",
            request_sha256=fingerprint(app, body),
            locked_at=now,
            expires_at=now + timedelta(hours=25),
        )
    )
    db.session.commit()
    response = client.post(MERCHANTS, json=body, headers=with_key(headers, "k-4"))
    assert response.status_code == 409
    assert response.json["error"] == "idempotency_in_progress"
    assert count(Merchant) == 0
    assert [r.state for r in records()] == ["in_progress"]


def test_stale_in_progress_key_is_taken_over(app, client, admin):
    operator, headers = admin
    body = {"name": "Tea House"}
    now = utcnow()
    db.session.add(
        IdempotencyRecord(
            scope=f"operator:{operator.id}",
            route=ROUTE,
            key="k-5",
            request_sha256=fingerprint(app, body),
            created_at=now - timedelta(minutes=2),
            locked_at=now - timedelta(minutes=2),
            expires_at=now + timedelta(hours=25),
        )
    )
    db.session.commit()
    response = client.post(MERCHANTS, json=body, headers=with_key(headers, "k-5"))
    assert response.status_code == 201
    assert count(Merchant) == 1
    [record] = records()
    assert (record.state, record.response_status) == ("done", 201)
    replay = client.post(MERCHANTS, json=body, headers=with_key(headers, "k-5"))
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert count(Merchant) == 1


def test_expired_key_is_replaced(client, admin):
    operator, headers = admin
    past = utcnow() - timedelta(hours=30)
    db.session.add(
        IdempotencyRecord(
            scope=f"operator:{operator.id}",
            route=ROUTE,
            key="k-6",
            request_sha256="0" * 64,  # another request, long ago
            state="done",
            response_status=201,
            response_body={"id": 999},
            created_at=past,
            locked_at=past,
            expires_at=past + timedelta(hours=25),
        )
    )
    db.session.commit()
    response = client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(headers, "k-6"))
    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response.headers
    assert response.json["id"] != 999
    [record] = records()
    assert record.response_body == response.json
    assert record.expires_at > utcnow() + timedelta(hours=24)


def test_keys_are_scoped_per_caller(client, make_operator):
    _, first = make_operator("admin")
    _, second = make_operator("admin")
    a = client.post(MERCHANTS, json={"name": "One"}, headers=with_key(first, "shared"))
    b = client.post(MERCHANTS, json={"name": "Two"}, headers=with_key(second, "shared"))
    assert (a.status_code, b.status_code) == (201, 201)
    assert a.json["id"] != b.json["id"]
    assert count(Merchant) == 2
    assert len(records()) == 2


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_bad_keys_are_422(client, admin, key):
    response = client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(admin[1], key))
    assert response.status_code == 422
    assert response.json["error"] == "invalid_idempotency_key"
    assert count(Merchant) == 0
    assert records() == []


def test_key_of_128_characters_is_fine(client, admin):
    response = client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(admin[1], "k" * 128))
    assert response.status_code == 201


def test_conflict_is_not_stored_and_can_be_retried(client, admin, make_merchant):
    _, headers = admin
    taken = make_merchant("Tea House")
    first = client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(headers, "k-7"))
    assert first.status_code == 409
    assert records() == []
    db.session.delete(db.session.get(Merchant, taken.id))
    db.session.commit()
    retry = client.post(MERCHANTS, json={"name": "Tea House"}, headers=with_key(headers, "k-7"))
    assert retry.status_code == 201


def test_client_error_answer_is_stored_and_replayed(client, admin):
    _, headers = admin
    body = {"name": "Tea", "category": "drinks", "price_fen": 500}
    first = client.post(f"{MERCHANTS}/4242/products", json=body, headers=with_key(headers, "k-8"))
    again = client.post(f"{MERCHANTS}/4242/products", json=body, headers=with_key(headers, "k-8"))
    assert (first.status_code, again.status_code) == (404, 404)
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"


def test_validation_failure_is_not_stored(client, admin):
    _, headers = admin
    assert client.post(MERCHANTS, json={"name": ""}, headers=with_key(headers, "k-9")).status_code == 422
    assert records() == []
    assert client.post(MERCHANTS, json={"name": "ok"}, headers=with_key(headers, "k-9")).status_code == 201


def test_concurrent_duplicates_make_one_merchant(app, admin):
    _, headers = admin

    def post(_: int) -> tuple[int, dict]:
        response = app.test_client().post(MERCHANTS, json={"name": "Hot Shop"}, headers=with_key(headers, "race"))
        return response.status_code, response.json

    answers = together(10, post)

    assert count(Merchant) == 1
    merchant_id = db.session.execute(select(Merchant.id)).scalar_one()
    for status, body in answers:
        assert status in (201, 409), (status, body)
        if status == 201:
            assert body["id"] == merchant_id
        else:
            assert body["error"] == "idempotency_in_progress"
    assert any(status == 201 for status, _ in answers)
    assert count(AuditLog) == 1


# --- OpenAPI -------------------------------------------------------------------------------


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?(\w+)>", r"{\1}", rule)


def test_openapi_lists_every_route_with_request_schemas(app, client):
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = openapi_path(rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if rule.endpoint.startswith("wechat_sim."):  # the simulator is WeChat's API, not ours
                assert path not in doc["paths"], path
                continue
            if rule.endpoint.startswith("console."):  # the console's pages are for browsers, not an API
                assert path not in doc["paths"], path
                continue
            assert (path, method.lower()) in documented, (path, method)
    create = doc["paths"]["/admin/api/merchants"]["post"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in create["parameters"])
    product = doc["paths"]["/admin/api/merchants/{merchant_id}/products"]["post"]
    product_schema = doc["components"]["schemas"]["CreateProduct"]
    assert product["requestBody"]["required"] is True
    assert product_schema["properties"]["price_fen"]["type"] == "integer"
    assert product_schema["properties"]["price_fen"]["exclusiveMinimum"] == 0
    assert product["parameters"][0] == {
        "name": "merchant_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    }
    for path, operations in doc["paths"].items():
        assert "<" not in path and ">" not in path, path
        for operation in operations.values():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            assert names == re.findall(r"{(\w+)}", path), path
    listing = doc["paths"]["/admin/api/merchants"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "offset"}
    assert listing["security"] == [{"operatorToken": []}]


def test_openapi_has_a_request_body_for_every_endpoint_with_a_body(app, client):
    doc = client.get("/openapi.json").json
    for rule in app.url_map.iter_rules():
        meta = getattr(app.view_functions[rule.endpoint], "_api", None)
        if not meta or meta["body"] is None:
            continue
        path = openapi_path(rule.rule)
        for method in rule.methods & {"POST", "PUT", "PATCH"}:
            operation = doc["paths"][path][method.lower()]
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{meta['body'].__name__}"
            assert meta["body"].__name__ in doc["components"]["schemas"]


def test_openapi_refs_all_resolve(client):
    doc = client.get("/openapi.json").json

    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = set(refs(doc))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


def test_openapi_document_validates_when_the_validator_is_installed(client):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(client.get("/openapi.json").json)


# --- errors and body size ------------------------------------------------------------------


def test_body_over_max_content_length_is_413_json(client, admin):
    big = {"name": "x", "reason": "y" * (64 * 1024)}
    response = client.post(MERCHANTS, json=big, headers=admin[1])
    assert response.status_code == 413
    assert response.json["error"] == "request_entity_too_large"
    assert isinstance(response.json["message"], str)
    assert count(Merchant) == 0


def test_unknown_route_is_json_404(client):
    response = client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert set(response.json) == {"error", "message"}


class LimitHit(Exception):
    kind = "limit"
    code = "claim_limit"
    retry_after = 30


@pytest.fixture
def test_routes(app):
    """A tiny blueprint, registered before the first request."""
    bp = Blueprint("test_only", __name__, url_prefix="/_test")

    class Echo(Model):
        name: Name

    @endpoint(bp, "/me", auth="user")
    def me():
        """Who am I."""
        from flask import g

        return {"user_id": g.user.id}

    @endpoint(bp, "/echo", methods=["POST"], auth="user", body=Echo, idempotent=True)
    def echo(body: Echo):
        return {"name": body.name}, 201

    @endpoint(bp, "/boom", auth=None)
    def boom():
        raise RuntimeError("secret detail")

    @endpoint(bp, "/limited", auth=None)
    def limited():
        raise LimitHit("too many claims today")

    app.register_blueprint(bp)
    return bp


def test_unexpected_error_is_json_500_without_details(client, test_routes):
    response = client.get("/_test/boom")
    assert response.status_code == 500
    assert response.json == {"error": "internal_error", "message": "internal error"}


def test_domain_error_maps_by_kind_with_retry_after(client, test_routes):
    response = client.get("/_test/limited")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "30"
    assert response.json == {"error": "claim_limit", "message": "too many claims today"}


# --- user bearer tokens --------------------------------------------------------------------


def test_user_token_round_trip(client, test_routes, make_user, user_headers):
    user = make_user()
    response = client.get("/_test/me", headers=user_headers(user))
    assert response.status_code == 200
    assert response.json == {"user_id": user.id}


def test_each_request_authenticates_anew(client, test_routes, make_user, user_headers):
    alice, bob = make_user(), make_user()
    assert client.get("/_test/me", headers=user_headers(alice)).json == {"user_id": alice.id}
    assert client.get("/_test/me", headers=user_headers(bob)).json == {"user_id": bob.id}
    assert client.get("/_test/me").status_code == 401


def test_expired_user_token_is_401(app, client, test_routes, make_user, user_headers):
    headers = user_headers(make_user())
    ttl = app.config["USER_TOKEN_TTL_SECONDS"]
    with time_machine.travel(utcnow() + timedelta(seconds=ttl - 60)):
        assert client.get("/_test/me", headers=headers).status_code == 200
    with time_machine.travel(utcnow() + timedelta(seconds=ttl + 60)):
        response = client.get("/_test/me", headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "token_expired"


def test_tampered_and_foreign_tokens_are_401(app, client, test_routes, make_user, user_headers):
    from itsdangerous import URLSafeTimedSerializer

    user = make_user()
    token = user_headers(user)["Authorization"].split()[1]
    payload, stamp, signature = token.split(".")
    # the first character: the last one carries bits base64 ignores
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    other_user = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="user-token-v1").dumps({"uid": user.id + 1})
    payload_swap = other_user.split(".")[0] + f".{stamp}.{signature}"
    wrong_secret = URLSafeTimedSerializer("another-secret", salt="user-token-v1").dumps({"uid": user.id})
    wrong_salt = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt="oauth-state").dumps({"uid": user.id})
    for bad in (f"{payload}.{stamp}.{flipped}", payload_swap, wrong_secret, wrong_salt, "garbage", other_user):
        response = client.get("/_test/me", headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, bad
        assert response.json["error"] == "invalid_token"


def test_banned_user_is_403(client, test_routes, make_user, user_headers):
    user = make_user()
    headers = user_headers(user)
    user.status = UserStatus.BANNED
    db.session.commit()
    response = client.get("/_test/me", headers=headers)
    assert response.status_code == 403
    assert response.json["error"] == "user_banned"
    assert client.post("/_test/echo", json={"name": "x"}, headers=headers).status_code == 403


@pytest.mark.parametrize("header", [None, "", "Bearer", "Token abc", "bearer"])
def test_missing_user_token_is_401(client, test_routes, header):
    headers = {} if header is None else {"Authorization": header}
    response = client.get("/_test/me", headers=headers)
    assert response.status_code == 401
    assert response.json["error"] == "missing_token"


def test_operator_token_is_not_a_user_token(client, test_routes, admin):
    assert client.get("/_test/me", headers=admin[1]).status_code == 401


def test_user_idempotency_scope_is_the_user(client, test_routes, make_user, user_headers):
    alice, bob = make_user(), make_user()
    a = client.post("/_test/echo", json={"name": "x"}, headers=user_headers(alice, **{"Idempotency-Key": "same"}))
    b = client.post("/_test/echo", json={"name": "x"}, headers=user_headers(bob, **{"Idempotency-Key": "same"}))
    assert (a.status_code, b.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in b.headers
    assert sorted(r.scope for r in records()) == sorted([f"user:{alice.id}", f"user:{bob.id}"])
    assert db.session.get(User, alice.id) is not None
