"""The demo's clock (web/demo_clock.py): simulator mode only, admin only, audited; a finished challenge stays."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from challenges import ChallengeSpec, create_challenge, join_challenge, settle_challenge
from models import AuditLog, Challenge, ChallengeStatus, db, utcnow
from tests.challenge_helpers import fund


@pytest.fixture
def challenge(make_user):
    alice, bob = make_user(), make_user()
    fund(alice.id, 10_00)
    fund(bob.id, 10_00)
    created = create_challenge(alice.id, ChallengeSpec(kind="steps", days=1, stake=1_00), utcnow())
    join_challenge(created.id, bob.id, utcnow())
    db.session.commit()
    return created


def url(challenge_id: int) -> str:
    return f"/admin/api/sim/challenges/{challenge_id}/days-ago"


def test_a_challenge_moves_back_and_the_move_is_audited(client, challenge, make_operator):
    _, headers = make_operator("admin")
    start, join_by, report_by = challenge.start_day, challenge.join_deadline, challenge.report_deadline
    response = client.post(url(challenge.id), json={"days": 2}, headers=headers)
    assert response.status_code == 200, response.get_json()
    db.session.expire_all()
    moved = db.session.get(Challenge, challenge.id)
    assert moved.start_day == start - timedelta(days=2)
    assert (moved.join_deadline, moved.report_deadline) == (join_by - timedelta(days=2), report_by - timedelta(days=2))
    assert [a.action for a in db.session.scalars(select(AuditLog))] == ["sim.challenge_days_ago"]


@pytest.mark.parametrize("body", [{}, {"days": 0}, {"days": 32}, {"days": "2"}, {"days": 1, "extra": 1}])
def test_bad_bodies_are_422_and_change_nothing(client, challenge, make_operator, body):
    _, headers = make_operator("admin")
    start = challenge.start_day
    assert client.post(url(challenge.id), json=body, headers=headers).status_code == 422
    db.session.expire_all()
    assert db.session.get(Challenge, challenge.id).start_day == start


def test_only_an_admin_and_only_an_existing_unfinished_challenge(client, challenge, make_operator):
    _, support = make_operator("support")
    _, admin = make_operator("admin")
    assert client.post(url(challenge.id), json={"days": 1}, headers=support).status_code == 403
    assert client.post(url(challenge.id), json={"days": 1}).status_code == 401
    assert client.post(url(999_999), json={"days": 1}, headers=admin).status_code == 404
    db.session.get(Challenge, challenge.id).status = ChallengeStatus.CANCELLED
    db.session.commit()
    assert client.post(url(challenge.id), json={"days": 1}, headers=admin).status_code == 409


def test_a_moved_challenge_settles_like_any_other(client, challenge, make_operator):
    _, headers = make_operator("admin")
    assert client.post(url(challenge.id), json={"days": 3}, headers=headers).status_code == 200
    # nobody reported anything and the report deadline has passed: missing days count as zero, nobody loses
    assert settle_challenge(challenge.id, utcnow()) is True
    db.session.commit()
    assert db.session.get(Challenge, challenge.id).status == ChallengeStatus.SETTLED


def test_the_route_exists_in_simulator_mode_only(app):
    """Live mode's routes are listed by tests/test_simulator_processes.py (no ``/_sim`` and no ``/admin/api/sim``)."""
    assert "/admin/api/sim/challenges/<int:challenge_id>/days-ago" in {r.rule for r in app.url_map.iter_rules()}
