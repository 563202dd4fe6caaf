"""The mini-program's challenge API: create, join, standings, WeRun, reading check-ins and the quiz, and a
clear refusal (with nothing changed) for every bad input."""

from __future__ import annotations

import base64
import os
from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from models import ChallengeParticipant, LedgerEntry, QuizAttempt, ReadingCheckIn, StepDay, UserIdentity, db
from tests.challenge_helpers import DAY1, DAY2, NOW, at_beijing, cash, fund, staked
from wechat.werun import encrypt_werun

STEPS = {"kind": "steps", "days": 2, "stake": 5_00, "start_day": DAY1.isoformat()}


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def people(app, make_user, user_headers, frozen):
    alice, bob, carol = make_user(), make_user(), make_user()
    fund(alice.id, 20_00)
    fund(bob.id, 10_00)
    fund(carol.id, 1_00)
    db.session.commit()
    return {p: (u, user_headers(u)) for p, u in (("alice", alice), ("bob", bob), ("carol", carol))}


def create(client, headers, body=STEPS, key="k-1"):
    return client.post("/api/v1/challenges", json=body, headers={**headers, "Idempotency-Key": key})


def entries() -> int:
    return db.session.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()


def test_create_join_and_read_the_standings(client, people):
    (alice, ah), (bob, bh), (carol, ch) = people["alice"], people["bob"], people["carol"]
    r = create(client, ah)
    assert r.status_code == 201, r.json
    cid = r.json["challenge_id"]
    assert r.json["missing_counts_as_zero"] is True and r.json["participants"] == 1
    again = create(client, ah)  # the same key and body: the stored answer, nothing reserved twice
    assert again.status_code == 201 and again.json["challenge_id"] == cid
    assert (cash(alice.id), staked(alice.id)) == (15_00, 5_00)

    # an invitee reads an open challenge's terms, not its people
    terms = client.get(f"/api/v1/challenges/{cid}", headers=bh)
    assert terms.status_code == 200 and terms.json["rows"] == [] and terms.json["stake"] == 5_00
    assert client.post(f"/api/v1/challenges/{cid}/join", headers=bh).status_code == 200
    r = client.post(f"/api/v1/challenges/{cid}/join", headers=bh)  # again: one participation
    assert r.status_code == 200 and r.json["participants"] == 2
    assert (cash(bob.id), staked(bob.id)) == (5_00, 5_00)
    rows = client.get(f"/api/v1/challenges/{cid}", headers=bh).json["rows"]
    assert {row["user_id"] for row in rows} == {alice.id, bob.id}
    mine = client.get("/api/v1/me/challenges", headers=bh).json["challenges"]
    assert [c["id"] for c in mine] == [cid]

    # Carol holds 1 yuan: refused, nothing changed
    before = entries()
    r = client.post(f"/api/v1/challenges/{cid}/join", headers=ch)
    assert r.status_code == 409 and r.json["error"] == "stake_above_held"
    assert "不足" in r.json["message"] and "5.00元" in r.json["message"] and "1.00元" in r.json["message"]
    assert (cash(carol.id), staked(carol.id), entries()) == (1_00, 0, before)

    # once running, someone else's challenge is not there for Carol
    with time_machine.travel(at_beijing(DAY1, 9), tick=False):
        r = client.get(f"/api/v1/challenges/{cid}", headers=ch)
        assert r.status_code == 404 and r.json["error"] == "challenge_not_found"
        r = client.post(f"/api/v1/challenges/{cid}/join", headers=ch)
        assert r.status_code == 409 and r.json["error"] == "challenge_closed"


@pytest.mark.parametrize(
    "body, problem",
    [
        ({**STEPS, "stake": 0}, "validation_error"),
        ({**STEPS, "stake": -5}, "validation_error"),
        ({**STEPS, "kind": "poker"}, "validation_error"),
        ({**STEPS, "rule": "first_to_goal"}, "validation_error"),  # no goal
        ({**STEPS, "days": 99}, "challenge_invalid"),  # above CHALLENGE_MAX_DAYS
        ({**STEPS, "start_day": NOW.date().isoformat()}, "challenge_invalid"),  # today: too late to join
        ({**STEPS, "max_participants": 50}, "challenge_invalid"),
        ({**STEPS, "stake_source": "sponsor"}, "validation_error"),
        ({**STEPS, "stake": 50_00}, "stake_above_held"),
        ({**STEPS, "questions": [{"prompt": "?", "choices": ["a", "b"], "answer": 0}]}, "validation_error"),
    ],
)
def test_a_bad_challenge_is_refused_and_changes_nothing(client, people, body, problem):
    alice, ah = people["alice"]
    before = entries()
    r = create(client, ah, body)
    assert r.status_code in (409, 422) and r.json["error"] == problem, r.json
    assert (cash(alice.id), staked(alice.id), entries()) == (20_00, 0, before)
    assert client.get("/api/v1/me/challenges", headers=ah).json["challenges"] == []


