"""The mitmproxy addon: options, hooks and commands, each hook a few guard clauses and one hand-off.

Modelled on mitmproxy's own addons: options are declared in `load`, parsed by pure functions that
raise ValueError, turned into OptionsError once in `configure`. Which flows are routed is
`routing.Routes`'s question; serving them is `dispatch.Dispatcher`'s; the config file is
`configfile.ConfigFile`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from pathlib import Path

from mitmproxy import command, ctx, exceptions, http
from mitmproxy.addonmanager import Loader

from addon.access import allow_host_patterns, parse_client_networks
from addon.control import Control, monotonic_control
from addon.driver import Driver, Sender
from addon.mitm import contentview
from addon.mitm.configfile import ConfigFile
from addon.mitm.dispatch import Dispatcher
from addon.mitm.flows import MASKED, AsSent, make_response, mask_flow, refuse_replay
from addon.mitm.internals import check_internals
from addon.mitm.relay import Relay
from addon.mitm.routing import Routes
from addon.model import Config
from addon.prober import Prober
from addon.state import SqliteBackend
from addon.upstream import Pool, TlsSettings, exchange
from addon.usage import parse_window, pruned_note, table

logger = logging.getLogger("detour")

_JSON = ((b"content-type", b"application/json"),)
_TLS_OPTIONS = {"ssl_insecure", "ssl_verify_upstream_trusted_ca", "ssl_verify_upstream_trusted_confdir"}


class Detour:
    def __init__(self, send: Sender = exchange) -> None:
        #: How attempts reach providers (tests pass a scripted stand-in).
        self.send = send
        self.control: Control | None = None
        self.dispatch: Dispatcher | None = None
        self.pool = Pool()
        self.relay = Relay()
        self.routes = Routes()
        self.config_file = ConfigFile(self._use_config)
        #: Routed flows between `requestheaders` and `request`: the client's request as sent (the flow
        #: shows it with credentials masked).
        self._sent: dict[str, AsSent] = {}
        self._allow_hosts_set: list[str] | None = None
        self._watcher: asyncio.Future[None] | None = None
        #: Probes providers whose circuit is open; it asks for `self.control` on every pass, so it
        #: follows reloads (and probes nothing while no config is loaded).
        self.prober = Prober(lambda: self.control, self.pool, send=send)
        self._probing: asyncio.Future[None] | None = None

    # --- options and lifecycle --------------------------------------------------------------

    def load(self, loader: Loader) -> None:
        loader.add_option("detour_config", str, "config.yaml", "Path to Detour's config.yaml.")
        loader.add_option(
            "detour_allow_clients", Sequence[str], [],
            "Client addresses or networks, besides loopback, allowed to use routed providers.",
        )  # fmt: skip
        loader.add_option(
            "detour_intercept_all", bool, False,
            "Decrypt every host, not only the apps' hosts (Detour then leaves allow_hosts alone).",
        )  # fmt: skip
        loader.add_option("detour_watch_ms", int, 1000, "How often to check config.yaml for changes; 0: off.")
        contentview.register(lambda: self.control.secrets if self.control is not None else ())

    def configure(self, updated: set[str]) -> None:
        try:
            if "detour_allow_clients" in updated:
                self.routes.allow(parse_client_networks(ctx.options.detour_allow_clients))
            if "detour_watch_ms" in updated and ctx.options.detour_watch_ms < 0:
                raise ValueError("detour_watch_ms: must be 0 (off) or a positive number")
            if "detour_config" in updated:
                self.config_file.load(Path(ctx.options.detour_config).expanduser())
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from None
        if updated & _TLS_OPTIONS:
            o = ctx.options
            ca, confdir = o.ssl_verify_upstream_trusted_ca, o.ssl_verify_upstream_trusted_confdir
            self.pool.configure(TlsSettings(not o.ssl_insecure, ca, confdir))
        if updated & {"detour_config", "detour_intercept_all"} and self.control is not None:
            self._update_allow_hosts(self.control.config)

    def running(self) -> None:
        # Synchronous: mitmproxy 12 runs this hook synchronously for scripts loaded after start-up.
        if ctx.options.connection_strategy != "lazy":
            # With eager, mitmproxy connects to the original host before any request hook runs.
            ctx.options.update(connection_strategy="lazy")
        check_internals()
        show_comments()
        if getattr(ctx.options, "proxy_debug", False):
            logger.warning("detour: proxy_debug is on: mitmproxy logs raw bytes, API keys included")
        self.relay.listen()
        if ctx.options.detour_watch_ms > 0 and self._watcher is None:
            interval = lambda: ctx.options.detour_watch_ms / 1000  # noqa: E731 - read anew on each pass
            self._watcher = asyncio.ensure_future(self.config_file.watch(interval))
        if self._probing is None:
            self._probing = asyncio.ensure_future(self.prober.run())

    async def done(self) -> None:
        contentview.unregister()
        for task in (self._watcher, self._probing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._probing = None
        await self.prober.close()
        await self.relay.close()
        self.pool.close()
        if self.control is not None:
            self.control.close()
            self.control = None

    def _use_config(self, config: Config) -> None:
        if self.control is None:
            self.control = monotonic_control(config, SqliteBackend(config.state, config.attempt_log_limit))
            driver = Driver(self.control, self.pool, send=self.send)
            self.dispatch = Dispatcher(self.control, driver, self.relay)
        else:
            self.control.reconfigure(config)
            self._update_allow_hosts(config)
        self.routes.use(config)
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

    # --- hooks ------------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return None if self.routes.client_allowed(flow) else self._refuse_if_local(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if self.routes.app_for(flow) is not None:
            # Shown masked from here on, also to a client that is then refused; a streamed request
            # body would leave before `request` could route it.
            flow.request.stream = False
            self._sent[flow.id] = mask_flow(flow)
        if not self.routes.client_allowed(flow):
            return self._refuse_if_local(flow)
        return None

    async def _refuse_if_local(self, flow: http.HTTPFlow) -> None:
        """A client outside `detour_allow_clients` gets no hop to this machine's own services: to Detour's
        listeners such an inner hop would come from loopback, and be served as a local client's."""
        if flow.response is None and await self.routes.reaches_this_machine(flow):
            message = b'{"error": "Detour forwards no client outside detour_allow_clients to this machine"}'
            flow.response = make_response(403, _JSON, message)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.is_replay == "request" and flow.metadata.get(MASKED):
            refuse_replay(flow)
            return None
        sent = self._sent.pop(flow.id, None)
        app = self.routes.app_for(flow)
        if app is None or self.dispatch is None:
            return None
        return self.dispatch.route(flow, app, sent, self.routes.client_allowed(flow))

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.dispatch is not None:
            self.dispatch.responseheaders(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._sent.pop(flow.id, None)  # a flow answered before `request` (a refused client)
        if self.dispatch is not None:
            self.dispatch.ended(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._sent.pop(flow.id, None)
        if self.dispatch is not None:
            self.dispatch.ended(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if self.dispatch is not None:
            self.dispatch.websocket_message(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if self.dispatch is not None:
            self.dispatch.websocket_end(flow)

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
            control.unpin(app) if provider == "auto" else control.pin(app, provider)
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None

    @command.command("detour.reset")
    def reset(self, app: str, provider: str) -> None:
        """Close PROVIDER's circuit for APP and forget its failures."""
        try:
            self._control().reset(app, provider)
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None

    @command.command("detour.usage")
    def usage(self, window: str) -> Sequence[str]:
        """Requests, success rate, p50 latency, tokens and cost per app, provider and model over the
        last WINDOW (1h, 24h, 7d...), from the attempt log."""
        try:
            seconds = parse_window(window)
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None
        groups, log_starts = self._control().usage(seconds)
        lines = table(groups).splitlines()
        if log_starts is not None:
            lines.append(pruned_note(log_starts))
        return lines

    @command.command("detour.reload")
    def reload(self) -> None:
        """Reload the config file; on error the running config stays in force."""
        try:
            self.config_file.reload()
        except ValueError as e:
            raise exceptions.CommandError(str(e)) from None


def show_comments() -> None:
    """Under mitmweb, the flow list shows each flow's comment (who served it, and why) right after
    its path, unless the user chose the columns (the option exists only in mitmweb)."""
    if "web_columns" not in ctx.options or ctx.options.has_changed("web_columns"):
        return
    columns = list(ctx.options.default("web_columns"))
    if "comment" not in columns:
        at = columns.index("path") + 1 if "path" in columns else len(columns)
        ctx.options.update(web_columns=[*columns[:at], "comment", *columns[at:]])
