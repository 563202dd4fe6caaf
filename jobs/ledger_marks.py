"""Every minute: the ledger's balance marks folded up to what is safe (``ledger.marks``), so a balance read stays one
short statement however long an account's history grows. Any number of nodes (the progress row is locked)."""

from __future__ import annotations

import logging
from collections import Counter

from ledger.marks import fold_marks
from models import db

log = logging.getLogger(__name__)
WAITING_TOO_LONG_S = 3600  # an end not folded for this long: a transaction of the database has been open as long


def fold_ledger_marks() -> Counter:
    done = fold_marks()
    db.session.commit()  # (a failure is rolled back by the scheduler's wrapper, jobs.scheduler.in_app)
    if done["waiting_s"] > WAITING_TOO_LONG_S:
        log.warning(
            "ledger balance marks wait for a transaction open for over an hour (balances stay exact, reads grow)",
            extra={"waiting_s": done["waiting_s"]},
        )
    return Counter(folded=done["folded"]) if done["folded"] else Counter()
