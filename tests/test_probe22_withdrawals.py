"""Probe 22, a merchant's deposit money going back and forth: withdrawals of unspent deposit money (four eyes), the
bank transfer's reference that keeps one transfer from being recorded twice, statements in Beijing time, and a
coupon taken back from its unsent payout counted as clawed back.

Found by the probe: a merchant could not get unspent deposit money back at all; two operators (or one with two
idempotency keys) could each record one bank transfer and both be approved; the statement said
``2031-03-31T16:30:00+00:00`` for a posting of Beijing April 1; and a coupon rebate a refund took back from its
still-pending payout (``payout:<id>:reduce:clawback:…``, back into the deposit) was counted in ``rebates_paid``
rather than ``rebates_clawed_back``.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from ledger import account, balance, check_ledger
from models import AccountKind, DepositProposal, LedgerEntry, LedgerPosting, db, utcnow
from rebate.fees import month_bounds, month_of
from tests.conftest import fund_deposit
from tests.test_deposit_reservations import merchant_campaign

SLIP = "CMB-20310401-0042"


def deposit(merchant_id: int) -> int:
    db.session.rollback()
    return balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id))


def reserved(merchant_id: int) -> int:
    from rebate.deposits import reserved_against

    db.session.rollback()
    return reserved_against(merchant_id)


def post(client, path: str, headers: dict, body: dict, key: str):
    return client.post(path, json=body, headers={**headers, "Idempotency-Key": key})


def propose(client, headers, merchant_id, amount_fen, ref, key, kind="top-ups"):
    body = {"amount_fen": amount_fen, "reason": "bank transfer", "transfer_ref": ref}
    return post(client, f"/admin/api/merchants/{merchant_id}/deposit/{kind}", headers, body, key)


def approve(client, headers, proposal_id):
    return client.post(
        f"/admin/api/deposit-proposals/{proposal_id}/approve", json={"reason": "slip seen"}, headers=headers
    )


def figures(client, headers, merchant_id, month) -> dict[str, int]:
    s = client.get(f"/admin/api/merchants/{merchant_id}/statement?month={month}", headers=headers).json
    assert all(a["reconciles"] for a in s["accounts"]), s["accounts"]
    return {f["name"]: f["fen"] for f in s["figures"]}


# --- 1. withdrawals ------------------------------------------------------------------------------------------------


def test_a_withdrawal_a_second_operator_approves_pays_unspent_money_back_once_and_shows_on_the_statement(
    client, make_operator, make_merchant
):
    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    fund_deposit(shop.id, 500_00)
    db.session.commit()

    asked = propose(client, finance, shop.id, 200_00, "WD-0001", "w1", kind="withdrawals")
    assert asked.status_code == 201, asked.json
    proposal = asked.json
    assert (proposal["purpose"], proposal["status"], proposal["transfer_ref"]) == ("withdrawal", "pending", "WD-0001")
    month = month_of(utcnow())
    s = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}", headers=admin).json
    assert s["in_flight"]["withdrawals_pending"]["fen"] == 200_00
    assert s["in_flight"]["withdrawals_pending"]["proposal_ids"] == [proposal["id"]]
    assert s["in_flight"]["deposit_proposals_pending"]["fen"] == 0  # a withdrawal is not a top-up
    assert deposit(shop.id) == 500_00  # proposing moves nothing

    own = approve(client, finance, proposal["id"])
    assert (own.status_code, own.json["error"]) == (409, "second_operator_required")
    done = approve(client, admin, proposal["id"])
    again = approve(client, admin, proposal["id"])

    assert done.status_code == 200, done.json
    assert (done.json["status"], done.json["deposit_fen"]) == ("approved", 300_00)
    assert (again.status_code, again.json["error"]) == (409, "proposal_decided")
    assert deposit(shop.id) == 300_00
    key = f"deposit-withdrawal:{shop.id}:proposal:{proposal['id']}"
    legs = db.session.execute(
        select(LedgerPosting.amount)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerEntry.idempotency_key == key)
        .order_by(LedgerPosting.amount)
    ).scalars()
    assert list(legs) == [-200_00, 200_00]  # the deposit down, wechat_settlement (paid out by transfer) up
    assert balance(account(AccountKind.WECHAT_SETTLEMENT)) == -300_00  # in 500, out 200
    assert check_ledger().ok

    f = figures(client, admin, shop.id, month)
    assert (f["deposit_top_ups"], f["deposit_withdrawals"]) == (500_00, -200_00)
    listed = client.get(
        f"/admin/api/merchants/{shop.id}/statement?month={month}&figure=deposit_withdrawals&entries=1", headers=admin
    ).json
    assert [p["key"] for p in listed["postings"]] == [key] and listed["total_fen"] == -200_00
    raw = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month}&format=csv", headers=admin)
    rows = list(csv.DictReader(io.StringIO(raw.data.decode("utf-8-sig"))))
    assert {r["name"]: r["amount_fen"] for r in rows if r["section"] == "figure"}["deposit_withdrawals"] == "-20000"
    listed = client.get(f"/admin/api/deposit-proposals?purpose=withdrawal&merchant_id={shop.id}", headers=admin).json
    assert [p["id"] for p in listed["items"]] == [proposal["id"]]


def test_a_withdrawal_of_money_promised_to_live_packets_is_409_and_changes_nothing(
    client, make_operator, make_merchant, make_user, make_campaign, user_headers
):
    # given: 30 yuan in the deposit, a live packet reserving 21 of it: 9 yuan free
    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    campaign = merchant_campaign(make_campaign, shop, 30_00)
    assert client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(make_user())).status_code == 201

    # when: 10 yuan are asked back: refused at once
    too_much = propose(client, finance, shop.id, 9_01, "WD-0002", "w1", kind="withdrawals")
    assert (too_much.status_code, too_much.json["error"]) == (409, "withdrawal_exceeds_available"), too_much.json

    # when: the 9 free yuan are asked back, and before the approval a packet of another campaign of the merchant is
    # claimed (50 fen off, a 1-yuan rebate: 1.50 more promised)
    fine = propose(client, finance, shop.id, 9_00, "WD-0003", "w2", kind="withdrawals")
    assert fine.status_code == 201, fine.json
    small = merchant_campaign(make_campaign, shop, 0, packet_amount_fen=50)
    assert client.post(f"/api/v1/campaigns/{small.id}/claim", headers=user_headers(make_user())).status_code == 201
    assert reserved(shop.id) == 22_50
    refused = approve(client, admin, fine.json["id"])

    # then: 409, the proposal still pending, the deposit and the ledger untouched
    assert (refused.status_code, refused.json["error"]) == (409, "withdrawal_exceeds_available"), refused.json
    assert "900 fen" in refused.json["message"] and "750 fen" in refused.json["message"], refused.json
    assert deposit(shop.id) == 30_00
    assert db.session.get(DepositProposal, fine.json["id"]).status == "pending"
    withdrawn = select(func.count()).where(LedgerEntry.idempotency_key.like("deposit-withdrawal:%"))
    assert db.session.execute(withdrawn).scalar_one() == 0
    assert check_ledger().ok

    # when: what is free now is asked back instead: it is paid, and the deposit still covers every promise
    reject = client.post(
        f"/admin/api/deposit-proposals/{fine.json['id']}/reject", json={"reason": "too much"}, headers=admin
    )
    assert reject.status_code == 200
    less = propose(client, finance, shop.id, 7_50, "WD-0004", "w3", kind="withdrawals")
    ok = approve(client, admin, less.json["id"])
    assert ok.status_code == 200 and ok.json["deposit_fen"] == 22_50 == reserved(shop.id)


def test_a_withdrawal_is_recorded_by_platform_finance_for_a_positive_amount(client, make_operator, make_merchant):
    shop = make_merchant()
    fund_deposit(shop.id, 10_00)
    db.session.commit()
    _, finance = make_operator("finance")
    # merchant staff never move money: a withdrawal is asked by the merchant outside and recorded by finance
    _, staff = make_operator("merchant_staff", merchant=shop)
    resp = propose(client, staff, shop.id, 1_00, "WD-0004", "w1", kind="withdrawals")
    assert resp.status_code == 403
    resp = propose(client, finance, shop.id, 0, "WD-0004", "w2", kind="withdrawals")
    assert resp.status_code == 422


@pytest.mark.parametrize("round_", range(3))
def test_a_withdrawal_approval_racing_a_claim_and_a_payment_never_takes_what_is_promised(
    app, client, make_operator, make_merchant, make_product, make_user, make_campaign, user_headers, round_
):
    from rebate import create_order
    from rebate.orders import LineRequest
    from tests.concurrency import together
    from tests.payment_helpers import pay_as_wechat

    # given: 50 yuan, Alice's live packet reserving 21 (20 off, a 1-yuan rebate) and her order spending it, unpaid;
    # a pending withdrawal of 20 of the 29 free yuan; Ben about to claim a packet needing 21
    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    product = make_product(shop, price_fen=100_00)
    campaign = merchant_campaign(make_campaign, shop, 50_00)
    alice, ben = make_user(), make_user()
    claimed = client.post(f"/api/v1/campaigns/{campaign.id}/claim", headers=user_headers(alice))
    assert claimed.status_code == 201, claimed.json
    order = create_order(alice, [LineRequest(product.id, 1)], claimed.json["id"], utcnow())
    db.session.commit()
    out_trade_no, payable = order.out_trade_no, order.payable_fen
    wd = propose(client, finance, shop.id, 20_00, f"WD-RACE-{round_}", "w", kind="withdrawals").json["id"]
    ben_headers = user_headers(ben)
    path, claim = f"/admin/api/deposit-proposals/{wd}/approve", f"/api/v1/campaigns/{campaign.id}/claim"

    def work(i: int):  # each its own request, or app context: its own session and connection
        if i == 0:
            resp = app.test_client().post(path, json={"reason": "slip seen"}, headers=admin)
            return ("withdrawal", resp.status_code, (resp.get_json() or {}).get("error"))
        if i == 1:
            resp = app.test_client().post(claim, headers=ben_headers)
            return ("claim", resp.status_code, (resp.get_json() or {}).get("error"))
        with app.app_context():  # as the paid notification applies it
            try:
                outcome = pay_as_wechat(out_trade_no, f"tx-{out_trade_no}", payable, utcnow())
                db.session.commit()
                return ("payment", str(outcome), None)
            finally:
                db.session.rollback()
                db.session.remove()

    # when: the approval, Ben's claim and Alice's paid notification at once
    results = together(3, work)

    # then: the payment applies; exactly one of the withdrawal and the claim fits, the other is 409; the deposit
    # always covers what is promised
    assert not any(isinstance(r, Exception) for r in results), results
    outcome = {r[0]: r[1:] for r in results}
    assert outcome["payment"][0] == "applied", results
    won = [name for name in ("withdrawal", "claim") if outcome[name][0] in (200, 201)]
    assert len(won) == 1, results
    lost = "claim" if won == ["withdrawal"] else "withdrawal"
    assert outcome[lost] == (409, "deposit_exhausted" if lost == "claim" else "withdrawal_exceeds_available"), results
    held, promised = deposit(shop.id), reserved(shop.id)
    assert held >= promised >= 0, (held, promised)
    assert (held, promised) == ((9_00, 0) if won == ["withdrawal"] else (29_00, 21_00)), results
    assert check_ledger().ok


# --- 2. one bank transfer, recorded once ----------------------------------------------------------------------------


def test_one_bank_transfer_recorded_twice_is_409_and_free_again_once_rejected(client, make_operator, make_merchant):
    shop, other = make_merchant(), make_merchant()
    _, finance = make_operator("finance")
    _, finance2 = make_operator("finance")
    _, admin = make_operator("admin")
    fund_deposit(shop.id, 1_00)
    db.session.commit()

    first = propose(client, finance, shop.id, 300_00, SLIP, "k1")
    twice = propose(client, finance, shop.id, 300_00, SLIP, "k2")  # one operator, another key
    again = propose(client, finance2, shop.id, 300_00, f"  {SLIP.lower()} ", "k3")  # another operator, other case

    assert first.status_code == 201 and first.json["transfer_ref"] == SLIP, first.json
    assert (twice.status_code, twice.json["error"]) == (409, "transfer_ref_used"), twice.json
    assert (again.status_code, again.json["error"]) == (409, "transfer_ref_used"), again.json
    assert f"proposal {first.json['id']}" in twice.json["message"]
    # the same reference for another merchant, or for a withdrawal of this one: another transfer
    assert propose(client, finance, other.id, 300_00, SLIP, "k4").status_code == 201
    assert propose(client, finance, shop.id, 1_00, SLIP, "k5", kind="withdrawals").status_code == 201
    rows = db.session.execute(select(DepositProposal).filter_by(merchant_id=shop.id, purpose="deposit")).scalars()
    assert len(rows.all()) == 1

    # when: the first is rejected (recorded by mistake): its transfer_ref may be recorded again, and approved once
    rejected = client.post(
        f"/admin/api/deposit-proposals/{first.json['id']}/reject", json={"reason": "wrong"}, headers=admin
    )
    assert rejected.status_code == 200
    redo = propose(client, finance, shop.id, 300_00, SLIP, "k6")
    assert redo.status_code == 201, redo.json
    assert approve(client, admin, redo.json["id"]).status_code == 200
    assert propose(client, finance2, shop.id, 300_00, SLIP, "k7").status_code == 409
    assert deposit(shop.id) == 301_00


@pytest.mark.parametrize(
    "ref",
    [None, "", "ab", "x" * 65, "CMB 0042", "转账0042", "0042;drop", "=1+1", "-0042", "a\tb"],
)
def test_a_top_up_or_withdrawal_without_a_good_transfer_reference_is_422(client, make_operator, make_merchant, ref):
    shop = make_merchant()
    _, finance = make_operator("finance")
    fund_deposit(shop.id, 10_00)
    db.session.commit()
    for kind in ("top-ups", "withdrawals"):
        body = {"amount_fen": 1_00, "reason": "bank transfer"}
        if ref is not None:
            body["transfer_ref"] = ref
        resp = post(client, f"/admin/api/merchants/{shop.id}/deposit/{kind}", finance, body, f"k-{kind}")
        assert resp.status_code == 422, (kind, resp.json)
        assert "transfer_ref" in str(resp.json), resp.json
    assert db.session.execute(select(func.count()).select_from(DepositProposal)).scalar_one() == 0


def test_a_good_reference_of_letters_digits_and_separators_is_kept_in_capitals(client, make_operator, make_merchant):
    shop = make_merchant()
    _, finance = make_operator("finance")
    resp = propose(client, finance, shop.id, 1_00, "icbc/2031.04_01-9", "k1")
    assert resp.status_code == 201 and resp.json["transfer_ref"] == "ICBC/2031.04_01-9"
    fee = post(
        client,
        f"/admin/api/merchants/{shop.id}/fee-payments",
        finance,
        {"amount_fen": 1_00, "reason": "paid", "transfer_ref": "bad ref"},
        "k2",
    )
    assert fee.status_code == 422  # a fee payment may name its transfer too (optional), checked the same way


def test_two_operators_recording_one_transfer_at_once_record_it_once(app, make_operator, make_merchant):
    from tests.concurrency import post_together

    shop = make_merchant()
    _, finance = make_operator("finance")
    _, finance2 = make_operator("finance")
    path = f"/admin/api/merchants/{shop.id}/deposit/top-ups"
    body = {"amount_fen": 300_00, "reason": "bank transfer", "transfer_ref": SLIP}

    results = post_together(
        app,
        [
            (path, {**finance, "Idempotency-Key": "a"}, body),
            (path, {**finance2, "Idempotency-Key": "b"}, body),
            (path, {**finance, "Idempotency-Key": "c"}, body),
        ],
    )

    assert sorted(results) == [(201, None), (409, "transfer_ref_used"), (409, "transfer_ref_used")], results
    db.session.rollback()
    assert db.session.execute(select(func.count()).select_from(DepositProposal)).scalar_one() == 1


def test_the_database_holds_one_live_proposal_per_transfer(make_operator, make_merchant):
    from sqlalchemy.exc import IntegrityError

    shop = make_merchant()
    finance, _ = make_operator("finance")

    def row(status: str, purpose: str = "deposit") -> DepositProposal:
        return DepositProposal(
            merchant_id=shop.id,
            amount_fen=1_00,
            purpose=purpose,
            reason="x",
            status=status,
            proposed_by=finance.id,
            transfer_ref=SLIP,
        )

    db.session.add_all([row("rejected"), row("rejected"), row("approved"), row("pending", "withdrawal")])
    db.session.commit()
    db.session.add(row("pending"))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


# --- 3. statements in Beijing time ----------------------------------------------------------------------------------


def test_the_statement_shows_its_bounds_and_postings_in_beijing_time(
    app, client, monkeypatch, make_operator, make_merchant
):
    from rebate.deposits import top_up

    shop = make_merchant()
    _, admin = make_operator("admin")
    when = datetime(2031, 3, 31, 16, 30, tzinfo=UTC)  # 2031-04-01 00:30 in Beijing
    monkeypatch.setattr("ledger.posting.utcnow", lambda: when)
    top_up(shop.id, 1_00, "april", "top-up")
    db.session.commit()

    s = client.get(f"/admin/api/merchants/{shop.id}/statement?month=2031-04", headers=admin).json
    assert (s["from"], s["to"]) == ("2031-04-01T00:00:00+08:00", "2031-05-01T00:00:00+08:00")
    assert datetime.fromisoformat(s["from"]) == month_bounds("2031-04")[0]  # the same instant
    listed = client.get(
        f"/admin/api/merchants/{shop.id}/statement?month=2031-04&figure=deposit_top_ups&entries=1", headers=admin
    ).json
    assert [p["booked_at"] for p in listed["postings"]] == ["2031-04-01T00:30:00+08:00"]
    raw = client.get(
        f"/admin/api/merchants/{shop.id}/statement?month=2031-04&figure=deposit_top_ups&entries=1&format=csv",
        headers=admin,
    )
    rows = list(csv.DictReader(io.StringIO(raw.data.decode("utf-8-sig"))))
    assert [r["booked_at"] for r in rows if r["posting_id"] != "total"] == ["2031-04-01T00:30:00+08:00"]
    whole = client.get(f"/admin/api/merchants/{shop.id}/statement?month=2031-04&format=csv", headers=admin)
    cells = whole.data.decode("utf-8-sig")
    assert "2031-04-01T00:00:00+08:00" in cells and "2031-05-01T00:00:00+08:00" in cells  # the CSV says its month
    assert "+00:00" not in cells


# --- 4. a coupon taken back before it was sent is clawed back, not "paid less returns" -----------------------------


def test_a_coupon_taken_back_from_its_unsent_payout_counts_as_clawed_back(
    client, make_operator, make_merchant, make_product, make_user, make_campaign, pay
):
    from models import Payout
    from rebate import issue_packet
    from tests.test_fees import refund
    from tests.test_worked_examples import buy

    shop = make_merchant()
    _, admin = make_operator("admin")
    coupon = {"roles": [{"role": "consumer", "rate_bps": 1000, "form": "wechat_coupon", "cap_fen": 50_00}]}
    campaign = make_campaign(
        coupon,
        fund_deposit_fen=500_00,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=400_00,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
    )
    buyer = make_user()
    packet = issue_packet(campaign, buyer, source="t", source_ref="c", now=utcnow())
    db.session.commit()
    order = buy(buyer, make_product(shop, price_fen=100_00), packet=packet)
    assert pay(order) == "applied"
    [payout] = db.session.execute(select(Payout)).scalars().all()
    assert (payout.status, payout.amount_fen) == ("pending", 9_00)  # 10 % of the 90 yuan paid, not yet sent

    # when: half the order is refunded: half the coupon is taken back from its unsent payout, into the deposit
    refund(order, "R-1", 45_00)

    db.session.rollback()
    keys = db.session.execute(
        select(LedgerEntry.idempotency_key).where(LedgerEntry.idempotency_key.like(f"payout:{payout.id}:reduce:%"))
    ).scalars()
    assert list(keys)
    f = figures(client, admin, shop.id, month_of(utcnow()))
    # then: the 9-yuan coupon is paid, and what came back from it is clawed back (not netted into "paid")
    assert (f["rebates_paid"], f["rebates_clawed_back"]) == (-9_00, 4_50), f
    s = client.get(f"/admin/api/merchants/{shop.id}/statement?month={month_of(utcnow())}", headers=admin).json
    assert (s["summary"]["rebates_paid"]["fen"], s["summary"]["rebates_clawed_back"]["fen"]) == (-9_00, 4_50)
    assert check_ledger().ok


def test_statement_bounds_beijing_hold_across_a_month_with_a_withdrawal_after_midnight(
    app, client, monkeypatch, make_operator, make_merchant
):
    """A withdrawal approved at 00:10 Beijing on May 1 (16:10 UTC, April 30) is May's, and says so."""
    shop = make_merchant()
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    fund_deposit(shop.id, 10_00)
    db.session.commit()
    wd = propose(client, finance, shop.id, 4_00, "WD-MAY", "w", kind="withdrawals").json["id"]
    monkeypatch.setattr("ledger.posting.utcnow", lambda: month_bounds("2031-05")[0] + timedelta(minutes=10))
    assert approve(client, admin, wd).status_code == 200
    listed = client.get(
        f"/admin/api/merchants/{shop.id}/statement?month=2031-05&figure=deposit_withdrawals&entries=1", headers=admin
    ).json
    assert [(p["booked_at"], p["amount_fen"]) for p in listed["postings"]] == [("2031-05-01T00:10:00+08:00", -4_00)]
    assert figures(client, admin, shop.id, "2031-04")["deposit_withdrawals"] == 0


