"""Hardening of the challenges (issue 15 review): a banned winner gets nothing (their share goes back to the
payer), notices in the stake's unit, the per-challenge campaigns kept out of sight and ended, and what the
review found."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
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
        if fen:
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


def _settled_packet(make_user) -> tuple[int, int, RedPacket]:
    """Alice wins a 3-yuan stake from Bob: (alice, bob, Bob's packet to Alice), committed."""
    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    _steps({a: 9_000, b: 1_000})
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    packet = db.session.execute(select(RedPacket).where(RedPacket.owner_id == a)).scalar_one()
    return a, b, packet


def test_a_challenge_campaign_is_not_listed_unless_asked(make_user, make_campaign, make_operator, client):
    ordinary = make_campaign({"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance"}]})
    db.session.commit()
    _, _, packet = _settled_packet(make_user)
    _, headers = make_operator("admin")
    listed = {c["id"] for c in client.get("/admin/api/campaigns", headers=headers).json["items"]}
    assert ordinary.id in listed and packet.campaign_id not in listed
    asked = client.get("/admin/api/campaigns?challenges=true", headers=headers).json["items"]
    assert packet.campaign_id in {c["id"] for c in asked}


def test_nothing_but_its_challenge_issues_from_a_stake_campaign(make_user, make_operator, client, user_headers):
    from models import Campaign
    from rebate.errors import StateConflict
    from rebate.packets import issue_packet

    a, b, packet = _settled_packet(make_user)
    campaign = db.session.get(Campaign, packet.campaign_id)
    someone = make_user()
    db.session.commit()
    answer = client.post(
        f"/api/v1/campaigns/{campaign.id}/claim", json={}, headers=user_headers(someone, **{"Idempotency-Key": "k1"})
    )
    assert answer.status_code == 409, answer.json
    with pytest.raises(StateConflict) as refused:
        issue_packet(campaign, someone, source="claim", source_ref="x", now=MORNING)
    assert refused.value.code == "challenge_campaign"
    db.session.rollback()
    _, headers = make_operator("admin")
    reason = {"reason": "testing the guard"}
    for path, body in (
        (f"/admin/api/campaigns/{campaign.id}/packets/batch", {"count": 1, **reason}),
        (f"/admin/api/campaigns/{campaign.id}/pause", reason),
        (f"/admin/api/campaigns/{campaign.id}/end", reason),
    ):
        answer = client.post(path, json=body, headers={**headers, "Idempotency-Key": path})
        assert answer.status_code == 409 and answer.json["error"], (path, answer.json)
    assert db.session.execute(select(RedPacket).where(RedPacket.campaign_id == campaign.id)).scalars().all() == [
        db.session.get(RedPacket, packet.id)
    ]


def test_the_sweep_ends_a_stake_campaign_once_its_packet_is_done(make_user):
    from challenges import sweep_prizes
    from models import Campaign, CampaignStatus
    from rebate.packets import expire_due_packets

    a, b, packet = _settled_packet(make_user)
    assert db.session.get(Campaign, packet.campaign_id).status == CampaignStatus.ACTIVE
    assert sweep_prizes(MORNING) == 0
    assert expire_due_packets(packet.expires_at) == 1
    assert sweep_prizes(packet.expires_at) == 3_00
    db.session.commit()
    assert db.session.get(Campaign, packet.campaign_id).status == CampaignStatus.ENDED
    assert (cash(b), staked(b)) == (10_00, 0)
    assert sweep_prizes(packet.expires_at) == 0


def test_the_sweep_pages_past_prizes_kept_open_for_the_refund_watch(make_user, make_product, pay, monkeypatch):
    from datetime import timedelta

    import time_machine

    from challenges import sweep
    from rebate import create_order
    from rebate.orders import LineRequest
    from rebate.packets import expire_due_packets

    winner, _, spent = _settled_packet(make_user)
    at = MORNING + timedelta(hours=2)
    with time_machine.travel(at, tick=False):
        product = make_product(price_fen=20_00)
        order = create_order(db.session.get(User, winner), [LineRequest(product.id, 1)], spent.id, at)
        db.session.commit()
        pay(order, at=at)
    _, second_loser, last = _settled_packet(make_user)
    assert expire_due_packets(last.expires_at) == 1
    db.session.commit()
    real = sweep.open_prizes
    monkeypatch.setattr(sweep, "open_prizes", lambda limit=200, after=0: real(1, after))
    assert sweep.sweep_prizes(last.expires_at) == 3_00  # the spent packet's prize stays open; the next is reached
    db.session.commit()
    assert (cash(second_loser), staked(second_loser)) == (10_00, 0)


