"""What the ban flag does (issue 9, item 2): a banned person earns nothing as consumer, issuer or inviter
(each rebate skipped with the reason, for the trace), gets no packets from any trigger, and their payouts
that have not left wait until the ban is lifted. (Banning and unbanning themselves come in a later issue.)
"""

from __future__ import annotations

from sqlalchemy import select

from ledger import account, balance
from models import AccountKind, Payout, Rebate, RedPacket, User, UserStatus, db, utcnow
from rebate import create_order, issue_packet
from rebate.orders import LineRequest
from rebate.triggers import sign_in
from risk import PlatformLimits
from tests.money_helpers import app_money
from tests.test_dispatch import ScriptedRail, funded_payout, ok, run  # noqa: F401 - fixture

K = AccountKind
THREE_ROLES = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "balance"},
        {"role": "consumer", "rate_bps": 500, "form": "balance"},
        {"role": "inviter", "rate_bps": 300, "form": "balance"},
    ]
}


def ban(user: User) -> None:
    user.status, user.banned_reason = UserStatus.BANNED, "test"
    db.session.commit()


def cash(user: User) -> int:
    return balance(account(K.USER_CASH, "user", user.id))


def rebates_of(order) -> dict[str, Rebate]:
    db.session.expire_all()
    return {r.role: r for r in db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars()}


def spend(make_user, make_product, make_campaign, pay, banned_role: str | None):
    """A 100-yuan order paying 10 % to the packet's issuer, 5 % to the buyer and 3 % to their inviter."""
    issuer, inviter = make_user(), make_user()
    buyer = make_user(inviter=inviter)
    campaign = make_campaign(THREE_ROLES, issuer_type="user", issuer_user_id=issuer.id, packet_amount_fen=10_00)
    packet = issue_packet(campaign, buyer, source="test", source_ref="1", now=utcnow())
    order = create_order(buyer, [LineRequest(make_product(price_fen=100_00).id, 1)], packet.id, utcnow())
    db.session.commit()
    people = {"issuer": issuer, "consumer": buyer, "inviter": inviter}
    if banned_role:
        ban(people[banned_role])
    pay(order)
    return order, people, campaign


def test_nobody_banned_all_three_earn(make_user, make_product, make_campaign, pay):
    order, people, _ = spend(make_user, make_product, make_campaign, pay, None)
    got = rebates_of(order)
    assert {role: got[role].amount_fen for role in got} == {"issuer": 9_00, "consumer": 4_50, "inviter": 2_70}


def test_a_banned_issuer_consumer_or_inviter_earns_nothing_and_the_trace_says_why(
    make_user, make_product, make_campaign, pay, client, make_operator
):
    for role in ("issuer", "consumer", "inviter"):
        # when: the order is paid after one of the three was banned
        order, people, campaign = spend(make_user, make_product, make_campaign, pay, role)

        # then: that one gets nothing, with the reason; the other two are paid as usual
        got = rebates_of(order)
        assert (got[role].status, got[role].amount_fen, got[role].reason_code) == ("skipped", 0, "beneficiary_banned")
        assert any("banned" in why for why in got[role].reasons)
        assert cash(people[role]) == 0
        others = {r: got[r].amount_fen for r in got if r != role}
        assert others == {r: a for r, a in {"issuer": 9_00, "consumer": 4_50, "inviter": 2_70}.items() if r != role}
        db.session.refresh(campaign)
        assert campaign.budget_committed_fen == 10_00 + sum(others.values())

    # and: the order's trace explains it in words
    _, admin = make_operator("admin")
    trace = client.get(f"/admin/api/trace/orders/{order.id}", headers=admin)
    assert trace.status_code == 200 and "banned" in trace.get_data(as_text=True)


def test_a_banned_person_gets_no_packet_from_sign_in_or_a_share_reward(client, user_headers, make_user, make_campaign):
    rules = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}
    make_campaign(rules, budget_limit_fen=100_00, packet_amount_fen=1_00, trigger={"kind": "daily_sign_in"})
    share = make_campaign(
        rules,
        budget_limit_fen=100_00,
        packet_amount_fen=5_00,
        trigger={"kind": "share", "sharer_reward_fen": 2_00},
        claim_limits={"per_ip_per_day": None, "min_interval_seconds": None, "per_person": None},
    )
    sharer, friend = make_user(), make_user()
    token = client.post(f"/api/v1/campaigns/{share.id}/share-links", headers=user_headers(sharer)).get_json()["token"]
    ban(sharer)

    # when: the banned sharer's friend claims through the link; the banned sharer's sign-in runs
    resp = client.post(f"/api/v1/share-links/{token}/claim", headers=user_headers(friend))
    _, packets = sign_in(db.session.get(User, sharer.id), utcnow(), limits=PlatformLimits.off())

    # then: the friend gets theirs, the banned sharer nothing
    assert resp.status_code == 201 and resp.get_json()["sharer_rewarded"] is False
    assert packets == []
    owners = db.session.execute(select(RedPacket.owner_id)).scalars().all()
    assert owners == [friend.id]


