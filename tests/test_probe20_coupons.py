"""Probe 20: WeChat Pay coupons: a spent stock pauses that stock, not the rail; a refusal of a resend that may
have issued the coupon is never a fallback (docs/architecture.md §2: payouts own the rails)."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

import pytest
from sqlalchemy import select

from jobs.payouts import dispatch_due
from ledger import check_ledger
from models import Alert, AuditLog, Payout, RailControl, Rebate, db, utcnow
from models.operators import Actor
from payouts import MoneySettings
from payouts.controls import resume_stock, switch_rail
from payouts.coupon_rail import CouponRail, check_stocks, stock_key
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings, apply_result
from tests.money_helpers import queue_from_balance
from wechat.errors import WeChatBusinessError, WeChatUnavailable

MCHID = "1900000109"
STOCKS = [{"stock_id": "S-FIX-500", "denomination_fen": 500}, {"stock_id": "S-FIX-1000", "denomination_fen": 1_000}]
_seq = count(1)


class ScriptedPay:
    """The app's PayClient, with some stocks answering an error instead, and every call written down."""

    def __init__(self, pay):
        self.pay, self.calls, self.refuse = pay, [], {}

    def send_favor_coupon(self, openid, stock_id, out_request_no, *args, **kwargs):
        self.calls.append((stock_id, out_request_no))
        error = self.refuse.get(stock_id)
        if error is not None:
            raise error
        return self.pay.send_favor_coupon(openid, stock_id, out_request_no, *args, **kwargs)


def not_enough() -> WeChatBusinessError:
    return WeChatBusinessError("批次预算不足", code="NOT_ENOUGH", http_status=403)


def rule_limit() -> WeChatBusinessError:
    return WeChatBusinessError("用户已达领券上限", code="RULE_LIMIT", http_status=403)


@pytest.fixture
def pay(app):
    return ScriptedPay(app.extensions["wechat"].pay)


@pytest.fixture
def rail(app, pay):
    return CouponRail(pay, appid=app.config["WECHAT_APPID"], stock_creator_mchid=MCHID, stocks=STOCKS)


@pytest.fixture
def coupon(app, make_user):
    def make(amount_fen: int, fallback: str | None = None) -> Payout:
        user = make_user(appid=app.config["WECHAT_APPID"])
        return queue_from_balance(user, amount_fen, "wechat_coupon", "p20", number_prefix="", fallback=fallback)

    return make


@pytest.fixture
def admin(make_operator):
    return Actor(make_operator("admin")[0], "10.0.0.1")


def run(rail, at=None):
    outcomes = dispatch_due(
        {rail.name: rail}, settings=DispatchSettings(money=MoneySettings()), clock=lambda: at or now()
    )
    db.session.expire_all()
    return outcomes


def now():
    return utcnow()


def fresh(payout: Payout) -> Payout:
    return db.session.get(Payout, payout.id)


def test_a_spent_stock_pauses_that_stock_and_the_rail_goes_on_for_the_others(rail, pay, coupon):
    # given: two payouts of the spent 5-yuan stock, and one of the 10-yuan stock (queued last)
    first, second, other = coupon(500), coupon(500), coupon(1_000)
    pay.refuse["S-FIX-500"] = not_enough()
    # when: one pass
    run(rail)
    # then: the 10-yuan coupon is issued; the 5-yuan payouts wait for their stock, not sent again meanwhile
    assert fresh(other).status == "succeeded"
    for waiting in (fresh(first), fresh(second)):
        assert waiting.status == "pending" and waiting.next_attempt_at > utcnow() + timedelta(hours=1)
        assert "S-FIX-500" in waiting.last_error
    rail_switch = db.session.get(RailControl, "wechat_coupon")
    assert rail_switch is None or rail_switch.paused_until is None
    assert db.session.get(RailControl, stock_key("S-FIX-500")).paused_until is not None
    # and: one alert, naming the stock
    alerts = db.session.execute(select(Alert).where(Alert.kind == "coupon_stock_spent")).scalars().all()
    assert [a.subject for a in alerts] == ["S-FIX-500"] and "campaign" in alerts[0].message
    assert check_ledger().ok


