"""A merchant's marketing deposit as operators drive it: recording a top-up, scoped and audited.

The operation checks the operator may see the merchant, posts the top-up (idempotent on the key),
writes the audit line with the reason, and flushes; the caller commits once.
"""

from __future__ import annotations

from models.operators import Actor, audit
from rebate.deposits import top_up
from rebate.scope import visible_merchant


def top_up_deposit(actor: Actor, merchant_id: int, amount_fen: int, key: str, reason: str) -> int:
    """Money the merchant paid into its marketing deposit (``key``: the caller's idempotency key); its balance."""
    visible_merchant(actor.operator, merchant_id)
    held = top_up(merchant_id, amount_fen, f"{actor.operator.id}:{key}", f"deposit top-up: {reason}")
    audit(actor, "merchant.deposit_top_up", "merchant", merchant_id, reason, amount_fen=amount_fen)
    return held
