"""Tables, one module per aggregate, on Flask-SQLAlchemy with typed SQLAlchemy 2 models.

Operations elsewhere only ``flush``; the request handler or job owns the one
commit (``unit_of_work``). Datetimes are UTC-aware on every database and
personal data is encrypted at rest (``EncryptedText``).
"""

from models.alerts import Alert, alert_once, raise_alert
from models.audiences import Audience, AudienceMember, AudienceRun, RunStatus
from models.base import (
    Base,
    EncryptedText,
    UTCDateTime,
    call_between_commits,
    db,
    retried_once,
    transaction_open,
    unit_of_work,
    utcnow,
)
from models.bindings import BotCallback, ChatBinding, ChatBindingCode, ChatBindingFailure, ChatReply, Transport
from models.campaigns import Campaign, CampaignRules, CampaignStatus, FunderType, IssuerType
from models.growth import ShareLink, SignIn
from models.idempotency import IdempotencyRecord
from models.insights import InsightsDaily, InsightsDay, InsightsPerson
from models.ledger import AccountKind, LedgerAccount, LedgerEntry, LedgerFlow, LedgerPosting, Unit
from models.limits import ClaimRefusal, LimitCounter
from models.messages import MESSAGE_TERMINAL, InboundMessage, MessageSource, MessageStatus, OaFollower
from models.notices import NOTICE_TERMINAL, ConsentReport, ConsentSource, Notice, NoticeConsent, NoticeStatus
from models.oauth import OAuthState
from models.operators import AuditLog, ConsoleSession, Operator, OperatorRole, OperatorToken
from models.orders import Order, OrderLine, OrderPacket, OrderStatus, PaymentNotification, Refund, RefundStatus
from models.packets import PacketStatus, RedPacket
from models.payouts import Payout, PayoutAttempt, PayoutStatus, Rail, RailControl
from models.people import Merchant, Product, User, UserIdentity, UserStatus
from models.rebates import OrderMilestone, Rebate, RebateAdjustment, RebateStatus, Receivable
from models.reconciliation import ReconciliationMismatch, ReconciliationRun
from models.risk import (
    Ban,
    BanSubject,
    BehaviourEvent,
    BrowsingSession,
    CaseOutcome,
    CaseStatus,
    EventKind,
    ReviewCase,
    RiskAction,
    RiskCommunity,
    RiskIdentifier,
    RiskPair,
    RiskProfile,
    RiskRuleSet,
    RuleSetStatus,
    SpikeBaseline,
)

__all__ = [
    "Audience",
    "AudienceMember",
    "AudienceRun",
    "RunStatus",
    "NOTICE_TERMINAL",
    "Notice",
    "NoticeStatus",
    "NoticeConsent",
    "ConsentReport",
    "ConsentSource",
    "Ban",
    "BanSubject",
    "BehaviourEvent",
    "BrowsingSession",
    "CaseOutcome",
    "CaseStatus",
    "EventKind",
    "ReviewCase",
    "RiskAction",
    "RiskCommunity",
    "RiskIdentifier",
    "RiskPair",
    "RiskProfile",
    "RiskRuleSet",
    "RuleSetStatus",
    "SpikeBaseline",
    "Alert",
    "Campaign",
    "CampaignRules",
    "CampaignStatus",
    "ClaimRefusal",
    "FunderType",
    "IssuerType",
    "Order",
    "OrderMilestone",
    "OrderPacket",
    "OrderLine",
    "OrderStatus",
    "PacketStatus",
    "PaymentNotification",
    "Payout",
    "PayoutAttempt",
    "RailControl",
    "PayoutStatus",
    "Rail",
    "ShareLink",
    "SignIn",
    "Rebate",
    "RebateAdjustment",
    "RebateStatus",
    "Receivable",
    "ReconciliationMismatch",
    "ReconciliationRun",
    "RedPacket",
    "Refund",
    "RefundStatus",
    "AccountKind",
    "AuditLog",
    "ConsoleSession",
    "Base",
    "EncryptedText",
    "IdempotencyRecord",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerFlow",
    "LedgerPosting",
    "LimitCounter",
    "Merchant",
    "OAuthState",
    "Operator",
    "OperatorRole",
    "OperatorToken",
    "Product",
    "UTCDateTime",
    "Unit",
    "User",
    "UserIdentity",
    "UserStatus",
    "alert_once",
    "db",
    "raise_alert",
    "unit_of_work",
    "call_between_commits",
    "retried_once",
    "transaction_open",
    "utcnow",
    "InsightsDaily",
    "InsightsDay",
    "InsightsPerson",
    "InboundMessage",
    "MessageSource",
    "MessageStatus",
    "MESSAGE_TERMINAL",
    "OaFollower",
    "BotCallback",
    "ChatBinding",
    "ChatReply",
    "ChatBindingCode",
    "ChatBindingFailure",
    "Transport",
]
