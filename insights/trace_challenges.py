"""The trace of a challenge's packet: which challenge, who paid it from their stake, what came back."""

from __future__ import annotations

from sqlalchemy import select

from insights.challenges import merchant_sees_challenge
from models import Challenge, ChallengePrize, RedPacket, db
from money import format_yuan


def challenge_of_packet(packet: RedPacket, merchant_id: int | None = None) -> tuple[dict | None, list[str]]:
    """The challenge a packet is the prize of (None when it is not one), and the lines saying so. ``merchant_id``:
    a merchant's staff, who see only a challenge their campaign sponsors (as its own page): a prize spent at their
    shop tells them nothing of the friends' challenge it came from (None)."""
    prize = db.session.execute(select(ChallengePrize).where(ChallengePrize.packet_id == packet.id)).scalar_one_or_none()
    if prize is None:
        return None, []
    challenge = db.session.get(Challenge, prize.challenge_id)
    if merchant_id is not None and not merchant_sees_challenge(challenge, merchant_id):
        return None, []
    payer = f"user #{prize.payer_user_id}'s stake" if prize.payer_user_id else "the sponsor's campaign"
    settled = challenge.settled_at.isoformat() if challenge.settled_at else None
    lines = [
        f"The prize of challenge #{challenge.id} “{challenge.title}” ({challenge.kind}, settled {settled}): "
        f"{format_yuan(prize.amount)} yuan from {payer} to user #{prize.payee_user_id}."
    ]
    if prize.payer_user_id and prize.returned_fen:
        lines.append(f"{format_yuan(prize.returned_fen)} yuan of it went back to the payer's balance (not spent).")
    info = {
        "challenge_id": challenge.id,
        "title": challenge.title,
        "kind": challenge.kind,
        "settled_at": settled,
        "payer_user_id": prize.payer_user_id,
        "payee_user_id": prize.payee_user_id,
        "amount_fen": prize.amount,
        "returned_fen": prize.returned_fen,
        "outcome": challenge.outcome,
    }
    return info, lines
