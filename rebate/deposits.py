"""Merchant marketing deposits: what a merchant-funded campaign may spend.

A merchant tops up its deposit (WeChat settlement → deposit); every packet
discount and rebate of its campaigns is paid from it. A campaign never commits
more than the deposit holds: activation (and raising a running campaign's
budget) needs money in it; each packet issued or claimed reserves its face
value and largest rebate, and is refused (``deposit_exhausted``) unless the
deposit covers every live reservation and every rebate still held (for
milestones or a risk review) of every campaign the merchant funds together
with this one; and each payment limits the awards its packets did not
reserve to what the deposit holds beyond those (reason "deposit exhausted"). All of it under a row lock on the deposit's
account, so concurrent claims and payments cannot both spend the last of it.
When it runs dry (or refuses a packet) the campaign is paused and an operator
alerted.

Unspent deposit money goes back to the merchant by a withdrawal (``withdraw``, proposed and approved by two
operators in ``rebate.deposit_ops``): under the same row lock, never what its live packets and held rebates are
promised (``reserved_against``), so a withdrawal racing a claim or a payment never leaves a promise uncovered.

A campaign activated in service-provider mode (``funded_from_sales``) has no deposit: its rebates leave the
merchant's own order money by profit sharing, within the merchant's maximum ratio (``payouts.profit_share``),
and its budget is its only cap. None of the checks here apply to it.
"""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select, update

from ledger import Leg, account, balance, balance_if_any, existing_account_id, post_entry, ref
from models import (
    AccountKind,
    Campaign,
    CampaignStatus,
    FunderType,
    LedgerAccount,
    LedgerEntry,
    LedgerPosting,
    Rebate,
    alert_once,
    db,
)
from rebate.errors import DepositExhausted, Invalid, StateConflict


def deposit_funded(campaign: Campaign) -> bool:
    """The campaign spends from its merchant's marketing deposit (not the platform's, not from sales)."""
    return campaign.funder_type == FunderType.MERCHANT_DEPOSIT and not campaign.funded_from_sales


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


