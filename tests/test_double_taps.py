"""A person's own request sent several times at once (a mini-program's double tap): each answers as one would.

On SQLite requests write one at a time (``BEGIN IMMEDIATE``); on PostgreSQL they overlap, and each of these had
a check followed by a write with nothing deciding between the twins: an invite code overwritten by each first
read (all but the last one shown dead), and a share link or a chat-tool group binding answered with a 500 from
the unique constraint.
"""

from __future__ import annotations

import base64
import os
from collections import Counter

from sqlalchemy import func, select

from models import ChatBinding, ShareLink, User, UserIdentity, db
from tests.concurrency import together
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
