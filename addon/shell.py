"""The mitmproxy addon: options, hooks and commands over the Detour core.

Modelled on mitmproxy's own addons: options are declared in `load`, parsed by pure functions that
raise ValueError, turned into OptionsError once in `configure`; hooks open with guard clauses and
hand the work to `FailoverEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addon.access import Network, allow_host_patterns, client_allowed, parse_client_networks
from addon.annotate import set_client_headers
from addon.breaker import Permit
from addon.classify import ErrorKind, classify_error, classify_status
from addon.config import load_config
from addon.connections import (
    awaiting_headers_on,
    check_deadlines,
    reroute_if_unreachable,
    route_connecting,
    shortest_timeout,
    sweep_pause,
)
from addon.core import Core
from addon.dispatch import Dispatcher
from addon.failover import (
    ATTEMPT_KEY,
    FailoverEngine,
    OriginalRequest,
    Route,
    apply_provider,
    header,
    is_streaming,
    redact_sent_credentials,
)
from addon.memo import memoized
from addon.model import App, Config, Provider
from addon.sse import StreamTee
from addon.store import StateStore
from addon.transport import SYNTHETIC_KEY, SYNTHETIC_STATUS, on_early_close

logger = logging.getLogger("detour")


class Detour:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.core: Core | None = None
        self.engine: FailoverEngine | None = None
        self.dispatcher = Dispatcher(clock)
        self.routes: dict[str, Route] = {}
        self.allowed_clients: tuple[Network, ...] = ()
        self._config_mtime: float | None = None
        self._apps_by_authority: dict[str, App | None] = {}
        self._routed_paths: dict[tuple[str, str], bool] = {}
        self._allow_hosts_set: list[str] | None = None
        self._shortest_timeout = 1.0
        self._allowed_peers: dict[str, bool] = {}
        self._watcher: asyncio.Future[None] | None = None
        self._sweeper: asyncio.Future[None] | None = None

    # --- options ----------------------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option("detour_config", str, "config.yaml", "Path to Detour's config.yaml.")
        loader.add_option(
            "detour_allow_clients",
            Sequence[str],
            [],
            "Client addresses or networks, besides loopback, allowed to use routed providers.",
        )
        loader.add_option(
            "detour_intercept_all",
            bool,
            False,
            "Decrypt every host, not only the apps' hosts (Detour then leaves allow_hosts alone).",
        )
        loader.add_option(
            "detour_watch_ms", int, 1000, "How often to check config.yaml for changes; 0 turns it off."
        )

    def configure(self, updated: set[str]) -> None:
        if "detour_allow_clients" in updated:
            try:
                self.allowed_clients = parse_client_networks(ctx.options.detour_allow_clients)
                self._allowed_peers.clear()
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if "detour_watch_ms" in updated and ctx.options.detour_watch_ms < 0:
            raise exceptions.OptionsError("detour_watch_ms: must be 0 (off) or a positive number")
        if "detour_config" in updated:
            try:
                self._apply_config(self._read_config())
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if updated & {"detour_config", "detour_intercept_all"} and self.core is not None:
            self._update_allow_hosts(self.core.config)

    def running(self) -> None:
        if ctx.options.connection_strategy != "lazy":
            # With eager, mitmproxy connects to the original host before any request hook runs.
            ctx.options.update(connection_strategy="lazy")
        if ctx.options.detour_watch_ms > 0 and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch_config())
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_deadlines())

    async def done(self) -> None:
        for task in (self._watcher, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._sweeper = None
        if self.core is not None:
            self.core.close()
            self.core = None

    def _config_path(self) -> Path:
        return Path(ctx.options.detour_config).expanduser()

    def _read_config(self) -> Config:
        path = self._config_path()
        with contextlib.suppress(OSError):
            self._config_mtime = path.stat().st_mtime
        return load_config(path)

    def _apply_config(self, config: Config) -> None:
        if self.core is None:
            self.core = Core(config, self.clock, StateStore(config.state, config.attempt_log_limit))
            self.engine = FailoverEngine(self.core, self.dispatcher)
        else:
            self.core.reconfigure(config)
        self._apps_by_authority.clear()
        self._routed_paths.clear()
        self._shortest_timeout = shortest_timeout(config)
        logger.info("detour: loaded %s (%s)", config.source, ", ".join(a.name for a in config.apps))

    def _update_allow_hosts(self, config: Config) -> None:
        current = list(ctx.options.allow_hosts)
        if ctx.options.detour_intercept_all:
            if self._allow_hosts_set is not None and current == self._allow_hosts_set:
                ctx.options.update(allow_hosts=[])  # only undo what Detour itself set
            self._allow_hosts_set = None
            return
        patterns = allow_host_patterns(h for app in config.apps for h in app.hosts)
        self._allow_hosts_set = patterns
        if current != patterns:
            ctx.options.update(allow_hosts=patterns)

    def reload_config(self) -> None:
        """Load config.yaml again; a bad file is reported and the running config stays in force."""
        try:
            config = self._read_config()
        except ValueError as e:
            logger.error("detour: config not reloaded, keeping the previous one: %s", e)
            raise
        self._apply_config(config)
        self._update_allow_hosts(config)

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(max(ctx.options.detour_watch_ms, 100) / 1000)
            try:
                mtime = self._config_path().stat().st_mtime
            except OSError:
                continue
            if mtime != self._config_mtime:
                with contextlib.suppress(ValueError):
                    self.reload_config()

    def _app_for(self, flow: http.HTTPFlow) -> App | None:
        """The app of the host the client thinks it talks to (Host / :authority), cached per value."""
        assert self.core is not None
        config = self.core.config
        authority = flow.request.authority or header(flow.request.headers, b"host") or ""
        if not authority:
            return config.app_for_host(flow.request.pretty_host)

        def lookup() -> App | None:
            host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
            return config.app_for_host(host.strip("[]"))

        return memoized(self._apps_by_authority, authority, lookup)

    def _routes_path(self, app: App, path: str) -> bool:
        """`app.routes_path`, cached: the glob match would otherwise run on every request."""
        return memoized(self._routed_paths, (app.name, path), lambda: app.routes_path(path))

    def _client_allowed(self, peer: str | None) -> bool:
        if peer is None:
            return False
        return memoized(self._allowed_peers, peer, lambda: client_allowed(peer, self.allowed_clients))

    # --- hooks ------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.core is None or ATTEMPT_KEY in flow.metadata:
            return
        app = self._app_for(flow)
        if app is None or not self._routes_path(app, flow.request.path):
            return
        # A streamed request body would leave before `request` could reroute it.
        flow.request.stream = False
        self.routes[flow.id] = Route(app, flow)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        # Synchronous unless a provider must be probed first: mitmproxy awaits what a hook returns,
        # and the common path then costs no coroutine.
        route = self.routes.get(flow.id)
        if route is None or self.core is None or self.engine is None:
            return None
        if flow.response is not None:  # answered by another addon
            self.routes.pop(flow.id, None)
            return None
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
        if not self._client_allowed(peer):
            self.routes.pop(flow.id, None)
            flow.response = self.engine.refusal(
                route.app, 403, f"Detour serves loopback clients only; {peer} is not in detour_allow_clients",
                None,
            )
            return None
        route.original = OriginalRequest.of(flow.request)
        route.queue = self.core.candidates(route.app)
        picked = self.engine.next_warm_provider(route)
        if picked is None and route.queue:
            return self._request_after_probe(flow, route)
        self._send_to(flow, route, picked)
        return None

    async def _request_after_probe(self, flow: http.HTTPFlow, route: Route) -> None:
        assert self.engine is not None
        self._send_to(flow, route, await self.engine.next_provider(route))

    def _send_to(self, flow: http.HTTPFlow, route: Route, picked: tuple[Provider, Permit] | None) -> None:
        if picked is None:
            self._refuse_untried(flow, route)
            return
        assert route.original is not None
        route.provider, route.permit = picked
        apply_provider(flow.request, route.original, route.provider)
        route.sent_at = self.clock()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        assert flow.response is not None
        watch = self.dispatcher.watch_for(flow)
        if watch is not None:
            watch.headers_at = self.clock()
            watch.changed.set()
            if watch.provider is not None:
                redact_sent_credentials(flow.request, watch.provider)
            if is_streaming(flow.response):
                watch.tee = StreamTee(self.clock)
                flow.response.stream = watch.tee
            return
        route = self.routes.get(flow.id)
        if route is None or route.provider is None:
            return
        route.headers_at = self.clock()
        redact_sent_credentials(flow.request, route.provider)
        # Only Detour's own stand-in status can carry the marker; other answers skip the header scan.
        synthetic_status = flow.response.status_code == SYNTHETIC_STATUS
        kind = header(flow.response.headers, SYNTHETIC_KEY) if synthetic_status else None
        route.synthetic = kind is not None
        if kind == "closed":
            route.verdict = classify_error(ErrorKind.RESET, "connection closed before the response")
        elif kind is not None:
            timeout = route.app.timeouts.connect + route.app.timeouts.first_byte
            route.verdict = classify_error(ErrorKind.TIMEOUT_FIRST_BYTE, f"no response within {timeout:g}s")
        else:
            route.verdict = classify_status(
                flow.response.status_code, flow.response.headers, route.app.statuses, self.clock()
            )
        if route.verdict.fails_over:
            # Held back: the response hook fails over before the client sees anything. Its body must
            # still arrive within `idle`, or the sweeper cuts the attempt.
            return
        if is_streaming(flow.response):
            route.tee = StreamTee(self.clock)
            flow.response.stream = route.tee
            route.final = route.verdict
            # A streamed answer's headers leave now, so the Detour headers must be set now.
            set_client_headers(flow.response, route.provider.id, route.failed)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        watch = self.dispatcher.watch_for(flow)
        if watch is not None:
            watch.answered = True
            watch.changed.set()
            return None
        route = self.routes.pop(flow.id, None)
        if route is None or self.engine is None or route.provider is None or route.permit is None:
            return None
        assert flow.response is not None
        if route.tee is not None:
            flow.response.raw_content = route.tee.body
        verdict = self.engine.native_verdict(flow, route)
        synthetic = route.synthetic
        status = None if synthetic else flow.response.status_code
        self.engine.record(route, route.provider, route.permit, verdict, route.sent_at, status)
        route.final = verdict
        if verdict.fails_over and route.tee is None:
            return self._fail_over(flow, route, None if synthetic else flow.response)
        self.engine.finish(flow, route, route.provider)
        return None

    async def _fail_over(self, flow: http.HTTPFlow, route: Route, last: http.Response | None) -> None:
        """The client hasn't seen anything yet: try the rest of the queue while this hook is awaited."""
        assert self.engine is not None
        served_by = await self.engine.fail_over(flow, route, last)
        self.engine.finish(flow, route, served_by)

    def error(self, flow: http.HTTPFlow) -> None:
        watch = self.dispatcher.watch_for(flow)
        if watch is not None:
            if watch.provider is not None:
                redact_sent_credentials(flow.request, watch.provider)
            watch.changed.set()
            return
        route = self.routes.pop(flow.id, None)
        if route is None or self.engine is None or self.core is None:
            return
        if route.provider is None or route.permit is None:
            return
        redact_sent_credentials(flow.request, route.provider)
        message = flow.error.msg if flow.error else "error"
        if "client disconnected" in message.lower():
            self.core.release(route.app.name, route.provider.id, route.permit)
            return
        if route.timed_out is not None:
            verdict = classify_error(route.timed_out, f"silent for {route.app.timeouts.idle:g}s")
        elif route.headers_at is None:
            verdict = classify_error(ErrorKind.CONNECT, message)
        else:
            verdict = classify_error(ErrorKind.RESET, message)
        self.engine.record(route, route.provider, route.permit, verdict, route.sent_at)
        self.engine.finish(flow, route, None)

    def server_connect(self, data: ServerConnectionHookData) -> Awaitable[None] | None:
        route = route_connecting(self.routes, data)
        if route is None or route.probed or self.engine is None:
            return None
        route.probed = True
        return self._probe_before_connect(data, route)

    async def _probe_before_connect(self, data: ServerConnectionHookData, route: Route) -> None:
        assert self.engine is not None
        if await reroute_if_unreachable(self.engine, route, data):
            route.sent_at = self.clock()

    def server_connected(self, data: ServerConnectionHookData) -> None:
        if self.routes and any(
            r.flow is not None and r.flow.client_conn.id == data.client.id for r in self.routes.values()
        ):
            server = data.server
            on_early_close(data.client.id, server, lambda: awaiting_headers_on(self.routes, server))

    async def _sweep_deadlines(self) -> None:
        while True:
            try:
                due_in = check_deadlines(self.routes, self.clock(), self._shortest_timeout)
            except Exception:
                # Every timeout depends on this loop: a bug in one sweep must not end the sweeping.
                logger.exception("detour: deadline sweep failed")
                due_in = self._shortest_timeout
            await asyncio.sleep(sweep_pause(due_in))

    def _refuse_untried(self, flow: http.HTTPFlow, route: Route) -> None:
        assert self.engine is not None and self.core is not None
        self.routes.pop(flow.id, None)
        waits = [s.probe_in for s in self.core.router.status(route.app.name) if s.probe_in > 0]
        message = "no provider could be tried: " + (
            ", ".join(f"{a.provider} ({a.reason})" for a in route.failed) or "every circuit is open"
        )
        flow.response = self.engine.refusal(route.app, 503, message, min(waits, default=1.0))
        self.engine.finish(flow, route, None)

    # --- commands ---------------------------------------------------------------------------

    def _core(self) -> Core:
        if self.core is None:
            raise exceptions.CommandError("detour: no config loaded")
        return self.core

    @command.command("detour.status")
    def status(self) -> Sequence[str]:
        """Each app's current provider and every provider's circuit state."""
        return self._core().status_lines()

    @command.command("detour.switch")
    def switch(self, app: str, provider: str) -> None:
        """Pin PROVIDER to the front of APP's queue; PROVIDER 'auto' returns to queue order."""
        core = self._core()
        try:
            if provider == "auto":
                core.unpin(app)
            else:
                core.switch(app, provider)
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None

    @command.command("detour.reset")
    def reset(self, app: str, provider: str) -> None:
        """Close PROVIDER's circuit for APP and forget its failures."""
        try:
            self._core().reset(app, provider)
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None

    @command.command("detour.reload")
    def reload(self) -> None:
        """Reload the config file; on error the running config stays in force."""
        try:
            self.reload_config()
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None