# -- what may leave, and what the second operator sees ------------------------------------------------------------


def test_marketing_credit_spent_into_the_deposit_never_leaves_as_a_withdrawal(client, make_operator, make_merchant):
    from tests.test_fees import give_credit

    # given: a merchant that never paid in, 80.00 of marketing credit spent into its deposit
    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    shop = make_merchant()
    give_credit(shop.id, 80_00)
    spent = client.post(
        f"/admin/api/merchants/{shop.id}/credit/spends",
        json={"amount_fen": 80_00, "reason": "promo"},
        headers={**finance, "Idempotency-Key": "s"},
    )
    assert spent.status_code in (200, 201), spent.json

    # when: a withdrawal of it is proposed
    proposed = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/withdrawals",
        json={"amount_fen": 80_00, "reason": "give it back", "transfer_ref": "WD-0002"},
        headers={**finance, "Idempotency-Key": "w"},
    )

    # then: refused, nothing moved
    assert proposed.status_code == 409, proposed.json
    assert proposed.json["error"] == "withdrawal_exceeds_paid_in"
    db.session.rollback()
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)) == 80_00

    # when: it paid 30.00 in too: at most that leaves, and approved once
    fund_deposit(shop.id, 30_00)
    db.session.commit()
    over = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/withdrawals",
        json={"amount_fen": 30_01, "reason": "give it back", "transfer_ref": "WD-0003"},
        headers={**finance, "Idempotency-Key": "w2"},
    )
    assert over.status_code == 409 and over.json["error"] == "withdrawal_exceeds_paid_in", over.json
    ok = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/withdrawals",
        json={"amount_fen": 30_00, "reason": "give it back", "transfer_ref": "WD-0004"},
        headers={**finance, "Idempotency-Key": "w3"},
    )
    assert ok.status_code == 201, ok.json
    done = client.post(f"/admin/api/deposit-proposals/{ok.json['id']}/approve", json={"reason": "slip"}, headers=admin)
    assert done.status_code == 200, done.json
    db.session.rollback()
    assert balance(account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id)) == 80_00


def test_the_console_shows_a_pending_withdrawal_as_money_out_with_its_transfer(client, make_operator, make_merchant):
    from tests.console_helpers import sign_in

    _, finance = make_operator("finance")
    _, admin = make_operator("admin")
    shop = make_merchant()
    fund_deposit(shop.id, 100_00)
    db.session.commit()
    made = client.post(
        f"/admin/api/merchants/{shop.id}/deposit/withdrawals",
        json={"amount_fen": 50_00, "reason": "give it back", "transfer_ref": "WD-0001"},
        headers={**finance, "Idempotency-Key": "k"},
    ).json
    sign_in(client, admin)
    html = client.get(f"/console/statements?merchant_id={shop.id}&month=2026-01").get_data(as_text=True)
    row = html[html.index(f'data-proposal="{made["id"]}"') :]
    row = row[: row.index("</tr>")]
    assert "Deposit top-up" not in row, row
    assert "Deposit withdrawal" in row and "WD-0001" in row, row
