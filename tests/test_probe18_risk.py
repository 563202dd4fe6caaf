"""Probe 18: anti-fraud — review cases, bans, risk rules, and the operator confirmation they rest on. Both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from models import AuditLog, Ban, Operator, db, utcnow
from models.operators import Actor, OperatorForbidden, confirm_operator
from risk.limits import ban_refusal
from tests.test_bans import ban
from tests.test_operator_confirmation import made_by


def test_an_admin_disabled_while_their_confirm_runs_confirms_nothing(client, make_operator):
    """``disable_operator`` re-reads the acting admin's own row under a lock (an admin disabled meanwhile acts no
    more); ``confirm_operator`` trusted the row read when the request was authenticated: an admin disabled (a leaked
    token, someone who left) between that read and the confirm still confirmed a money-moving account."""
    maker, maker_h = make_operator("admin")
    confirmer, _ = make_operator("admin")
    new_id, _ = made_by(client, maker_h, "finance")
    acting = db.session.get(Operator, confirmer.id)
    assert acting.active  # as the request's authentication read it
    # meanwhile: another admin disables the confirmer (committed before the confirm reads anything)
    db.session.execute(
        update(Operator)
        .where(Operator.id == confirmer.id)
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    with pytest.raises(OperatorForbidden) as refused:
        confirm_operator(Actor(acting), new_id, "met them", utcnow())
    assert refused.value.code == "operator_disabled"
    db.session.rollback()
    assert db.session.get(Operator, new_id).confirmed_at is None
    assert not db.session.execute(db.select(AuditLog).where(AuditLog.action == "operator.confirm")).first()


def test_a_network_ban_written_as_ipv4_mapped_ipv6_bans_that_ipv4_network_or_is_refused(client, make_operator):
    """Claims from a dual-stack socket's ``::ffff:10.1.2.7`` are matched as ``10.1.2.7`` (``risk.net``), so an
    operator copying such an address from a log writes its /24 as ``::ffff:10.1.2.0/120``: that was refused
    ("an IPv6 /48 or one address"), and ``::ffff:10.1.2.0/48`` was kept as ``::/48`` — a ban answered 201 that
    no claim can ever match (every IPv4-mapped address is looked up as IPv4)."""
    _, admin = make_operator("admin")
    now = utcnow()
    # the IPv4 /24 written in its IPv4-mapped form: the IPv4 network itself is banned
    made = ban(client, admin, "net", "::ffff:10.1.2.0/120")
    assert made.status_code == 201, made.get_json()
    assert made.get_json()["value"] == "10.1.2.0/24"
    assert ban_refusal(None, "10.1.2.9", now) is not None
    assert ban_refusal(None, "::ffff:10.1.2.200", now) is not None
    # an IPv6 network reaching over the IPv4-mapped addresses bans nothing a claim is matched against: refused
    before = db.session.execute(db.select(db.func.count()).select_from(Ban)).scalar_one()
    for value in ("::ffff:10.9.9.0/48", "::/48", "::ffff:10.9.9.0/104"):
        refused = ban(client, admin, "net", value)
        assert (refused.status_code, refused.get_json()["error"]) == (422, "ban_value"), value
    assert db.session.execute(db.select(db.func.count()).select_from(Ban)).scalar_one() == before
