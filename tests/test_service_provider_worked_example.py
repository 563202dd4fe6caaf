"""Issue 16's service-provider worked example, end to end through the real paths on the simulator.

``FUND_FLOW=service_provider``: a noodle house onboarded as a sub-merchant (admin API) runs its own two-way
rebate campaign (10 % to the packet's issuer, a person, and 5 % to the buyer, both as WeChat change, funded by
the merchant). The buyer orders with the packet through ``POST /api/v1/orders`` and ``/pay``; the order is
prepaid through the partner JSAPI with ``settle_info.profit_sharing``; the simulator delivers the signed partner
notification to the callback route. After ``PROFIT_SHARING_HOLD_DAYS`` the share job sends one profit-sharing
order to both persons within the sub-merchant's maximum ratio with ``unfreeze_unsplit``; the query job finds it
SUCCESS. A partner refund after sharing becomes what the persons owe back. The merchant's statement for the
month sums to its ledger and shows the shares. ``check_ledger()`` holds after every step.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from jobs.profit_sharing import query_profit_shares, share_due_orders
from ledger import check_ledger
from models import (
    AccountKind,
    Order,
    Payout,
    ProfitShare,
    Rebate,
    Receivable,
    Refund,
    db,
    utcnow,
)
from models.payouts import Rail
from rebate.fees import month_of
from tests.test_partner_flow import admin, give_packet, keyed, set_sub_mchid, user_of  # noqa: F401
from tests.test_partner_flow import app_settings as partner_settings  # noqa: F401 - fixture chain
from tests.test_simulator_e2e import app_settings as sim_settings  # noqa: F401 - fixture chain
from tests.test_simulator_e2e import delivered, login, pay_at_checkout  # noqa: F401 - fixture
from tests.test_statements import figures, url
from tests.test_wechat_callbacks import no_network, simulator  # noqa: F401 - fixture

SUB_MCHID = "1900000109"  # what set_sub_mchid gives
TWO_WAY_CHANGE = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "wechat_change", "cap_fen": 1_000_00},
        {"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 1_000_00},
    ]
}


@pytest.fixture
def app_settings(partner_settings):  # noqa: F811
    return {**partner_settings, "PROFIT_SHARING_HOLD_DAYS": 7}


def ledger_holds() -> None:
    db.session.remove()
    report = check_ledger()
    assert report.ok, report.violations
    db.session.remove()


def payouts_of(order_id: int) -> dict[int, Payout]:
    db.session.expire_all()
    return {p.user_id: p for p in db.session.execute(select(Payout).where(Payout.order_id == order_id)).scalars()}


def share_of(order_id: int) -> ProfitShare:
    db.session.expire_all()
    return db.session.execute(select(ProfitShare).where(ProfitShare.order_id == order_id)).scalar_one()


def test_worked_example_service_provider_two_way_rebate_shared_then_refunded_and_on_the_statement(
    app,
    client,
    admin,  # noqa: F811
    make_merchant,
    make_product,
    make_campaign,
    make_operator,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
):
    sim = simulator(app)
    appid = app.config["WECHAT_APPID"]

    # given: the noodle house is sub-merchant 1900000109; bob issues its packets; alice holds one (10 yuan)
    shop = make_merchant("noodle house")
    bowl = make_product(shop, price_fen=100_00)
    assert set_sub_mchid(client, admin, shop.id).status_code == 200
    login(client, "bob")
    bob, alice_headers = user_of("bob"), login(client, "alice")
    alice = user_of("alice")
    campaign = make_campaign(
        TWO_WAY_CHANGE,
        issuer_type="user",
        issuer_user_id=bob.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        funded_from_sales=True,  # as activating it in service-provider mode makes it (no deposit)
        fund_deposit_fen=0,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
        budget_limit_fen=10_000_00,
    )
    packet = give_packet(campaign, alice)
    ids = {"shop": shop.id, "alice": alice.id, "bob": bob.id}
    body = {"lines": [{"product_id": bowl.id, "quantity": 1}], "red_packet_id": packet.id}
    ledger_holds()

    # when: alice orders the 100-yuan bowl with the packet, then asks for the payment parameters again
    created = client.post("/api/v1/orders", json=body, headers=alice_headers)
    assert created.status_code == 201, created.json
    order_id = created.json["id"]
    again = client.post(f"/api/v1/orders/{order_id}/pay", headers=alice_headers)
    assert again.status_code == 200, again.json
    # then: the partner JSAPI was asked once (the prepay_id is reused), for the sub-merchant, with profit sharing
    sent = sim.orders[created.json["out_trade_no"]]["request"]
    assert sent["sub_mchid"] == SUB_MCHID and sent["settle_info"] == {"profit_sharing": True}
    assert sent["amount"]["total"] == 90_00 and sent["payer"] == {"sp_openid": "sim-openid-alice"}
    assert again.json["pay_params"]["package"] == created.json["payment"]["pay_params"]["package"]
    ledger_holds()

    # when: she pays at the simulated checkout and the signed partner notification is delivered
    pay_at_checkout(client, again.json)
    delivered()
    # then: the order is paid to the sub-merchant; both rebates are profit-sharing payouts waiting for the share
    [delivery] = sim.dispatcher.deliveries
    assert delivery.statuses == [204]
    order = db.session.get(Order, order_id)
    assert (order.status, order.paid_fen, order.sub_mchid, order.profit_sharing) == ("paid", 90_00, SUB_MCHID, True)
    payouts = payouts_of(order_id)
    assert {u: (p.rail, p.amount_fen, p.status) for u, p in payouts.items()} == {
        ids["bob"]: (Rail.PROFIT_SHARING, 9_00, "pending"),
        ids["alice"]: (Rail.PROFIT_SHARING, 4_50, "pending"),
    }
    transaction_id = order.transaction_id
    ledger_holds()

    # when: the share job runs inside the refund window
    assert share_due_orders()["opened"] == 1
    # then: nothing is sent yet; the share is due PROFIT_SHARING_HOLD_DAYS after the payment
    share = share_of(order_id)
    assert share.kind is None and not list(sim.ps_orders.items())
    assert share.due_at == db.session.get(Order, order_id).paid_at + timedelta(days=7)

    # when: more than PROFIT_SHARING_HOLD_DAYS pass (the order was paid 8 days ago) and the job runs again
    db.session.execute(
        update(ProfitShare)
        .where(ProfitShare.order_id == order_id)
        .values(due_at=utcnow() - timedelta(days=1), next_attempt_at=utcnow() - timedelta(days=1))
    )
    db.session.execute(update(Order).where(Order.id == order_id).values(paid_at=utcnow() - timedelta(days=8)))
    db.session.commit()
    assert share_due_orders() == {"processing": 1}
    # then: one profit-sharing order to both persons (30 % of 90 allows 27), the rest unfrozen to the merchant
    share = share_of(order_id)
    assert (share.kind, share.ratio_bps, share.shared_fen, share.held_fen) == ("share", 3000, 13_50, 0)
    assert share.request["sub_mchid"] == SUB_MCHID and share.request["unfreeze_unsplit"] is True
    assert [(r["type"], r["amount"]) for r in share.request["receivers"]] == [
        ("PERSONAL_OPENID", 9_00),
        ("PERSONAL_OPENID", 4_50),
    ]
    assert {r["account"] for r in share.request["receivers"]} == {"sim-openid-bob", "sim-openid-alice"}
    assert share.request["appid"] == appid
    assert sim.frozen[transaction_id]["unsplit_fen"] == 0
    ledger_holds()

    # when: the query job asks for the asynchronous result
    db.session.execute(
        update(ProfitShare).where(ProfitShare.order_id == order_id).values(next_attempt_at=utcnow() - timedelta(1))
    )
    db.session.commit()
    assert query_profit_shares() == {"finished": 1}
    # then: both persons received their share from the merchant's own frozen order money
    assert share_of(order_id).status == "finished"
    assert {p.status for p in payouts_of(order_id).values()} == {"succeeded"}
    answer = sim.query_share(share.out_order_no, SUB_MCHID, transaction_id)
    assert [(r["type"], r["amount"], r["result"]) for r in answer["receivers"]] == [
        ("PERSONAL_OPENID", 9_00, "SUCCESS"),
        ("PERSONAL_OPENID", 4_50, "SUCCESS"),
        ("MERCHANT_ID", 76_50, "SUCCESS"),
    ]
    ledger_holds()

    # when: finance refunds 40 of the 90 yuan through the partner refund, after the share
    finance = make_operator("finance")[1]
    refund = client.post(
        f"/admin/api/orders/{order_id}/refunds", json={"amount_fen": 40_00, "reason": "cold"}, headers=keyed(finance)
    )
    assert refund.status_code == 201, refund.json
    delivered()
    # then: WeChat refunded it for the sub-merchant; the shares cannot come back from the persons: each owes
    # what its rebate lost (bob 10 % of 50 = 5: owes 4; alice 2.50: owes 2), netted against later rebates
    assert sim.refunds[refund.json["out_refund_no"]]["sub_mchid"] == SUB_MCHID
    assert db.session.get(Refund, refund.json["id"]).status == "succeeded"
    rebates = {r.role: r.amount_fen for r in db.session.query(Rebate).filter_by(order_id=order_id)}
    assert rebates == {"issuer": 5_00, "consumer": 2_50}
    owed = {r.beneficiary_id: r.outstanding_fen for r in db.session.query(Receivable)}
    assert owed == {ids["bob"]: 4_00, ids["alice"]: 2_00}
    ledger_holds()

    # when: an admin reads the merchant's statement for the month
    month = month_of(utcnow())
    s = client.get(url(ids["shop"], month), headers=admin).json
    # then: every account reconciles; the shares are a figure of its postings and the profit-sharing part says
    # what was shared, unfrozen and still in flight
    assert all(a["reconciles"] for a in s["accounts"]), s["accounts"]
    got = figures(s)
    # the 90 yuan paid were the merchant's own, frozen at WeChat: 13.50 shared to the persons, the rest released
    # to it; the refund after the release came from its own money (nothing of it is in the platform's books)
    assert (got["frozen_sales"], got["shared_to_persons"], got["frozen_released"]) == (-90_00, 13_50, 76_50)
    assert got["frozen_refunds"] == 0 and got["frozen_sales_other"] == 0
    assert (got["own_sales"], got["own_rebates_funded"], got["own_released"]) == (90_00, -13_50, -76_50)
    # the refund clawed 6 yuan of its rebates back: the persons owe it (receivables), owed on to the merchant
    assert got["own_rebates_clawed_back"] == 6_00 and got["own_refunds"] == 0
    # nothing went through the platform's payable, deposit or settlement account
    assert got["sales"] == got["refunds"] == got["rebates_paid"] == got["rebates_clawed_back"] == 0
    postings = client.get(url(ids["shop"], month, entries=1, figure="shared_to_persons"), headers=admin).json
    assert postings["total_fen"] == 13_50 and len(postings["postings"]) == 2
    ps = s["profit_shares"]
    assert ps["mode"] == "service_provider"
    assert ps["shared_to_persons"]["fen"] == 13_50
    assert ps["unfrozen_to_merchant"] == {"fen": 76_50, "yuan": "76.50", "share_ids": [share.id]}
    assert ps["held_over_ratio"]["fen"] == 0 and ps["returned_to_merchant"]["fen"] == 0
    assert ps["in_flight"] == {"fen": 0, "yuan": "0.00", "payout_ids": [], "share_ids": []}
    frozen = ps["frozen_sales"]
    assert (frozen["opening_fen"], frozen["closing_fen"]) == (0, 0)
    assert frozen["account"] == f"{AccountKind.MERCHANT_FROZEN_SALES}:merchant:{ids['shop']}"
    rows = list(csv.reader(io.StringIO(client.get(url(ids["shop"], month, format="csv"), headers=admin).text)))
    by_name = {(r[0], r[1]): r for r in rows}
    assert by_name[("profit_shares", "shared_to_persons")][4:6] == ["13.50", "1350"]
    assert by_name[("profit_shares", "unfrozen_to_merchant")][4:6] == ["76.50", "7650"]
    assert by_name[("figure", "shared_to_persons")][5] == "1350"
    ledger_holds()


def paid_partner_order(client, admin, make_merchant, make_product, make_campaign, delivered) -> dict:  # noqa: F811
    """The worked example's order, paid: a 100-yuan bowl with a 10-yuan packet, 90 paid to the sub-merchant
    with profit sharing; the merchant's fee rate is 3 %. Returns the ids."""
    shop = make_merchant("noodle house")
    bowl = make_product(shop, price_fen=100_00)
    assert set_sub_mchid(client, admin, shop.id).status_code == 200
    rate = client.put(
        f"/admin/api/merchants/{shop.id}/fee-rate", json={"rate_bps": 300, "reason": "contract"}, headers=admin
    )
    assert rate.status_code == 200, rate.json
    login(client, "bob")
    bob, alice_headers = user_of("bob"), login(client, "alice")
    alice = user_of("alice")
    campaign = make_campaign(
        TWO_WAY_CHANGE,
        issuer_type="user",
        issuer_user_id=bob.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        funded_from_sales=True,  # as activating it in service-provider mode makes it (no deposit)
        fund_deposit_fen=0,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
        budget_limit_fen=10_000_00,
    )
    packet = give_packet(campaign, alice)
    body = {"lines": [{"product_id": bowl.id, "quantity": 1}], "red_packet_id": packet.id}
    ids = {"shop": shop.id, "alice": alice.id, "bob": bob.id}
    created = client.post("/api/v1/orders", json=body, headers=alice_headers)
    assert created.status_code == 201, created.json
    pay_at_checkout(client, created.json["payment"])
    delivered()
    order = db.session.get(Order, created.json["id"])
    assert (order.status, order.profit_sharing) == ("paid", True)
    return {**ids, "order": order.id, "transaction_id": order.transaction_id}


