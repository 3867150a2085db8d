"""Client allow-listing and the hosts Detour decrypts."""

from __future__ import annotations

import ipaddress
import re

import pytest

from addon.access import allow_host_patterns, client_allowed, parse_client_networks


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], ()),
        (["192.168.1.0/24"], (ipaddress.ip_network("192.168.1.0/24"),)),
        (["10.0.0.7"], (ipaddress.ip_network("10.0.0.7/32"),)),
        ([" 192.168.1.9/24 "], (ipaddress.ip_network("192.168.1.0/24"),)),  # host bits allowed
        (["fd00::/8", "::1"], (ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("::1/128"))),
    ],
)
def test_parse_client_networks_ok(values: list[str], expected: tuple[object, ...]) -> None:
    assert parse_client_networks(values) == expected


@pytest.mark.parametrize("bad", ["nope", "192.168.1.0/33", "300.1.1.1", "", "10.0.0.0/24/8"])
def test_parse_client_networks_bad_names_the_value(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_client_networks(["10.0.0.0/8", bad])
    assert repr(bad) in str(info.value)
    assert "detour_allow_clients" in str(info.value)


LAN = parse_client_networks(["192.168.1.0/24"])


@pytest.mark.parametrize(
    ("address", "networks", "allowed"),
    [
        ("127.0.0.1", (), True),
        ("127.8.9.10", (), True),
        ("::1", (), True),
        ("::ffff:127.0.0.1", (), True),
        ("192.168.1.5", (), False),
        ("192.168.1.5", LAN, True),
        ("::ffff:192.168.1.5", LAN, True),
        ("192.168.2.5", LAN, False),
        ("10.0.0.1", LAN, False),
        ("fe80::1%eth0", (), False),
        ("fe80::1%eth0", parse_client_networks(["fe80::/10"]), True),
        (None, LAN, False),
        ("", LAN, False),
        ("garbage", LAN, False),
        ("192.168.1.5:1234", LAN, False),
    ],
)
def test_client_allowed(address: str | None, networks: tuple[object, ...], allowed: bool) -> None:
    assert client_allowed(address, networks) is allowed  # type: ignore[arg-type]


PATTERNS = allow_host_patterns(["api.anthropic.com", "api.openai.com", "api.anthropic.com"])


def decrypted(host_port: str) -> bool:
    # mitmproxy matches allow_hosts with re.search, case-insensitively.
    return any(re.search(p, host_port, re.IGNORECASE) for p in PATTERNS)


def test_allow_host_patterns_are_deduplicated_and_sorted() -> None:
    assert len(PATTERNS) == 2
    assert sorted(PATTERNS) == PATTERNS


@pytest.mark.parametrize(
    ("host_port", "expected"),
    [
        ("api.anthropic.com:443", True),
        ("api.openai.com:8443", True),
        ("evil-api.anthropic.com.attacker:443", False),
        ("xapi.anthropic.com:443", False),
        ("api.anthropic.com.evil.com:443", False),
        ("apiXanthropic.com:443", False),  # the dot is escaped
        ("api.anthropic.com", False),
        ("api.anthropic.com:443x", False),
        ("sub.api.anthropic.com:443", False),
    ],
)
def test_allow_host_patterns_match_exact_hosts(host_port: str, expected: bool) -> None:
    assert decrypted(host_port) is expected
