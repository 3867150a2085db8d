"""`point_at` must leave a request exactly as mitmproxy's own `request.url = base + path` would."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http

from addon.retarget import point_at, target

Fields = tuple[tuple[bytes, bytes], ...]
DEFAULT_FIELDS: Fields = ((b"host", b"api.anthropic.com"), (b"x-api-key", b"k"), (b"content-type", b"json"))


def request(http_version: str = "HTTP/1.1", headers: Fields | None = None) -> http.Request:
    if headers is None:
        headers = DEFAULT_FIELDS
    authority = b"api.anthropic.com" if http_version == "HTTP/2.0" else b""
    return http.Request(
        "api.anthropic.com", 443, b"POST", b"https", authority, b"/v1/messages?beta=true",
        http_version.encode(), http.Headers(headers), b"{}", None, 0.0, None,
    )


BASES = [
    "http://127.0.0.1:9",
    "https://api.example.com",
    "http://api.example.com",
    "https://api.example.com:443",
    "http://api.example.com:443",
    "https://open.example.cn/api/anthropic",
    "https://open.example.cn:8443/api/paas/v4",
    "https://API.Example.COM",
]
HEADER_SETS = [
    None,
    ((b"x-api-key", b"k"),),  # no Host header: none is added
    ((b"Host", b"a"), (b"x", b"1"), (b"HOST", b"b")),  # duplicates collapse into the first
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/2.0"])
@pytest.mark.parametrize("headers", HEADER_SETS)
def test_point_at_matches_the_url_setter(base: str, version: str, headers) -> None:
    expected, got = request(version, headers), request(version, headers)
    expected.url = base + "/v1/messages?beta=true"
    point_at(got, base, "/v1/messages?beta=true")
    assert got.data == expected.data
    assert got.url == expected.url


@settings(max_examples=200, deadline=None)
@given(path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
def test_point_at_keeps_any_ascii_path_as_sent(path: str) -> None:
    """Like the setter, except that urllib's reassembly there drops an empty `;` or `?`: a proxy
    shouldn't alter the path it forwards, so Detour keeps it byte for byte."""
    path = "/" + path.replace("#", "")
    expected, got = request(), request()
    expected.url = "https://open.example.cn/api" + path
    point_at(got, "https://open.example.cn/api", path)
    assert got.data.path == b"/api" + path.encode()
    expected.data.path = got.data.path
    assert got.data == expected.data


def test_ipv6_hosts_get_brackets_in_the_host_header() -> None:
    """Here mitmproxy's setter writes `::1:8080`, which no server can parse; Detour writes `[::1]:8080`."""
    got = request()
    point_at(got, "http://[::1]:8080/p", "/v1/messages")
    assert (got.host, got.port, got.path) == ("::1", 8080, "/p/v1/messages")
    assert got.headers["host"] == "[::1]:8080"


def test_a_non_ascii_path_is_kept_byte_for_byte() -> None:
    """The setter refuses a path mitmproxy decoded with surrogateescape; the bytes go on unchanged."""
    raw = "/v1/caf\udcc3\udca9"
    got = request()
    point_at(got, "https://api.example.com", raw)
    assert got.data.path == b"/v1/caf\xc3\xa9"


def test_target_parses_each_base_url_once() -> None:
    assert target("https://x.example:8443/a") is target("https://x.example:8443/a")
    assert target("https://x.example:8443/a")[:4] == (b"https", "x.example", 8443, b"/a")
