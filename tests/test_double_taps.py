"""A request sent several times at once (a mini-program's double tap, an operator's double click): each answers as
one would.

On SQLite requests write one at a time (``BEGIN IMMEDIATE``); on PostgreSQL they overlap, and each of these had
a check followed by a write with nothing deciding between the twins: an invite code overwritten by each first
read (all but the last one shown dead), a payout's first opening overwritten by a later one, a share link, a
friend's claim through it, a chat-tool group binding and a rail's first switch answered with a 500 from the
unique constraint, and wrong binding codes or console tokens counted past their limit.
"""

from __future__ import annotations

import base64
import os
from collections import Counter

from sqlalchemy import func, select

from models import ChatBinding, Payout, RailControl, RedPacket, ShareLink, User, UserIdentity, db, utcnow
from payouts.rails import Outcome, RailResult
from payouts.record import pause_rail
from tests.concurrency import together
from tests.console_helpers import csrf_of
from tests.test_dispatch import ScriptedRail
from tests.test_payouts_api import MINE, cash_user, queued, run  # noqa: F401 - fixtures
from wechat.chattool import encrypt_open_data

TWINS = 8
SHARE = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 3_00}]}


def answers(app, method: str, path: str, headers: dict, **kwargs) -> list[tuple[int, dict | None]]:
    def go(_: int):
        r = app.test_client().open(path, method=method, headers=headers, **kwargs)
        return r.status_code, r.get_json(silent=True)

    return together(TWINS, go, app=app)


def test_first_reads_of_an_invite_code_at_once_all_show_the_code_that_stays(app, make_user, user_headers):
    user = make_user()
    got = answers(app, "GET", "/api/v1/me/invite", user_headers(user))
    db.session.rollback()
    kept = db.session.get(User, user.id).invite_code
    assert kept and Counter(status for status, _ in got) == {200: TWINS}
    assert {body["invite_code"] for _, body in got} == {kept}  # none shown that a friend could not bind with


def test_a_share_link_asked_for_at_once_is_made_once_and_given_to_each(app, make_user, make_campaign, user_headers):
    campaign = make_campaign(SHARE, packet_amount_fen=5_00, trigger={"kind": "share"}, budget_limit_fen=1_000_00)
    user = make_user()
    got = answers(app, "POST", f"/api/v1/campaigns/{campaign.id}/share-links", user_headers(user))
    assert [status for status, _ in got] == [201] * TWINS, got
    db.session.rollback()
    [link] = db.session.scalars(select(ShareLink).where(ShareLink.user_id == user.id)).all()
    assert {body["token"] for _, body in got} == {link.token}


def test_a_chat_tool_group_bound_at_once_is_bound_once(app, make_user, user_headers):
    user = make_user(appid=app.config["WECHAT_APPID"])
    key = base64.b64encode(os.urandom(16)).decode()
    db.session.execute(select(UserIdentity).where(UserIdentity.user_id == user.id)).scalar_one().session_key = key
    db.session.commit()
    group = {"opengid": "G-twins", "group_openid": "go-twin", "chat_type": 1}
    data, iv = encrypt_open_data(key, app.config["WECHAT_APPID"], group)
    body = {"encryptedData": data, "iv": iv}
    got = answers(app, "POST", "/api/v1/me/chat-tool/groups", user_headers(user), json=body)
    assert [status for status, _ in got] == [201] * TWINS, got
    db.session.rollback()
    assert db.session.scalar(select(func.count()).where(ChatBinding.user_id == user.id)) == 1


def test_wrong_binding_codes_sent_at_once_are_counted_one_at_a_time(app, make_user, user_headers):
    limit = app.config["CHAT_BINDING_MAX_FAILURES"]
    got = answers(app, "POST", "/api/v1/me/chat-bindings", user_headers(make_user()), json={"code": "ABCD-EFGH"})
    # never more wrong guesses answered than the limit allows; every other one refused unread
    assert Counter(status for status, _ in got) == {422: limit, 429: TWINS - limit}


def test_a_friend_claiming_through_a_share_link_twice_at_once_gets_one_packet(
    app, make_user, make_campaign, user_headers
):
    limits = {"per_ip_per_day": None, "min_interval_seconds": None, "per_person": 5}
    campaign = make_campaign(
        SHARE, packet_amount_fen=5_00, trigger={"kind": "share"}, budget_limit_fen=1_000_00, claim_limits=limits
    )
    sharer, friend = make_user(), make_user()
    link = app.test_client().post(f"/api/v1/campaigns/{campaign.id}/share-links", headers=user_headers(sharer))
    got = answers(app, "POST", f"/api/v1/share-links/{link.get_json()['token']}/claim", user_headers(friend))
    assert [status for status, _ in got] == [201] * TWINS, got
    db.session.rollback()
    mine = select(func.count()).where(RedPacket.owner_id == friend.id)
    assert db.session.scalar(mine) == 1
    assert db.session.get(type(campaign), campaign.id).packets_issued == db.session.scalar(
        select(func.count()).where(RedPacket.campaign_id == campaign.id)
    )  # the twins' budget went back with their savepoints


def test_a_rail_switched_twice_at_once_the_first_time_is_switched_once(app, make_operator):
    _, headers = make_operator("admin")
    got = answers(app, "PUT", "/admin/api/rails/wechat_change", headers, json={"enabled": False, "reason": "stop now"})
    assert [status for status, _ in got] == [200] * TWINS, got
    db.session.rollback()
    assert db.session.get(RailControl, "wechat_change").enabled is False


def test_two_nodes_pausing_a_rail_never_paused_before_both_pause_it(app):
    until = utcnow()

    def pause(i: int) -> None:
        pause_rail("cash_red_packet", until, f"NOTENOUGH seen by node {i}")

    assert together(TWINS, pause, app=app) == [None] * TWINS
    db.session.rollback()
    assert db.session.get(RailControl, "cash_red_packet").paused_until == until


def test_a_payouts_first_opening_is_kept_when_opened_twice_at_once(app, queued, user_headers):
    payout = queued()
    run(ScriptedRail(RailResult(Outcome.WAITING_USER_CONFIRM, package_info="pkg-1")))
    headers = user_headers(db.session.get(User, db.session.get(Payout, payout.id).user_id))
    got = answers(app, "POST", f"{MINE}/{payout.id}/confirm-opened", headers)
    assert [status for status, _ in got] == [200] * TWINS
    db.session.rollback()
    kept = db.session.get(Payout, payout.id).confirm_opened_at
    assert {body["confirm_opened_at"] for _, body in got} == {kept.isoformat()}


def test_wrong_console_tokens_sent_at_once_are_counted_one_at_a_time(app):
    from web.console.auth import REFUSED_SIGN_INS

    clients = [app.test_client() for _ in range(TWINS * 2)]
    csrfs = [csrf_of(c.get("/console/sign-in").get_data(as_text=True)) for c in clients]

    def sign_in(i: int) -> int:
        form = {"token": "not-a-token", "csrf_token": csrfs[i]}
        return clients[i].post("/console/sign-in", data=form).status_code

    got = Counter(together(len(clients), sign_in, app=app))
    assert got == {401: REFUSED_SIGN_INS, 429: len(clients) - REFUSED_SIGN_INS}
