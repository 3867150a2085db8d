"""One routed client request, from the first provider to the answer the client gets.

The first attempt goes out natively (mitmproxy's own connection, so responses stream); a failure
status is held back at `responseheaders` and further attempts are sent by the dispatcher while the
`response` hook is awaited, so the client only ever sees the first good answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mitmproxy import connection, http

from addon.annotate import FailedAttempt, annotate_flow, set_client_headers
from addon.breaker import Permit
from addon.classify import ErrorKind, Outcome, Verdict, classify_error, classify_status
from addon.core import Core
from addon.dispatch import AttemptEnd, Dispatcher
from addon.errors import error_body
from addon.model import App, Provider
from addon.retarget import point_at, target
from addon.rewrite import credential_headers, header_plan, mapped_body, target_path
from addon.sse import StreamTee

STREAMING_TYPES = ("text/event-stream", "application/x-ndjson", "application/jsonl")
ATTEMPT_KEY = "detour_attempt"


@dataclass(slots=True)
class Route:
    """Mutable bookkeeping of one routed flow (kept beside the flow, never in its metadata)."""

    app: App
    flow: http.HTTPFlow | None = None
    original: OriginalRequest | None = None
    queue: list[Provider] = field(default_factory=list)
    provider: Provider | None = None
    permit: Permit | None = None
    sent_at: float = 0.0
    headers_at: float | None = None
    verdict: Verdict | None = None
    tee: StreamTee | None = None
    timed_out: ErrorKind | None = None
    #: The current provider was TCP-probed for this request already.
    probed: bool = False
    #: The native answer is Detour's own stand-in for a provider that went silent or closed.
    synthetic: bool = False
    failed: list[FailedAttempt] = field(default_factory=list)
    #: The verdict on the answer the client gets; only a success moves the app's current provider.
    final: Verdict | None = None


def header(headers: http.Headers, name: bytes) -> str | None:
    """A header's first value by a scan of the raw fields: the hot path can't afford the Mapping ABC."""
    for key, value in headers.fields:
        if len(key) == len(name) and key.lower() == name:
            return value.decode("latin-1")
    return None


def is_streaming(response: http.Response) -> bool:
    content_type = (header(response.headers, b"content-type") or "").lower()
    return any(t in content_type for t in STREAMING_TYPES)


class OriginalRequest(NamedTuple):
    """What the client sent, kept without copying: header fields and body are immutable values."""

    path: str
    header_fields: tuple[tuple[bytes, bytes], ...]
    raw_content: bytes | None

    @classmethod
    def of(cls, request: http.Request) -> OriginalRequest:
        return cls(request.path, request.headers.fields, request.raw_content)

    @property
    def headers(self) -> http.Headers:
        return http.Headers(self.header_fields)


def apply_provider(request: http.Request, original: OriginalRequest, provider: Provider) -> None:
    """Make `request` the client's original, rewritten for `provider`: URL, Host/SNI, credentials, model.

    Starting from the original every time is what keeps one provider's key (or mapped model) from
    leaking into the attempt on the next one.
    """
    request.headers.fields = original.header_fields
    request.raw_content = original.raw_content
    remove, add = header_plan(provider)
    for name in remove:
        request.headers.pop(name, None)
    for name, value in add.items():
        request.headers[name] = value
    point_at(request, provider.base_url, target_path(provider, original.path))
    body = mapped_body(provider, original.raw_content or b"", original.headers) if provider.models else None
    if body is not None:
        request.content = body
    elif original.raw_content and request.http_version == "HTTP/2.0" and not _framed(request.headers):
        # An HTTP/2 client may omit content-length; an HTTP/1.1 provider would then read no body.
        request.headers["content-length"] = str(len(original.raw_content))


def _framed(headers: http.Headers) -> bool:
    return "content-length" in headers or "transfer-encoding" in headers


def redact_sent_credentials(request: http.Request, provider: Provider) -> None:
    """Once a request has left, mask the key Detour put on it, so mitmweb, saved flows and
    `flow_detail` dumps never show it."""
    if provider.api_key is None:
        return
    for name in credential_headers(provider):
        if name in request.headers:
            request.headers[name] = "Bearer ***" if name == "authorization" else "***"


def redact_body(response: http.Response, secrets: list[str]) -> None:
    """Mask keys that a provider's error body echoes back, before the client gets it."""
    body = response.get_content(strict=False) or b""
    hits = [s.encode() for s in secrets if s and s.encode() in body]
    for secret in hits:
        body = body.replace(secret, b"***")
    if hits:
        response.content = body


