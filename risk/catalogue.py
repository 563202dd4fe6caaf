"""The features a paid order is scored on, by name: what rules may name besides ``score``.

Each is computed from aggregates kept as things happen (``risk.scoring``), never from a scan of a
person's history. ``None`` means "not known for this order" (no packet, no device, no browsing
session): a condition on an unknown feature does not match.
"""

from __future__ import annotations

# name → (kind, what it means). kind: "int" (a count or seconds or fen), "ratio" (0..1), "bool".
FEATURES: dict[str, tuple[str, str]] = {
    "seconds_from_first_view": ("int", "seconds from the session's first product view to the payment"),
    "views_before_pay": ("int", "product views in the browsing session before the payment"),
    "browse_depth": ("int", "searches, comparisons and cart additions in the browsing session"),
    "no_browsing": ("bool", "no behaviour event at all in the 30 minutes before the payment"),
    "deep_link": ("bool", "the session began on a product page and went straight to pay (no search, one view)"),
    "cart_to_pay_seconds": ("int", "seconds from the last cart addition to the payment"),
    "gap_uniformity": ("ratio", "how machine-even the gaps between events are (1: identical gaps; needs 4 events)"),
    "claim_to_spend_seconds": ("int", "seconds from claiming the spent packet to the payment"),
    "above_min_spend_fen": ("int", "how far the order total is above the spent packet's minimum spend"),
    "triangle_repeats": ("int", "earlier orders with this issuer's packets by this buyer at this merchant"),
    "shares_device_with_issuer": ("bool", "the packet's issuer and the buyer have used the same device"),
    "shares_net_with_issuer": ("bool", "the packet's issuer and the buyer have used the same network"),
    "shares_with_merchant_staff": ("bool", "the buyer shares a device or network with the merchant's staff"),
    "accounts_on_device": ("int", "people who have used the order's device"),
    "accounts_on_net": ("int", "people who have used the order's network (IPv4 /24, IPv6 /48)"),
    "account_age_hours": ("int", "hours since the buyer first signed in"),
    "orders_before": ("int", "the buyer's paid orders before this one"),
    "packet_order_share": ("ratio", "the share of the buyer's earlier paid orders that spent a packet"),
    "refund_after_rebate_rate": ("ratio", "the share of the buyer's rebated orders refunded afterwards"),
    "night_order": ("bool", "paid between 00:00 and 06:00 Beijing time"),
    "orders_in_10_min": ("int", "the buyer's paid orders in the 10 minutes up to this one, this one included"),
    "rebate_cycle": ("bool", "the buyer has issued a packet the issuer spent (A rebates B, B rebates A)"),
}

# What rules compare: the score and every feature.
FIELDS: dict[str, str] = {"score": "int", **{name: kind for name, (kind, _) in FEATURES.items()}}
