"""Campaign lookups shared by the operations: its rules, its funder's ledger account."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from ledger import account
from models import AccountKind, Campaign, CampaignRules, CampaignStatus, FunderType, LedgerAccount, db
from rebate.rules import RuleSet, parse_rules


def rules_of(campaign: Campaign, version: int | None = None) -> RuleSet:
    row = db.session.execute(
        select(CampaignRules).where(
            CampaignRules.campaign_id == campaign.id, CampaignRules.version == (version or campaign.rules_version)
        )
    ).scalar_one()
    return parse_rules(row.rules, budgeted=campaign.budget_limit_fen is not None)


def funder_account(campaign: Campaign) -> LedgerAccount:
    if campaign.funder_type == FunderType.MERCHANT_DEPOSIT:
        return account(AccountKind.MERCHANT_MARKETING_DEPOSIT, "merchant", campaign.funder_merchant_id)
    if campaign.funder_type == FunderType.USER_STAKE:
        return account(AccountKind.USER_STAKE, "user", campaign.funder_user_id)
    return account(AccountKind.PLATFORM_MARKETING_FUND)


def is_running(campaign: Campaign, now: datetime) -> bool:
    if campaign.status != CampaignStatus.ACTIVE:
        return False
    if campaign.starts_at and now < campaign.starts_at:
        return False
    return not (campaign.ends_at and now >= campaign.ends_at)
