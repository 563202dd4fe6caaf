"""User notifications: consent, the outbox and its dispatcher, templates (docs/architecture.md §14).

Beside ``payouts`` (both outboxes); imports ``ledger``, ``models`` and ``money`` only.
Callers write a notice in their own transaction with :func:`enqueue`.
"""

from notices.events import FACTS, NoticeEvent
from notices.outbox import NoticeError, enqueue

__all__ = ["FACTS", "NoticeError", "NoticeEvent", "enqueue"]
