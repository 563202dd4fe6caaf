"""Risk controls that sit in front of the money: claim limits today; scoring and collusion later.

Owns: per-IP, per-device and per-person claim limits across the platform
(count per Beijing day, minimum interval) and per campaign, enforced by atomic upserts in the same
transaction as the claim, so a refused or rolled-back claim consumes nothing
and concurrent claims can never exceed a limit.
"""

from risk.limits import (
    Claimant,
    ClaimGate,
    ClaimLimits,
    LimitHit,
    PlatformLimits,
    enforce_claim_limits,
    enforce_platform_limits,
    record_refusal,
    take_device_token_slot,
)

__all__ = [
    "ClaimGate",
    "ClaimLimits",
    "Claimant",
    "LimitHit",
    "PlatformLimits",
    "enforce_claim_limits",
    "enforce_platform_limits",
    "record_refusal",
    "take_device_token_slot",
]
