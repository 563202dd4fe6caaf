"""Risk controls that sit in front of the money: claim limits today; scoring and collusion later.

Owns: per-IP, per-device and per-person claim limits (count per Beijing day,
minimum interval, count per campaign), enforced by atomic upserts in the same
transaction as the claim, so a refused or rolled-back claim consumes nothing
and concurrent claims can never exceed a limit.
"""

from risk.limits import ClaimLimits, LimitHit, enforce_claim_limits, take_device_token_slot

__all__ = ["ClaimLimits", "LimitHit", "enforce_claim_limits", "take_device_token_slot"]
