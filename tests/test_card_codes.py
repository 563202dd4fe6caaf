"""Card payouts decided at redemption (issue 9 §3): ``/card/code/decrypt`` + ``/card/code/consume``.

Against ``responses`` (WeChat's wire format) and against the in-process simulator, which issues the
card of a card payout as ``wx.addCard`` would and serves decrypt and consume.
"""

from __future__ import annotations

import json

import pytest
import requests
import responses
from sqlalchemy import select

from jobs.payouts import build_rails, dispatch_due
from ledger import Leg, account, balance, post_entry
from models import AccountKind, AuditLog, Payout, Rebate, db
from payouts import enqueue_payout
from payouts.transitions import mark_sent
from wechat.errors import WeChatCardCodeConsumed, WeChatCardCodeInvalid
from wechat.mp import MemoryTokenStore, decrypt_card_code

API = "https://api.weixin.test"
ENCRYPTED = "XXIzTtMqCxwOaawoE91+VJdsFmv7b8g0VZIZkqf4GWA60Fzpc8ksZ/5ZZ0DVkXdE"
REAL_CODE = "110201201245"
CARD_ID = "pCARD0001"


def fund_card_payout(user, amount_fen=5_00, key="c") -> Payout:
    """A card payout offered to the user (cardExt signed, waiting for wx.addCard), funded from the user's cash."""
    cash = account(AccountKind.USER_CASH, "user", user.id)
    post_entry(
        f"fund:{key}", "rebate", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen), Leg(cash, amount_fen)]
    )
    return enqueue_payout(
        number_prefix="", rail="card_coupon", user_id=user.id, amount_fen=amount_fen, source=cash, key=key, memo="card"
    )


def offered(payout: Payout) -> Payout:
    payout.status, payout.package_info, payout.request = "waiting_user_confirm", '{"cardExt":1}', {"card_id": CARD_ID}
    mark_sent(payout, payout.created_at)
    db.session.commit()
    return payout


def state_of(payout_id: int) -> tuple:
    db.session.expire_all()
    p = db.session.get(Payout, payout_id)
    return p.status, p.wechat_ref, p.finished_at, balance(account(AccountKind.WECHAT_SETTLEMENT))


# -- the WeChat client ----------------------------------------------------------------


def _token(mock):
    mock.post(f"{API}/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})


def _decrypt(**kw):
    return decrypt_card_code(
        requests.Session(), ENCRYPTED, token_store=MemoryTokenStore(), appid="wxoa", secret="s", api_base=API, **kw
    )


@responses.activate
def test_decrypt_card_code_posts_the_encrypt_code_with_the_access_token():
    _token(responses)
    responses.post(f"{API}/card/code/decrypt", json={"errcode": 0, "errmsg": "ok", "code": REAL_CODE})
    assert _decrypt() == REAL_CODE
    call = responses.calls[-1].request
    assert "access_token=AT" in call.url and json.loads(call.body) == {"encrypt_code": ENCRYPTED}


@responses.activate
def test_decrypt_card_code_retries_once_after_a_token_error():
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "OLD", "expires_in": 7200})
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "NEW", "expires_in": 7200})
    responses.post(f"{API}/card/code/decrypt", json={"errcode": 40001, "errmsg": "invalid credential"})
    responses.post(f"{API}/card/code/decrypt", json={"errcode": 0, "errmsg": "ok", "code": REAL_CODE})
    assert _decrypt() == REAL_CODE
    tokens = [c.request.url.split("access_token=")[1] for c in responses.calls if "/card/" in c.request.url]
    assert tokens == ["OLD", "NEW"]


@pytest.mark.parametrize(
    ("errcode", "error"),
    [(40075, WeChatCardCodeInvalid), (40056, WeChatCardCodeInvalid), (40099, WeChatCardCodeConsumed)],
)
@responses.activate
def test_decrypt_card_code_errors_are_typed(errcode, error):
    _token(responses)
    responses.post(f"{API}/card/code/decrypt", json={"errcode": errcode, "errmsg": "no"})
    with pytest.raises(error) as caught:
        _decrypt()
    assert caught.value.code == str(errcode) and not caught.value.retryable