def test_a_payout_of_a_paused_stock_waits_without_a_call_and_the_resume_sends_it_once(rail, pay, coupon, admin):
    # given: the stock answered NOT_ENOUGH once; a new payout of it is queued afterwards
    spent = coupon(500)
    pay.refuse["S-FIX-500"] = not_enough()
    run(rail)
    later = coupon(500)
    calls = len(pay.calls)
    run(rail)
    # then: the new payout waits for the stock without asking WeChat
    assert len(pay.calls) == calls
    assert fresh(later).status == "pending" and fresh(later).next_attempt_at > utcnow() + timedelta(hours=1)
    # when: the budget is raised at WeChat and an operator resumes the stock
    del pay.refuse["S-FIX-500"]
    released = resume_stock(admin, "S-FIX-500", "budget raised to 10 000 yuan", utcnow())
    db.session.commit()
    assert released == 2
    run(rail)
    # then: both are issued, each exactly once, under its own number
    assert fresh(spent).status == "succeeded" and fresh(later).status == "succeeded"
    numbers = [no for stock, no in pay.calls if stock == "S-FIX-500"]
    assert numbers == [spent.external_no, spent.external_no, later.external_no]
    assert db.session.get(RailControl, stock_key("S-FIX-500")).paused_until is None
    assert db.session.execute(select(AuditLog.action).where(AuditLog.action == "coupon_stock.resume")).scalar_one()


def test_restarting_the_coupon_rail_resumes_its_spent_stocks(rail, pay, coupon, admin):
    spent = coupon(500)
    pay.refuse["S-FIX-500"] = not_enough()
    run(rail)
    del pay.refuse["S-FIX-500"]
    switch_rail(admin, "wechat_coupon", True, "budgets raised", utcnow())
    db.session.commit()
    run(rail)
    assert fresh(spent).status == "succeeded"


@pytest.mark.parametrize("stock_id", ["S-NEVER-PAUSED", "", "x" * 21])
def test_resuming_a_stock_that_is_not_paused_is_refused_and_changes_nothing(app, admin, stock_id):
    with pytest.raises(ValueError, match="stock"):
        resume_stock(admin, stock_id, "typo", utcnow())
    db.session.rollback()
    assert db.session.execute(select(RailControl)).scalars().all() == []
    assert db.session.execute(select(AuditLog).where(AuditLog.action == "coupon_stock.resume")).first() is None


def test_a_spent_stock_falls_back_where_the_rule_says_so(rail, pay, coupon):
    # given: the campaign's rule falls back to the in-app balance
    payout = coupon(500, fallback="balance")
    pay.refuse["S-FIX-500"] = not_enough()
    run(rail)
    # then: the payout is cancelled and its value credited to the balance, once
    done = fresh(payout)
    assert done.status == "cancelled" and "S-FIX-500" in done.last_error
    assert check_ledger().ok


def test_a_rule_limit_on_a_first_send_still_falls_back(rail, pay, coupon):
    payout = coupon(500, fallback="balance")
    pay.refuse["S-FIX-500"] = rule_limit()
    run(rail)
    assert fresh(payout).status == "cancelled"


@pytest.mark.parametrize(("refusal", "status"), [(rule_limit, "needs_operator"), (not_enough, "pending")])
def test_a_refused_resend_after_a_lost_answer_never_falls_back(rail, pay, coupon, refusal, status):
    # given: the first send's answer was lost (the coupon may have been issued); the rule has a fallback
    payout = coupon(500, fallback="balance")
    pay.refuse["S-FIX-500"] = WeChatUnavailable("网关超时", code="SYSTEM_ERROR", http_status=502)
    run(rail)
    assert fresh(payout).status == "unknown"
    # when: the same number is sent again and WeChat answers the per-user cap (or an empty budget), which the
    # coupon issued by the first send may itself explain
    pay.refuse["S-FIX-500"] = refusal()
    run(rail, at=utcnow() + timedelta(days=1))
    # then: no fallback (the person would get the coupon and the fallback): an operator looks, or it waits
    done = fresh(payout)
    assert done.status == status
    assert db.session.execute(select(Payout).where(Payout.retry_of_id == payout.id)).first() is None
    assert [no for _, no in pay.calls] == [payout.external_no, payout.external_no]
    assert check_ledger().ok


def test_a_resend_after_a_lost_answer_returns_the_coupon_already_issued(rail, pay, coupon):
    payout = coupon(500)
    pay.refuse["S-FIX-500"] = WeChatUnavailable("网关超时", code="SYSTEM_ERROR", http_status=502)
    run(rail)
    del pay.refuse["S-FIX-500"]
    run(rail, at=utcnow() + timedelta(days=1))
    assert fresh(payout).status == "succeeded"


