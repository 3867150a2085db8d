"""Pointing a request at a provider's URL without re-parsing that URL on every request.

`request.url = ...` runs urllib's parser, an IDNA round trip and two Host-header updates through
mitmproxy's `Headers` mapping: about 15 µs, the largest single cost of routing a request. A provider's
`base_url` never changes between reloads, so it is parsed once (by mitmproxy's own `url.parse`, which
also validates it) and each request only gets the parsed values written into its `RequestData`, with
the Host header and HTTP/2 authority updated exactly as mitmproxy's setters would.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.net.http import url

from addon.memo import memoized


class Target(NamedTuple):
    scheme: bytes
    host: str
    port: int
    #: The base URL's own path ("" or e.g. "/api/anthropic"), which the client's path is appended to.
    prefix: bytes
    #: Host header and HTTP/2 :authority: host, plus the port when it isn't the scheme's default.
    #: An IPv6 address goes in brackets (mitmproxy's `hostport` leaves them out). Config only admits
    #: ASCII URLs, so no IDNA step is needed.
    authority: bytes


_targets: dict[str, Target] = {}


def target(base_url: str) -> Target:
    """The parsed `base_url` (a validated ASCII http(s) URL without query or trailing slash)."""
    return memoized(_targets, base_url, lambda: _parse(base_url))


def _parse(base_url: str) -> Target:
    scheme, host_bytes, port, _ = url.parse(base_url)
    host = host_bytes.decode()
    hostport = url.hostport(scheme.decode(), f"[{host}]" if ":" in host else host, port)
    prefix = urlsplit(base_url).path.rstrip("/").encode()
    return Target(scheme, host, port, prefix, hostport.encode())


def point_at(request: http.Request, base_url: str, path: str) -> None:
    """What `request.url = base_url + path` does, with `base_url` parsed only once."""
    t = target(base_url)
    data = request.data
    data.scheme = t.scheme
    data.host = t.host
    data.port = t.port
    data.path = t.prefix + path.encode("utf-8", "surrogateescape")
    fields = data.headers.fields
    for i, (name, _) in enumerate(fields):
        if len(name) == 4 and name.lower() == b"host":
            rest = tuple(f for f in fields[i + 1 :] if f[0].lower() != b"host")
            data.headers.fields = (*fields[:i], (name, t.authority), *rest)
            break
    if data.authority:
        data.authority = t.authority