@responses.activate
def test_a_decrypt_answer_without_a_code_is_not_trusted():
    _token(responses)
    responses.post(f"{API}/card/code/decrypt", json={"errcode": 0, "errmsg": "ok"})
    with pytest.raises(Exception, match="UNPARSEABLE_RESPONSE"):
        _decrypt()


# -- the endpoints against responses ----------------------------------------------------


@pytest.fixture
def card_app(app):
    app.config.update(WECHAT_API_BASE=API, WECHAT_CARD_ID=CARD_ID)
    return app


def _wechat_answers(mock, decrypt=None, consume=None):
    _token(mock)
    mock.post(f"{API}/card/code/decrypt", json=decrypt or {"errcode": 0, "errmsg": "ok", "code": REAL_CODE})
    mock.post(
        f"{API}/card/code/consume",
        json=consume or {"errcode": 0, "errmsg": "ok", "openid": "o1", "card": {"card_id": CARD_ID}},
    )


@responses.activate
def test_the_user_records_the_card_code_then_consuming_the_encrypted_code_decides_the_payout_once(
    card_app, client, make_user, user_headers, make_operator
):
    # given: a (non-custom-code) card payout the user added to their card package
    user = make_user()
    payout = offered(fund_card_payout(user))
    _wechat_answers(responses)
    # when: the mini-program hands in the encrypted code from wx.addCard
    answer = client.post(
        f"/api/v1/me/payouts/{payout.id}/card-code", headers=user_headers(user), json={"encrypt_code": ENCRYPTED}
    )
    # then: the real code is recorded, the payout still waits
    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "waiting_user_confirm"
    assert state_of(payout.id)[:2] == ("waiting_user_confirm", REAL_CODE)
    # when: the counter redeems the card by its encrypted code
    _, admin = make_operator("admin")
    answer = client.post("/admin/api/cards/consume", headers=admin, json={"encrypt_code": ENCRYPTED})
    # then: decrypted, consumed with our card id, and the payout decided
    assert answer.status_code == 200, answer.json
    assert answer.json == {"consumed": True, "card_id": CARD_ID, "payout_id": payout.id}
    consume = [c for c in responses.calls if c.request.url.startswith(f"{API}/card/code/consume")]
    assert json.loads(consume[0].request.body) == {"code": REAL_CODE, "card_id": CARD_ID}
    decided = state_of(payout.id)
    assert decided[:2] == ("succeeded", REAL_CODE) and decided[3] == 5_00
    # when: redeemed a second time, WeChat says it is consumed
    responses.replace(responses.POST, f"{API}/card/code/consume", json={"errcode": 40099, "errmsg": "code consumed"})
    again = client.post("/admin/api/cards/consume", headers=admin, json={"code": REAL_CODE})
    # then: 409 and nothing changes
    assert again.status_code == 409 and again.json["error"] == "card_code_consumed"
    assert state_of(payout.id) == decided
    assert db.session.query(AuditLog).filter_by(action="card.consume").count() == 1


@responses.activate
def test_recording_the_same_card_code_again_changes_nothing(card_app, client, make_user, user_headers):
    user = make_user()
    payout = offered(fund_card_payout(user))
    _wechat_answers(responses)
    url, headers = f"/api/v1/me/payouts/{payout.id}/card-code", user_headers(user)
    first = client.post(url, headers=headers, json={"encrypt_code": ENCRYPTED})
    second = client.post(url, headers=headers, json={"encrypt_code": ENCRYPTED})
    assert first.status_code == second.status_code == 200 and first.json == second.json
    assert state_of(payout.id)[:2] == ("waiting_user_confirm", REAL_CODE)
    # a different code for the same payout is refused
    responses.replace(
        responses.POST, f"{API}/card/code/decrypt", json={"errcode": 0, "errmsg": "ok", "code": "999988887777"}
    )
    other = client.post(url, headers=headers, json={"encrypt_code": ENCRYPTED})
    assert other.status_code == 409 and other.json["error"] == "card_code_recorded"
    assert state_of(payout.id)[:2] == ("waiting_user_confirm", REAL_CODE)


