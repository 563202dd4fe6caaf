"""Who wins and what moves: ties split (rounding down, the rest back to the payer), first to the goal, the
quiz's reversed direction, points stakes, a sponsor's prize, too few people, implausible steps, the report
deadline, and the job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from challenges import (
    ChallengeInvalid,
    ChallengeSpec,
    answer_quiz,
    create_challenge,
    group_challenges,
    join_challenge,
    record_steps,
    settle_challenge,
    settle_due,
    standings,
    start_quiz,
)
from models import Challenge, ChallengePrize, ChallengeStatus, Notice, RedPacket, StepDay, User, db
from tests.challenge_helpers import (
    DAY1,
    DAY2,
    DAY3,
    NOW,
    at_beijing,
    cash,
    fund,
    point_stake,
    points,
    staked,
)

MORNING_AFTER = at_beijing(DAY3, 8)


def _people(make_user, n: int, fen: int = 10_00) -> list[int]:
    ids = []
    for _ in range(n):
        u = make_user()
        if fen:
            fund(u.id, fen)
        ids.append(u.id)
    return ids


def _prizes() -> list[tuple]:
    rows = db.session.execute(select(ChallengePrize).order_by(ChallengePrize.id)).scalars()
    return [(p.payer_user_id, p.payee_user_id, p.amount) for p in rows]


def test_tied_winners_split_each_losers_stake_rounding_down(make_user):
    a, b, c = _people(make_user, 3)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=2, stake=5_01, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    join_challenge(cid, c, NOW)
    for uid, (d1, d2) in ((a, (5_000, 5_000)), (b, (7_000, 3_000)), (c, (1_000, 1_000))):
        record_steps(uid, [(DAY1, d1), (DAY2, d2)], MORNING_AFTER)
    assert settle_challenge(cid, MORNING_AFTER)
    db.session.commit()
    assert sorted(_prizes()) == sorted([(c, a, 2_50), (c, b, 2_50)])
    assert (cash(c), staked(c)) == (4_99 + 1, 5_00)  # 1 fen left over from the split comes back
    assert (cash(a), staked(a), cash(b), staked(b)) == (10_00, 0, 10_00, 0)
    results = {row.user_id: (row.rank, row.result) for row in standings(cid, MORNING_AFTER).rows}
    assert results == {a: (1, "tied"), b: (1, "tied"), c: (3, "lost")}


def test_everyone_equal_means_nobody_loses(make_user):
    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    late = db.session.get(Challenge, cid).report_deadline
    assert standings(cid, late - timedelta(seconds=1)).decided is False  # nobody uploaded: still waiting
    assert settle_challenge(cid, late)  # then missing data is zero for both
    db.session.commit()
    assert _prizes() == [] and (cash(a), cash(b), staked(a), staked(b)) == (10_00, 10_00, 0, 0)


def test_first_to_the_goal_wins_on_the_earliest_counted_day(make_user):
    a, b = _people(make_user, 2)
    spec = ChallengeSpec(kind="steps", days=3, stake=2_00, start_day=DAY1, rule="first_to_goal", goal=15_000)
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    day3_morning = at_beijing(DAY3, 8)
    record_steps(a, [(DAY1, 6_000), (DAY2, 10_000)], day3_morning)  # reaches 15,000 on day 2
    record_steps(b, [(DAY1, 16_000), (DAY2, 0)], day3_morning)  # … but Bob on day 1
    table = standings(cid, day3_morning)
    assert table.decided and table.winners == [b]
    assert settle_challenge(cid, day3_morning)  # settled before the last day: the goal decided it
    db.session.commit()
    assert _prizes() == [(a, b, 2_00)]


def test_the_quiz_reverses_the_direction(make_user):
    a, b = _people(make_user, 2)
    questions = [{"prompt": "2+2?", "choices": ["4", "5"], "answer": 0}]
    cid = create_challenge(
        a, ChallengeSpec(kind="quiz", days=1, stake=1_00, start_day=DAY1, questions=questions), NOW
    ).id
    join_challenge(cid, b, NOW)
    nine = at_beijing(DAY1, 9)
    _, qs = start_quiz(cid, a, nine)
    answer_quiz(cid, a, {qs[0].id: 0}, nine)
    start_quiz(cid, b, nine)
    answer_quiz(cid, b, {qs[0].id: 1}, nine)
    assert settle_challenge(cid, nine)  # everyone answered: decided
    db.session.commit()
    assert _prizes() == [(a, b, 1_00)]  # the winner rewards the one who learns
    packet = db.session.execute(select(RedPacket)).scalar_one()
    assert (packet.issuer_user_id, packet.owner_id) == (a, b)


def test_a_points_stake_moves_points(make_user):
    a, b = make_user().id, make_user().id
    fund(a, 500, points=True)
    fund(b, 300, points=True)
    spec = ChallengeSpec(kind="reading", days=1, stake=200, stake_source="points", start_day=DAY1)
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    assert (points(a), point_stake(a), points(b), point_stake(b)) == (300, 200, 100, 200)
    from challenges import check_in_reading

    check_in_reading(b, at_beijing(DAY1, 9))
    assert settle_challenge(cid, at_beijing(DAY2, 1))  # a reading day is final once it ended
    db.session.commit()
    assert (points(a), point_stake(a), points(b), point_stake(b)) == (300, 0, 500, 0)


def test_a_sponsor_pays_the_prize_and_nobody_stakes(make_user, make_merchant, make_campaign):
    a, b = _people(make_user, 2, fen=0)
    shop = make_merchant()
    sponsor = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 10_00}]},
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        packet_amount_fen=10_00,
        budget_limit_fen=100_00,
        trigger={"kind": "claim"},
    )
    spec = ChallengeSpec(
        kind="steps", days=1, start_day=DAY1, stake_source="sponsor", sponsor_campaign_id=sponsor.id, prize_fen=8_00
    )
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    record_steps(a, [(DAY1, 3_000)], at_beijing(DAY2, 8))
    record_steps(b, [(DAY1, 4_000)], at_beijing(DAY2, 8))
    assert settle_challenge(cid, at_beijing(DAY2, 8))
    db.session.commit()
    packet = db.session.execute(select(RedPacket)).scalar_one()
    assert (packet.owner_id, packet.campaign_id, packet.amount_fen, packet.issuer_merchant_id) == (
        b,
        sponsor.id,
        8_00,
        shop.id,
    )
    assert (cash(a), cash(b), staked(a), staked(b)) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    "fields, prize_fen",
    [
        ({"issuer_type": "user", "trigger": {"kind": "claim"}}, 1_00),  # a person's packets sponsor nothing
        ({"trigger": {"kind": "manual"}}, 1_00),  # not offered to everybody
        ({"trigger": {"kind": "claim"}}, 5_01),  # more than one of its packets
        ({"trigger": {"kind": "claim"}, "status": "paused"}, 1_00),
    ],
)
def test_only_a_running_self_serve_campaign_sponsors_and_at_most_one_packet(
    make_user, make_campaign, fields, prize_fen
):
    (a,) = _people(make_user, 1)
    if fields.get("issuer_type") == "user":
        fields = {**fields, "issuer_user_id": a}
    offered = make_campaign({"roles": []}, packet_amount_fen=5_00, **fields)
    spec = ChallengeSpec(
        kind="steps",
        days=1,
        start_day=DAY1,
        stake_source="sponsor",
        sponsor_campaign_id=offered.id,
        prize_fen=prize_fen,
    )
    with pytest.raises(ChallengeInvalid):
        create_challenge(a, spec, NOW)


def test_too_few_by_the_join_deadline_cancels_and_releases(make_user):
    (a,) = _people(make_user, 1)
    cid = create_challenge(
        a, ChallengeSpec(kind="steps", days=1, stake=4_00, start_day=DAY1), NOW, group=("wecom", "g1")
    ).id
    assert settle_challenge(cid, NOW) is False  # joining is still open
    assert settle_due(at_beijing(DAY1, 0)) == 1
    db.session.commit()
    assert db.session.get(Challenge, cid).status == ChallengeStatus.CANCELLED
    assert (cash(a), staked(a)) == (10_00, 0)
    assert [n.event for n in db.session.execute(select(Notice)).scalars()] == ["challenge_cancelled"]
    assert [c.id for c in group_challenges("wecom", "g1")] == [cid]


def test_implausible_steps_are_flagged_and_count_as_zero(make_user):
    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=3, stake=1_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    after = at_beijing(DAY3 + timedelta(days=1), 8)
    out = record_steps(a, [(DAY1, 120_000), (DAY2, 10_000), (DAY3, 10_000)], after)
    assert {f["reason"] for f in out.flagged} == {"over_cap"}
    out = record_steps(b, [(DAY1, 8_888), (DAY2, 8_888), (DAY3, 8_888)], after)
    assert [f["reason"] for f in out.flagged] == ["repeated"] * 3
    rows = {r.user_id: r.total for r in standings(cid, after).rows}
    assert rows == {a: 20_000, b: 0}
    assert db.session.get(StepDay, (a, DAY1)).flagged == "over_cap"


def test_the_job_settles_due_challenges(app, make_user):
    import time_machine

    from jobs.challenges import settle_challenges

    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    record_steps(a, [(DAY1, 2)], at_beijing(DAY2, 8))
    record_steps(b, [(DAY1, 1)], at_beijing(DAY2, 8))
    db.session.commit()
    with time_machine.travel(at_beijing(DAY2, 9), tick=False):
        assert settle_challenges()["settled"] == 1
        assert settle_challenges()["settled"] == 0
    assert db.session.get(Challenge, cid).status == ChallengeStatus.SETTLED


def test_a_sponsor_whose_budget_is_gone_is_on_the_record_and_the_results_stand(make_user, make_campaign):
    a, b = _people(make_user, 2, fen=0)
    sponsor = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]},
        packet_amount_fen=8_00,
        budget_limit_fen=3_00,
        trigger={"kind": "claim"},
    )
    spec = ChallengeSpec(
        kind="steps", days=1, start_day=DAY1, stake_source="sponsor", sponsor_campaign_id=sponsor.id, prize_fen=8_00
    )
    cid = create_challenge(a, spec, NOW).id
    join_challenge(cid, b, NOW)
    record_steps(a, [(DAY1, 3_000)], at_beijing(DAY2, 8))
    record_steps(b, [(DAY1, 4_000)], at_beijing(DAY2, 8))
    assert settle_challenge(cid, at_beijing(DAY2, 8))
    db.session.commit()
    challenge = db.session.get(Challenge, cid)
    assert challenge.status == ChallengeStatus.SETTLED
    assert challenge.outcome["refused"] == [{"to": b, "amount": 8_00, "refused": "budget_exhausted"}]
    assert db.session.execute(select(RedPacket)).first() is None


def test_a_reading_losers_share_back_is_reading_credit(make_user, make_product, pay):
    import time_machine

    from challenges import check_in_reading
    from models import Order
    from rebate import create_order
    from rebate.orders import LineRequest

    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="reading", days=1, stake=4_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    check_in_reading(a, at_beijing(DAY1, 9))
    assert settle_challenge(cid, at_beijing(DAY2, 1))
    db.session.commit()
    packet = db.session.execute(select(RedPacket)).scalar_one()
    assert (packet.owner_id, packet.issuer_user_id) == (a, b)
    spend_at = at_beijing(DAY2, 10)
    with time_machine.travel(spend_at, tick=False):
        product = make_product(price_fen=24_00)
        owner = db.session.get(User, a)
        order = create_order(owner, [LineRequest(product.id, 1)], packet.id, spend_at)
        db.session.commit()
        pay(order, at=spend_at)
    assert db.session.get(Order, order.id).paid_fen == 20_00
    assert points(b) > 0 and cash(b) == 6_00  # 10 % of 20 yuan as points, never cash; the stake is spent
    assert staked(b) == 0
