"""Operations: health, metrics, masked JSON logs and the command line."""

import json
import logging
import re
import sys

import pytest
from sqlalchemy import func, select, text

from models import AuditLog, Operator, OperatorToken, db
from web.auth import token_digest
from web.logs import JsonFormatter, mask_text

# --- /healthz ------------------------------------------------------------------------------


def test_healthz_ok_when_migrated(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"database": "ok", "migrations": "ok"}}


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_health_and_metrics_are_never_cached_on_the_way(client, path):
    """A proxy or load balancer keeping an answer would show an old health or old counters."""
    response = client.get(path)
    assert response.status_code in (200, 503)
    assert response.headers["Cache-Control"] == "no-store"


@pytest.fixture
def alembic_revision(app):
    """Set the recorded revision for a test; put the real one back after (PostgreSQL keeps its schema)."""
    real = db.session.execute(text("SELECT version_num FROM alembic_version")).scalar_one()

    def set_revision(revision: str) -> None:
        db.session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
        db.session.commit()

    yield set_revision
    db.session.rollback()
    set_revision(real)


def test_healthz_503_when_the_database_is_at_another_revision(client, alembic_revision):
    alembic_revision("0000_elsewhere")
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json["status"] == "fail"
    assert response.json["checks"]["database"] == "ok"
    assert response.json["checks"]["migrations"].startswith("behind: at ['0000_elsewhere'], head [")


def test_healthz_503_when_never_migrated(client, app):
    db.session.execute(text("DELETE FROM alembic_version"))
    db.session.commit()
    try:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json["checks"]["migrations"].startswith("behind: at nothing")
    finally:
        from flask_migrate import stamp

        stamp()


# --- /metrics ------------------------------------------------------------------------------


def test_metrics_count_requests_by_endpoint(client, make_operator):
    _, headers = make_operator("admin")
    client.get("/healthz")
    client.get("/healthz")
    client.get("/admin/api/merchants", headers=headers)
    client.get("/admin/api/merchants")  # 401
    client.get("/nowhere")
    body = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{endpoint="ops.healthz",method="GET",status="200"} 2.0' in body
    assert 'http_requests_total{endpoint="admin.list_merchants",method="GET",status="200"} 1.0' in body
    assert 'http_requests_total{endpoint="admin.list_merchants",method="GET",status="401"} 1.0' in body
    assert 'http_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0' in body
    assert 'http_request_duration_seconds_count{endpoint="ops.healthz",method="GET"} 2.0' in body
    assert "/nowhere" not in body  # labels are endpoints, never raw paths


def test_each_app_has_its_own_metrics(app, client):
    from app import create_app

    client.get("/healthz")
    other = create_app(dict(app.config))
    body = other.test_client().get("/metrics").get_data(as_text=True)
    assert 'endpoint="ops.healthz"' not in body


# --- JSON logs -----------------------------------------------------------------------------