@responses.activate
def test_a_lost_consume_answer_is_recovered_by_the_retry_that_hears_already_consumed(
    card_app, client, make_user, make_operator
):
    # given: a custom-code card payout whose redemption reached WeChat but whose answer was lost
    payout = offered(fund_card_payout(make_user()))
    _wechat_answers(responses, consume={"errcode": 40099, "errmsg": "invalid code, this code has consumed."})
    _, admin = make_operator("admin")
    # when: the counter tries again
    answer = client.post("/admin/api/cards/consume", headers=admin, json={"code": payout.external_no})
    # then: 409, and the payout is decided all the same (the card was redeemed)
    assert answer.status_code == 409 and answer.json["error"] == "card_code_consumed"
    assert state_of(payout.id)[:2] == ("succeeded", payout.external_no)


@pytest.mark.parametrize("status", ["cancelled", "failed"])
@responses.activate
def test_a_card_whose_payout_money_went_back_is_redeemed_by_nobody(card_app, client, make_user, make_operator, status):
    # given: a custom-code card payout an operator cancelled (its money back in the balance; WeChat cannot recall it)
    from payouts.transitions import mark_returned

    payout = offered(fund_card_payout(make_user()))
    mark_returned(payout, status, payout.created_at, "CANCELLED_BY_OPERATOR: no longer offered")
    db.session.commit()
    before = state_of(payout.id)
    _wechat_answers(responses)
    _, admin = make_operator("admin")
    # when: the counter tries to redeem it
    answer = client.post("/admin/api/cards/consume", headers=admin, json={"code": payout.external_no})
    # then: refused before WeChat is asked (redeemed, it would pay the money twice); nothing changes
    assert (answer.status_code, answer.json["error"]) == (409, "card_payout_cancelled"), answer.json
    assert not [c for c in responses.calls if "/card/code/consume" in c.request.url]
    assert state_of(payout.id) == before


@pytest.mark.parametrize("errcode", [40075, 40056])
@responses.activate
def test_a_bad_encrypt_code_is_a_clear_4xx_and_changes_nothing(
    card_app, client, make_user, user_headers, make_operator, errcode
):
    user = make_user()
    payout = offered(fund_card_payout(user))
    before = state_of(payout.id)
    _wechat_answers(responses, decrypt={"errcode": errcode, "errmsg": "invalid encrypt code"})
    _, admin = make_operator("admin")
    consumed = client.post("/admin/api/cards/consume", headers=admin, json={"encrypt_code": ENCRYPTED})
    linked = client.post(
        f"/api/v1/me/payouts/{payout.id}/card-code", headers=user_headers(user), json={"encrypt_code": ENCRYPTED}
    )
    for answer in (consumed, linked):
        assert answer.status_code == 422 and answer.json["error"] == "card_code_invalid", answer.json
    assert state_of(payout.id) == before
    assert not [c for c in responses.calls if "/card/code/consume" in c.request.url]
    assert db.session.query(AuditLog).filter_by(action="card.consume").count() == 0


@responses.activate
def test_the_card_code_endpoint_retries_a_token_error_once(card_app, client, make_user, user_headers):
    user = make_user()
    payout = offered(fund_card_payout(user))
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "OLD", "expires_in": 7200})
    responses.post(f"{API}/cgi-bin/stable_token", json={"access_token": "NEW", "expires_in": 7200})
    responses.post(f"{API}/card/code/decrypt", json={"errcode": 42001, "errmsg": "access_token expired"})
    responses.post(f"{API}/card/code/decrypt", json={"errcode": 0, "errmsg": "ok", "code": REAL_CODE})
    answer = client.post(
        f"/api/v1/me/payouts/{payout.id}/card-code", headers=user_headers(user), json={"encrypt_code": ENCRYPTED}
    )
    assert answer.status_code == 200, answer.json
    assert len([c for c in responses.calls if "/card/code/decrypt" in c.request.url]) == 2
    assert state_of(payout.id)[1] == REAL_CODE


