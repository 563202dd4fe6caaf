"""Tables, one module per aggregate, on Flask-SQLAlchemy with typed SQLAlchemy 2 models.

Operations elsewhere only ``flush``; the request handler or job owns the one
commit (``unit_of_work``). Datetimes are UTC-aware on every database and
personal data is encrypted at rest (``EncryptedText``).
"""

from models.base import Base, EncryptedText, UTCDateTime, db, unit_of_work, utcnow
from models.idempotency import IdempotencyRecord
from models.ledger import AccountKind, LedgerAccount, LedgerEntry, LedgerFlow, LedgerPosting, Unit
from models.operators import AuditLog, Operator, OperatorRole, OperatorToken
from models.people import Merchant, Product, User, UserIdentity, UserStatus

__all__ = [
    "AccountKind",
    "AuditLog",
    "Base",
    "EncryptedText",
    "IdempotencyRecord",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerFlow",
    "LedgerPosting",
    "Merchant",
    "Operator",
    "OperatorRole",
    "OperatorToken",
    "Product",
    "UTCDateTime",
    "Unit",
    "User",
    "UserIdentity",
    "UserStatus",
    "db",
    "unit_of_work",
    "utcnow",
]
