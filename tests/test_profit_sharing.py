"""Profit sharing in service-provider mode: a merchant-funded two-way rebate leaves the merchant's own order money.

The worked example (issue 16): an order paid to a sub-merchant with ``settle_info.profit_sharing``, the hold
period, one share to both persons (the buyer and the packet's issuer) within the merchant's maximum ratio with
the rest unfrozen, the asynchronous result, the balances and the ledger; then a refund after sharing becomes
a receivable. The simulated WeChat (``wechat/sim/profitsharing.py``) answers every call; ``flask ledger check``
holds after each step.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from jobs.profit_sharing import query_profit_shares, share_due_orders
from ledger import account, balance, check_ledger
from models import (
    AccountKind,
    Alert,
    Campaign,
    Notice,
    Order,
    Payout,
    ProfitShare,
    ProfitShareConfig,
    ProfitShareReceiver,
    Rebate,
    RebateAdjustment,
    Receivable,
    UserIdentity,
    db,
    utcnow,
)
from models.payouts import Rail
from rebate import apply_refund, begin_refund, create_order, fail_refund, issue_packet
from rebate.orders import LineRequest
from tests.money_helpers import app_money

SUB_MCHID = "1900000301"
TWO_WAY = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 1_000_00},
        {"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 1_000_00},
    ]
}


@pytest.fixture
def app_settings(app_settings):
    return {**app_settings, "FUND_FLOW": "service_provider"}


@pytest.fixture
def sim(app):
    return app.extensions["wechat"].simulator


def bal(kind, owner_type=None, owner_id=None) -> int:
    return balance(account(kind, owner_type, owner_id))


def ledger_holds() -> None:
    db.session.remove()
    report = check_ledger()
    assert report.ok, report.violations
    db.session.remove()


def openid_of(user_id: int, appid: str) -> str:
    return db.session.execute(
        select(UserIdentity.openid).where(UserIdentity.user_id == user_id, UserIdentity.appid == appid)
    ).scalar_one()


@pytest.fixture
def story(app, make_user, make_merchant, make_product, make_campaign, pay, sim):
    """A paid profit-sharing order of 100 yuan with a person's 10-yuan packet of a merchant-funded campaign.

    Returns a function: (funder="merchant_deposit", price_fen=100_00) → (order, buyer, issuer, shop)."""

    def make(funder: str = "merchant_deposit", price_fen: int = 100_00, sub_appid: str | None = None):
        appid = app.config["WECHAT_APPID"]
        shop = make_merchant()
        shop.sub_mchid, shop.sub_appid = f"19{shop.id:08d}", sub_appid
        issuer, buyer = make_user(appid=appid), make_user(appid=appid)
        funding = {"funder_type": funder}
        if funder == "merchant_deposit":  # as activated in service-provider mode: from its own sales, no deposit
            funding.update(funder_merchant_id=shop.id, funded_from_sales=True, fund_deposit_fen=0)
        campaign = make_campaign(
            TWO_WAY,
            issuer_type="user",
            issuer_user_id=issuer.id,
            packet_amount_fen=10_00,
            packet_merchant_id=shop.id,
            budget_limit_fen=10_000_00,
            **funding,
        )
        packet = issue_packet(campaign, buyer, source="test", source_ref=f"p{buyer.id}", now=utcnow())
        product = make_product(shop, price_fen=price_fen)
        order = create_order(buyer, [LineRequest(product.id, 1)], packet.id, utcnow())
        order.sub_mchid, order.profit_sharing = shop.sub_mchid, True  # as the partner JSAPI order is opened
        db.session.commit()
        assert pay(order) == "applied"
        order = db.session.get(Order, order.id)
        sim.freeze_for_sharing(order.transaction_id, shop.sub_mchid, order.payable_fen)
        return (
            Row(
                id=order.id, out_trade_no=order.out_trade_no, transaction_id=order.transaction_id, paid_at=order.paid_at
            ),
            Row(id=buyer.id),
            Row(id=issuer.id),
            Row(id=shop.id, sub_mchid=shop.sub_mchid),
        )

    return make


class Row(SimpleNamespace):
    """What a test keeps of a row: plain values (the jobs end the session, detaching any row)."""


def payouts_of(order_id: int) -> dict[int, Payout]:
    db.session.expire_all()
    return {p.user_id: p for p in db.session.execute(select(Payout).where(Payout.order_id == order_id)).scalars()}


def share_of(order_id: int) -> ProfitShare:
    db.session.expire_all()
    return db.session.execute(select(ProfitShare).where(ProfitShare.order_id == order_id)).scalar_one()


def hold_passes(order_id: int) -> None:
    """The refund window closes: the share is due now."""
    row = share_of(order_id)
    row.due_at = row.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


def results_are_due(order_id: int) -> None:
    row = share_of(order_id)
    row.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


def test_worked_example_merchant_funded_two_way_rebate_is_shared_then_a_refund_after_sharing_is_a_receivable(
    app, story, sim
):
    # given: a 100-yuan order paid 90 to the sub-merchant (10-yuan packet), opened for profit sharing;
    # the merchant's campaign pays the packet's issuer 10 % and the buyer 5 % of what was paid, as change
    order, buyer, issuer, shop = story()
    payouts = payouts_of(order.id)
    assert {u: (p.rail, p.amount_fen, p.status) for u, p in payouts.items()} == {
        issuer.id: (Rail.PROFIT_SHARING, 9_00, "pending"),
        buyer.id: (Rail.PROFIT_SHARING, 4_50, "pending"),
    }
    # the 90 yuan are the merchant's, frozen at WeChat: never the platform's settlement account nor a deposit;
    # its claim on them is what is left after the two rebates it funds
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == -90_00
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 76_50
    assert bal(AccountKind.WECHAT_SETTLEMENT) == 0 and bal(AccountKind.MERCHANT_PAYABLE, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", shop.id) == 0
    assert db.session.get(Order, order.id).frozen_fen == 90_00
    ledger_holds()

    # when: the share job runs before the refund window has closed
    assert share_due_orders()["opened"] == 1
    # then: the share waits (due 7 days after payment), nothing was asked of WeChat
    row = share_of(order.id)
    assert (row.status, row.kind, row.request) == ("pending", None, None)
    assert row.due_at == order.paid_at + timedelta(days=7)
    assert row.out_order_no == f"PS{order.id:012d}"
    assert sim.ps_orders.get(f"{shop.sub_mchid}:{row.out_order_no}") is None

    # when: the hold period passes and the job runs
    hold_passes(order.id)
    done = share_due_orders()
    # then: one request shares to both persons (added as receivers once), within the merchant's 30 % ratio,
    # and unfreezes the rest to the merchant; WeChat is still working on it
    assert done["processing"] == 1
    row = share_of(order.id)
    appid = app.config["WECHAT_APPID"]
    assert row.kind == "share" and row.ratio_bps == 3000 and (row.shared_fen, row.held_fen) == (13_50, 0)
    assert row.request == {
        "sub_mchid": shop.sub_mchid,
        "appid": appid,
        "transaction_id": order.transaction_id,
        "out_order_no": row.out_order_no,
        "receivers": [
            {
                "type": "PERSONAL_OPENID",
                "account": openid_of(issuer.id, appid),
                "amount": 9_00,
                "description": "订单返利",
            },
            {
                "type": "PERSONAL_OPENID",
                "account": openid_of(buyer.id, appid),
                "amount": 4_50,
                "description": "订单返利",
            },
        ],
        "unfreeze_unsplit": True,
    }
    assert len(sim.ps_receivers[shop.sub_mchid]) == 2
    assert db.session.query(ProfitShareReceiver).count() == 2
    assert db.session.get(ProfitShareConfig, shop.sub_mchid).max_ratio_bps == 3000
    assert {p.status for p in payouts_of(order.id).values()} == {"unknown"}  # handed over: in transit
    assert bal(AccountKind.PAYOUT_IN_TRANSIT) == 13_50
    ledger_holds()

    # when: the results are asked for
    results_are_due(order.id)
    assert query_profit_shares()["finished"] == 1
    # then: both persons got their share; the rest (90 - 13.50) was unfrozen to the merchant
    row = share_of(order.id)
    assert row.status == "finished" and row.wechat_order_id
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    wechat = sim.query_share(row.out_order_no, shop.sub_mchid, order.transaction_id)
    assert [(r["type"], r["amount"], r["result"]) for r in wechat["receivers"]] == [
        ("PERSONAL_OPENID", 9_00, "SUCCESS"),
        ("PERSONAL_OPENID", 4_50, "SUCCESS"),
        ("MERCHANT_ID", 76_50, "SUCCESS"),
    ]
    assert sim.frozen[order.transaction_id]["unsplit_fen"] == 0
    # the money left the merchant's own order money, never the platform's account; the merchant funded both;
    # the rest (76.50) was released to it, once: nothing of the order is in the platform's books any more
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 0
    assert db.session.get(Order, order.id).frozen_fen == 0
    assert f"order:{order.id}:released" in app_entries()
    assert bal(AccountKind.PAYOUT_IN_TRANSIT) == 0 and bal(AccountKind.REBATE_PAYABLE) == 0
    assert bal(AccountKind.USER_CASH, "user", issuer.id) == bal(AccountKind.USER_CASH, "user", buyer.id) == 0
    shared_entries = [
        e for e in app_entries() if e.startswith("payout") and e.endswith(":paid")
    ]  # one "paid" entry per payout, from merchant_frozen_sales
    assert len(shared_entries) == 2
    assert not wechat_settlement_touched_by_payouts()
    ledger_holds()

    # when: the order is refunded in part (40 of 90 yuan) after sharing
    refund = begin_refund(db.session.get(Order, order.id), "R-after-share", 40_00)
    db.session.commit()
    apply_refund(order.out_trade_no, refund.out_refund_no, 40_00, utcnow(), money=app_money())
    db.session.commit()
    # then: a share to a person cannot be returned: what the rebates lose becomes what each person owes back,
    # netted against their next rebate (issuer 10 % of 50 = 5 yuan now: owes 4; buyer 2.50: owes 2)
    rebates = {r.role: r for r in db.session.query(Rebate).filter_by(order_id=order.id)}
    assert (rebates["issuer"].amount_fen, rebates["consumer"].amount_fen) == (5_00, 2_50)
    owed = {r.beneficiary_id: (r.kind, r.outstanding_fen) for r in db.session.query(Receivable)}
    assert owed == {issuer.id: ("share", 4_00), buyer.id: ("share", 2_00)}
    # owed to the merchant, apart from the person's cash balance: the platform never collects it from money
    # it holds for them (二清); only the merchant's next share to them settles it
    assert bal(AccountKind.USER_CASH, "user", issuer.id) == bal(AccountKind.USER_CASH, "user", buyer.id) == 0
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", issuer.id) == -4_00
    assert bal(AccountKind.USER_OWES_MERCHANTS, "user", buyer.id) == -2_00
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}  # never edited
    # the refund came from the merchant's own (released) money: nothing of it is posted here; what the persons
    # owe back is owed to the merchant that funded the rebates
    assert f"refund:{refund.id}" not in app_entries()
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 6_00
    ledger_holds()


def app_entries() -> list[str]:
    from models import LedgerEntry

    return list(db.session.execute(select(LedgerEntry.idempotency_key)).scalars())


def wechat_settlement_touched_by_payouts() -> bool:
    from models import LedgerEntry, LedgerPosting

    settlement = account(AccountKind.WECHAT_SETTLEMENT)
    keys = db.session.execute(
        select(LedgerEntry.idempotency_key)
        .join(LedgerPosting, LedgerPosting.entry_id == LedgerEntry.id)
        .where(LedgerPosting.account_id == settlement.id)
    ).scalars()
    return any(k.startswith("payout:") for k in keys)


def test_a_refund_before_sharing_shrinks_the_share(app, story, sim):
    # given: the paid profit-sharing order, its share not yet due
    order, buyer, issuer, shop = story()
    share_due_orders()
    # when: 40 of 90 yuan are refunded within the refund window
    refund = begin_refund(db.session.get(Order, order.id), "R-before-share", 40_00)
    refund_id = refund.id
    db.session.commit()
    # (while the refund is pending, the order's payouts are held and the share waits; abnormal too: WeChat may
    # still finish it)
    hold_passes(order.id)
    share_due_orders()
    assert share_of(order.id).request is None and share_of(order.id).status == "pending"
    fail_refund("R-before-share", "abnormal", utcnow())
    db.session.commit()
    hold_passes(order.id)
    share_due_orders()
    assert share_of(order.id).request is None and share_of(order.id).status == "pending"
    apply_refund(order.out_trade_no, refund.out_refund_no, 40_00, utcnow(), money=app_money())
    db.session.commit()
    sim.refund_frozen(order.transaction_id, 40_00)
    # then: the clawback reduced the pending payouts before anything went out: nobody owes anything
    payouts = payouts_of(order.id)
    assert (payouts[issuer.id].amount_fen, payouts[buyer.id].amount_fen) == (5_00, 2_50)
    assert db.session.query(Receivable).count() == 0
    # when: the hold passes and the share goes out
    hold_passes(order.id)
    share_due_orders()
    results_are_due(order.id)
    query_profit_shares()
    # then: the share carried the reduced amounts, within 30 % of the 50 yuan left
    row = share_of(order.id)
    assert row.status == "finished" and row.shared_fen == 7_50
    assert [r["amount"] for r in row.request["receivers"]] == [5_00, 2_50]
    # the refund came out of the frozen money (90 - 40), the shares took 7.50 and the rest (42.50) was released
    assert f"refund:{refund_id}" in app_entries() and f"order:{order.id}:released" in app_entries()
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 0
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    ledger_holds()


def test_platform_funded_rebates_leave_by_transfer_and_the_order_is_only_unfrozen(app, story, sim):
    # given: a profit-sharing order whose rebates the platform funds
    order, buyer, issuer, shop = story(funder="platform_fund")
    # then: its rebates leave the platform's own account by transfer, not by sharing the merchant's money
    assert {p.rail for p in payouts_of(order.id).values()} == {Rail.WECHAT_CHANGE}
    # when: the hold passes
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    # then: nothing is shared: the whole frozen amount is unfrozen to the merchant
    row = share_of(order.id)
    assert row.kind == "unfreeze"
    assert row.request == {
        "sub_mchid": shop.sub_mchid,
        "transaction_id": order.transaction_id,
        "out_order_no": row.out_order_no,
        "description": "解冻全部剩余资金",
    }
    results_are_due(order.id)
    query_profit_shares()
    assert share_of(order.id).status == "finished"
    assert sim.frozen[order.transaction_id]["unsplit_fen"] == 0
    ledger_holds()


def test_what_exceeds_the_merchants_maximum_ratio_is_held_for_an_operator_never_dropped(app, story, sim):
    # given: a merchant that allows sharing at most 10 % of an order (9 yuan of 90)
    order, buyer, issuer, shop = story()
    sim.set_max_ratio(shop.sub_mchid, 1000)
    share_due_orders()
    hold_passes(order.id)
    # when: the share goes out
    share_due_orders()
    # then: the issuer's 9 yuan fit and are shared; the buyer's 4.50 wait for an operator, with an alert
    row = share_of(order.id)
    assert (row.shared_fen, row.held_fen, row.ratio_bps) == (9_00, 4_50, 1000)
    assert [r["amount"] for r in row.request["receivers"]] == [9_00]
    payouts = payouts_of(order.id)
    assert payouts[buyer.id].status == "needs_operator"
    alert = db.session.execute(select(Alert).where(Alert.kind == "profit_share_over_ratio")).scalar_one()
    assert alert.subject == payouts[buyer.id].external_no
    assert "450 fen do not fit" in alert.message
    # the buyer's money is still owed (in the payout's clearing flow), nothing was lost
    assert bal(AccountKind.REBATE_PAYABLE) == 4_50
    results_are_due(order.id)
    query_profit_shares()
    assert payouts_of(order.id)[issuer.id].status == "succeeded"
    ledger_holds()


def test_a_stale_cached_ratio_refused_by_wechat_is_fetched_again_and_the_share_replanned(app, story, sim):
    order, buyer, issuer, shop = story()
    share_due_orders()
    # given: we remember 30 %, but the merchant lowered it to 10 % since
    db.session.add(ProfitShareConfig(sub_mchid=shop.sub_mchid, max_ratio_bps=3000, fetched_at=utcnow()))
    db.session.commit()
    sim.set_max_ratio(shop.sub_mchid, 1000)
    hold_passes(order.id)
    # when: the share is sent: WeChat refuses it (分账金额超出最大分账比例), nothing exists at WeChat
    share_due_orders()
    row = share_of(order.id)
    assert row.status == "pending" and row.request is None and "最大分账比例" in row.last_error
    assert db.session.get(ProfitShareConfig, shop.sub_mchid) is None
    assert {p.status for p in payouts_of(order.id).values()} == {"pending"}
    assert db.session.execute(select(Payout.id).where(Payout.request.is_(None))).all()  # SQL NULL: never sent
    # then: the next pass fetches the ratio again and shares within it
    share_due_orders()
    row = share_of(order.id)
    assert (row.ratio_bps, row.shared_fen, row.held_fen) == (1000, 9_00, 4_50)
    ledger_holds()


def test_a_closed_receiver_leaves_the_money_with_the_merchant_and_the_person_is_told(app, story, sim):
    order, buyer, issuer, shop = story()
    campaign_id = db.session.query(Rebate).filter_by(order_id=order.id).first().campaign_id
    committed = db.session.get(Campaign, campaign_id).budget_committed_fen
    sim.close_share_to(openid_of(buyer.id, app.config["WECHAT_APPID"]))
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    results_are_due(order.id)
    query_profit_shares()
    payouts = payouts_of(order.id)
    assert (payouts[issuer.id].status, payouts[buyer.id].status) == ("succeeded", "failed")
    # the share never reached the person: the money is the merchant's, unfrozen to it with the rest. It never
    # lands in the person's balance at the platform, which the platform would pay out of its own account
    assert bal(AccountKind.USER_CASH, "user", buyer.id) == 0
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    assert bal(AccountKind.MERCHANT_OWN_SALES, "merchant", shop.id) == 0
    assert f"payout:{payouts[buyer.id].id}:failed" in app_entries()
    # the rebate no longer carries it: reduced, its budget back, the adjustment says why, the person is told
    rebate = db.session.query(Rebate).filter_by(order_id=order.id, beneficiary_id=buyer.id).one()
    assert (rebate.amount_fen, rebate.status) == (0, "clawed_back")
    adjustment = db.session.query(RebateAdjustment).filter_by(rebate_id=rebate.id).one()
    assert (adjustment.amount_fen, adjustment.recovered_fen, adjustment.receivable_fen) == (4_50, 4_50, 0)
    assert "the merchant keeps" in adjustment.reason
    db.session.expire_all()
    assert db.session.get(Campaign, campaign_id).budget_committed_fen == committed - 4_50
    told = db.session.query(Notice).filter_by(user_id=buyer.id, event="rebate_clawed_back").one()
    assert told.facts["reason_code"] == "share_returned" and told.facts["amount_fen"] == 4_50
    assert db.session.execute(select(Alert).where(Alert.kind == "profit_share_closed")).scalar_one()
    assert share_of(order.id).status == "finished"
    ledger_holds()


def test_an_answer_lost_after_wechat_acted_is_queried_not_sent_twice(app, story, sim):
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    # given: WeChat creates the share but its answer is lost (a 500 after acting)
    sim.inject_fault("/v3/profitsharing/orders", 500, "SYSTEM_ERROR", after=True)
    share_due_orders()
    row = share_of(order.id)
    number = row.out_order_no
    assert row.status == "pending" and row.posted and row.last_error.startswith("SYSTEM_ERROR")
    assert {p.status for p in payouts_of(order.id).values()} == {"sending"}
    # when: the follow-up runs: it queries the same number first
    results_are_due(order.id)
    query_profit_shares()
    # then: the one share WeChat holds is followed to its end; no second share was made
    results_are_due(order.id)
    query_profit_shares()
    assert share_of(order.id).status == "finished"
    assert [k for k in sim.ps_orders if k.endswith(number)] == [f"{shop.sub_mchid}:{number}"]
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    ledger_holds()


def test_a_frequency_limit_waits_and_sends_the_same_body_again(app, story, sim):
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    sim.inject_fault("/v3/profitsharing/orders", 429, "FREQUENCY_LIMITED", "频率超限")
    share_due_orders()
    row = share_of(order.id)
    body = dict(row.request)
    assert row.status == "pending" and row.last_error.startswith("FREQUENCY_LIMITED")
    results_are_due(order.id)
    query_profit_shares()  # the query says WeChat never saw it: the same body is sent
    row = share_of(order.id)
    assert row.status == "processing" and row.request == body
    ledger_holds()


def test_not_enough_unsplit_money_waits(app, story, sim):
    order, buyer, issuer, shop = story()
    sim.refund_frozen(order.transaction_id, 85_00)  # WeChat holds less than we would share (5 yuan)
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    row = share_of(order.id)
    assert row.status == "pending" and row.last_error.startswith("NOT_ENOUGH")
    assert {p.status for p in payouts_of(order.id).values()} == {"sending"}  # its body is fixed, not resent blindly
    ledger_holds()


def test_a_person_without_an_openid_under_the_sp_appid_gets_a_sub_openid_share(app, story, sim, make_user):
    order, buyer, issuer, shop = story(sub_appid="wxsubapp0000001")
    # the buyer is known only under the merchant's own mini-program
    db.session.query(UserIdentity).filter_by(user_id=buyer.id).update({"appid": "wxsubapp0000001"})
    db.session.commit()
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    row = share_of(order.id)
    assert row.request["sub_appid"] == "wxsubapp0000001"
    assert [r["type"] for r in row.request["receivers"]] == ["PERSONAL_OPENID", "PERSONAL_SUB_OPENID"]
    assert row.status == "processing"
    ledger_holds()


def test_nothing_happens_in_direct_mode(app, story, sim):
    app.config["FUND_FLOW"] = "direct"
    story()
    assert share_due_orders() == {} and query_profit_shares() == {}
    assert db.session.query(ProfitShare).count() == 0


def test_an_operator_switching_the_rail_off_stops_sharing(app, story, sim, make_operator, client):
    order, *_ = story()
    _, headers = make_operator("admin")
    answer = client.put(
        "/admin/api/rails/profit_sharing",
        json={"enabled": False, "reason": "merchant dispute"},
        headers={**headers, "Idempotency-Key": "k1"},
    )
    assert answer.status_code == 200, answer.get_json()
    share_due_orders()
    hold_passes(order.id)
    assert share_due_orders()["rail_off"] == 1
    assert share_of(order.id).request is None


# -- races ------------------------------------------------------------------------------------------------


def test_two_share_runners_at_once_send_one_share(app, story, sim):
    from tests.concurrency import together

    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    results = together(2, lambda _: share_due_orders(), app=app)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert sum(r["processing"] for r in results) == 1
    assert [k for k in sim.ps_orders if k.startswith(shop.sub_mchid)] == [f"{shop.sub_mchid}:PS{order.id:012d}"]
    assert {p.status for p in payouts_of(order.id).values()} == {"unknown"}
    ledger_holds()


def test_two_runners_storing_the_same_fetched_ratio_both_succeed(app):
    """Each runner fetched the ratio with no transaction open and neither saw a stored one: both store it."""
    from payouts.profit_share import store_ratio
    from tests.concurrency import together

    now = utcnow()
    results = together(4, lambda i: store_ratio("1900000777", 2000 + i, now), app=app)
    assert results == [None] * 4
    assert db.session.get(ProfitShareConfig, "1900000777").max_ratio_bps in {2000, 2001, 2002, 2003}
    store_ratio("1900000777", 3000, now)
    assert db.session.get(ProfitShareConfig, "1900000777").max_ratio_bps == 3000


def test_a_refund_racing_the_share_either_shrinks_it_or_becomes_a_receivable_never_both(app, story, sim):
    from tests.concurrency import together

    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)

    def refund() -> None:
        begun = begin_refund(db.session.get(Order, order.id), "R-race", 40_00)
        apply_refund(order.out_trade_no, begun.out_refund_no, 40_00, utcnow(), money=app_money())

    results = together(2, lambda i: share_due_orders() if i else refund(), app=app)
    assert not [r for r in results if isinstance(r, Exception)], results
    share_due_orders()  # a share deferred behind the refund goes now
    db.session.expire_all()
    owed = {r.beneficiary_id: r.outstanding_fen for r in db.session.query(Receivable)}
    payouts = payouts_of(order.id)
    # what each person was sent, less what they are now entitled to, is exactly what they owe back
    for person, entitled in ((issuer.id, 5_00), (buyer.id, 2_50)):
        assert payouts[person].amount_fen - entitled == owed.get(person, 0)
    assert share_of(order.id).shared_fen == sum(p.amount_fen for p in payouts.values())
    ledger_holds()


def test_a_payout_queued_after_its_orders_share_waits_for_an_operator(app, story, sim):
    from ledger import Leg, post_entry, ref
    from payouts import enqueue_payout

    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    results_are_due(order.id)
    query_profit_shares()
    # given: a rebate released later (its condition met) queues one more share of the same order
    cash = account(AccountKind.USER_CASH, "user", buyer.id)
    post_entry(
        "test-late-release", "late release", [Leg(ref(AccountKind.PLATFORM_MARKETING_FUND), -1_00), Leg(cash, 1_00)]
    )
    late = enqueue_payout(
        rail=Rail.PROFIT_SHARING,
        user_id=buyer.id,
        amount_fen=1_00,
        source=cash,
        key="test-late",
        memo="late",
        number_prefix="",
        order_id=order.id,
    )
    late_id = late.id
    db.session.commit()
    # when: the share job runs
    assert share_due_orders()["too_late"] == 1
    # then: the order's frozen money is gone: an operator decides, nothing is sent
    assert db.session.get(Payout, late_id).status == "needs_operator"
    assert db.session.execute(select(Alert).where(Alert.kind == "profit_share_too_late")).scalar_one()
    ledger_holds()


def test_the_hold_days_setting_is_validated():
    from config import ConfigError, load_config

    for bad in ("0", "180", "seven"):
        with pytest.raises(ConfigError, match="PROFIT_SHARING_HOLD_DAYS"):
            load_config(environ={"WECHAT_MODE": "simulator", "PROFIT_SHARING_HOLD_DAYS": bad})
    assert load_config(environ={"WECHAT_MODE": "simulator"})["PROFIT_SHARING_HOLD_DAYS"] == 7
    assert (
        load_config(environ={"WECHAT_MODE": "simulator", "PROFIT_SHARING_HOLD_DAYS": "14"})["PROFIT_SHARING_HOLD_DAYS"]
        == 14
    )
