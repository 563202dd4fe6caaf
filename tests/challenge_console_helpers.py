"""A week of challenges for the operators' pages, made through the domain's public functions.

Everything happened in the past week (``base`` is a week ago), so the pages read it at the real clock:

* ``settled``: a two-day step challenge in a WeCom group, 5 yuan from each loser. Alice walks most; Bob's
  data arrive; Carol's first day is over the plausibility cap (flagged: zero) and her second never arrives
  (settled at the report deadline: zero). Bob's and Carol's stakes fund a packet each to Alice; Alice spends
  Bob's on a 20-yuan order, so Bob (its issuer) earns his rebate back.
* ``quiz``: Alice and Bob, one question; Alice knows it and rewards Bob (the direction reversed).
* ``cancelled``: a points challenge nobody else joined.
* ``mine``: a one-day reading challenge sponsored by ``shop``'s campaign (Dave reads more and gets the prize).
* ``theirs``: an open step challenge sponsored by ``other``'s campaign, in a chat-tool group.
* ``open``: an open step challenge started in the mini-program today (no group).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from challenges import (
    ChallengeSpec,
    answer_quiz,
    check_in_reading,
    create_challenge,
    join_challenge,
    record_steps,
    settle_challenge,
    start_quiz,
)
from challenges.days import day_start, today
from models import Challenge, ChallengePrize, RedPacket, User, db, utcnow
from rebate import create_order
from rebate.orders import LineRequest
from tests.challenge_helpers import fund

SPONSOR_RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]}
WECOM_GROUP = "wrOgQhDgAAcwMTB7YmDkbeBsgT_KAAAA"


def _sponsor(make_merchant, make_campaign):
    shop = make_merchant()
    campaign = make_campaign(
        SPONSOR_RULES,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=10_00,
        budget_limit_fen=100_00,
        trigger={"kind": "claim"},  # only a self-serve campaign sponsors a challenge
    )
    return shop, campaign


def play_week(make_user, make_merchant, make_campaign, make_product, pay) -> dict:
    now = utcnow()
    # noon (Beijing) a week ago: joins minutes after it stay before day 1's join deadline whatever the time of day
    # the tests run (a week ago to the minute, at 23:55 Beijing, they fell after it and every join was refused)
    base = day_start(today(now - timedelta(days=7))) + timedelta(hours=12)
    day1 = today(base) + timedelta(days=1)
    day2, day3 = day1 + timedelta(days=1), day1 + timedelta(days=2)
    people = {}
    for name in ("Alice", "Bob", "Carol", "Dave", "Erin"):
        user = make_user()
        user.nickname = name
        people[name] = user.id
    alice, bob, carol, dave, erin = people.values()
    for uid in (alice, bob, carol):
        fund(uid, 20_00)
    fund(bob, 500, key="points", points=True)

    # a step challenge in a WeCom group, settled at the report deadline
    spec = ChallengeSpec(kind="steps", days=2, stake=5_00, start_day=day1, title="三天走路")
    settled = create_challenge(alice, spec, base, group=("wecom", WECOM_GROUP)).id
    join_challenge(settled, bob, base + timedelta(minutes=5))
    join_challenge(settled, carol, base + timedelta(minutes=6))
    morning = day_start(day3) + timedelta(hours=8)
    record_steps(alice, [(day1, 12_000), (day2, 9_000)], morning)
    record_steps(bob, [(day1, 8_000), (day2, 7_000)], morning)
    record_steps(carol, [(day1, 120_000)], day_start(day2) + timedelta(hours=1))  # over the cap: flagged
    deadline = db.session.get(Challenge, settled).report_deadline
    assert settle_challenge(settled, deadline)

    # a quiz: the winner rewards the loser
    questions = [{"prompt": "2+2?", "choices": ["4", "5"], "answer": 0}]
    quiz = create_challenge(alice, ChallengeSpec(kind="quiz", stake=1_00, start_day=day1, questions=questions), base)
    quiz = quiz.id
    join_challenge(quiz, bob, base)
    nine = day_start(day1) + timedelta(hours=9)
    _, asked = start_quiz(quiz, alice, nine)
    answer_quiz(quiz, alice, {asked[0].id: 0}, nine)
    start_quiz(quiz, bob, nine)
    answer_quiz(quiz, bob, {asked[0].id: 1}, nine)
    assert settle_challenge(quiz, nine)

    # nobody joined Bob's points challenge
    spec = ChallengeSpec(kind="reading", days=1, stake=200, stake_source="points", start_day=day1)
    cancelled = create_challenge(bob, spec, base).id
    assert settle_challenge(cancelled, day_start(day1))

    # a reading challenge sponsored by the shop's campaign
    shop, campaign = _sponsor(make_merchant, make_campaign)
    spec = ChallengeSpec(
        kind="reading", days=1, start_day=day1, stake_source="sponsor", sponsor_campaign_id=campaign.id, prize_fen=8_00
    )
    mine = create_challenge(dave, spec, base).id
    join_challenge(mine, erin, base)
    check_in_reading(dave, day_start(day1) + timedelta(hours=9))
    check_in_reading(dave, day_start(day1) + timedelta(hours=10))
    check_in_reading(erin, day_start(day1) + timedelta(hours=9))
    assert settle_challenge(mine, day_start(day2) + timedelta(hours=1))

    # open ones: another merchant's sponsored challenge in a chat-tool group, and one in no group
    other, other_campaign = _sponsor(make_merchant, make_campaign)
    spec = ChallengeSpec(
        kind="steps", days=3, stake_source="sponsor", sponsor_campaign_id=other_campaign.id, prize_fen=5_00
    )
    theirs = create_challenge(erin, spec, now, group=("chattool", "tGroupOpenid-abcdefgh")).id
    opened = create_challenge(alice, ChallengeSpec(kind="steps", days=3, stake=1_00), now).id
    db.session.commit()

    # Alice spends Bob's packet on a 20-yuan order: Bob, its issuer, earns 10 % of what she paid
    prize = db.session.execute(
        select(ChallengePrize).where(ChallengePrize.challenge_id == settled, ChallengePrize.payer_user_id == bob)
    ).scalar_one()
    packet = db.session.get(RedPacket, prize.packet_id)
    product = make_product(price_fen=20_00)
    order = create_order(db.session.get(User, alice), [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    return {
        "people": people,
        "settled": settled,
        "quiz": quiz,
        "cancelled": cancelled,
        "mine": mine,
        "theirs": theirs,
        "open": opened,
        "shop": shop.id,
        "other": other.id,
        "campaign": campaign.id,
        "other_campaign": other_campaign.id,
        "bob_packet": packet.id,
        "order": order.id,
        "days": (day1, day2),
    }
