"""Probe 19: the merchants' half and the wallet, as a merchant, an operator and WeChat would push on them."""

from __future__ import annotations

from jobs.profit_sharing import query_profit_shares, share_due_orders
from models import AccountKind, db
from tests.test_profit_sharing import (  # noqa: F401 - fixtures
    app_settings,
    bal,
    hold_passes,
    ledger_holds,
    payouts_of,
    results_are_due,
    share_of,
    sim,
    story,
)


def _ban(client, headers, user_id: int) -> int:
    answer = client.post(
        "/admin/api/bans",
        json={"subject": "user", "value": str(user_id), "reason": "collusion ring"},
        headers={**headers, "Idempotency-Key": f"ban-{user_id}"},
    )
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["id"]


def test_a_banned_persons_share_waits_for_the_ban_and_goes_out_once_it_is_lifted(
    app, story, sim, client, make_operator
):
    # given: a paid profit-sharing order whose merchant-funded rebates (issuer 9.00, buyer 4.50) wait for the share
    order, buyer, issuer, shop = story()
    _, admin = make_operator("admin")
    assert {p.status for p in payouts_of(order.id).values()} == {"pending"}
    # when: the issuer is banned before the refund window closes, and the window closes
    ban_id = _ban(client, admin, issuer.id)
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    # then: nothing is shared to a banned person (their payouts that never left wait until the ban is lifted), and
    # the share waits too: shared without them, the order's rest would be unfrozen to the merchant and their
    # payout could never leave by it
    payouts = payouts_of(order.id)
    assert payouts[issuer.id].status == "pending", (payouts[issuer.id].status, payouts[issuer.id].last_error)
    assert (share_of(order.id).status, share_of(order.id).kind) == ("pending", None)
    assert sim.frozen[order.transaction_id]["unsplit_fen"] == 90_00
    # when: the ban is lifted, and the share goes out
    lifted = client.delete(f"/admin/api/bans/{ban_id}", json={"reason": "a mistake"}, headers=admin)
    assert lifted.status_code == 200, lifted.get_json()
    hold_passes(order.id)
    share_due_orders()
    results_are_due(order.id)
    query_profit_shares()
    # then: both persons got their rebates from the merchant's order money, the rest went to the merchant
    payouts = payouts_of(order.id)
    assert {u: (p.status, p.amount_fen) for u, p in payouts.items()} == {
        issuer.id: ("succeeded", 9_00),
        buyer.id: ("succeeded", 4_50),
    }
    assert share_of(order.id).status == "finished"
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    db.session.remove()
    ledger_holds()


def test_an_operator_cancelling_the_banned_persons_payout_lets_the_share_go_to_the_others(
    app, story, sim, client, make_operator
):
    # given: the issuer banned while the order's share waits, and the window closed: the share waits for the ban
    order, buyer, issuer, shop = story()
    _, admin = make_operator("admin")
    _ban(client, admin, issuer.id)
    share_due_orders()
    hold_passes(order.id)
    share_due_orders()
    assert share_of(order.id).kind is None
    # when: an operator cancels the banned person's payout (the money is the merchant's again), and the share runs
    payout_id = payouts_of(order.id)[issuer.id].id
    cancelled = client.post(
        f"/admin/api/payouts/{payout_id}/cancel",
        json={"reason": "banned for collusion"},
        headers={**admin, "Idempotency-Key": "cancel-1"},
    )
    assert cancelled.status_code == 200, cancelled.get_json()
    hold_passes(order.id)
    share_due_orders()
    results_are_due(order.id)
    query_profit_shares()
    # then: the buyer got their rebate, the banned issuer nothing, and the rest of the order went to the merchant
    payouts = payouts_of(order.id)
    assert {u: p.status for u, p in payouts.items()} == {issuer.id: "cancelled", buyer.id: "succeeded"}
    assert (share_of(order.id).status, share_of(order.id).shared_fen) == ("finished", 4_50)
    assert bal(AccountKind.MERCHANT_FROZEN_SALES, "merchant", shop.id) == 0
    db.session.remove()
    ledger_holds()
