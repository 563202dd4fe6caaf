"""Hardening of the challenges (issue 15 review): a banned winner gets nothing (their share goes back to the
payer), notices in the stake's unit, the per-challenge campaigns kept out of sight and ended, and what the
review found."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from challenges import ChallengeClosed, ChallengeSpec, create_challenge, join_challenge, record_steps, settle_challenge
from models import Challenge, ChallengePrize, Notice, RedPacket, User, UserStatus, db
from tests.challenge_helpers import DAY1, DAY2, NOW, at_beijing, cash, fund, point_stake, points, staked

MORNING = at_beijing(DAY2, 8)


def _ban(user_id: int) -> None:
    person = db.session.get(User, user_id)
    person.status, person.banned_reason = UserStatus.BANNED, "test"
    db.session.flush()


def _people(make_user, n: int, fen: int = 10_00) -> list[int]:
    ids = []
    for _ in range(n):
        u = make_user()
        fund(u.id, fen)
        ids.append(u.id)
    return ids


def _steps(by_user: dict[int, int]) -> None:
    for uid, steps in by_user.items():
        record_steps(uid, [(DAY1, steps)], MORNING)


def test_a_banned_winner_gets_nothing_and_the_share_goes_back_to_the_loser(make_user):
    a, b, c = _people(make_user, 3)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=4_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    join_challenge(cid, c, NOW)
    _steps({a: 9_000, b: 9_000, c: 1_000})  # a and b tie; c loses
    _ban(b)
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    prizes = [
        (p.payer_user_id, p.payee_user_id, p.amount) for p in db.session.execute(select(ChallengePrize)).scalars()
    ]
    assert prizes == [(c, a, 2_00)]
    assert [p.owner_id for p in db.session.execute(select(RedPacket)).scalars()] == [a]
    assert (cash(c), staked(c)) == (6_00 + 2_00, 2_00)  # b's share released; a's packet still funded by the stake
    assert (cash(b), staked(b)) == (10_00, 0)  # b's own stake is theirs: released, nothing more
    outcome = db.session.get(Challenge, cid).outcome
    assert outcome["withheld"] == [{"from": c, "to": b, "amount": 2_00, "why": "banned"}]
    told = {n.user_id: n.facts for n in db.session.execute(select(Notice)).scalars() if n.event.startswith("chall")}
    assert told[b]["amount_fen"] == 0


def test_a_banned_sole_winner_of_a_points_stake_gets_no_points(make_user):
    a, b = make_user().id, make_user().id
    fund(a, 500, points=True)
    fund(b, 500, points=True)
    spec = ChallengeSpec(kind="steps", days=1, stake=200, stake_source="points", start_day=DAY1)
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    _steps({a: 9_000, b: 1_000})
    _ban(a)
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    assert (points(a), point_stake(a), points(b), point_stake(b)) == (500, 0, 500, 0)
    assert db.session.get(Challenge, cid).outcome["withheld"] == [{"from": b, "to": a, "amount": 200, "why": "banned"}]


def test_a_banned_person_cannot_start_or_join(make_user):
    a, b = _people(make_user, 2)
    _ban(a)
    db.session.commit()
    with pytest.raises(ChallengeClosed):
        create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW)
    db.session.rollback()
    cid = create_challenge(b, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW).id
    db.session.commit()
    with pytest.raises(ChallengeClosed):
        join_challenge(cid, a, NOW)
    db.session.rollback()
    assert (cash(a), staked(a)) == (10_00, 0)


def _inbox(user_id: int) -> list[tuple[str, str]]:
    from notices.templates import inbox_text, load_templates

    templates = load_templates(None, simulator=True)
    rows = db.session.execute(select(Notice).where(Notice.user_id == user_id).order_by(Notice.id)).scalars()
    return [inbox_text(templates[n.event], n.facts) for n in rows if n.event.startswith("challenge")]


def test_a_points_stake_is_told_in_points_not_yuan(make_user):
    a, b, c = make_user().id, make_user().id, make_user().id
    for uid in (a, b, c):
        fund(uid, 500, points=True)
    spec = ChallengeSpec(kind="steps", days=1, stake=200, stake_source="points", start_day=DAY1)
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    lonely = create_challenge(c, spec, NOW).id  # nobody joins: cancelled
    _steps({a: 9_000, b: 1_000})
    assert settle_challenge(cid, MORNING) and settle_challenge(lonely, MORNING)
    db.session.commit()
    ((_, won),) = _inbox(a)
    ((_, cancelled),) = _inbox(c)
    assert "200 积分" in won and "¥" not in won
    assert "200" in cancelled and "积分" in cancelled and "¥" not in cancelled


def test_a_cash_stake_is_still_told_in_yuan(make_user):
    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    _steps({a: 9_000, b: 1_000})
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    ((_, won),) = _inbox(a)
    assert "¥3.00" in won