def test_someone_elses_payout_is_not_found_and_other_rails_are_refused(card_app, client, make_user, user_headers):
    owner, stranger = make_user(), make_user()
    card = offered(fund_card_payout(owner))
    cash = account(AccountKind.USER_CASH, "user", owner.id)
    post_entry("fund:t", "rebate", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -3_00), Leg(cash, 3_00)])
    transfer = enqueue_payout(
        number_prefix="", rail="wechat_change", user_id=owner.id, amount_fen=3_00, source=cash, key="t", memo="t"
    )
    db.session.commit()
    body = {"encrypt_code": ENCRYPTED}
    with responses.RequestsMock() as mock:  # no WeChat call for any of these
        theirs = client.post(f"/api/v1/me/payouts/{card.id}/card-code", headers=user_headers(stranger), json=body)
        missing = client.post("/api/v1/me/payouts/999999/card-code", headers=user_headers(owner), json=body)
        not_card = client.post(f"/api/v1/me/payouts/{transfer.id}/card-code", headers=user_headers(owner), json=body)
        assert len(mock.calls) == 0
    assert theirs.status_code == missing.status_code == 404
    assert not_card.status_code == 409 and not_card.json["error"] == "not_a_card_payout"
    assert state_of(card.id)[1] is None


@responses.activate
def test_a_decided_card_payout_takes_no_new_code(card_app, client, make_user, user_headers, make_operator):
    user = make_user()
    payout = offered(fund_card_payout(user))
    _wechat_answers(responses)
    _, admin = make_operator("admin")
    assert client.post("/admin/api/cards/consume", headers=admin, json={"code": payout.external_no}).status_code == 200
    decided = state_of(payout.id)
    answer = client.post(
        f"/api/v1/me/payouts/{payout.id}/card-code", headers=user_headers(user), json={"encrypt_code": ENCRYPTED}
    )
    assert answer.status_code == 409 and answer.json["error"] == "payout_state"
    assert state_of(payout.id) == decided


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"code": REAL_CODE, "encrypt_code": ENCRYPTED},
        {"card_id": CARD_ID},
        {"encrypt_code": "short"},
        {"encrypt_code": "not base64 at all!"},
        {"encrypt_code": 12345678},
        {"code": None, "encrypt_code": None},
    ],
)
def test_exactly_one_of_code_and_encrypt_code_or_422_before_any_call(card_app, client, make_operator, body):
    _, admin = make_operator("admin")
    with responses.RequestsMock() as mock:
        answer = client.post("/admin/api/cards/consume", headers=admin, json=body)
        assert answer.status_code == 422, answer.json
        assert len(mock.calls) == 0


@pytest.mark.parametrize("body", [{}, {"encrypt_code": "x"}, {"encrypt_code": ENCRYPTED, "code": REAL_CODE}])
def test_the_card_code_endpoint_validates_its_body(card_app, client, make_user, user_headers, body):
    user = make_user()
    payout = offered(fund_card_payout(user))
    with responses.RequestsMock() as mock:
        answer = client.post(f"/api/v1/me/payouts/{payout.id}/card-code", headers=user_headers(user), json=body)
        assert answer.status_code == 422 and len(mock.calls) == 0


# -- against the simulator ------------------------------------------------------------------


@pytest.fixture
def sim_card_app(app):
    app.config["WECHAT_CARD_ID"] = "pSIMCARD0001"
    return app


def _add_card_in_the_simulator(client, payout: Payout) -> str:
    """The phone's wx.addCard with the payout's signed cardExt: the encrypted code the mini-program gets."""
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    answer = client.post(
        "/_sim/card/add",
        json={"card_id": payout.request["card_id"], "card_ext": payout.package_info, "openid": "sim-openid-alice"},
    )
    assert answer.status_code == 200, answer.json
    return answer.json["cardList"][0]["code"]