def test_a_not_enough_answered_before_the_resume_does_not_pause_the_stock_again(app, rail, pay, coupon, admin):
    # given: a stock paused, then resumed by an operator at `resumed`
    payout = coupon(500)
    pay.refuse["S-FIX-500"] = not_enough()
    run(rail)
    resumed = utcnow() + timedelta(minutes=5)
    resume_stock(admin, "S-FIX-500", "budget raised", resumed)
    db.session.commit()
    # when: a NOT_ENOUGH of a call made before the resume is recorded after it
    answer = RailResult(Outcome.PAUSE_STOCK, "NOT_ENOUGH", "批次预算不足", details={"stock_id": "S-FIX-500"})
    payout = fresh(payout)
    payout.status = "sending"
    apply_result(payout, answer, resumed - timedelta(minutes=1), DispatchSettings(money=MoneySettings()))
    db.session.commit()
    # then: the stock stays resumed and the payout is sent again soon
    assert db.session.get(RailControl, stock_key("S-FIX-500")).paused_until is None
    assert fresh(payout).status == "pending" and fresh(payout).next_attempt_at < resumed + timedelta(hours=1)


@pytest.mark.parametrize("stock_id", ["9" * 21, "S.500", "S 500", "S/500", "批次500", ""])
def test_a_stock_id_an_operator_could_not_resume_is_refused_at_start_up(stock_id):
    # longer than WeChat's, or not one PUT /admin/api/rails/wechat_coupon/stocks/<stock_id> takes
    with pytest.raises(ValueError, match="stock_id"):
        check_stocks([{"stock_id": stock_id, "denomination_fen": 500}])


def test_a_numeric_stock_id_is_read_as_wechats_string():
    assert check_stocks([{"stock_id": 9856000, "denomination_fen": 500}])[0]["stock_id"] == "9856000"


def test_coupon_outcomes(rail):
    assert Outcome("pause_stock") == Outcome.PAUSE_STOCK


# -- the operator's hand: the API route and the console --------------------------------------------------------

STOCK_URL = "/admin/api/rails/wechat_coupon/stocks/{}"


@pytest.fixture
def spent(app, rail, pay, coupon, make_user, make_product, make_campaign):
    """A payout of a campaign waiting for the 5-yuan stock, which WeChat said is spent. Returns (payout, campaign)."""
    from tests.payment_helpers import pay_as_wechat
    from tests.review_helpers import paid_order

    def paid(order):
        pay_as_wechat(order.out_trade_no, f"tx-{order.out_trade_no}", order.payable_fen, utcnow())
        db.session.commit()

    order, _, _, campaign = paid_order(make_user, make_product, make_campaign, paid)
    payout = coupon(500)
    payout.rebate_id = db.session.execute(select(Rebate.id).where(Rebate.order_id == order.id).limit(1)).scalar_one()
    db.session.commit()
    pay.refuse["S-FIX-500"] = not_enough()
    run(rail)
    assert fresh(payout).status == "pending" and fresh(payout).next_attempt_at > utcnow() + timedelta(hours=1)
    del pay.refuse["S-FIX-500"]
    return fresh(payout), campaign


def resumes() -> list[AuditLog]:
    db.session.expire_all()
    return db.session.execute(select(AuditLog).where(AuditLog.action == "coupon_stock.resume")).scalars().all()


def test_the_rails_list_shows_a_paused_stock_with_its_campaign(client, make_operator, spent):
    payout, campaign = spent
    listed = client.get("/admin/api/rails", headers=make_operator("support")[1])
    assert listed.status_code == 200
    [stock] = listed.json["paused_stocks"]
    assert (stock["stock_id"], stock["rail"], stock["waiting"]) == ("S-FIX-500", "wechat_coupon", 1)
    assert stock["campaign_ids"] == [campaign.id] and "NOT_ENOUGH" in stock["reason"]
    assert stock["paused_since"] < stock["paused_until"]
    coupon_rail = next(r for r in listed.json["items"] if r["rail"] == "wechat_coupon")
    assert coupon_rail["paused_until"] is None  # the rail itself is not paused


def test_an_operator_resumes_a_stock_through_the_api_once(app, client, make_operator, rail, pay, spent):
    payout, _ = spent
    operator, headers = make_operator("finance")
    keyed = {**headers, "Idempotency-Key": "resume-1"}
    answer = client.put(STOCK_URL.format("S-FIX-500"), json={"reason": "budget raised"}, headers=keyed)
    assert answer.status_code == 200 and answer.json == {"stock_id": "S-FIX-500", "released": 1}
    # the same key again: the same answer, resumed once
    again = client.put(STOCK_URL.format("S-FIX-500"), json={"reason": "budget raised"}, headers=keyed)
    assert (again.status_code, again.json) == (200, answer.json)
    assert [(a.operator_id, a.target_id, a.reason) for a in resumes()] == [(operator.id, "S-FIX-500", "budget raised")]
    assert client.get("/admin/api/rails", headers=headers).json["paused_stocks"] == []
    assert fresh(payout).next_attempt_at <= utcnow()
    # without a key, a second resume: the stock is not paused any more
    twice = client.put(STOCK_URL.format("S-FIX-500"), json={"reason": "budget raised"}, headers=headers)
    assert (twice.status_code, twice.json["error"]) == (409, "coupon_stock_not_paused") and len(resumes()) == 1
    run(rail)
    assert fresh(payout).status == "succeeded"
    assert [no for _, no in pay.calls] == [payout.external_no, payout.external_no]  # its own number, twice at most


