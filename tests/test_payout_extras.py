"""Real names for large transfers, operator cancellation of unconfirmed transfers, card redemption."""

from __future__ import annotations

import pytest
import responses

from ledger import Leg, account, balance, post_entry
from models import AccountKind, AuditLog, Payout, User, db, utcnow
from payouts import enqueue_payout
from payouts.transitions import mark_sent


def queue_payout(user, amount_fen, **fields):
    cash = account(AccountKind.USER_CASH, "user", user.id)
    post_entry(
        f"fund:{user.id}:{amount_fen}",
        "rebate",
        [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -amount_fen), Leg(cash, amount_fen)],
    )
    payout = enqueue_payout(
        number_prefix="",
        rail="wechat_change",
        user_id=user.id,
        amount_fen=amount_fen,
        source=cash,
        key=f"t:{user.id}:{amount_fen}",
        memo="test",
    )
    for name, value in fields.items():
        setattr(payout, name, value)
    db.session.commit()
    return payout


def test_real_name_is_stored_encrypted_and_releases_deferred_large_transfers(client, make_user, user_headers):
    # given: a 2,500-yuan transfer deferred because no real name is on file
    user = make_user()
    payout = queue_payout(
        user,
        250_000,
        last_error="REAL_NAME_REQUIRED: waiting for the user",
        next_attempt_at=utcnow().replace(year=2100),
    )
    # when
    answer = client.put("/api/v1/me/real-name", headers=user_headers(user), json={"real_name": "张三"})
    # then
    assert answer.status_code == 200, answer.json
    assert answer.json == {"real_name_on_file": True, "payouts_released": 1}
    db.session.expire_all()
    assert db.session.get(User, user.id).real_name == "张三"
    raw = db.session.execute(db.text("select real_name from users where id = :i"), {"i": user.id}).scalar_one()
    assert raw != "张三" and "张三" not in raw
    assert db.session.get(Payout, payout.id).next_attempt_at <= utcnow()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"real_name": ""},
        {"real_name": "x"},
        {"real_name": "<script>"},
        {"real_name": 123},
        {"real_name": "张三", "extra": 1},
    ],
)
def test_bad_real_names_are_refused_and_change_nothing(client, make_user, user_headers, body):
    user = make_user()
    answer = client.put("/api/v1/me/real-name", headers=user_headers(user), json=body)
    assert answer.status_code == 422
    db.session.expire_all()
    assert db.session.get(User, user.id).real_name is None


def test_operator_cancel_of_an_unconfirmed_transfer_is_left_to_the_dispatcher(client, make_user, make_operator):
    # given: a transfer waiting for the user's confirmation
    user = make_user()
    payout = queue_payout(
        user, 5_00, status="waiting_user_confirm", sent_at=utcnow(), package_info="p", request={"amount_fen": 500}
    )
    _, finance = make_operator("finance")
    # when
    answer = client.post(
        f"/admin/api/payouts/{payout.id}/cancel", headers=finance, json={"reason": "user asked us to stop it"}
    )
    # then: nothing moves yet; the next dispatcher pass cancels it at WeChat
    assert answer.status_code == 200, answer.json
    db.session.expire_all()
    payout = db.session.get(Payout, payout.id)
    assert (payout.status, payout.cancel_requested) == ("waiting_user_confirm", True)
    assert db.session.query(AuditLog).filter_by(action="payout.cancel").count() == 1

    from jobs.payouts import dispatch_due
    from payouts.rails import Outcome, RailResult

    class Fake:
        name, rate_per_second = "wechat_change", 10

        def query(self, no, request):
            return RailResult(Outcome.WAITING_USER_CONFIRM, package_info="p")

        def cancel(self, no):
            return RailResult(Outcome.CANCELLED, "CANCELLED")

    dispatch_due({"wechat_change": Fake()})
    db.session.expire_all()
    assert db.session.get(Payout, payout.id).status == "cancelled"
    assert balance(account(AccountKind.USER_CASH, "user", user.id)) == 5_00


