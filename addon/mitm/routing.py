"""Which flows Detour routes, and which clients may use the routes: the checks every request meets.

Cached per value (host, path, peer address), since they would otherwise run on every request.
"""

from __future__ import annotations

from mitmproxy import http

from addon.access import Network, client_allowed
from addon.memo import memoized
from addon.model import App, Config


class Routes:
    def __init__(self) -> None:
        self.config: Config | None = None
        self.allowed_clients: tuple[Network, ...] = ()
        self._apps_by_authority: dict[str, App | None] = {}
        self._routed_paths: dict[tuple[str, str], bool] = {}
        self._allowed_peers: dict[str, bool] = {}

    def use(self, config: Config) -> None:
        self.config = config
        self._apps_by_authority.clear()
        self._routed_paths.clear()

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