def log_line(msg: str, args=(), **extra) -> dict:
    record = logging.LogRecord("rebate", logging.INFO, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return json.loads(JsonFormatter().format(record))


def test_log_line_is_json_with_extra_fields():
    line = log_line("payout %s sent", ("P-7",), payout_id=7, amount_fen=400)
    assert line["msg"] == "payout P-7 sent"
    assert line["level"] == "INFO"
    assert line["logger"] == "rebate"
    assert (line["payout_id"], line["amount_fen"]) == (7, 400)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", line["ts"])


@pytest.mark.parametrize(
    "name", ["openid", "unionid", "token", "access_token", "session_key", "app_secret", "authorization"]
)
def test_sensitive_extra_fields_are_masked(name):
    secret = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    line = log_line("login", **{name: secret})
    assert secret not in json.dumps(line)
    assert line[name] == "oUp***6o"


def test_short_secrets_are_fully_masked():
    assert log_line("x", token="abc")["token"] == "***"


def test_nested_extra_values_are_masked():
    secret = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    line = log_line(
        "wechat answered",
        response={"openid": secret, "errcode": 0, "items": [{"unionid": secret}]},
        url=f"https://api.weixin.qq.com/sns/jscode2session?js_code=CODE123&openid={secret}",
        headers=[f"Bearer {secret}"],
    )
    dumped = json.dumps(line)
    assert secret not in dumped
    assert "CODE123" not in dumped
    assert line["response"]["errcode"] == 0


@pytest.mark.parametrize(
    ("message", "leak"),
    [
        ("Authorization: Bearer eyJ1aWQiOjF9.Zx9a.sig-value_1", "eyJ1aWQiOjF9"),
        ("bearer abc.def.ghi refused", "abc.def.ghi"),
        ("callback openid=oUpF8uMuAJO_M2pxb1Q9zNjWeS6o&x=1", "oUpF8uMuAJO"),
        ("unionid=o6_bmasdasdsad6_2sgVt7hMZOPfL done", "o6_bmasdasdsad6"),
        ('body {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"}', "oUpF8uMuAJO"),
        ('body {"session_key": "tiihtNczf5v6AKRyjwEUhQ=="}', "tiihtNczf5v6"),
        ("token op_AbCdEfGhIjKlMnOp used", "op_AbCdEfGhIjKlMnOp"),
    ],
)
def test_secrets_in_messages_are_masked(message, leak):
    line = log_line(message)
    assert leak not in line["msg"]
    assert leak not in mask_text(message)


def test_messages_with_percent_args_are_masked_after_formatting():
    line = log_line("user %s logged in with openid=%s", (5, "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"))
    assert line["msg"] == "user 5 logged in with openid=***"


def test_exceptions_are_masked():
    try:
        raise ValueError("bad Bearer op_secretsecretsecret")
    except ValueError:
        record = logging.LogRecord("rebate", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "op_secretsecretsecret" not in line["exc"]
    assert "ValueError" in line["exc"]


# --- flask operators create ----------------------------------------------------------------


def test_cli_creates_first_admin_whose_token_works(app, client):
    result = app.test_cli_runner().invoke(args=["operators", "create", "--username", "root"])
    assert result.exit_code == 0, result.output
    assert "operator root (admin) created" in result.output
    token = result.output.strip().splitlines()[-1]
    assert token.startswith("op_")
    db.session.rollback()
    operator = db.session.execute(select(Operator).filter_by(username="root")).scalar_one()
    assert (operator.role, operator.display_name, operator.merchant_id) == ("admin", "root", None)
    stored = db.session.execute(select(OperatorToken).filter_by(operator_id=operator.id)).scalar_one()
    assert stored.token_sha256 == token_digest(token)
    [row] = db.session.execute(select(AuditLog)).scalars().all()
    assert (row.operator_id, row.action, row.target_id, row.reason) == (
        None,
        "operator.create",
        str(operator.id),
        "created from the command line",
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/admin/api/merchants", headers=headers).status_code == 200
    created = client.post("/admin/api/merchants", json={"name": "First"}, headers=headers)
    assert created.status_code == 201


def test_cli_merchant_staff_needs_a_merchant(app):
    result = app.test_cli_runner().invoke(
        args=["operators", "create", "--username", "shop", "--role", "merchant_staff"]
    )
    assert result.exit_code == 2
    assert "--merchant-id is required for merchant_staff" in result.output
    assert db.session.execute(select(func.count(Operator.id))).scalar_one() == 0


def test_cli_merchant_staff_for_a_missing_merchant_fails_cleanly(app):
    result = app.test_cli_runner().invoke(
        args=["operators", "create", "--username", "shop", "--role", "merchant_staff", "--merchant-id", "999"]
    )
    assert result.exit_code == 1
    assert "merchant 999 not found" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    db.session.rollback()
    assert db.session.execute(select(func.count(Operator.id))).scalar_one() == 0


def test_cli_merchant_staff_for_a_merchant(app, make_merchant):
    merchant = make_merchant()
    result = app.test_cli_runner().invoke(
        args=[
            "operators",
            "create",
            "--username",
            "shop",
            "--role",
            "merchant_staff",
            "--merchant-id",
            str(merchant.id),
        ]
    )
    assert result.exit_code == 0, result.output
    db.session.rollback()
    operator = db.session.execute(select(Operator).filter_by(username="shop")).scalar_one()
    assert operator.merchant_id == merchant.id


def test_cli_admin_with_merchant_is_refused(app, make_merchant):
    merchant = make_merchant()
    result = app.test_cli_runner().invoke(
        args=["operators", "create", "--username", "x", "--merchant-id", str(merchant.id)]
    )
    assert result.exit_code == 2


def test_cli_duplicate_username_fails(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["operators", "create", "--username", "root"]).exit_code == 0
    again = runner.invoke(args=["operators", "create", "--username", "root"])
    assert again.exit_code == 1
    assert "operator 'root' exists" in again.output
    db.session.rollback()
    assert db.session.execute(select(func.count(Operator.id))).scalar_one() == 1
    assert db.session.execute(select(func.count(AuditLog.id))).scalar_one() == 1


def test_cli_refuses_a_username_mixing_scripts(app):
    result = app.test_cli_runner().invoke(args=["operators", "create", "--username", "r\u043eot"])  # a Cyrillic о
    assert result.exit_code == 1
    assert "mixes the scripts CYRILLIC, LATIN" in result.output
    db.session.rollback()
    assert db.session.execute(select(func.count(Operator.id))).scalar_one() == 0


def test_metrics_with_a_token_set_answer_only_its_holder(app, client):
    app.config["METRICS_TOKEN"] = "scrape-me"
    try:
        refused = [
            client.get("/metrics", headers=h).status_code
            for h in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer scrape-me-too"})
        ]
        allowed = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    finally:
        app.config["METRICS_TOKEN"] = None
    assert refused == [401, 401, 401]
    assert allowed.status_code == 200 and b"http_requests_total" in allowed.data