def test_a_stake_campaign_never_applies_to_someone_elses_order(make_user, make_product, pay):
    from datetime import timedelta

    import time_machine

    from models import Rebate
    from rebate import create_order
    from rebate.orders import LineRequest

    _, loser, packet = _settled_packet(make_user)
    stranger = make_user()
    at = MORNING + timedelta(hours=2)
    with time_machine.travel(at, tick=False):
        product = make_product(price_fen=20_00)
        order = create_order(stranger, [LineRequest(product.id, 1)], None, at)
        db.session.commit()
        pay(order, at=at)
    assert db.session.execute(select(Rebate).where(Rebate.campaign_id == packet.campaign_id)).first() is None
    assert cash(loser) == 7_00


def test_the_bot_keeps_a_groups_challenge_to_that_group(make_user):
    from challenges import bot
    from challenges.bindings import Speaker

    a, b, c = _people(make_user, 3)
    spec = ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1)
    theirs = create_challenge(a, spec, NOW, group=("wecom", "group-A")).id
    db.session.commit()

    def say(command, user_id, group):
        return bot.execute(command, bot.Context(Speaker("wecom", "bot", f"u{user_id}"), user_id, group), NOW)

    peek = say(bot.ShowStandings(theirs), b, "group-B")
    assert peek.code == "not_yours" and "排行榜" not in peek.text
    assert say(bot.ShowStandings(theirs), b, None).code == "not_yours"  # privately: not a participant
    assert say(bot.JoinChallenge(theirs), b, "group-B").code == "not_this_group"
    assert (cash(b), staked(b)) == (10_00, 0)
    assert say(bot.ShowStandings(theirs), c, "group-A").ok  # the group itself sees its leaderboard
    assert say(bot.JoinChallenge(theirs), c, "group-A").ok
    assert say(bot.ShowStandings(theirs), a, None).ok  # a participant, privately


def test_a_sponsor_prize_keeps_the_sponsors_per_person_limit(make_user, make_campaign):
    """A self-serve campaign gives one packet per person; two friends' sponsor challenges must not give more."""
    a, b = _people(make_user, 2, fen=0)
    sponsor = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]},
        packet_amount_fen=8_00,
        budget_limit_fen=100_00,
        trigger={"kind": "claim"},
        claim_limits={"per_person": 1, "min_interval_seconds": None, "per_ip_per_day": None},
    )
    db.session.commit()
    spec = ChallengeSpec(
        kind="steps", days=1, start_day=DAY1, stake_source="sponsor", sponsor_campaign_id=sponsor.id, prize_fen=8_00
    )
    first, second = create_challenge(a, spec, NOW).id, create_challenge(a, spec, NOW).id
    join_challenge(first, b, NOW)
    join_challenge(second, b, NOW)
    _steps({a: 3_000, b: 4_000})
    assert settle_challenge(first, MORNING) and settle_challenge(second, MORNING)
    db.session.commit()
    assert len(db.session.execute(select(RedPacket).where(RedPacket.owner_id == b)).all()) == 1
    refused = db.session.get(Challenge, second).outcome["refused"]
    assert [(r["to"], r["amount"]) for r in refused] == [(b, 8_00)]


def test_the_job_pages_past_challenges_still_running(app, make_user, monkeypatch):
    import time_machine

    from challenges import settle as settle_module
    from jobs import challenges as job
    from models import ChallengeStatus

    a, b, c, d = _people(make_user, 4)
    long = create_challenge(a, ChallengeSpec(kind="steps", days=3, stake=1_00, start_day=DAY1), NOW).id
    join_challenge(long, b, NOW)
    short = create_challenge(c, ChallengeSpec(kind="steps", days=1, stake=1_00, start_day=DAY1), NOW).id
    join_challenge(short, d, NOW)
    _steps({c: 2_000, d: 1_000})
    db.session.commit()
    real = settle_module.due_challenges
    monkeypatch.setattr(job, "due_challenges", lambda now, limit=100, after=0: real(now, 1, after))
    with time_machine.travel(at_beijing(DAY2, 9), tick=False):
        assert job.settle_challenges()["settled"] == 1  # the 3-day one is still running; the next is reached
    assert db.session.get(Challenge, short).status == ChallengeStatus.SETTLED
    assert db.session.get(Challenge, long).status == ChallengeStatus.RUNNING


