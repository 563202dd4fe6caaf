"""``/openapi.json`` tells the truth: schemathesis drives every operation in-process and finds no 5xx
and no status the document does not list."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from models import db
from rebate import issue_packet
from web.guards import MAX_ID

EXAMPLES_PER_OPERATION = 12  # about 60 operations × 2 modes: under a minute on SQLite
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def doc(client):
    return client.get("/openapi.json").json


def test_document_is_valid_openapi(doc):
    validate(doc)


def test_success_codes_are_the_real_ones(doc):
    assert set(doc["paths"]["/admin/api/merchants"]["post"]["responses"]) == {"201", "4XX", "503"}
    assert "200" in doc["paths"]["/admin/api/merchants"]["get"]["responses"]
    assert "201" in doc["paths"]["/api/v1/orders"]["post"]["responses"]
    assert {"200", "502", "503"} <= set(doc["paths"]["/api/v1/auth/login"]["post"]["responses"])
    for path in ("/oauth/authorize", "/oauth/callback"):
        responses = doc["paths"][path]["get"]["responses"]
        assert "302" in responses and "200" not in responses
        assert "Location" in responses["302"]["headers"]
    health = doc["paths"]["/healthz"]["get"]["responses"]
    assert set(health) == {"200", "503"}
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_card_answers_and_user_payouts_are_documented(doc):
    schemas = doc["components"]["schemas"]
    consume = doc["paths"]["/admin/api/cards/consume"]["post"]
    assert consume["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/CardConsumed")
    assert set(schemas["CardConsumed"]["properties"]) == {"consumed", "card_id", "payout_id"}
    assert {"code", "encrypt_code", "card_id"} <= set(schemas["CardCode"]["properties"])
    assert "encrypt_code" in schemas["EncryptedCardCode"]["required"]
    assert "/api/v1/me/payouts/{payout_id}/card-code" in doc["paths"]
    assert {"reason", "package_info"} <= set(schemas["UserPayout"]["properties"])
    mine = doc["paths"]["/api/v1/me/payouts"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert mine["$ref"].endswith("/UserPayouts")


def test_wechat_callbacks_document_wechats_own_format(doc):
    fail = doc["components"]["schemas"]["WeChatFail"]
    assert fail["required"] == ["code", "message"]
    for path in ("/wechat/pay/notify", "/wechat/pay/refund-notify", "/wechat/transfer/notify"):
        operation = doc["paths"][path]["post"]
        assert "204" in operation["responses"] and "content" not in operation["responses"]["204"]
        for status in ("4XX", "500", "503"):
            schema = operation["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/WeChatFail"}
        assert {p["name"] for p in operation["parameters"]} >= {"Wechatpay-Signature", "Wechatpay-Serial"}


def test_the_simulator_is_not_part_of_the_document(doc):
    assert not [path for path in doc["paths"] if path.startswith("/_sim")]


def test_integer_path_parameters_are_bounded(doc):
    for operations in doc["paths"].values():
        for operation in operations.values():
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["schema"].get("type") == "integer":
                    assert param["schema"]["maximum"] == MAX_ID


def test_documented_status_answers_match_what_routes_answer(client, make_operator, make_user, user_headers):
    admin = make_operator("admin")[1]
    assert client.post("/admin/api/merchants", json={"name": "Noodles"}, headers=admin).status_code == 201
    assert client.get("/oauth/authorize").status_code in (302, 503)
    user = user_headers(make_user())
    assert client.post("/api/v1/devices", headers=user).status_code == 201


@pytest.fixture
def world(app, make_user, user_headers, make_operator, make_product, make_campaign):
    """A little of everything, so generated small ids often hit real rows."""
    from models import utcnow

    product = make_product(price_fen=50_00)
    rules = {"roles": [{"role": "consumer", "rate_bps": 800, "form": "balance", "cap_fen": 10_00}]}
    campaign = make_campaign(rules, packet_amount_fen=10_00, packet_min_spend_fen=20_00)
    user = make_user()
    issue_packet(campaign, user, source="test", source_ref="contract", now=utcnow())
    db.session.commit()
    return {
        "userToken": user_headers(user)["Authorization"],
        "operatorToken": make_operator("admin")[1]["Authorization"],
        "product": product,
    }


def _token(operation, world: dict) -> str | None:
    for requirement in operation.definition.raw.get("security", []):
        for scheme in requirement:
            return world[scheme]
    return None


def _exercise(operation, mode: GenerationMode, headers: dict) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def exercise(case):
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    exercise()


def test_schemathesis_finds_no_server_error_and_no_undocumented_status(app, world):
    # Card redemption goes to the simulator's own /card/code/decrypt and /card/code/consume.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 50
    for operation in operations:
        token = _token(operation, world)
        headers = {"Authorization": token} if token else {}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            parts = (operation.path_parameters, operation.query, operation.headers, operation.body)
            if mode == GenerationMode.NEGATIVE and not any(len(part) for part in parts):
                continue  # nothing to make invalid
            try:
                _exercise(operation, mode, headers)
            except (Exception, BaseExceptionGroup) as exc:  # collected: one run reports every failing operation
                failures.append(f"{operation.label} [{mode}]: {exc}"[:1500])
            db.session.rollback()
    assert not failures, "\n\n".join(failures)
