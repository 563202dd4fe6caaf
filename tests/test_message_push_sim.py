"""Message push end to end on the simulator: the simulated person follows the official account, adds a card,
answers a subscribe popup; the simulator pushes each to the app signed and encrypted as WeChat does (safe
mode, the mini-program in JSON); the app records it and the messages job applies it."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from jobs.messages import apply_messages
from models import InboundMessage, OaFollower, Payout, User, UserIdentity, db
from payouts.card_rail import CardRail, card_key
from tests.test_card_codes import fund_card_payout, offered
from tests.test_wechat_callbacks import simulator
from wechat.sim.cards import CARD_TICKET

CARD_ID = "pSIMCARD0001"


@pytest.fixture
def app_settings(app_settings):
    holder: dict = {}

    def post_into_app(url: str, headers: dict, body: bytes) -> int:
        parts = urlsplit(url)
        client = holder["app"].test_client()
        return client.post(parts.path, query_string=parts.query, data=body, headers=headers).status_code

    return {**app_settings, "WECHAT_SIM_NOTIFY_TRANSPORT": post_into_app, "_PUSH_HOLDER": holder}


@pytest.fixture
def pushed(app):
    """Wait until the simulator has pushed everything it queued (and the app answered)."""
    app.config["_PUSH_HOLDER"]["app"] = app
    sim = simulator(app)

    def wait() -> list:
        assert sim.push_dispatcher.wait_idle(10)
        db.session.rollback()
        return list(sim.push_dispatcher.deliveries)

    yield wait
    sim.push_dispatcher.wait_idle(10)
    sim.push_dispatcher.stop()


def login(client, name: str) -> int:
    answer = client.post("/api/v1/auth/login", json={"code": f"code-{name}"})
    assert answer.status_code == 200, answer.json
    return answer.json["user"]["id"]


def test_follow_card_and_popup_pushed_by_the_simulator_are_applied_by_the_app(app, client, pushed):
    alice = login(client, "alice")
    # follow: pushed to /wechat/oa/push, applied with the unionid from the simulator's /cgi-bin/user/info
    assert client.post("/_sim/oa/follow", data={"name": "alice", "action": "follow"}).status_code == 302
    assert [d.statuses for d in pushed()] == [[200]]
    assert apply_messages() == {"done": 1}
    follower = db.session.execute(select(OaFollower)).scalar_one()
    assert (follower.openid, follower.user_id, follower.following) == ("sim-oa-openid-alice", alice, True)
    oa = db.session.execute(
        select(UserIdentity).where(UserIdentity.appid == app.config["WECHAT_OA_APPID"])
    ).scalar_one()
    assert oa.user_id == alice

    # a card payout: the person adds the card on the phone; WeChat pushes user_get_card; the payout is delivered
    payout = fund_card_payout(db.session.get(User, alice))
    offered(payout)
    payout.request = {"card_id": CARD_ID}  # the simulator's card
    db.session.commit()
    rail = CardRail(CARD_ID, lambda: CARD_TICKET, outer_key=card_key(app.config["SECRET_KEY"]))
    card_ext = rail.package_info(payout.external_no, {"card_id": CARD_ID})
    added = client.post("/_sim/card/add", json={"card_id": CARD_ID, "card_ext": card_ext, "openid": "sim-openid-alice"})
    assert added.status_code == 200, added.json
    assert [d.statuses for d in pushed()][-1] == [200]
    assert apply_messages() == {"done": 1}
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    assert payout.status == "succeeded" and payout.wechat_ref

    # the person deletes the card: recorded on the payout
    assert client.post("/_sim/card/delete", json={"code": payout.wechat_ref}).json["errcode"] == 0
    pushed()
    assert apply_messages() == {"done": 1}
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).card_deleted_at is not None

    # a subscribe popup goes to the mini-program's push URL as JSON, one item as an object
    answer = client.post("/_sim/mp/subscribe", json={"name": "alice", "template_ids": ["tpl-a"], "status": "accept"})
    assert answer.json["errcode"] == 0
    delivery = pushed()[-1]
    assert delivery.statuses == [200] and "/wechat/mp/push?" in delivery.url
    assert set(json.loads(delivery.body)) == {"ToUserName", "Encrypt"}
    popup = db.session.execute(select(InboundMessage).where(InboundMessage.source == "mp")).scalar_one()
    assert popup.event == "subscribe_msg_popup_event"
    assert popup.payload["fields"]["List"] == {
        "TemplateId": "tpl-a",
        "SubscribeStatusString": "accept",
        "PopupScene": "0",
    }

    # the simulator's page lists what it pushed and the app's answers
    page = client.get("/_sim/").get_data(as_text=True)
    assert "Message push" in page and "user_get_card" in page and "subscribe_msg_popup_event" in page
    assert "[200] delivered" in page


def test_the_simulators_user_info_refuses_an_unknown_openid(app, client):
    from wechat.sim.errors import SimError

    state = simulator(app)
    assert state.user_info("sim-oa-openid-nobody") == {"subscribe": 0, "openid": "sim-oa-openid-nobody"}
    with pytest.raises(SimError):
        state.user_info("not-an-openid")
