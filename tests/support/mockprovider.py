"""Mock LLM provider servers for tests: real HTTP/1.1 on 127.0.0.1, programmable faults.

Each :class:`MockProvider` runs a raw asyncio streams server in its own background thread and
event loop, so both sync tests and async tests (on their own loop) can talk to it.

Endpoints
    ``POST /v1/messages``           Anthropic Messages API (JSON, or SSE when ``"stream": true``)
    ``POST /v1/chat/completions``   OpenAI Chat Completions API (JSON, or SSE when ``"stream": true``)
    ``POST /v1/responses``          OpenAI Responses API (JSON, or SSE ending with ``response.completed``
                                    and no ``[DONE]`` when ``"stream": true``)
    ``POST /v1beta/models/M:generateContent`` / ``:streamGenerateContent?alt=sse``  Gemini (JSON or
                                    SSE chunks, the last with ``finishReason``); ``:countTokens``
    ``GET /v1/responses``           with ``Upgrade: websocket``: Codex's WebSocket transport; each
                                    ``response.create`` text message is answered with the Responses
                                    events as text messages (``MockProvider(name, websocket=False)``
                                    answers the handshake 404, like a provider without it)
    anything else                   200 ``{"side": true, "provider": name, "path": path}``

The answer text is ``"hello from {name}"`` and every response carries ``x-mock-provider: {name}``.

Faults (``mock.fault(kind, times=None, path_prefix=None, **params)``; ``mock.healthy()`` resets):
    status           ``status``, ``headers``, ``body`` (bytes | dict | None), ``retry_after``
    refuse           listener closed (ECONNREFUSED), open connections aborted; ``times`` not
                     supported; optional ``duration`` seconds after which it re-opens by itself
    reset            request read, then the socket is closed with RST
    hang             request read, never answered (until ``healthy()`` / ``stop()``, which abort it)
    slow_first_byte  ``delay`` seconds before the normal response
    sse_cut          headers + first ``events`` (2) SSE events, then RST without the last chunk
    sse_stall        headers + first ``events`` (2) SSE events, then silence (until healthy/stop)
    sse_error        200 SSE: ``after`` (0) normal events, an error event, then a proper end
    sse_malformed    200 SSE: garbage (bad JSON, a line without a colon), then the normal events
    slow_stream      normal SSE with ``interval`` seconds between events
    big_stream       normal SSE whose text is ``count`` pieces of ``size`` characters
    slow_first_token the head and the events before the first content at once, then ``delay``
                     seconds, then the rest
    tool_round_trip  Chat streams: a request offering the tool ``tool`` gets a call of it with
                     ``arguments``; once the request carries the tool's result, the answer quotes it
    sse_no_done      Chat: a complete stream (finish_reason, usage if asked) without ``data: [DONE]``;
                     ``framing="close"`` ends it by closing the connection instead of chunking

A request whose last message is an assistant turn (a prefill) is answered with the rest of the
mock's own answer when that answer begins with it (``mock.continued`` lists the prefills).

The SSE-only faults on a non-streaming request: ``sse_cut``/``sse_stall`` send the headers and
half the JSON body, then cut/stall; ``sse_error``/``sse_malformed``/``slow_stream`` answer normally.

Every request is recorded before its fault is applied (``refuse``: nothing is received at all).
``GET /__count`` answers ``{"count": N}``, the number of requests recorded so far (itself excluded).

As a process, for the benchmark (one mock for tests and bench)::

    python tests/support/mockprovider.py KIND:PORT [KIND:PORT ...]

KIND is ``ok`` (streams pace their events 50 ms apart), ``500``, ``529`` or ``hang``. It prints
``ready`` once every listener is bound and exits on SIGTERM/SIGINT or when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json as jsonlib
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["FAULT_KINDS", "MockProvider", "Received"]

FAULT_KINDS = frozenset(
    {
        "status",
        "refuse",
        "reset",
        "hang",
        "slow_first_byte",
        "sse_cut",
        "sse_stall",
        "sse_error",
        "sse_malformed",
        "slow_stream",
        "big_stream",
        "slow_first_token",
        "sse_no_done",
        "tool_round_trip",
    }
)

ANTHROPIC_PATH = "/v1/messages"
OPENAI_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"

_MAX_HEADERS = 256
_MAX_BODY = 64 * 1024 * 1024
_MAX_REQUESTS_PER_CONNECTION = 100_000
_IDLE_TIMEOUT = 120.0  # seconds a keep-alive connection may sit idle before the mock closes it
_CUT_GRACE = 0.05  # seconds between the last byte and the RST, so the peer reads what was sent

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}


@dataclass(frozen=True)
class Received:
    """One request as the mock received it."""

    method: str
    path: str  # request target as sent, including any query string
    headers: dict[str, str]  # lowercase names; for repeated names the last one wins
    raw_headers: tuple[tuple[str, str], ...]  # as sent, in order, original case
    body: bytes
    json: object | None  # parsed body, None if empty or not JSON
    at: float  # time.monotonic() when the request was complete
    conn_id: int = 0  # connections are numbered from 1 per MockProvider

    @property
    def route(self) -> str:
        """The path without its query string."""
        return self.path.split("?", 1)[0]


@dataclass
class _Fault:
    kind: str
    remaining: int | None
    path_prefix: str | None
    params: dict[str, Any]


class _BadRequest(Exception):
    pass


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def _anthropic_error_type(status: int) -> str:
    default = "api_error" if status >= 500 else "invalid_request_error"
    return _ANTHROPIC_ERROR_TYPES.get(status, default)


def _openai_error(status: int) -> tuple[str, str | None]:
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def _gemini_call(route: str) -> tuple[str, str] | None:
    """(model, method) of a Gemini API path (`/v1beta/models/M:method`), or None."""
    for prefix in ("/v1beta/models/", "/v1/models/"):
        if route.startswith(prefix) and ":" in route[len(prefix) :]:
            model, _, method = route[len(prefix) :].partition(":")
            return model, method
    return None


def _fill(schema: dict[str, Any]) -> Any:
    """A minimal value satisfying a JSON schema (objects get their required properties)."""
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "object")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: _fill(props.get(name, {})) for name in schema.get("required") or props}
    if kind == "array":
        return []
    if kind in ("number", "integer"):
        return 10
    if kind == "boolean":
        return False
    return "mock"


def default_error_body(route: str, status: int, name: str) -> dict[str, Any]:
    """The API-shaped error body the ``status`` fault sends when no ``body`` is given."""
    message = f"mock {name}: HTTP {status}"
    if _gemini_call(route) is not None:
        statuses = {
            429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE",
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
        }
        return {"error": {"code": status, "message": message, "status": statuses.get(status, "INTERNAL")}}
    if route in (OPENAI_PATH, RESPONSES_PATH):
        etype, code = _openai_error(status)
        return {"error": {"message": message, "type": etype, "param": None, "code": code}}
    etype = _anthropic_error_type(status)
    if etype == "overloaded_error":
        message = "Overloaded"
    return {"type": "error", "error": {"type": etype, "message": message}}


@dataclass
class MockUsage:
    """The tokens every answer reports, each API in its own way (`block`). `input` is fresh
    input; cached tokens are reported inside the input where the API does so; `reasoning` is part
    of `output`."""

    input: int = 10
    output: int = 5
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0

    def block(self, api: str) -> dict[str, Any]:
        if api == "anthropic":
            block: dict[str, Any] = {"input_tokens": self.input, "output_tokens": self.output}
            if self.cache_read:
                block["cache_read_input_tokens"] = self.cache_read
            if self.cache_write:
                block["cache_creation_input_tokens"] = self.cache_write
            return block
        prompt = self.input + self.cache_read + self.cache_write
        if api == "responses":
            return {
                "input_tokens": prompt,
                "output_tokens": self.output,
                "total_tokens": prompt + self.output,
                "input_tokens_details": {"cached_tokens": self.cache_read},
                "output_tokens_details": {"reasoning_tokens": self.reasoning},
            }
        if api == "gemini":
            meta = {
                "promptTokenCount": prompt,
                "candidatesTokenCount": self.output - self.reasoning,
                "totalTokenCount": prompt + self.output,
            }
            if self.cache_read:
                meta["cachedContentTokenCount"] = self.cache_read
            if self.reasoning:
                meta["thoughtsTokenCount"] = self.reasoning
            return meta
        chat: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt + self.output,
        }
        if self.cache_read or self.cache_write:
            details = {"cached_tokens": self.cache_read}
            if self.cache_write:
                details["cache_write_tokens"] = self.cache_write
            chat["prompt_tokens_details"] = details
        if self.reasoning:
            chat["completion_tokens_details"] = {"reasoning_tokens": self.reasoning}
        return chat


class MockProvider:
    """A mock Anthropic/OpenAI-compatible provider on ``127.0.0.1`` (see the module docstring)."""

    def __init__(self, name: str, websocket: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.websocket = websocket
        #: The prefill of every request that asked it to continue an answer, in order.
        self.continued: list[str] = []
        #: Serve HTTPS with this context (see tlscerts.TestCA.server_context); HTTP/1.1 only.
        self.tls = tls
        #: Text messages received over WebSocket connections, in order.
        self.ws_messages: list[bytes] = []
        #: The tokens every answer reports.
        self.usage = MockUsage()
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listen_sock: socket.socket | None = None
        self._cond = threading.Condition()
        self._received: list[Received] = []
        self._fault_lock = threading.Lock()
        self._fault: _Fault | None = None
        self._conn_ids = itertools.count(1)
        # Loop-thread state only:
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter | None] = {}
        self._socks: set[socket.socket] = set()  # accepted sockets not yet closed by their task
        self._release: asyncio.Event | None = None
        self._reopen_handle: asyncio.TimerHandle | None = None
        self._reopen_task: asyncio.Future[None] | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError(f"MockProvider {self.name!r} is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> MockProvider:
        if self._thread is not None:
            raise RuntimeError("MockProvider can only be started once")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open_listener())
                self._release = asyncio.Event()
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"mockprovider-{self.name}", daemon=True)
        self._thread.start()
        if not ready.wait(10.0):
            raise RuntimeError(f"MockProvider {self.name!r} did not start within 10 s")
        if failure:
            self._thread.join(5.0)
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, cancel handlers. Idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or self._stopped:
            return
        self._stopped = True
        if thread.is_alive() and not loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10.0)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> MockProvider:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._port or "-"
        return f"<MockProvider {self.name!r} port={port} fault={self.current_fault()}>"

    # ------------------------------------------------------------------ recording

    @property
    def received(self) -> list[Received]:
        with self._cond:
            return list(self._received)

    def count(self, path_prefix: str | None = None) -> int:
        with self._cond:
            return self._count_locked(path_prefix)

    def _count_locked(self, path_prefix: str | None) -> int:
        if path_prefix is None:
            return len(self._received)
        return sum(1 for r in self._received if r.path.startswith(path_prefix))

    def clear(self) -> None:
        with self._cond:
            self._received.clear()

    def wait_for_requests(self, n: int, timeout: float = 5.0, path_prefix: str | None = None) -> bool:
        """Block until at least ``n`` requests (matching ``path_prefix``) were received."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._count_locked(path_prefix) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.25))
            return True

    async def async_wait_for_requests(
        self, n: int, timeout: float = 5.0, path_prefix: str | None = None
    ) -> bool:
        """:meth:`wait_for_requests` for async tests (does not block the caller's loop)."""
        return await asyncio.to_thread(self.wait_for_requests, n, timeout, path_prefix)

    def _record(self, rec: Received) -> None:
        with self._cond:
            self._received.append(rec)
            self._cond.notify_all()

    # ------------------------------------------------------------------ faults

    def fault(
        self, kind: str, times: int | None = None, path_prefix: str | None = None, **params: Any
    ) -> None:
        """Apply ``kind`` to the next ``times`` requests (None: until changed).

        ``path_prefix`` limits the fault to requests whose path starts with it (others are
        answered normally and do not use up ``times``).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if kind == "refuse":
            if times is not None or path_prefix is not None:
                raise ValueError("'refuse' cannot count requests (none arrive); use duration=SECONDS")
            if not self.running:
                raise RuntimeError("'refuse' needs a started MockProvider")
            with self._fault_lock:
                self._fault = _Fault(kind, None, None, dict(params))
            self._call_in_loop(self._refuse(params.get("duration")))
            return
        if kind == "status" and "status" not in params:
            raise ValueError("the 'status' fault needs status=<int>")
        with self._fault_lock:
            self._fault = _Fault(kind, times, path_prefix, dict(params))
        self._call_in_loop(self._ensure_listening())

    def healthy(self) -> None:
        """Back to normal: listener re-opened if refused, hung/stalled handlers aborted."""
        with self._fault_lock:
            self._fault = None
        self._call_in_loop(self._heal())

    def current_fault(self) -> str | None:
        with self._fault_lock:
            return self._fault.kind if self._fault else None

    def _take_fault(self, path: str) -> _Fault | None:
        with self._fault_lock:
            f = self._fault
            if f is None or f.kind == "refuse":
                return None
            if f.path_prefix is not None and not path.startswith(f.path_prefix):
                return None
            if f.remaining is not None:
                f.remaining -= 1
                if f.remaining <= 0:
                    self._fault = None
            return f

    def _call_in_loop(self, coro: Any) -> None:
        """Run a control coroutine on the server loop and wait for it (no-op before start/after stop)."""
        loop = self._loop
        if loop is None or self._stopped or not self.running:
            coro.close()  # before start(): the fault state applies once started; after stop(): moot
            return
        asyncio.run_coroutine_threadsafe(coro, loop).result(10.0)

    # ------------------------------------------------------------------ loop-side control

    async def _open_listener(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._port:
                # Re-bind the same port; a TIME_WAIT leftover is fine with SO_REUSEADDR, but give
                # a transient EADDRINUSE a bounded number of retries.
                for attempt in range(40):
                    try:
                        sock.bind(("127.0.0.1", self._port))
                        break
                    except OSError:
                        if attempt == 39:
                            raise
                        await asyncio.sleep(0.05)
            else:
                sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        self._listen_sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_acceptable, sock)

    def _on_acceptable(self, lsock: socket.socket) -> None:
        # A plain reader callback rather than asyncio.start_server or loop.sock_accept: both can
        # accept a connection and then drop the socket unclosed when the listener is closed at the
        # wrong moment (CPython 3.11). Every socket accepted here is tracked until closed.
        for _ in range(64):
            try:
                conn, _addr = lsock.accept()
            except OSError:  # BlockingIOError when the backlog is empty
                return
            conn.setblocking(False)
            if self._stopped:
                _rst_sock(conn)
                continue
            self._socks.add(conn)
            task = asyncio.ensure_future(self._serve_socket(conn))
            self._conns[task] = None

    async def _serve_socket(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            if self._stopped:
                return
            if self.tls is None:
                reader, writer = await asyncio.open_connection(sock=conn, limit=1024 * 1024)
            else:
                loop = asyncio.get_running_loop()
                reader = asyncio.StreamReader(limit=1024 * 1024)
                protocol = asyncio.StreamReaderProtocol(reader)
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, ssl=self.tls)
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._handle_conn(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._socks.discard(conn)
            task = asyncio.current_task()
            if task is not None:
                self._conns.pop(task, None)
            if writer is None:
                _rst_sock(conn)
            elif not writer.is_closing():
                writer.close()

    async def _close_listener(self) -> None:
        lsock, self._listen_sock = self._listen_sock, None
        if lsock is not None:
            asyncio.get_running_loop().remove_reader(lsock.fileno())
            lsock.close()

    async def _ensure_listening(self) -> None:
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
            self._reopen_handle = None
        if self._listen_sock is None and not self._stopped:
            await self._open_listener()

    async def _refuse(self, duration: float | None) -> None:
        await self._close_listener()
        self._abort_all()
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
            self._reopen_handle = None
        if duration is not None:
            loop = asyncio.get_running_loop()
            self._reopen_handle = loop.call_later(float(duration), self._reopen_after_refuse)

    def _reopen_after_refuse(self) -> None:
        self._reopen_handle = None
        with self._fault_lock:
            if self._fault is not None and self._fault.kind == "refuse":
                self._fault = None
        self._reopen_task = asyncio.ensure_future(self._ensure_listening())

    async def _heal(self) -> None:
        if self._release is not None:
            self._release.set()
        self._release = asyncio.Event()
        await self._ensure_listening()

    def _abort_all(self) -> None:
        for writer in list(self._conns.values()):
            if writer is not None:
                _rst(writer)

    async def _shutdown(self) -> None:
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
        await self._close_listener()
        if self._release is not None:
            self._release.set()
        self._abort_all()
        for t in list(self._conns):
            t.cancel()
        # Connections accepted just before the listener closed may not have a handler yet; let
        # every other task on this loop finish (new handlers RST at once since _stopped is set).
        me = asyncio.current_task()
        for _ in range(50):
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not pending:
                break
            await asyncio.wait(pending, timeout=0.1)
        else:
            for t in pending:
                t.cancel()
        for _ in range(3):  # let transports' connection_lost callbacks close their sockets
            await asyncio.sleep(0)
        # A task cancelled before it first ran never reaches its `finally`: close its socket here.
        for conn in list(self._socks):
            if conn.fileno() != -1:
                _rst_sock(conn)
        self._socks.clear()

    # ------------------------------------------------------------------ connection handling

    async def _handle_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopped or task not in self._conns:
            _rst(writer)
            return
        self._conns[task] = writer
        conn_id = next(self._conn_ids)
        try:
            for _ in range(_MAX_REQUESTS_PER_CONNECTION):
                try:
                    req = await asyncio.wait_for(self._read_request(reader, writer, conn_id), _IDLE_TIMEOUT)
                except (_BadRequest, asyncio.LimitOverrunError, ValueError):
                    await self._send_simple(writer, 400, {"error": "bad request"}, close=True)
                    return
                if req is None:
                    return
                if req[0].method == "GET" and req[0].path == "/__count":
                    await self._send_simple(writer, 200, {"count": self.count()}, req[1])
                    continue
                self._record(req[0])
                keep_alive = await self._respond(req[0], req[1], writer, reader)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            return
        except asyncio.CancelledError:
            # Only stop() cancels handlers. Finishing the task normally (rather than cancelled) keeps
            # asyncio's streams callback from logging the CancelledError as an error.
            _rst(writer)
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int
    ) -> tuple[Received, bool] | None:
        line = await reader.readline()
        for _ in range(8):  # tolerate a few stray CRLFs between requests
            if line not in (b"\r\n", b"\n"):
                break
            line = await reader.readline()
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise _BadRequest("truncated request line")
        parts = line.decode("latin-1").strip().split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest(f"bad request line {line!r}")
        method, target, version = parts
        raw: list[tuple[str, str]] = []
        for _ in range(_MAX_HEADERS + 1):
            hline = await reader.readline()
            if not hline.endswith(b"\n"):
                raise _BadRequest("truncated headers")
            if hline in (b"\r\n", b"\n"):
                break
            name, sep, value = hline.decode("latin-1").partition(":")
            if not sep:
                raise _BadRequest(f"bad header line {hline!r}")
            raw.append((name.strip(), value.strip()))
        else:
            raise _BadRequest("too many headers")
        headers = {k.lower(): v for k, v in raw}
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        te = headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0 or length > _MAX_BODY:
                raise _BadRequest("bad content-length")
            body = await reader.readexactly(length)
        else:
            body = b""
        parsed: object | None = None
        if body:
            try:
                parsed = jsonlib.loads(body)
            except ValueError:
                parsed = None
        conn_hdr = headers.get("connection", "").lower()
        close = "close" in conn_hdr or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr)
        rec = Received(
            method=method,
            path=target,
            headers=headers,
            raw_headers=tuple(raw),
            body=body,
            json=parsed,
            at=time.monotonic(),
            conn_id=conn_id,
        )
        return rec, close

    async def _respond(
        self, req: Received, close: bool, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> bool:
        """Send the answer (or misbehave). Returns whether the connection may be reused."""
        fault = self._take_fault(req.path)
        kind = fault.kind if fault else None
        params = fault.params if fault else {}
        route = req.route
        api = {ANTHROPIC_PATH: "anthropic", OPENAI_PATH: "openai", RESPONSES_PATH: "responses"}.get(route)
        body_json = req.json if isinstance(req.json, dict) else {}
        stream = api is not None and req.method == "POST" and body_json.get("stream") is True
        model = str(body_json.get("model") or "mock-model")
        gemini = _gemini_call(route)
        if gemini is not None:
            api, model = "gemini", gemini[0]
            stream = gemini[1] == "streamGenerateContent"
            if gemini[1] == "countTokens" and kind is None:
                await self._send_simple(
                    writer, 200, {"totalTokens": 10}, close, {"x-mock-provider": self.name}
                )
                return not close

        if kind == "reset":
            _rst(writer)
            return False
        if req.method == "GET" and req.headers.get("upgrade", "").lower() == "websocket" and kind != "status":
            if route != RESPONSES_PATH or not self.websocket:
                await self._send_simple(writer, 404, {"error": {"message": "no websocket here"}}, True)
                return False
            await self._serve_websocket(req, writer, reader)
            return False
        if kind == "hang":
            await self._wait_released()
            _rst(writer)
            return False
        if kind == "status":
            await self._send_status_fault(writer, route, params, close)
            return not close
        if kind == "slow_first_byte":
            await asyncio.sleep(float(params.get("delay", 1.0)))

        extra = {"x-mock-provider": self.name}
        if api is None:
            await self._send_simple(
                writer, 200, {"side": True, "provider": self.name, "path": req.path}, close, extra
            )
            return not close

        if not stream:
            payload = self._json_response(api, model, body_json)
            if kind in ("sse_cut", "sse_stall"):
                data = jsonlib.dumps(payload).encode()
                head = _head(
                    200, {"content-type": "application/json", "content-length": str(len(data))}, extra
                )
                writer.write(head + data[: len(data) // 2])
                await writer.drain()
                if kind == "sse_stall":
                    await self._wait_released()
                else:
                    await asyncio.sleep(_CUT_GRACE)
                _rst(writer)
                return False
            await self._send_simple(writer, 200, payload, close, extra)
            return not close

        big = kind == "big_stream"
        self._big = (int(params.get("count", 1000)), int(params.get("size", 4096))) if big else None
        self._no_done = kind == "sse_no_done"
        self._round_trip = params if kind == "tool_round_trip" else None
        events = self._sse_events(api, model, body_json)
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
        }
        if close:
            headers["connection"] = "close"
        if kind == "sse_no_done" and params.get("framing") == "close":
            # HTTP/1.0 style: no chunking, the body ends when the connection closes.
            del headers["transfer-encoding"]
            headers["connection"] = "close"
            writer.write(_head(200, headers, extra) + b"".join(events))
            await writer.drain()
            writer.close()
            return False
        writer.write(_head(200, headers, extra))
        await writer.drain()

        if kind == "slow_first_token":
            preamble = _PREAMBLE[api]
            for ev in events[:preamble]:
                await _send_chunk(writer, ev)
            await asyncio.sleep(float(params.get("delay", 1.0)))
            events = events[preamble:]

        if kind in ("sse_cut", "sse_stall"):
            for ev in events[: int(params.get("events", 2))]:
                await _send_chunk(writer, ev)
            if kind == "sse_stall":
                await self._wait_released()
            else:
                await asyncio.sleep(_CUT_GRACE)
            _rst(writer)
            return False
        if kind == "sse_error":
            for ev in events[: int(params.get("after", 0))]:
                await _send_chunk(writer, ev)
            await _send_chunk(writer, self._sse_error_event(api, params))
        else:
            if kind == "sse_malformed":
                await _send_chunk(writer, b"data: {not json\n\n")
                await _send_chunk(writer, b"this line has no colon\n\n")
            interval = float(params.get("interval", 0.1)) if kind == "slow_stream" else 0.0
            for i, ev in enumerate(events):
                if interval and i:
                    await asyncio.sleep(interval)
                await _send_chunk(writer, ev)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return not close

    async def _wait_released(self) -> None:
        release = self._release
        if release is None:
            release = self._release = asyncio.Event()
        await release.wait()

    async def _send_status_fault(
        self, writer: asyncio.StreamWriter, route: str, params: dict[str, Any], close: bool
    ) -> None:
        status = int(params["status"])
        body = params.get("body")
        hdrs: dict[str, str] = {"x-mock-provider": self.name}
        if "retry_after" in params:
            hdrs["retry-after"] = str(params["retry_after"])
        if route == ANTHROPIC_PATH:
            hdrs["request-id"] = f"req_mock_{uuid.uuid4().hex[:16]}"
        elif route in (OPENAI_PATH, RESPONSES_PATH):
            hdrs["x-request-id"] = f"req_{uuid.uuid4().hex[:16]}"
        if status in (429, 529) and route == ANTHROPIC_PATH:
            hdrs["x-should-retry"] = "true"
        for k, v in dict(params.get("headers") or {}).items():
            hdrs[str(k).lower()] = str(v)
        if body is None:
            body = default_error_body(route, status, self.name)
        if isinstance(body, bytes | bytearray):
            data = bytes(body)
            hdrs.setdefault("content-type", "application/json")
        else:
            data = jsonlib.dumps(body).encode()
            hdrs.setdefault("content-type", "application/json")
        hdrs["content-length"] = str(len(data))
        if close:
            hdrs["connection"] = "close"
        writer.write(_head(status, hdrs) + data)
        await writer.drain()

    async def _send_simple(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: object,
        close: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        data = jsonlib.dumps(payload).encode()
        hdrs = {"content-type": "application/json", "content-length": str(len(data))}
        if close:
            hdrs["connection"] = "close"
        writer.write(_head(status, hdrs, extra or {"x-mock-provider": self.name}) + data)
        await writer.drain()

    # ------------------------------------------------------------------ payloads

    @property
    def answer(self) -> str:
        return f"hello from {self.name}"

    def _tool_call(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Under the `tool_round_trip` fault, a Chat request that offers the tool and has no tool
        result yet is answered with a call of it (the result's turn then gets text that quotes it)."""
        params = getattr(self, "_round_trip", None)
        if params is None:
            return None
        offered = [t.get("function", {}).get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        messages = body.get("messages") or []
        answered = any(m.get("role") == "tool" for m in messages if isinstance(m, dict))
        if params["tool"] not in offered or answered:
            return None
        arguments = jsonlib.dumps(params.get("arguments") or {})
        return {"index": 0, "id": "call_mock_1", "type": "function",
                "function": {"name": params["tool"], "arguments": arguments}}  # fmt: skip

    def _pieces(self, body: dict[str, Any] | None = None) -> list[str]:
        if getattr(self, "_big", None):
            count, size = self._big  # type: ignore[misc]
            return ["x" * size] * count
        messages = (body or {}).get("messages") or []
        results = [m for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
        if results and getattr(self, "_round_trip", None) is not None:
            return ["the tool said: ", str(results[-1].get("content"))[:300]]
        prefill = _prefill(body or {})
        if prefill is not None:
            # Asked to continue an answer: the rest of its own, if that is how its own begins.
            self.continued.append(prefill)
            if self.answer.startswith(prefill) and prefill:
                rest = self.answer[len(prefill) :]
                return [rest[: len(rest) // 2], rest[len(rest) // 2 :]]
        return ["hello", " from ", self.name]

    def _json_response(self, api: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
        if api == "gemini":
            config = body.get("generationConfig") or {}
            schema = config.get("responseJsonSchema") or config.get("responseSchema")
            if config.get("responseMimeType") == "application/json" or schema:
                # A client asking for structured output (Gemini CLI's model router) gets valid JSON.
                return self._gemini_chunk(jsonlib.dumps(_fill(schema or {})), model, final=True)
            return self._gemini_chunk(self.answer, model, final=True)
        if api == "responses":
            return self._response_object(model, "completed")
        if api == "anthropic":
            return {
                "id": f"msg_mock_{uuid.uuid4().hex[:20]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": self.answer}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": self.usage.block("anthropic"),
            }
        return {
            "id": f"chatcmpl-mock{uuid.uuid4().hex[:20]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self.usage.block("openai"),
        }

    def _response_object(self, model: str, status: str) -> dict[str, Any]:
        output = (
            []
            if status != "completed"
            else [
                {
                    "type": "message",
                    "id": "msg_mock",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.answer, "annotations": []}],
                }
            ]
        )
        return {
            "id": "resp_mock",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            # Like the API: the usage comes with the finished response, not the one just created.
            "usage": self.usage.block("responses") if status != "in_progress" else None,
        }

    def _responses_events(self, model: str) -> list[tuple[str, dict[str, Any]]]:
        """The Responses API's events for one text answer: no `[DONE]`, `response.completed` last."""
        item = {
            "type": "message",
            "id": "msg_mock",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        seq: list[tuple[str, dict[str, Any]]] = [
            ("response.created", {"response": self._response_object(model, "in_progress")}),
            ("response.output_item.added", {"output_index": 0, "item": item}),
            (
                "response.content_part.added",
                {
                    "item_id": "msg_mock",
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
            ),
        ]
        for piece in self._pieces():
            seq.append(
                (
                    "response.output_text.delta",
                    {"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": piece},
                )
            )
        done_item = {
            **item,
            "status": "completed",
            "content": [{"type": "output_text", "text": self.answer, "annotations": []}],
        }
        seq += [
            (
                "response.output_text.done",
                {"item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": self.answer},
            ),
            ("response.output_item.done", {"output_index": 0, "item": done_item}),
            ("response.completed", {"response": self._response_object(model, "completed")}),
        ]
        return [(name, {"type": name, "sequence_number": i, **data}) for i, (name, data) in enumerate(seq)]

    async def _serve_websocket(
        self, req: Received, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> None:
        """Codex's WebSocket transport: answer each `response.create` with the Responses events."""
        from wsproto.connection import Connection, ConnectionType
        from wsproto.events import CloseConnection, Message, Ping, TextMessage
        from wsproto.utilities import generate_accept_token

        accept = generate_accept_token(req.headers.get("sec-websocket-key", "").encode()).decode()
        head = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-accept": accept}
        writer.write(_head(101, head, {"x-mock-provider": self.name}))
        await writer.drain()
        ws = Connection(ConnectionType.SERVER)
        text = ""
        for _ in range(100_000):
            data = await reader.read(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    writer.write(ws.send(event.response()))
                    await writer.drain()
                    return
                elif isinstance(event, TextMessage | Message):
                    text += str(event.data)
                    if not event.message_finished:
                        continue
                    self.ws_messages.append(text.encode())
                    try:
                        request = jsonlib.loads(text)
                    except ValueError:
                        request = {}
                    text = ""
                    model = str(request.get("model") or "mock-model")
                    for _name, payload in self._responses_events(model):
                        writer.write(ws.send(TextMessage(data=jsonlib.dumps(payload))))
            await writer.drain()
            if not data:
                return

    def _gemini_chunk(self, text: str, model: str, final: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        chunk: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
        if final:
            candidate["finishReason"] = "STOP"
            chunk["usageMetadata"] = self.usage.block("gemini")
        return chunk

    def _sse_events(self, api: str, model: str, body: dict[str, Any]) -> list[bytes]:
        if api == "gemini":
            pieces = self._pieces(body)
            chunks = [self._gemini_chunk(p, model, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]
            return [f"data: {jsonlib.dumps(c)}\r\n\r\n".encode() for c in chunks]
        if api == "responses":
            events = self._responses_events(model)
            return [f"event: {n}\ndata: {jsonlib.dumps(d)}\n\n".encode() for n, d in events]
        if api == "anthropic":
            msg_id = f"msg_mock_{uuid.uuid4().hex[:20]}"
            seq: list[tuple[str, dict[str, Any]]] = [
                (
                    "message_start",
                    {
                        "type": "message_start",
                        "message": {
                            "id": msg_id,
                            "type": "message",
                            "role": "assistant",
                            "model": model,
                            "content": [],
                            "stop_reason": None,
                            "stop_sequence": None,
                            "usage": {**self.usage.block("anthropic"), "output_tokens": 1},
                        },
                    },
                ),
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
            ]
            for piece in self._pieces(body):
                seq.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                )
            seq += [
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                (
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": self.usage.output},
                    },
                ),
                ("message_stop", {"type": "message_stop"}),
            ]
            return [f"event: {ev}\ndata: {jsonlib.dumps(d)}\n\n".encode() for ev, d in seq]

        chunk_id = f"chatcmpl-mock{uuid.uuid4().hex[:20]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }

        chunks = [chunk({"role": "assistant", "content": ""}, None)]
        call = self._tool_call(body)
        if call is not None:
            chunks.append(chunk({"tool_calls": [call]}, None))
            chunks.append(chunk({}, "tool_calls"))
        else:
            chunks += [chunk({"content": p}, None) for p in self._pieces(body)]
            chunks.append(chunk({}, "stop"))
        opts = body.get("stream_options")
        if isinstance(opts, dict) and opts.get("include_usage"):
            chunks.append(
                {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": self.usage.block("openai"),
                }
            )
        out = [f"data: {jsonlib.dumps(c)}\n\n".encode() for c in chunks]
        if not getattr(self, "_no_done", False):
            out.append(b"data: [DONE]\n\n")
        return out

    def _sse_error_event(self, api: str, params: dict[str, Any]) -> bytes:
        etype = str(params.get("error_type", "overloaded_error"))
        message = str(params.get("message", "Overloaded"))
        if api == "responses":
            error = {"code": "server_error", "message": message}
            response = {"id": "resp_mock", "status": "failed", "error": error}
            failed = {"type": "response.failed", "response": response}
            return f"event: response.failed\ndata: {jsonlib.dumps(failed)}\n\n".encode()
        if api == "anthropic":
            d = {"type": "error", "error": {"type": etype, "message": message}}
            return f"event: error\ndata: {jsonlib.dumps(d)}\n\n".encode()
        d2 = {"error": {"message": message, "type": etype, "param": None, "code": None}}
        return f"data: {jsonlib.dumps(d2)}\n\n".encode()

    # Convenience for tests that want to iterate over what was sent to a route.
    def requests_to(self, path_prefix: str) -> Iterator[Received]:
        return (r for r in self.received if r.path.startswith(path_prefix))


# ---------------------------------------------------------------------- helpers


#: Events each API sends before its first content (what a slow first token comes after).
_PREAMBLE = {"anthropic": 2, "openai": 1, "responses": 1, "gemini": 0}


def _prefill(body: dict[str, Any]) -> str | None:
    """The text of a final assistant message (Anthropic and Chat prefill), if the request has one."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    content = last.get("content")
    return content if last.get("role") == "assistant" and isinstance(content, str) else None


def _head(status: int, headers: dict[str, str], extra: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    merged = dict(extra or {})
    merged.update(headers)
    lines += [f"{k}: {v}" for k, v in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    for _ in range(1_000_000):
        size_line = await reader.readline()
        if not size_line.endswith(b"\n"):
            raise _BadRequest("truncated chunk size")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            for _ in range(_MAX_HEADERS):  # trailers, up to the blank line
                trailer = await reader.readline()
                if trailer in (b"\r\n", b"\n", b""):
                    return bytes(body)
            raise _BadRequest("too many trailers")
        if len(body) + size > _MAX_BODY:
            raise _BadRequest("body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    raise _BadRequest("too many chunks")


def _rst_sock(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


#: The benchmark's mock kinds, as faults.
_BENCH_KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "ok": ("slow_stream", {"interval": 0.05}),
    "500": ("status", {"status": 500}),
    "529": ("status", {"status": 529}),
    "hang": ("hang", {}),
}


def _serve_forever(specs: list[str]) -> None:
    import signal
    import sys

    mocks = []
    for spec in specs:
        kind, _, port = spec.partition(":")
        if kind not in _BENCH_KINDS:
            raise SystemExit(f"unknown kind {kind!r}; expected one of {sorted(_BENCH_KINDS)}")
        mock = MockProvider(f"{kind}-{port}")
        mock._port = int(port)
        mock.start()
        fault, params = _BENCH_KINDS[kind]
        mock.fault(fault, **params)
        mocks.append(mock)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    stop.wait(3600)
    for mock in mocks:
        mock.stop()


if __name__ == "__main__":
    import sys

    _serve_forever(sys.argv[1:])
