"""What a notice tells of, and the facts each kind carries (templates render them; no fraud details)."""

from __future__ import annotations

from enum import StrEnum


class NoticeEvent(StrEnum):
    PACKET_RECEIVED = "packet_received"  # someone issued the person a packet (not their own claim)
    PACKET_EXPIRING = "packet_expiring"  # an unused packet expires within 24 h
    REBATE_LANDED = "rebate_landed"  # money reached them: a payout succeeded, or balance / points credited
    TRANSFER_TO_CONFIRM = "transfer_to_confirm"  # a change transfer waits for their confirmation
    TRANSFER_REMINDER = "transfer_reminder"  # … and WeChat closes it soon
    REBATE_HELD = "rebate_held"  # held for review (never why)
    REBATE_CLAWED_BACK = "rebate_clawed_back"  # taken back, with the reason
    PAYOUT_FAILED = "payout_failed"  # a payout failed and its money is back in the balance
    WALLET_RETURNED = "wallet_returned"  # balance / points an order used came back (closed unpaid, or refunded)
    CHALLENGE_SETTLED = "challenge_settled"  # a challenge they were in has its result
    CHALLENGE_CANCELLED = "challenge_cancelled"  # too few joined: their stake is back
    CHALLENGE_POINTS_SETTLED = "challenge_points_settled"  # … the same, for a points stake (``points``, not fen)
    CHALLENGE_POINTS_CANCELLED = "challenge_points_cancelled"


# The facts each kind must carry (more are allowed: a wallet return's ``points_value_fen``, what its points are
# worth, is added to ``{amount}``). Money in fen, times ISO-8601 in UTC.
FACTS: dict[NoticeEvent, frozenset[str]] = {
    NoticeEvent.PACKET_RECEIVED: frozenset({"packet_id", "amount_fen", "issuer", "expires_at"}),
    NoticeEvent.PACKET_EXPIRING: frozenset({"packet_id", "amount_fen", "expires_at"}),
    NoticeEvent.REBATE_LANDED: frozenset({"amount_fen", "form"}),
    NoticeEvent.TRANSFER_TO_CONFIRM: frozenset({"payout_id", "amount_fen", "closes_at"}),
    NoticeEvent.TRANSFER_REMINDER: frozenset({"payout_id", "amount_fen", "closes_at"}),
    NoticeEvent.REBATE_HELD: frozenset({"rebate_id", "amount_fen"}),
    NoticeEvent.REBATE_CLAWED_BACK: frozenset({"amount_fen", "reason"}),
    NoticeEvent.PAYOUT_FAILED: frozenset({"payout_id", "amount_fen", "reason"}),
    NoticeEvent.WALLET_RETURNED: frozenset({"out_trade_no", "amount_fen", "points", "reason"}),
    NoticeEvent.CHALLENGE_SETTLED: frozenset({"challenge_id", "title", "result", "amount_fen"}),
    NoticeEvent.CHALLENGE_CANCELLED: frozenset({"challenge_id", "title", "amount_fen"}),
    NoticeEvent.CHALLENGE_POINTS_SETTLED: frozenset({"challenge_id", "title", "result", "points"}),
    NoticeEvent.CHALLENGE_POINTS_CANCELLED: frozenset({"challenge_id", "title", "points"}),
}


# Never held back by the quiet hours (``NOTICE_QUIET_HOURS``): a change transfer waiting for the person's tap. It is
# handed over seconds after the payment it rebates, so the person is looking at it right now, and WeChat closes it
# unconfirmed. Every other kind waits for the morning (its reminder too: the first message reached them at once).
# There is no security notice (a sign-in on a new device) among the kinds: one added would belong here.
URGENT: frozenset[NoticeEvent] = frozenset({NoticeEvent.TRANSFER_TO_CONFIRM})

# Which notices take the daily cap's places first when several are due at once (the morning after the quiet hours):
# money that left or came back to the person, then money that reached them, then results; a packet's news last. A
# transfer to confirm and its reminder are not capped and come after these (taking no place from them in one pass).
FIRST_TOLD: tuple[NoticeEvent, ...] = (
    NoticeEvent.REBATE_CLAWED_BACK,
    NoticeEvent.PAYOUT_FAILED,
    NoticeEvent.WALLET_RETURNED,
    NoticeEvent.REBATE_LANDED,
    NoticeEvent.CHALLENGE_SETTLED,
    NoticeEvent.CHALLENGE_POINTS_SETTLED,
    NoticeEvent.CHALLENGE_CANCELLED,
    NoticeEvent.CHALLENGE_POINTS_CANCELLED,
    NoticeEvent.REBATE_HELD,
    NoticeEvent.PACKET_EXPIRING,
    NoticeEvent.PACKET_RECEIVED,
)