def test_a_crash_mid_settlement_leaves_nothing_and_the_next_pass_settles_once(make_user, monkeypatch):
    from challenges import settle as settle_module
    from models import ChallengeStatus, LedgerEntry

    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    _steps({a: 9_000, b: 1_000})
    db.session.commit()
    entries = len(db.session.execute(select(LedgerEntry.id)).all())

    def crash(drafts):
        raise RuntimeError("the node died")

    monkeypatch.setattr(settle_module, "enqueue_many", crash)
    with pytest.raises(RuntimeError):
        settle_challenge(cid, MORNING)
    db.session.rollback()
    assert len(db.session.execute(select(LedgerEntry.id)).all()) == entries
    assert db.session.execute(select(RedPacket)).first() is None
    assert db.session.get(Challenge, cid).status != ChallengeStatus.SETTLED
    monkeypatch.undo()
    assert settle_challenge(cid, MORNING) is True
    db.session.commit()
    assert settle_challenge(cid, MORNING) is False
    assert (cash(a), staked(a), cash(b), staked(b)) == (10_00, 0, 7_00, 3_00)
    assert len(db.session.execute(select(RedPacket)).all()) == 1


def test_a_refused_start_through_the_bot_leaves_no_challenge_behind(make_user):
    """The bot answers a refusal and its callback commits: the refused start must not leave an empty challenge
    that becomes the group's latest (what a bare「加入」would then join)."""
    from sqlalchemy import func

    from challenges import bot
    from challenges.bindings import Speaker

    poor = make_user().id  # holds nothing: a 5-yuan stake is refused
    db.session.commit()
    ctx = bot.Context(Speaker("wecom", "bot", "poor"), poor, "group-A")
    reply = bot.execute(bot.StartChallenge(bot.Kind.STEPS, 3, 5_00), ctx, NOW)
    assert reply.code == "stake_above_held", reply
    db.session.commit()  # as the callback does
    assert db.session.execute(select(func.count()).select_from(Challenge)).scalar_one() == 0


def test_a_refused_join_through_the_bot_takes_no_place(make_user):
    from challenges import bot
    from challenges.bindings import Speaker

    (rich,) = _people(make_user, 1)
    poor = make_user().id
    cid = create_challenge(rich, ChallengeSpec(kind="steps", days=1, stake=5_00, start_day=DAY1), NOW).id
    db.session.commit()
    ctx = bot.Context(Speaker("wecom", "bot", "poor"), poor, None)
    for _ in range(3):
        assert bot.execute(bot.JoinChallenge(cid), ctx, NOW).code == "stake_above_held"
        db.session.commit()  # as the callback does
    assert db.session.get(Challenge, cid).participants == 1


def test_the_participants_do_not_learn_of_anothers_ban(make_user, client, user_headers):
    a, b = _people(make_user, 2)
    cid = create_challenge(a, ChallengeSpec(kind="steps", days=1, stake=3_00, start_day=DAY1), NOW).id
    join_challenge(cid, b, NOW)
    _steps({a: 9_000, b: 1_000})
    _ban(a)
    assert settle_challenge(cid, MORNING)
    db.session.commit()
    shown = client.get(f"/api/v1/challenges/{cid}", headers=user_headers(db.session.get(User, b))).json
    assert "withheld" not in shown["outcome"] and "banned" not in str(shown)
    assert db.session.get(Challenge, cid).outcome["withheld"]  # kept for the operators' trace


@pytest.mark.parametrize(
    "field, value",
    [
        ("days", True),
        ("days", "2"),
        ("days", 2.0),
        ("stake", "100"),
        ("stake", 100.0),
        ("max_participants", 2.0),
        ("goal", "10"),
    ],
)
def test_a_challenge_spec_takes_whole_numbers_only(field, value):
    # found by the user-API probe: strings, floats and booleans passed where every other endpoint answers 422
    spec = {"kind": "steps", "days": 1, "stake": 100, field: value}
    if field == "goal":
        spec["rule"] = "first_to_goal"
    with pytest.raises(ValidationError):
        ChallengeSpec.model_validate(spec)


def test_a_sponsor_challenge_with_numbers_as_strings_is_refused_by_the_api(client, make_user, user_headers):
    user = make_user()
    body = {"kind": "steps", "stake_source": "sponsor", "sponsor_campaign_id": "4", "prize_fen": "500", "days": True}
    response = client.post("/api/v1/challenges", json=body, headers={**user_headers(user), "Idempotency-Key": "lax1"})
    assert response.status_code == 422, response.get_json()
    fields = {d["field"] for d in response.json["details"]}
    assert {"sponsor_campaign_id", "prize_fen", "days"} <= fields