async def tcp_reachable(host: str, port: int, timeout: float) -> str | None:
    """None if a TCP connection opens within `timeout`, else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return f"no connection within {timeout:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


class FailoverEngine:
    def __init__(self, core: Core, dispatcher: Dispatcher) -> None:
        self.core = core
        self.dispatcher = dispatcher

    # --- picking a provider ---------------------------------------------------------------

    def next_warm_provider(self, route: Route) -> tuple[Provider, Permit] | None:
        """The next provider when it needs no probe (it answered recently); None otherwise.

        Providers whose breaker refuses are skipped; the queue then starts with one that needs a probe.
        """
        app = route.app
        while route.queue:
            provider = route.queue[0]
            if not self.core.is_warm(app.name, provider.id):
                return None
            route.queue.pop(0)
            permit = self.core.acquire(app.name, provider.id)
            if permit is not None:
                route.probed = False
                return provider, permit
        return None

    async def next_provider(self, route: Route) -> tuple[Provider, Permit] | None:
        """Pop the next provider that admits a call and accepts connections; failures are recorded.

        A provider that answered recently is trusted without a probe here; `server_connect` probes it
        if mitmproxy has to open a new connection after all.
        """
        while route.queue:
            warm = self.next_warm_provider(route)
            if warm is not None or not route.queue:
                return warm
            provider = route.queue.pop(0)  # not warm: admitted only if it accepts a connection
            permit = self.core.acquire(route.app.name, provider.id)
            if permit is not None and await self.reachable(route, provider, permit):
                route.probed = True
                return provider, permit
        return None

    async def reachable(self, route: Route, provider: Provider, permit: Permit) -> bool:
        """TCP-probe `provider`; a failure is recorded against it (and consumes the permit)."""
        started = self.core.clock()
        address = target(provider.base_url)
        problem = await tcp_reachable(address.host, address.port, route.app.timeouts.connect)
        if problem is None:
            return True
        kind = ErrorKind.TIMEOUT_CONNECT if problem.startswith("no connection") else ErrorKind.CONNECT
        self.record(route, provider, permit, classify_error(kind, problem), started)
        return False

    def record(
        self,
        route: Route,
        provider: Provider,
        permit: Permit,
        verdict: Verdict,
        started: float,
        status: int | None = None,
    ) -> None:
        latency = (self.core.clock() - started) * 1000
        self.core.record(route.app.name, provider.id, permit, verdict, latency, status)
        if verdict.fails_over:
            route.failed.append(FailedAttempt(provider.id, self.core.redact(verdict.reason)))

    # --- after the native attempt -----------------------------------------------------------

    def native_verdict(self, flow: http.HTTPFlow, route: Route) -> Verdict:
        assert flow.response is not None
        if route.verdict is None:
            route.verdict = classify_status(
                flow.response.status_code, flow.response.headers, route.app.statuses, self.core.clock()
            )
        tee = route.tee
        if tee is not None and route.verdict.outcome is Outcome.SUCCESS:
            if tee.error_event is not None:
                return classify_error(ErrorKind.STREAM_ERROR, tee.error_event[:120])
            if not tee.saw_terminal and route.app.error_shape != "gemini":
                return classify_error(ErrorKind.RESET, "stream ended without its final event")
        return route.verdict

    async def fail_over(
        self, flow: http.HTTPFlow, route: Route, last: http.Response | None
    ) -> Provider | None:
        """Try the rest of the queue; put the first good answer (or the last error) on `flow`.

        `last` is the failed native answer, if it was a real one: it is what the client gets when no
        other provider does better.
        """
        while True:
            picked = await self.next_provider(route)
            if picked is None:
                break
            provider, permit = picked
            end, verdict = await self._attempt(flow, route, provider, permit)
            if end.response is not None:
                last = end.response
            if not verdict.fails_over:
                flow.response = _deliverable(end)
                route.final = verdict
                return provider
        if last is not None:
            flow.response = last if last is flow.response else last.copy()
        elif route.failed:
            flow.response = self.refusal(route.app, 504, "every provider failed or timed out", None)
        return None

    async def _attempt(
        self, flow: http.HTTPFlow, route: Route, provider: Provider, permit: Permit
    ) -> tuple[AttemptEnd, Verdict]:
        assert route.original is not None
        attempt = attempt_flow(flow)
        attempt.comment = f"detour attempt on {provider.id} for {route.app.name}"
        apply_provider(attempt.request, route.original, provider)
        started = self.core.clock()
        try:
            end = await self.dispatcher.send(attempt, provider, route.app.timeouts)
        except BaseException:
            self.core.release(route.app.name, provider.id, permit)
            raise
        if end.response is None:
            assert end.error is not None
            verdict = classify_error(end.error, end.detail)
        else:
            verdict = classify_status(
                end.response.status_code, end.response.headers, route.app.statuses, self.core.clock()
            )
            tee = end.tee
            if tee is not None and tee.error_event is not None and verdict.outcome is Outcome.SUCCESS:
                verdict = classify_error(ErrorKind.STREAM_ERROR, tee.error_event[:120])
        status = end.response.status_code if end.response else None
        self.record(route, provider, permit, verdict, started, status)
        return end, verdict

    # --- answering ------------------------------------------------------------------------

    def refusal(self, app: App, status: int, message: str, retry_after: float | None) -> http.Response:
        """An error in the app's own API shape, so the client's SDK handles it like the real thing."""
        headers: dict[str, Any] = {"content-type": "application/json"}
        if retry_after is not None:
            headers["retry-after"] = str(max(1, round(retry_after)))
        return http.Response.make(status, error_body(app.error_shape, status, message), headers)

    def finish(self, flow: http.HTTPFlow, route: Route, served_by: Provider | None) -> None:
        """Tell the client and mitmweb what happened, and let the switch manager know."""
        if flow.response is not None and not flow.response.stream:
            if flow.response.status_code >= 400:
                redact_body(flow.response, self.core.secrets(self.core.config))
            set_client_headers(flow.response, served_by.id if served_by else None, route.failed)
        annotate_flow(flow, route.app.name, served_by.id if served_by else None, route.failed)
        if served_by is not None and route.final is not None and route.final.outcome is Outcome.SUCCESS:
            reason = "; ".join(f"{a.provider}: {a.reason}" for a in route.failed) or "recovered"
            self.core.served(route.app.name, served_by.id, reason)


def attempt_flow(flow: http.HTTPFlow) -> http.HTTPFlow:
    """A new flow for one failover attempt, carrying the client's request line, trailers and client.

    Built, not copied: `flow.copy()` round-trips the whole flow through its serialised state (about
    0.2 ms, on the failover path the client is waiting on). `apply_provider` then supplies the
    client's original headers and body for the provider.
    """
    request = flow.request
    data = request.data
    attempt = http.HTTPFlow(flow.client_conn, connection.Server(address=None))
    attempt.request = http.Request(
        data.host, data.port, data.method, data.scheme, data.authority, data.path, data.http_version,
        http.Headers(), None, request.trailers.copy() if request.trailers else None, time.time(), None,
    )
    attempt.metadata[ATTEMPT_KEY] = flow.id
    attempt.is_replay = "request"
    return attempt


def _deliverable(end: AttemptEnd) -> http.Response:
    assert end.response is not None
    response = end.response.copy()
    if end.tee is not None:
        response.stream = False
        response.raw_content = end.tee.body
    return response
