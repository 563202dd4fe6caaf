"""Risk controls that sit in front of the money: claim limits today; scoring and collusion later.

Owns: per-IP, per-device and per-person claim limits across the platform
(count per Beijing day, minimum interval) and per campaign, enforced by atomic upserts in the same
transaction as the claim, so a refused or rolled-back claim consumes nothing
and concurrent claims can never exceed a limit. A campaign's limits have one
definition, ``ClaimLimits.parse`` (and the ``CLAIM_LIMITS_SCHEMA`` it publishes).
"""

from risk.limits import (
    CLAIM_LIMITS_SCHEMA,
    Banned,
    Claimant,
    ClaimGate,
    ClaimLimits,
    ClaimLimitsError,
    LimitHit,
    PlatformLimits,
    Slot,
    ban_refusal,
    campaign_slots,
    enforce_claim_limits,
    enforce_platform_limits,
    record_refusal,
    take_device_token_slot,
    take_or_refuse,
)

__all__ = [
    "CLAIM_LIMITS_SCHEMA",
    "Banned",
    "ClaimGate",
    "ClaimLimits",
    "ClaimLimitsError",
    "Claimant",
    "LimitHit",
    "PlatformLimits",
    "Slot",
    "campaign_slots",
    "enforce_claim_limits",
    "enforce_platform_limits",
    "record_refusal",
    "take_device_token_slot",
    "ban_refusal",
    "take_or_refuse",
]
