"""Fen arithmetic.

Money is an ``int`` of fen; rates are ``int`` basis points (1 bp = 0.01 %).
One rounding rule everywhere: **down** (towards zero for the non-negative
amounts this module accepts). Decimal appears only where yuan strings from
outside (bills, admin input) are parsed into fen.
"""

from __future__ import annotations

import re
from decimal import Decimal

BPS_DENOMINATOR = 10_000
MAX_FEN = 10**13  # 100 billion yuan: anything larger is an input error, not money.


# A plain yuan string: ASCII digits, an optional sign and decimal point. No
# exponents, underscores or non-ASCII digits (``Decimal`` would accept them all).
YUAN_PATTERN = re.compile(r"[+-]?[0-9]{1,15}(?:\.[0-9]*)?", re.ASCII)


class MoneyError(ValueError):
    code = "invalid_amount"


def check_fen(amount_fen: object, *, allow_zero: bool = True) -> int:
    """Return ``amount_fen`` if it is a sane non-negative int of fen, else raise."""
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
        raise MoneyError(f"amount must be an integer number of fen, got {amount_fen!r}")
    if amount_fen < 0 or amount_fen > MAX_FEN or (amount_fen == 0 and not allow_zero):
        raise MoneyError(f"amount {amount_fen} fen is out of range")
    return amount_fen


def share(amount_fen: int, rate_bps: int) -> int:
    """``rate_bps`` of ``amount_fen``, rounded down."""
    check_fen(amount_fen)
    if isinstance(rate_bps, bool) or not isinstance(rate_bps, int) or rate_bps < 0:
        raise MoneyError(f"rate must be a non-negative integer of basis points, got {rate_bps!r}")
    return amount_fen * rate_bps // BPS_DENOMINATOR


def unsettled_share(unsettled_fen: int, charged_fen: int, refunded_fen: int, amount_fen: int) -> int:
    """The part of a refund of ``amount_fen`` (``refunded_fen`` refunded with it, all told) that WeChat never settled:
    a 免充值 coupon paid ``unsettled_fen`` of the ``charged_fen`` WeChat charged, and a refund goes back to it in
    proportion. Rounded down on the running total, so the refunds of a whole order give back exactly
    ``unsettled_fen``."""
    if unsettled_fen <= 0 or amount_fen <= 0:
        return 0
    before = refunded_fen - amount_fen
    return unsettled_fen * refunded_fen // charged_fen - unsettled_fen * before // charged_fen


def left_after_refunds(paid_fen: int, charged_fen: int, refunded_fen: int) -> int:
    """What a payment still counts for once ``refunded_fen`` of it came back.

    WeChat charged ``charged_fen`` (the order's total at WeChat) and refunds up to that. The buyer paid ``paid_fen``
    of it (``payer_total``), which is less when a WeChat Pay coupon paid the rest. A refund goes back to both in
    proportion, so the buyer's part keeps the unrefunded share of ``paid_fen``, rounded down. Without a coupon the
    two are equal and this is simply what is left."""
    if refunded_fen <= 0:
        return paid_fen
    if refunded_fen >= charged_fen:
        return 0
    if paid_fen == charged_fen:
        return paid_fen - refunded_fen
    return (charged_fen - refunded_fen) * paid_fen // charged_fen


def parse_yuan(text: str) -> int:
    """Parse a yuan string such as ``"12.34"`` or ``"¥0.5"`` exactly into fen.

    More than two decimals is refused rather than rounded: a bill that says
    ``0.005`` is not money we can book.
    """
    cleaned = str(text).strip().lstrip("`").replace("¥", "").replace(",", "").strip()
    if not YUAN_PATTERN.fullmatch(cleaned):
        raise MoneyError(f"not a yuan amount: {text!r}")
    # Exact by construction: the digits are shifted, never multiplied in a
    # limited-precision context that could round or underflow.
    whole, _, decimals = cleaned.partition(".")
    if len(decimals.rstrip("0")) > 2:
        raise MoneyError(f"more than two decimals in yuan amount {text!r}")
    value = Decimal(whole + "." + (decimals[:2] or "0"))
    result = int(value.scaleb(2))
    if abs(result) > MAX_FEN:
        raise MoneyError(f"yuan amount {text!r} is out of range")
    return result


def format_yuan(amount_fen: int) -> str:
    """``1234`` → ``"12.34"``; negative amounts keep their sign."""
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
        raise MoneyError(f"amount must be an integer number of fen, got {amount_fen!r}")
    sign = "-" if amount_fen < 0 else ""
    whole, part = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{part:02d}"
