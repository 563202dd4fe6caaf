"""Probe of the challenges after they start: the group-scoped 排行榜, a sponsor's prize split to nothing, and what
settlement records and moves."""

from __future__ import annotations

from sqlalchemy import select

from challenges import ChallengeSpec, create_challenge, join_challenge, record_steps, settle_challenge
from ledger.check import check_ledger
from models import Challenge, Notice, RedPacket, db
from tests.challenge_helpers import DAY1, DAY2, NOW, at_beijing, cash, fund, staked

MORNING = at_beijing(DAY2, 8)


def _people(make_user, n: int, fen: int = 10_00) -> list[int]:
    ids = []
    for _ in range(n):
        u = make_user()
        if fen:
            fund(u.id, fen)
        ids.append(u.id)
    return ids


def _steps(by_user: dict[int, int]) -> None:
    for uid, steps in by_user.items():
        record_steps(uid, [(DAY1, steps)], MORNING)


def _ledger_ok() -> None:
    report = check_ledger()
    assert report.ok, report.violations


def _say(command, user_id: int, group: str | None):
    from challenges import bot
    from challenges.bindings import Speaker

    return bot.execute(command, bot.Context(Speaker("wecom", "bot", f"u{user_id}"), user_id, group), NOW)


def test_the_leaderboard_without_a_number_in_a_group_never_shows_another_groups_challenge(make_user):
    """Alice plays in group A; in group B (no challenge there) 「排行榜」 must not post group A's names and totals."""
    from challenges import bot

    a, b = _people(make_user, 2)
    cid = create_challenge(
        a, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW, group=("wecom", "A")
    )
    join_challenge(cid.id, b, NOW)
    db.session.commit()
    elsewhere = _say(bot.ShowStandings(), a, "B")
    assert elsewhere.code == "no_challenge"
    assert f"#{cid.id}" not in elsewhere.text
    mini = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW).id  # no group
    db.session.commit()
    assert _say(bot.ShowStandings(), a, "B").code == "no_challenge"  # nor a mini-program one
    assert f"#{cid.id} 排行榜" in _say(bot.ShowStandings(), b, "A").text  # the group's own: shown
    assert f"#{mini} " in _say(bot.ShowStandings(), a, None).text  # privately: the speaker's latest


def _sponsor(make_campaign, packet_fen: int = 8_00):
    return make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]},
        packet_amount_fen=packet_fen,
        budget_limit_fen=100_00,
        trigger={"kind": "claim"},
    )


def test_a_sponsor_prize_that_splits_to_nothing_is_on_the_record(make_user, make_campaign):
    """A 1-fen prize between two tied winners is 0 fen each: nobody gets a packet, and the outcome says why (every fen
    of the prize accounted for: paid, refused, withheld or the remainder the sponsor keeps)."""
    a, b, c = _people(make_user, 3, fen=0)
    sponsor = _sponsor(make_campaign)
    spec = ChallengeSpec(
        kind="steps", days=1, start_day=DAY1, stake_source="sponsor", sponsor_campaign_id=sponsor.id, prize_fen=1
    )
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    join_challenge(cid, c, NOW)
    _steps({a: 5_000, b: 5_000, c: 1_000})
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    outcome = db.session.get(Challenge, cid).outcome
    assert outcome["winners"] == sorted([a, b])
    assert outcome["prizes"] == []
    assert outcome["refused"] == [
        {"to": a, "amount": 0, "refused": "share_below_one_fen"},
        {"to": b, "amount": 0, "refused": "share_below_one_fen"},
    ]
    assert outcome["remainder"] == 1
    assert db.session.execute(select(RedPacket)).first() is None
    _ledger_ok()


def test_a_sponsor_prizes_remainder_is_on_the_record(make_user, make_campaign):
    """5 fen between two tied winners: 2 each, and the 1 fen the sponsor keeps is said."""
    a, b, c = _people(make_user, 3, fen=0)
    sponsor = _sponsor(make_campaign)
    spec = ChallengeSpec(
        kind="steps", days=1, start_day=DAY1, stake_source="sponsor", sponsor_campaign_id=sponsor.id, prize_fen=5
    )
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    join_challenge(cid, c, NOW)
    _steps({a: 5_000, b: 5_000, c: 1_000})
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    outcome = db.session.get(Challenge, cid).outcome
    assert [(p["to"], p["amount"]) for p in outcome["prizes"]] == [(a, 2), (b, 2)]
    assert outcome["refused"] == [] and outcome["remainder"] == 1
    assert sorted(p.amount_fen for p in db.session.execute(select(RedPacket)).scalars()) == [2, 2]
    _ledger_ok()


