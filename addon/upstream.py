"""Detour's own HTTP/1.1 client for provider attempts: pooled keep-alive connections over asyncio.

Detour owns the upstream leg of every routed request instead of borrowing mitmproxy's, because
mitmproxy can neither retry a request whose connection failed nor time out a silent provider, and
every workaround for that (rerouting a shared HTTP/2 connection, feeding a synthetic answer into a
half-read response) broke something. Here each attempt has a connection of its own for as long as
it runs, so nothing done to it can touch another request, and a failure anywhere is just an event.

`http1.py` writes the requests and parses the answers (it refuses to send a field with a CR or LF
in it). Connections are kept alive per provider address, so a remote provider costs one TCP and TLS
handshake per connection, not per request.
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

from addon.classify import ErrorKind
from addon.http1 import End, Head, ProtocolError, ResponseParser, encode_request
from addon.rewrite import OutboundRequest, Target

#: Idle connections kept per provider address.
MAX_IDLE_PER_TARGET = 16
#: An idle connection older than this is closed instead of reused (providers close them too).
IDLE_FOR = 30.0
#: Bytes read from a socket at once.
READ_SIZE = 65536


class UpstreamFailure(Exception):
    """An attempt's connection failed: `kind` says how, for the classifier."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class _Stale(Exception):
    """A reused keep-alive connection turned out closed before answering: retry on a fresh one."""


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
        self.reused = False
        self.idle_since = 0.0
        self._parser: ResponseParser | None = None

    @property
    def reusable(self) -> bool:
        return self._parser is not None and self._parser.reusable

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def send(self, request: OutboundRequest, upgrade: bool = False) -> None:
        try:
            data = encode_request(request.method, request.path, request.headers, request.body)
        except ProtocolError as e:
            raise UpstreamFailure(ErrorKind.CONNECT, f"request not sendable: {e}") from None
        self._parser = ResponseParser(request.method, upgrade)
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as e:
            if self.reused:
                raise _Stale() from None
            raise UpstreamFailure(ErrorKind.RESET, _why(e)) from None

    async def receive(self) -> AsyncIterator[Item]:
        """The answer as a `Head`, its body's chunks, and `End`; interim 1xx answers are skipped
        (for a WebSocket handshake, a 101 is the head, followed by the connection as `Upgraded`)."""
        parser = self._parser
        assert parser is not None, "send first"
        answered = False
        for _ in range(1 << 40):  # bounded by the stream itself; the driver's deadlines bound the time
            try:
                chunk = await self.reader.read(READ_SIZE)
            except OSError as e:
                if self.reused and not answered:
                    raise _Stale() from None
                raise UpstreamFailure(ErrorKind.RESET, _why(e)) from None
            if not chunk and self.reused and not answered:
                raise _Stale()
            answered = answered or bool(chunk)
            try:
                items = parser.feed(chunk)
            except ProtocolError as e:
                raise UpstreamFailure(ErrorKind.RESET, f"bad response: {e}") from None
            for item in items:
                yield item
                if isinstance(item, Head) and item.status == 101:
                    yield Upgraded(self.reader, self.writer, parser.trailing)
                    return
            if parser.done:
                return
            if not chunk:  # EOF the parser accepted without ending the answer: it raised above
                raise UpstreamFailure(ErrorKind.RESET, "connection closed before the answer ended")


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
            await conn.send(request, upgrade)
            if conn.reused and not fresh:
                yield None
            async for item in conn.receive():
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
