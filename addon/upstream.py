"""Detour's own HTTP/1.1 client for provider attempts: pooled keep-alive connections over asyncio.

Detour owns the upstream leg of every routed request instead of borrowing mitmproxy's, because
mitmproxy can neither retry a request whose connection failed nor time out a silent provider, and
every workaround for that (rerouting a shared HTTP/2 connection, feeding a synthetic answer into a
half-read response) broke something. Here each attempt has a connection of its own for as long as
it runs, so nothing done to it can touch another request, and a failure anywhere is just an event.

h11 (a dependency of mitmproxy itself) does the HTTP parsing; it also refuses to send a header value
with a CR or LF in it. Connections are kept alive per provider address, so a remote provider costs
one TCP and TLS handshake per connection, not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import NamedTuple

import h11

from addon.classify import ErrorKind
from addon.rewrite import OutboundRequest, Target

#: Idle connections kept per provider address.
MAX_IDLE_PER_TARGET = 16
#: An idle connection older than this is closed instead of reused (providers close them too).
IDLE_FOR = 30.0
#: Bytes read from a socket at once.
READ_SIZE = 65536
#: The largest response head accepted.
MAX_HEAD = 64 * 1024


class UpstreamFailure(Exception):
    """An attempt's connection failed: `kind` says how, for the classifier."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _Stale(Exception):
    """A reused keep-alive connection turned out closed before answering: retry on a fresh one."""


class Head(NamedTuple):
    status: int
    headers: tuple[tuple[bytes, bytes], ...]


class End(NamedTuple):
    pass


class Upgraded(NamedTuple):
    """After a 101: the connection, now a raw byte pipe, and what the provider already sent on it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    early: bytes


Item = Head | bytes | End | Upgraded


@dataclass(frozen=True)
class TlsSettings:
    """Upstream certificate checks, from mitmproxy's own options (`ssl_insecure`, ...)."""

    verify: bool = True
    cafile: str | None = None
    capath: str | None = None

    def context(self) -> ssl.SSLContext:
        if not self.verify:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.cafile or self.capath:
            context = ssl.create_default_context(cafile=self.cafile, capath=self.capath)
        else:
            import certifi  # a dependency of mitmproxy's, which uses the same bundle upstream

            context = ssl.create_default_context(cafile=certifi.where())
        context.set_alpn_protocols(["http/1.1"])
        return context


class Connection:
    """One keep-alive connection to one provider address."""

    def __init__(self, target: Target, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.target = target
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.reused = False
        self.idle_since = 0.0

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def send(self, request: OutboundRequest) -> None:
        h = self.h11
        try:
            head = h11.Request(method=request.method, target=request.path, headers=list(request.headers))
            data = h.send(head)
            if request.body:
                data = (data or b"") + (h.send(h11.Data(data=request.body)) or b"")
            data = (data or b"") + (h.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError as e:
            raise UpstreamFailure(ErrorKind.CONNECT, f"request not sendable: {e}") from None
        try:
            self.writer.write(data or b"")
            await self.writer.drain()
        except OSError as e:
            if self.reused:
                raise _Stale() from None
            raise UpstreamFailure(ErrorKind.RESET, _why(e)) from None

    async def receive(self, upgrade: bool = False) -> AsyncIterator[Item]:
        """The answer as a `Head`, its body's chunks, and `End`; interim 1xx answers are skipped
        (for a WebSocket handshake, `upgrade`, a 101 is the head)."""
        h = self.h11
        answered = False
        for _ in range(1 << 40):  # bounded by the stream itself; the driver's deadlines bound the time
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                raise UpstreamFailure(ErrorKind.RESET, f"bad response: {e}") from None
            if event is h11.NEED_DATA:
                try:
                    chunk = await self.reader.read(READ_SIZE)
                except OSError as e:
                    if self.reused and not answered:
                        raise _Stale() from None
                    raise UpstreamFailure(ErrorKind.RESET, _why(e)) from None
                if not chunk and self.reused and not answered:
                    raise _Stale()
                answered = answered or bool(chunk)
                h.receive_data(chunk)
                continue
            if isinstance(event, h11.InformationalResponse):
                if upgrade and event.status_code == 101:
                    yield Head(101, tuple(event.headers))
                    early, _ = h.trailing_data
                    yield Upgraded(self.reader, self.writer, bytes(early))
                    return
                continue
            if isinstance(event, h11.Response):
                yield Head(event.status_code, tuple(event.headers))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                yield End()
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise UpstreamFailure(ErrorKind.RESET, "connection closed before the answer ended")
            else:  # PAUSED: only after an upgrade, which returned above
                raise UpstreamFailure(ErrorKind.RESET, f"unexpected {type(event).__name__}")


class Pool:
    """Keep-alive connections per provider address."""

    def __init__(self, tls: TlsSettings | None = None) -> None:
        self._tls = tls or TlsSettings()
        self._context: ssl.SSLContext | None = None
        self._idle: dict[Target, deque[Connection]] = {}

    def configure(self, tls: TlsSettings) -> None:
        if tls != self._tls:
            self._tls = tls
            self._context = None
            self.close()

    async def connect(self, target: Target, fresh: bool = False) -> Connection:
        """An idle connection to `target`, or a new one. Raises UpstreamFailure."""
        if not fresh:
            reused = self._take_idle(target)
            if reused is not None:
                return reused
        try:
            if target.tls:
                if self._context is None:
                    self._context = self._tls.context()
                reader, writer = await asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=self._context,
                    server_hostname=target.host,
                    limit=READ_SIZE * 4,
                )
            else:
                reader, writer = await asyncio.open_connection(target.host, target.port, limit=READ_SIZE * 4)
        except ssl.SSLError as e:
            raise UpstreamFailure(ErrorKind.CONNECT, f"TLS: {e.reason or e}") from None
        except OSError as e:
            raise UpstreamFailure(ErrorKind.CONNECT, _why(e)) from None
        return Connection(target, reader, writer)

    def release(self, conn: Connection) -> None:
        """Keep `conn` for the next request to its address if its last exchange ended cleanly."""
        if not conn.reusable or conn.reader.at_eof():
            conn.close()
            return
        conn.h11.start_next_cycle()
        conn.idle_since = time.monotonic()
        idle = self._idle.setdefault(conn.target, deque())
        idle.append(conn)
        while len(idle) > MAX_IDLE_PER_TARGET:
            idle.popleft().close()

    def _take_idle(self, target: Target) -> Connection | None:
        idle = self._idle.get(target)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since > IDLE_FOR or conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            conn.reused = True
            return conn
        return None

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


async def exchange(pool: Pool, request: OutboundRequest, upgrade: bool = False) -> AsyncIterator[Item | None]:
    """Send `request` and yield None once connected, then the answer's items.

    A reused connection found closed before it answered is replaced by a fresh one, once: the
    provider closed it while it was idle, so it never saw the request.
    """
    fresh = False
    for _ in range(2):
        conn = await pool.connect(request.target, fresh=fresh)
        done = False
        handed_over = False
        try:
            if not conn.reused or fresh:
                yield None
            await conn.send(request)
            if conn.reused and not fresh:
                yield None
            async for item in conn.receive(upgrade):
                handed_over = isinstance(item, Upgraded)
                yield item
            done = True
            return
        except _Stale:
            fresh = True
            continue
        finally:
            if done and not upgrade:
                pool.release(conn)
            elif not handed_over:
                conn.close()
    raise UpstreamFailure(ErrorKind.RESET, "connection closed before the answer began")


def _why(error: OSError) -> str:
    return error.strerror or type(error).__name__