def withdrawable(merchant_id: int) -> tuple[int, int, int]:
    """(what the deposit holds, what of it is promised: live packets' reservations and held rebates, what the
    merchant paid into it: ``paid_in``). A read: it creates no account and takes no lock (``withdraw`` checks again
    under the lock)."""
    deposit = ref(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", merchant_id)
    found = existing_account_id(deposit)
    if found is None:  # never used: nothing held, nothing paid in
        return 0, reserved_against(merchant_id), 0
    return balance_if_any(deposit), reserved_against(merchant_id), paid_in(merchant_id, found)


def paid_in(merchant_id: int, deposit_id: int) -> int:
    """What the merchant itself paid into its deposit and has not taken back: its top-ups (``deposit:<m>:…``) less
    its withdrawals (``deposit-withdrawal:<m>:…``). Money that came in any other way (marketing credit spent into
    it, ``credit:…``; a campaign's unspent budget returned) is for the platform's costs only and never leaves as a
    bank transfer. One statement over the deposit's postings (an operator's rare read)."""
    mine = or_(
        LedgerEntry.idempotency_key.startswith(f"deposit:{merchant_id}:", autoescape=True),
        LedgerEntry.idempotency_key.startswith(f"deposit-withdrawal:{merchant_id}:", autoescape=True),
    )
    stmt = (
        select(func.coalesce(func.sum(LedgerPosting.amount), 0))
        .join(LedgerEntry, LedgerEntry.id == LedgerPosting.entry_id)
        .where(LedgerPosting.account_id == deposit_id, mine)
    )
    return int(db.session.execute(stmt).scalar_one())


def withdraw(merchant_id: int, amount_fen: int, key: str, memo: str) -> int:
    """Pay ``amount_fen`` of the merchant's deposit back to it (by bank transfer); returns the deposit's balance.

    Top-ups in reverse: the deposit down, ``wechat_settlement`` (the platform's money in its account) up, under
    ledger key ``deposit-withdrawal:<merchant>:<key>``. The deposit's row is locked first, as every claim and
    payment spending it locks it, and what it holds beyond every live packet's reservation and every held rebate
    of the campaigns it funds must cover the amount, else ``StateConflict`` (409 ``withdrawal_exceeds_available``)
    before anything is written."""
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise Invalid("a withdrawal must be a positive amount of fen", code="invalid_amount")
    deposit = deposit_account(merchant_id)
    db.session.execute(select(LedgerAccount.id).where(LedgerAccount.id == deposit.id).with_for_update())
    held, promised = balance(deposit), reserved_against(merchant_id)
    refuse_beyond_free(merchant_id, amount_fen, held, promised, paid_in(merchant_id, deposit.id))
    post_entry(
        f"deposit-withdrawal:{merchant_id}:{key}",
        memo,
        [Leg(deposit, -amount_fen), Leg(account(AccountKind.WECHAT_SETTLEMENT), amount_fen)],
    )
    return balance(deposit)


def refuse_beyond_free(merchant_id: int, amount_fen: int, held: int, promised: int, own: int) -> None:
    """``StateConflict`` when ``amount_fen`` is more than the deposit holds beyond what it promised (409
    ``withdrawal_exceeds_available``), or more than the merchant paid in and has not withdrawn (``own``, 409
    ``withdrawal_exceeds_paid_in``: marketing credit spent into the deposit never leaves as cash)."""
    free = max(0, held - promised)
    if amount_fen > free:
        raise StateConflict(
            f"merchant {merchant_id}'s marketing deposit holds {held} fen, {promised} fen of it promised to live "
            f"packets and held rebates: {free} fen may be withdrawn, not {amount_fen} fen",
            code="withdrawal_exceeds_available",
        )
    if amount_fen > max(0, own):
        raise StateConflict(
            f"merchant {merchant_id} paid {max(0, own)} fen into its marketing deposit that it has not withdrawn: "
            f"not {amount_fen} fen (money that came in otherwise, such as marketing credit, is for the platform's "
            "costs and is never paid out)",
            code="withdrawal_exceeds_paid_in",
        )


def lock_deposits(campaigns: list[Campaign]) -> dict[int, LedgerAccount]:
    """Row-lock the deposits funding these campaigns, in merchant id order (no deadlocks): one spender at a time.

    Returns the locked deposit accounts by merchant id."""
    merchants = sorted({c.funder_merchant_id for c in campaigns if deposit_funded(c)})
    locked = {}
    for merchant_id in merchants:
        deposit = locked[merchant_id] = deposit_account(merchant_id)
        db.session.execute(select(LedgerAccount.id).where(LedgerAccount.id == deposit.id).with_for_update())
    return locked


def held_in_deposit(campaign: Campaign) -> int | None:
    """What the campaign's funding deposit holds now (None: the campaign is not merchant-funded)."""
    if not deposit_funded(campaign):
        return None
    return balance(deposit_account(campaign.funder_merchant_id))


def reserved_against(merchant_id: int) -> int:
    """What every campaign this merchant funds has promised from its deposit and not yet paid: its live
    packets' reservations, and its rebates still held (for milestones, or for a risk review: committed to
    the budget, paid from the deposit when released). One statement; the held rebates are read through
    the partial index ``ix_rebates_held_campaign``."""
    funded = and_(
        Campaign.funder_type == FunderType.MERCHANT_DEPOSIT,
        Campaign.funder_merchant_id == merchant_id,
        Campaign.funded_from_sales.is_(False),
    )
    reserved = select(func.coalesce(func.sum(Campaign.budget_reserved_fen), 0)).where(funded).scalar_subquery()
    held = (
        select(func.coalesce(func.sum(Rebate.held_fen), 0))
        .join(Campaign, Campaign.id == Rebate.campaign_id)
        .where(funded, Rebate.held_fen > 0)
        .scalar_subquery()
    )
    return int(db.session.execute(select(reserved + held)).scalar_one())


def cover_reservation(campaign: Campaign, reserved_fen: int) -> None:
    """After ``campaign``'s budget took ``reserved_fen`` for a packet: refuse it unless the deposit covers it.

    The deposit's account row is locked first (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises anyway),
    so of concurrent claims against one deposit each sees the reservations of those before it. The
    campaign's row is already locked by its budget UPDATE: campaign, then deposit, as payments lock.
    Raises ``DepositExhausted``; the caller rolls back and calls ``pause_refused``.
    """
    if not deposit_funded(campaign) or not reserved_fen:
        return
    held = balance(lock_deposits([campaign])[campaign.funder_merchant_id])
    reserved = reserved_against(campaign.funder_merchant_id)  # includes this packet's reservation
    if reserved > held:
        raise DepositExhausted(
            f"merchant {campaign.funder_merchant_id}'s marketing deposit holds {held} fen; its live packets "
            f"with this one and its held rebates would take {reserved} fen",
            campaign_id=campaign.id,
        )


def pause_refused(campaign_id: int) -> None:
    """After a packet was refused for the deposit (and rolled back): pause the campaign, alert once."""
    campaign = db.session.get(Campaign, campaign_id)
    _pause(campaign, f"cannot cover another packet of campaign {campaign_id}")


class DepositsLeft:
    """What each funding deposit still holds while one payment spends from it (read once, then counted down).

    What the deposit holds beyond the live reservations of packets *not* spent on this order and the
    rebates still held (for milestones or a review): those stay covered. The spent packets' own
    reservations (what is left of them after their discounts) are free for this order's awards.
    """

    def __init__(self, spent_reserved: dict[int, int] | None = None):
        self.left: dict[int, int] = {}
        self.spent_reserved = spent_reserved or {}  # merchant id → reserved by packets spent on this order

    def of(self, campaign: Campaign) -> int | None:
        if not deposit_funded(campaign):
            return None
        merchant_id = campaign.funder_merchant_id
        if merchant_id not in self.left:
            others = reserved_against(merchant_id) - self.spent_reserved.get(merchant_id, 0)
            self.left[merchant_id] = held_in_deposit(campaign) - max(0, others)
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
    _pause(campaign, f"is exhausted ({left_fen} fen)")


def _pause(campaign: Campaign, why: str) -> None:
    """Pause the campaign if it is still running (one conditional UPDATE) and alert once per campaign."""
    db.session.flush()
    paused = db.session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.status == CampaignStatus.ACTIVE)
        .values(status=CampaignStatus.PAUSED, paused_for_deposit=True)
        .execution_options(synchronize_session=False)
    ).rowcount
    if paused:
        db.session.expire(campaign, ["status", "paused_for_deposit"])
    done = "paused until it is topped up" if paused else "was stopped already (by an operator, say)"
    alert_once(
        "deposit_exhausted",
        f"campaign {campaign.id}",
        text=f"merchant {campaign.funder_merchant_id}'s marketing deposit {why}: campaign {campaign.id} {done}",
    )
