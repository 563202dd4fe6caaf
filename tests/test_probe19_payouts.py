"""Probe of the payouts (round 19): what a fallback or a retry row keeps of the payout it replaces, the rails' answers
at their limits, and the transfer callbacks against payouts in every state."""

from __future__ import annotations

import uuid

from jobs.payouts import dispatch_due
from models import Payout, db, utcnow
from payouts import MoneySettings
from payouts.rails import Outcome, RailResult
from payouts.record import DispatchSettings

ADMIN = "/admin/api/payouts"


def settings(**kw) -> DispatchSettings:
    return DispatchSettings(money=MoneySettings(), **kw)


def fresh(payout_id: int) -> Payout:
    db.session.expire_all()
    return db.session.get(Payout, payout_id)


def manual(client, headers, user, amount_fen, rail="wechat_change"):
    body = {"user_id": user.id, "amount_fen": amount_fen, "rail": rail, "reason": "goodwill for a late delivery"}
    return client.post(ADMIN, json=body, headers={"Idempotency-Key": uuid.uuid4().hex, **headers})


class FallsBack:
    """A red packet rail that cannot carry the payout (no official-account openid, amount above 200 yuan)."""

    name, rate_per_second = "cash_red_packet", 100

    def build_request(self, payout, now):
        return RailResult(Outcome.FALLBACK, "NO_OA_OPENID", "the user has no official-account openid")

    def send(self, no, request):  # pragma: no cover - never reached
        raise AssertionError("a payout that falls back is never sent")

    query = send


# -- a manual payout that falls back to another rail ------------------------------------------------------------------


def test_a_manual_red_packet_that_falls_back_still_counts_towards_the_second_operators_limit(
    app, client, make_user, make_operator
):
    # given: approval from 10 yuan; an operator pays a person 9.99 yuan as a red packet, which the red packet rail
    # cannot carry (no official-account openid): the dispatcher cancels it and queues a change transfer instead
    app.config["MANUAL_PAYOUT_APPROVAL_FEN"] = 1_000
    operator, headers = make_operator("admin")
    user = make_user(appid=app.config["WECHAT_APPID"])
    first = manual(client, headers, user, 999, rail="cash_red_packet").json
    assert first["status"] == "pending"
    dispatch_due({"cash_red_packet": FallsBack()}, settings=settings(), clock=utcnow)
    retry = db.session.query(Payout).filter_by(retry_of_id=first["id"]).one()
    assert (fresh(first["id"]).status, retry.rail, retry.status) == ("cancelled", "wechat_change", "pending")
    # then: the change transfer is the operator's manual payout still (who asked for it), and the next 9.99 yuan
    # to the same person in the day waits for a second operator, as it would had the red packet gone out
    assert retry.created_by_operator_id == operator.id
    second = manual(client, headers, user, 999).json
    assert (second["status"], second["awaiting_approval"]) == ("needs_operator", True)


class FailsOnce:
    """A transfer rail on which the first number definitively fails (WeChat's FAIL) and the next is offered."""

    name, rate_per_second = "wechat_change", 100

    def __init__(self):
        self.answers = [RailResult(Outcome.FAILED, "FAIL", "the bill failed")]

    def build_request(self, payout, now):
        return {"amount_fen": payout.amount_fen, "openid": f"openid-{payout.user_id}", "wire": {"body": "{}"}}

    def send(self, no, request):
        return self.answers.pop(0) if self.answers else RailResult(Outcome.IN_PROGRESS, "ACCEPTED")

    def query(self, no, request):  # pragma: no cover - not asked here
        return RailResult(Outcome.IN_PROGRESS, "ACCEPTED")


def test_a_manual_payout_sent_again_under_a_new_number_counts_once_towards_the_limit(
    app, client, make_user, make_operator
):
    # given: approval from 10 yuan; 6 yuan paid by an operator, whose bill failed and went again as a new row
    app.config["MANUAL_PAYOUT_APPROVAL_FEN"] = 1_000
    operator, headers = make_operator("admin")
    user = make_user(appid=app.config["WECHAT_APPID"])
    first = manual(client, headers, user, 600).json
    dispatch_due({"wechat_change": FailsOnce()}, settings=settings(), clock=utcnow)
    retry = db.session.query(Payout).filter_by(retry_of_id=first["id"]).one()
    assert (fresh(first["id"]).status, retry.created_by_operator_id) == ("failed", operator.id)
    # then: 6 yuan left (once), so 3 yuan more is under the limit, and 4.01 yuan more reaches it
    assert manual(client, headers, user, 300).json["status"] == "pending"
    assert manual(client, headers, user, 101).json["status"] == "needs_operator"


# -- a manual payout below what WeChat can carry ----------------------------------------------------------------------


def test_a_manual_payout_below_wechats_smallest_transfer_is_refused_before_anything_is_written(
    app, client, make_user, make_operator
):
    # given: an operator pays a person 9 fen by change transfer (WeChat's smallest transfer is 10 fen)
    _, headers = make_operator("admin")
    user = make_user(appid=app.config["WECHAT_APPID"])
    # when
    response = manual(client, headers, user, 9)
    # then: refused at once (422), nothing queued; before, it was accepted (201) and the dispatcher cancelled it
    # unsent ("kept"), its money back in the platform fund: the operator was told it was on its way, the person
    # got nothing
    assert response.status_code == 422, response.json
    assert db.session.query(Payout).count() == 0
    assert manual(client, headers, user, 10).status_code == 201
