"""``CommittedCache``: a per-process cache whose entries count only once their transaction committed.

Account ids (``ledger.accounts``) and parsed campaign rules (``rebate.campaigns``) are learnt inside a
transaction and may name rows that a rollback removes (SQLite then reuses the id). So what a transaction
learns waits in its session (``session.info``) and joins the process cache, kept per database engine
(tests make one per app), only after a commit; any rollback, a savepoint's too, forgets it, and a
transaction starts with nothing pending (one ended by ``close()`` never committed).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from models.base import db


class CommittedCache:
    def __init__(self, name: str) -> None:
        self.name = name  # the session.info key of what the open transaction learnt
        self._kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine → {key: value}
        event.listen(Session, "after_commit", self._keep)
        event.listen(Session, "after_soft_rollback", self._forget)
        event.listen(Session, "after_begin", self._fresh)

    def get(self, key: Any) -> Any | None:
        return self.get_many((key,)).get(key)

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """key → value of those of ``keys`` known (the session and its bind looked up once, not per key: a
        payment asks for two dozen)."""
        session = db.session()
        pending = session.info.get(self.name, {})
        kept = self._kept.get(session.get_bind(), {})
        found = {}
        for key in keys:
            value = pending.get(key)
            if value is None:
                value = kept.get(key)
            if value is not None:
                found[key] = value
        return found

    def learn(self, found: dict) -> None:
        if found:
            db.session.info.setdefault(self.name, {}).update(found)

    def _keep(self, session: Session) -> None:
        learnt = session.info.pop(self.name, None)
        if learnt:
            self._kept.setdefault(session.get_bind(), {}).update(learnt)

    def _forget(self, session: Session, previous_transaction) -> None:
        session.info.pop(self.name, None)

    def _fresh(self, session: Session, transaction, connection) -> None:
        if transaction.nested is False and transaction.parent is None:
            session.info.pop(self.name, None)
