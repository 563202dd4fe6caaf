"""Probe 19: WeChat's payment and refund notifications delivered in any order, replayed and contradicted.

A seeded walk delivers, through the callback URLs, the order's payment notification (again and again), refunds we
begin, and REFUND.SUCCESS / ABNORMAL / CLOSED for refunds of ours and refunds begun elsewhere, in random order
and amounts. After every step: the order's refunded amount is exactly what its succeeded refunds add up to, its
payouts are held exactly while a refund is open, and the ledger passes its check. Checked and found sound: it pins
that, so it stays so.
"""

from __future__ import annotations

import random

import pytest
from sqlalchemy import func, select

from ledger import check_ledger
from models import Order, Payout, PayoutStatus, Refund, RefundStatus, db, utcnow
from models.orders import OPEN_REFUNDS
from rebate import begin_refund, create_order, issue_packet
from rebate.errors import RebateError
from rebate.orders import LineRequest
from tests.test_wechat_callbacks import (  # noqa: F401 (no_network is a fixture)
    deliver,
    deliver_refund,
    no_network,
    refund_resource,
    transaction_resource,
)

CHANGE = {
    "roles": [
        {"role": "consumer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 50_00},
        {"role": "inviter", "rate_bps": 500, "form": "balance", "cap_fen": 50_00},
    ]
}


def scalar(stmt) -> int:
    return int(db.session.execute(stmt).scalar_one())


def check(order_id: int, point_value_fen: int, log: list) -> None:
    db.session.rollback()
    order = db.session.get(Order, order_id)
    of_order = Refund.order_id == order_id
    succeeded = select(func.coalesce(func.sum(Refund.amount_fen), 0)).where(
        of_order, Refund.status == RefundStatus.SUCCEEDED
    )
    assert order.refunded_fen == scalar(succeeded), log
    open_refunds = scalar(select(func.count()).select_from(Refund).where(of_order, Refund.status.in_(OPEN_REFUNDS)))
    waiting = (Payout.order_id == order_id, Payout.status == PayoutStatus.PENDING)
    held = scalar(select(func.count()).select_from(Payout).where(*waiting, Payout.held.is_(True)))
    free = scalar(select(func.count()).select_from(Payout).where(*waiting, Payout.held.is_(False)))
    assert (free if open_refunds else held) == 0, log
    report = check_ledger(point_value_fen)
    assert report.ok, (report.violations, log)
    db.session.rollback()


@pytest.mark.parametrize("seed", range(4))
def test_notifications_in_any_order_keep_the_refunds_the_holds_and_the_ledger_in_step(
    app, client, make_user, make_product, make_campaign, no_network, seed
):
    # given: an invited buyer's order with a packet; the consumer earns a change transfer, the inviter balance
    rng = random.Random(seed)
    campaign = make_campaign(
        CHANGE, packet_amount_fen=5_00, budget_limit_fen=1_000_00, restore_packet_on_refund=rng.choice([True, False])
    )
    buyer = make_user(appid=app.config["WECHAT_APPID"], inviter=make_user())
    packet = issue_packet(campaign, buyer, source="t", source_ref="walk", now=utcnow())
    db.session.commit()
    product = make_product(price_fen=rng.choice([100_00, 100_01, 60_00]))
    order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
    db.session.commit()
    order_id, payment = order.id, transaction_resource(app, order)
    numbers = [f"R{seed}W{i}" for i in range(4)]
    amounts = {
        n: rng.choice([1, order.payable_fen // 3 or 1, order.payable_fen // 2 or 1, order.payable_fen]) for n in numbers
    }
    log: list = []

    # when / then: 25 steps in a random order, each checked
    for _ in range(25):
        step, number = rng.choice(["pay", "begin", "notice", "notice"]), rng.choice(numbers)
        if step == "pay":
            log.append(("pay", deliver(client, app, payment).status_code))
        elif step == "begin":
            try:
                begin_refund(db.session.get(Order, order_id), number, amounts[number])
                db.session.commit()
                log.append(("begin", number, amounts[number]))
            except RebateError as refused:
                db.session.rollback()
                log.append(("begin", number, amounts[number], refused.code))
        else:
            status = rng.choice(["SUCCESS", "SUCCESS", "ABNORMAL", "CLOSED"])
            resource = refund_resource(app, db.session.get(Order, order_id), number, amounts[number], status=status)
            resource.update(transaction_id=payment["transaction_id"], refund_id=f"WX{number}")
            answer = deliver_refund(client, app, resource, event=f"REFUND.{status}")
            log.append(("notice", number, status, amounts[number], answer.status_code))
            assert answer.status_code in (204, 400, 404, 409), log
        check(order_id, app.config["POINT_VALUE_FEN"], log)
