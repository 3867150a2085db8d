"""Where a native attempt meets the network: the connect-time reroute and the deadline sweep.

mitmproxy can't retry once its own connect failed and has no timeouts of its own, so these run
beside it: a probe in `server_connect` moves a request off a dead provider before mitmproxy commits,
and a sweep over the in-flight routes cuts the attempts that outlive their deadlines.
"""

from __future__ import annotations

from collections.abc import Mapping

from mitmproxy.connection import Server
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addon.classify import ErrorKind
from addon.failover import FailoverEngine, Route, apply_provider
from addon.model import Config
from addon.transport import cut_upstream, inject_timeout_response

#: asyncio's timed waits wake up to this late (epoll rounds its timeout up to whole milliseconds), and
#: every late millisecond adds to a timed-out attempt's failover. The sweeper therefore sleeps this much
#: less than the next deadline and, once a deadline is this close, only yields to the loop until it is due.
TIMER_SLACK = 0.001


def route_connecting(routes: Mapping[str, Route], data: ServerConnectionHookData) -> Route | None:
    """The routed flow of this client connection that is waiting for this very connection."""
    if not routes or data.server.address is None:
        return None
    client_id = data.client.id
    for route in routes.values():
        flow = route.flow
        if (
            flow is not None
            and route.provider is not None
            and route.headers_at is None
            and flow.client_conn.id == client_id
            and (flow.request.host, flow.request.port) == tuple(data.server.address[:2])
        ):
            return route
    return None


async def reroute_if_unreachable(
    engine: FailoverEngine, route: Route, data: ServerConnectionHookData
) -> bool:
    """Probe the provider mitmproxy is about to connect to; if it refuses, move the request (and the
    connection being set up) to the next provider. True when the request was moved.
    """
    assert route.flow is not None and route.provider is not None and route.permit is not None
    if await engine.reachable(route, route.provider, route.permit):
        return False
    # Only a provider with the same scheme fits the connection mitmproxy is setting up.
    same = route.flow.request.scheme + "://"
    others = [p for p in route.queue if not p.base_url.startswith(same)]
    route.queue = [p for p in route.queue if p.base_url.startswith(same)]
    picked = await engine.next_provider(route)
    route.queue += others
    if picked is None:
        return False
    route.provider, route.permit = picked
    assert route.original is not None
    apply_provider(route.flow.request, route.original, route.provider)
    data.server.address = (route.flow.request.host, route.flow.request.port)
    if data.server.tls:
        data.server.sni = route.flow.request.host
    return True


def awaiting_headers_on(routes: Mapping[str, Route], server: Server) -> str | None:
    """'closed' if a routed flow on `server` still waits for its response headers."""
    for route in routes.values():
        flow = route.flow
        if flow is not None and flow.server_conn is server and route.headers_at is None:
            return "closed"
    return None


def shortest_timeout(config: Config) -> float:
    """No route can fall due sooner than this after it starts or sees data."""
    return min(min(a.timeouts.connect + a.timeouts.first_byte, a.timeouts.idle) for a in config.apps)


def sweep_pause(due_in: float) -> float:
    """How long the sweeper sleeps before its next sweep, for a next deadline `due_in` seconds away."""
    return due_in - TIMER_SLACK if due_in > TIMER_SLACK else 0.0


def check_deadlines(routes: Mapping[str, Route], now: float, shortest: float) -> float:
    """Cut native attempts past their deadline; returns the seconds until the next one is due.

    One sweep over the in-flight routes, woken at the next deadline, costs less than a timer per
    request; since no new route can fall due sooner than `shortest`, sleeping that long misses none.
    """
    due_in = shortest
    for route in list(routes.values()):
        flow = route.flow
        if flow is None or route.provider is None or route.timed_out is not None:
            continue
        timeouts = route.app.timeouts
        if route.headers_at is None:
            left = route.sent_at + timeouts.connect + timeouts.first_byte - now
            if left <= 0:
                route.timed_out = ErrorKind.TIMEOUT_FIRST_BYTE
                if not inject_timeout_response(flow, "first_byte"):
                    cut_upstream(flow)
                continue
        else:
            last = route.tee.last_activity if route.tee is not None else route.headers_at
            left = last + timeouts.idle - now
            if left <= 0:
                route.timed_out = ErrorKind.TIMEOUT_IDLE
                cut_upstream(flow)
                continue
        due_in = min(due_in, left)
    return due_in
