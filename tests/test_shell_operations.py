"""The thin shell's leftovers, moved below it (issue 10, item 1): each is an operation that takes the actor
and values explicitly and only flushes; the view calls it once and the decorator commits once.

* the rail switch and the real-name release (payouts/controls.py), and one ``rail_is_on`` for the listing;
* operator creation with its scope rule (models/operators.py) and a deposit top-up (rebate/deposit_ops.py);
* device ids handed out by a rebate operation taking the risk slot; GET /me/invite committed by the decorator.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import has_request_context
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from models import AuditLog, Operator, OperatorToken, RailControl, db
from models.operators import Actor, MerchantNotFound, MerchantScopeError, create_operator, token_digest
from payouts.controls import rail_is_on, set_real_name, switch_rail
from rebate.claims import DEVICE_IDS_PER_IP_PER_DAY, new_device_id
from rebate.deposit_ops import approve_top_up, propose_top_up
from rebate.errors import NotFound
from risk import LimitHit

NOW = datetime(2025, 3, 5, 4, 0, tzinfo=UTC)
RAILS = "/admin/api/rails"


def count(model, *where) -> int:
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


@pytest.fixture
def commits_in_requests():
    """How many times the database session commits while a request is being answered (savepoints aside)."""
    seen = []

    def counted(session):
        if has_request_context() and not session.in_nested_transaction():
            seen.append(session)

    event.listen(Session, "after_commit", counted)
    yield seen
    event.remove(Session, "after_commit", counted)


# --- rails: one predicate -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("control", "on"),
    [
        (None, True),
        (RailControl(rail="wechat_change", enabled=True), True),
        (RailControl(rail="wechat_change", enabled=False), False),
        (RailControl(rail="wechat_change", enabled=True, paused_until=NOW + timedelta(seconds=1)), False),
        (RailControl(rail="wechat_change", enabled=True, paused_until=NOW), True),
        (RailControl(rail="wechat_change", enabled=False, paused_until=NOW - timedelta(hours=1)), False),
    ],
)
def test_a_rail_is_on_without_a_control_or_switched_on_and_not_paused(control, on):
    assert rail_is_on(control, NOW) is on


def test_the_listing_shows_a_pause_and_the_rail_on_again_once_it_has_passed(client, make_operator):
    _, headers = make_operator("admin")
    now = datetime.now(UTC)
    db.session.add(RailControl(rail="wechat_change", enabled=True, paused_until=now + timedelta(hours=1)))
    db.session.add(RailControl(rail="cash_red_packet", enabled=True, paused_until=now - timedelta(hours=1)))
    db.session.commit()

    listed = {r["rail"]: r for r in client.get(RAILS, headers=headers).json["items"]}

    assert listed["wechat_change"]["enabled"] is False and listed["wechat_change"]["paused_until"] is not None
    assert listed["cash_red_packet"]["enabled"] is True and listed["cash_red_packet"]["paused_until"] is not None


def test_switching_a_rail_is_an_operation_that_flushes_and_audits_and_leaves_the_commit(make_operator):
    admin, _ = make_operator("admin")
    admin_id = admin.id
    db.session.commit()

    control = switch_rail(Actor(admin, "10.0.0.1"), "wechat_change", False, "WeChat incident", NOW)

    assert (control.enabled, control.reason, control.updated_at) == (False, "WeChat incident", NOW)
    assert count(AuditLog, AuditLog.action == "rail.switch", AuditLog.operator_id == admin_id) == 1
    db.session.rollback()  # the caller's one commit never happened: nothing stays
    assert count(RailControl) == 0 and count(AuditLog) == 0


def test_setting_a_real_name_with_nothing_deferred_releases_nothing(make_user):
    amy = make_user()

    assert set_real_name(amy, "张三", NOW) == 0
    assert amy.real_name == "张三"


# --- operators and deposits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "with_merchant"),
    [("merchant_staff", False), ("admin", True), ("support", True)],
)
def test_the_operator_scope_rule_is_the_operations(make_operator, make_merchant, role, with_merchant):
    admin, _ = make_operator("admin")
    merchant_id = make_merchant().id if with_merchant else None
    before = count(Operator)

    with pytest.raises(MerchantScopeError) as refused:
        create_operator(Actor(admin), "newbie", "New Bie", role, merchant_id, "hire")

    assert (refused.value.code, refused.value.kind) == ("merchant_scope", "invalid")
    db.session.rollback()
    assert count(Operator) == before


def test_an_operator_for_an_unknown_or_unseen_merchant_is_not_found(make_operator, make_merchant):
    admin, _ = make_operator("admin")
    staff, _ = make_operator("merchant_staff")
    other = make_merchant()

    with pytest.raises(MerchantNotFound):
        create_operator(Actor(admin), "newbie", "New Bie", "merchant_staff", 999_999, "hire")
    with pytest.raises(MerchantNotFound):
        create_operator(Actor(staff), "newbie", "New Bie", "merchant_staff", other.id, "hire")


def test_creating_an_operator_writes_the_row_the_first_token_and_the_audit_line(make_operator, make_merchant):
    admin, _ = make_operator("admin")
    merchant = make_merchant()

    operator, token = create_operator(Actor(admin), "cashier", "Cashier", "merchant_staff", merchant.id, "new shop")

    assert (operator.role, operator.merchant_id) == ("merchant_staff", merchant.id)
    [stored] = db.session.execute(select(OperatorToken).filter_by(operator_id=operator.id)).scalars()
    assert (stored.token_sha256, stored.label) == (token_digest(token), "initial")
    [line] = db.session.execute(select(AuditLog).filter_by(action="operator.create")).scalars()
    assert (line.operator_id, line.target_id, line.reason) == (admin.id, str(operator.id), "new shop")


def test_a_deposit_top_up_of_another_merchant_is_not_found_and_posts_nothing(make_operator, make_merchant):
    staff, _ = make_operator("merchant_staff")
    other = make_merchant()

    with pytest.raises(NotFound):
        propose_top_up(Actor(staff), other.id, 100_00, "paid in", "direct")
    assert count(AuditLog) == 0


def test_a_deposit_top_up_is_audited_and_answers_the_balance(make_operator, make_merchant):
    finance, _ = make_operator("finance")
    admin, _ = make_operator("admin")
    merchant = make_merchant()

    proposal = propose_top_up(Actor(finance), merchant.id, 100_00, "paid in", "direct")
    _, held = approve_top_up(Actor(admin), proposal.id, "bank slip seen", "direct")

    assert held == 100_00
    [line] = db.session.execute(select(AuditLog).filter_by(action="merchant.deposit_top_up")).scalars()
    assert (line.target_id, line.details) == (
        str(merchant.id),
        {"amount_fen": 100_00, "proposal_id": proposal.id, "proposed_by": finance.id},
    )


# --- growth ---------------------------------------------------------------------------------------


def test_device_ids_come_from_a_rebate_operation_that_takes_the_risk_slot(app):
    ids = {new_device_id("10.1.2.3", NOW) for _ in range(DEVICE_IDS_PER_IP_PER_DAY)}

    with pytest.raises(LimitHit) as refused:
        new_device_id("10.1.2.3", NOW)

    assert len(ids) == DEVICE_IDS_PER_IP_PER_DAY
    assert refused.value.code == "device_tokens"
    assert new_device_id("10.9.9.9", NOW)  # another network address has its own day


def test_reading_the_invite_code_commits_once_by_the_decorator_and_keeps_the_code(
    client, make_user, user_headers, commits_in_requests
):
    amy = make_user()
    headers = user_headers(amy)

    first = client.get("/api/v1/me/invite", headers=headers)
    second = client.get("/api/v1/me/invite", headers=headers)

    assert first.status_code == second.status_code == 200
    assert first.json["invite_code"] == second.json["invite_code"]
    assert len(commits_in_requests) == 2  # one per request


@pytest.mark.parametrize("module", ["growth_api", "admin", "payouts_api", "campaign_admin"])
def test_no_view_of_these_blueprints_commits_itself(module):
    """The decorator (web/api.py) commits once; a view calls operations that only flush."""
    path = Path(__file__).resolve().parents[1] / "web" / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    views = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(isinstance(d, ast.Call) and getattr(d.func, "id", None) == "endpoint" for d in node.decorator_list)
    ]
    assert views
    committing = [
        view.name
        for view in views
        for node in ast.walk(view)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit"
    ]
    assert committing == []
