"""Probe 18 of the merchants' half (deposits, fees and invoices, the service-provider fund flow and profit sharing,
statements): what was found wrong, each proved here."""

from __future__ import annotations

from sqlalchemy import select

from jobs.profit_sharing import query_profit_shares, share_due_orders
from ledger import check_ledger
from models import AccountKind, Alert, ProfitShareReceiver, db, utcnow
from tests.test_profit_sharing import (  # noqa: F401 - fixtures
    app_settings,
    bal,
    hold_passes,
    openid_of,
    payouts_of,
    results_are_due,
    share_of,
    sim,
    story,
)


def alerts(kind: str) -> list[Alert]:
    db.session.expire_all()
    return list(db.session.execute(select(Alert).where(Alert.kind == kind)).scalars())


def test_a_sub_merchant_whose_ratio_wechat_refuses_for_good_alerts_an_operator_instead_of_waiting_silently(
    app, story, sim
):
    # given: a paid profit-sharing order whose refund window has closed; the sub-merchant has since ended its
    # authorisation of the service provider, so WeChat refuses every question about it (400, nothing to retry)
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    sim.inject_fault("/v3/profitsharing/merchant-configs", 400, "NO_AUTH", "服务商与特约商户关系不存在", times=5)

    # when: the job runs on
    for _ in range(3):
        hold_passes(order.id)
        share_due_orders()

    # then: the share is stuck (its ratio can never be fetched, so it is never planned and its persons never paid;
    # WeChat unfreezes the money to the merchant after 180 days) and an operator is told, once
    assert share_of(order.id).kind is None
    assert {p.status for p in payouts_of(order.id).values()} == {"pending"}
    told = alerts("profit_share_ratio_refused")
    assert len(told) == 1 and shop.sub_mchid in told[0].subject and "NO_AUTH" in told[0].message


def test_a_receiver_whose_relation_was_removed_at_wechat_is_added_again_and_the_share_goes_through(app, story, sim):
    # given: a paid profit-sharing order due to be shared; both persons were added as receivers of the sub-merchant
    # by an earlier share (remembered here), and the relation has since been removed at WeChat (receivers/delete,
    # by the sub-merchant on its merchant platform): WeChat no longer knows them
    order, buyer, issuer, shop = story()
    share_due_orders()
    hold_passes(order.id)
    appid = app.config["WECHAT_APPID"]
    for user in (buyer, issuer):
        db.session.add(
            ProfitShareReceiver(
                sub_mchid=shop.sub_mchid,
                type="PERSONAL_OPENID",
                account=openid_of(user.id, appid),
                appid=appid,
                added_at=utcnow(),
            )
        )
    db.session.commit()
    assert not sim.ps_receivers.get(shop.sub_mchid)

    # when: the share is sent (WeChat: 分账接收方不存在) and the jobs run on
    share_due_orders()
    for _ in range(3):
        results_are_due(order.id)
        share_due_orders()
        query_profit_shares()

    # then: the receivers were added again and the persons were paid from the merchant's frozen order money; the
    # share did not wait for an operator who has nothing to act on (no share of this number ever existed)
    assert {p.status for p in payouts_of(order.id).values()} == {"succeeded"}
    assert share_of(order.id).status == "finished"
    assert len(sim.ps_receivers[shop.sub_mchid]) == 2
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    db.session.remove()
    assert check_ledger().ok
