"""Campaigns: who issues, who funds, the budget counters and versioned rules.

Budget invariant, kept by the database: reserved + committed <= limit (when a
limit is set), both never negative. Counters move only through conditional
UPDATEs in ``rebate/budgets.py``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    event,
    false,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column, validates

from models.base import Base, UTCDateTime, utcnow
from models.triggers import Trigger, TriggerError


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ENDED = "ended"


class IssuerType(StrEnum):
    PLATFORM = "platform"
    MERCHANT = "merchant"
    USER = "user"


class FunderType(StrEnum):
    PLATFORM_FUND = "platform_fund"
    MERCHANT_DEPOSIT = "merchant_deposit"
    USER_STAKE = "user_stake"


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.DRAFT)
    issuer_type: Mapped[str] = mapped_column(String(16))
    issuer_merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"))
    issuer_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    funder_type: Mapped[str] = mapped_column(String(24))
    funder_merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"))
    funder_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # Service-provider mode: a merchant-funded campaign activated there pays from the merchant's own order
    # money at WeChat (``merchant_own_sales``, by profit sharing), never from a deposit the platform holds.
    funded_from_sales: Mapped[bool] = mapped_column(default=False, server_default=false())
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    budget_limit_fen: Mapped[int | None] = mapped_column(BigInteger)
    budget_reserved_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    budget_committed_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    rules_version: Mapped[int] = mapped_column(default=1)
    # The packet this campaign issues (None: it only awards, e.g. a referral campaign).
    packet_amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    packet_min_spend_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    packet_categories: Mapped[list] = mapped_column(JSON, default=list)
    packet_merchant_id: Mapped[int | None] = mapped_column(ForeignKey("merchants.id"))
    packet_valid_days: Mapped[int] = mapped_column(default=30)
    restore_packet_on_refund: Mapped[bool] = mapped_column(default=False)
    # How packets are issued: {"kind": "order_paid", "min_order_fen": 20000} | {"kind": "claim_code"} | ...
    trigger: Mapped[dict] = mapped_column(JSON, default=dict)
    # Packet variants: tiers [{"min_spend_fen", "amount_fen"}] (the best one reached applies), product scope,
    # fixed validity dates (instead of packet_valid_days).
    packet_tiers: Mapped[list] = mapped_column(JSON, default=list)
    packet_products: Mapped[list] = mapped_column(JSON, default=list)
    packet_valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    packet_valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Who and when: target regions, channels, Beijing day-of-week / hour windows for claiming and using.
    regions: Mapped[list] = mapped_column(JSON, default=list)
    channels: Mapped[list] = mapped_column(JSON, default=list)
    usage_windows: Mapped[dict] = mapped_column(JSON, default=dict)  # {"weekdays": [1..7], "hours": [from, to]}
    # Count budget beside the money budget, and claim limits (None: the defaults of risk.ClaimLimits).
    max_packets: Mapped[int | None]
    max_packets_per_order: Mapped[int] = mapped_column(default=1)  # stacking: more than 1 lets packets combine
    packets_issued: Mapped[int] = mapped_column(default=0)
    claim_limits: Mapped[dict | None] = mapped_column(JSON)
    spike_auto_pause: Mapped[bool] = mapped_column(default=False)  # a spike alert also pauses the campaign
    # Paused because its funder's deposit could not cover another packet (``rebate.deposits``): it issues no more,
    # but the packets already out keep what their claims reserved, so spending one still earns its rebate. Any
    # operator transition (pause, activate, end) clears it: an operator's pause stops issuing and awarding.
    paused_for_deposit: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Paused by the platform (an admin, a ban, the risk jobs): only a platform operator activates it again, never
    # the merchant's own staff. Cleared by any activation or end.
    paused_by_platform: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Denormalised for the payment's one read of the campaigns that can apply to an order (see the
    # mapper events below; never set by hand): the merchant whose orders it serves (None: every
    # merchant's), its trigger's kind and minimum order, and its current rules' applies_to.
    serves_merchant_id: Mapped[int | None] = mapped_column(BigInteger)
    trigger_kind: Mapped[str] = mapped_column(String(24), default="manual", server_default="manual")
    trigger_min_order_fen: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    applies_to: Mapped[str] = mapped_column(String(16), default="packet", server_default="packet")

    __table_args__ = (
        CheckConstraint("status in ('draft', 'active', 'paused', 'ended')", name="status"),
        CheckConstraint("budget_reserved_fen >= 0 and budget_committed_fen >= 0", name="budget_nonnegative"),
        CheckConstraint(
            "budget_limit_fen is null or budget_reserved_fen + budget_committed_fen <= budget_limit_fen",
            name="budget_within_limit",
        ),
        CheckConstraint("packet_amount_fen is null or packet_amount_fen > 0", name="packet_amount_positive"),
        CheckConstraint("max_packets is null or packets_issued <= max_packets", name="count_within_limit"),
        CheckConstraint(
            "(funder_type = 'merchant_deposit') = (funder_merchant_id is not null)", name="merchant_funder"
        ),
        Index("ix_campaigns_serving", "status", "serves_merchant_id"),
    )

    @validates("trigger")
    def _refuse_bad_trigger(self, key: str, value: dict | None) -> dict | None:
        Trigger.parse(value)  # raises TriggerError: a trigger we cannot act on is never stored
        return value

    @property
    def issue_trigger(self) -> Trigger:
        """``trigger`` as a typed value (the column keeps the stored JSON); a bad one raises ``TriggerError``."""
        try:
            return Trigger.parse(self.trigger)
        except TriggerError as exc:
            raise TriggerError(f"campaign {self.id}: {exc}") from None

    @property
    def budget_available_fen(self) -> int | None:
        if self.budget_limit_fen is None:
            return None
        return self.budget_limit_fen - self.budget_reserved_fen - self.budget_committed_fen


class CampaignRules(Base):
    """One immutable version of a campaign's rules; orders keep the version they ran under."""

    __tablename__ = "campaign_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))  # served by the unique index it begins
    version: Mapped[int]
    rules: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("operators.id"))

    __table_args__ = (UniqueConstraint("campaign_id", "version"),)


def serves_merchant(campaign: Campaign) -> int | None:
    """The merchant whose campaign this is (its deposit funds it, or it issues it); None: the platform's."""
    if campaign.funder_type == FunderType.MERCHANT_DEPOSIT:
        return campaign.funder_merchant_id
    return campaign.issuer_merchant_id


@event.listens_for(Campaign, "before_insert")
@event.listens_for(Campaign, "before_update")
def _denormalise(mapper, connection, campaign: Campaign) -> None:
    """Keep the columns the payment selects campaigns by in step with what they are derived from."""
    campaign.serves_merchant_id = serves_merchant(campaign)
    trigger = Trigger.parse(campaign.trigger)
    campaign.trigger_kind, campaign.trigger_min_order_fen = trigger.kind.value, trigger.min_order_fen


@event.listens_for(CampaignRules, "after_insert")
def _rules_applies_to(mapper, connection, rules: CampaignRules) -> None:
    """A new rules version that is the campaign's current one sets its ``applies_to`` (rules never change)."""
    applies_to = (rules.rules or {}).get("applies_to", "packet") if isinstance(rules.rules, dict) else "packet"
    connection.execute(
        update(Campaign.__table__)
        .where(Campaign.__table__.c.id == rules.campaign_id, Campaign.__table__.c.rules_version == rules.version)
        .values(applies_to=str(applies_to)[:16])
    )
