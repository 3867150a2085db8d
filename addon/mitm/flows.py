"""Between mitmproxy's flows and Detour's plain values: reading the client's request, answering it,
pointing a flow at the relay and back, and telling the mitmweb user what happened."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from mitmproxy import connection, http

from addon.credentials import CLIENT_CREDENTIAL_PARAMS, CLIENT_CREDENTIALS
from addon.exchange import Result
from addon.rewrite import ClientRequest

Headers = tuple[tuple[bytes, bytes], ...]

#: Served by another provider than the first in the queue (🔀: mitmweb's own replay icon is 🔄-like).
MARK_REROUTED = ":twisted_rightwards_arrows:"
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


#: Metadata key on a flow whose streamed body is only the first COPY_LIMIT bytes of the answer.
TRUNCATED = "detour_copy_truncated"
#: Metadata key on every flow whose credentials Detour masked for display (routed flows and attempt
#: flows): such a flow must never be replayed as it is shown.
MASKED = "detour_masked"


def mask_flow(flow: http.HTTPFlow) -> AsSent:
    """Mask the client's credentials on its flow, before any other addon sees them; return the
    originals for the providers that need them."""
    request = flow.request
    sent = AsSent(request.headers.fields, request.path)
    flow.metadata[MASKED] = True
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
    """Comment, marker and metadata, so mitmweb's flow list shows who served a request and why
    without opening it. The comment leads with the fact that matters (the serving provider, or
    that all failed), so it survives a narrow column; `usage` then the app come last."""
    served = result.served_by.id if result.served_by is not None else None
    flow.comment = " · ".join(part for part in (headline(result), usage, app) if part)
    marker = _marker(result)
    if marker:
        flow.marked = marker
    flow.metadata["detour"] = {
        "app": app,
        "provider": served,
        "failed": [{"provider": a.provider, "reason": a.reason} for a in result.failed],
        "continued": result.continued,
        "skipped": [p for p, _ in skipped_before(result)],
    }


def _marker(result: Result) -> str:
    if result.client_gone:
        return ""
    if result.served_by is None:
        return MARK_ALL_FAILED
    if result.continued:
        return MARK_CONTINUED
    return MARK_REROUTED if result.failed or skipped_before(result) else ""


def headline(result: Result) -> str:
    """`zhipu ← anthropic 529`, `✗ anthropic 529, zhipu 503`, `zhipu (anthropic: circuit open)`,
    `zhipu ⤷ anthropic reset` (continued), `client left`: who answered, then what went wrong."""
    served = result.served_by.id if result.served_by is not None else None
    failed = ", ".join(f"{a.provider} {short_reason(a.reason)}" for a in result.failed)
    skipped = ", ".join(f"{p}: circuit {state.replace('_', '-')}" for p, state in skipped_before(result))
    if result.client_gone:
        return "client left" + (f" ({failed})" if failed else "")
    if served is None:
        return f"✗ {failed}" if failed else "✗ no provider could be tried"
    if result.continued:
        text = f"{served} ⤷ {failed} (continued)"
    elif failed:
        text = f"{served} ← {failed}"
    else:
        text = served
    if skipped:
        text += f" ({skipped})"
    if result.verdict is not None and not result.succeeded:
        text += f" [{short_reason(result.verdict.reason)}]"
    return text


def short_reason(reason: str) -> str:
    """`http 529` → `529`; `http 400: too long for this provider's context window` → `400 context`;
    `timeout_first_byte: no headers for 30s` → `timeout_first_byte`."""
    if reason.startswith("http "):
        code = reason[5:].split(" ", 1)[0].rstrip(":")
        return f"{code} context" if "context window" in reason else code
    return reason.split(":", 1)[0].split(" (", 1)[0]


def skipped_before(result: Result) -> tuple[tuple[str, str], ...]:
    """Providers ahead of the one that served whose circuits were open (not tried, not failed)."""
    return result.skipped if result.served_by is not None else ()


REPLAY_REFUSED = (
    "Detour does not replay a routed request: its flow shows the client's credentials masked (***), "
    "so a replay would reach a provider without them (or with a key meant for another). Send the "
    "request again from the client, and Detour routes it like any other."
)


def refuse_replay(flow: http.HTTPFlow) -> None:
    """A replay (mitmweb's Replay, `replay.client`) of a flow whose credentials Detour masked (a
    routed flow, or one of its attempt flows) is answered here and never leaves, however often it
    is replayed (the mark that says so stays); its comment and marker are replaced."""
    body = json.dumps({"error": {"type": "replay_refused", "message": REPLAY_REFUSED}}).encode()
    flow.response = make_response(409, ((b"content-type", b"application/json"),), body)
    flow.comment = "replay refused by Detour: send it again from the client"
    flow.marked = ""
