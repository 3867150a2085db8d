"""Which flows Detour routes, which clients may use the routes, and where those that may not can't go.

Cached per value (host, path, peer address), since they would otherwise run on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket

from mitmproxy import http

from addon.access import Address, Network, client_allowed, is_local, numeric_address, own_addresses
from addon.memo import memoized
from addon.model import App, Config

#: How long resolving a foreign client's destination name may take before it is let through (the
#: connection mitmproxy then makes would fail the same way).
RESOLVE_WITHIN = 2.0


class Routes:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.allowed_clients: tuple[Network, ...] = ()
        self._apps_by_authority: dict[str, App | None] = {}
        self._routed_paths: dict[tuple[str, str], bool] = {}
        self._allowed_peers: dict[str, bool] = {}
        self.own: frozenset[Address] = own_addresses()

    def use(self, config: Config) -> None:
        self.config = config
        self._apps_by_authority.clear()
        self._routed_paths.clear()
        self.own = own_addresses()

    def allow(self, networks: tuple[Network, ...]) -> None:
        self.allowed_clients = networks
        self._allowed_peers.clear()

    def app_for(self, flow: http.HTTPFlow) -> App | None:
        """The app whose model API this flow calls, or None when Detour leaves the flow alone."""
        if self.config is None or flow.response is not None or flow.is_replay:
            return None
        app = self._app_by_host(flow, self.config)
        if app is None:
            return None
        path = flow.request.path
        routed = memoized(self._routed_paths, (app.name, path), lambda: app.routes_path(path))
        return app if routed else None

    def _app_by_host(self, flow: http.HTTPFlow, config: Config) -> App | None:
        """The app of the host the client thinks it talks to (Host / :authority), cached per value."""
        authority = flow.request.authority or flow.request.headers.get("host", "")
        if not authority:
            return config.app_for_host(flow.request.pretty_host)

        def lookup() -> App | None:
            host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
            return config.app_for_host(host.strip("[]"))

        return memoized(self._apps_by_authority, authority, lookup)

    def client_allowed(self, flow: http.HTTPFlow) -> bool:
        peername = flow.client_conn.peername
        peer = str(peername[0]) if peername else ""  # no peer: never allowed
        return memoized(self._allowed_peers, peer, lambda: client_allowed(peer, self.allowed_clients))

    async def reaches_this_machine(self, flow: http.HTTPFlow) -> bool:
        """The flow's destination is this machine (any spelling of a loopback, "any" or own address,
        or a name resolving to one): a client outside `detour_allow_clients` may not go there."""
        host = flow.request.host
        own = set(self.own)
        sockname = flow.client_conn.sockname
        with contextlib.suppress(ValueError, IndexError, TypeError):
            own.add(ipaddress.ip_address(str(sockname[0]).split("%", 1)[0]))
        address = numeric_address(host)
        if address is not None:
            return is_local(address, own)
        name = host.lower().rstrip(".")
        if name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            async with asyncio.timeout(RESOLVE_WITHIN):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    name, flow.request.port, type=socket.SOCK_STREAM
                )
        except (OSError, TimeoutError, UnicodeError):
            return False
        resolved = (numeric_address(str(info[4][0])) for info in infos)
        return any(a is not None and is_local(a, own) for a in resolved)
