"""An admin, finance or support account another admin makes works once a second admin confirmed it.

Four eyes rest on the two pairs being two people; the 72-hour rule (tests/test_four_eyes_independence.py) keeps a
fresh sock from approving its maker's proposals, and this keeps an admin from making one at all on their own: the
account's token answers 403 ``operator_unconfirmed`` until an admin who is not its maker (nor of the maker's recent
making) confirms it (support decides review cases: it releases held rebates). Merchant staff accounts, their own
merchant's things only, work at once; the command line (shell
access is trusted) confirms for a platform with a single admin.
"""

from __future__ import annotations

import uuid

import pytest
from click.testing import CliRunner

from models import AuditLog, Operator, db
from tests.test_wechat_callbacks import table_counts

OPERATORS = "/admin/api/operators"


def made_by(client, headers, role: str = "finance") -> tuple[int, dict]:
    body = {"username": f"new-{uuid.uuid4().hex[:8]}", "display_name": "New colleague", "role": role, "reason": "hired"}
    made = client.post(OPERATORS, json=body, headers=headers)
    assert made.status_code == 201, made.json
    assert made.json["confirmed"] is False
    return made.json["id"], {"Authorization": f"Bearer {made.json['token']}"}


def confirm(client, headers, operator_id: int):
    return client.post(
        f"{OPERATORS}/{operator_id}/confirm", json={"reason": "met them, checked the id"}, headers=headers
    )


def audits(action: str) -> list[AuditLog]:
    db.session.expire_all()
    return list(db.session.execute(db.select(AuditLog).where(AuditLog.action == action)).scalars())


@pytest.mark.parametrize("role", ["finance", "admin", "support"])
def test_a_new_platform_account_works_once_a_second_admin_confirms_it(client, make_operator, role):
    # given: an admin makes an account that moves or approves money
    maker, maker_h = make_operator("admin")
    new_id, new_h = made_by(client, maker_h, role)
    before = table_counts()
    # then: its token is refused, for reads and writes, and nothing is written
    for answer in (client.get("/admin/api/merchants", headers=new_h), client.post(OPERATORS, json={}, headers=new_h)):
        assert (answer.status_code, answer.json["error"]) == (403, "operator_unconfirmed")
    assert table_counts() == before
    # when: its maker confirms it, or an admin the maker just made
    own = confirm(client, maker_h, new_id)
    _, sock_h = made_by(client, maker_h, "admin")
    sock = db.session.execute(db.select(Operator).where(Operator.id != new_id).order_by(Operator.id.desc())).scalar()
    sock.confirmed_at = sock.created_at  # (even confirmed itself)
    db.session.commit()
    socks = confirm(client, sock_h, new_id)
    # then: refused; the account still waits
    assert (own.status_code, own.json["error"]) == (403, "same_operator")
    assert (socks.status_code, socks.json["error"]) == (403, "approver_not_independent")
    assert client.get("/admin/api/merchants", headers=new_h).status_code == 403
    # when: an admin somebody else made confirms it
    second, second_h = make_operator("admin")
    done = confirm(client, second_h, new_id)
    # then: confirmed, audited, and its token works; a second confirmation is 409
    assert done.status_code == 200, done.json
    assert (done.json["confirmed_by_operator_id"], done.json["role"]) == (second.id, role)
    assert client.get("/admin/api/merchants", headers=new_h).status_code == 200
    assert [(a.operator_id, a.target_id) for a in audits("operator.confirm")] == [(second.id, str(new_id))]
    again = confirm(client, second_h, new_id)
    assert (again.status_code, again.json["error"]) == (409, "operator_confirmed")
    assert maker.id != second.id


@pytest.mark.parametrize("role", ["merchant_staff"])
def test_merchant_staff_accounts_work_at_once(client, make_operator, make_merchant, role):
    _, maker_h = make_operator("admin")
    body = {"username": f"s-{uuid.uuid4().hex[:6]}", "display_name": "Helper", "role": role, "reason": "hired"}
    if role == "merchant_staff":
        body["merchant_id"] = make_merchant().id
    made = client.post(OPERATORS, json=body, headers=maker_h)
    assert made.status_code == 201 and made.json["confirmed"] is True, made.json
    headers = {"Authorization": f"Bearer {made.json['token']}"}
    assert client.get("/admin/api/merchants", headers=headers).status_code == 200


