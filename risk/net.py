"""Network addresses as risk sees them: an IPv4 address's /24, an IPv6 address's /48 (one household or office)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


def _address(ip: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4-mapped IPv6 one (``::ffff:10.1.2.7``, what a dual-stack socket reports for an IPv4
    client) as the IPv4 address it is; None when not an address."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@lru_cache(maxsize=4096)
def address_of(ip: str | None) -> str | None:
    """The address as bans keep one (``"10.1.2.7"``, ``"2001:db8::1"``); None when not an address."""
    address = _address(ip)
    return None if address is None else str(address)


@lru_cache(maxsize=4096)
def net_of(ip: str | None) -> str | None:
    """``"10.1.2.0/24"`` for ``"10.1.2.7"``, ``"2001:db8:1::/48"`` for an IPv6 address; None when not an address."""
    address = _address(ip)
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@lru_cache(maxsize=4096)
def limit_key(ip: str | None) -> str | None:
    """What the per-network-address limits count by: an IPv4 address itself, an IPv6 address's /64 (one
    subscriber's: a phone or a home is handed a whole /64, and picks any address in it at will);
    anything that is not an address, as given."""
    address = _address(ip)
    if address is None:
        return ip
    if address.version == 4:
        return str(address)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))
