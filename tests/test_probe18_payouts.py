"""Probe of the payout outbox (round 18): WeChat answers that learn nothing, a worker that died mid-call, the rails'
answers and the transfer callbacks against what WeChat really did."""

from __future__ import annotations

from datetime import timedelta

from jobs.payouts import dispatch_due
from ledger import account, balance, check_ledger
from models import AccountKind, Payout, db, utcnow
from payouts import MoneySettings
from payouts.dispatch import claim
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings
from payouts.transfer_rail import state_result
from payouts.transitions import mark_sent
from tests.test_payout_extras import queue_payout


class Script:
    """A transfer rail whose answers are scripted per call (``answers[action]``: taken in turn); calls are noted."""

    name, rate_per_second = "wechat_change", 100

    def __init__(self, **answers: list[RailResult]):
        self.answers, self.calls = {k: list(v) for k, v in answers.items()}, []

    def build_request(self, payout, now):
        return {"amount_fen": payout.amount_fen, "openid": f"openid-{payout.user_id}", "wire": {"body": "{}"}}

    def _next(self, action: str) -> RailResult:
        self.calls.append(action)
        return self.answers[action].pop(0)

    def send(self, no, request):
        return self._next("send")

    def query(self, no, request):
        return self._next("query")

    def cancel(self, no):
        return self._next("cancel")


def settings() -> DispatchSettings:
    return DispatchSettings(money=MoneySettings())


def fresh(payout_id: int) -> Payout:
    db.session.expire_all()
    return db.session.get(Payout, payout_id)


def cash(user_id: int) -> int:
    return balance(account(AccountKind.USER_CASH, "user", user_id))


def in_transit() -> int:
    return balance(account(AccountKind.PAYOUT_IN_TRANSIT))


# -- a worker that died mid-POST, a recovering query answered "too many calls" --------------------------------------


def test_a_bill_a_dead_worker_may_have_posted_is_never_failed_by_a_refused_post_after_a_rate_limited_query(make_user):
    # given: a withdrawal claimed and committed; its worker POSTs it (WeChat makes the bill) and dies before recording
    user = make_user()
    payout = queue_payout(user, 5_00)
    now = utcnow()
    claim({"wechat_change": Script()}, now, settings())
    db.session.commit()
    assert fresh(payout.id).status == "sending"
    # when: the next pass, once the lease is over, queries first and is told 429 FREQUENCY_LIMITED (it learned
    # nothing), and the pass after POSTs the number again (for the package_info a query never gives) and is
    # refused with 400
    rail = Script(
        query=[
            RailResult(Outcome.RETRY, "FREQUENCY_LIMITED", "too many calls"),
            RailResult(Outcome.WAITING_USER_CONFIRM, "WAIT_USER_CONFIRM"),  # (what a query of the bill answers)
        ],
        send=[RailResult(Outcome.REFUSED, "INVALID_REQUEST", "bill exists with other parameters")],
    )
    dispatch_due({"wechat_change": rail}, settings=settings(), clock=lambda: now + timedelta(minutes=6))
    due = fresh(payout.id).next_attempt_at
    dispatch_due({"wechat_change": rail}, settings=settings(), clock=lambda: due)
    # then: the bill may exist (the dead worker's POST): an operator decides; the money is neither back in the
    # balance (the person could still confirm the bill and have it twice) nor lost
    stuck = fresh(payout.id)
    assert stuck.status == "needs_operator", (stuck.status, stuck.last_error)
    assert cash(user.id) == 0 and in_transit() == 5_00
    assert check_ledger().ok


# -- what the person is told about a payout an operator must look at ----------------------------------------------


def test_a_person_is_never_shown_another_payees_openid_or_our_internal_errors(client, make_user, user_headers):
    # given: a withdrawal whose POST timed out; the recovering query's answer names another payee (WeChat's mix-up)
    user = make_user()
    payout = queue_payout(user, 5_00, status="unknown", request={"amount_fen": 500, "openid": "openid-me", "wire": {}})
    mark_sent(db.session.get(Payout, payout.id), utcnow())
    db.session.commit()
    other = {"out_bill_no": payout.external_no, "transfer_amount": 500, "openid": "o-SOMEONE-ELSES", "state": "SUCCESS"}
    expected = {"out_bill_no": payout.external_no, "transfer_amount": 500, "openid": "openid-me"}
    rail = Script(query=[state_result(other, expected)])
    dispatch_due({"wechat_change": rail}, settings=settings(), clock=lambda: utcnow() + timedelta(minutes=1))
    assert fresh(payout.id).status == "needs_operator"
    assert "o-SOMEONE-ELSES" in fresh(payout.id).last_error  # (the operator sees it all)
    # when: the person lists their payouts
    [mine] = client.get("/api/v1/me/payouts", headers=user_headers(user)).json["items"]
    # then: they see it is with our staff, never another person's openid, their own, or WeChat's raw answer
    assert mine["status"] == "needs_operator"
    assert "o-SOMEONE-ELSES" not in str(mine) and "openid-me" not in str(mine) and "ANSWER_MISMATCH" not in str(mine)
    assert mine["reason"]


def test_a_card_redeemed_after_an_operator_hand_over_shows_no_stale_reason(client, app, make_user, user_headers):
    # given: a card payout handed to an operator (WeChat's answer named another card), then redeemed at the counter
    from ledger import Leg, account, post_entry
    from models import AccountKind, Payout, db, utcnow
    from payouts import enqueue_payout
    from payouts.operations import settle_redeemed_card
    from payouts.transitions import mark_sent, move

    user = make_user()
    cash = account(AccountKind.USER_CASH, "user", user.id)
    post_entry("fund", "rebate", [Leg(account(AccountKind.PLATFORM_MARKETING_FUND), -5_00), Leg(cash, 5_00)])
    payout = enqueue_payout(
        rail="card_coupon", user_id=user.id, amount_fen=5_00, source=cash, key="k", memo="m", number_prefix="T"
    )
    db.session.flush()
    move(payout, "sending")
    payout.request = {"card_id": "pCARD"}
    mark_sent(payout, utcnow())
    move(payout, "needs_operator")
    payout.last_error = "ANSWER_MISMATCH: answer disagrees: openid 'o-someone-else'"
    db.session.commit()
    # when: the card is redeemed (proof it was delivered)
    assert settle_redeemed_card(payout.external_no, utcnow()) is not None
    db.session.commit()
    # then: the person sees it arrived, with no operator text as its "reason"
    [mine] = client.get("/api/v1/me/payouts", headers=user_headers(user)).json["items"]
    assert mine["status"] == "succeeded" and "reason" not in mine
    assert db.session.get(Payout, payout.id).last_error is None