@pytest.mark.parametrize(
    ("stock_id", "body", "status", "error"),
    [
        ("S-NEVER-PAUSED", {"reason": "budget raised"}, 409, "coupon_stock_not_paused"),
        ("S-FIX-1000", {"reason": "budget raised"}, 409, "coupon_stock_not_paused"),
        ("9" * 21, {"reason": "budget raised"}, 422, "invalid_stock_id"),
        ("S.FIX.500", {"reason": "budget raised"}, 422, "invalid_stock_id"),
        ("批次500", {"reason": "budget raised"}, 422, "invalid_stock_id"),
        ("S-FIX-500", {"reason": ""}, 422, "validation_error"),
        ("S-FIX-500", {}, 422, "validation_error"),
        ("S-FIX-500", {"reason": "budget raised", "released": 5}, 422, "validation_error"),
    ],
)
def test_bad_resumes_are_refused_and_change_nothing(client, make_operator, spent, stock_id, body, status, error):
    payout, _ = spent
    answer = client.put(STOCK_URL.format(stock_id), json=body, headers=make_operator("admin")[1])
    assert (answer.status_code, answer.json["error"]) == (status, error)
    assert resumes() == [] and db.session.get(RailControl, stock_key("S-NEVER-PAUSED")) is None
    assert db.session.get(RailControl, stock_key("S-FIX-500")).paused_until is not None
    assert fresh(payout).next_attempt_at > utcnow() + timedelta(hours=1)


@pytest.mark.parametrize("role", ["support", "merchant_staff"])
def test_support_and_merchant_staff_may_not_resume_a_stock(client, make_operator, spent, role):
    answer = client.put(STOCK_URL.format("S-FIX-500"), json={"reason": "budget raised"}, headers=make_operator(role)[1])
    assert answer.status_code == 403 and resumes() == []
    if role == "merchant_staff":  # nor read the rails
        assert client.get("/admin/api/rails", headers=make_operator(role)[1]).status_code == 403


def test_the_console_shows_paused_stocks_and_resumes_one(client, make_operator, spent):
    from tests.console_helpers import post, sign_in

    payout, campaign = spent
    # support sees the stock, without a form
    sign_in(client, make_operator("support")[1])
    page = client.get("/console/payouts").get_data(as_text=True)
    assert 'data-stock="S-FIX-500"' in page and f"#{campaign.id}" in page
    assert "/console/rails/wechat_coupon/stocks/S-FIX-500/resume" not in page
    # … and may not post one
    csrf = sign_in(client, make_operator("support")[1])
    assert (
        post(client, "/console/rails/wechat_coupon/stocks/S-FIX-500/resume", {"reason": "x" * 5}, csrf).status_code
        == 403
    )
    # an admin has the form; the API's refusals are shown with its status, nothing changed
    csrf = sign_in(client, make_operator("admin")[1])
    assert "/console/rails/wechat_coupon/stocks/S-FIX-500/resume" in client.get("/console/payouts").get_data(
        as_text=True
    )
    no_reason = post(client, "/console/rails/wechat_coupon/stocks/S-FIX-500/resume", {"reason": ""}, csrf)
    assert no_reason.status_code == 422 and "reason" in no_reason.get_data(as_text=True)
    not_paused = post(
        client, "/console/rails/wechat_coupon/stocks/S-FIX-1000/resume", {"reason": "budget raised"}, csrf
    )
    assert not_paused.status_code == 409 and "not paused" in not_paused.get_data(as_text=True)
    bad_id = post(client, f"/console/rails/wechat_coupon/stocks/{'9' * 21}/resume", {"reason": "budget raised"}, csrf)
    assert bad_id.status_code == 422
    assert resumes() == []
    # then it is resumed
    done = post(client, "/console/rails/wechat_coupon/stocks/S-FIX-500/resume", {"reason": "budget raised"}, csrf)
    assert done.status_code == 302 and done.headers["Location"].endswith("/console/payouts")
    assert "Stock resumed: 1 payout(s) due now" in client.get(done.headers["Location"]).get_data(as_text=True)
    assert len(resumes()) == 1 and fresh(payout).next_attempt_at <= utcnow()
    assert 'data-stock="S-FIX-500"' not in client.get("/console/payouts").get_data(as_text=True)
    # merchant staff: no payouts page at all
    sign_in(client, make_operator("merchant_staff")[1])
    assert client.get("/console/payouts").status_code == 403
