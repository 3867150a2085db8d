"""Who may use Detour's routes, and which hosts it decrypts: option parsing as pure functions.

A proxy that adds your API keys to requests must not serve your LAN by accident, so only loopback
clients are trusted unless the operator lists more.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_client_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """Parse `detour_allow_clients` entries (addresses or CIDRs); raises ValueError naming the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"detour_allow_clients: {value!r} is not an IP address or network (e.g. 192.168.1.0/24)"
            ) from None
    return tuple(networks)


def client_allowed(address: str | None, networks: Iterable[Network]) -> bool:
    """Loopback clients always; others only when inside one of `networks`."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    return any(ip in net for net in networks)


def allow_host_patterns(hosts: Iterable[str]) -> list[str]:
    """mitmproxy `allow_hosts` regexes that decrypt exactly these hosts (matched as `host:port`)."""
    return [f"^{re.escape(host)}:\\d+$" for host in sorted(set(hosts))]