def fee_of(order_id: int) -> int:
    from models import OrderFee

    db.session.expire_all()
    return db.session.get(OrderFee, order_id).fee_fen


def test_a_partner_refund_before_sharing_lowers_the_fee_and_the_share(
    app,
    client,
    admin,  # noqa: F811
    make_merchant,
    make_product,
    make_campaign,
    make_operator,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
):
    # given: the paid partner order (fee 3 % of 100 = 3 yuan), its share opened, not yet due
    sim = simulator(app)
    ids = paid_partner_order(client, admin, make_merchant, make_product, make_campaign, delivered)
    order_id = ids["order"]
    assert fee_of(order_id) == 3_00
    assert share_due_orders()["opened"] == 1
    # when: finance refunds 40 of the 90 yuan through the partner refund, inside the refund window
    finance = make_operator("finance")[1]
    refund = client.post(
        f"/admin/api/orders/{order_id}/refunds", json={"amount_fen": 40_00, "reason": "cold"}, headers=keyed(finance)
    )
    assert refund.status_code == 201, refund.json
    delivered()
    # then: the fee is 3 % of what is left of the goods (100 × 50/90 = 55.55 → 1.66); the pending payouts
    # shrank before anything left (bob 10 % of 50, alice 5 %): nobody owes anything
    assert sim.refunds[refund.json["out_refund_no"]]["sub_mchid"] == SUB_MCHID
    assert fee_of(order_id) == 1_66
    payouts = payouts_of(order_id)
    assert (payouts[ids["bob"]].amount_fen, payouts[ids["alice"]].amount_fen) == (5_00, 2_50)
    assert db.session.query(Receivable).count() == 0
    ledger_holds()
    # when: the hold passes; the share is sent and its result asked for
    later = utcnow() - timedelta(seconds=1)
    db.session.execute(
        update(ProfitShare).where(ProfitShare.order_id == order_id).values(due_at=later, next_attempt_at=later)
    )
    db.session.commit()
    assert share_due_orders() == {"processing": 1}
    db.session.execute(update(ProfitShare).where(ProfitShare.order_id == order_id).values(next_attempt_at=later))
    db.session.commit()
    assert query_profit_shares() == {"finished": 1}
    # then: the share carried the reduced amounts; WeChat unfroze the rest of the 50 yuan left to the merchant
    share = share_of(order_id)
    assert (share.shared_fen, [r["amount"] for r in share.request["receivers"]]) == (7_50, [5_00, 2_50])
    answer = sim.query_share(share.out_order_no, SUB_MCHID, ids["transaction_id"])
    assert [(r["type"], r["amount"]) for r in answer["receivers"]][-1] == ("MERCHANT_ID", 42_50)
    # and the statement says the same
    s = client.get(url(ids["shop"], month_of(utcnow())), headers=admin).json
    assert figures(s)["fees_reduced_by_refunds"] == 1_34 and figures(s)["shared_to_persons"] == 7_50
    assert s["profit_shares"]["unfrozen_to_merchant"]["fen"] == 42_50
    assert all(a["reconciles"] for a in s["accounts"])
    ledger_holds()


