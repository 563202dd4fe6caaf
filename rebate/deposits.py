"""Merchant marketing deposits: what a merchant-funded campaign may spend.

A merchant tops up its deposit (WeChat settlement → deposit); every packet
discount and rebate of its campaigns is paid from it. A campaign never commits
more than the deposit holds: activation needs money in it, and each payment
limits its awards to what is left (reason "deposit exhausted"), under a row
lock on the deposit's account so concurrent payments cannot both spend the
last of it. When it runs dry the campaign is paused and an operator alerted.
"""

from __future__ import annotations

from sqlalchemy import select

from ledger import Leg, account, balance, post_entry
from models import AccountKind, Campaign, CampaignStatus, FunderType, LedgerAccount, alert_once, db
from rebate.errors import Invalid


def deposit_account(merchant_id: int) -> LedgerAccount:
    return account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id)


def top_up(merchant_id: int, amount_fen: int, key: str, memo: str) -> int:
    """Record money a merchant paid in for its marketing deposit; returns the deposit's balance."""
    if amount_fen <= 0:
        raise Invalid("a top-up must be a positive amount of fen", code="invalid_amount")
    deposit = deposit_account(merchant_id)
    post_entry(
        f"deposit:{merchant_id}:{key}",
        memo,
        [Leg(account(AccountKind.WECHAT_SETTLEMENT), -amount_fen), Leg(deposit, amount_fen)],
    )
    return balance(deposit)


def lock_deposits(campaigns: list[Campaign]) -> None:
    """Row-lock the deposits funding these campaigns, in merchant id order (no deadlocks): one spender at a time."""
    merchants = sorted({c.funder_merchant_id for c in campaigns if c.funder_type == FunderType.MERCHANT_DEPOSIT})
    for merchant_id in merchants:
        deposit = deposit_account(merchant_id)
        db.session.execute(select(LedgerAccount.id).where(LedgerAccount.id == deposit.id).with_for_update())


def held_in_deposit(campaign: Campaign) -> int | None:
    """What the campaign's funding deposit holds now (None: the campaign is not merchant-funded)."""
    if campaign.funder_type != FunderType.MERCHANT_DEPOSIT:
        return None
    return balance(deposit_account(campaign.funder_merchant_id))


class DepositsLeft:
    """What each funding deposit still holds while one payment spends from it (read once, then counted down)."""

    def __init__(self):
        self.left: dict[int, int] = {}

    def of(self, campaign: Campaign) -> int | None:
        if campaign.funder_type != FunderType.MERCHANT_DEPOSIT:
            return None
        merchant_id = campaign.funder_merchant_id
        if merchant_id not in self.left:
            self.left[merchant_id] = held_in_deposit(campaign)
        return self.left[merchant_id]

    def spend(self, campaign: Campaign, amount_fen: int) -> None:
        """Count an award down; a campaign whose deposit is now dry is paused (and an operator alerted)."""
        left = self.of(campaign)
        if left is None:
            return
        self.left[campaign.funder_merchant_id] = left - amount_fen
        pause_when_dry(campaign, left - amount_fen)


def pause_when_dry(campaign: Campaign, left_fen: int) -> None:
    """Pause a running campaign whose deposit holds nothing more, and alert once."""
    if left_fen > 0 or campaign.status != CampaignStatus.ACTIVE:
        return
    campaign.status = CampaignStatus.PAUSED
    alert_once(
        "deposit_exhausted",
        f"campaign {campaign.id}",
        text=f"merchant {campaign.funder_merchant_id}'s marketing deposit is exhausted ({left_fen} fen): "
        f"campaign {campaign.id} paused until it is topped up",
    )