def test_a_stake_challenge_records_no_sponsor_remainder_and_every_fen_moves(make_user):
    a, b, c = _people(make_user, 3)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=1, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    join_challenge(cid, c, NOW)
    _steps({a: 5_000, b: 5_000, c: 1_000})
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    assert (cash(c), staked(c)) == (10_00, 0)  # 1 fen between two: 0 each, it goes back to the loser
    assert [cash(a), cash(b)] == [10_00, 10_00] and [staked(a), staked(b)] == [0, 0]
    assert "remainder" not in db.session.get(Challenge, cid).outcome
    assert len(db.session.execute(select(Notice)).all()) == 3
    _ledger_ok()


def test_the_standings_of_a_settled_challenge_show_the_settled_totals_not_later_uploads(make_user):
    """Bob's WeRun data came after the report deadline: the challenge settled with his day as zero and Alice won.
    His late upload must not turn the leaderboard round (Bob first, 「未获胜」) after the money moved."""
    from challenges import standings
    from challenges.bot import standings_text

    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    record_steps(a, [(DAY1, 5_000)], MORNING)
    late = at_beijing(DAY2, 25)  # the report deadline (24 hours after the day) has passed
    assert settle_challenge(cid, late)
    db.session.commit()
    assert db.session.get(Challenge, cid).outcome["winners"] == [a]
    record_steps(b, [(DAY1, 20_000)], late)  # the upload that never came in time
    db.session.commit()
    table = standings(cid, late)
    assert [(r.user_id, r.total, r.rank, r.result) for r in table.rows] == [(a, 5_000, 1, "won"), (b, 0, 2, "lost")]
    assert table.winners == [a] and table.decided and table.waiting == []
    assert [r.days_counted for r in table.rows] == [1, 1]
    assert standings_text(cid, table).splitlines()[1].endswith("5000（已计 1 天）")
    _ledger_ok()


def test_a_result_post_with_winners_but_no_prize_does_not_say_nobody_won(make_user):
    """A 1-fen stake between two tied winners moves nothing (0 fen each, back to the loser): the group's result post
    must not say 「没有输赢」 under a table of 胜 and 负."""
    from challenges import standings
    from challenges.posts import final_text

    a, b, c = _people(make_user, 3)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=1, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    join_challenge(cid, c, NOW)
    _steps({a: 5_000, b: 5_000, c: 1_000})
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    challenge = db.session.get(Challenge, cid)
    text = final_text(challenge, standings(cid, MORNING))
    assert "没有输赢" not in text and " 负" in text
    assert text.splitlines()[-1] == "没有发出奖励，挑战金已退回。"
    _ledger_ok()


def test_a_sponsor_result_post_speaks_of_no_stakes(make_user, make_campaign):
    """Nobody lost in a sponsor challenge: nobody staked anything, so nothing was 「退回」."""
    from challenges import standings
    from challenges.posts import final_text

    a, b = _people(make_user, 2, fen=0)
    sponsor = _sponsor(make_campaign)
    spec = ChallengeSpec(
        kind="steps", days=1, start_day=DAY1, stake_source="sponsor", sponsor_campaign_id=sponsor.id, prize_fen=1_00
    )
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    _steps({a: 5_000, b: 5_000})
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    text = final_text(db.session.get(Challenge, cid), standings(cid, MORNING))
    assert text.splitlines()[-1] == "没有输赢，没有发奖金。"


