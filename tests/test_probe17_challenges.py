"""Probe 17 of friends' challenges through the mini-program API: what a user, an attacker or an auditor found
still wrong in the settlement, the quiz and the money around them (docs/architecture.md §16)."""

from __future__ import annotations

import time_machine
from sqlalchemy import select

from challenges import ChallengeSpec, answer_quiz, create_challenge, join_challenge, settle_challenge, start_quiz
from models import Challenge, ChallengeParticipant, Notice, RedPacket, db
from tests.challenge_helpers import DAY1, NOW, at_beijing, cash, fund, staked

QUESTIONS = [{"prompt": "2+2?", "choices": ["4", "5"], "answer": 0}]


def _sponsor(make_campaign):
    return make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]},
        packet_amount_fen=10_00,
        budget_limit_fen=100_00,
        trigger={"kind": "claim"},
    )


def test_a_sponsors_quiz_prize_goes_to_the_winner_not_to_whoever_answered_worst(make_user, make_campaign):
    """A sponsor's prize is split among the winners (§16). In a sponsor quiz it went to the loser (the quiz's
    reversed direction is for stakes: a winner's own stake rewards who learns): answering wrong on purpose won
    the sponsor's packet, and the winner was told they won nothing while the loser was told they lost."""
    knows, guesses = make_user().id, make_user().id
    sponsor = _sponsor(make_campaign)
    spec = ChallengeSpec(
        kind="quiz",
        days=1,
        start_day=DAY1,
        stake_source="sponsor",
        sponsor_campaign_id=sponsor.id,
        prize_fen=6_00,
        questions=QUESTIONS,
    )
    cid = create_challenge(knows, spec, NOW).id
    join_challenge(cid, guesses, NOW)
    db.session.commit()
    nine = at_beijing(DAY1, 9)
    _, qs = start_quiz(cid, knows, nine)
    answer_quiz(cid, knows, {qs[0].id: 0}, nine)
    start_quiz(cid, guesses, nine)
    answer_quiz(cid, guesses, {qs[0].id: 1}, nine)
    assert settle_challenge(cid, nine)
    db.session.commit()

    challenge = db.session.get(Challenge, cid)
    assert challenge.outcome["winners"] == [knows]
    assert challenge.outcome["prizes"] == [{"from": None, "to": knows, "amount": 6_00}]
    packet = db.session.execute(select(RedPacket)).scalar_one()
    assert (packet.owner_id, packet.campaign_id, packet.amount_fen) == (knows, sponsor.id, 6_00)
    results = dict(
        db.session.execute(
            select(ChallengeParticipant.user_id, ChallengeParticipant.result).where(
                ChallengeParticipant.challenge_id == cid
            )
        ).all()
    )
    assert results == {knows: "won", guesses: "lost"}
    told = {
        n.user_id: n.facts
        for n in db.session.execute(select(Notice).where(Notice.event == "challenge_settled")).scalars()
    }
    assert (told[knows]["amount_fen"], told[guesses]["amount_fen"]) == (6_00, 0)
    assert (cash(knows), staked(knows), cash(guesses), staked(guesses)) == (0, 0, 0, 0)


def test_the_quiz_answer_counts_the_quizs_questions_not_only_the_ones_answered(app, client, make_user, user_headers):
    """Answering one of two questions right said ``{"score": 1, "questions": 1}``: full marks, as the mini-program
    shows it (score out of questions), when half the quiz was left unanswered and counted as wrong."""
    alice, bob = make_user(), make_user()
    fund(alice.id, 5_00)
    fund(bob.id, 5_00)
    db.session.commit()
    body = {
        "kind": "quiz",
        "days": 1,
        "stake": 1_00,
        "start_day": DAY1.isoformat(),
        "questions": [
            {"prompt": "1+1?", "choices": ["1", "2"], "answer": 1},
            {"prompt": "2+2?", "choices": ["4", "5"], "answer": 0},
        ],
    }
    with time_machine.travel(NOW, tick=False):
        ah, bh = user_headers(alice), user_headers(bob)
        r = client.post("/api/v1/challenges", json=body, headers={**ah, "Idempotency-Key": "quiz-1"})
        assert r.status_code == 201, r.json
        cid = r.json["challenge_id"]
        assert client.post(f"/api/v1/challenges/{cid}/join", headers=bh).status_code == 200
    with time_machine.travel(at_beijing(DAY1, 9), tick=False):
        ids = [q["id"] for q in client.get(f"/api/v1/challenges/{cid}/quiz", headers=ah).json["questions"]]
        r = client.post(
            f"/api/v1/challenges/{cid}/quiz/answers",
            json={"answers": [{"question_id": ids[0], "choice": 1}]},
            headers=ah,
        )
    assert r.status_code == 200, r.json
    assert (r.json["score"], r.json["questions"]) == (1, 2)