@pytest.fixture
def card_app(app):
    """The app with WeChat's API host somewhere `responses` can answer for (not the in-process simulator)."""
    app.config.update(WECHAT_API_BASE="https://api.weixin.test", WECHAT_CARD_ID="pCARD0001")
    return app


@responses.activate
def test_card_code_consumption_calls_wechat_once_and_is_audited(card_app, client, make_operator):
    responses.post("https://api.weixin.test/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    responses.post(
        "https://api.weixin.test/card/code/consume",
        json={"errcode": 0, "errmsg": "ok", "openid": "o1", "card": {"card_id": "pCARD0001"}},
    )
    _, admin = make_operator("admin")
    answer = client.post("/admin/api/cards/consume", headers=admin, json={"code": "123456789012"})
    assert answer.status_code == 200, answer.json
    assert answer.json == {"consumed": True, "card_id": "pCARD0001", "payout_id": None}
    consume = [c for c in responses.calls if c.request.url.startswith("https://api.weixin.test/card")]
    assert len(consume) == 1 and b'"code":"123456789012"' in consume[0].request.body.replace(b" ", b"")
    assert db.session.query(AuditLog).filter_by(action="card.consume").count() == 1


@responses.activate
def test_card_code_already_consumed_is_a_clear_error(card_app, client, make_operator):
    responses.post("https://api.weixin.test/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    responses.post("https://api.weixin.test/card/code/consume", json={"errcode": 40099, "errmsg": "code consumed"})
    _, admin = make_operator("admin")
    answer = client.post("/admin/api/cards/consume", headers=admin, json={"code": "123456789012"})
    assert answer.status_code == 409  # a state conflict, not WeChat failing (issue 9 §3: a second consume is 409)
    assert answer.json["error"] == "card_code_consumed"
    assert db.session.query(AuditLog).filter_by(action="card.consume").count() == 0


@pytest.mark.parametrize("body", [{}, {"code": "12"}, {"code": "bad code!"}, {"code": 123456}])
def test_bad_card_codes_are_refused_before_any_call(card_app, client, make_operator, body):
    _, admin = make_operator("admin")
    with responses.RequestsMock() as mock:  # any call to WeChat would fail the test
        answer = client.post("/admin/api/cards/consume", headers=admin, json=body)
        assert answer.status_code == 422
        assert len(mock.calls) == 0


@responses.activate
@pytest.mark.parametrize("card", ["pCARD0001", "pOTHERCARD"])
def test_consuming_a_custom_code_card_decides_its_payout(card_app, client, make_operator, make_user, card):
    # given: a card payout offered to the user; its custom code is our external number
    user = make_user()
    fund = account(AccountKind.PLATFORM_MARKETING_FUND)
    payout = enqueue_payout(
        number_prefix="", rail="card_coupon", user_id=user.id, amount_fen=5_00, source=fund, key="c", memo="card"
    )
    payout.status, payout.package_info, payout.request = "waiting_user_confirm", '{"cardExt":1}', {"card_id": card}
    mark_sent(payout, payout.created_at)
    db.session.commit()
    responses.post("https://api.weixin.test/cgi-bin/stable_token", json={"access_token": "AT", "expires_in": 7200})
    responses.post(
        "https://api.weixin.test/card/code/consume",
        json={"errcode": 0, "errmsg": "ok", "openid": "o1", "card": {"card_id": "pCARD0001"}},
    )
    _, admin = make_operator("admin")
    # when: the code is redeemed at the counter
    answer = client.post("/admin/api/cards/consume", headers=admin, json={"code": payout.external_no})
    if card != "pCARD0001":  # WeChat redeemed another card's code: a code is unique within its card only
        assert answer.status_code == 200 and answer.json["payout_id"] is None
        db.session.expire_all()
        assert db.session.get(Payout, payout.id).status == "waiting_user_confirm"
        return
    # then: the payout is decided as delivered
    assert answer.status_code == 200 and answer.json["payout_id"] == payout.id
    db.session.expire_all()
    done = db.session.get(Payout, payout.id)
    assert (done.status, done.wechat_ref) == ("succeeded", payout.external_no)
