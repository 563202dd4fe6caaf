"""A challenge started in a mini-program chat-tool group keeps the group's card up to date (challenges/cards.py,
jobs/challenge_posts.update_chat_tool_cards): an activity id made at first need, the card set to started with
who joined, then to ended at settlement — by a job after commit, through the simulator's chat-tool API."""

from __future__ import annotations

import base64
import os
from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs.challenge_posts import update_chat_tool_cards
from jobs.challenges import settle_challenges
from models import Challenge, ChatToolCard, UserIdentity, db, utcnow
from tests.challenge_helpers import DAY1, NOW, at_beijing, cash, fund, staked
from wechat.chattool import encrypt_open_data
from wechat.errors import WeChatUnavailable

GROUP = "G-friends"
SPEC = {"kind": "steps", "days": 1, "stake": 3_00}


def sent(app) -> list[dict]:
    cards = app.extensions["wechat"].simulator.chattool_messages.values()
    return sorted(cards, key=lambda c: c["at"])


@pytest.fixture
def friends(app, client, make_user, user_headers, time_machine):
    """Alice and Bob, 10 yuan each, both bound in the chat-tool group (their own group_openid)."""
    time_machine.move_to(NOW)
    people = {}
    for name in ("alice", "bob"):
        user = make_user(appid=app.config["WECHAT_APPID"])
        fund(user.id, 10_00)
        key = base64.b64encode(os.urandom(16)).decode()
        identity = db.session.execute(select(UserIdentity).where(UserIdentity.user_id == user.id)).scalar_one()
        identity.session_key = key
        db.session.commit()
        info = {"opengid": GROUP, "group_openid": f"go-{name}", "chat_type": 1}
        data, iv = encrypt_open_data(key, app.config["WECHAT_APPID"], info)
        answer = client.post(
            "/api/v1/me/chat-tool/groups", json={"encryptedData": data, "iv": iv}, headers=user_headers(user)
        )
        assert answer.status_code == 201
        people[name] = (user, user_headers(user))
    return people


def start(client, headers, group=GROUP, key="k-1"):
    return client.post(
        f"/api/v1/chat-tool/groups/{group}/challenges", json=SPEC, headers={**headers, "Idempotency-Key": key}
    )


def test_the_card_follows_the_challenge(app, client, friends, time_machine):
    (alice, ah), (bob, bh) = friends["alice"], friends["bob"]
    answer = start(client, ah)
    assert answer.status_code == 201, answer.get_json()
    cid = answer.get_json()["challenge_id"]
    challenge = db.session.get(Challenge, cid)
    assert (challenge.group_transport, challenge.group_id) == ("chattool", GROUP)
    assert (cash(alice.id), staked(alice.id)) == (7_00, 3_00)
    assert client.get(f"/api/v1/challenges/{cid}/card", headers=ah).status_code == 404  # not made yet
    assert sent(app) == []  # nothing is sent inside the request

    assert update_chat_tool_cards() == {"updated": 1}
    (first,) = sent(app)
    assert first["target_state"] == 1 and first["participator_info_list"] == [{"group_openid": "go-alice", "state": 1}]
    assert first["template_id"] == app.config["CHATTOOL_CARD_TEMPLATE_ID"]
    card = client.get(f"/api/v1/challenges/{cid}/card", headers=ah).get_json()
    assert card["activity_id"] == first["activity_id"]
    assert client.get(f"/api/v1/challenges/{cid}/card", headers=bh).status_code == 404  # not in it (yet)
    assert update_chat_tool_cards() == {}  # up to date: nothing sent

    assert client.post(f"/api/v1/challenges/{cid}/join", headers=bh).status_code == 200
    assert (cash(bob.id), staked(bob.id)) == (7_00, 3_00)
    assert update_chat_tool_cards() == {"updated": 1}
    joined = sent(app)[-1]
    assert joined["activity_id"] == first["activity_id"] and joined["target_state"] == 1
    assert joined["participator_info_list"] == [
        {"group_openid": "go-alice", "state": 1},
        {"group_openid": "go-bob", "state": 1},
    ]
    # the day passes with no steps from anyone: after the report deadline a tie, settled; the card ends
    time_machine.move_to(at_beijing(DAY1, 9))
    settle_challenges()
    time_machine.move_to(db.session.get(Challenge, cid).report_deadline + timedelta(hours=1))
    settle_challenges()
    db.session.expire_all()
    assert db.session.get(Challenge, cid).status == "settled"
    assert update_chat_tool_cards() == {"updated": 1}
    assert sent(app)[-1]["target_state"] == 2 and len(sent(app)) == 3
    assert update_chat_tool_cards() == {}
    assert db.session.get(ChatToolCard, cid).shown_state == 2


def test_a_group_the_caller_is_not_bound_in_is_refused_and_nothing_moves(app, client, friends):
    (alice, ah) = friends["alice"]
    answer = start(client, ah, group="G-strangers")
    assert answer.status_code == 404 and answer.get_json()["error"] == "group_not_found"
    assert db.session.execute(select(Challenge)).first() is None
    assert (cash(alice.id), staked(alice.id)) == (10_00, 0)
    assert update_chat_tool_cards() == {}


def test_a_refused_card_update_is_kept_for_the_next_pass(app, client, friends):
    (alice, ah) = friends["alice"]
    start(client, ah)

    class Refusing:  # WeChat down: the activity id is not made
        def create_activity_id(self, **_):
            raise WeChatUnavailable("answered 503", code="503")

    assert update_chat_tool_cards(client=Refusing()) == {"failed": 1}
    card = db.session.execute(select(ChatToolCard)).scalar_one()
    assert card.busy_since is None and card.attempts == 1 and card.activity_id is None and card.shown_state == 0
    assert update_chat_tool_cards() == {"updated": 1} and len(sent(app)) == 1


def test_two_nodes_update_a_card_once(app, client, friends):
    from tests.concurrency import together

    (alice, ah) = friends["alice"]
    start(client, ah)
    results = together(2, lambda i: update_chat_tool_cards(), app=app)
    assert sum(r.get("updated", 0) for r in results) == 1 and len(sent(app)) == 1


def test_a_node_that_listed_a_card_before_another_updated_it_does_not_update_it_again(app, client, friends):
    from challenges import cards

    # given: node B listed the card as behind; node A then updated it and let it go
    (alice, ah) = friends["alice"]
    start(client, ah)
    listed = cards.due_cards()
    assert len(listed) == 1
    assert update_chat_tool_cards() == {"updated": 1}
    # when: node B claims what it listed
    work = cards.claim_card(listed[0], utcnow(), app.config["WECHAT_APPID"])
    db.session.commit()
    # then: nothing to do, the card is not left busy, nothing more was sent
    assert work is None
    assert db.session.execute(select(ChatToolCard)).scalar_one().busy_since is None
    assert len(sent(app)) == 1
