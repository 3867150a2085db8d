"""Every assumption Detour makes about mitmproxy beyond its documented addon API, in one place.

Detour routes with public hooks only (`requestheaders`, `request`, `responseheaders`, `response`,
`error`, `websocket_message`) and documented flow fields. What it relies on beyond that is listed
here and checked once at `running()`, so a mitmproxy release that changes it produces one clear
warning naming what stops working, instead of failures on the request path later:

- `http.Request.data` (RequestData) fields are writable: how a streamed flow is pointed at the relay.
- `connection.Server(address=None)` on a flow: keeps an upstream-proxy mode off the loopback hop.
- `proxy.layers.http.HttpResponseHook` / `HttpErrorHook`: how an attempt flow Detour builds itself
  reaches the other addons (saving, dumping) as a finished flow.

The lean launcher's hook table (`hooktable.py`) extends mitmproxy's `AddonManager`; it checks what it
relies on itself (`hooktable.usable()`) and falls back to mitmproxy's own dispatch.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, hooks, http

logger = logging.getLogger("detour")

try:
    from mitmproxy.proxy.layers.http._hooks import HttpErrorHook, HttpResponseHook
except ImportError:  # pragma: no cover - depends on the mitmproxy release
    HttpErrorHook = HttpResponseHook = None  # type: ignore[assignment,misc]


def finished_hook(flow: http.HTTPFlow) -> hooks.Hook:
    """The hook mitmproxy fires for a flow that ended: `response`, or `error` without one."""
    if flow.response is None:
        return HttpErrorHook(flow)
    return HttpResponseHook(flow)


def check_internals() -> list[str]:
    """The features that can't work with this mitmproxy (each logged once); [] when all can."""
    off: list[str] = []
    request = http.Request.make("GET", "http://127.0.0.1/")
    if not all(hasattr(request.data, f) for f in ("scheme", "host", "port", "headers", "content")):
        off.append("streaming routed answers through the relay (http.Request.data)")
    if not callable(getattr(connection, "Server", None)):
        off.append("keeping the relay hop out of an upstream proxy (connection.Server)")
    if HttpResponseHook is None or HttpErrorHook is None:
        off.append("attempt flows for mitmweb and saved flows (HttpResponseHook)")
    for feature in off:
        logger.warning("detour: this mitmproxy lacks what %s needs: that feature is off", feature)
    return off
