"""The loopback relay: how an answer Detour produces itself reaches the client as a stream.

mitmproxy can only stream an answer it reads from a server, so a streamed routed flow is pointed at
this small HTTP/1.1 server on 127.0.0.1, which runs the request's exchange and writes the chosen
provider's answer back chunk by chunk (or joins a WebSocket to the provider that accepted it).
mitmproxy reads that like any upstream and streams it to the client; the exchange decides, the relay
only moves bytes.

Only mitmproxy itself should talk to the relay: a request is served only with the one-time token
Detour registered for it, so another local process (or a client using Detour as a plain proxy to
reach this port) gets a 403 and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from addon.upstream import Upgraded

logger = logging.getLogger("detour")

TOKEN_HEADER = b"x-detour-relay"
#: A connection must present its first request within this long.
FIRST_REQUEST_WITHIN = 10.0
#: A token not claimed within this long (mitmproxy never connected) is dropped.
TOKEN_TTL = 60.0
MAX_HEAD = 64 * 1024
PIPE_READ = 65536

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(eq=False)
class Job:
    """A registered request: `run(sink)` drives its exchange into the relay's answer."""

    run: Callable[[RelaySink], Awaitable[None]]
    #: Called when the job is dropped without ever running (mitmproxy never connected).
    expired: Callable[[], None] = field(default=lambda: None)


class RelaySink:
    """The driver's sink for one relayed answer: HTTP/1.1 framing onto mitmproxy's connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.on_gone: Callable[[], None] | None = None
        #: The connection can serve mitmproxy's next request (the answer ended cleanly).
        self.reusable = False
        self.upgraded: Upgraded | None = None
        #: A byte of mitmproxy's next request, read by the EOF watcher after this answer ended.
        self.early: bytes = b""

    def _head(self, status: int, headers: Headers, framing: bytes) -> bytes:
        try:
            reason = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Status"
        lines = [b"HTTP/1.1 %d %s" % (status, reason)]
        lines += [name + b": " + value for name, value in headers]
        if framing:
            lines.append(framing)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def stream(self, status: int, headers: Headers) -> None:
        self.writer.write(self._head(status, headers, b"transfer-encoding: chunked"))
        await self.writer.drain()

    async def forward(self, data: bytes) -> None:
        if data:
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self.writer.drain()

    async def finish(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        self.reusable = True
        await self.writer.drain()

    async def cut(self, reason: str) -> None:
        # No terminating chunk: mitmproxy sees a broken body and breaks the client's stream off.
        self.writer.transport.abort()

    async def deliver(self, status: int, headers: Headers, body: bytes) -> None:
        self.writer.write(self._head(status, headers, b"content-length: %d" % len(body)) + body)
        self.reusable = True
        await self.writer.drain()

    async def upgrade(self, status: int, headers: Headers, pipe: Upgraded) -> None:
        self.writer.write(self._head(status, headers, b""))
        if pipe.early:
            self.writer.write(pipe.early)
        self.upgraded = pipe
        await self.writer.drain()


class Relay:
    def __init__(self) -> None:
        self._jobs: dict[bytes, tuple[Job, asyncio.TimerHandle]] = {}
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Future[asyncio.Server] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    def listen(self) -> int:
        """Bind the relay's port now (mitmproxy may call `running` synchronously) and serve it as soon
        as the event loop gets to it; connections made before that wait in the listen backlog."""
        if self._starting is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(512)
            self.port = sock.getsockname()[1]
            server = asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD)
            self._starting = asyncio.ensure_future(server)
        return self.port

    async def start(self) -> int:
        self.listen()
        assert self._starting is not None
        self._server = await self._starting
        return self.port

    async def close(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None:
            if not starting.done():
                starting.cancel()
            with contextlib.suppress(BaseException):
                (await starting).close()
        for _, timer in self._jobs.values():
            timer.cancel()
        for job, _ in self._jobs.values():
            job.expired()
        self._jobs.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def register(self, job: Job) -> bytes:
        """A one-time token for `job`; the flow carrying it to the relay runs it."""
        token = secrets.token_urlsafe(24).encode()
        timer = asyncio.get_running_loop().call_later(TOKEN_TTL, self._expire, token)
        self._jobs[token] = (job, timer)
        return token

    def forget(self, token: bytes) -> None:
        entry = self._jobs.pop(token, None)
        if entry is not None:
            entry[1].cancel()

    def _expire(self, token: bytes) -> None:
        entry = self._jobs.pop(token, None)
        if entry is not None:
            entry[0].expired()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except Exception:
            logger.exception("detour: relay connection failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.transport.abort()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        early = b""
        for _ in range(1 << 30):  # one request per turn, for as long as mitmproxy keeps the connection
            if first:
                async with asyncio.timeout(FIRST_REQUEST_WITHIN):
                    head = await reader.readuntil(b"\r\n\r\n")
            else:
                head = early + await reader.readuntil(b"\r\n\r\n")
            first = False
            token, length = _parse_head(head)
            entry = self._jobs.pop(token, None) if token else None
            if entry is None:
                writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                await writer.drain()
                return
            job, timer = entry
            timer.cancel()
            if length:
                await reader.readexactly(length)  # Detour strips bodies; anything else is discarded
            sink = RelaySink(writer)
            watcher = asyncio.ensure_future(_watch_eof(reader, sink))
            try:
                await job.run(sink)
            finally:
                # Cancelled at once (anything mitmproxy sends now stays buffered for the next turn),
                # and awaited, so the reader has one waiter again before the next head is read.
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if sink.upgraded is not None:
                await _pipe(reader, writer, sink.upgraded)
                return
            if not sink.reusable or writer.is_closing():
                return
            early = sink.early


def _parse_head(head: bytes) -> tuple[bytes | None, int]:
    """(token, content-length) of a request head; a malformed head yields no token."""
    token: bytes | None = None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name = name.strip().lower()
        if name == TOKEN_HEADER:
            token = value.strip()
        elif name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return None, 0
            if not 0 <= length <= 1 << 20:
                return None, 0
    return token, length


async def _watch_eof(reader: asyncio.StreamReader, sink: RelaySink) -> None:
    """mitmproxy sends nothing while an answer is being relayed, so EOF means its client left. A
    byte that does arrive starts mitmproxy's next request (the answer just ended): it is kept."""
    data = b""
    with contextlib.suppress(ConnectionError):
        data = await reader.read(1)
    if data:
        sink.early = data
    elif sink.on_gone is not None:
        sink.on_gone()


async def _pipe(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, pipe: Upgraded
) -> None:
    """Join mitmproxy's WebSocket connection to the provider's until either side closes."""

    async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            for _ in range(1 << 40):
                data = await src.read(PIPE_READ)
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()

    up = asyncio.ensure_future(copy(client_reader, pipe.writer))
    down = asyncio.ensure_future(copy(pipe.reader, client_writer))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        # Give the other direction a moment to deliver a close frame, then end both.
        await asyncio.wait({up, down}, timeout=5.0)
    finally:
        up.cancel()
        down.cancel()
        pipe.writer.transport.abort()
