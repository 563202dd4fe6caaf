"""A merchant pays its billed service fees (issue 16): recorded by one operator, approved by another.

A fee payment is the platform's own income (not a merchant's money held for it), so it is taken in both fund
flows; it is never more than what the invoices billed and the merchant has not paid (checked when proposed,
and again under a lock when approved: two approvals never pay one invoice twice); it posts once
(``feepay:<merchant>:proposal:<id>``) and shows in the invoices list and as the statement's ``fees_paid``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from jobs.invoices import invoice_fees
from ledger import account, balance, check_ledger
from models import AccountKind, AuditLog, DepositProposal, LedgerEntry, db
from tests.test_fees import after_month, give_credit
from tests.test_worked_examples import buy


def fees_due(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_FEES_DUE, "merchant", merchant_id))


def pay_fees(client, headers, merchant_id: int, amount_fen, key: str = "k1", reason="bank transfer 2026-12-01"):
    return client.post(
        f"/admin/api/merchants/{merchant_id}/fee-payments",
        json={"amount_fen": amount_fen, "reason": reason},
        headers={**headers, "Idempotency-Key": key},
    )


def decide(client, headers, proposal_id: int, verb: str = "approve"):
    return client.post(
        f"/admin/api/deposit-proposals/{proposal_id}/{verb}",
        json={"reason": "seen on the bank statement"},
        headers=headers,
    )


def payments_posted() -> int:
    return db.session.execute(select(func.count()).where(LedgerEntry.idempotency_key.like("feepay:%"))).scalar_one()


@pytest.fixture
def invoiced(app, make_user, make_merchant, make_product, pay):
    """A merchant invoiced 4 yuan of fees for last month, 2.50 paid by credit: 1.50 due."""
    app.config["PLATFORM_FEE_BPS"] = 200
    shop = make_merchant()
    for _ in range(2):
        pay(buy(make_user(), make_product(shop, price_fen=100_00)))
    give_credit(shop.id, 2_50)
    month, later = after_month()
    assert invoice_fees(later, month) == {"invoiced": 1}
    assert fees_due(shop.id) == -1_50
    return shop.id, month


def test_a_fee_payment_posts_once_when_a_second_operator_approves(client, make_operator, invoiced):
    shop_id, month = invoiced
    finance, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    # when: finance records 1 yuan the merchant paid
    proposed = pay_fees(client, finance_h, shop_id, 1_00)
    # then: pending, nothing moved
    assert proposed.status_code == 201, proposed.json
    assert (proposed.json["status"], proposed.json["purpose"]) == ("pending", "fees")
    assert fees_due(shop_id) == -1_50 and payments_posted() == 0
    pid = proposed.json["id"]
    # the proposer cannot approve it
    own = decide(client, finance_h, pid)
    assert (own.status_code, own.json["error"]) == (409, "second_operator_required")
    assert payments_posted() == 0
    # when: an admin approves, then approves again
    approved = decide(client, admin_h, pid)
    again = decide(client, admin_h, pid)
    # then: posted once: the platform's account received it, the merchant owes 0.50
    assert approved.status_code == 200, approved.json
    assert (approved.json["status"], approved.json["billed_unpaid_fen"]) == ("approved", 50)
    assert (again.status_code, again.json["error"]) == (409, "proposal_decided")
    assert payments_posted() == 1 and fees_due(shop_id) == -50
    assert f"feepay:{shop_id}:proposal:{pid}" in set(db.session.execute(select(LedgerEntry.idempotency_key)).scalars())
    # the invoices list and the proposals list say so
    listed = client.get(f"/admin/api/merchants/{shop_id}/fee-invoices", headers=admin_h).json
    assert (listed["fees_paid_fen"], listed["billed_unpaid_fen"]) == (1_00, 50)
    fees_only = client.get("/admin/api/deposit-proposals?purpose=fees", headers=admin_h).json["items"]
    assert [p["id"] for p in fees_only] == [pid]
    assert client.get("/admin/api/deposit-proposals?purpose=deposit", headers=admin_h).json["items"] == []
    actions = [a for (a,) in db.session.execute(select(AuditLog.action).order_by(AuditLog.id))]
    assert actions[-2:] == ["merchant.fee_payment_propose", "merchant.fee_payment"]
    assert check_ledger().ok


def test_the_statement_shows_the_payment_in_the_month_it_was_booked(client, make_operator, invoiced):
    from models import utcnow
    from rebate.fees import month_of

    shop_id, _ = invoiced
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    pid = pay_fees(client, finance_h, shop_id, 1_50).json["id"]
    assert decide(client, admin_h, pid).status_code == 200
    s = client.get(f"/admin/api/merchants/{shop_id}/statement?month={month_of(utcnow())}", headers=admin_h).json
    paid = next(f for f in s["figures"] if f["name"] == "fees_paid")
    assert paid["fen"] == 1_50 and paid["postings"] == 1
    assert all(a["reconciles"] for a in s["accounts"])
    assert s["in_flight"]["fees_billed_unpaid"]["fen"] == 0
    assert fees_due(shop_id) == 0


def test_a_payment_above_what_is_billed_and_unpaid_is_refused_and_moves_nothing(client, make_operator, invoiced):
    shop_id, _ = invoiced
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    # proposed above the 1.50 unpaid: refused at once
    over = pay_fees(client, finance_h, shop_id, 1_51)
    assert (over.status_code, over.json["error"]) == (409, "fee_payment_exceeds_billed")
    assert db.session.execute(select(func.count()).select_from(DepositProposal)).scalar_one() == 0
    # two proposals of 1 yuan each fit alone; approving both would pay more than billed: the second is refused
    first = pay_fees(client, finance_h, shop_id, 1_00, key="a").json["id"]
    second = pay_fees(client, finance_h, shop_id, 1_00, key="b").json["id"]
    assert decide(client, admin_h, first).status_code == 200
    refused = decide(client, admin_h, second)
    assert (refused.status_code, refused.json["error"]) == (409, "fee_payment_exceeds_billed")
    db.session.rollback()
    assert db.session.get(DepositProposal, second).status == "pending"  # it can still be rejected
    assert payments_posted() == 1 and fees_due(shop_id) == -50
    assert decide(client, admin_h, second, "reject").status_code == 200
    last = db.session.execute(select(AuditLog.action).order_by(AuditLog.id.desc()).limit(1)).scalar_one()
    assert last == "merchant.fee_payment_reject"


def test_fees_refunds_gave_back_after_billing_are_not_owed_and_cannot_be_paid(
    app, client, monkeypatch, make_operator, make_user, make_merchant, make_product, pay
):
    from rebate.fees import billed_unpaid, carried_forward
    from tests.test_fees import book_in, invoice_at, refund

    # given: January's 2 yuan of fees invoiced (all due), then the order refunded in full in February: February
    # is invoiced at 0 and the 2 yuan are carried: the merchant owes nothing
    app.config["PLATFORM_FEE_BPS"] = 200
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    shop = make_merchant()
    book_in(monkeypatch, "2025-01")
    order = buy(make_user(), make_product(shop, price_fen=100_00))
    pay(order)
    invoice_at(monkeypatch, "2025-01")
    book_in(monkeypatch, "2025-02")
    refund(db.session.merge(order), "R-1", 100_00)
    invoice_at(monkeypatch, "2025-02")
    assert fees_due(shop.id) == 0 and carried_forward(shop.id, "2025-02") == 2_00
    # then: nothing is billed and unpaid, and a payment is refused with nothing recorded
    assert billed_unpaid(shop.id) == 0
    refused = pay_fees(client, finance_h, shop.id, 2_00)
    assert (refused.status_code, refused.json["error"]) == (409, "fee_payment_exceeds_billed")
    listed = client.get(f"/admin/api/merchants/{shop.id}/fee-invoices", headers=admin_h).json
    assert listed["billed_unpaid_fen"] == 0
    assert fees_due(shop.id) == 0 and payments_posted() == 0
    assert check_ledger().ok


def test_a_payment_proposed_before_a_refund_cannot_be_approved_after_it_for_fees_no_longer_owed(
    client, make_operator, invoiced
):
    shop_id, _ = invoiced
    _, finance_h = make_operator("finance")
    _, admin_h = make_operator("admin")
    pid = pay_fees(client, finance_h, shop_id, 1_50).json["id"]
    # when: refunds give 1 yuan of the billed fees back before the approval
    from ledger import Leg, post_entry

    post_entry(
        "fee:refund:test",
        "a refund lowers the fee",
        [
            Leg(account(AccountKind.MERCHANT_FEES_DUE, "merchant", shop_id), 1_00),
            Leg(account(AccountKind.PLATFORM_FEE_INCOME), -1_00),
        ],
    )
    db.session.commit()
    refused = decide(client, admin_h, pid)
    assert (refused.status_code, refused.json["error"]) == (409, "fee_payment_exceeds_billed")
    assert payments_posted() == 0 and fees_due(shop_id) == -50


def test_nothing_billed_nothing_to_pay(client, make_operator, make_merchant):
    _, finance_h = make_operator("finance")
    shop = make_merchant()
    refused = pay_fees(client, finance_h, shop.id, 1)
    assert (refused.status_code, refused.json["error"]) == (409, "fee_payment_exceeds_billed")


@pytest.mark.parametrize(
    "amount, reason",
    [(0, "x"), (-1_00, "x"), ("100", "x"), (1.5, "x"), (True, "x"), (None, "x"), (1_00, ""), (1_00, None)],
)
def test_bad_fee_payments_are_refused_and_record_nothing(client, make_operator, invoiced, amount, reason):
    shop_id, _ = invoiced
    _, finance_h = make_operator("finance")
    bad = pay_fees(client, finance_h, shop_id, amount, reason=reason)
    assert bad.status_code in (400, 422), bad.json
    assert db.session.execute(select(func.count()).select_from(DepositProposal)).scalar_one() == 0


def test_merchant_staff_cannot_record_payments_and_another_merchant_is_not_found(
    client, make_operator, make_merchant, invoiced
):
    shop_id, _ = invoiced
    _, staff_h = make_operator("merchant_staff")
    assert pay_fees(client, staff_h, shop_id, 1_00).status_code in (403, 404)
    _, finance_h = make_operator("finance")
    assert pay_fees(client, finance_h, 987_654, 1_00).status_code == 404
    assert db.session.execute(select(func.count()).select_from(DepositProposal)).scalar_one() == 0


def test_two_approvals_at_once_never_pay_more_than_billed(app, make_operator, invoiced):
    from models import Operator
    from models.operators import Actor
    from rebate import deposit_ops
    from rebate.errors import StateConflict
    from tests.concurrency import together

    shop_id, _ = invoiced
    finance, _ = make_operator("finance")
    approvers = [make_operator("admin")[0].id for _ in range(2)]
    ids = [
        deposit_ops.propose_top_up(Actor(finance), shop_id, 1_00, f"paid {i}", "direct", purpose="fees").id
        for i in range(2)
    ]
    db.session.commit()

    def approve(i: int):
        actor = Actor(db.session.get(Operator, approvers[i]))
        return deposit_ops.approve_top_up(actor, ids[i], "checked", "direct")[1]

    results = together(2, approve, app=app)
    refused = [r for r in results if isinstance(r, StateConflict)]
    assert len(refused) == 1 and refused[0].code == "fee_payment_exceeds_billed", results
    assert payments_posted() == 1 and fees_due(shop_id) == -50


class TestServiceProviderMode:
    @pytest.fixture
    def app_settings(self, app_settings):
        return {**app_settings, "FUND_FLOW": "service_provider"}

    def test_fees_are_paid_while_deposits_are_refused(self, client, make_operator, invoiced):
        shop_id, _ = invoiced
        _, finance_h = make_operator("finance")
        _, admin_h = make_operator("admin")
        deposit = client.post(
            f"/admin/api/merchants/{shop_id}/deposit/top-ups",
            json={"amount_fen": 1_00, "reason": "bank transfer", "transfer_ref": "TR-0001"},
            headers={**finance_h, "Idempotency-Key": "d"},
        )
        assert (deposit.status_code, deposit.json["error"]) == (409, "deposits_not_in_service_provider_mode")
        pid = pay_fees(client, finance_h, shop_id, 1_50).json["id"]
        assert decide(client, admin_h, pid).status_code == 200
        assert fees_due(shop_id) == 0
