"""What undoes a share to a person, without the platform ever holding the merchant's money (二清).

A cash rebate a merchant funds from its own order money (service-provider mode, ``Campaign.funded_from_sales``)
reaches the person only by profit sharing. Two things can undo it:

- **The share comes back** (WeChat closed the receiver; an operator cancelled it or found it failed): the money
  is the merchant's again (``payouts.transitions.mark_returned`` books it to ``merchant_own_sales``, and the
  order's unfreeze hands it over). It first settles what the person owes that same merchant; the rest is no
  longer the person's: the rebate is reduced by it, its budget gets it back, and the person is told why.
- **A refund or a review claws the rebate back after the share reached the person**: a share to a person
  cannot be returned, so the person owes the merchant. That debt is a ``share`` receivable on the campaign and
  ``user_owes_merchants`` below zero, never the person's cash balance: the platform does not collect it from
  money it holds for the person. Only a later share from the same merchant to the same person nets it
  (``settle_share_debts``): the merchant keeps that money when its order is unfrozen.
"""

from __future__ import annotations

from sqlalchemy import select

from ledger import Leg, post_entry
from models import Payout, Rebate, RebateAdjustment, RebateStatus, db
from money import format_yuan
from payouts.transitions import on_share_returned, own_sales_ref
from rebate import budgets, tell
from rebate.awards import SHARE_DEBT, owes_ref, recover_receivables

__all__ = ["SHARE_DEBT", "owes_ref", "settle_share_debts", "share_came_back"]


def settle_share_debts(user_id: int, merchant_id: int, amount_fen: int) -> int:
    """Net up to ``amount_fen`` against what the person owes ``merchant_id`` for shares clawed back, oldest first
    (their campaigns' budgets get it back); returns what was settled. The caller posts it to ``owes_ref``."""
    return recover_receivables("user", user_id, SHARE_DEBT, amount_fen, merchant_id=merchant_id)


@on_share_returned
def share_came_back(payout: Payout, amount_fen: int, merchant_id: int) -> None:
    """``amount_fen`` of ``payout``'s share came back to ``merchant_id`` (already booked to its own sales)."""
    key = f"payout:{payout.id}:came-back"
    # first what a clawback left owed while this share was at WeChat (it never arrived: nothing was owed),
    # then what the person owes the merchant for shares that did arrive
    settled = recover_receivables("user", payout.user_id, SHARE_DEBT, amount_fen, payout_id=payout.id)
    settled += settle_share_debts(payout.user_id, merchant_id, amount_fen - settled)
    if settled:
        post_entry(
            f"{key}:settles",
            f"payout {payout.external_no} came back: it settles what the person owed the merchant",
            [Leg(own_sales_ref(merchant_id), -settled), Leg(owes_ref(payout.user_id), settled)],
        )
    if payout.rebate_id is None:
        return
    rebate = db.session.execute(select(Rebate).where(Rebate.id == payout.rebate_id).with_for_update()).scalar_one()
    kept = min(amount_fen - settled, rebate.amount_fen)
    if settled:
        rebate.reasons = [*rebate.reasons, f"{format_yuan(settled)} settled what you owed the merchant after a refund"]
    if kept <= 0:
        return
    budgets.release_committed(rebate.campaign_id, kept)
    rebate.amount_fen -= kept
    if rebate.amount_fen == 0 and rebate.held_fen == 0:
        rebate.status = RebateStatus.CLAWED_BACK
    why = f"WeChat did not deliver the share ({payout.status}): the merchant keeps {format_yuan(kept)}"
    db.session.add(
        RebateAdjustment(rebate_id=rebate.id, amount_fen=kept, recovered_fen=kept, receivable_fen=0, reason=why[:200])
    )
    tell.tell([tell.clawed_back(rebate, kept, key, "share_returned")])
    db.session.flush()