def test_werun_data_written_before_midnight_does_not_close_the_day(make_user):
    """Bob's phone fetched WeRun at 23:58 (6,000 steps so far) and the upload went through at 00:03: that is not his
    day's total, and the one-day challenge must not settle on it. His data written after midnight closes the day."""
    from datetime import timedelta

    from challenges import standings
    from challenges.days import day_end

    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    midnight = day_end(DAY1)
    record_steps(a, [(DAY1, 8_000)], midnight + timedelta(minutes=5), made=midnight + timedelta(minutes=4))
    uploaded = midnight + timedelta(minutes=3)
    record_steps(b, [(DAY1, 6_000)], uploaded, made=midnight - timedelta(minutes=2))
    assert not settle_challenge(cid, uploaded + timedelta(minutes=3))
    assert standings(cid, uploaded).waiting == [{"day": DAY1.isoformat(), "user_ids": [b]}]
    record_steps(b, [(DAY1, 9_000)], MORNING, made=MORNING)
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    assert db.session.get(Challenge, cid).outcome["winners"] == [b]
    _ledger_ok()


def test_a_werun_upload_fetched_before_midnight_leaves_the_day_open(app, client, make_user, user_headers):
    """Through POST /api/v1/me/werun: the watermark (when WeChat wrote the data) says 23:58, the upload arrives at
    00:03; the day stays open for the data written after it ended."""
    import base64
    import os
    from datetime import timedelta

    import time_machine

    from challenges.days import day_end
    from models import StepDay, UserIdentity
    from wechat.werun import encrypt_werun

    with time_machine.travel(NOW, tick=False):  # signed in the day before
        bob = make_user()
        headers = user_headers(bob)
    key = base64.b64encode(os.urandom(16)).decode()
    identity = db.session.execute(select(UserIdentity).where(UserIdentity.user_id == bob.id)).scalar_one()
    identity.appid, identity.session_key = "wxsim0miniprogram", key
    db.session.commit()
    midnight = day_end(DAY1)

    def upload(steps: int, written, at):
        day = {"timestamp": int(at_beijing(DAY1, 0).timestamp()), "step": steps}
        payload = {
            "stepInfoList": [day],
            "watermark": {"appid": "wxsim0miniprogram", "timestamp": int(written.timestamp())},
        }
        data, iv = encrypt_werun(key, payload, os.urandom(16))
        with time_machine.travel(at, tick=False):
            r = client.post("/api/v1/me/werun", json={"encryptedData": data, "iv": iv}, headers=headers)
        assert r.status_code == 200, r.json
        db.session.rollback()
        row = db.session.get(StepDay, (bob.id, DAY1))
        return row.steps, row.closed

    assert upload(6_000, midnight - timedelta(minutes=2), midnight + timedelta(minutes=3)) == (6_000, False)
    assert upload(9_000, midnight + timedelta(minutes=4), midnight + timedelta(minutes=5)) == (9_000, True)


def test_quiz_answers_sent_before_the_time_is_up_but_taken_after_settlement_are_refused(make_user):
    """Bob's answers left his phone a moment before his attempt ended; the settle job, a moment after, found his time
    up (score 0) and settled. His answers must not then be taken as if they still counted: the quiz is over."""
    from datetime import timedelta

    import pytest

    from challenges import ChallengeClosed, answer_quiz, start_quiz

    a, b = _people(make_user, 2)
    questions = [{"prompt": "2+2?", "choices": ["4", "5"], "answer": 0}]
    spec = ChallengeSpec(kind="quiz", days=1, stake=1_00, start_day=DAY1, questions=questions)
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    nine = at_beijing(DAY1, 9)
    _, qs = start_quiz(cid, a, nine)
    answer_quiz(cid, a, {qs[0].id: 1}, nine)  # a wrong answer: 0
    attempt, _ = start_quiz(cid, b, nine)
    sent = attempt.ends_at  # the last moment the request may be taken
    assert settle_challenge(cid, sent + timedelta(seconds=1))  # Bob's time is up: everyone's score is in
    db.session.commit()
    assert db.session.get(Challenge, cid).outcome["winners"] == sorted([a, b])  # 0 and 0: nobody lost
    with pytest.raises(ChallengeClosed) as refused:
        answer_quiz(cid, b, {qs[0].id: 0}, sent)
    assert refused.value.code == "quiz_over"
    db.session.rollback()
    from models import QuizAttempt

    row = db.session.execute(select(QuizAttempt).where(QuizAttempt.user_id == b)).scalar_one()
    assert (row.submitted_at, row.score) == (None, 0)
    _ledger_ok()
