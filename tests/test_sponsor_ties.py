"""A sponsor's challenge that nobody loses: everyone reaching the goal together wins the prize; everyone equal under
``highest_total`` wins nothing, and the outcome says the sponsor keeps the whole prize."""

from __future__ import annotations

from sqlalchemy import select

from challenges import ChallengeSpec, create_challenge, join_challenge, record_steps, settle_challenge
from models import Challenge, RedPacket, db
from tests.challenge_helpers import DAY1, DAY2, NOW, at_beijing

MORNING = at_beijing(DAY2, 8)


def _sponsor(make_campaign):
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]},
        packet_amount_fen=9_00,
        budget_limit_fen=100_00,
        trigger={"kind": "claim"},
    )
    db.session.commit()
    return campaign


def _challenge(make_user, make_campaign, steps: list[int], **spec):
    sponsor = _sponsor(make_campaign)
    people = [make_user().id for _ in steps]
    spec = ChallengeSpec(
        kind="steps",
        days=1,
        start_day=DAY1,
        stake_source="sponsor",
        sponsor_campaign_id=sponsor.id,
        prize_fen=9_00,
        **spec,
    )
    cid = create_challenge(people[0], spec, NOW).id
    for person in people[1:]:
        join_challenge(cid, person, NOW)
    for person, count in zip(people, steps, strict=True):
        record_steps(person, [(DAY1, count)], MORNING)
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    return db.session.get(Challenge, cid), people


def _packets(people: list[int]) -> dict[int, int]:
    rows = db.session.execute(select(RedPacket.owner_id, RedPacket.amount_fen).where(RedPacket.owner_id.in_(people)))
    return dict(rows.all())


def test_everyone_reaching_the_sponsors_goal_on_the_same_day_shares_the_prize(make_user, make_campaign):
    challenge, people = _challenge(make_user, make_campaign, [8_000, 9_500, 12_000], rule="first_to_goal", goal=8_000)
    assert challenge.outcome["winners"] == sorted(people)
    assert _packets(people) == dict.fromkeys(people, 3_00)  # 9.00 split three ways
    assert challenge.outcome["remainder"] == 0
    paid = sum(p["amount"] for p in challenge.outcome["prizes"])
    assert paid + challenge.outcome["remainder"] == 9_00


def test_everyone_equal_under_highest_total_wins_nothing_and_the_sponsor_keeps_the_prize(make_user, make_campaign):
    challenge, people = _challenge(make_user, make_campaign, [0, 0])
    assert _packets(people) == {}
    assert challenge.outcome["prizes"] == []
    assert challenge.outcome["remainder"] == 9_00  # said, not left to be inferred


def test_nobody_reaching_the_goal_wins_nothing(make_user, make_campaign):
    challenge, people = _challenge(make_user, make_campaign, [1_000, 2_000], rule="first_to_goal", goal=8_000)
    assert challenge.outcome["winners"] == []
    assert _packets(people) == {}
    assert challenge.outcome["remainder"] == 9_00
