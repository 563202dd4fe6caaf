"""Probe 17: the web shell as an outside attacker meets it (guards, errors, logs)."""

import json
import logging
import sys

import pytest
from sqlalchemy.exc import IntegrityError

from models import User, UserIdentity, db
from web.logs import JsonFormatter

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"  # a real WeChat openid's shape: no ``op_`` prefix, no ``openid=``


def _logged_exception(exc: BaseException) -> dict:
    try:
        raise exc
    except BaseException:
        record = logging.LogRecord("web.errors", logging.ERROR, __file__, 1, "unhandled error", (), sys.exc_info())
    record.error = str(exc)  # the jobs' way: extra={"error": str(exc)}
    return json.loads(JsonFormatter().format(record))


def test_a_database_error_logged_never_shows_the_openid_it_was_writing(app, make_user):
    # given: a person's identity, and a second row with the same openid (a race, a bug: an unhandled error)
    user = make_user()
    db.session.execute(UserIdentity.__table__.update().values(openid=OPENID).where(UserIdentity.user_id == user.id))
    db.session.commit()
    other = User()
    db.session.add(other)
    db.session.flush()
    db.session.add(UserIdentity(user_id=other.id, appid="wx-test-app", openid=OPENID))
    with pytest.raises(IntegrityError) as caught:
        db.session.flush()
    db.session.rollback()
    # the engine hides the statement's parameters (app.HIDE_PARAMETERS); PostgreSQL's own detail still names the row
    assert "parameters hidden" in str(caught.value)
    # when: it is logged, as web.errors' "unhandled error" and the jobs' extra={"error": str(exc)} do
    line = _logged_exception(caught.value)
    # then: neither the traceback nor the field carries the openid
    assert OPENID not in json.dumps(line, ensure_ascii=False)
    assert "IntegrityError" in line["exc"]


def test_an_error_text_with_its_parameters_is_masked_in_the_log():
    """An engine made elsewhere (a script, a migration) does not hide them: the log masks them, and PostgreSQL's."""
    from web.logs import mask_text

    statement = "[SQL: INSERT INTO t VALUES (?, ?)]"
    text = (
        "(sqlite3.IntegrityError) UNIQUE constraint failed\n" + statement + "\n"
        f"[parameters: ('wx-test-app', '{OPENID}')]\nDETAIL:  Key (appid, openid)=(wx-test-app, {OPENID}) "
        f"already exists.\nFailing row contains (7, {OPENID}, x)."
    )
    masked = mask_text(text)
    assert OPENID not in masked
    assert "[parameters: ***]" in masked and "Key (appid, openid)=(***)" in masked


def test_a_query_parameter_given_twice_is_refused_not_half_answered(client, make_operator):
    # given: two admins, each with a line in the audit log
    first, first_headers = make_operator("admin")
    second, second_headers = make_operator("admin")
    assert client.post("/admin/api/merchants", json={"name": "By first"}, headers=first_headers).status_code == 201
    assert client.post("/admin/api/merchants", json={"name": "By second"}, headers=second_headers).status_code == 201
    # when: an auditor asks for both operators' lines the way a query string writes a list
    response = client.get(f"/admin/api/audit-log?operator_id={first.id}&operator_id={second.id}", headers=first_headers)
    # then: refused, naming the parameter; not an answer holding only the first operator's lines
    assert response.status_code == 422, response.json
    assert response.json["error"] == "unprocessable_entity"
    assert "'operator_id' is given more than once" in response.json["message"]
    # and: one value each still answers
    alone = client.get(f"/admin/api/audit-log?operator_id={second.id}&limit=10", headers=first_headers)
    assert alone.status_code == 200
    assert {line["operator_id"] for line in alone.json["items"]} == {second.id}


def test_a_json_object_with_a_key_twice_is_refused_not_read_as_its_last(client, make_operator):
    # given: a key written twice (a proxy or a log may show the first; json.loads keeps the last)
    _, headers = make_operator("admin")
    body = b'{"name": "Shown Shop", "name": "Kept Shop"}'
    # when
    response = client.post("/admin/api/merchants", data=body, headers={**headers, "Content-Type": "application/json"})
    # then: refused as invalid JSON, naming the key; no merchant made under either name
    assert response.status_code == 422, response.json
    assert response.json["error"] == "invalid_json"
    assert "'name' more than once" in response.json["message"]
    assert client.get("/admin/api/merchants", headers=headers).json["items"] == []
