"""Campaign lookups shared by the operations: its rules, its funder's ledger account."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from ledger import account
from models import AccountKind, Campaign, CampaignRules, CampaignStatus, FunderType, LedgerAccount, db
from rebate.rules import RuleSet, parse_rules

RULES_CACHE = "parsed_rules"


def rules_of(campaign: Campaign, version: int | None = None) -> RuleSet:
    """A campaign's rules at a version, parsed once per session (rule versions never change once written)."""
    version = version or campaign.rules_version
    key = (campaign.id, version, campaign.budget_limit_fen is not None)
    cache = db.session.info.setdefault(RULES_CACHE, {})
    if key not in cache:
        row = db.session.execute(
            select(CampaignRules).where(CampaignRules.campaign_id == campaign.id, CampaignRules.version == version)
        ).scalar_one()
        cache[key] = parse_rules(row.rules, budgeted=key[2])
    return cache[key]


@event.listens_for(Session, "after_rollback")
def _forget_rules(session: Session) -> None:
    """A rolled-back campaign may leave its id to another one: parsed rules never outlive a rollback."""
    session.info.pop(RULES_CACHE, None)


def funder_account(campaign: Campaign) -> LedgerAccount:
    if campaign.funder_type == FunderType.MERCHANT_DEPOSIT:
        return account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", campaign.funder_merchant_id)
    if campaign.funder_type == FunderType.USER_STAKE:
        return account(AccountKind.USER_STAKE, "user", campaign.funder_user_id)
    return account(AccountKind.PLATFORM_MARKETING_FUND)


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
