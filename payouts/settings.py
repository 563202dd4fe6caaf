"""The settings the money path needs, passed in by the shell; nothing below the shell reads the app's config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MoneySettings:
    """What a payment, a refund, a milestone or a payout needs to know of the deployment.

    ``number_prefix`` (``WECHAT_NUMBER_PREFIX``) starts every number we send WeChat: staging and production
    often share one merchant id, so their numbers must differ. ``payout_min_fen`` (``PAYOUT_MIN_FEN``): a cash
    rebate below it stays in the balance rather than being sent alone. ``point_value_fen``
    (``POINT_VALUE_FEN``): what one point costs.
    """

    number_prefix: str = ""
    payout_min_fen: int = 100
    point_value_fen: int = 1
    platform_fee_bps: int = 0  # PLATFORM_FEE_BPS: the service fee of a merchant without a rate of its own

    def __post_init__(self) -> None:
        if self.point_value_fen < 1 or self.payout_min_fen < 1:
            raise ValueError("point_value_fen and payout_min_fen are positive")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MoneySettings:
        """Built by the shell (views, jobs, CLI) from the app's validated configuration."""
        return cls(
            number_prefix=config.get("WECHAT_NUMBER_PREFIX") or "",
            payout_min_fen=int(config.get("PAYOUT_MIN_FEN", 100)),
            point_value_fen=max(1, int(config.get("POINT_VALUE_FEN", 1))),
            platform_fee_bps=int(config.get("PLATFORM_FEE_BPS", 0)),
        )