def test_a_banned_person_cannot_claim_and_their_invite_code_binds_no_one(client, user_headers, make_user):
    inviter, newbie = make_user(), make_user()
    code = client.get("/api/v1/me/invite", headers=user_headers(inviter)).get_json()["invite_code"]
    headers = user_headers(inviter)
    ban(inviter)

    claim = client.post("/api/v1/red-packets/claim", json={"code": "ABCDEFGHJKLMNPQR"}, headers=headers)
    bind = client.post("/api/v1/referrals/bind", json={"code": code}, headers=user_headers(newbie))

    assert (claim.status_code, claim.get_json()["error"]) == (403, "user_banned")
    assert (bind.status_code, bind.get_json()["error"]) == (409, "invite_code_inactive")
    db.session.refresh(newbie)
    assert newbie.inviter_id is None


def test_the_dispatcher_skips_a_banned_persons_payouts_until_the_ban_is_lifted(funded_payout):
    # given: two queued transfers, one to a person who is then banned
    waiting, waiting_cash = funded_payout()
    other, _ = funded_payout()
    banned = db.session.get(User, waiting.user_id)
    ban(banned)
    rail = ScriptedRail(ok("bill-other"), ok("bill-banned"))

    # when: the dispatcher runs
    run(rail)

    # then: only the other transfer was sent; the banned person's money waits in transit's source, untouched
    assert [external for _, external in rail.calls] == [other.external_no]
    payout = db.session.get(Payout, waiting.id)
    assert (payout.status, payout.attempts, payout.sent_at) == ("pending", 0, None)
    assert balance(waiting_cash) == 0  # queued: the balance moved to rebate payable when the payout was made

    # when: the ban is lifted and the dispatcher runs again
    banned = db.session.get(User, waiting.user_id)
    banned.status = UserStatus.ACTIVE
    db.session.commit()
    run(rail)

    # then: it is sent
    assert db.session.get(Payout, waiting.id).status == "succeeded"
    assert rail.calls[-1] == ("send", waiting.external_no)


def test_a_banned_teachers_held_share_is_not_released_when_the_milestones_are_met(education, pay):
    from rebate.milestones import report_milestone

    # given: the education story: the student pays tuition with the teacher's packet; 10 % is held
    school, course, teacher, campaign, student, packet = education
    order = create_order(student, [LineRequest(course.id, 1)], packet.id, utcnow())
    db.session.commit()
    pay(order)
    (held,) = rebates_of(order).values()
    assert held.status == "held" and held.held_fen > 0
    ban(teacher)

    # when: both milestones are met
    for name in ("lessons_10", "test_passed"):
        report_milestone(order, name, None, utcnow(), money=app_money())
    db.session.commit()

    # then: nothing is released to the banned teacher; the held part waits, and the trace says why
    (after,) = rebates_of(order).values()
    assert (after.status, after.amount_fen, after.held_fen) == ("held", 0, held.held_fen)
    assert any("banned" in why for why in after.reasons)
    assert cash(teacher) == 0


def test_a_buyer_banned_after_ordering_gets_no_order_paid_packet(make_user, make_product, make_campaign, pay):
    # given: "spend 100, get a 10-yuan packet"; the buyer orders, then is banned before WeChat's notification
    shop_product = make_product(price_fen=100_00)
    campaign = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 5_00}]},
        trigger={"kind": "order_paid", "min_order_fen": 100_00},
        packet_amount_fen=10_00,
        budget_limit_fen=1_000_00,
    )
    buyer = make_user()
    order = create_order(buyer, [LineRequest(shop_product.id, 1)], None, utcnow())
    db.session.commit()
    ban(buyer)

    # when: the payment arrives
    assert pay(order) == "applied"

    # then: the payment stands, but no packet is handed to a banned person
    packets = db.session.execute(select(RedPacket).where(RedPacket.campaign_id == campaign.id)).scalars().all()
    assert packets == []
