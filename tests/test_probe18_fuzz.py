"""Probe 18: every operation of ``/openapi.json`` driven with input that breaks its schema, as each caller.

What a sweep of the document found: a DELETE whose body the document leaves out, instants and days taken as Unix
timestamps the document does not allow, and a header's NUL reaching PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from models import Ban, Campaign, IdempotencyRecord, Merchant, db

BANS = "/admin/api/bans"


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def count(model) -> int:
    db.session.rollback()
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


# --- the document tells a client every body a route reads -------------------------------------


def test_lifting_a_ban_documents_the_reason_its_delete_requires(client, admin, make_user):
    """``DELETE /admin/api/bans/<id>`` takes ``{"reason": …}`` and refuses a call without it (422 invalid_json), but
    the document gave a DELETE no requestBody: a client generated from it could never lift a ban."""
    doc = client.get("/openapi.json").json
    lift = doc["paths"]["/admin/api/bans/{ban_id}"]["delete"]
    schema = lift["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/LiftBan"}
    assert doc["components"]["schemas"]["LiftBan"]["required"] == ["reason"]

    body = {"subject": "user", "value": str(make_user().id), "reason": "fraud ring"}
    made = client.post(BANS, json=body, headers=admin)
    path = f"{BANS}/{made.json['id']}"
    assert client.delete(path, headers=admin).json["error"] == "invalid_json"  # what the document now says
    assert client.delete(path, json={"reason": "appeal granted"}, headers=admin).status_code == 200


# --- an instant or a day is written out, never a number ------------------------------------------


@pytest.mark.parametrize("ends_at", [2_000_000_000, "2000000000", 1_893_456_000_000, 2_000_000_000.5, " 2000000000 "])
def test_a_bans_end_given_as_a_unix_timestamp_is_refused_and_bans_nobody(client, admin, make_user, ends_at):
    """The document says ``ends_at`` is a date-time string; pydantic read a number (or its digits) as Unix seconds,
    or as milliseconds when large: a ban until 2033 from ``2000000000``, a unit guessed from the size."""
    body = {"subject": "user", "value": str(make_user().id), "reason": "fraud ring", "ends_at": ends_at}
    response = client.post(BANS, json=body, headers=admin)
    assert response.status_code == 422, response.json
    assert response.json["details"][0]["field"] == "ends_at"
    assert count(Ban) == 0


def test_a_campaigns_window_given_as_numbers_is_refused_and_makes_no_campaign(client, admin):
    body = {"name": "Spring", "issuer_type": "platform", "funder_type": "platform_fund", "starts_at": 2_000_000_000}
    response = client.post("/admin/api/campaigns", json=body, headers=admin)
    assert response.status_code == 422, response.json
    assert "starts_at" in {d["field"] for d in response.json["details"]}
    assert count(Campaign) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/admin/api/reports/overview?from=946684800&to=2000-01-31",  # 2000-01-01 as Unix seconds
        "/admin/api/reports/overview?from=2000-01-01&to=949276800",
        "/admin/api/audit-log?since=1700000000",
        "/admin/api/messages?since=1700000000",
        "/admin/api/challenges?since=1700000000.5",
    ],
)
def test_a_query_instant_or_day_written_as_digits_is_refused(client, admin, path):
    response = client.get(path, headers=admin)
    assert response.status_code == 422, response.json
    assert "not a number" in response.json["details"][0]["problem"]


def test_instants_and_days_written_out_still_work(client, admin, make_user):
    assert client.get("/admin/api/reports/overview?from=2030-01-01&to=2030-01-31", headers=admin).status_code == 200
    assert client.get("/admin/api/audit-log?since=2030-01-01T00:00:00%2B08:00", headers=admin).status_code == 200
    body = {"subject": "user", "value": str(make_user().id), "reason": "fraud ring", "ends_at": "2030-01-01T08:00:00Z"}
    made = client.post(BANS, json=body, headers=admin)
    assert made.status_code == 201, made.json
    assert made.json["ends_at"].startswith("2030-01-01T08:00:00")


# --- a NUL in a header never reaches the database ------------------------------------------------


def test_an_idempotency_key_holding_a_nul_is_refused_before_anything_is_written(client, admin):
    """The key is stored as sent: PostgreSQL text holds no NUL, so the claim's insert failed in the driver (500).
    gunicorn refuses such a header, but the guard is the app's own (as for the path, the query and JSON); only the key
    is refused: a User-Agent with one is kept without it (tests/test_console_outside.py)."""
    headers = {**admin, "Idempotency-Key": "retry\x00-1"}
    response = client.post("/admin/api/merchants", json={"name": "Noodles"}, headers=headers)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.json["error"] == "invalid_idempotency_key"
    assert (count(Merchant), count(IdempotencyRecord)) == (0, 0)
    assert client.post("/admin/api/merchants", json={"name": "Noodles"}, headers=admin).status_code == 201
