"""Races on both databases: one settlement under two workers, one join per person, two joins of different
challenges racing for one balance, and the last place taken once."""

from __future__ import annotations

from sqlalchemy import func, select

from challenges import ChallengeSpec, StakeAboveHeld, create_challenge, join_challenge, record_steps, settle_challenge
from challenges.errors import ChallengeFull
from models import ChallengeParticipant, ChallengePrize, LedgerEntry, Notice, RedPacket, db
from tests.challenge_helpers import DAY1, NOW, at_beijing, cash, fund, staked
from tests.concurrency import together

SPEC = ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1)


def _count(model) -> int:
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_two_workers_settle_a_challenge_once(app, make_user):
    alice, bob = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    cid = create_challenge(alice.id, SPEC, NOW).id
    join_challenge(cid, bob.id, NOW)
    day_after = at_beijing(DAY1, 30)
    record_steps(alice.id, [(DAY1, 9_000)], day_after)
    record_steps(bob.id, [(DAY1, 4_000)], day_after)
    db.session.commit()
    entries_before = _count(LedgerEntry)

    results = together(2, lambda i: settle_challenge(cid, day_after), app=app)

    assert sorted(results) == [False, True], results
    assert (_count(ChallengePrize), _count(RedPacket)) == (1, 1)
    assert _count(LedgerEntry) == entries_before + 1  # Alice's stake released (Bob's is all in the packet)
    assert (cash(alice.id), staked(alice.id), cash(bob.id), staked(bob.id)) == (5_00, 0, 2_00, 3_00)
    assert _count(Notice) == 3  # two results and Alice's packet


def test_one_person_joining_twice_at_once_joins_once(app, make_user):
    alice, bob = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    cid, bob_id = create_challenge(alice.id, SPEC, NOW).id, bob.id
    db.session.commit()

    results = together(2, lambda i: join_challenge(cid, bob_id, NOW).id, app=app)

    assert results[0] == results[1] and isinstance(results[0], int), results
    assert _count(ChallengeParticipant) == 2
    assert (cash(bob.id), staked(bob.id)) == (2_00, 3_00)


def test_two_joins_racing_for_one_balance_never_overdraw(app, make_user):
    alice, bob, carol = make_user(), make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    fund(carol.id, 4_00)  # enough for one 3-yuan stake, not two
    first = create_challenge(alice.id, SPEC, NOW).id
    second, carol_id = create_challenge(bob.id, SPEC, NOW).id, carol.id
    db.session.commit()

    # ids read before: a thread touching the test's expired rows would open the test's own transaction
    results = together(2, lambda i: join_challenge((first, second)[i], carol_id, NOW).id, app=app)

    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], StakeAboveHeld), results
    assert (cash(carol.id), staked(carol.id)) == (1_00, 3_00)


def test_the_last_place_is_taken_once(app, make_user):
    people = [make_user() for _ in range(4)]
    for p in people:
        fund(p.id, 5_00)
    cid = create_challenge(people[0].id, SPEC.model_copy(update={"max_participants": 2}), NOW).id
    ids = [p.id for p in people]
    db.session.commit()

    results = together(3, lambda i: join_challenge(cid, ids[i + 1], NOW).id, app=app)

    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 2 and all(isinstance(r, ChallengeFull) for r in refused), results
    assert _count(ChallengeParticipant) == 2
    assert sum(staked(p.id) for p in people) == 6_00


def test_twin_quiz_answers_are_taken_once(app, make_user):
    from challenges import MeasureRefused, answer_quiz, start_quiz

    alice, bob = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    questions = [{"prompt": "2+2?", "choices": ["4", "5"], "answer": 0}]
    spec = ChallengeSpec(kind="quiz", days=1, stake=1_00, start_day=DAY1, questions=questions)
    cid, alice_id = create_challenge(alice.id, spec, NOW).id, alice.id
    join_challenge(cid, bob.id, NOW)
    nine = at_beijing(DAY1, 9)
    _, qs = start_quiz(cid, alice_id, nine)
    answers = {qs[0].id: 0}
    db.session.commit()

    results = together(2, lambda i: answer_quiz(cid, alice_id, answers, nine).score, app=app)

    refused = [r for r in results if isinstance(r, Exception)]
    assert sorted(r for r in results if not isinstance(r, Exception)) == [1], results
    assert len(refused) == 1 and isinstance(refused[0], MeasureRefused) and refused[0].code == "quiz_answered"


def test_a_join_racing_a_withdrawal_of_the_same_balance_never_overdraws(app, make_user):
    from payouts import MoneySettings
    from payouts.operations import PayoutError, withdraw

    alice, carol = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(carol.id, 4_00)  # a 3-yuan stake or a 3-yuan withdrawal, not both
    cid, carol_id = create_challenge(alice.id, SPEC, NOW).id, carol.id
    db.session.commit()
    money = MoneySettings.from_config(app.config)

    def act(i: int):
        if i == 0:
            return join_challenge(cid, carol_id, NOW).id
        from models import User

        return withdraw(db.session.get(User, carol_id), 3_00, 1_00, "race", money=money).id

    results = together(2, act, app=app)

    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], (StakeAboveHeld, PayoutError)), results
    assert cash(carol.id) == 1_00 and cash(carol.id) >= 0


def test_twin_fetches_of_the_quiz_start_one_attempt(app, make_user):
    """A double tap on "start the quiz": both fetches get the questions and the same attempt, never a 500."""
    from challenges import start_quiz
    from models import QuizAttempt

    alice, bob = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    questions = [{"prompt": "2+2?", "choices": ["4", "5"], "answer": 0}]
    spec = ChallengeSpec(kind="quiz", days=1, stake=1_00, start_day=DAY1, questions=questions)
    cid, alice_id = create_challenge(alice.id, spec, NOW).id, alice.id
    join_challenge(cid, bob.id, NOW)
    nine = at_beijing(DAY1, 9)
    db.session.commit()

    results = together(4, lambda i: start_quiz(cid, alice_id, nine)[0].id, app=app)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 1
    assert _count(QuizAttempt) == 1
