"""Network addresses as risk sees them: an IPv4 address's /24, an IPv6 address's /48 (one household or office)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=4096)
def net_of(ip: str | None) -> str | None:
    """``"10.1.2.0/24"`` for ``"10.1.2.7"``, ``"2001:db8:1::/48"`` for an IPv6 address; None when not an address."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
