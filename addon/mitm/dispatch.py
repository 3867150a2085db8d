"""Serving routed flows: each one becomes an `Exchange` run by the `Driver`, whose answer goes back
to the flow whole (set in the `request` hook) or through the loopback relay (streams, WebSockets)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from mitmproxy import ctx, http

from addon.classify import Outcome
from addon.control import CLIENT_GONE, Control
from addon.driver import AttemptReport, Driver
from addon.exchange import Delivery, Exchange, Limits, Result, attempts_text
from addon.formats import Dialect, dialect_for
from addon.formats.documents import first_model
from addon.formats.openai_responses import final_message
from addon.formats.usage import Metering, Tokens
from addon.http1 import header_problem
from addon.mitm.attempts import needs_publishing, publish
from addon.mitm.flows import (
    TRUNCATED,
    AsSent,
    FlowSink,
    SavedRequest,
    StreamCopy,
    annotate,
    client_request,
    make_response,
    point_at_relay,
    restore,
)
from addon.mitm.relay import Job, Relay, RelaySink
from addon.model import App, Provider
from addon.rewrite import ClientRequest, map_body_model
from addon.usage import flow_summary

logger = logging.getLogger("detour")

#: Request headers mitmproxy must see on a WebSocket handshake it sends to the relay.
_WEBSOCKET_HEADERS = (b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version")
_JSON = ((b"content-type", b"application/json"),)


@dataclass(eq=False)
class Socket:
    """A routed WebSocket: who holds it, and the response the client asked for last (Codex sends
    one `response.create` at a time and reads its events before the next)."""

    app: str
    provider: str
    requested: str = ""
    asked_at: float = 0.0
    #: A `response.create` was sent and its response hasn't ended yet.
    open: bool = False


@dataclass(eq=False)
class Relayed:
    """A routed flow whose answer comes through the relay."""

    app: App
    exchange: Exchange
    saved: SavedRequest | None = None
    copy: StreamCopy | None = None


class Dispatcher:
    def __init__(self, control: Control, driver: Driver, relay: Relay) -> None:
        self.control = control
        self.driver = driver
        self.relay = relay
        self.relayed: dict[str, Relayed] = {}
        #: Routed WebSocket flows: where their messages go (model mapping, usage accounting).
        self.sockets: dict[str, Socket] = {}

    def route(
        self, flow: http.HTTPFlow, app: App, sent: AsSent | None, allowed: bool
    ) -> Awaitable[None] | None:
        """Serve a routed flow; never lets it leave for the original host unrouted."""
        try:
            return self._route(flow, app, sent, allowed)
        except Exception:
            logger.exception("detour: routing failed")
            body = dialect_for(app.api, flow.request.path).error_body(
                502, "Detour could not route this request"
            )
            flow.response = make_response(502, _JSON, body)
            return None

    def _route(
        self, flow: http.HTTPFlow, app: App, sent: AsSent | None, allowed: bool
    ) -> Awaitable[None] | None:
        dialect = dialect_for(app.api, flow.request.path)
        if not allowed:
            peer = flow.client_conn.peername[0] if flow.client_conn.peername else None
            message = f"Detour serves loopback clients only; {peer} is not in detour_allow_clients"
            flow.response = make_response(403, _JSON, dialect.error_body(403, message))
            return None
        request = client_request(flow, sent)
        problem = header_problem(request.headers)
        if problem is not None:  # the client's own doing: no provider is tried, or charged
            body = dialect.error_body(400, f"Detour can't forward this request: {problem}")
            flow.response = make_response(400, _JSON, body)
            return None
        delivery = _delivery(request, dialect)
        limits = Limits(max_body=self.control.config.max_body)
        # A continuation rewrites the request's JSON: only a body sent uncompressed can be.
        plain = request.body if request.header(b"content-encoding") in (None, b"identity") else b""
        queue = self.control.candidates(app)
        exchange = Exchange(
            app,
            dialect,
            delivery,
            queue,
            self.control.secrets,
            limits,
            plain,
            request.path,
            skipped=self.control.skipped(app, queue),
        )
        if delivery is Delivery.WHOLE:
            return self._answer_whole(flow, app, exchange, request)
        state = self.relayed[flow.id] = Relayed(app, exchange)

        async def run(sink: RelaySink) -> None:
            await self._drive(flow, app, exchange, request, sink)

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
            flow.response = make_response(502, _JSON, body)
            return
        flow.response = sink.response
        self._tell(flow, app.name, result)

    async def _drive(
        self,
        flow: http.HTTPFlow,
        app: App,
        exchange: Exchange,
        request: ClientRequest,
        sink: FlowSink | RelaySink,
    ) -> Result:
        reports: list[AttemptReport] = []
        # Attempt flows are Detour's own: their streamed bodies are copied whenever flows are shown.
        result = await self.driver.run(exchange, request, sink, reports.append, copy_streams=shows_flows())
        if needs_publishing(reports):
            await publish(flow, exchange, reports)
        return result

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A relayed answer starts: show the client's own request again, stream the answer."""
        state = self.relayed.get(flow.id)
        if state is None or flow.response is None:
            return
        if state.saved is not None:
            restore(flow, state.saved)
        if keeps_bodies():
            state.copy = StreamCopy()
            flow.response.stream = state.copy
        else:
            flow.response.stream = True

    def ended(self, flow: http.HTTPFlow) -> None:
        """A relayed flow ended (`response` or `error`): keep its copy, say who served it."""
        state = self.relayed.pop(flow.id, None)
        if state is None:
            return
        if state.saved is not None:
            restore(flow, state.saved)
        if state.copy is not None and flow.response is not None:
            flow.response.raw_content = state.copy.body
            if state.copy.truncated:
                flow.metadata[TRUNCATED] = True
        result = state.exchange.result
        if result is None:
            return
        self._tell(flow, state.app.name, result)
        if flow.websocket is not None and result.served_by is not None:
            self.sockets[flow.id] = Socket(state.app.name, result.served_by.id)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        """A client's `response.create` gets its model mapped for the provider that took the socket;
        each response is logged with its usage when it ends (or breaks off)."""
        socket = self.sockets.get(flow.id)
        if socket is None or flow.websocket is None:
            return
        message = flow.websocket.messages[-1]
        if not message.is_text:
            return
        if not message.from_client:
            ended = final_message(message.text)
            if ended is not None:
                name, tokens = ended
                failed = name in ("response.failed", "error")
                outcome = Outcome.PROVIDER_FAILURE if failed else Outcome.SUCCESS
                self._account(socket, message.timestamp, tokens, outcome.value, name if failed else "")
            return
        if socket.open:  # a new request before the last one ended: that one is over, unfinished
            self._account(socket, message.timestamp, None, CLIENT_GONE, "a new request before it ended")
        socket.requested, socket.asked_at, socket.open = first_model(message.content), message.timestamp, True
        provider = self._holder(socket)
        if provider is None or not provider.models:
            return
        mapped = map_body_model(message.content, provider)
        if mapped is not None:
            message.content = mapped

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        """A response still open when the socket closes was cut: logged with what is known."""
        socket = self.sockets.pop(flow.id, None)
        if socket is not None and socket.open:
            self._account(socket, time.time(), None, CLIENT_GONE, "the socket closed before it ended")

    def _holder(self, socket: Socket) -> Provider | None:
        """The provider holding `socket`, as the config has it now (None after a reload removed it)."""
        app = self.control.config.app(socket.app)
        return app.provider(socket.provider) if app is not None else None

    def _account(self, socket: Socket, at: float, tokens: Tokens | None, outcome: str, error: str) -> None:
        socket.open = False
        provider = self._holder(socket)
        sent = provider.sent_model(socket.requested) if provider is not None else socket.requested
        latency = max(0.0, (at - socket.asked_at) * 1000) if socket.asked_at else 0.0
        metering = Metering("openai-responses", True, socket.requested, sent, None, None, tokens)
        self.control.socket_response(socket.app, socket.provider, outcome, error, latency, metering)

    def _tell(self, flow: http.HTTPFlow, app: str, result: Result) -> None:
        """Annotate the flow for mitmweb; log a line for a request that was not served by the first
        provider tried, because mitmdump's own flow line shows the original host with the answer."""
        metering, usage = result.metering, ""
        # Only where someone will read it: a UI or a flow file, or the failover line logged below.
        shown = shows_flows() or bool(result.failed) or result.served_by is None
        if shown and metering is not None and result.served_by is not None and metering.dialect:
            dollars = self.control.cost(app, result.served_by.id, metering)
            usage = flow_summary(metering.tokens, dollars)
            flow.metadata["detour_usage"] = usage_metadata(metering, dollars)
        annotate(flow, app, result, usage)
        if result.failed or result.served_by is None:
            logger.info("%s: %s %s", described(app, result), flow.request.method, flow.request.path)


