"""Issuing, claiming, locking and expiring red packets.

Every issue or claim takes one from the campaign's count budget (if any) and
reserves its money budget: the packet's top face value plus the largest rebate
it can trigger. A merchant-funded packet is issued only when its funder's
deposit covers that reservation on top of every live one against it.
Audience rules (regions, channels, Beijing day/hour windows) are checked on
issue, claim and use.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import select

from models import Campaign, PacketStatus, RedPacket, User, db
from models.base import beijing
from rebate import budgets
from rebate.campaigns import is_running, rules_of
from rebate.deposits import cover_reservation
from rebate.errors import BudgetExhausted, Invalid, NotFound, StateConflict
from risk import ClaimGate

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 16  # 32^16 = 2^80 codes: unguessable


def new_claim_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def top_face_fen(campaign: Campaign) -> int:
    return max([campaign.packet_amount_fen or 0, *(t["amount_fen"] for t in campaign.packet_tiers or [])])


def reservation_for(campaign: Campaign, face_fen: int | None = None) -> int:
    """Face value plus the largest rebate the packet can trigger."""
    max_award = rules_of(campaign).max_award_fen()
    if campaign.budget_limit_fen is not None and max_award is None:
        raise StateConflict("a budgeted campaign's rules must all have caps", code="uncapped_rule")
    return (face_fen if face_fen is not None else top_face_fen(campaign)) + (max_award or 0)


def check_audience(campaign: Campaign, user: User, channel: str | None, now: datetime) -> None:
    """Regions, channels and the Beijing day-of-week / hour window; refusals say why."""
    if campaign.regions and user.region not in campaign.regions:
        raise Invalid(f"this campaign is for {', '.join(campaign.regions)} only", code="outside_region")
    if campaign.channels and channel is not None and channel not in campaign.channels:
        raise Invalid(f"this campaign runs on {', '.join(campaign.channels)} only", code="wrong_channel")
    windows = campaign.usage_windows or {}
    local = beijing(now)
    weekdays, hours = windows.get("weekdays"), windows.get("hours")
    if weekdays and local.isoweekday() not in weekdays:
        raise StateConflict("not on this day of the week (Beijing time)", code="outside_window")
    if hours and not hours[0] <= local.hour < hours[1]:
        raise StateConflict(f"only between {hours[0]}:00 and {hours[1]}:00 Beijing time", code="outside_window")


def _validity(campaign: Campaign, now: datetime) -> tuple[datetime, datetime]:
    """Fixed dates when the campaign has them, else N days from issue (from the start date if later)."""
    start = max(now, campaign.packet_valid_from or now)
    end = campaign.packet_valid_until or start + timedelta(days=campaign.packet_valid_days)
    if end <= now:
        raise StateConflict("this campaign's packets are no longer valid", code="packet_validity_over")
    return start, end


def _new_packet(campaign: Campaign, now: datetime, face_fen: int | None = None, **fields) -> RedPacket:
    valid_from, expires_at = _validity(campaign, now)
    fields.setdefault("issuer_user_id", campaign.issuer_user_id)
    return RedPacket(
        campaign_id=campaign.id,
        rules_version=campaign.rules_version,
        issuer_type=campaign.issuer_type,
        issuer_merchant_id=campaign.issuer_merchant_id,
        amount_fen=face_fen or top_face_fen(campaign),
        min_spend_fen=campaign.packet_min_spend_fen,
        categories=list(campaign.packet_categories or []),
        products=list(campaign.packet_products or []),
        tiers=[] if face_fen else list(campaign.packet_tiers or []),
        merchant_id=campaign.packet_merchant_id,
        valid_from=valid_from,
        expires_at=expires_at,
        created_at=now,
        **fields,
    )


def _require_issuing(campaign: Campaign, now: datetime) -> None:
    if not top_face_fen(campaign):
        raise StateConflict("this campaign issues no packets", code="campaign_issues_no_packets")
    if not is_running(campaign, now):
        raise StateConflict("the campaign is not running", code="campaign_not_running")


def _take_budget(campaign: Campaign, reserved: int) -> None:
    """Count the packet, reserve its money in the campaign's budget and, when a merchant's deposit funds it,
    against that deposit (``DepositExhausted``: the caller rolls back, then ``deposits.pause_refused``)."""
    if not budgets.count_packet(campaign.id):
        raise BudgetExhausted("the campaign has issued all its packets", code="packets_exhausted")
    if not budgets.reserve(campaign.id, reserved):
        raise BudgetExhausted("the campaign's budget is exhausted")
    cover_reservation(campaign, reserved)


def issue_packet(
    campaign: Campaign,
    owner: User,
    *,
    source: str,
    source_ref: str,
    now: datetime,
    face_fen: int | None = None,
    issuer_user_id: int | None = None,
    channel: str | None = None,
    gate: ClaimGate | None = None,
) -> RedPacket:
    """Issue a packet to ``owner``, reserving its budget. Idempotent per (campaign, source, source_ref).

    Other modules (challenges, triggers) call this to issue from a given issuer
    (``issuer_user_id``) or with a given face value (streak bonuses). ``gate``
    takes the platform-wide claim limits when a new packet is really issued
    (``LimitHit`` otherwise; the caller rolls back).
    """
    _require_issuing(campaign, now)
    existing = db.session.execute(
        select(RedPacket).filter_by(campaign_id=campaign.id, source=source, source_ref=source_ref)
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    check_audience(campaign, owner, channel, now)
    reserved = reservation_for(campaign, face_fen)
    _take_budget(campaign, reserved)
    extra = {"issuer_user_id": issuer_user_id} if issuer_user_id else {}
    packet = _new_packet(  # refused for validity here, before a limit slot is taken
        campaign,
        now,
        face_fen,
        owner_id=owner.id,
        status=PacketStatus.ISSUED,
        reserved_fen=reserved,
        source=source,
        source_ref=source_ref,
        claimed_at=now,
        **extra,
    )
    if gate is not None:
        gate.take(now)
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


def find_claimable(code: str, user: User) -> RedPacket:
    """The packet behind a code, locked; unknown codes and others' claimed packets are 404."""
    packet = db.session.execute(
        select(RedPacket)
        .where(RedPacket.claim_code == code.strip().upper())
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if packet is None or (packet.owner_id is not None and packet.owner_id != user.id):
        raise NotFound("no such red packet code")
    return packet


def claim_packet(
    code: str, user: User, now: datetime, channel: str | None = None, gate: ClaimGate | None = None
) -> RedPacket:
    """Claim an unclaimed packet by its code. Claiming your own packet again answers the same packet.

    ``gate`` takes the platform-wide claim limits (``LimitHit``; the caller rolls back)."""
    packet = find_claimable(code, user)
    if packet.owner_id == user.id:
        return packet
    if packet.status != PacketStatus.UNCLAIMED:
        raise StateConflict(f"this packet is {packet.status}", code=f"packet_{packet.status}")
    if now >= packet.expires_at:
        raise StateConflict("this packet has expired", code="packet_expired")
    campaign = db.session.get(Campaign, packet.campaign_id)
    _require_issuing(campaign, now)
    check_audience(campaign, user, channel, now)
    reserved = reservation_for(campaign)
    _take_budget(campaign, reserved)
    if gate is not None:
        gate.take(now)
    packet.owner_id, packet.status, packet.reserved_fen, packet.claimed_at = user.id, PacketStatus.ISSUED, reserved, now
    db.session.flush()
    return packet


def release_packet(packet: RedPacket, status: PacketStatus) -> None:
    """Expire or revoke an unused packet and give its reservation back."""
    if packet.status not in (PacketStatus.ISSUED, PacketStatus.UNCLAIMED, PacketStatus.LOCKED):
        raise StateConflict(f"a {packet.status} packet cannot become {status}", code="packet_state")
    budgets.release_reserved(packet.campaign_id, packet.reserved_fen)
    if packet.status != PacketStatus.UNCLAIMED:  # a claimed packet took a count slot: give it back
        budgets.uncount_packet(packet.campaign_id)
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


def revoke_packet(packet_id: int) -> RedPacket:
    """An operator takes back a packet that was not spent (fraud, mistake): its budget returns."""
    packet = db.session.execute(
        select(RedPacket).where(RedPacket.id == packet_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if packet is None:
        raise NotFound("no such red packet")
    if packet.status == PacketStatus.LOCKED:
        raise StateConflict("the packet is in an unpaid order; close the order first", code="packet_locked")
    release_packet(packet, PacketStatus.REVOKED)
    return packet
