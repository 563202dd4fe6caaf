"""Issuing, claiming, locking and expiring red packets. Every issue or claim reserves budget."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import select

from models import Campaign, PacketStatus, RedPacket, User, db
from rebate import budgets
from rebate.campaigns import is_running, rules_of
from rebate.errors import BudgetExhausted, NotFound, StateConflict

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 16  # 32^16 = 2^80 codes: unguessable


def new_claim_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def reservation_for(campaign: Campaign) -> int:
    """Face value plus the largest rebate the packet can trigger."""
    max_award = rules_of(campaign).max_award_fen()
    if campaign.budget_limit_fen is not None and max_award is None:
        raise StateConflict("a budgeted campaign's rules must all have caps", code="uncapped_rule")
    return (campaign.packet_amount_fen or 0) + (max_award or 0)


def _new_packet(campaign: Campaign, now: datetime, **fields) -> RedPacket:
    return RedPacket(
        campaign_id=campaign.id,
        rules_version=campaign.rules_version,
        issuer_type=campaign.issuer_type,
        issuer_merchant_id=campaign.issuer_merchant_id,
        issuer_user_id=campaign.issuer_user_id,
        amount_fen=campaign.packet_amount_fen,
        min_spend_fen=campaign.packet_min_spend_fen,
        categories=list(campaign.packet_categories or []),
        merchant_id=campaign.packet_merchant_id,
        valid_from=now,
        expires_at=now + timedelta(days=campaign.packet_valid_days),
        created_at=now,
        **fields,
    )


def _require_issuing(campaign: Campaign, now: datetime) -> None:
    if not campaign.packet_amount_fen:
        raise StateConflict("this campaign issues no packets", code="campaign_issues_no_packets")
    if not is_running(campaign, now):
        raise StateConflict("the campaign is not running", code="campaign_not_running")


def issue_packet(campaign: Campaign, owner: User, *, source: str, source_ref: str, now: datetime) -> RedPacket:
    """Issue a packet to ``owner``, reserving its budget. Idempotent per (campaign, source, source_ref)."""
    _require_issuing(campaign, now)
    existing = db.session.execute(
        select(RedPacket).filter_by(campaign_id=campaign.id, source=source, source_ref=source_ref)
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    reserved = reservation_for(campaign)
    if not budgets.reserve(campaign.id, reserved):
        raise BudgetExhausted("the campaign's budget is exhausted")
    packet = _new_packet(
        campaign,
        now,
        owner_id=owner.id,
        status=PacketStatus.ISSUED,
        reserved_fen=reserved,
        source=source,
        source_ref=source_ref,
        claimed_at=now,
    )
    db.session.add(packet)
    db.session.flush()
    return packet


def generate_batch(campaign: Campaign, count: int, now: datetime, batch_ref: str) -> list[RedPacket]:
    """N unclaimed packets with unique codes; budget is reserved when each is claimed."""
    _require_issuing(campaign, now)
    packets = [
        _new_packet(
            campaign,
            now,
            status=PacketStatus.UNCLAIMED,
            claim_code=new_claim_code(),
            source="batch",
            source_ref=f"{batch_ref}:{i}",
        )
        for i in range(count)
    ]
    db.session.add_all(packets)
    db.session.flush()
    return packets


def claim_packet(code: str, user: User, now: datetime) -> RedPacket:
    """Claim an unclaimed packet by its code. Unknown codes and others' claimed packets are 404."""
    packet = db.session.execute(
        select(RedPacket)
        .where(RedPacket.claim_code == code.strip().upper())
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if packet is None or (packet.owner_id is not None and packet.owner_id != user.id):
        raise NotFound("no such red packet code")
    if packet.owner_id == user.id:
        return packet  # claiming twice is answered with the same packet
    if packet.status != PacketStatus.UNCLAIMED:
        raise StateConflict(f"this packet is {packet.status}", code=f"packet_{packet.status}")
    if now >= packet.expires_at:
        raise StateConflict("this packet has expired", code="packet_expired")
    campaign = db.session.get(Campaign, packet.campaign_id)
    _require_issuing(campaign, now)
    reserved = reservation_for(campaign)
    if not budgets.reserve(campaign.id, reserved):
        raise BudgetExhausted("the campaign's budget is exhausted")
    packet.owner_id, packet.status, packet.reserved_fen, packet.claimed_at = user.id, PacketStatus.ISSUED, reserved, now
    db.session.flush()
    return packet


def release_packet(packet: RedPacket, status: PacketStatus) -> None:
    """Expire or revoke an unused packet and give its reservation back."""
    if packet.status not in (PacketStatus.ISSUED, PacketStatus.UNCLAIMED, PacketStatus.LOCKED):
        raise StateConflict(f"a {packet.status} packet cannot become {status}", code="packet_state")
    budgets.release_reserved(packet.campaign_id, packet.reserved_fen)
    packet.reserved_fen = 0
    packet.status = status
    packet.order_id = None
    db.session.flush()


def expire_due_packets(now: datetime, limit: int = 500) -> int:
    """Expire packets past their validity that no order holds; returns how many."""
    due = (
        db.session.execute(
            select(RedPacket)
            .where(RedPacket.status.in_([PacketStatus.ISSUED, PacketStatus.UNCLAIMED]), RedPacket.expires_at <= now)
            .order_by(RedPacket.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    for packet in due:
        release_packet(packet, PacketStatus.EXPIRED)
    return len(due)
