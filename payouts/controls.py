"""Operator and payee controls over the outbox: the per-rail switch, and payouts released by a real name.

``rail_is_on`` is the one answer to "does the dispatcher send on this rail now": no control row, or
switched on and not paused (a NOTENOUGH pause lasts until ``paused_until``). A WeChat Pay coupon stock whose
budget is spent is paused alone (``payouts.coupon_rail``): ``resume_stock`` lifts that pause once its budget is
raised, and restarting the coupon rail lifts its stocks' pauses too. Operations here take the actor and values
explicitly, write and flush; the caller commits once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from models import Payout, PayoutStatus, Rail, RailControl, User, db
from models.operators import Actor, audit
from payouts.coupon_rail import STOCK_ID, STOCK_ID_MOST, STOCK_KEY, stock_key, stock_switch, waiting_for_stock
from payouts.record import rail_control


class StockError(ValueError):
    """A stock's resume refused, nothing changed: ``kind`` as the API maps it (``invalid`` 422, ``conflict`` 409)."""

    def __init__(self, message: str, code: str, kind: str):
        super().__init__(message)
        self.code, self.kind = code, kind


NOT_PAUSED = "coupon_stock_not_paused"


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
    if enabled and rail == Rail.WECHAT_COUPON:  # restarting the coupon rail lifts its stocks' pauses too
        paused = select(RailControl.rail).where(
            RailControl.rail.startswith(STOCK_KEY, autoescape=True), RailControl.paused_until.is_not(None)
        )
        for key in db.session.execute(paused.order_by(RailControl.rail)).scalars().all():
            try:
                _resume_stock(actor, key.removeprefix(STOCK_KEY), reason, now)
            except StockError:  # resumed meanwhile by another operator (read unlocked above): nothing left to do
                continue
    db.session.flush()
    return control


def resume_stock(actor: Actor, stock_id: str, reason: str, now: datetime) -> int:
    """A spent coupon stock's budget was raised at WeChat: its pause is lifted and the payouts waiting for it are
    due at once (each still under its own number: one coupon per payout). Returns how many. Audited.

    A stock that is not paused (never spent, already resumed, a typo) is refused with nothing changed."""
    if not isinstance(stock_id, str) or not STOCK_ID.fullmatch(stock_id):
        why = f"a coupon stock_id is 1 to {STOCK_ID_MOST} letters, digits, '-' or '_'"
        raise StockError(why, "invalid_stock_id", "invalid")
    if db.session.get(RailControl, stock_key(stock_id)) is None:
        raise StockError(f"coupon stock {stock_id} is not paused", NOT_PAUSED, "conflict")
    released = _resume_stock(actor, stock_id, reason, now)
    db.session.flush()
    return released


def _resume_stock(actor: Actor, stock_id: str, reason: str, now: datetime) -> int:
    switch = stock_switch(stock_id)  # locked: a claim putting a payout off to this pause has committed first
    if switch.paused_until is None:
        raise StockError(f"coupon stock {stock_id} is not paused", NOT_PAUSED, "conflict")
    released = db.session.execute(
        update(Payout)
        .where(Payout.status == PayoutStatus.PENDING, Payout.next_attempt_at > now, waiting_for_stock(stock_id))
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    # reason set and updated_at at the resume: an earlier call's NOT_ENOUGH recorded later pauses nothing
    switch.paused_until, switch.reason, switch.updated_at = None, reason, now
    audit(actor, "coupon_stock.resume", "coupon_stock", stock_id, reason, released=released)
    return released


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