def test_simulator_card_payout_added_recorded_and_redeemed_once(
    sim_card_app, client, make_user, user_headers, make_operator
):
    # given: a card payout dispatched by the real card rail (cardExt signed with the simulator's ticket)
    user = make_user()
    payout = fund_card_payout(user)
    db.session.commit()
    dispatch_due({"card_coupon": build_rails(sim_card_app.config, sim_card_app.extensions["wechat"])["card_coupon"]})
    assert state_of(payout.id)[0] == "waiting_user_confirm"
    encrypted = _add_card_in_the_simulator(client, payout)
    # when: the mini-program records the code, and the counter redeems it by the encrypted code
    linked = client.post(
        f"/api/v1/me/payouts/{payout.id}/card-code", headers=user_headers(user), json={"encrypt_code": encrypted}
    )
    assert linked.status_code == 200, linked.json
    code = state_of(payout.id)[1]
    assert code and code.isdigit() and code != encrypted
    _, staff = make_operator("admin")
    consumed = client.post("/admin/api/cards/consume", headers=staff, json={"encrypt_code": encrypted})
    # then
    assert consumed.status_code == 200, consumed.json
    assert consumed.json == {"consumed": True, "card_id": "pSIMCARD0001", "payout_id": payout.id}
    decided = state_of(payout.id)
    assert decided[:2] == ("succeeded", code) and decided[3] == 5_00
    # and a second redemption is refused, nothing changes
    again = client.post("/admin/api/cards/consume", headers=staff, json={"code": code})
    assert again.status_code == 409 and again.json["error"] == "card_code_consumed"
    assert state_of(payout.id) == decided


def test_simulator_custom_code_card_is_redeemed_by_our_number(sim_card_app, client, make_user, make_operator):
    from payouts.card_rail import CardRail
    from wechat.sim.cards import CARD_TICKET

    payout = fund_card_payout(make_user())
    db.session.commit()
    dispatch_due({"card_coupon": CardRail("pSIMCARD0001", lambda: CARD_TICKET, custom_code=True)})
    encrypted = _add_card_in_the_simulator(client, payout)
    _, staff = make_operator("admin")
    consumed = client.post("/admin/api/cards/consume", headers=staff, json={"encrypt_code": encrypted})
    assert consumed.status_code == 200 and consumed.json["payout_id"] == payout.id
    assert state_of(payout.id)[:2] == ("succeeded", payout.external_no)


def test_simulator_refuses_unknown_codes_and_forged_encrypt_codes(sim_card_app, client, make_operator, make_user):
    payout = offered(fund_card_payout(make_user()))
    _, staff = make_operator("admin")
    before = state_of(payout.id)
    unknown = client.post("/admin/api/cards/consume", headers=staff, json={"code": "000011112222"})
    forged = client.post("/admin/api/cards/consume", headers=staff, json={"encrypt_code": ENCRYPTED})
    for answer in (unknown, forged):
        assert answer.status_code == 422 and answer.json["error"] == "card_code_invalid", answer.json
    assert state_of(payout.id) == before


def test_simulator_refuses_a_card_ext_with_a_bad_signature(sim_card_app, client):
    ext = {"timestamp": 1, "nonce_str": "n", "signature": "0" * 40}
    answer = client.post("/_sim/card/add", json={"card_id": "pSIMCARD0001", "card_ext": json.dumps(ext), "openid": "o"})
    assert answer.status_code == 400 and "40080" in answer.json["errMsg"]


