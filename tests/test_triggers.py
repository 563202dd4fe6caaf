"""Issue triggers (issue 6, item 1): registration, daily sign-in with streaks, share links,
referral binding with the inviter's earnings, and the order-paid threshold.

Every refusal is checked with its status and code, and with proof that it changed nothing.
Business days are Beijing days: 16:30 UTC is already the next day in Beijing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from ledger import account, balance
from models import AccountKind, Campaign, Order, Rebate, RedPacket, ShareLink, SignIn, User, db, utcnow
from rebate import create_order, issue_packet
from rebate.errors import Invalid
from rebate.orders import LineRequest
from rebate.triggers import on_registered
from risk import PlatformLimits
from web.errors import KIND_STATUS

K = AccountKind
CONSUMER_5 = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
NO_LIMITS = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None}


def count(model, **where) -> int:
    stmt = select(func.count()).select_from(model)
    for name, value in where.items():
        stmt = stmt.where(getattr(model, name) == value)
    return db.session.execute(stmt).scalar_one()


def budget(campaign: Campaign) -> tuple[int, int]:
    db.session.refresh(campaign)
    return campaign.budget_reserved_fen, campaign.budget_committed_fen


def snapshot() -> tuple[int, ...]:
    db.session.rollback()
    return tuple(count(m) for m in (RedPacket, SignIn, ShareLink, Rebate, Order))


def buy(user, product, quantity=1, packet=None, now=None) -> Order:
    order = create_order(user, [LineRequest(product.id, quantity)], packet.id if packet else None, now or utcnow())
    db.session.commit()
    return order


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- registration -------------------------------------------------------------------


def test_registration_issues_a_tiered_newcomer_packet_5_off_from_0_and_10_off_from_50(
    make_user, make_product, make_campaign, pay
):
    # given: a newcomer campaign: 5 yuan off any order, 10 yuan off from 50; consumer 5 % capped at 3 yuan
    campaign = make_campaign(
        CONSUMER_5,
        budget_limit_fen=1_000_00,
        packet_tiers=[{"min_spend_fen": 0, "amount_fen": 5_00}, {"min_spend_fen": 50_00, "amount_fen": 10_00}],
        trigger={"kind": "registration"},
    )
    amy, ben = make_user(), make_user()

    # when: both register
    [amy_packet] = on_registered(amy, utcnow(), limits=PlatformLimits.off())
    [ben_packet] = on_registered(ben, utcnow(), limits=PlatformLimits.off())
    db.session.commit()

    # then: each packet reserves the top tier (10) plus the caps (3)
    assert (amy_packet.amount_fen, amy_packet.reserved_fen, amy_packet.source) == (10_00, 13_00, "registration")
    assert budget(campaign) == (26_00, 0)

    # when: registration fires again for amy (a retried event)
    before = snapshot()
    assert [p.id for p in on_registered(amy, utcnow(), limits=PlatformLimits.off())] == [amy_packet.id]
    db.session.commit()

    # then: nothing new
    assert snapshot() == before and budget(campaign) == (26_00, 0)

    # when: amy spends hers on a 40-yuan order, ben on a 60-yuan order
    small = buy(amy, make_product(price_fen=40_00), packet=amy_packet)
    large = buy(ben, make_product(price_fen=60_00), packet=ben_packet)

    # then: 40 reaches only the 5-yuan tier, 60 reaches the 10-yuan tier
    assert (small.total_fen, small.discount_fen, small.payable_fen) == (40_00, 5_00, 35_00)
    assert (large.total_fen, large.discount_fen, large.payable_fen) == (60_00, 10_00, 50_00)

    # when: both are paid
    pay(small)
    pay(large)

    # then: 5 % of 35 = 1.75 and 5 % of 50 = 2.50; the budget commits face + rebate, reservations released
    assert bal(K.USER_CASH, "user", amy.id) == 1_75
    assert bal(K.USER_CASH, "user", ben.id) == 2_50
    assert budget(campaign) == (0, 5_00 + 1_75 + 10_00 + 2_50)
    assert bal(K.PLATFORM_MARKETING_FUND) == -(5_00 + 1_75 + 10_00 + 2_50)


def test_registration_with_a_tiered_packet_below_the_lowest_tier_is_refused_with_the_minimum(
    make_user, make_product, make_campaign
):
    # given: a newcomer packet whose lowest tier starts at 20 yuan
    make_campaign(
        CONSUMER_5,
        budget_limit_fen=100_00,
        packet_tiers=[{"min_spend_fen": 20_00, "amount_fen": 3_00}, {"min_spend_fen": 50_00, "amount_fen": 10_00}],
        trigger={"kind": "registration"},
    )
    amy = make_user()
    [packet] = on_registered(amy, utcnow(), limits=PlatformLimits.off())
    db.session.commit()
    before = snapshot()

    # when: a 19.99-yuan order tries to use it
    with pytest.raises(Invalid) as info:
        buy(amy, make_product(price_fen=19_99), packet=packet)
    db.session.rollback()

    # then: 422 below_min_spend naming the lowest tier; nothing written
    assert (info.value.code, KIND_STATUS[info.value.kind]) == ("below_min_spend", 422)
    assert "2000 fen" in str(info.value)
    assert snapshot() == before
    db.session.refresh(packet)
    assert packet.status == "issued"


def test_registration_skips_a_campaign_whose_budget_is_exhausted_with_an_alert(make_user, make_campaign):
    from models import Alert

    # given: a newcomer campaign with room for one reservation (5 + 3)
    campaign = make_campaign(
        CONSUMER_5, budget_limit_fen=8_00, packet_amount_fen=5_00, trigger={"kind": "registration"}
    )
    amy, ben = make_user(), make_user()
    assert len(on_registered(amy, utcnow(), limits=PlatformLimits.off())) == 1
    db.session.commit()

    # when: a second person registers
    issued = on_registered(ben, utcnow(), limits=PlatformLimits.off())
    db.session.commit()

    # then: registration still succeeds, no packet, the budget is untouched, and an alert says why
    assert issued == [] and count(RedPacket, owner_id=ben.id) == 0
    assert budget(campaign) == (8_00, 0)
    assert count(Alert, kind="budget_exhausted") == 1


def test_login_of_a_new_person_fires_the_registration_trigger(client, make_campaign):
    # given: a running newcomer campaign
    make_campaign(CONSUMER_5, budget_limit_fen=100_00, packet_amount_fen=5_00, trigger={"kind": "registration"})

    # when: a person logs in through the mini-program for the first time
    resp = client.post("/api/v1/auth/login", json={"code": "code-newcomer"})
    assert resp.status_code == 200
    user_id = resp.get_json()["user"]["id"]

    # then: the newcomer packet is theirs (the only path that creates users must fire the trigger)
    assert count(RedPacket, owner_id=user_id, source="registration") == 1


# -- daily sign-in ------------------------------------------------------------------


def sign_in_campaign(make_campaign, **fields):
    fields.setdefault("budget_limit_fen", 1_000_00)
    return make_campaign(
        CONSUMER_5,
        packet_amount_fen=1_00,
        trigger={"kind": "daily_sign_in", "streak_bonus": [{"days": 7, "amount_fen": 5_00}]},
        **fields,
    )


def sign_in_at(client, user_headers, user, when: datetime):
    with time_machine.travel(when, tick=False):
        return client.post("/api/v1/sign-in", headers=user_headers(user))


def test_sign_in_once_per_beijing_day_and_16_30_utc_is_the_next_day(client, user_headers, make_user, make_campaign):
    # given: a sign-in campaign paying 1 yuan a day
    campaign = sign_in_campaign(make_campaign)
    amy = make_user()

    # when: amy signs in at 09:00 and at 15:59 UTC (08:00 and 23:59 in Beijing, 5 March)
    first = sign_in_at(client, user_headers, amy, at("2025-03-05T00:00:00"))
    second = sign_in_at(client, user_headers, amy, at("2025-03-05T15:59:00"))

    # then: one sign-in, one packet; the second call answers the same day with no packet
    assert first.status_code == 200 and second.status_code == 200
    assert first.get_json()["day"] == second.get_json()["day"] == "2025-03-05"
    assert first.get_json()["streak"] == 1 and len(first.get_json()["packets"]) == 1
    assert second.get_json()["packets"] == []
    assert count(SignIn, user_id=amy.id) == 1 and count(RedPacket, owner_id=amy.id) == 1
    assert budget(campaign) == (1_00 + 3_00, 0)

    # when: she signs in at 16:30 UTC the same UTC day (00:30 on 6 March in Beijing)
    third = sign_in_at(client, user_headers, amy, at("2025-03-05T16:30:00"))

    # then: that is a new Beijing day: streak 2, a second packet
    assert third.get_json()["day"] == "2025-03-06" and third.get_json()["streak"] == 2
    assert count(SignIn, user_id=amy.id) == 2 and count(RedPacket, owner_id=amy.id) == 2


def test_sign_in_streak_pays_the_7_day_bonus_and_a_missed_day_restarts_it(
    client, user_headers, make_user, make_campaign
):
    # given: 1 yuan a day, 5 yuan on every 7th day of a streak
    campaign = sign_in_campaign(make_campaign)
    amy = make_user()
    start = at("2025-03-02T02:00:00")  # 10:00 Beijing, 2 March

    # when: amy signs in seven Beijing days in a row
    answers = [sign_in_at(client, user_headers, amy, start + timedelta(days=d)).get_json() for d in range(7)]

    # then: streaks 1..7; days 1-6 pay 1 yuan, day 7 pays the 5-yuan bonus
    assert [a["streak"] for a in answers] == [1, 2, 3, 4, 5, 6, 7]
    assert [a["packets"][0]["amount_fen"] for a in answers] == [1_00] * 6 + [5_00]
    assert budget(campaign) == (6 * (1_00 + 3_00) + (5_00 + 3_00), 0)

    # when: she skips 9 March and signs in on 10 March
    after_gap = sign_in_at(client, user_headers, amy, start + timedelta(days=8)).get_json()

    # then: the streak starts again at 1 with the plain 1-yuan packet
    assert after_gap["day"] == "2025-03-10" and after_gap["streak"] == 1
    assert after_gap["packets"][0]["amount_fen"] == 1_00


def test_sign_in_bonus_packet_is_spent_at_its_own_face_value(make_user, make_product, make_campaign, pay):
    from rebate.triggers import sign_in

    # given: amy's seventh consecutive sign-in earned the 5-yuan bonus packet
    campaign = sign_in_campaign(make_campaign)
    amy = make_user()
    start = at("2025-03-02T02:00:00")
    for d in range(7):
        record, packets = sign_in(amy, start + timedelta(days=d), limits=PlatformLimits.off())
        db.session.commit()
    bonus = packets[0]
    assert (record.streak, bonus.amount_fen, bonus.reserved_fen) == (7, 5_00, 8_00)

    # when: she spends it on a 30-yuan order
    order = buy(amy, make_product(price_fen=30_00), packet=bonus, now=start + timedelta(days=7))
    pay(order, at=start + timedelta(days=7))

    # then: 5 off, 5 % of 25 = 1.25 back; the bonus' reservation became 6.25 committed
    assert (order.discount_fen, order.payable_fen) == (5_00, 25_00)
    assert bal(K.USER_CASH, "user", amy.id) == 1_25
    assert budget(campaign) == (6 * 4_00, 6_25)


def test_sign_in_is_recorded_even_when_the_campaign_is_paused(client, user_headers, make_user, make_campaign):
    # given: a paused sign-in campaign
    campaign = sign_in_campaign(make_campaign, status="paused")
    amy = make_user()

    # when: amy signs in
    resp = sign_in_at(client, user_headers, amy, at("2025-03-05T02:00:00"))

    # then: the sign-in counts (streak 1) but the paused campaign issues nothing
    assert resp.status_code == 200 and resp.get_json()["packets"] == []
    assert count(SignIn) == 1 and count(RedPacket) == 0 and budget(campaign) == (0, 0)


def test_sign_in_needs_a_signed_in_user(client):
    resp = client.post("/api/v1/sign-in")
    assert resp.status_code == 401 and resp.get_json()["error"] == "missing_token"
    assert count(SignIn) == 0


# -- share links --------------------------------------------------------------------


def share_campaign(make_campaign, **fields):
    fields.setdefault("claim_limits", NO_LIMITS)
    return make_campaign(
        CONSUMER_5,
        budget_limit_fen=1_000_00,
        packet_amount_fen=5_00,
        trigger={"kind": "share", "sharer_reward_fen": 2_00},
        **fields,
    )


def test_share_link_friend_claims_and_both_are_rewarded_once(client, user_headers, make_user, make_campaign):
    # given: a share campaign: the friend gets 5 yuan, the sharer 2 yuan per friend
    campaign = share_campaign(make_campaign)
    sharer, friend = make_user(), make_user()

    # when: the sharer asks for a link twice
    link = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer))
    again = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer))

    # then: one link, the same token both times
    assert link.status_code == 201 and again.status_code == 201
    token = link.get_json()["token"]
    assert again.get_json()["token"] == token and count(ShareLink) == 1

    # when: the friend claims through it
    resp = client.post(f"/api/v1/share-links/{token}/claim", headers=user_headers(friend))

    # then: a 5-yuan packet for the friend, a 2-yuan reward packet for the sharer
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["sharer_rewarded"] is True and body["packet"]["amount_fen"] == 5_00
    friend_packet = db.session.execute(select(RedPacket).filter_by(owner_id=friend.id)).scalar_one()
    sharer_packet = db.session.execute(select(RedPacket).filter_by(owner_id=sharer.id)).scalar_one()
    assert (friend_packet.id, friend_packet.source) == (body["packet"]["id"], "share")
    assert (sharer_packet.amount_fen, sharer_packet.source, sharer_packet.reserved_fen) == (2_00, "share_reward", 5_00)
    assert budget(campaign) == (8_00 + 5_00, 0)

    # when: the friend claims again
    before = snapshot()
    repeat = client.post(f"/api/v1/share-links/{token}/claim", headers=user_headers(friend))

    # then: the same packet, no new rows, no more budget
    assert repeat.status_code == 201 and repeat.get_json()["packet"]["id"] == friend_packet.id
    assert snapshot() == before and budget(campaign) == (13_00, 0)


def test_share_link_refusals_own_link_422_unknown_404_and_they_change_nothing(
    client, user_headers, make_user, make_campaign
):
    from models.limits import LimitCounter

    # given: a share link with the default claim limits
    campaign = share_campaign(make_campaign, claim_limits=None)
    sharer = make_user()
    token = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer)).get_json()[
        "token"
    ]
    before = snapshot()

    # when: the sharer claims their own link
    own = client.post(f"/api/v1/share-links/{token}/claim", headers=user_headers(sharer))

    # then: 422 own_share_link; no packet, no budget, no limit slot taken
    assert own.status_code == 422 and own.get_json()["error"] == "own_share_link"

    # when: someone claims a token that does not exist
    unknown = client.post("/api/v1/share-links/NoSuchToken123/claim", headers=user_headers(make_user()))

    # then: 404
    assert unknown.status_code == 404
    assert snapshot() == before and budget(campaign) == (0, 0) and count(LimitCounter) == 0


def test_share_link_needs_a_share_campaign(client, user_headers, make_user, make_campaign):
    # given: a campaign whose packets come from registration
    campaign = make_campaign(CONSUMER_5, packet_amount_fen=5_00, trigger={"kind": "registration"})

    # when: a user asks it for a share link
    resp = client.post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(make_user()))

    # then: 409 campaign_not_shareable and no link
    assert resp.status_code == 409 and resp.get_json()["error"] == "campaign_not_shareable"
    assert count(ShareLink) == 0


# -- referral binding ---------------------------------------------------------------


def invite_code(client, user_headers, user) -> str:
    resp = client.get("/api/v1/me/invite", headers=user_headers(user))
    assert resp.status_code == 200
    return resp.get_json()["invite_code"]


def bind(client, user_headers, user, code):
    return client.post("/api/v1/referrals/bind", json={"code": code}, headers=user_headers(user))


def test_invite_code_is_stable_and_binding_sets_the_inviter(client, user_headers, make_user):
    # given: an inviter's code
    inviter, newbie = make_user(), make_user()
    code = invite_code(client, user_headers, inviter)
    assert invite_code(client, user_headers, inviter) == code

    # when: a new person binds with it (lower case works too)
    resp = bind(client, user_headers, newbie, code.lower())

    # then: bound, inviter set
    assert resp.status_code == 201 and resp.get_json() == {"bound": True, "packets": []}
    db.session.refresh(newbie)
    assert newbie.inviter_id == inviter.id and newbie.invited_at is not None


def test_referral_binding_refusals_with_their_reasons(client, user_headers, make_user, make_product, pay):
    # given: two inviters and a few new people
    first, second = make_user(), make_user()
    first_code, second_code = invite_code(client, user_headers, first), invite_code(client, user_headers, second)
    newbie = make_user()

    def refused(user, code, status, error):
        before = snapshot()
        inviter_before = db.session.get(User, user.id).inviter_id
        resp = bind(client, user_headers, user, code)
        assert (resp.status_code, resp.get_json()["error"]) == (status, error)
        assert snapshot() == before and db.session.get(User, user.id).inviter_id == inviter_before

    # then: an unknown code is 404, one's own code 422
    refused(newbie, "ZZZZ9999", 404, "invite_code_not_found")
    refused(first, first_code, 422, "self_referral")

    # and: a person bound once cannot take a second inviter
    assert bind(client, user_headers, newbie, first_code).status_code == 201
    refused(newbie, second_code, 409, "already_invited")
    assert db.session.get(User, newbie.id).inviter_id == first.id

    # and: a person who already paid for an order is no longer new
    buyer = make_user()
    pay(buy(buyer, make_product(price_fen=10_00)))
    refused(buyer, first_code, 409, "bind_window_closed")

    # and: a malformed code is a validation error
    resp = bind(client, user_headers, make_user(), "no spaces!")
    assert resp.status_code == 422


def test_referral_binding_window_is_7_days_from_joining(client, user_headers, make_user):
    inviter = make_user()
    code = invite_code(client, user_headers, inviter)
    joined = at("2025-03-01T04:00:00")
    with time_machine.travel(joined, tick=False):
        late, on_time = make_user(), make_user()

    # when: one binds exactly 7 days after joining, the other 7 days and 1 second after
    with time_machine.travel(joined + timedelta(days=7), tick=False):
        ok = bind(client, user_headers, on_time, code)
    with time_machine.travel(joined + timedelta(days=7, seconds=1), tick=False):
        too_late = bind(client, user_headers, late, code)

    # then: the first binds, the second is 409 bind_window_closed and stays unbound
    assert ok.status_code == 201
    assert too_late.status_code == 409 and too_late.get_json()["error"] == "bind_window_closed"
    assert db.session.get(User, late.id).inviter_id is None


def test_mutual_referral_is_refused(client, user_headers, make_user):
    # given: amy invited ben
    amy, ben = make_user(), make_user()
    assert bind(client, user_headers, ben, invite_code(client, user_headers, amy)).status_code == 201

    # when: amy (still new, no order) binds with ben's code
    resp = bind(client, user_headers, amy, invite_code(client, user_headers, ben))

    # then: refused: an invitee cannot become their own inviter's inviter (each would earn on the other)
    assert resp.status_code in (409, 422)
    assert db.session.get(User, amy.id).inviter_id is None


def referral_campaigns(make_campaign, referral_days=30):
    """A user-issued 10-yuan starter packet, and an inviter reward of 10 % on the invitee's spend."""
    starter = make_campaign(
        {"roles": [{"role": "issuer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]},
        issuer_type="user",
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        trigger={"kind": "referral_bind"},
    )
    reward = make_campaign(
        {
            "roles": [{"role": "inviter", "rate_bps": 1000, "form": "balance", "cap_fen": 50_00}],
            "applies_to": "referral",
            "referral_days": referral_days,
        },
        budget_limit_fen=1_000_00,
    )
    return starter, reward


def test_referral_bind_issues_a_starter_packet_from_the_inviter_and_the_inviter_earns_on_spend(
    client, user_headers, make_user, make_product, make_campaign, pay
):
    # given: a starter-packet campaign issued by users and a 10 % inviter reward for 30 days
    starter, reward = referral_campaigns(make_campaign)
    inviter, newbie = make_user(), make_user()

    # when: the newbie binds with the inviter's code
    resp = bind(client, user_headers, newbie, invite_code(client, user_headers, inviter))

    # then: a 10-yuan starter packet whose issuer is the inviter
    assert resp.status_code == 201 and len(resp.get_json()["packets"]) == 1
    packet = db.session.execute(select(RedPacket).filter_by(owner_id=newbie.id)).scalar_one()
    assert (packet.amount_fen, packet.issuer_type, packet.issuer_user_id) == (10_00, "user", inviter.id)
    assert (packet.source, packet.reserved_fen) == ("referral_bind", 15_00)

    # when: the newbie spends it on a 100-yuan order (pays 90)
    order = buy(newbie, make_product(price_fen=100_00), packet=packet)
    pay(order)

    # then: the inviter earns 5 % of 90 as the packet's issuer and 10 % of 90 as the inviter
    got = {r.role: r for r in db.session.execute(select(Rebate).filter_by(order_id=order.id)).scalars()}
    assert (got["issuer"].amount_fen, got["issuer"].beneficiary_id) == (4_50, inviter.id)
    assert (got["inviter"].amount_fen, got["inviter"].beneficiary_id) == (9_00, inviter.id)
    assert bal(K.USER_CASH, "user", inviter.id) == 13_50
    assert budget(starter) == (0, 10_00 + 4_50)
    assert budget(reward) == (0, 9_00)


def test_inviter_earns_only_within_referral_days_then_the_rebate_says_why(
    client, user_headers, make_user, make_product, make_campaign, pay
):
    # given: an invitee bound on 1 March with a 30-day referral period
    _, reward = referral_campaigns(make_campaign, referral_days=30)
    inviter = make_user()
    code = invite_code(client, user_headers, inviter)
    bound_at = at("2025-03-01T04:00:00")
    with time_machine.travel(bound_at, tick=False):
        newbie = make_user()
        assert bind(client, user_headers, newbie, code).status_code == 201
    shop = make_product(price_fen=100_00)

    # when: the invitee buys 100 yuan on day 29 and again on day 31
    with time_machine.travel(bound_at + timedelta(days=29), tick=False):
        inside = buy(newbie, shop)
        pay(inside)
    with time_machine.travel(bound_at + timedelta(days=31), tick=False):
        outside = buy(newbie, shop)
        pay(outside)

    # then: 10 yuan on the first; nothing on the second, with a reason; the budget committed only 10
    first = db.session.execute(select(Rebate).filter_by(order_id=inside.id, role="inviter")).scalar_one()
    late = db.session.execute(select(Rebate).filter_by(order_id=outside.id, role="inviter")).scalar_one()
    assert (first.amount_fen, first.status) == (10_00, "awarded")
    assert (late.amount_fen, late.status) == (0, "skipped") and late.reasons
    assert bal(K.USER_CASH, "user", inviter.id) == 10_00
    assert budget(reward) == (0, 10_00)


def test_after_the_referral_period_the_reason_names_the_period_not_a_missing_inviter(
    client, user_headers, make_user, make_product, make_campaign, pay
):
    # given: an invitee whose 30-day referral period is over
    referral_campaigns(make_campaign, referral_days=30)
    inviter = make_user()
    code = invite_code(client, user_headers, inviter)
    bound_at = at("2025-03-01T04:00:00")
    with time_machine.travel(bound_at, tick=False):
        newbie = make_user()
        bind(client, user_headers, newbie, code)
    with time_machine.travel(bound_at + timedelta(days=31), tick=False):
        order = buy(newbie, make_product(price_fen=100_00))
        pay(order)

    # then: the trace must not claim the buyer has no inviter: they do, the period ended
    late = db.session.execute(select(Rebate).filter_by(order_id=order.id, role="inviter")).scalar_one()
    assert late.reason_code != "no_beneficiary", late.reasons
    assert any("30" in why for why in late.reasons), late.reasons


def test_referral_bind_with_a_paused_starter_campaign_binds_but_issues_nothing(
    client, user_headers, make_user, make_campaign
):
    starter, _ = referral_campaigns(make_campaign)
    starter.status = "paused"
    db.session.commit()
    inviter, newbie = make_user(), make_user()

    resp = bind(client, user_headers, newbie, invite_code(client, user_headers, inviter))

    assert resp.status_code == 201 and resp.get_json()["packets"] == []
    assert db.session.get(User, newbie.id).inviter_id == inviter.id
    assert count(RedPacket) == 0 and budget(starter) == (0, 0)


# -- order paid over a threshold ----------------------------------------------------


def test_order_paid_threshold_first_order_only_issues_once(make_user, make_product, make_campaign, pay):
    # given: the first order of at least 200 yuan earns a 20-yuan packet
    campaign = make_campaign(
        CONSUMER_5,
        budget_limit_fen=1_000_00,
        packet_amount_fen=20_00,
        trigger={"kind": "order_paid", "min_order_fen": 200_00, "first_order_only": True},
    )
    amy, ben = make_user(), make_user()
    product = make_product(price_fen=100_00)

    # when: amy pays 199.99 yuan (below the threshold)
    below = buy(amy, make_product(price_fen=199_99))
    pay(below)

    # then: no packet; and, that being her first order, her next big order is not her first any more
    assert count(RedPacket, owner_id=amy.id) == 0
    pay(buy(amy, product, quantity=2))
    assert count(RedPacket, owner_id=amy.id) == 0

    # when: ben's first order is exactly 200 yuan, paid; the payment callback is repeated; then a second big order
    first = buy(ben, product, quantity=2)
    pay(first)
    assert pay(first) == "already_applied"
    pay(buy(ben, product, quantity=3))

    # then: exactly one 20-yuan packet, reserved 20 + 3
    packet = db.session.execute(select(RedPacket).filter_by(owner_id=ben.id)).scalar_one()
    assert (packet.amount_fen, packet.source, packet.source_ref) == (20_00, "order_paid", first.out_trade_no)
    assert budget(campaign) == (23_00, 0)


def earning_campaign(make_campaign, **fields) -> Campaign:
    """Every paid order of at least 200 yuan earns a 20-yuan packet."""
    trigger = {"kind": "order_paid", "min_order_fen": 200_00}
    return make_campaign(CONSUMER_5, budget_limit_fen=1_000_00, packet_amount_fen=20_00, trigger=trigger, **fields)


def earned(order: Order) -> RedPacket:
    """The packet ``order`` earned when it was paid."""
    return db.session.execute(select(RedPacket).filter_by(source_ref=order.out_trade_no)).scalar_one()


def test_a_refund_takes_back_the_packet_its_order_earned(make_user, make_product, make_campaign, pay):
    from models import Alert, PacketStatus
    from tests.test_refunds import refund

    campaign = earning_campaign(make_campaign)
    product = make_product(price_fen=100_00)
    ben, cat, dan = make_user(), make_user(), make_user()

    # when: ben's 200-yuan order is paid, then 50 yuan of it refunded (150 left: below the trigger's 200)
    order = buy(ben, product, quantity=2)
    pay(order)
    reserved = budget(campaign)[0]
    refund(order, "R-ben", 50_00)
    # then: his packet is revoked, its reservation back in the budget
    assert earned(order).status == PacketStatus.REVOKED
    assert budget(campaign)[0] == reserved - 23_00  # its face and the most its rebate could take, 20 + 3

    # when: 50 of cat's 300 yuan are refunded (250 left), then the rest
    order = buy(cat, product, quantity=3)
    pay(order)
    refund(order, "R-cat-1", 50_00)
    assert earned(order).status == PacketStatus.ISSUED  # still earned
    refund(order, "R-cat-2", 250_00)
    assert earned(order).status == PacketStatus.REVOKED

    # when: dan spends his packet on another order before his first is refunded whole
    first = buy(dan, product, quantity=2)
    pay(first)
    packet = earned(first)
    pay(buy(dan, product, packet=packet))
    refund(first, "R-dan", 200_00)
    # then: the refund stands, the spent packet cannot be revoked, and an operator is told once
    assert db.session.get(Order, first.id).status == "refunded" and earned(first).status == PacketStatus.USED
    [alert] = db.session.execute(select(Alert).filter_by(kind="earned_packet_spent")).scalars()
    assert alert.subject == f"packet {packet.id}" and first.out_trade_no in alert.message


def test_what_is_left_of_an_order_that_earned_a_packet_counts_in_proportion_to_what_wechat_charged(
    make_user, make_product, make_campaign, pay
):
    from models import PacketStatus
    from tests.test_refunds import refund

    # given: ben's second order, 400 yuan of goods with his 20-yuan packet off (380 charged), earned another packet
    earning_campaign(make_campaign)
    product = make_product(price_fen=100_00)
    ben = make_user()
    first = buy(ben, product, quantity=2)
    pay(first)
    second = buy(ben, product, quantity=4, packet=earned(first))
    pay(second)
    assert earned(second).status == PacketStatus.ISSUED
    # when: 195 of the 380 yuan charged are refunded: 400 - 195 = 205 would still reach 200, but the goods value
    # left is 400 x 185 / 380 = 194.73 (as the refund's rebates count it)
    refund(second, "R-ben-most", 195_00)
    # then: the packet it earned is no longer earned
    assert earned(second).status == PacketStatus.REVOKED


def test_a_packet_whose_order_was_refunded_never_comes_back(make_user, make_product, make_campaign, pay):
    from models import PacketStatus
    from rebate import close_order
    from tests.test_refunds import refund

    # given: a refund of an order that spent a packet restores it
    campaign = earning_campaign(make_campaign, restore_packet_on_refund=True)
    product = make_product(price_fen=100_00)
    dan, eve = make_user(), make_user()

    # when: dan spends his packet, the order that earned it is refunded whole, then the order that spent it
    first = buy(dan, product, quantity=2)
    pay(first)
    spent = buy(dan, product, packet=earned(first))
    pay(spent)
    refund(first, "R-dan-1", 200_00)
    reserved = budget(campaign)[0]
    refund(spent, "R-dan-2", db.session.get(Order, spent.id).paid_fen)
    # then: the packet stays spent (not restored), and reserves nothing again
    assert earned(first).status == PacketStatus.USED and budget(campaign)[0] == reserved

    # when: eve's packet sits in an unpaid order while the order that earned it is refunded, then that order closes
    first = buy(eve, product, quantity=2)
    pay(first)
    waiting = buy(eve, product, packet=earned(first))
    refund(first, "R-eve", 200_00)
    assert earned(first).status == PacketStatus.LOCKED  # (an operator was alerted: it could not be revoked)
    close_order(db.session.get(Order, waiting.id), utcnow())
    db.session.commit()
    # then: it is revoked, not given back
    assert earned(first).status == PacketStatus.REVOKED


def test_issue_packet_from_a_given_user_issuer_for_other_modules(make_user, make_campaign):
    # given: a user-issued campaign (a challenge's loser funds the winner's packet)
    campaign = make_campaign(CONSUMER_5, issuer_type="user", budget_limit_fen=100_00, packet_amount_fen=8_00)
    loser, winner = make_user(), make_user()

    # when: another module issues from the loser
    packet = issue_packet(campaign, winner, source="challenge", source_ref="c-1", now=utcnow(), issuer_user_id=loser.id)
    again = issue_packet(campaign, winner, source="challenge", source_ref="c-1", now=utcnow(), issuer_user_id=loser.id)
    db.session.commit()

    # then: one packet, issued by the loser, reserved once
    assert again.id == packet.id and count(RedPacket) == 1
    assert (packet.issuer_type, packet.issuer_user_id, packet.owner_id) == ("user", loser.id, winner.id)
    assert budget(campaign) == (11_00, 0)


def test_an_order_paid_campaign_stopped_while_the_payment_ran_issues_nothing_and_the_payment_stands(
    make_user, make_product, make_campaign, pay, monkeypatch
):
    """A pause committed after the payment read its campaigns is seen by the packet's budget UPDATE (it takes only
    an active campaign's): that trigger issues nothing; the payment is not failed by it (review finding)."""
    from sqlalchemy import update

    import rebate.payments as payments

    campaign = make_campaign(
        CONSUMER_5,
        budget_limit_fen=1_000_00,
        packet_amount_fen=20_00,
        trigger={"kind": "order_paid", "min_order_fen": 100},
    )
    campaign_id = campaign.id
    order = buy(make_user(), make_product(price_fen=300_00))
    issue = payments._issue_triggered_packets

    def paused_meanwhile(*args, **kwargs):  # as PostgreSQL's UPDATE sees the row after waiting for its lock
        db.session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(status="paused")
            .execution_options(synchronize_session=False)
        )
        return issue(*args, **kwargs)

    monkeypatch.setattr(payments, "_issue_triggered_packets", paused_meanwhile)
    assert pay(order) == "applied"
    db.session.expire_all()
    assert db.session.get(Order, order.id).status == "paid"
    assert count(RedPacket, campaign_id=campaign_id) == 0