def test_only_admins_confirm_and_list_and_an_unknown_account_is_404(client, make_operator):
    _, maker_h = make_operator("admin")
    new_id, _ = made_by(client, maker_h)
    _, finance_h = make_operator("finance")
    assert confirm(client, finance_h, new_id).status_code == 403
    _, other_h = make_operator("admin")
    assert confirm(client, other_h, 999_999).status_code == 404
    assert confirm(client, other_h, new_id).status_code == 200
    bad = client.post(f"{OPERATORS}/{new_id}/confirm", json={"reason": ""}, headers=other_h)
    assert bad.status_code == 422


def test_the_unconfirmed_are_listed_for_admins(client, make_operator):
    _, maker_h = make_operator("admin")
    new_id, _ = made_by(client, maker_h)
    listed = client.get(f"{OPERATORS}?unconfirmed=true", headers=maker_h)
    assert [o["id"] for o in listed.json["items"]] == [new_id]
    assert listed.json["items"][0]["confirmed_at"] is None
    everyone = client.get(OPERATORS, headers=maker_h).json["items"]
    assert len(everyone) == 2 and all(o["confirmed_at"] for o in everyone if o["id"] != new_id)


def test_the_command_line_confirms_for_a_platform_with_one_admin(app, client, make_operator):
    _, maker_h = make_operator("admin")
    new_id, new_h = made_by(client, maker_h)
    username = db.session.get(Operator, new_id).username
    runner = CliRunner()
    cli = app.cli
    result = runner.invoke(cli, ["operators", "confirm", "--username", username, "--reason", "the only admin"])
    assert result.exit_code == 0, result.output
    assert client.get("/admin/api/merchants", headers=new_h).status_code == 200
    again = runner.invoke(cli, ["operators", "confirm", "--username", username, "--reason", "again"])
    assert again.exit_code != 0 and "confirmed already" in again.output
    assert [a.operator_id for a in audits("operator.confirm")] == [None]


# -- the console ----------------------------------------------------------------------------------------------


def test_the_console_lists_the_waiting_accounts_and_a_second_admin_confirms_one(client, make_operator):
    from tests.console_helpers import post, sign_in

    _, maker_h = make_operator("admin")
    new_id, new_h = made_by(client, maker_h)
    # the unconfirmed account cannot sign in to the console either
    from tests.console_helpers import csrf_of

    form_csrf = csrf_of(client.get("/console/sign-in").get_data(as_text=True))
    token = new_h["Authorization"].split()[1]
    unconfirmed = client.post("/console/sign-in", data={"token": token, "csrf_token": form_csrf})
    assert unconfirmed.status_code == 403 and "second admin confirms it" in unconfirmed.get_data(as_text=True)
    # its maker sees it waiting, and is refused the confirmation beside it
    csrf = sign_in(client, maker_h)
    page = client.get("/console/operators").get_data(as_text=True)
    assert f'data-operator="{new_id}"' in page and 'id="waiting"' in page
    refused = post(client, f"/console/operators/{new_id}/confirm", {"reason": "my own colleague"}, csrf)
    assert refused.status_code == 403 and "does not confirm it" in refused.get_data(as_text=True)
    client.post("/console/sign-out", data={"csrf_token": csrf})
    # a second admin confirms it from the page
    _, second_h = make_operator("admin")
    csrf = sign_in(client, second_h)
    done = post(client, f"/console/operators/{new_id}/confirm", {"reason": "checked in person"}, csrf)
    assert done.status_code == 302
    assert client.get("/admin/api/merchants", headers=new_h).status_code == 200
    assert "Nobody is waiting" in client.get("/console/operators").get_data(as_text=True)


@pytest.mark.parametrize("role", ["finance", "support", "merchant_staff"])
def test_only_admins_see_the_operators_page(client, make_operator, role):
    from tests.console_helpers import sign_in

    _, headers = make_operator(role)
    sign_in(client, headers)
    assert client.get("/console/operators").status_code == 403


def test_a_new_operators_token_is_kept_sealed_in_the_stored_answer_and_replayed_whole(client, make_operator):
    """A lost answer is recovered by its Idempotency-Key; the table (and its backups) holds no live token (probe)."""
    from models import IdempotencyRecord

    _, maker_h = make_operator("admin")
    body = {"username": "keyed-new", "display_name": "New colleague", "role": "support", "reason": "hired"}
    keyed = {**maker_h, "Idempotency-Key": "make-keyed-new"}
    first = client.post(OPERATORS, json=body, headers=keyed)
    replay = client.post(OPERATORS, json=body, headers=keyed)
    assert first.status_code == replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == first.json and first.json["token"].startswith("op_")
    db.session.expire_all()
    stored = db.session.execute(db.select(IdempotencyRecord.response_body)).scalars().all()
    assert all(first.json["token"] not in str(b) for b in stored)
    assert any(str(b.get("token", "")).startswith("sealed:") for b in stored if isinstance(b, dict))