def test_create_needs_an_idempotency_key_and_unknown_challenges_are_404(client, people):
    _, ah = people["alice"]
    r = client.post("/api/v1/challenges", json=STEPS, headers=ah)
    assert r.status_code == 422 and r.json["error"] == "idempotency_key_required"
    assert client.get("/api/v1/challenges/999999", headers=ah).status_code == 404
    assert client.post("/api/v1/challenges/999999/join", headers=ah).json["error"] == "challenge_not_found"
    assert client.get("/api/v1/me/challenges").status_code == 401


def test_a_full_challenge_takes_nobody_more(client, people):
    _, ah = people["alice"]
    (_, bh), (carol, ch) = people["bob"], people["carol"]
    cid = create(client, ah, {**STEPS, "stake": 1_00, "max_participants": 2}).json["challenge_id"]
    assert client.post(f"/api/v1/challenges/{cid}/join", headers=bh).status_code == 200
    r = client.post(f"/api/v1/challenges/{cid}/join", headers=ch)
    assert r.status_code == 409 and r.json["error"] == "challenge_full"
    assert (cash(carol.id), staked(carol.id)) == (1_00, 0)


def _session(user) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    identity = db.session.execute(select(UserIdentity).where(UserIdentity.user_id == user.id)).scalar_one()
    identity.appid, identity.session_key = "wxsim0miniprogram", key
    db.session.commit()
    return key


def _werun(key: str, days: list[tuple], at, appid="wxsim0miniprogram") -> dict:
    steps = [{"timestamp": int((at_beijing(d, 0)).timestamp()), "step": n} for d, n in days]
    payload = {"stepInfoList": steps, "watermark": {"appid": appid, "timestamp": int(at.timestamp())}}
    data, iv = encrypt_werun(key, payload, os.urandom(16))
    return {"encryptedData": data, "iv": iv}


def _werun_raw(key: str, steps: list[dict], stamp: int) -> dict:
    payload = {"stepInfoList": steps, "watermark": {"appid": "wxsim0miniprogram", "timestamp": stamp}}
    data, iv = encrypt_werun(key, payload, os.urandom(16))
    return {"encryptedData": data, "iv": iv}


def test_werun_steps_are_decrypted_checked_and_never_lowered_once_closed(client, people):
    (alice, ah) = people["alice"]
    key = _session(alice)
    morning = at_beijing(DAY2, 9)
    with time_machine.travel(morning, tick=False):
        r = client.post("/api/v1/me/werun", json=_werun(key, [(DAY1, 8_000), (DAY2, 1_000)], morning), headers=ah)
        assert r.status_code == 200, r.json
        assert r.json["taken"] == [DAY1.isoformat(), DAY2.isoformat()]
        closed, today = db.session.get(StepDay, (alice.id, DAY1)), db.session.get(StepDay, (alice.id, DAY2))
        assert (closed.steps, closed.closed, today.steps, today.closed) == (8_000, True, 1_000, False)
        db.session.rollback()

        # a closed day never decreases
        r = client.post("/api/v1/me/werun", json=_werun(key, [(DAY1, 5_000), (DAY2, 2_000)], morning), headers=ah)
        assert r.json["refused"] == [{"day": DAY1.isoformat(), "reason": "closed_day_decrease"}]
        assert db.session.get(StepDay, (alice.id, DAY1)).steps == 8_000
        db.session.rollback()

        # bad ciphertext, another app's data, stale data, another session's key: 422, nothing stored
        other = base64.b64encode(os.urandom(16)).decode()
        bad = [
            (
                {"encryptedData": "AAAAAAAAAAAAAAAAAAAAAA==", "iv": base64.b64encode(os.urandom(16)).decode()},
                "werun_bad_ciphertext",
            ),
            (_werun(key, [(DAY1, 9_000)], morning, appid="wx-someone-else"), "werun_wrong_appid"),
            (_werun(key, [(DAY1, 9_000)], morning - timedelta(hours=1)), "werun_stale"),
            (_werun(other, [(DAY1, 9_000)], morning), "werun_bad_ciphertext"),
            ({"encryptedData": "not base64!", "iv": "x"}, "validation_error"),
            (_werun(key, [(DAY1, 2**70)], morning), "werun_malformed"),  # no database integer holds it
            (_werun(key, [(DAY1, -1)], morning), "werun_malformed"),
            (_werun_raw(key, [{"timestamp": 10**13, "step": 9_000}], int(morning.timestamp())), "werun_malformed"),
            (_werun_raw(key, [], 2**70), "werun_malformed"),  # a watermark time past any calendar
            (_werun_raw(key, [], -(2**62)), "werun_malformed"),
        ]
        for body, code in bad:
            r = client.post("/api/v1/me/werun", json=body, headers=ah)
            assert r.status_code == 422 and r.json["error"] == code, (code, r.json)
        assert db.session.get(StepDay, (alice.id, DAY1)).steps == 8_000


def test_werun_needs_a_session(client, people):
    _, bh = people["bob"]
    r = client.post("/api/v1/me/werun", json={"encryptedData": "AAAA", "iv": "AAAA"}, headers=bh)
    assert r.status_code == 422 and r.json["error"] == "werun_no_session"


