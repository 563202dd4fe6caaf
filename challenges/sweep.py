"""What a loser's packet did not spend goes back to the loser's balance.

A stake-funded packet holds its face value in the payer's stake account until it ends. Then:
* expired or revoked unused: the whole face value is released to the payer's balance;
* spent: the sale took its discount from the stake (``rebate.payments``); any part of the face the order
  did not use (a packet capped at the payable's 1-fen floor) is released;
* its order fully refunded later: the refund returned the discount to the stake (``rebate.refunds``), and it
  is released to the payer's balance too (the packet is not restored: the challenge is over).
Each release is keyed by the packet, so a second node or a second pass moves nothing more. A prize stays
open while its packet is spent and its order could still be refunded (``REFUND_WATCH_DAYS``). Once every
prize of a payer's per-challenge campaign is closed (its packets expired, revoked, refunded, or spent and past
the refund watch), the campaign is ended: it issues nothing more and no longer counts as running.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select

from challenges import stakes
from models import (
    Campaign,
    CampaignStatus,
    ChallengePrize,
    FunderType,
    LedgerEntry,
    OrderPacket,
    PacketStatus,
    RedPacket,
    Refund,
    StakeSource,
    db,
)

REFUND_WATCH_DAYS = 400  # WeChat refunds an order up to a year after payment


def open_prizes(limit: int = 200, after: int = 0) -> list[int]:
    """Open prizes whose packet ended, after prize id ``after`` (page on with the last id: a spent packet's
    prize stays open for the refund watch, so without paging the first ``limit`` would hide the rest)."""
    return list(
        db.session.execute(
            select(ChallengePrize.id)
            .join(RedPacket, RedPacket.id == ChallengePrize.packet_id)
            .where(
                ChallengePrize.id > after,
                ChallengePrize.closed.is_(False),
                ChallengePrize.payer_user_id.is_not(None),
                RedPacket.status.in_([PacketStatus.USED, PacketStatus.EXPIRED, PacketStatus.REVOKED]),
            )
            .order_by(ChallengePrize.id)
            .limit(limit)
        ).scalars()
    )


def sweep_prize(prize_id: int, now: datetime) -> int:
    """Release what this prize's ended packet left in its payer's stake; the fen released by this call."""
    prize = db.session.execute(
        select(ChallengePrize).where(ChallengePrize.id == prize_id).with_for_update(skip_locked=True)
    ).scalar_one_or_none()
    if prize is None or prize.closed:
        return 0
    packet = db.session.get(RedPacket, prize.packet_id)
    if packet.status in (PacketStatus.EXPIRED, PacketStatus.REVOKED):
        return _give_back(prize, prize.amount, f"packet:{packet.id}:unused", close=True)
    if packet.status != PacketStatus.USED:
        return 0
    discount = int(  # a SUM is a Decimal on PostgreSQL
        db.session.execute(
            select(func.coalesce(func.sum(OrderPacket.discount_fen), 0)).where(
                OrderPacket.order_id == packet.order_id,
                OrderPacket.packet_id == packet.id,  # by the primary key
            )
        ).scalar_one()
    )
    released = _give_back(prize, prize.amount - discount, f"packet:{packet.id}:rest", close=False)
    if _refunded(packet):
        return released + _give_back(prize, discount, f"packet:{packet.id}:refunded", close=True)
    if packet.used_at is not None and now - packet.used_at > timedelta(days=REFUND_WATCH_DAYS):
        prize.closed = True
        _end_if_done(prize)
    return released


def _end_if_done(prize: ChallengePrize) -> None:
    """End the payer's per-challenge campaign once none of its prizes is open (nothing more can be spent)."""
    if prize.campaign_id is None:
        return
    campaign = db.session.get(Campaign, prize.campaign_id)
    if campaign is None or campaign.funder_type != FunderType.USER_STAKE or campaign.status == CampaignStatus.ENDED:
        return
    db.session.flush()
    still_open = db.session.execute(
        select(ChallengePrize.id)
        .where(ChallengePrize.campaign_id == campaign.id, ChallengePrize.closed.is_(False))
        .limit(1)
    ).first()
    if still_open is None:
        campaign.status = CampaignStatus.ENDED


def _refunded(packet: RedPacket) -> bool:
    """The refund returned this packet's discount to its funder (``refund:<id>:discount:<packet>``), found by
    its exact keys: the refunds of the order that spent the packet. (A ``LIKE 'refund:%…'`` with its wildcard
    inside the key reads the whole ledger, and the sweep asks for every open prize on every pass.)"""
    if packet.order_id is None:
        return False
    refunds = db.session.execute(select(Refund.id).where(Refund.order_id == packet.order_id)).scalars().all()
    if not refunds:
        return False
    keys = [f"refund:{refund_id}:discount:{packet.id}" for refund_id in refunds]
    found = db.session.execute(select(LedgerEntry.id).where(LedgerEntry.idempotency_key.in_(keys)).limit(1))
    return found.first() is not None


def _give_back(prize: ChallengePrize, amount: int, why: str, *, close: bool) -> int:
    key_why = why
    already = db.session.execute(
        select(LedgerEntry.id).where(
            LedgerEntry.idempotency_key == f"challenge:{prize.challenge_id}:release:{prize.payer_user_id}:{key_why}"
        )
    ).first()
    if amount > 0 and already is None:
        stakes.release(prize.challenge_id, StakeSource.BALANCE, prize.payer_user_id, amount, key_why)
        prize.returned_fen += amount
    if close:
        prize.closed = True
        _end_if_done(prize)
    db.session.flush()
    return amount if already is None and amount > 0 else 0


def sweep_prizes(now: datetime) -> int:
    """Every open prize whose packet ended, in the caller's transaction; fen released."""
    total, after = 0, 0
    while ids := open_prizes(after=after):
        total += sum(sweep_prize(pid, now) for pid in ids)
        after = ids[-1]
    return total
