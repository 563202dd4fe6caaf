"""Sign out everywhere: a person whose phone was lost ends every other session at once (users.token_generation)."""

from __future__ import annotations

from models import User, db
from web.auth import issue_user_token


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_signing_out_everywhere_refuses_every_earlier_token_and_keeps_the_asking_device(client, make_user):
    # given: a person signed in on a lost phone (the mini-program) and on this device (the official account)
    person = make_user()
    lost_phone, here = issue_user_token(person, "mini_program"), issue_user_token(person, "official_account")
    db.session.commit()
    assert client.get("/api/v1/me/wallet", headers=bearer(lost_phone)).status_code == 200

    # when
    answer = client.post("/api/v1/auth/sign-out-everywhere", headers=bearer(here))

    # then: both earlier tokens are refused, in words; the new one works, for the channel that asked
    assert answer.status_code == 200, answer.json
    for old in (lost_phone, here):
        refused = client.get("/api/v1/me/wallet", headers=bearer(old))
        assert (refused.status_code, refused.json["error"]) == (401, "token_revoked")
    fresh = answer.json["token"]
    assert client.get("/api/v1/me/wallet", headers=bearer(fresh)).status_code == 200
    db.session.expire_all()
    assert db.session.get(User, person.id).token_generation == 1
    # a later sign-in is issued under the new generation; another person's tokens are untouched
    again = issue_user_token(db.session.get(User, person.id))
    assert client.get("/api/v1/me/wallet", headers=bearer(again)).status_code == 200
    other = make_user()
    db.session.commit()
    assert client.get("/api/v1/me/wallet", headers=bearer(issue_user_token(other))).status_code == 200


def test_sign_out_everywhere_needs_a_live_token_and_changes_nothing_without_one(client, make_user):
    person = make_user()
    token = issue_user_token(person)
    db.session.commit()
    for headers in ({}, bearer("not-a-token"), bearer(token + "x")):
        assert client.post("/api/v1/auth/sign-out-everywhere", headers=headers).status_code == 401
    db.session.expire_all()
    assert db.session.get(User, person.id).token_generation == 0
    assert client.get("/api/v1/me/wallet", headers=bearer(token)).status_code == 200


def test_a_token_with_a_forged_generation_is_invalid(client, app, make_user):
    from itsdangerous import URLSafeTimedSerializer

    from web.auth import USER_TOKEN_SALT

    person = make_user()
    db.session.commit()
    sign = URLSafeTimedSerializer(app.config["SECRET_KEY"], salt=USER_TOKEN_SALT).dumps
    for generation in ("1", -1, 2**40, True, 1.0):
        answer = client.get("/api/v1/me/wallet", headers=bearer(sign({"uid": person.id, "gen": generation})))
        assert (answer.status_code, answer.json["error"]) == (401, "invalid_token"), generation
    answer = client.get("/api/v1/me/wallet", headers=bearer(sign({"uid": person.id, "gen": 3})))  # not theirs
    assert (answer.status_code, answer.json["error"]) == (401, "token_revoked")
