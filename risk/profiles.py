"""The per-person and per-triangle aggregates scoring reads, kept as things happen (one statement each).

``note_paid_order``: the payment's upsert of the buyer's ``RiskProfile`` (paid, packet, rebated and night
orders, first and last order, and the paid times of the last ``RECENT_ORDERS`` orders, which the scoring
read counts for ``orders_in_10_min``: a sliding window, without reading the person's history).
``note_pair``: the payment's upsert of the ``RiskPair`` (issuer, buyer, merchant) when a packet with an
issuer was spent. ``note_refunded_after_rebate``: a refund of an order that earned rebates, once per order.

Every write is computed by the database on the locked row (counts incremented, the paid time prepended
to the list), so concurrent payments of one person never lose a count or a paid time; both are taken
after the payment's campaign rows (and a refund's), so the lock order is the same on every path. What a
payment scores is what its read saw before these writes: two payments of one person at the same instant
may both miss each other in ``orders_in_10_min``, as in every other count of the profile.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache

from sqlalchemy import BigInteger, Integer, String, bindparam, text

from models import db
from models.base import UTCDateTime
from models.sql import WRITES, execute_core
from risk.scoring import RECENT_CHARS, paid_key


@cache
def _profile_upsert():
    # The paid times: this one prepended (fixed-width entries), cut to the last RECENT_ORDERS (RECENT_CHARS).
    sql = f"""
        INSERT INTO risk_profiles (user_id, paid_orders, packet_orders, rebated_orders, refunded_after_rebate,
            night_orders, first_order_at, last_order_at, recent_paid_at)
        VALUES (:uid, 1, :packet, :rebated, 0, :night, :at, :at, :paid)
        ON CONFLICT (user_id) DO UPDATE SET
            paid_orders = risk_profiles.paid_orders + 1,
            packet_orders = risk_profiles.packet_orders + excluded.packet_orders,
            rebated_orders = risk_profiles.rebated_orders + excluded.rebated_orders,
            night_orders = risk_profiles.night_orders + excluded.night_orders,
            first_order_at = CASE WHEN risk_profiles.first_order_at IS NULL
                OR risk_profiles.first_order_at > excluded.first_order_at
                THEN excluded.first_order_at ELSE risk_profiles.first_order_at END,
            last_order_at = CASE WHEN risk_profiles.last_order_at IS NULL
                OR risk_profiles.last_order_at < excluded.last_order_at
                THEN excluded.last_order_at ELSE risk_profiles.last_order_at END,
            recent_paid_at = CASE WHEN risk_profiles.recent_paid_at IS NULL OR risk_profiles.recent_paid_at = ''
                THEN excluded.recent_paid_at
                ELSE substr(excluded.recent_paid_at || ',' || risk_profiles.recent_paid_at, 1, {RECENT_CHARS}) END
    """  # noqa: S608 (no input in the text)
    return (
        text(sql)
        .bindparams(
            bindparam("uid", type_=BigInteger),
            bindparam("packet", type_=Integer),
            bindparam("rebated", type_=Integer),
            bindparam("night", type_=Integer),
            bindparam("at", type_=UTCDateTime),
            bindparam("paid", type_=String),
        )
        .execution_options(**WRITES)
    )


def note_paid_order(user_id: int, at: datetime, *, packet: bool, rebated: bool, night: bool) -> None:
    """One more paid order of the person (one statement)."""
    params = {
        "uid": user_id,
        "packet": int(packet),
        "rebated": int(rebated),
        "night": int(night),
        "at": at,
        "paid": paid_key(at),
    }
    execute_core(_profile_upsert(), params)


@cache
def _pair_upsert():
    sql = """
        INSERT INTO risk_pairs (issuer_type, issuer_id, user_id, merchant_id, orders, last_at)
        VALUES (:issuer_type, :issuer_id, :uid, :mid, 1, :at)
        ON CONFLICT (issuer_type, issuer_id, user_id, merchant_id) DO UPDATE SET
            orders = risk_pairs.orders + 1,
            last_at = CASE WHEN risk_pairs.last_at < excluded.last_at THEN excluded.last_at ELSE risk_pairs.last_at END
    """
    return (
        text(sql)
        .bindparams(
            bindparam("issuer_type", type_=String),
            bindparam("issuer_id", type_=BigInteger),
            bindparam("uid", type_=BigInteger),
            bindparam("mid", type_=BigInteger),
            bindparam("at", type_=UTCDateTime),
        )
        .execution_options(**WRITES)
    )


def note_pair(issuer_type: str, issuer_id: int, user_id: int, merchant_id: int, at: datetime) -> None:
    """One more order by ``user_id`` at ``merchant_id`` spending a packet of this issuer (one statement)."""
    params = {"issuer_type": issuer_type, "issuer_id": issuer_id, "uid": user_id, "mid": merchant_id, "at": at}
    execute_core(_pair_upsert(), params)


@cache
def _refunded_update():
    sql = "UPDATE risk_profiles SET refunded_after_rebate = refunded_after_rebate + 1 WHERE user_id = :uid"
    return text(sql).bindparams(bindparam("uid", type_=BigInteger)).execution_options(**WRITES)


def note_refunded_after_rebate(user_id: int) -> None:
    """An order that earned rebates was refunded (the caller asks once per order)."""
    db.session.execute(_refunded_update(), {"uid": user_id})
