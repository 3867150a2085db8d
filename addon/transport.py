"""Reaching under a live flow to its upstream connection, for the timeouts mitmproxy lacks.

mitmproxy 11 and 12 have no connect or response timeout, and `flow.kill()` can't abort a request in
flight. The proxy server keeps each client connection's handler, whose `transports` map the flow's
server connection to its reader, writer and task; this module is the only place that relies on that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, http

logger = logging.getLogger("detour")

#: What a timed-out provider "answers": a real HTTP/1.1 response fed into mitmproxy's own parser, so the
#: flow continues through `responseheaders`/`response`, where Detour fails over transparently.
SYNTHETIC_HEADER = "x-detour-synthetic"
SYNTHETIC_KEY = SYNTHETIC_HEADER.encode()
SYNTHETIC_STATUS = 504


def synthetic_response(kind: str) -> bytes:
    return (
        f"HTTP/1.1 {SYNTHETIC_STATUS} Detour Timeout\r\n"
        f"{SYNTHETIC_HEADER}: {kind}\r\n"
        "content-type: text/plain\r\n"
        "content-length: 0\r\n"
        "connection: close\r\n\r\n"
    ).encode()


def _connection_io(client_id: str, server: Any) -> Any | None:
    """The reader/writer/task mitmproxy keeps for `server` under the client connection `client_id`."""
    proxyserver = ctx.master.addons.get("proxyserver")
    connections = getattr(proxyserver, "connections", None) or {}
    handler = connections.get(client_id)
    if handler is None or server is None:
        return None
    return handler.transports.get(server)


def _server_io(flow: http.HTTPFlow) -> Any | None:
    return _connection_io(flow.client_conn.id, flow.server_conn)


def inject_timeout_response(flow: http.HTTPFlow, kind: str) -> bool:
    """Make a silent upstream "answer" 504 so the flow can fail over; False if that isn't possible."""
    io = _server_io(flow)
    reader = getattr(io, "reader", None)
    if reader is None or flow.server_conn.alpn == b"h2" or not hasattr(reader, "feed_data"):
        return False
    try:
        reader.feed_data(synthetic_response(kind))
    except (AssertionError, RuntimeError):  # the reader already saw EOF
        return False
    return True


def cut_upstream(flow: http.HTTPFlow) -> bool:
    """Abort the flow's upstream connection (connecting or streaming); mitmproxy then ends the flow."""
    io = _server_io(flow)
    task = getattr(io, "handler", None)
    if task is None or task.done():
        return False
    task.cancel()
    return True


def on_early_close(client_id: str, server: Any, pending_kind: Callable[[], str | None]) -> bool:
    """When `server` closes or resets while a routed request still awaits its headers, make it "answer"
    a synthetic 504 instead, so the flow fails over rather than ending in mitmproxy's 502 page.

    `pending_kind` says, at that moment, whether such a request exists (and why it failed).
    """
    io = _connection_io(client_id, server)
    reader = getattr(io, "reader", None)
    if reader is None or not hasattr(reader, "feed_eof") or not hasattr(reader, "set_exception"):
        return False
    original_eof, original_exception = reader.feed_eof, reader.set_exception

    def feed_eof() -> None:
        kind = pending_kind()
        if kind is not None:
            reader.feed_data(synthetic_response(kind))
        original_eof()

    def set_exception(exc: BaseException) -> None:
        kind = pending_kind()
        if kind is None:
            original_exception(exc)
            return
        reader.feed_data(synthetic_response(kind))
        original_eof()

    reader.feed_eof = feed_eof
    reader.set_exception = set_exception
    return True
