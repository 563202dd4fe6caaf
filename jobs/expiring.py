"""Expiry: packets and held awards past their time expire; the "packet expiring" notices a day before.

``expire_packets_and_conditions``: packets past their validity, then held awards past their deadline, a keyset batch
per transaction (by id, each row once a run), until none is left or the run's time is up. Each row in a savepoint
(``models.guarded_row``): one that fails is rolled back alone, alerted once (``packet_expiry_failed``,
``held_rebate_expiry_failed``), and the run goes on past it, to the rest of its batch and to the batches after. A
run had read each batch from the first due id and stopped at a batch not wholly done: a row failing every time at
the head of the due rows stopped every run there (499 expired a run of a batch of 500, none when a whole batch
failed). A row is read locked (``FOR UPDATE SKIP LOCKED``, another node's rows skipped) and only while still due
(its status, its held money): nothing is expired twice.

The "packet expiring" notices: one per unused packet, a day before it expires (docs/architecture.md §14).

A pass reads the packets due (``rebate.packets.expiring_packets``: claimed, unused, expiring within 24 h,
held a while, not told yet) in keyset batches and writes each batch's notices with one ``enqueue_many``,
committed per batch. Safe on several nodes at once and after a crash: nothing is locked, and a notice's
key (``packet:<id>:expiring``) is unique, so a packet read by two passes is told once. A banned owner cannot sign in to
use the packet: nothing is written for them (a pass after the ban is lifted tells them, if still due).
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime

from sqlalchemy import select

from models import User, UserStatus, db, unit_of_work, utcnow
from rebate import tell
from rebate.milestones import expire_held_after
from rebate.packets import expire_packets_after, expiring_packets

BATCH = 500
EXPIRE_BATCH = 500  # packets (or held awards) expired per transaction
EXPIRE_RUN_SECONDS = 60.0  # one run's longest stretch (the next run, minutes later, goes on)


def expire_packets_and_conditions(max_seconds: float = EXPIRE_RUN_SECONDS) -> Counter:
    """Packets past their validity, then held awards past their deadline, a batch per transaction until none is
    left (or ``max_seconds``): a campaign's thousands of packets ending at one instant give their reservations back
    (budget, deposit) in one run. ``packets`` and ``held_rebates`` expired; ``…_failed`` rows skipped, alerted."""
    now = utcnow()
    stop_at = time.monotonic() + max_seconds
    result: Counter = Counter(packets=0, held_rebates=0)
    for name, expire in (("packets", expire_packets_after), ("held_rebates", expire_held_after)):
        after = 0
        while True:
            with unit_of_work():
                read, done = expire(now, after, EXPIRE_BATCH)
            result[name] += done
            if len(read) > done:
                result[f"{name}_failed"] += len(read) - done
            if len(read) < EXPIRE_BATCH or time.monotonic() >= stop_at:
                break
            after = read[-1]
    return result


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