@pytest.mark.parametrize("shop", ["other", "own", "platform"])
def test_merchant_staff_redeem_only_their_own_merchants_and_the_platforms_cards(
    sim_card_app, client, make_user, make_operator, make_merchant, make_product, make_campaign, pay, shop
):
    """A coupon a merchant's campaign paid for is that merchant's: another shop's staff cannot burn it (403, and
    WeChat is not asked). The platform's are redeemed at every shop; platform operators redeem any."""
    from payouts.card_rail import CardRail
    from tests.review_helpers import paid_order
    from wechat.sim.cards import CARD_TICKET

    funder = make_merchant()
    _, _, _, campaign = paid_order(make_user, make_product, make_campaign, pay, merchant=funder)
    if shop != "platform":  # the campaign is the funder's own: issued by it
        campaign.issuer_type, campaign.issuer_merchant_id, campaign.issuer_user_id = "merchant", funder.id, None
    payout = fund_card_payout(make_user())
    payout.rebate_id = db.session.execute(select(Rebate.id).where(Rebate.campaign_id == campaign.id)).scalars().first()
    db.session.commit()
    dispatch_due({"card_coupon": CardRail("pSIMCARD0001", lambda: CARD_TICKET, custom_code=True)})
    _add_card_in_the_simulator(client, payout)
    before = state_of(payout.id)
    _, staff = make_operator("merchant_staff", funder if shop == "own" else make_merchant())
    consumed = client.post("/admin/api/cards/consume", headers=staff, json={"code": payout.external_no})
    if shop == "other":
        assert consumed.status_code == 403 and consumed.json["error"] == "card_of_another_merchant", consumed.json
        assert state_of(payout.id) == before
        _, admin = make_operator("admin")  # WeChat never heard of the refused redemption: the card still works
        consumed = client.post("/admin/api/cards/consume", headers=admin, json={"code": payout.external_no})
    assert consumed.status_code == 200, consumed.json
    assert consumed.json["payout_id"] == payout.id
    assert state_of(payout.id)[0] == "succeeded"


def test_merchant_staff_are_refused_a_code_none_of_our_payouts_carries_yet(sim_card_app, client, make_operator):
    """Whose a code is cannot be told before it is recorded (review of 2026-12-02): merchant staff are refused and
    WeChat is not asked to consume it; a platform operator may still redeem it (WeChat judges the code)."""
    _, staff = make_operator("merchant_staff")
    _, admin = make_operator("admin")
    refused = client.post("/admin/api/cards/consume", headers=staff, json={"code": "000011112222"})
    assert (refused.status_code, refused.json["error"]) == (403, "card_code_unknown"), refused.json
    platform = client.post("/admin/api/cards/consume", headers=admin, json={"code": "000011112222"})
    assert (platform.status_code, platform.json["error"]) == (422, "card_code_invalid")  # WeChat's answer


def test_two_payouts_of_one_person_recording_one_code_at_once_give_it_to_one(card_app, make_user):
    # given: two card payouts offered to one person
    from payouts.operations import PayoutError, record_card_code
    from tests.concurrency import together

    user = make_user()
    first, second = offered(fund_card_payout(user, key="c1")), offered(fund_card_payout(user, key="c2"))
    ids, user_id = [first.id, second.id], user.id
    # when: the same code is recorded on both at once
    results = together(2, lambda i: record_card_code(ids[i], user_id, REAL_CODE).id, app=card_app)
    # then: one payout carries it, the other was refused (card_code_taken), never both
    taken = [r for r in results if isinstance(r, PayoutError)]
    assert [r.code for r in taken] == ["card_code_taken"], results
    db.session.expire_all()
    carrying = db.session.execute(select(Payout.id).where(Payout.wechat_ref == REAL_CODE)).scalars().all()
    assert len(carrying) == 1 and carrying[0] in results


def test_a_card_rebate_of_another_amount_than_the_cards_value_is_never_offered_as_that_card(sim_card_app, make_user):
    """The card's value is fixed at WeChat when the card is made: a 3.17 rebate offered as a 5.00 card books 3.17 and
    hands over 5.00. With ``WECHAT_CARD_FACE_VALUE_FEN`` set the rail refuses other amounts (they fall back)."""
    from datetime import UTC, datetime

    from jobs.payouts import payout_rails
    from payouts.rails import Outcome

    sim_card_app.config["WECHAT_CARD_FACE_VALUE_FEN"] = 5_00
    rail = payout_rails(sim_card_app)["card_coupon"]
    assert rail.face_value_fen == 5_00
    user = make_user()
    now = datetime.now(UTC)
    odd = rail.build_request(Payout(user_id=user.id, amount_fen=3_17, external_no="c-1", rail="card_coupon"), now)
    assert (odd.outcome, odd.code) == (Outcome.FALLBACK, "NO_CARD_FOR_AMOUNT")
    fits = rail.build_request(Payout(user_id=user.id, amount_fen=5_00, external_no="c-2", rail="card_coupon"), now)
    assert isinstance(fits, dict) and fits["amount_fen"] == 5_00
