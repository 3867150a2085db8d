"""The driver: runs one `Exchange` against real providers and a client `Sink`, doing all the I/O.

It feeds the exchange events (from the attempt's connection, the clock and the client) and executes
the actions it returns; it decides nothing itself. Each attempt's connection is read by a task of
its own into a bounded channel, so a slow client slows the provider down (TCP backpressure) instead
of growing memory, and the driver can wait on one thing at a time: the next event or the deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from addon.breaker import Permit
from addon.classify import ErrorKind, Verdict
from addon.control import Control
from addon.exchange import (
    Abort,
    Action,
    Attempt,
    BodyData,
    BodyEnd,
    ClientGone,
    Connected,
    Cut,
    Deliver,
    Delivery,
    Done,
    Event,
    Exchange,
    Exhausted,
    Finish,
    Forward,
    Forwarded,
    HoldBack,
    Pick,
    Picked,
    Record,
    Refuse,
    Release,
    ResponseHead,
    Result,
    Send,
    Start,
    Stream,
    Tick,
    Unsendable,
    Upgrade,
    UpstreamError,
)
from addon.formats.translation import NotTranslatable
from addon.http1 import End, Head
from addon.model import Provider
from addon.rewrite import ClientRequest, OutboundRequest, for_provider
from addon.rewrite import Unsendable as NotAdaptable
from addon.upstream import Item, Pool, Upgraded, UpstreamFailure, exchange

logger = logging.getLogger("detour")

#: Events one attempt's reader may queue ahead of the driver before it stops reading the socket.
CHANNEL_LIMIT = 16
#: The most of a streamed attempt's answer kept for its report.
REPORT_COPY_LIMIT = 8 * 1024 * 1024

Clock = Callable[[], float]
#: Sends one attempt: `upstream.exchange`, or a scripted stand-in in tests.
Sender = Callable[[Pool, OutboundRequest, bool], AsyncIterator[Item | None]]


class Sink(Protocol):
    """Where the client's answer goes: a mitmproxy flow (whole answers) or the relay (streams).

    A sink that can tell when its client leaves calls `on_gone` (set by the driver) when it does.
    """

    on_gone: Callable[[], None] | None

    async def stream(self, status: int, headers: tuple[tuple[bytes, bytes], ...]) -> None: ...

    async def forward(self, data: bytes) -> None: ...

    async def finish(self) -> None: ...

    async def cut(self, reason: str) -> None: ...

    async def deliver(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> None: ...

    async def upgrade(self, status: int, headers: tuple[tuple[bytes, bytes], ...], pipe: Upgraded) -> None:
        """Answer the handshake and join the client to `pipe` (a sink that can't raises)."""


@dataclass(frozen=True)
class AttemptReport:
    """One finished attempt, for whoever shows attempts to people (mitmweb, saved flows)."""

    number: int
    provider: Provider
    request: OutboundRequest
    status: int | None
    headers: tuple[tuple[bytes, bytes], ...]
    #: The answer's body (streamed answers: a copy, cut at REPORT_COPY_LIMIT).
    body: bytes
    #: None when the attempt ended without a verdict (the client left).
    verdict: Verdict | None
    started: float
    ended: float
    #: `body` is only the start of a streamed answer longer than the copy keeps.
    truncated: bool = False


Observer = Callable[[AttemptReport], None]


class Channel:
    """A bounded queue of events with a non-blocking `push` for events that must never wait."""

    def __init__(self, limit: int = CHANNEL_LIMIT) -> None:
        self._items: deque[Event] = deque()
        self._limit = limit
        self._readable: asyncio.Event = asyncio.Event()
        self._writable: asyncio.Event = asyncio.Event()
        self._writable.set()

    def push(self, item: Event) -> None:
        self._items.append(item)
        self._readable.set()
        if len(self._items) >= self._limit:
            self._writable.clear()

    async def put(self, item: Event) -> None:
        """Push, waiting first while the channel is full."""
        while len(self._items) >= self._limit:
            self._writable.clear()
            await self._writable.wait()
        self.push(item)

    def get_nowait(self) -> Event | None:
        """The next event if one is waiting (the common case: a socket read yields several)."""
        if not self._items:
            return None
        item = self._items.popleft()
        if len(self._items) < self._limit:
            self._writable.set()
        return item

    async def get(self) -> Event:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        if len(self._items) < self._limit:
            self._writable.set()
        return item


class Driver:
    def __init__(
        self,
        control: Control,
        pool: Pool,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        send: Sender = exchange,
    ) -> None:
        self.control = control
        self.pool = pool
        self.clock = clock
        self.wall = wall
        self.send = send

    async def run(
        self,
        ex: Exchange,
        request: ClientRequest,
        sink: Sink,
        observe: Observer | None = None,
        copy_streams: bool = False,
    ) -> Result:
        """Run `ex` to its end; `observe` hears of every attempt as it ends (with a copy of what a
        streamed attempt sent when `copy_streams`)."""
        run = _Run(self, ex, request, sink, observe)
        run.copying = copy_streams and observe is not None
        sink.on_gone = run.client_left
        try:
            return await run.loop()
        finally:
            sink.on_gone = None
            run.disarm()
            run.stop_reader()
            run.release_unsettled()


class _Run:
    """The state of one driven exchange: the current attempt's reader task and its channel.

    Each attempt gets a channel of its own, so nothing an aborted attempt had already queued can be
    mistaken for the next attempt's answer.
    """

    def __init__(
        self, driver: Driver, ex: Exchange, request: ClientRequest, sink: Sink, observe: Observer | None
    ) -> None:
        self.d = driver
        self.ex = ex
        self.request = request
        self.sink = sink
        self.observe = observe
        #: What each attempt sent, and (when observed) a copy of what it streamed, for its report.
        self.outbound: dict[int, OutboundRequest] = {}
        self.copy = bytearray()
        self.copying = False
        #: The copy reached REPORT_COPY_LIMIT and stopped: the report says it is cut short.
        self.copy_cut = False
        self.started_wall: dict[int, float] = {}
        self.channel = Channel()
        self.reader: asyncio.Task[None] | None = None
        self.started: dict[int, float] = {}
        self.gone = False
        #: The provider connection a WebSocket handshake left open, until the sink takes it.
        self.upgraded: Upgraded | None = None
        #: The run's one deadline timer, and the deadline it rings for.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        #: Breaker permits taken and not yet given back by a `Record` or `Release`: if the run ends
        #: any other way (a bug raising in the exchange), they are released, or a half-open
        #: provider's probe slot would stay taken for good.
        self.unsettled: list[tuple[str, Permit]] = []

    def client_left(self) -> None:
        if not self.gone:
            self.gone = True
            self.channel.push(ClientGone(self.d.clock()))

    async def loop(self) -> Result:
        clock = self.d.clock
        pending: deque[Action] = deque(self.ex.handle(Start(clock())))
        for _ in range(1 << 40):  # bounded by the exchange: every turn ends an attempt or moves it on
            if pending:
                event = await self.execute(pending.popleft())
                if event is not None:
                    pending.extend(self.ex.handle(event))
                continue
            if self.ex.result is not None:
                return self.ex.result
            pending.extend(self.ex.handle(await self.next_event()))
        raise AssertionError("unreachable")

    async def next_event(self) -> Event:
        waiting = self.channel.get_nowait()
        if waiting is not None:
            return waiting
        deadline = self.ex.deadline()
        if deadline is not None:
            remaining = deadline - self.d.clock()
            if remaining <= 0:
                return Tick(self.d.clock())
            self.arm(deadline, remaining)
        return await self.channel.get()

    def arm(self, deadline: float, remaining: float) -> None:
        """One timer per run, moved only when a deadline comes earlier than it is set for. An idle
        deadline moves later with every chunk: re-arming each time (a timer handle per wait) cost
        more than the rest of the driver on a small answer. A timer that rings before the exchange's
        current deadline is answered with nothing by the exchange, and the next wait arms it again."""
        if self.timer is not None and self.timer_at <= deadline:
            return
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = deadline
        self.timer = asyncio.get_running_loop().call_later(remaining, self.ring)

    def ring(self) -> None:
        self.timer = None
        self.channel.push(Tick(max(self.d.clock(), self.timer_at)))

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def execute(self, action: Action) -> Event | None:
        """Carry out one action; an action that has an immediate answer returns it as an event."""
        d, ex = self.d, self.ex
        if isinstance(action, Forward):  # first: one per chunk of every stream
            if self.copying and not self.copy_cut:
                # The copy stops at the first chunk that doesn't fit: a copy with a hole in it
                # could end with the stream's final events and pass for the whole answer.
                if len(self.copy) + len(action.data) <= REPORT_COPY_LIMIT:
                    self.copy += action.data
                else:
                    self.copy_cut = True
            await self.sink.forward(action.data)
            return Forwarded(d.clock())
        if isinstance(action, Pick):
            if action.same is not None:
                permit = d.control.acquire(ex.app.name, action.same.id)
                if permit is not None:
                    self.unsettled.append((action.same.id, permit))
                    return Picked(action.same, permit, d.clock())
            picked = d.control.acquire_next(ex.app.name, ex.queue)
            if picked is None:
                return Exhausted(d.control.retry_after(ex.app.name), d.clock())
            self.unsettled.append((picked[0].id, picked[1]))
            return Picked(picked[0], picked[1], d.clock())
        if isinstance(action, Send):
            self.started[action.attempt.number] = d.clock()
            self.start_reader(action, ex.delivery is Delivery.UPGRADE)
        elif isinstance(action, Stream):
            await self.sink.stream(action.status, action.headers)
        elif isinstance(action, Deliver | Refuse):
            await self.sink.deliver(action.status, action.headers, action.body)
        elif isinstance(action, Upgrade):
            pipe, self.upgraded = self.upgraded, None
            assert pipe is not None
            await self.sink.upgrade(action.status, action.headers, pipe)
        elif isinstance(action, Finish):
            await self.sink.finish()
        elif isinstance(action, Cut):
            await self.sink.cut(action.reason)
        elif isinstance(action, Abort):
            self.stop_reader()
        elif isinstance(action, Record):
            attempt = action.attempt
            latency = (d.clock() - self.started.get(attempt.number, d.clock())) * 1000
            metering = ex.metering(attempt)
            d.control.record(
                ex.app.name,
                attempt.provider.id,
                attempt.permit,
                action.verdict,
                latency,
                attempt.status,
                metering,
            )
            self.settle(attempt)
            self.report(attempt, action.verdict)
        elif isinstance(action, Release):
            attempt = action.attempt
            d.control.release(ex.app.name, attempt.provider.id, attempt.permit)
            if self.gone and attempt.number in self.outbound:  # sent, then abandoned: it may have cost
                latency = (d.clock() - self.started.get(attempt.number, d.clock())) * 1000
                d.control.abandoned(
                    ex.app.name, attempt.provider.id, latency, attempt.status, ex.metering(attempt)
                )
            self.settle(action.attempt)
            self.report(action.attempt, None)
        elif isinstance(action, Done | HoldBack):
            pass
        return None

    def settle(self, attempt: Attempt) -> None:
        entry = (attempt.provider.id, attempt.permit)
        if entry in self.unsettled:
            self.unsettled.remove(entry)

    def release_unsettled(self) -> None:
        unsettled, self.unsettled = self.unsettled, []
        for provider, permit in unsettled:
            self.d.control.release(self.ex.app.name, provider, permit)

    def report(self, attempt: Attempt, verdict: Verdict | None) -> None:
        outbound = self.outbound.get(attempt.number)
        if self.observe is None or outbound is None:  # never sent: nothing to show
            return
        body = bytes(self.copy) if attempt.streaming else bytes(attempt.body)
        truncated = attempt.streaming and self.copy_cut
        self.copy, self.copy_cut = bytearray(), False
        self.observe(
            AttemptReport(
                attempt.number,
                attempt.provider,
                outbound,
                attempt.status,
                attempt.headers,
                body,
                verdict,
                self.started_wall.get(attempt.number, 0.0),
                self.d.wall(),
                truncated,
            )
        )

    def start_reader(self, action: Send, upgrade: bool) -> None:
        self.stop_reader()
        self.channel = Channel()
        if self.gone:
            self.channel.push(ClientGone(self.d.clock()))
        request = self.request
        if action.attempt.body_override is not None:  # a continuation: the same request, prefilled
            request = dataclasses.replace(request, body=action.attempt.body_override)
        try:
            translation = action.attempt.translation
            if translation is not None:
                # The provider is asked for a stream exactly when the client is served one.
                streamed = self.ex.delivery is Delivery.STREAM
                translated = translation.request(request.path, request.headers, request.body, streamed)
                path, headers, body = translated
                request = dataclasses.replace(request, path=path, headers=headers, body=body)
            outbound = for_provider(request, action.attempt.provider, upgrade)
        except (NotAdaptable, NotTranslatable) as e:
            logger.warning("detour: %s not sent to %s: %s", self.ex.app.name, action.attempt.provider.id, e)
            self.channel.push(Unsendable(str(e), self.d.clock()))
            return
        self.outbound[action.attempt.number] = outbound
        self.started_wall[action.attempt.number] = self.d.wall()
        self.reader = asyncio.ensure_future(self.read(self.channel, outbound, upgrade))

    def stop_reader(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None and not reader.done():
            reader.cancel()
        pipe, self.upgraded = self.upgraded, None
        if pipe is not None:
            pipe.writer.transport.abort()

    async def read(self, channel: Channel, outbound: OutboundRequest, upgrade: bool) -> None:
        """Feed `channel` with one attempt's events; never raises (failures are events)."""
        clock = self.d.clock
        switching: Head | None = None
        try:
            async for item in self.d.send(self.d.pool, outbound, upgrade):
                if item is None:
                    channel.push(Connected(clock()))
                elif isinstance(item, bytes):
                    await channel.put(BodyData(item, clock()))
                elif isinstance(item, Head):
                    if upgrade and item.status == 101:
                        switching = item  # reported with the connection it leaves open, below
                        continue
                    await channel.put(ResponseHead(item.status, item.headers, clock(), self.d.wall()))
                elif isinstance(item, End):
                    await channel.put(BodyEnd(clock()))
                elif isinstance(item, Upgraded) and switching is not None:
                    self.upgraded = item
                    channel.push(ResponseHead(switching.status, switching.headers, clock(), self.d.wall()))
        except UpstreamFailure as e:
            channel.push(UpstreamError(e.kind, e.detail, clock()))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must end the attempt as a failure, not leave the client waiting
            logger.exception("detour: attempt reader failed")
            channel.push(UpstreamError(ErrorKind.RESET, f"internal error: {type(e).__name__}", clock()))
