"""The lift of an audience run: treated against holdout (read-only).

For each group of a run's members (treated: issued a packet or refused one; holdout: nothing), over the
orders paid from the moment the members were chosen (``started_at``) for ``window_days`` (or until now):

* ``members``; ``buyers``: members who paid at least one order in the window; ``buyer_share_bps``;
* ``orders`` paid in the window and ``sales_fen``: what was paid less what has been refunded of them;
* ``sales_per_member_fen`` (rounded down);
* for the treated, packet ``uptake``: packets issued, used (spent on an order paid in the window, even if a refund
  gave the packet back since), and ``uptake_bps`` = used / issued.

``lift``: the treated minus the holdout in buyer share (basis points) and in sales per member (fen), and
sales per member relative to the holdout's (``sales_per_member_lift_bps``). Every ratio is rounded down,
and a ratio on a zero base (no members, no packets, no holdout sales) is null, never infinity.

A merchant-scoped audience counts only orders at its merchant (its uptake too: packets spent there). The
report reads the run's members' orders directly (bounded by the run's size), not the daily rollups: a run's
window is not whole Beijing days, and its people are not a rollup dimension.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, or_, select

from models import (
    Audience,
    AudienceMember,
    AudienceRun,
    Order,
    OrderPacket,
    PacketStatus,
    RedPacket,
    db,
    net_paid_sql,
)


def _ratio_bps(part: int, whole: int) -> int | None:
    return part * 10_000 // whole if whole else None


def _group(members: int, buyers: int, orders: int, sales_fen: int) -> dict:
    return {
        "members": members,
        "buyers": buyers,
        "buyer_share_bps": _ratio_bps(buyers, members),
        "orders": orders,
        "sales_fen": sales_fen,
        "sales_per_member_fen": sales_fen // members if members else None,
    }


def _difference(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a - b


def run_lift(run: AudienceRun, now: datetime, window_days: int) -> dict:
    """The lift report of ``run`` (see the module's words); no window yet (members not chosen): null."""
    if run.started_at is None:
        return {"window": None, "treated": None, "holdout": None, "uptake": None, "lift": None}
    audience = db.session.get(Audience, run.audience_id)
    start = run.started_at
    end = min(now, start + timedelta(days=window_days))
    paid_in_window = [Order.paid_at >= start, Order.paid_at < end]
    if audience.merchant_id is not None:
        paid_in_window.append(Order.merchant_id == audience.merchant_id)
    in_window = [Order.user_id == AudienceMember.user_id, *paid_in_window]
    counts = dict(
        db.session.execute(
            select(AudienceMember.holdout, func.count())
            .where(AudienceMember.run_id == run.id)
            .group_by(AudienceMember.holdout)
        )
        .tuples()
        .all()
    )
    bought = {
        row[0]: row[1:]
        for row in db.session.execute(
            select(
                AudienceMember.holdout,
                func.count(func.distinct(Order.user_id)),
                func.count(Order.id),
                func.coalesce(func.sum(net_paid_sql()), 0),
            )
            .join(Order, and_(*in_window))
            .where(AudienceMember.run_id == run.id)
            .group_by(AudienceMember.holdout)
        ).tuples()
    }
    # used: spent on an order that was paid, even if a refund gave the packet back since (the reports' basis), and
    # paid in the window (at the merchant of a scoped audience), as every other number here: a packet spent after
    # the window is no uptake of it, and one spent at another shop is nothing for that merchant's staff to learn
    spent = (
        select(OrderPacket.packet_id)
        .join(Order, Order.id == OrderPacket.order_id)
        .where(OrderPacket.packet_id == RedPacket.id, *paid_in_window)
        .exists()
    )
    used_on = select(Order.id).where(Order.id == RedPacket.order_id, *paid_in_window).exists()
    used = or_(and_(RedPacket.status == PacketStatus.USED, used_on), spent)
    issued, used = db.session.execute(
        select(func.count(RedPacket.id), func.coalesce(func.sum(case((used, 1), else_=0)), 0))
        .select_from(AudienceMember)
        .join(RedPacket, RedPacket.id == AudienceMember.packet_id)
        .where(AudienceMember.run_id == run.id, AudienceMember.holdout.is_(False))
    ).one()
    groups = {}
    for flag, name in ((False, "treated"), (True, "holdout")):
        buyers, orders, sales = bought.get(flag, (0, 0, 0))
        groups[name] = _group(int(counts.get(flag, 0)), int(buyers), int(orders), int(sales))
    treated, holdout = groups["treated"], groups["holdout"]
    base = holdout["sales_per_member_fen"]
    gain = _difference(treated["sales_per_member_fen"], base)
    return {
        "window": {"from": start.isoformat(), "until": end.isoformat(), "days": window_days},
        "treated": treated,
        "holdout": holdout,
        "uptake": {"issued": int(issued), "used": int(used), "uptake_bps": _ratio_bps(int(used), int(issued))},
        "lift": {
            "buyer_share_bps": _difference(treated["buyer_share_bps"], holdout["buyer_share_bps"]),
            "sales_per_member_fen": gain,
            "sales_per_member_lift_bps": gain * 10_000 // base if gain is not None and base else None,
        },
    }