def described(app: str, result: Result) -> str:
    """The log line's words for a request that wasn't simply served by the first provider."""
    failed = attempts_text(result.failed)
    if result.client_gone:
        return f"detour {app}: the client left" + (f" after {failed}" if failed else "")
    if result.served_by is None:
        return f"detour {app}: every provider failed: {failed}"
    verb = "continued" if result.continued else "served"
    text = f"detour {app}: {verb} by {result.served_by.id} after {failed}"
    if result.verdict is not None and not result.succeeded:
        text += f" ({result.verdict.reason})"
    return text


def usage_metadata(metering: Metering, dollars: float | None) -> dict[str, object]:
    """The served attempt's usage as mitmweb's metadata tab shows it (and saved flows keep it)."""
    tokens = metering.tokens
    counts = {
        "input_tokens": tokens.input if tokens else None,
        "cache_read_tokens": tokens.cache_read if tokens else None,
        "cache_write_tokens": tokens.cache_write if tokens else None,
        "output_tokens": tokens.output if tokens else None,
        "reasoning_tokens": tokens.reasoning if tokens else None,
    }
    return {"model": metering.model, **counts, "cost_usd": dollars}


def _delivery(request: ClientRequest, dialect: Dialect) -> Delivery:
    """A WebSocket handshake, a request for a stream, or a request for one whole answer."""
    upgrade = request.header(b"upgrade")
    if upgrade is not None and upgrade.lower() == b"websocket":
        return Delivery.UPGRADE
    return Delivery.STREAM if dialect.is_stream_request(request.path, request.body) else Delivery.WHOLE


def shows_flows() -> bool:
    """Someone will look at flows: a UI (mitmweb, console) or a flow file being written."""
    return ctx.master.addons.get("view") is not None or bool(getattr(ctx.options, "save_stream_file", None))


def keeps_bodies() -> bool:
    """The client's streamed answer must be copied onto its flow: someone looks at flows and
    mitmproxy doesn't keep streamed bodies itself (12's `store_streamed_bodies`)."""
    return shows_flows() and not getattr(ctx.options, "store_streamed_bodies", False)
