"""The mitmproxy addon: options, hooks and commands, each hook a few guard clauses and one hand-off.

Modelled on mitmproxy's own addons: options are declared in `load`, parsed by pure functions that
raise ValueError, turned into OptionsError once in `configure`. A routed request becomes an
`Exchange`, run by the `Driver` against Detour's own upstream client: answered whole from the
`request` hook when the client asked for no stream, or through the loopback `Relay` when it did (or
opened a WebSocket), so that mitmproxy streams what Detour produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addon.access import Network, allow_host_patterns, client_allowed, parse_client_networks
from addon.config import load_config
from addon.control import Control
from addon.driver import AttemptReport, Driver, Sender
from addon.exchange import Delivery, Exchange, Result
from addon.formats import Dialect, dialect_for
from addon.memo import memoized
from addon.mitm.attempts import needs_publishing, publish
from addon.mitm.flows import (
    FlowSink,
    SavedRequest,
    StreamCopy,
    annotate,
    client_request,
    make_response,
    mask_credentials,
    point_at_relay,
    restore,
)
from addon.mitm.internals import check_internals
from addon.mitm.relay import Job, Relay, RelaySink
from addon.model import App, Config
from addon.rewrite import ClientRequest, map_body_model
from addon.state import SqliteBackend
from addon.upstream import Pool, TlsSettings, exchange

logger = logging.getLogger("detour")

#: Request headers mitmproxy must see on a WebSocket handshake it sends to the relay.
_WEBSOCKET_HEADERS = (b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version")


@dataclass(eq=False)
class Relayed:
    """A routed flow whose answer comes through the relay."""

    app: App
    exchange: Exchange
    saved: SavedRequest | None = None
    copy: StreamCopy | None = None
    result: Result | None = field(default=None)


class Detour:
    def __init__(self, send: Sender = exchange) -> None:
        #: How attempts reach providers (tests pass a scripted stand-in).
        self.send = send
        self.control: Control | None = None
        self.pool = Pool()
        self.relay = Relay()
        self.driver: Driver | None = None
        self.relayed: dict[str, Relayed] = {}
        self.allowed_clients: tuple[Network, ...] = ()
        self._config_mtime: float | None = None
        self._apps_by_authority: dict[str, App | None] = {}
        self._routed_paths: dict[tuple[str, str], bool] = {}
        self._allowed_peers: dict[str, bool] = {}
        self._allow_hosts_set: list[str] | None = None
        self._watcher: asyncio.Future[None] | None = None
        #: Routed WebSocket flows: the provider their messages go to, for model mapping.
        self._sockets: dict[str, tuple[str, str]] = {}
        #: Routed flows between `requestheaders` and `request`: the client's headers as sent (the flow
        #: itself shows them with credentials masked).
        self._sent_headers: dict[str, tuple[tuple[bytes, bytes], ...]] = {}

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
        if updated & {
            "ssl_insecure",
            "ssl_verify_upstream_trusted_ca",
            "ssl_verify_upstream_trusted_confdir",
        }:
            self.pool.configure(
                TlsSettings(
                    verify=not ctx.options.ssl_insecure,
                    cafile=ctx.options.ssl_verify_upstream_trusted_ca,
                    capath=ctx.options.ssl_verify_upstream_trusted_confdir,
                )
            )
        if "detour_config" in updated:
            try:
                self._apply_config(self._read_config())
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
        if updated & {"detour_config", "detour_intercept_all"} and self.control is not None:
            self._update_allow_hosts(self.control.config)

    def running(self) -> None:
        # Synchronous: mitmproxy 12 runs this hook synchronously for scripts loaded after start-up.
        if ctx.options.connection_strategy != "lazy":
            # With eager, mitmproxy connects to the original host before any request hook runs.
            ctx.options.update(connection_strategy="lazy")
        check_internals()
        self.relay.listen()
        if ctx.options.detour_watch_ms > 0 and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch_config())

    async def done(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self.relay.close()
        self.pool.close()
        if self.control is not None:
            self.control.close()
            self.control = None

    def _config_path(self) -> Path:
        return Path(ctx.options.detour_config).expanduser()

    def _read_config(self) -> Config:
        path = self._config_path()
        with contextlib.suppress(OSError):
            self._config_mtime = path.stat().st_mtime
        return load_config(path)

    def _apply_config(self, config: Config) -> None:
        if self.control is None:
            self.control = Control(config, time.time, SqliteBackend(config.state, config.attempt_log_limit))
            self.driver = Driver(self.control, self.pool, send=self.send)
        else:
            self.control.reconfigure(config)
        self._apps_by_authority.clear()
        self._routed_paths.clear()
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

    # --- which requests are routed ----------------------------------------------------------

    def _app_for(self, flow: http.HTTPFlow) -> App | None:
        """The app of the host the client thinks it talks to (Host / :authority), cached per value."""
        assert self.control is not None
        config = self.control.config
        authority = flow.request.authority or flow.request.headers.get("host", "")
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

    def _routed_app(self, flow: http.HTTPFlow) -> App | None:
        if self.control is None or flow.response is not None or flow.is_replay:
            return None
        app = self._app_for(flow)
        if app is None or not self._routes_path(app, flow.request.path):
            return None
        return app

    # --- hooks ------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self._routed_app(flow) is None:
            return
        # A streamed request body would leave before `request` could route it.
        flow.request.stream = False
        headers = flow.request.headers
        self._sent_headers[flow.id] = headers.fields
        headers.fields = mask_credentials(headers.fields)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        sent = self._sent_headers.pop(flow.id, None)
        app = self._routed_app(flow)
        if app is None:
            return None
        try:
            return self._route(flow, app, sent)
        except Exception:  # no bug may let a routed request leave for the original host unrouted
            logger.exception("detour: routing failed")
            dialect = dialect_for(app.api, flow.request.path)
            body = dialect.error_body(502, "Detour could not route this request (see its log)")
            flow.response = make_response(502, ((b"content-type", b"application/json"),), body)
            return None

    def _route(
        self, flow: http.HTTPFlow, app: App, sent: tuple[tuple[bytes, bytes], ...] | None
    ) -> Awaitable[None] | None:
        assert self.control is not None and self.driver is not None
        peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
        dialect = dialect_for(app.api, flow.request.path)
        if not self._client_allowed(peer):
            message = f"Detour serves loopback clients only; {peer} is not in detour_allow_clients"
            headers = ((b"content-type", b"application/json"),)
            flow.response = make_response(403, headers, dialect.error_body(403, message))
            return None
        request = client_request(flow, sent)
        delivery = _delivery(request, dialect)
        exchange = Exchange(app, dialect, delivery, self.control.candidates(app), self.control.secrets)
        if delivery is Delivery.WHOLE:
            return self._answer_whole(flow, app, exchange, request)
        state = Relayed(app, exchange)
        self.relayed[flow.id] = state

        async def run(sink: RelaySink) -> None:
            state.result = await self._drive(flow, app, exchange, request, sink)

        def expired() -> None:
            self.relayed.pop(flow.id, None)

        token = self.relay.register(Job(run, expired))
        keep = _WEBSOCKET_HEADERS if delivery is Delivery.UPGRADE else ()
        # mitmproxy may hand over requests before `running`: the relay binds on first use too.
        state.saved = point_at_relay(flow, self.relay.port or self.relay.listen(), token, keep)
        return None

    async def _answer_whole(
        self, flow: http.HTTPFlow, app: App, exchange: Exchange, request: ClientRequest
    ) -> None:
        sink = FlowSink()
        try:
            result = await self._drive(flow, app, exchange, request, sink)
        except Exception:
            logger.exception("detour: request failed")
            body = exchange.dialect.error_body(502, "Detour failed on this request (see its log)")
            flow.response = make_response(502, ((b"content-type", b"application/json"),), body)
            return
        flow.response = sink.response
        annotate(flow, app.name, result)

    async def _drive(
        self,
        flow: http.HTTPFlow,
        app: App,
        exchange: Exchange,
        request: ClientRequest,
        sink: FlowSink | RelaySink,
    ) -> Result:
        assert self.driver is not None and self.control is not None
        reports: list[AttemptReport] = []
        result = await self.driver.run(exchange, request, sink, reports.append, copy_streams=_keeps_bodies())
        if result.succeeded and result.served_by is not None:
            reason = "; ".join(f"{a.provider}: {a.reason}" for a in result.failed) or "recovered"
            self.control.served(app.name, result.served_by.id, reason)
        if needs_publishing(reports):
            await publish(flow, app.name, reports)
        return result

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        state = self.relayed.get(flow.id)
        if state is None or flow.response is None:
            return
        if state.saved is not None:
            restore(flow, state.saved)
        if _keeps_bodies():
            state.copy = StreamCopy()
            flow.response.stream = state.copy
        else:
            flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        state = self.relayed.pop(flow.id, None)
        if state is None or flow.response is None:
            return
        if state.copy is not None:
            flow.response.raw_content = state.copy.body
        result = state.exchange.result
        if result is not None:
            annotate(flow, state.app.name, result)
            if flow.websocket is not None and result.served_by is not None:
                self._sockets[flow.id] = (state.app.name, result.served_by.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self._sent_headers.pop(flow.id, None)
        state = self.relayed.pop(flow.id, None)
        if state is None:
            return
        if state.saved is not None:
            restore(flow, state.saved)
        result = state.exchange.result
        if result is not None:
            annotate(flow, state.app.name, result)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Map the model in a client's `response.create` message for the provider that took the socket."""
        routed = self._sockets.get(flow.id)
        if routed is None or flow.websocket is None or self.control is None:
            return
        message = flow.websocket.messages[-1]
        if not message.from_client or not message.is_text:
            return
        app = self.control.config.app(routed[0])
        provider = app.provider(routed[1]) if app is not None else None
        if provider is None or not provider.models:
            return
        mapped = map_body_model(message.content, provider)
        if mapped is not None:
            message.content = mapped

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._sockets.pop(flow.id, None)

    # --- commands ---------------------------------------------------------------------------

    def _control(self) -> Control:
        if self.control is None:
            raise exceptions.CommandError("detour: no config loaded")
        return self.control

    @command.command("detour.status")
    def status(self) -> Sequence[str]:
        """Each app's current provider and every provider's circuit state."""
        return self._control().status_lines()

    @command.command("detour.switch")
    def switch(self, app: str, provider: str) -> None:
        """Pin PROVIDER to the front of APP's queue; PROVIDER 'auto' returns to queue order."""
        control = self._control()
        try:
            if provider == "auto":
                control.unpin(app)
            else:
                control.pin(app, provider)
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None

    @command.command("detour.reset")
    def reset(self, app: str, provider: str) -> None:
        """Close PROVIDER's circuit for APP and forget its failures."""
        try:
            self._control().reset(app, provider)
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None

    @command.command("detour.reload")
    def reload(self) -> None:
        """Reload the config file; on error the running config stays in force."""
        try:
            self.reload_config()
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None


def _delivery(request: ClientRequest, dialect: Dialect) -> Delivery:
    """A WebSocket handshake, a request for a stream, or a request for one whole answer."""
    upgrade = request.header(b"upgrade")
    if upgrade is not None and upgrade.lower() == b"websocket":
        return Delivery.UPGRADE
    return Delivery.STREAM if dialect.is_stream_request(request.path, request.body) else Delivery.WHOLE


def _keeps_bodies() -> bool:
    """Someone will look at streamed bodies: a UI (mitmweb, console) or a flow file being written."""
    if getattr(ctx.options, "store_streamed_bodies", False):
        return False  # mitmproxy 12 keeps them itself
    return ctx.master.addons.get("view") is not None or bool(getattr(ctx.options, "save_stream_file", None))
