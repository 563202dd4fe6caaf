"""Campaign lookups shared by the operations: its rules, its funder's ledger account."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select, tuple_

from ledger import AccountRef, account, ref
from models import AccountKind, Campaign, CampaignRules, CampaignStatus, FunderType, LedgerAccount, db
from models.caches import CommittedCache
from rebate.rules import RuleSet, parse_rules

# (campaign id, version, budgeted) → RuleSet. Rule versions never change once written, so a committed
# version's parse holds for the life of the process (one cache per database: tests make many).
_RULES = CommittedCache("parsed_rules")


def _rules_key(campaign: Campaign, version: int | None) -> tuple[int, int, bool]:
    return (campaign.id, version or campaign.rules_version, campaign.budget_limit_fen is not None)


def rules_of(campaign: Campaign, version: int | None = None) -> RuleSet:
    """A campaign's rules at a version, parsed once per process (rule versions never change once written)."""
    key = _rules_key(campaign, version)
    found = _RULES.get(key)
    if found is None:
        load_rules([(campaign, version)])
        found = _RULES.get(key)
    return found


def load_rules(wanted: Iterable[tuple[Campaign, int | None]]) -> None:
    """Parse the rules of every (campaign, version) not known yet, read in one statement."""
    keys = {_rules_key(c, v) for c, v in wanted}
    missing = keys - _RULES.get_many(keys).keys()
    if not missing:
        return
    pairs = sorted({(cid, version) for cid, version, _ in missing})
    rows = db.session.execute(
        select(CampaignRules.campaign_id, CampaignRules.version, CampaignRules.rules).where(
            tuple_(CampaignRules.campaign_id, CampaignRules.version).in_(pairs)
        )
    ).all()
    stored = {(cid, version): rules for cid, version, rules in rows}
    for key in missing:
        if (key[0], key[1]) not in stored:
            raise LookupError(f"campaign {key[0]} has no rules version {key[1]}")
    _RULES.learn({key: parse_rules(stored[key[0], key[1]], budgeted=key[2]) for key in missing})


def funder_ref(campaign: Campaign) -> AccountRef:
    """The account paying the campaign's rebates, by name (resolved when a ledger batch is written).

    A user-staked campaign (a challenge loser's packet) pays only its packets' face value from the stake
    (``face_funder_ref``); the rebates its packets earn (the loser's share back) are the platform's marketing,
    so a stake never pays its own owner and never more than it holds."""
    if campaign.funder_type == FunderType.MERCHANT_DEPOSIT:
        kind = AccountKind.MERCHANT_OWN_SALES if campaign.funded_from_sales else AccountKind.MERCHANT_MARKETING_DEPOSIT
        return ref(kind, "merchant", campaign.funder_merchant_id)
    return ref(AccountKind.PLATFORM_MARKETING_FUND)


def own_price(campaign: Campaign, merchant_id: int | None) -> bool:
    """Whether the packets of ``campaign`` are funded by merchant ``merchant_id`` itself (from its sales or from
    its deposit): on that merchant's partner order such a packet is simply a lower price, charged at WeChat, and
    no money moves for it (nor returns on a refund)."""
    return campaign.funder_type == FunderType.MERCHANT_DEPOSIT and campaign.funder_merchant_id == merchant_id


def face_funder_ref(campaign: Campaign) -> AccountRef:
    """The account paying a packet's face value (the discount): the stake of a user-staked campaign's person."""
    if campaign.funder_type == FunderType.USER_STAKE:
        return ref(AccountKind.USER_STAKE, "user", campaign.funder_user_id)
    return funder_ref(campaign)


def funder_account(campaign: Campaign, *, face: bool = False) -> LedgerAccount:
    """The campaign's funding account (of its rebates; ``face``: of its packets' value), loaded (created if
    missing)."""
    funder = face_funder_ref(campaign) if face else funder_ref(campaign)
    return account(funder.kind, funder.owner_type, funder.owner_id)


def merchant_of(campaign: Campaign) -> int | None:
    """The merchant whose campaign this is (its deposit funds it, or it issues it); None for the platform's."""
    if campaign.funder_type == FunderType.MERCHANT_DEPOSIT:
        return campaign.funder_merchant_id
    return campaign.issuer_merchant_id


def serves(campaign: Campaign, merchant_id: int) -> bool:
    """A merchant's campaign applies only to its own orders; the platform's apply to every merchant's."""
    owner = merchant_of(campaign)
    return owner is None or owner == merchant_id


def is_running(campaign: Campaign, now: datetime) -> bool:
    if campaign.status != CampaignStatus.ACTIVE:
        return False
    if campaign.starts_at and now < campaign.starts_at:
        return False
    return not (campaign.ends_at and now >= campaign.ends_at)
