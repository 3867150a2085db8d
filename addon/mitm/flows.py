"""Between mitmproxy's flows and Detour's plain values: reading the client's request, answering it,
pointing a flow at the relay and back, and telling the mitmweb user what happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from mitmproxy import connection, http

from addon.credentials import CLIENT_CREDENTIAL_PARAMS, CLIENT_CREDENTIALS
from addon.exchange import Result, attempts_text
from addon.rewrite import ClientRequest

Headers = tuple[tuple[bytes, bytes], ...]

MARK_FAILED_OVER = ":arrows_counterclockwise:"
MARK_ALL_FAILED = ":x:"
#: A streamed answer that broke and was finished by another provider.
MARK_CONTINUED = ":link:"
#: The most of a streamed answer kept on its flow for mitmweb and saved flows.
COPY_LIMIT = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AsSent:
    """A routed request's headers and path as the client sent them, while its flow shows them with
    credentials masked (mitmweb, saved flows, mitmdump's flow line)."""

    fields: Headers
    path: str


def mask_flow(flow: http.HTTPFlow) -> AsSent:
    """Mask the client's credentials on its flow, before any other addon sees them; return the
    originals for the providers that need them."""
    request = flow.request
    sent = AsSent(request.headers.fields, request.path)
    request.headers.fields = mask_credentials(sent.fields)
    shown = mask_query_credentials(sent.path)
    if shown != sent.path:
        request.path = shown
    return sent


def client_request(flow: http.HTTPFlow, sent: AsSent | None = None) -> ClientRequest:
    """The client's request as it sent it (`sent`, when its flow now shows credentials masked)."""
    request = flow.request
    raw = sent.fields if sent is not None else request.headers.fields
    fields = tuple((name.lower(), value) for name, value in raw)
    path = sent.path if sent is not None else request.path
    return ClientRequest(request.method, path, fields, request.raw_content or b"")


def mask_query_credentials(path: str) -> str:
    """`path` with the value of every credential parameter (Gemini's `?key=`) masked, the rest
    byte for byte as it was."""
    bare, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        if eq and unquote_plus(name).lower() in CLIENT_CREDENTIAL_PARAMS:
            pair = f"{name}=***"
        pairs.append(pair)
    return f"{bare}?{'&'.join(pairs)}"


def mask_credentials(fields: Headers) -> Headers:
    """The client's credentials as mitmweb, saved flows and dumps show them: masked. Detour keeps
    the real values for the providers that need them (those without a key of their own)."""
    masked = []
    for name, value in fields:
        if name.lower() in CLIENT_CREDENTIALS:
            scheme = value.split(b" ", 1)[0] if b" " in value else b""
            value = scheme + b" ***" if scheme else b"***"
        masked.append((name, value))
    return tuple(masked)


def make_response(status: int, headers: Headers, body: bytes) -> http.Response:
    fields = (*headers, (b"content-length", b"%d" % len(body)))
    now = time.time()
    return http.Response(b"HTTP/1.1", status, b"", http.Headers(fields), body, None, now, now)


class FlowSink:
    """The driver's sink for an answer delivered whole: it becomes the flow's response."""

    def __init__(self) -> None:
        self.on_gone: Callable[[], None] | None = None
        self.response: http.Response | None = None

    async def deliver(self, status: int, headers: Headers, body: bytes) -> None:
        self.response = make_response(status, headers, body)

    async def stream(self, status: int, headers: Headers) -> None:  # pragma: no cover - whole only
        raise AssertionError("a whole answer is never streamed")

    async def forward(self, data: bytes) -> None:  # pragma: no cover - whole only
        raise AssertionError("a whole answer is never streamed")

    async def finish(self) -> None:  # pragma: no cover - whole only
        raise AssertionError("a whole answer is never streamed")

    async def cut(self, reason: str) -> None:  # pragma: no cover - whole only
        raise AssertionError("a whole answer is never streamed")

    async def upgrade(self, status: int, headers: Headers, pipe: object) -> None:  # pragma: no cover
        raise AssertionError("a whole answer is never an upgrade")


@dataclass(slots=True)
class SavedRequest:
    """What a flow pointed at the relay looked like, to put back once the request has left."""

    scheme: bytes
    host: str
    port: int
    fields: tuple[tuple[bytes, bytes], ...]
    content: bytes | None
    server: connection.Server


def point_at_relay(
    flow: http.HTTPFlow, port: int, token: bytes, keep: tuple[bytes, ...] = ()
) -> SavedRequest:
    """Send the flow to the relay on 127.0.0.1:`port`: only the token travels, not the client's
    headers or body (the relay's job already holds them). `keep` names headers mitmproxy itself
    needs to see on the request (a WebSocket handshake's)."""
    request = flow.request
    data = request.data
    saved = SavedRequest(
        data.scheme, data.host, data.port, data.headers.fields, data.content, flow.server_conn
    )
    kept = tuple((k, v) for k, v in data.headers.fields if k.lower() in keep)
    data.scheme = b"http"
    data.host = "127.0.0.1"
    data.port = port
    data.headers.fields = ((b"host", b"127.0.0.1:%d" % port), (b"x-detour-relay", token), *kept)
    data.content = b""
    # A fresh server connection: an upstream-proxy mode must not send the loopback hop elsewhere.
    flow.server_conn = connection.Server(address=None)
    return saved


def restore(flow: http.HTTPFlow, saved: SavedRequest) -> None:
    """Show the client's own request again (mitmweb, saved flows), once it has left for the relay."""
    data = flow.request.data
    data.scheme = saved.scheme
    data.host = saved.host
    data.port = saved.port
    data.headers.fields = saved.fields
    data.content = saved.content


class StreamCopy:
    """A stream callable that passes chunks through and keeps a bounded copy for the flow."""

    __slots__ = ("_parts", "_size", "truncated")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.truncated = False

    def __call__(self, chunk: bytes) -> bytes:
        if chunk and not self.truncated:
            if self._size + len(chunk) <= COPY_LIMIT:
                self._parts.append(chunk)
                self._size += len(chunk)
            else:
                self.truncated = True
        return chunk

    @property
    def body(self) -> bytes:
        return b"".join(self._parts)


def annotate(flow: http.HTTPFlow, app: str, result: Result, usage: str = "") -> None:
    """Comment, marker and metadata, so mitmweb's flow list shows failovers without opening them;
    `usage` (the served attempt's tokens and cost) ends the comment."""
    served = result.served_by.id if result.served_by is not None else None
    failed = result.failed
    if result.client_gone:
        flow.comment = f"detour {app}: the client left" + (
            f" after {attempts_text(failed)}" if failed else ""
        )
    elif served is None:
        flow.comment = f"detour {app}: every provider failed: {attempts_text(failed)}"
        flow.marked = MARK_ALL_FAILED
    elif result.continued:
        flow.comment = f"detour {app}: continued by {served} after {attempts_text(failed)}"
        flow.marked = MARK_CONTINUED
    elif failed:
        flow.comment = f"detour {app}: served by {served} after {attempts_text(failed)}"
        flow.marked = MARK_FAILED_OVER
    else:
        flow.comment = f"detour {app}: served by {served}"
    if served is not None and result.verdict is not None and not result.succeeded:
        flow.comment += f" ({result.verdict.reason})"
    if usage:
        flow.comment += f" · {usage}"
    flow.metadata["detour"] = {
        "app": app,
        "provider": served,
        "failed": [{"provider": a.provider, "reason": a.reason} for a in failed],
        "continued": result.continued,
    }
