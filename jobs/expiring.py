"""The "packet expiring" notices: one per unused packet, a day before it expires (docs/architecture.md §14).

A pass reads the packets due (``rebate.packets.expiring_packets``: claimed, unused, expiring within 24 h,
held a while, not told yet) in keyset batches and writes each batch's notices with one ``enqueue_many``,
committed per batch. Safe on several nodes at once and after a crash: nothing is locked, and a notice's
key (``packet:<id>:expiring``) is unique, so a packet read by two passes is told once. A banned owner cannot sign in to
use the packet: nothing is written for them (a pass after the ban is lifted tells them, if still due).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select

from models import User, UserStatus, db, utcnow
from rebate import tell
from rebate.packets import expiring_packets

BATCH = 500


def tell_expiring_packets(now: datetime | None = None, batch: int = BATCH) -> Counter:
    """One pass; how many packets were read and how many notices this pass wrote."""
    now = now or utcnow()
    done: Counter = Counter()
    after = None
    while True:
        rows = expiring_packets(now, after, batch)
        if rows:
            banned = set(
                db.session.execute(
                    select(User.id).where(User.id.in_({r.owner_id for r in rows}), User.status == UserStatus.BANNED)
                ).scalars()
            )
            drafts = [
                tell.packet_expiring(r.id, r.owner_id, r.amount_fen, r.expires_at)
                for r in rows
                if r.owner_id not in banned
            ]
            done["told"] += tell.tell(drafts)
            done["read"] += len(rows)
            after = (rows[-1].expires_at, rows[-1].id)
        db.session.commit()
        if len(rows) < batch:
            return done
