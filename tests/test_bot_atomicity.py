"""A command the game refuses half-way changes nothing, whatever transport brought it (challenges/bot.py).

Joining takes a slot (a conditional UPDATE of the participant count) before it reserves the stake; a stake
above the balance is refused after that. Over HTTP the view's rollback undoes the slot; the robot commits its
callback record and reply in the same transaction, so the bot's executor runs each command in a savepoint.
"""

from __future__ import annotations

from challenges import ChallengeSpec, create_challenge
from models import Challenge, ChallengeParticipant, db, utcnow
from tests.challenge_helpers import cash, fund, staked
from tests.test_wecom_bot import bind, robot  # noqa: F401 - the robot fixture


def test_a_join_refused_for_its_stake_leaves_the_count_and_the_balance_alone(
    app,
    client,
    make_user,
    user_headers,
    robot,  # noqa: F811
):
    alice, bob = make_user(), make_user()
    fund(alice.id, 10_00)
    fund(bob.id, 1_00)  # less than the stake
    challenge = create_challenge(
        alice.id, ChallengeSpec(kind="steps", days=1, stake=5_00), utcnow(), group=("wecom", "group-1")
    )
    db.session.commit()
    bind(client, user_headers, robot, bob, "bob-wecom")

    _, text = robot("bob-wecom", f"加入 {challenge.id}", chatid="group-1")

    assert "1.00" in text or "100" in text or "不足" in text, text
    db.session.expire_all()
    assert db.session.get(Challenge, challenge.id).participants == 1
    assert db.session.query(ChallengeParticipant).filter_by(user_id=bob.id).count() == 0
    assert (cash(bob.id), staked(bob.id)) == (1_00, 0)
