"""Probe 18: the order and ledger jobs tried from outside (two job nodes at once, answers WeChat rarely gives)."""

from __future__ import annotations

from datetime import timedelta

import jobs.orders as order_jobs
from jobs.orders import query_stuck_refunds
from models import Order, Refund, db, utcnow
from rebate import begin_refund
from tests.test_order_jobs import alice, guarded_pay, new_order, paid  # noqa: F401 - fixtures
from tests.test_simulator_e2e import app_settings, delivered  # noqa: F401 - fixture
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture
from wechat.errors import WeChatBusinessError


def stuck_refund(order: Order, number: str, amount_fen: int) -> Refund:
    refund = begin_refund(order, number, amount_fen)
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    return refund


def test_a_refund_the_other_node_failed_meanwhile_is_never_sent_again(app, paid, monkeypatch):
    # given: a refund that never reached WeChat, claimed by two job nodes in the same batch (each claim's row lock
    # ends with its claim); the first node sends it and WeChat refuses it for good: failed, its hold released
    refund = stuck_refund(paid, "R-P18-TWICE", 1_000)
    pay = app.extensions["wechat"].pay
    send = pay.refund
    sent = []

    def refused_once(*args, **kwargs):
        sent.append(args[1])
        if len(sent) == 1:
            raise WeChatBusinessError("NO_AUTH (refused by the test)", code="NO_AUTH", retryable=False)
        return send(*args, **kwargs)

    monkeypatch.setattr(pay, "refund", refused_once)
    assert query_stuck_refunds() == {"failed": 1}
    # when: the second node reaches the same refund in its batch, claimed before the first node failed it
    monkeypatch.setattr(order_jobs, "claim_ids", lambda _stmt: [refund.id])
    second = query_stuck_refunds()
    # then: a refund the books hold failed is never sent to WeChat again (WeChat now taking it had refunded money the
    # books say was not, and which an operator may refund again under another number: refunded twice)
    db.session.rollback()
    assert sent == ["R-P18-TWICE"]
    assert "R-P18-TWICE" not in simulator(app).refunds
    assert second == {"skipped": 1}
    assert db.session.get(Refund, refund.id).status == "failed"
    assert db.session.get(Order, paid.id).refunded_fen == 0
