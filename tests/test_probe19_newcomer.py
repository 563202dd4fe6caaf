"""Probe 19, the newcomer's path: README.md followed literally on a fresh clone, `make run` / `make demo` and the
simulator's phone-side routes.

- `POST /_sim/oa/follow {name, action}` took any `action` but `unfollow` for a follow: `unsubscribe` (WeChat's own
  word for the event) or a typo followed the official account and pushed a `subscribe` event to the app.
- `make run` on demo data already present printed, as "newcomer packet claim code", any five unclaimed batch codes:
  an operator's batch of another campaign (paused or ended as it may be), or newcomer codes past their validity,
  which the claim then refuses.
- The simulator's OAuth `access_token` answered every code with `scope: snsapi_userinfo` and a unionid, a silent
  `snsapi_base` grant included: WeChat names the unionid only for `snsapi_userinfo`, so under `make run` the README's
  "a silent snsapi_base sign-in of someone not known yet is asked once more with snsapi_userinfo" never happened.
  Its consent page now keeps the name a browser gave it, as WeChat knows who the phone's person is.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, update

from models import Campaign, RedPacket, User, UserIdentity, db, utcnow
from rebate.packets import generate_batch
from tests.test_wechat_callbacks import simulator
from web.demo import NEWCOMER

RULES = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 1_00}]}

# --- the simulator's follow button ---------------------------------------------------------------------


@pytest.mark.parametrize("action", ["unsubscribe", "subscribe", "unfolow", ""])
def test_a_follow_action_the_simulator_does_not_know_is_refused_and_pushes_nothing(app, client, action):
    response = client.post("/_sim/oa/follow", json={"name": "alice", "action": action})

    assert response.status_code == 200  # WeChat's way: the error is in the body
    assert response.json["errcode"] == 47003, response.json
    assert "action" in response.json["errmsg"]
    assert simulator(app).followers.get("sim-oa-openid-alice") is None
    assert not list(simulator(app).pushes)


@pytest.mark.parametrize(("action", "following"), [("follow", True), ("unfollow", False), (None, True)])
def test_follow_and_unfollow_still_move_the_simulated_follower(app, client, action, following):
    body = {"name": "alice"} if action is None else {"name": "alice", "action": action}

    response = client.post("/_sim/oa/follow", json=body)

    assert response.json["errcode"] == 0, response.json
    assert simulator(app).followers["sim-oa-openid-alice"]["following"] is following


# --- `make run` again on the same demo data: the claim codes it prints ----------------------------------


def printed_codes(app) -> list[str]:
    result = app.test_cli_runner().invoke(args=["seed-demo"])
    assert result.exit_code == 0, result.output
    marker = "newcomer packet claim code: "
    return [line.split(marker, 1)[1] for line in result.stdout.splitlines() if marker in line]


def newcomer_codes() -> set[str]:
    db.session.rollback()
    newcomer = db.session.execute(select(Campaign.id).where(Campaign.name == NEWCOMER)).scalar_one()
    return set(db.session.execute(select(RedPacket.claim_code).where(RedPacket.campaign_id == newcomer)).scalars())


def test_a_restart_prints_only_the_newcomer_campaigns_codes(app, make_campaign):
    # given: `make run` seeded the demo, and an operator then made a batch of another campaign's codes (first in
    # the table's order: the newcomer's own were all claimed but one)
    first = printed_codes(app)
    assert len(first) == 5 and set(first) <= newcomer_codes()
    other = make_campaign(RULES, packet_amount_fen=5_00, trigger={"kind": "claim_code"})
    theirs = {p.claim_code for p in generate_batch(other, 5, utcnow(), batch_ref="operator")}
    other.status = "paused"
    db.session.execute(update(RedPacket).where(RedPacket.claim_code.in_(first[1:])).values(status="expired"))
    db.session.commit()

    # when: `make run` starts again
    again = printed_codes(app)

    # then: the newcomer code still unclaimed, and none of the other campaign's
    assert again == [first[0]]
    assert not set(again) & theirs


def test_a_restart_does_not_print_newcomer_codes_past_their_validity(app):
    first = printed_codes(app)
    db.session.execute(
        update(RedPacket).where(RedPacket.claim_code == first[0]).values(expires_at=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()

    again = printed_codes(app)

    assert first[0] not in again and set(again) == set(first[1:])


def test_a_restart_with_every_newcomer_code_gone_says_where_to_get_one(app):
    printed_codes(app)
    db.session.execute(update(RedPacket).where(RedPacket.source == "batch").values(status="expired"))
    db.session.commit()

    result = app.test_cli_runner().invoke(args=["seed-demo"])

    assert "newcomer packet claim code:" not in result.stdout
    assert "no newcomer packet claim code left: `make demo` makes its own" in result.stdout
    assert "admin token (1 day):" in result.stdout


# --- the official account's sign-in on the simulator ----------------------------------------------------


def wechat_page(client, location: str, **answer):
    """The simulated WeChat's authorize page at ``location`` (an absolute URL into the app's own /_sim)."""
    parts = urlsplit(location.split("#")[0])
    return client.get(parts.path, query_string={**parse_qs(parts.query), **answer})


def through_wechat(client, location: str, name: str):
    """The person agrees on WeChat's page; the app's callback answers."""
    agreed = wechat_page(client, location, consent="1", name=name)
    assert agreed.status_code == 302, agreed.get_data(as_text=True)
    back = urlsplit(agreed.headers["Location"])
    return client.get(back.path, query_string=parse_qs(back.query))


def test_a_silent_grant_names_no_unionid_and_a_userinfo_grant_does(app, client):
    sim, oa = simulator(app), {"appid": app.config["WECHAT_OA_APPID"], "secret": app.config["WECHAT_OA_SECRET"]}
    base, userinfo = sim.issue_oauth_code("dave", "snsapi_base"), sim.issue_oauth_code("dave", "snsapi_userinfo")

    silent = client.get("/_sim/api/sns/oauth2/access_token", query_string={**oa, "code": base}).json
    asked = client.get("/_sim/api/sns/oauth2/access_token", query_string={**oa, "code": userinfo}).json

    assert silent["scope"] == "snsapi_base" and "unionid" not in silent
    assert silent["openid"] == asked["openid"] == "sim-oa-openid-dave"
    assert asked["scope"] == "snsapi_userinfo" and asked["unionid"] == "sim-union-dave"


def test_a_mini_program_user_signing_in_silently_is_asked_once_more_and_stays_one_person(app, client):
    # given: Dave uses the mini-program
    assert client.post("/api/v1/auth/login", json={"code": "code-dave"}).status_code == 200

    # when: he opens an official-account page, which signs in silently first (snsapi_base)
    first = client.get("/oauth/authorize", query_string={"next": "/c/1"})
    assert "scope=snsapi_base" in first.headers["Location"]
    again = through_wechat(client, first.headers["Location"], "dave")

    # then: the app does not know that openid, so it asks once more with snsapi_userinfo (its unionid links him);
    # WeChat's page knows who he is
    assert again.status_code == 302 and "scope=snsapi_userinfo" in again.headers["Location"]
    page = wechat_page(client, again.headers["Location"]).get_data(as_text=True)
    assert 'name="name" value="dave"' in page
    signed_in = through_wechat(client, again.headers["Location"], "dave")
    assert signed_in.status_code == 302 and "#token=" in signed_in.headers["Location"]
    db.session.rollback()
    assert len(db.session.execute(select(User)).scalars().all()) == 1
    assert len(db.session.execute(select(UserIdentity)).scalars().all()) == 2

    # and the next silent sign-in finds him at once
    later = client.get("/oauth/authorize", query_string={"next": "/c/1"})
    assert "#token=" in through_wechat(client, later.headers["Location"], "dave").headers["Location"]


def test_the_simulators_consent_page_refuses_a_name_no_openid_could_hold(client):
    # a name makes the person's openid (sim-oa-openid-<name>, at most 64 characters): a longer or odd one was
    # accepted and the app's sign-in then answered 503 on the openid it could not store
    path = "/_sim/open/connect/oauth2/authorize"
    query = {"consent": "1", "redirect_uri": "http://127.0.0.1/oauth/callback", "state": "s", "scope": "snsapi_base"}
    assert client.get(path, query_string={**query, "name": "x" * 51}).status_code == 400
    assert client.get(path, query_string={**query, "name": "bob smith"}).status_code == 400
    assert client.get(path, query_string={**query, "name": "x" * 50}).status_code == 302