def test_reading_checkins_keep_their_interval_and_daily_cap(client, people):
    (_, ah), (_, bh) = people["alice"], people["bob"]
    r = create(client, ah, {**STEPS, "kind": "reading", "stake": 1_00})
    assert r.status_code == 201
    r = client.post("/api/v1/me/reading-checkins", headers=bh)  # Bob is in no reading challenge
    assert r.status_code == 404 and r.json["error"] == "not_participant"
    start = at_beijing(DAY1, 8)
    for i in range(3):
        with time_machine.travel(start + timedelta(minutes=31 * i), tick=False):
            assert client.post("/api/v1/me/reading-checkins", headers=ah).status_code == 201
    with time_machine.travel(start + timedelta(minutes=31 * 2 + 5), tick=False):
        r = client.post("/api/v1/me/reading-checkins", headers=ah)
        assert r.status_code == 429 and r.json["error"] == "checkin_too_soon" and int(r.headers["Retry-After"]) > 0
    with time_machine.travel(start + timedelta(hours=4), tick=False):
        r = client.post("/api/v1/me/reading-checkins", headers=ah)
        assert r.status_code == 429 and r.json["error"] == "checkin_daily_cap"
    assert db.session.execute(select(func.count()).select_from(ReadingCheckIn)).scalar_one() == 3


QUIZ = {
    "kind": "quiz",
    "days": 1,
    "stake": 2_00,
    "start_day": DAY1.isoformat(),
    "questions": [
        {"prompt": "1+1?", "choices": ["1", "2", "3"], "answer": 1},
        {"prompt": "长江流入?", "choices": ["东海", "南海"], "answer": 0},
    ],
}


def test_the_quiz_hides_its_answers_takes_them_once_and_in_time(client, people):
    (alice, ah), (bob, bh), (_, ch) = people["alice"], people["bob"], people["carol"]
    cid = create(client, ah, QUIZ).json["challenge_id"]
    assert client.post(f"/api/v1/challenges/{cid}/join", headers=bh).status_code == 200
    r = client.get(f"/api/v1/challenges/{cid}/quiz", headers=ah)
    assert r.status_code == 409 and r.json["error"] == "quiz_not_begun"
    with time_machine.travel(at_beijing(DAY1, 9), tick=False):
        r = client.get(f"/api/v1/challenges/{cid}/quiz", headers=ah)
        assert r.status_code == 200
        assert all("answer" not in q for q in r.json["questions"])
        ids = [q["id"] for q in r.json["questions"]]
        assert client.get(f"/api/v1/challenges/{cid}/quiz", headers=ch).status_code == 404  # not in it
        r = client.post(
            f"/api/v1/challenges/{cid}/quiz/answers",
            json={"answers": [{"question_id": ids[0], "choice": 1}]},
            headers=bh,
        )
        assert r.status_code == 422 and r.json["error"] == "quiz_not_started"
        unknown = {"answers": [{"question_id": 999_999, "choice": 0}]}
        r = client.post(f"/api/v1/challenges/{cid}/quiz/answers", json=unknown, headers=ah)
        assert r.status_code == 422 and r.json["error"] == "quiz_unknown_question"
        # a choice the question does not have (question 2 has two), or not an integer: refused, the try not spent
        for choice, code in [(2, "quiz_no_such_choice"), (17, "quiz_no_such_choice"), (True, "validation_error")]:
            typo = {"answers": [{"question_id": ids[0], "choice": 1}, {"question_id": ids[1], "choice": choice}]}
            r = client.post(f"/api/v1/challenges/{cid}/quiz/answers", json=typo, headers=ah)
            assert r.status_code == 422 and r.json["error"] == code, (choice, r.json)
        r = client.post(
            f"/api/v1/challenges/{cid}/quiz/answers",
            json={"answers": [{"question_id": ids[0], "choice": "1"}]},
            headers=ah,
        )
        assert r.status_code == 422 and r.json["error"] == "validation_error"
        both = {"answers": [{"question_id": ids[0], "choice": 1}, {"question_id": ids[1], "choice": 1}]}
        r = client.post(f"/api/v1/challenges/{cid}/quiz/answers", json=both, headers=ah)
        assert r.status_code == 200 and r.json["score"] == 1
        r = client.post(f"/api/v1/challenges/{cid}/quiz/answers", json=both, headers=ah)
        assert r.status_code == 422 and r.json["error"] == "quiz_answered"
        assert client.get(f"/api/v1/challenges/{cid}/quiz", headers=bh).status_code == 200
    with time_machine.travel(at_beijing(DAY1, 9) + timedelta(minutes=6), tick=False):
        r = client.post(f"/api/v1/challenges/{cid}/quiz/answers", json=both, headers=bh)
        assert r.status_code == 422 and r.json["error"] == "quiz_late"
    attempts = db.session.execute(select(QuizAttempt.user_id, QuizAttempt.score)).all()
    assert sorted(attempts) == sorted([(alice.id, 1), (bob.id, 0)])
    assert db.session.execute(select(func.count()).select_from(ChallengeParticipant)).scalar_one() == 2
