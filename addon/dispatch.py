"""Failover attempts sent through mitmproxy's own client stack, with the timeouts it lacks.

A retry has to reuse mitmproxy's upstream TLS settings, proxy mode and hooks, and mitmproxy ships no
HTTP client, so each attempt is a copy of the flow replayed by `clientplayback.ReplayHandler` (an
internal class, stable across mitmproxy 11 and 12). The attempt flow passes through Detour's own
hooks, which report its progress to the `AttemptWatch` registered here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import ctx, http
from mitmproxy.addons.clientplayback import ReplayHandler

from addon.classify import ErrorKind
from addon.model import Provider, Timeouts
from addon.sse import StreamTee


@dataclass
class AttemptWatch:
    """What Detour's hooks learn about one in-flight attempt flow."""

    changed: asyncio.Event = field(default_factory=asyncio.Event)
    headers_at: float | None = None
    tee: StreamTee | None = None
    #: Whose key the attempt carries, so the hooks can mask it once the request has left.
    provider: Provider | None = None
    #: The attempt's `response` hook ran: its answer is complete, whatever mitmproxy still tidies up.
    answered: bool = False


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended: a response, or a failure kind without one."""

    response: http.Response | None
    error: ErrorKind | None = None
    detail: str = ""
    tee: StreamTee | None = None


class Dispatcher:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.watches: dict[str, AttemptWatch] = {}
        #: Replays whose answer is in but which mitmproxy is still closing: the loop holds tasks weakly.
        self._closing: set[asyncio.Future[None]] = set()

    def watch_for(self, flow: http.HTTPFlow) -> AttemptWatch | None:
        return self.watches.get(flow.id)

    async def send(self, flow: http.HTTPFlow, provider: Provider, timeouts: Timeouts) -> AttemptEnd:
        """Replay `flow` (already rewritten for `provider`) and wait, bounded, for its answer."""
        watch = AttemptWatch(provider=provider)
        self.watches[flow.id] = watch
        handler = ReplayHandler(flow, ctx.options)
        task = asyncio.ensure_future(handler.replay())
        task.add_done_callback(lambda _: watch.changed.set())
        try:
            timed_out = await self._wait(watch, task, timeouts)
        finally:
            self.watches.pop(flow.id, None)
        if timed_out is not None:
            await _abort(handler, task)
            return AttemptEnd(None, timed_out, tee=watch.tee)
        if not task.done():
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if flow.response is not None and flow.error is None:
            return AttemptEnd(flow.response, tee=watch.tee)
        detail = flow.error.msg if flow.error else "no response"
        kind = ErrorKind.CONNECT if watch.headers_at is None else ErrorKind.RESET
        return AttemptEnd(None, kind, detail, tee=watch.tee)

    async def _wait(
        self, watch: AttemptWatch, task: asyncio.Future[None], timeouts: Timeouts
    ) -> ErrorKind | None:
        first_byte_deadline = self._clock() + timeouts.connect + timeouts.first_byte
        # Bounded: each pass either ends the attempt or waits at most one timeout period.
        while not task.done() and not watch.answered:
            if watch.headers_at is None:
                deadline, kind = first_byte_deadline, ErrorKind.TIMEOUT_FIRST_BYTE
            else:
                last = watch.tee.last_activity if watch.tee else watch.headers_at
                deadline, kind = last + timeouts.idle, ErrorKind.TIMEOUT_IDLE
            remaining = deadline - self._clock()
            if remaining <= 0:
                return kind
            watch.changed.clear()
            if task.done() or watch.answered:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), remaining)
        return None


async def _abort(handler: ReplayHandler, task: asyncio.Future[None]) -> None:
    for io in list(handler.transports.values()):
        if io.handler is not None:
            io.handler.cancel()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