def test_the_statement_shows_a_closed_receiver_and_what_did_not_fit_the_ratio(
    app,
    client,
    admin,  # noqa: F811
    make_merchant,
    make_product,
    make_campaign,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
):
    # given: the paid partner order; the sub-merchant allows 10 % (9 of 90 yuan) and bob's account cannot receive
    sim = simulator(app)
    ids = paid_partner_order(client, admin, make_merchant, make_product, make_campaign, delivered)
    sim.set_max_ratio(SUB_MCHID, 1000)
    sim.close_share_to("sim-openid-bob")
    # when: the share goes out after the hold and its result comes back
    share_due_orders()
    later = utcnow() - timedelta(seconds=1)
    db.session.execute(
        update(ProfitShare).where(ProfitShare.order_id == ids["order"]).values(due_at=later, next_attempt_at=later)
    )
    db.session.commit()
    assert share_due_orders() == {"processing": 1}
    db.session.execute(update(ProfitShare).where(ProfitShare.order_id == ids["order"]).values(next_attempt_at=later))
    db.session.commit()
    assert query_profit_shares() == {"finished": 1}
    # then: bob's 9 yuan came back to the merchant, alice's 4.50 waits for an operator; nothing reached a person
    payouts = payouts_of(ids["order"])
    assert (payouts[ids["bob"]].status, payouts[ids["alice"]].status) == ("failed", "needs_operator")
    s = client.get(url(ids["shop"], month_of(utcnow())), headers=admin).json
    ps = s["profit_shares"]
    assert ps["shared_to_persons"]["fen"] == 0
    # bob's share never reached him: the 9 yuan stayed the merchant's (booked back to its own sales, unfrozen)
    assert ps["returned_to_merchant"] == {
        "fen": 9_00,
        "yuan": "9.00",
        "entries": [f"payout:{payouts[ids['bob']].id}:failed"],
    }
    assert figures(s)["own_shares_returned"] == 9_00
    assert ps["owed_by_persons"] == {"fen": 0, "yuan": "0.00", "receivable_ids": []}
    share = share_of(ids["order"])
    assert ps["held_over_ratio"] == {"fen": 4_50, "yuan": "4.50", "share_ids": [share.id]}
    assert ps["unfrozen_to_merchant"]["fen"] == 90_00 - 9_00  # the held 4.50 included: it was not shared
    assert ps["in_flight"]["fen"] == 0
    assert all(a["reconciles"] for a in s["accounts"])
    ledger_holds()


def test_a_sub_merchant_can_start_its_own_campaign_through_the_api(client, admin, make_merchant, make_campaign):  # noqa: F811
    shop = make_merchant()
    assert set_sub_mchid(client, admin, shop.id).status_code == 200
    campaign = make_campaign(
        {"roles": [TWO_WAY_CHANGE["roles"][1]]},  # the buyer's 5 %: a merchant issuer is not paid from its own sales
        status="draft",
        fund_deposit_fen=0,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        packet_amount_fen=10_00,
        packet_merchant_id=shop.id,
        budget_limit_fen=100_00,
    )
    activated = client.post(
        f"/admin/api/campaigns/{campaign.id}/activate", json={"reason": "launch"}, headers=keyed(admin)
    )
    assert activated.status_code == 200, activated.json
    # then: it runs from the merchant's own sales (no deposit was needed, none was taken)
    db.session.expire_all()
    campaign = db.session.get(type(campaign), campaign.id)
    assert (campaign.status, campaign.funded_from_sales) == ("active", True)
    deposit = client.get(f"/admin/api/campaigns/{campaign.id}", headers=admin)
    assert deposit.status_code == 200
