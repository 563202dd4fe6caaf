"""Operator and payee controls over the outbox: the per-rail switch, and payouts released by a real name.

``rail_is_on`` is the one answer to "does the dispatcher send on this rail now": no control row, or
switched on and not paused (a NOTENOUGH pause lasts until ``paused_until``). Operations here take the
actor and values explicitly, write and flush; the caller commits once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update

from models import Payout, PayoutStatus, RailControl, User, db
from models.operators import Actor, audit
from payouts.record import rail_control


def rail_is_on(control: RailControl | None, now: datetime) -> bool:
    """The dispatcher sends on a rail without a control row, or one switched on and not paused at ``now``."""
    if control is None:
        return True
    return control.enabled and (control.paused_until is None or control.paused_until <= now)


def switch_rail(actor: Actor, rail: str, enabled: bool, reason: str, now: datetime) -> RailControl:
    """Stop (or restart) dispatching on a rail at once; restarting also lifts any pause, and the payouts the pause
    put off (due at its end, as ``payouts.record`` defers them to it) are due at once. Audited."""
    control = rail_control(rail)
    if enabled and control.paused_until is not None and control.paused_until > now:
        # the payout WeChat answered NOT_ENOUGH waits for the pause's end: the operator topped up and restarted
        db.session.execute(
            update(Payout)
            .where(
                Payout.rail == rail,
                Payout.status == PayoutStatus.PENDING,
                Payout.next_attempt_at > now,
                Payout.next_attempt_at <= control.paused_until,
            )
            .values(next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
    control.enabled, control.reason, control.updated_at = enabled, reason, now
    if enabled:
        control.paused_until = None
    audit(actor, "rail.switch", "rail", rail, reason, enabled=enabled)
    db.session.flush()
    return control


def set_real_name(user: User, real_name: str, now: datetime) -> int:
    """Record the payee's real name and release the payouts deferred for want of it; returns how many."""
    user.real_name = real_name
    released = (
        db.session.query(Payout)
        .filter(
            Payout.user_id == user.id,
            Payout.status == PayoutStatus.PENDING,
            Payout.request.is_(None),
            Payout.last_error.like("REAL_NAME_REQUIRED%"),
        )
        .update({Payout.next_attempt_at: now}, synchronize_session=False)
    )
    db.session.flush()
    return released
