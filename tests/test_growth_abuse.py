"""Growth abuse probes: self-referral and own share links through a second account on the same phone, and a person
in two audience runs of one campaign at once. Each refusal is checked with its status and code, and with proof that
it changed nothing. Both databases."""

from __future__ import annotations

from sqlalchemy import func, select

from models import AudienceMember, AudienceRun, Campaign, RedPacket, RunStatus, ShareLink, User, db, utcnow
from models.operators import Actor
from rebate import audiences
from rebate.audiences import parse_definition
from risk import identifiers
from tests.concurrency import together

CONSUMER_5 = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def device_token(device: str) -> str:
    """The signed ``X-Device-Token`` of a device id (as ``POST /api/v1/devices`` hands one out)."""
    from web.growth_api import _devices

    return _devices().dumps({"d": device})


def on_device(user: User, device: str) -> None:
    """The person signed in on this phone once (the login notes its device among their identifiers)."""
    identifiers.note(identifiers.USER, user.id, device, "10.1.2.3", utcnow())
    db.session.commit()


def rows() -> tuple[int, ...]:
    db.session.rollback()
    return tuple(
        db.session.execute(select(func.count()).select_from(m)).scalar_one() for m in (RedPacket, ShareLink, User)
    )


# -- invite codes -------------------------------------------------------------------------------------------


def invite_code(client, user_headers, user) -> str:
    return client.get("/api/v1/me/invite", headers=user_headers(user)).get_json()["invite_code"]


def bind(client, user_headers, user, code, **headers):
    return client.post("/api/v1/referrals/bind", json={"code": code}, headers=user_headers(user, **headers))


def test_a_second_account_on_the_inviters_own_phone_cannot_bind_the_inviters_code(client, user_headers, make_user):
    # given: the inviter signed in on phone P; a fresh account (another WeChat account) binds from P
    inviter, second = make_user(), make_user()
    on_device(inviter, "phone-p")
    code = invite_code(client, user_headers, inviter)
    before = rows()

    # when: the second account binds the inviter's code from the same phone
    resp = bind(client, user_headers, second, code, **{"X-Device-Token": device_token("phone-p")})

    # then: 422 self_referral: a phone is one person's; no inviter, no starter packet
    assert (resp.status_code, resp.get_json()["error"]) == (422, "self_referral"), resp.get_json()
    assert rows() == before and db.session.get(User, second.id).inviter_id is None


def test_an_invitee_seen_on_the_inviters_phone_cannot_bind_without_a_device_token(client, user_headers, make_user):
    # given: both accounts signed in on phone P once; the bind itself carries no device token
    inviter, second = make_user(), make_user()
    on_device(inviter, "phone-p")
    on_device(second, "phone-p")

    resp = bind(client, user_headers, second, invite_code(client, user_headers, inviter))

    assert (resp.status_code, resp.get_json()["error"]) == (422, "self_referral")
    assert db.session.get(User, second.id).inviter_id is None


def test_a_friend_on_another_phone_binds_even_on_the_same_network(client, user_headers, make_user):
    # given: inviter and friend on their own phones, on one home network
    inviter, friend = make_user(), make_user()
    on_device(inviter, "phone-p")
    on_device(friend, "phone-q")

    resp = bind(
        client,
        user_headers,
        friend,
        invite_code(client, user_headers, inviter),
        **{"X-Device-Token": device_token("phone-q")},
    )

    assert resp.status_code == 201, resp.get_json()
    assert db.session.get(User, friend.id).inviter_id == inviter.id


# -- share links --------------------------------------------------------------------------------------------


def share_campaign(make_campaign) -> Campaign:
    return make_campaign(
        CONSUMER_5,
        budget_limit_fen=1_000_00,
        packet_amount_fen=5_00,
        trigger={"kind": "share", "sharer_reward_fen": 2_00},
        claim_limits=NO_LIMITS,
    )


