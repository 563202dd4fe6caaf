"""Findings of the review of the challenges (issue 15), each pinned by a test.

* A clawback reads what the balance covers under the person's row lock, as a stake reservation and a
  withdrawal do: otherwise a stake reserved meanwhile spends what the clawback counted as recovered.
* An open challenge's terms, readable by anyone signed in, do not name its group (a WeCom chatid or a
  chat-tool opengid of a group the reader is not in).
* One prize the sweep cannot handle does not stall every loser's prize after it.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import create_engine, select

import jobs.challenges as challenge_job
from challenges import ChallengeSpec, create_challenge
from models import User, db, utcnow
from rebate import apply_refund, begin_refund
from tests.challenge_helpers import fund
from tests.concurrency import is_row_locked
from tests.conftest import PG_URL, on_postgres
from tests.money_helpers import app_money
from tests.test_refunds import story  # noqa: F401 - a paid order with a balance rebate
from tests.test_wecom_bot import robot  # noqa: F401 - the robot fixture


@pytest.mark.skipif(not on_postgres(), reason="row locks are PostgreSQL's (SQLite serialises every transaction)")
def test_a_clawback_holds_the_persons_row_while_it_reads_the_balance(story):  # noqa: F811
    _, user, _, order = story()
    begin_refund(order, "R1", 100_00)
    apply_refund(order.out_trade_no, "R1", 100_00, utcnow(), refund_id="wx-R1", money=app_money())
    probe_engine = create_engine(PG_URL)
    try:
        with probe_engine.connect() as probe:
            assert is_row_locked(probe, select(User).where(User.id == user.id))
    finally:
        probe_engine.dispose()
    db.session.commit()


def test_an_open_challenges_terms_do_not_name_its_group(client, make_user, user_headers):
    alice, bob = make_user(), make_user()
    fund(alice.id, 10_00)
    challenge = create_challenge(
        alice.id, ChallengeSpec(kind="steps", days=1, stake=1_00), utcnow(), group=("wecom", "chat-of-friends")
    )
    db.session.commit()
    terms = client.get(f"/api/v1/challenges/{challenge.id}", headers=user_headers(bob))
    assert terms.status_code == 200 and terms.json["group"] is None and terms.json["rows"] == []
    own = client.get(f"/api/v1/challenges/{challenge.id}", headers=user_headers(alice))
    assert own.json["group"] == ["wecom", "chat-of-friends"]  # a participant knows where it is played


def test_one_prize_that_fails_does_not_stop_the_sweep(app, monkeypatch):
    pages = iter([[1, 2, 3], []])
    monkeypatch.setattr(challenge_job, "due_challenges", lambda now, after=0: [])
    monkeypatch.setattr(challenge_job, "open_prizes", lambda after=0: next(pages))

    def sweep(prize_id, now):
        if prize_id == 2:
            raise RuntimeError("a prize that cannot be swept")
        return 1_00

    monkeypatch.setattr(challenge_job, "sweep_prize", sweep)
    assert challenge_job.settle_challenges() == Counter(returned_fen=2_00, sweep_failed=1)


def test_the_robots_record_of_a_binding_reply_does_not_keep_the_code(app, client, robot):  # noqa: F811
    from models import BotCallback

    _, text = robot("dana", "绑定")
    code = text.split("：", 1)[1].split("\n", 1)[0]
    kept = db.session.execute(select(BotCallback.reply)).scalars().all()
    assert kept and not any(code in (reply or "") for reply in kept)
