"""Probe 18, the newcomer's path: `make run` / `make demo` in either fund flow, and the simulator's own routes.

- Demo data seeded in one fund flow and served in the other (`FUND_FLOW=service_provider make run` on the demo
  database of an earlier `make run`, or the other way round, which the service-provider demo's own closing advice
  led to) refuses the demo shop's orders; `flask seed-demo` said only "demo data already present" and `make demo`
  failed at its second step with no word of `make reset`.
- The simulator's JSON routes (the phone's side: WeRun, subscribe popups, follows, cards, the WeCom robot) answered
  500 to a body that is JSON but not an object, or to a number too large to be finite.
- A simulator login code whose name makes an openid longer than WeChat's 64 characters answered 503 "WeChat is
  unavailable; retry shortly" (a retry never helps): WeChat answers such a code 40029, and the app 401.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import Campaign, db

NEWCOMER = "Newcomer: spend 50 get 10 off, 8% back"


# --- the demo data and the fund flow ----------------------------------------------------------------


@pytest.mark.parametrize(("seeded_in", "served_in"), [("direct", "service_provider"), ("service_provider", "direct")])
def test_seed_demo_says_when_the_demo_data_was_seeded_for_the_other_fund_flow(app, seeded_in, served_in):
    # given: `make run` seeded the demo data in one fund flow
    app.config["FUND_FLOW"] = seeded_in
    first = app.test_cli_runner().invoke(args=["seed-demo"])
    assert first.exit_code == 0, first.output
    assert "make reset" not in first.stdout

    # when: `make run` starts again in the other
    app.config["FUND_FLOW"] = served_in
    again = app.test_cli_runner().invoke(args=["seed-demo"])

    # then: it still prints the tokens, and says what to do
    assert again.exit_code == 0, again.output
    assert "admin token (1 day):" in again.stdout
    assert f"seeded for FUND_FLOW={seeded_in}" in again.stdout and f"runs FUND_FLOW={served_in}" in again.stdout
    assert f"FUND_FLOW={served_in} make reset" in again.stdout
    db.session.rollback()
    newcomer = db.session.execute(select(Campaign).where(Campaign.name == NEWCOMER)).scalar_one()
    assert newcomer.funded_from_sales is (seeded_in == "service_provider")  # nothing changed


def test_seed_demo_in_the_same_fund_flow_says_nothing_more(app):
    app.config["FUND_FLOW"] = "service_provider"
    app.test_cli_runner().invoke(args=["seed-demo"])

    again = app.test_cli_runner().invoke(args=["seed-demo"])

    assert again.exit_code == 0 and "make reset" not in again.stdout


class Refusal:
    status_code, content, text, headers = 409, b"{}", "", {}

    def __init__(self, code: str):
        self.code = code

    def json(self):
        return {"error": self.code, "message": "refused"}


@pytest.mark.parametrize("code", ["merchant_without_sub_mchid", "campaign_funded_from_sales"])
def test_the_demo_says_make_reset_when_the_server_refuses_the_shops_order_for_its_fund_flow(code):
    from demo.__main__ import Walkthrough
    from demo.client import Client, DemoFailure

    walk = Walkthrough(Client("http://127.0.0.1:1"), "run", 1, "token")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("demo.client.requests.request", lambda *a, **k: Refusal(code))
        with pytest.raises(DemoFailure) as failure:
            walk.order("Alice orders the noodles", "alice", {"id": 1}, 7)

    assert f"answered 409 {code}: refused" in str(failure.value)
    assert "make reset" in str(failure.value)


def test_the_demo_says_nothing_of_make_reset_for_another_refusal():
    from demo.__main__ import Walkthrough
    from demo.client import Client, DemoFailure

    walk = Walkthrough(Client("http://127.0.0.1:1"), "run", 1, "token")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("demo.client.requests.request", lambda *a, **k: Refusal("packet_locked"))
        with pytest.raises(DemoFailure) as failure:
            walk.order("Alice orders the noodles", "alice", {"id": 1}, 7)

    assert "make reset" not in str(failure.value)


def test_the_service_provider_demo_sends_the_reader_to_make_reset_before_direct_mode(capsys):
    # the data it ran on is the shop's own campaigns, paid from its sales: direct mode refuses their orders
    from demo.__main__ import Walkthrough
    from demo.client import Client

    walk = Walkthrough(Client("http://127.0.0.1:1"), "run", 1, "token")
    walk.api.call = lambda *a, **k: {}
    walk.prepare = lambda: (("CODE", "CODE2"), 1)
    walk.login = walk.subscribe = lambda *a, **k: "token"
    walk.products = lambda *a: ({}, {}, {})
    walk.newcomer_order = lambda *a: None
    walk.check_ledger = lambda: None

    walk.play()

    said = capsys.readouterr().out
    assert "Service-provider mode" in said
    assert "make reset" in said and "`make run` without FUND_FLOW" in said


# --- the simulator's routes: a bad body is the simulator's refusal, never a 500 ------------------------


@pytest.mark.parametrize(
    "path", ["/_sim/werun", "/_sim/wecom/say", "/_sim/oa/follow", "/_sim/mp/subscribe", "/_sim/subscribe/request"]
)
@pytest.mark.parametrize("body", ["[1]", '"alice"', "7", "null", "{"])
def test_a_json_body_that_is_no_object_is_refused_by_the_simulator(app, client, path, body):
    response = client.post(path, data=body, content_type="application/json")

    assert response.status_code < 500, response.get_data(as_text=True)
    answer = response.json
    assert answer.get("errcode") or answer.get("errCode"), answer


@pytest.mark.parametrize("path", ["/_sim/card/add", "/_sim/card/delete"])
@pytest.mark.parametrize("body", [[1], "alice", 7])
def test_a_card_body_that_is_no_object_is_refused_by_the_simulator(client, path, body):
    response = client.post(path, json=body)

    assert response.status_code < 500, response.get_data(as_text=True)
    answer = response.json
    assert answer.get("errcode") or "fail" in answer.get("errMsg", ""), answer


@pytest.mark.parametrize("card_ext", ["[1]", "7", '"x"', [1]])
def test_a_card_ext_that_is_no_object_is_refused_by_the_simulator(client, card_ext):
    response = client.post("/_sim/card/add", json={"card_id": "pSIMCARD0001", "card_ext": card_ext, "openid": "x"})

    assert response.status_code == 400
    assert response.json == {"errMsg": "addCard:fail 40080"}


@pytest.mark.parametrize("pair", ["[1e400, 100]", "[1764777600, 1e400]", "[1764777600, -1e400]"])
def test_werun_steps_too_large_to_be_finite_are_refused_by_the_simulator(client, pair):
    body = '{"name": "alice", "steps": [' + pair + "]}"

    response = client.post("/_sim/werun", data=body, content_type="application/json")

    assert response.status_code < 500
    assert response.json["errcode"] == 40001


def test_a_form_still_drives_the_robot_and_the_follow_button(client):
    # the /_sim/ page's own forms post form fields, not JSON
    said = client.post("/_sim/wecom/say", data={"name": "alice", "content": "帮助", "group": ""})
    followed = client.post("/_sim/oa/follow", data={"name": "alice", "action": "follow"})

    assert said.status_code == 200 and said.json["said"] == "帮助"
    assert followed.status_code in (200, 302)


# --- the simulator's login codes ----------------------------------------------------------------------


def test_a_login_code_naming_an_openid_longer_than_wechat_gives_is_an_invalid_code(client):
    response = client.post("/api/v1/auth/login", json={"code": "code-" + "a" * 51})

    assert response.status_code == 401
    assert response.json["error"] == "login_code_invalid"


def test_the_longest_simulated_name_still_signs_in(client):
    response = client.post("/api/v1/auth/login", json={"code": "code-" + "a" * 50})

    assert response.status_code == 200, response.json