def test_a_share_link_claimed_by_a_second_account_on_the_sharers_phone_is_the_sharers_own(
    client, user_headers, make_user, make_campaign
):
    # given: a share campaign rewarding the sharer 2 yuan a friend; the sharer signed in on phone P
    campaign = share_campaign(make_campaign)
    sharer, second = make_user(), make_user()
    on_device(sharer, "phone-p")
    token = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer)).get_json()[
        "token"
    ]
    before = rows()

    # when: another account claims it from phone P
    resp = client.post(
        f"/api/v1/share-links/{token}/claim",
        headers=user_headers(second, **{"X-Device-Token": device_token("phone-p")}),
    )

    # then: 422 own_share_link: no packet for either, no budget taken
    assert (resp.status_code, resp.get_json()["error"]) == (422, "own_share_link"), resp.get_json()
    assert rows() == before
    assert db.session.get(Campaign, campaign.id).budget_reserved_fen == 0

    # and: a friend on their own phone still claims, and the sharer is rewarded
    friend = make_user()
    ok = client.post(
        f"/api/v1/share-links/{token}/claim", headers=user_headers(friend, **{"X-Device-Token": device_token("q")})
    )
    assert ok.status_code == 201 and ok.get_json()["sharer_rewarded"] is True


# -- audience runs ------------------------------------------------------------------------------------------


def many_users(n: int) -> list[int]:
    db.session.add_all([User(status="active") for _ in range(n)])
    db.session.commit()
    return db.session.execute(select(User.id).order_by(User.id)).scalars().all()


def new_run(operator, campaign, holdout_bps: int = 0) -> AudienceRun:
    actor = Actor(operator, "127.0.0.1")
    audience = audiences.create_audience(actor, "everyone", parse_definition({"kind": "never_used_packet"}), None)
    run = audiences.start_run(actor, audience.id, campaign.id, holdout_bps, utcnow())
    db.session.commit()
    return run


def packets_of(campaign) -> dict[int, int]:
    db.session.expire_all()
    got = db.session.execute(
        select(RedPacket.owner_id, func.count())
        .where(RedPacket.campaign_id == campaign.id, RedPacket.source == "audience")
        .group_by(RedPacket.owner_id)
    )
    return dict(got.tuples().all())


def finish(run_id: int) -> None:
    while audiences.work_run(run_id, utcnow(), 50) not in (RunStatus.DONE, None):
        db.session.commit()
    db.session.commit()


def test_a_person_in_two_runs_of_one_campaign_gets_one_packet_and_the_second_run_says_why(
    app, make_operator, make_campaign
):
    # given: two audiences holding the same five people, each run on one campaign (two operators, two keys); the
    # campaign's own per-person limit is the default (one packet per person)
    ids = many_users(5)
    campaign = make_campaign(CONSUMER_5, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    operator, _ = make_operator("admin")
    first, second = new_run(operator, campaign), new_run(operator, campaign)

    # when: both are worked off
    finish(first.id)
    finish(second.id)

    # then: one packet each, and the second run records every member refused with the campaign's reason
    assert packets_of(campaign) == dict.fromkeys(ids, 1)
    db.session.expire_all()
    run = db.session.get(AudienceRun, second.id)
    assert (run.status, run.issued, run.refused) == (RunStatus.DONE, 0, 5)
    refusals = db.session.execute(select(AudienceMember.refusal).where(AudienceMember.run_id == second.id))
    assert set(refusals.scalars()) == {"person_limit"}
    assert db.session.get(Campaign, campaign.id).packets_issued == 5


def test_two_runs_of_one_campaign_worked_at_once_issue_each_person_once(app, make_operator, make_campaign):
    ids = many_users(30)
    campaign = make_campaign(CONSUMER_5, packet_amount_fen=1_00, budget_limit_fen=1_000_00)
    operator, _ = make_operator("admin")
    runs = [new_run(operator, campaign).id, new_run(operator, campaign).id]
    for run_id in runs:  # members chosen
        audiences.work_run(run_id, utcnow(), 10)
        db.session.commit()

    results = together(2, lambda i: finish(runs[i]), app=app)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert packets_of(campaign) == dict.fromkeys(ids, 1)
    db.session.expire_all()
    counted = [db.session.get(AudienceRun, r) for r in runs]
    assert sum(r.issued for r in counted) == 30 and sum(r.refused for r in counted) == 30
    members = db.session.execute(
        select(func.count()).where(AudienceMember.run_id.in_(runs), AudienceMember.packet_id.is_not(None))
    ).scalar_one()
    assert members == 30  # the counts are the members'
