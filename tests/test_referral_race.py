"""Referral binding under concurrency (issue 9, item 2), on SQLite and on PostgreSQL.

Five inviters' codes are bound to one new person at once: one conditional UPDATE
(``WHERE inviter_id IS NULL``) decides, so exactly one binding wins, the four others
answer 409 ``already_invited``, and the starter packet names the inviter that won
(``users.inviter_id``) — which is also who earns when it is spent.
"""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from ledger import account, balance
from models import AccountKind, Rebate, RedPacket, User, db, utcnow
from rebate import create_order
from rebate.orders import LineRequest
from tests.conftest import release_test_session

STARTER = {"roles": [{"role": "issuer", "rate_bps": 1000, "form": "balance", "cap_fen": 50_00}]}


def race(app, requests: list[tuple[str, dict, dict]]) -> list[tuple[int, str | None]]:
    """POST every (path, headers, json) at once, each from its own thread and app context."""
    release_test_session()
    barrier = threading.Barrier(len(requests))
    results: list = [None] * len(requests)

    def run(i: int, path: str, headers: dict, body: dict) -> None:
        with app.app_context():
            try:
                client = app.test_client()
                barrier.wait(timeout=30)
                resp = client.post(path, headers=headers, json=body)
                results[i] = (resp.status_code, (resp.get_json(silent=True) or {}).get("error"))
            except Exception as exc:  # noqa: BLE001 - reported as a result, asserted by the test
                results[i] = (-1, repr(exc))
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(i, *req)) for i, req in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return results


def test_5_concurrent_binds_of_one_invitee_bind_exactly_one_and_the_starter_packet_credits_the_winner(
    app, client, make_user, make_product, make_campaign, user_headers, pay
):
    # given: a starter-packet campaign (the inviter issues a 10-yuan packet and earns 10 % when it is spent)
    make_campaign(
        STARTER,
        budget_limit_fen=1_000_00,
        packet_amount_fen=10_00,
        issuer_type="user",
        trigger={"kind": "referral_bind"},
    )
    inviters = [make_user() for _ in range(5)]
    codes = [client.get("/api/v1/me/invite", headers=user_headers(u)).get_json()["invite_code"] for u in inviters]
    newbie = make_user()
    headers = user_headers(newbie)

    # when: the newbie binds with all five codes at once
    results = race(app, [("/api/v1/referrals/bind", headers, {"code": code}) for code in codes])

    # then: exactly one bound, four 409 already_invited
    assert sorted(results) == [(201, None)] + [(409, "already_invited")] * 4, results
    db.session.rollback()
    winner = db.session.get(User, newbie.id).inviter_id
    assert winner in {u.id for u in inviters}

    # and: one starter packet, issued by the inviter the database kept
    packets = db.session.execute(select(RedPacket).where(RedPacket.owner_id == newbie.id)).scalars().all()
    assert [(p.source, p.issuer_user_id) for p in packets] == [("referral_bind", winner)]

    # when: the newbie spends it on a 100-yuan order (pays 90)
    order = create_order(db.session.get(User, newbie.id), [LineRequest(make_product().id, 1)], packets[0].id, utcnow())
    db.session.commit()
    pay(order)

    # then: the issuer rebate (10 % of 90) goes to that same inviter, and to no one else
    rebate = db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalar_one()
    assert (rebate.beneficiary_id, rebate.amount_fen) == (winner, 9_00)
    cash = {u.id: balance(account(AccountKind.USER_CASH, "user", u.id)) for u in inviters}
    assert cash == {u.id: 9_00 if u.id == winner else 0 for u in inviters}
    assert db.session.execute(select(func.count()).select_from(RedPacket)).scalar_one() == 1


def test_two_people_binding_each_others_codes_at_once_never_make_a_cycle(app, client, make_user, user_headers):
    # given: two new people, each with the other's invite code
    amy, ben = make_user(), make_user()
    amy_code = client.get("/api/v1/me/invite", headers=user_headers(amy)).get_json()["invite_code"]
    ben_code = client.get("/api/v1/me/invite", headers=user_headers(ben)).get_json()["invite_code"]

    # when: each binds the other's code at the same moment
    results = race(
        app,
        [
            ("/api/v1/referrals/bind", user_headers(amy), {"code": ben_code}),
            ("/api/v1/referrals/bind", user_headers(ben), {"code": amy_code}),
        ],
    )

    # then: one binding; the other is refused as a cycle
    assert sorted(results) == [(201, None), (409, "referral_cycle")], results
    db.session.rollback()
    inviters = {u.id: u.inviter_id for u in db.session.execute(select(User)).scalars()}
    assert sorted(v for v in inviters.values() if v is not None) in ([amy.id], [ben.id])
