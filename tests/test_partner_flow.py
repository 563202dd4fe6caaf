"""Service-provider fund flow (``FUND_FLOW=service_provider``) end to end on the simulator: a merchant's
sub-merchant number set by an admin, an order paid to it through the partner JSAPI (with profit sharing when a
merchant-funded campaign may pay a person cash), the partner notification, a partner refund, the order jobs; and
the refusals: a merchant without a sub_mchid, a discount the merchant does not fund, a notification for another
sub-merchant."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from jobs.orders import close_expired_orders, query_stuck_refunds, query_unnotified_payments
from ledger import check_ledger
from models import Order, RedPacket, Refund, User, UserIdentity, db, utcnow
from rebate import PayAccount, PaymentOutcome, apply_payment, begin_refund, issue_packet
from rebate.fund_flow import pay_to_sub_merchant
from tests.money_helpers import app_money
from tests.payment_helpers import wechat_payment
from tests.test_simulator_e2e import app_settings as sim_settings  # noqa: F401 - fixture chain
from tests.test_simulator_e2e import delivered, login, pay_at_checkout  # noqa: F401 - fixture
from tests.test_wechat_callbacks import count, deliver, no_network, simulator, transaction_resource  # noqa: F401 - fixture
from wechat.errors import WeChatNotFound

SUB_MCHID = "1900000109"
CASH_RULES = {
    "roles": [
        {"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 100_00},
        {"role": "consumer", "rate_bps": 500, "form": "balance", "cap_fen": 50_00},
    ]
}
PLATFORM_RULES = {"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]}


@pytest.fixture
def app_settings(sim_settings):  # noqa: F811
    return {**sim_settings, "FUND_FLOW": "service_provider"}


@pytest.fixture
def admin(make_operator):
    return make_operator("admin")[1]


def keyed(headers: dict) -> dict:
    return {**headers, "Idempotency-Key": uuid.uuid4().hex}


def set_sub_mchid(client, admin, merchant_id: int, **body):
    body = {"sub_mchid": SUB_MCHID, "reason": "onboarded as a sub-merchant", **body}
    return client.put(f"/admin/api/merchants/{merchant_id}/wechat-pay", json=body, headers=keyed(admin))


def merchant_campaign(make_campaign, shop, rules=CASH_RULES, **fields):
    packet = {"packet_amount_fen": 20_00, "packet_min_spend_fen": 50_00, "packet_merchant_id": shop.id}
    return make_campaign(
        rules,
        issuer_type="merchant",
        issuer_merchant_id=shop.id,
        funder_type="merchant_deposit",
        funder_merchant_id=shop.id,
        budget_limit_fen=1_000_00,
        **{**packet, **fields},
    )


def user_of(headers_name: str) -> User:
    return db.session.execute(
        select(User).join(UserIdentity).where(UserIdentity.openid == f"sim-openid-{headers_name}")
    ).scalar_one()


def give_packet(campaign, user: User) -> RedPacket:
    packet = issue_packet(campaign, user, source="test", source_ref=uuid.uuid4().hex, now=utcnow())
    db.session.commit()
    return packet


def order_body(product, packet=None) -> dict:
    body = {"lines": [{"product_id": product.id, "quantity": 1}]}
    return {**body, "red_packet_id": packet.id} if packet else body


# -- refusals ----------------------------------------------------------------------------------


def test_an_order_of_a_merchant_without_sub_mchid_is_409_and_nothing_is_written(
    client,
    make_product,
    no_network,  # noqa: F811
):
    alice = login(client, "alice")
    product = make_product(price_fen=5_000)
    response = client.post("/api/v1/orders", json=order_body(product), headers=alice)
    assert (response.status_code, response.json["error"]) == (409, "merchant_without_sub_mchid")
    assert count(Order) == 0


def test_a_platform_funded_packet_cannot_discount_a_sub_merchants_order(
    client,
    admin,
    make_product,
    make_campaign,
    no_network,  # noqa: F811
):
    # given: a platform-funded packet campaign activated before the switch to service-provider mode
    product = make_product(price_fen=5_000)
    assert set_sub_mchid(client, admin, product.merchant_id).status_code == 200
    campaign = make_campaign(PLATFORM_RULES, packet_amount_fen=10_00)
    alice = login(client, "alice")
    packet = give_packet(campaign, user_of("alice"))
    # when
    response = client.post("/api/v1/orders", json=order_body(product, packet), headers=alice)
    # then: refused with the compliant alternatives named; the packet is untouched
    assert (response.status_code, response.json["error"]) == (409, "discount_would_pool_money")
    assert "coupon stock" in response.json["message"] and "补差" in response.json["message"]
    assert count(Order) == 0
    db.session.rollback()
    assert db.session.get(RedPacket, packet.id).status == "issued"


def test_activating_a_platform_funded_packet_campaign_is_refused_in_service_provider_mode(
    client, admin, make_campaign, make_merchant
):
    platform_packets = make_campaign(PLATFORM_RULES, packet_amount_fen=10_00, status="draft")
    platform_awards = make_campaign(
        {"roles": [{"role": "consumer", "rate_bps": 100, "form": "balance", "cap_fen": 1_00}]},
        status="draft",
        budget_limit_fen=100_00,
    )
    refused = client.post(
        f"/admin/api/campaigns/{platform_packets.id}/activate", json={"reason": "launch"}, headers=keyed(admin)
    )
    assert (refused.status_code, refused.json["error"]) == (409, "discount_would_pool_money")
    allowed = client.post(
        f"/admin/api/campaigns/{platform_awards.id}/activate", json={"reason": "launch"}, headers=keyed(admin)
    )
    assert allowed.status_code == 200, allowed.json  # no discount: its rebates leave the platform's own account
    db.session.rollback()
    assert db.session.get(type(platform_packets), platform_packets.id).status == "draft"


def test_profit_sharing_is_only_asked_for_when_merchant_funded_cash_can_reach_a_person(
    make_merchant, make_product, make_campaign, make_user
):
    shop = make_merchant()
    shop.sub_mchid = SUB_MCHID
    product = make_product(shop, price_fen=10_000)
    credit_only = merchant_campaign(
        make_campaign, shop, {"roles": [{"role": "issuer", "rate_bps": 1000, "form": "merchant_credit", "cap_fen": 1}]}
    )
    buyer = make_user()
    from rebate import create_order
    from rebate.orders import LineRequest

    packet = give_packet(credit_only, buyer)
    order = create_order(buyer, [LineRequest(product.id, 1)], [packet.id], utcnow(), service_provider=True)
    assert (order.sub_mchid, order.profit_sharing) == (SUB_MCHID, False)
    merchant_campaign(
        make_campaign,
        shop,
        {
            "applies_to": "referral",
            "referral_days": 30,
            "roles": [{"role": "inviter", "rate_bps": 100, "form": "points", "cap_fen": 1_00}],
        },
        packet_amount_fen=None,
    )
    db.session.commit()
    plain = create_order(buyer, [LineRequest(product.id, 1)], None, utcnow(), service_provider=True)
    assert plain.profit_sharing is False  # a referral campaign with no person's cash rule
    change = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 50_00}]}
    cash = merchant_campaign(make_campaign, shop, change, funded_from_sales=True, fund_deposit_fen=0)
    pay_to_sub_merchant(plain)  # asked again: now a running merchant-funded campaign may pay cash?
    assert plain.profit_sharing is False  # a packet campaign pays only when its packet is spent
    second = create_order(
        buyer, [LineRequest(product.id, 1)], [give_packet(cash, buyer).id], utcnow(), service_provider=True
    )
    assert second.profit_sharing is True
    # a campaign still on its deposit (activated in direct mode) pays from the deposit: nothing to share
    on_deposit = merchant_campaign(make_campaign, shop, change)
    third = create_order(
        buyer, [LineRequest(product.id, 1)], [give_packet(on_deposit, buyer).id], utcnow(), service_provider=True
    )
    assert third.profit_sharing is False
    db.session.rollback()


# -- the worked example --------------------------------------------------------------------------


def test_worked_example_merchant_funded_packet_paid_to_the_sub_merchant_then_refunded(
    app,
    client,
    admin,
    make_merchant,
    make_product,
    make_campaign,
    make_operator,
    delivered,
    no_network,  # noqa: F811
):
    # given: a noodle house onboarded as sub-merchant 1900000109, its own campaign run from its sales (5 % change
    # to the consumer, shared from the order money; 20-yuan packets) and alice holding one of its packets
    shop = make_merchant("noodle house")
    bowl = make_product(shop, price_fen=100_00)
    assert set_sub_mchid(client, admin, shop.id).status_code == 200
    change = {"roles": [{"role": "consumer", "rate_bps": 500, "form": "wechat_change", "cap_fen": 50_00}]}
    campaign = merchant_campaign(make_campaign, shop, change, funded_from_sales=True, fund_deposit_fen=0)
    alice = login(client, "alice")
    packet = give_packet(campaign, user_of("alice"))

    # when: alice orders a 100-yuan bowl with the packet (pays 80)
    created = client.post("/api/v1/orders", json=order_body(bowl, packet), headers=alice)

    # then: the order is the sub-merchant's, opened with profit sharing, prepaid through the partner JSAPI
    assert created.status_code == 201, created.json
    assert created.json["payment"] is not None, created.json.get("payment_error")
    order = db.session.get(Order, created.json["id"])
    assert (order.sub_mchid, order.profit_sharing, order.payable_fen) == (SUB_MCHID, True, 80_00)
    sim = simulator(app)
    sent = sim.orders[order.out_trade_no]["request"]
    assert sent["sp_mchid"] == app.config["WECHAT_MCHID"] and sent["sp_appid"] == app.config["WECHAT_APPID"]
    assert sent["sub_mchid"] == SUB_MCHID and sent["settle_info"] == {"profit_sharing": True}
    assert sent["payer"] == {"sp_openid": "sim-openid-alice"} and "appid" not in sent
    assert sent["amount"] == {"total": 80_00, "currency": "CNY"}

    # when: she pays and the signed partner notification arrives
    transaction = pay_at_checkout(client, created.json["payment"])
    delivered()

    # then: the notification carried the partner fields; the order is paid, the rebate computed
    assert transaction["sub_mchid"] == SUB_MCHID and "mchid" not in transaction
    [delivery] = sim.dispatcher.deliveries
    assert delivery.statuses == [204]
    order = db.session.get(Order, order.id)
    assert (order.status, order.paid_fen, order.profit_sharing) == ("paid", 80_00, True)
    rebates = client.get(f"/api/v1/orders/{order.id}", headers=alice).json
    assert rebates["status"] == "paid"
    from models import Rebate

    got = {r.role: r for r in db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars()}
    assert got["consumer"].amount_fen == 4_00

    # when: finance refunds 30 yuan through the partner refund
    finance = make_operator("finance")[1]
    refund = client.post(
        f"/admin/api/orders/{order.id}/refunds", json={"amount_fen": 30_00, "reason": "cold"}, headers=keyed(finance)
    )
    assert refund.status_code == 201, refund.json
    delivered()

    # then: WeChat was told the sub-merchant; its REFUND.SUCCESS (sp_mchid + sub_mchid) was applied
    kept = sim.refunds[refund.json["out_refund_no"]]
    assert kept["sub_mchid"] == SUB_MCHID
    assert sim.refund_notify_view(kept)["sub_mchid"] == SUB_MCHID
    assert db.session.get(Refund, refund.json["id"]).status == "succeeded"
    assert db.session.get(Order, order.id).refunded_fen == 30_00
    got = {r.role: r for r in db.session.execute(select(Rebate).where(Rebate.order_id == order.id)).scalars()}
    assert got["consumer"].amount_fen == 2_50  # 5 % of the 50 yuan left, rounded down
    assert check_ledger().ok  # (and the app fixture checks it again after the test)


def partner_resource(app, order: Order, **changes) -> dict:
    """A paid partner transaction as WeChat's TRANSACTION.SUCCESS resource carries it: the direct one with
    ``sp_appid``/``sp_mchid`` for ``appid``/``mchid``, the sub-merchant, and the payer as ``sp_openid``."""
    direct = transaction_resource(app, order)
    resource = {k: v for k, v in direct.items() if k not in ("appid", "mchid", "payer")}
    resource.update(sp_appid=direct["appid"], sp_mchid=direct["mchid"], sub_mchid=SUB_MCHID)
    resource["payer"] = {"sp_openid": direct["payer"]["openid"]}
    return {**resource, **changes}


@pytest.mark.parametrize("wrong", [{"sub_mchid": "1900000999"}, {"sp_mchid": "1900000999"}])
def test_a_notification_for_another_sub_merchant_is_refused_and_flagged(
    app,
    client,
    admin,
    make_product,
    no_network,  # noqa: F811
    wrong,
):
    # given: an order of sub-merchant 1900000109
    product = make_product(price_fen=50_00)
    assert set_sub_mchid(client, admin, product.merchant_id).status_code == 200
    alice = login(client, "alice")
    created = client.post("/api/v1/orders", json=order_body(product), headers=alice)
    assert created.status_code == 201
    order = db.session.get(Order, created.json["id"])
    db.session.commit()
    # when: a correctly signed TRANSACTION.SUCCESS names another sub-merchant (or service provider)
    response = deliver(client, app, partner_resource(app, order, **wrong))
    # then: refused (WeChat retries), the order flagged for review, nothing paid
    assert response.status_code == 400
    db.session.rollback()
    order = db.session.get(Order, order.id)
    assert order.status == "created" and order.review_reason and "1900000999" in order.review_reason
    # and the right notification is still applied
    assert deliver(client, app, partner_resource(app, order)).status_code == 204
    db.session.rollback()
    assert db.session.get(Order, order.id).status == "paid"


def test_the_intake_compares_the_sub_merchant(app, make_product, make_user):
    product = make_product(price_fen=10_00)
    from models import Merchant
    from rebate import create_order
    from rebate.orders import LineRequest

    db.session.get(Merchant, product.merchant_id).sub_mchid = SUB_MCHID
    order = create_order(make_user(), [LineRequest(product.id, 1)], None, utcnow(), service_provider=True)
    db.session.commit()
    account = PayAccount.from_config(app.config)
    direct = wechat_payment(order.out_trade_no, "tx-1", 10_00)  # a direct transaction for a partner order
    assert apply_payment(direct, account, utcnow(), money=app_money()) == PaymentOutcome.MISMATCH_FLAGGED
    right = wechat_payment(order.out_trade_no, "tx-1", 10_00, sub_mchid=SUB_MCHID)
    assert apply_payment(right, account, utcnow(), money=app_money()) == PaymentOutcome.APPLIED
    db.session.commit()


# -- the order jobs ask the partner endpoints -----------------------------------------------------


def test_jobs_query_and_close_partner_orders(app, client, admin, make_product, no_network, monkeypatch):  # noqa: F811
    product = make_product(price_fen=30_00)
    assert set_sub_mchid(client, admin, product.merchant_id).status_code == 200
    alice = login(client, "alice")
    paid = client.post("/api/v1/orders", json=order_body(product), headers=alice).json
    unpaid = client.post("/api/v1/orders", json=order_body(product), headers=alice).json
    sim = simulator(app)
    sim.dispatcher.stop()  # no notification leaves WeChat in this test: the jobs must ask
    monkeypatch.setattr(sim, "notify", lambda *_args, **_kwargs: None)
    sim.pay(sim.orders[paid["out_trade_no"]]["prepay_id"])
    db.session.execute(update(Order).where(Order.id == paid["id"]).values(prepay_at=utcnow() - timedelta(minutes=5)))
    db.session.execute(
        update(Order).where(Order.id == unpaid["id"]).values(time_expire=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()
    assert query_unnotified_payments() == {"applied": 1}
    assert close_expired_orders() == {"closed": 1}
    assert db.session.get(Order, paid["id"]).status == "paid"
    assert sim.orders[unpaid["out_trade_no"]]["trade_state"] == "CLOSED"
    db.session.commit()
    with pytest.raises(WeChatNotFound):  # asked the direct way, WeChat knows no such order of ours
        app.extensions["wechat"].pay.query_order(paid["out_trade_no"])

    # when: a refund we recorded never reached WeChat; the refund job asks (partner query), then sends it again
    refund = begin_refund(db.session.get(Order, paid["id"]), "RPARTNER1", 10_00, "late")
    refund.created_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    assert query_stuck_refunds() == {"processing": 1}
    # then: WeChat holds the refund for the order's sub-merchant
    assert sim.refunds["RPARTNER1"]["sub_mchid"] == SUB_MCHID
    assert sim.query_partner_refund("RPARTNER1", SUB_MCHID)["status"] in ("PROCESSING", "SUCCESS")


# -- `FUND_FLOW=service_provider make run` ------------------------------------------------------------


def test_the_demo_in_service_provider_mode_pays_the_shop_as_a_sub_merchant(
    app,
    client,
    delivered,  # noqa: F811
    no_network,  # noqa: F811
):
    # given: the demo data seeded in service-provider mode
    from models import Merchant, Product
    from web.demo import DEMO_SUB_MCHID, seed

    result = seed(service_provider=True)
    db.session.commit()
    shop = db.session.get(Merchant, result["merchant_id"])
    assert shop.sub_mchid == DEMO_SUB_MCHID
    noodles = db.session.execute(select(Product).where(Product.name == "Beef noodles")).scalar_one()
    # when: a newcomer claims a code and spends it on the shop's noodles
    alice = login(client, "alice")
    claimed = client.post("/api/v1/red-packets/claim", json={"code": result["codes"][0]}, headers=alice)
    assert claimed.status_code == 201, claimed.json
    created = client.post(
        "/api/v1/orders", json=order_body(noodles, db.session.get(RedPacket, claimed.json["id"])), headers=alice
    )
    assert created.status_code == 201, created.json
    pay_at_checkout(client, created.json["payment"])
    delivered()
    # then: paid to the shop's sub-merchant number, with profit sharing (its 8 % cash back to alice)
    order = db.session.get(Order, created.json["id"])
    assert (order.status, order.sub_mchid, order.profit_sharing) == ("paid", DEMO_SUB_MCHID, True)
    assert simulator(app).orders[order.out_trade_no]["request"]["sub_mchid"] == DEMO_SUB_MCHID


def test_a_person_signed_in_to_the_merchants_own_app_pays_as_its_sub_openid(
    app,
    client,
    admin,
    make_product,
    no_network,  # noqa: F811
):
    # given: the merchant has its own mini-program, and alice signed in to it too
    from wechat import crypto

    product = make_product(price_fen=20_00)
    sub_appid = "wxabcdef0123456789"
    assert set_sub_mchid(client, admin, product.merchant_id, sub_appid=sub_appid).status_code == 200
    alice = login(client, "alice")
    db.session.add(UserIdentity(user_id=user_of("alice").id, appid=sub_appid, openid="sub-openid-alice"))
    db.session.commit()
    # when
    created = client.post("/api/v1/orders", json=order_body(product), headers=alice)
    # then: sub_appid and the sub_openid went to WeChat, and the pay parameters are signed for sub_appid
    assert created.status_code == 201, created.json
    sent = simulator(app).orders[created.json["out_trade_no"]]["request"]
    assert (sent["sub_appid"], sent["payer"]) == (sub_appid, {"sub_openid": "sub-openid-alice"})
    params = created.json["payment"]["pay_params"]
    message = f"{sub_appid}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    assert crypto.verify_rsa(message, params["paySign"], simulator(app).merchant_public_key)


def test_someone_signed_in_only_to_our_app_pays_as_sp_openid_without_sub_appid(
    app,
    client,
    admin,
    make_product,
    no_network,  # noqa: F811
):
    product = make_product(price_fen=20_00)
    assert set_sub_mchid(client, admin, product.merchant_id, sub_appid="wxabcdef0123456789").status_code == 200
    created = client.post("/api/v1/orders", json=order_body(product), headers=login(client, "bob"))
    assert created.status_code == 201, created.json
    sent = simulator(app).orders[created.json["out_trade_no"]]["request"]
    assert sent["payer"] == {"sp_openid": "sim-openid-bob"} and "sub_appid" not in sent


def test_a_sub_merchants_nocash_coupon_leaves_only_the_settled_part_frozen(
    app,
    client,
    admin,
    make_product,
    no_network,  # noqa: F811
):
    """A 免充值 coupon paid to a sub-merchant is the sub-merchant's own: WeChat freezes (and profit sharing can
    share) only what it settled, and a refund takes only the settled share of it back out of that."""
    from ledger import account, balance
    from models import AccountKind

    product = make_product(price_fen=100_00)
    assert set_sub_mchid(client, admin, product.merchant_id).status_code == 200
    created = client.post("/api/v1/orders", json=order_body(product), headers=login(client, "alice"))
    order = db.session.get(Order, created.json["id"])
    db.session.commit()
    coupon = [{"coupon_id": "C1", "type": "NOCASH", "amount": 20_00, "scope": "GLOBAL"}]
    resource = partner_resource(app, order, promotion_detail=coupon)
    resource["amount"] = {**resource["amount"], "payer_total": 80_00}
    assert deliver(client, app, resource).status_code == 204
    db.session.rollback()
    order = db.session.get(Order, order.id)
    from models import LedgerEntry, LedgerPosting

    frozen = account(AccountKind.MERCHANT_FROZEN_SALES, "merchant", order.merchant_id)
    own = account(AccountKind.MERCHANT_OWN_SALES, "merchant", order.merchant_id)
    assert (order.status, order.unsettled_coupon_fen, order.frozen_fen) == ("paid", 20_00, 0)  # no sharing: released
    sale = db.session.execute(
        select(LedgerPosting.amount)
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerEntry.idempotency_key == f"order:{order.id}:sale", LedgerPosting.account_id == frozen.id)
    ).scalar_one()
    assert sale == -80_00  # WeChat froze what it settled: the total less the sub-merchant's own coupon
    assert balance(frozen) == balance(own) == 0  # and released it all to the merchant
    assert check_ledger().ok
