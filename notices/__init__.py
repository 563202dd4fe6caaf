"""User notifications: consent, the outbox and its dispatcher, templates (docs/architecture.md §14).

Beside ``payouts`` (both outboxes); imports ``ledger``, ``models`` and ``money`` only.
Callers write a notice in their own transaction with :func:`enqueue`; ``notices.templates`` checks and renders
``NOTICE_TEMPLATES``; ``notices.consents`` counts subscribe consents (``apply_push_event`` for WeChat's
pushes); ``notices.dispatch`` holds the dispatcher's steps (the job is ``jobs.notices``).
"""

from notices.events import FACTS, NoticeEvent
from notices.outbox import Draft, NoticeError, enqueue, enqueue_many

__all__ = ["FACTS", "Draft", "NoticeError", "NoticeEvent", "enqueue", "enqueue_many"]
