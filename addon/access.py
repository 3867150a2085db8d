"""Who may use Detour's routes, where they may not go, and which hosts Detour decrypts.

A proxy that adds your API keys to requests must not serve your LAN by accident, so only loopback
clients are trusted unless the operator lists more; and a client that isn't trusted must not use
Detour as a hop to this machine's own services (its loopback listeners would take the inner hop for
a local client), whatever spelling of the address it uses.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import re
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path

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


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def numeric_address(host: str) -> Address | None:
    """`host` as an IP address in any spelling the OS would connect to: `127.0.0.1`, `[::1]`,
    `::ffff:127.0.0.1`, and the inet_aton forms `0`, `127.1`, `0x7f.1`, `2130706433`; None for a name."""
    bare = host.strip().strip("[]").split("%", 1)[0]
    try:
        address: Address = ipaddress.ip_address(bare)
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(bare))
        except (OSError, UnicodeError, ValueError):
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_local(address: Address, own: Iterable[Address] = ()) -> bool:
    """The address is this machine: loopback, "any" (which connects to this host), or one of `own`."""
    return address.is_loopback or address.is_unspecified or address in set(own)


def own_addresses() -> frozenset[Address]:
    """The addresses of this machine's interfaces, as far as the platform tells (Linux: all of them)."""
    found: set[Address] = set()
    with contextlib.suppress(OSError):
        for info in socket.getaddrinfo(socket.gethostname(), None):
            with contextlib.suppress(ValueError):
                found.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
    with contextlib.suppress(OSError):  # Linux: every IPv6 address, one per line, in hex
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            with contextlib.suppress(ValueError):
                found.add(ipaddress.IPv6Address(int(raw, 16)))
    with contextlib.suppress(OSError):  # Linux: local IPv4 addresses are the fib_trie's "/32 host LOCAL"
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for before, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                with contextlib.suppress(ValueError, IndexError):
                    found.add(ipaddress.IPv4Address(before.split()[-1]))
    return frozenset(found)
