"""Detour's own per-chunk cost on a stream, in-process: what each streamed event costs in Detour's code.

    python bench/chunks.py [--chunks 20000] [--profile]

One streamed exchange is driven by the real `Driver`, `Exchange`, Anthropic dialect (SSE event
detection, usage meter, the held head), channel and idle clock, from a sender that yields one
`content_block_delta` per chunk (with one event-loop turn between chunks, as a socket read would) into
a sink that drops what it's given. The floor is the same sender read by a bare loop: the event-loop
turn and the generator. What is left is Detour's own per-chunk work, without sockets: in the proxy,
each chunk also costs a socket read from the provider and a socket write to the loopback relay, and
mitmproxy's own reading of the relay (which a plain mitmdump pays for the provider's connection).
`--profile` prints where the time goes, per function. Also timed on its own: Detour's HTTP/1 client
parsing the provider's chunked stream, one chunk per read.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, installed or not

from addon.breaker import Permit
from addon.driver import Driver
from addon.exchange import Delivery, Exchange
from addon.formats import DIALECTS
from addon.http1 import End, Head, ResponseParser
from addon.model import App, Provider
from addon.rewrite import ClientRequest

PERMIT = Permit(0, probe=False)
START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"t=123.456789"}}\n\n'
)
END = (
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


class QuietControl:
    """The control plane's calls a streamed exchange makes, answered at no cost."""

    def acquire_next(self, app: str, queue: list[Provider]) -> tuple[Provider, Permit] | None:
        return (queue.pop(0), PERMIT) if queue else None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class DroppingSink:
    on_gone = None

    def __init__(self) -> None:
        self.chunks = 0

    async def stream(self, status: int, headers: object) -> None:
        pass

    async def forward(self, data: bytes) -> None:
        self.chunks += 1

    async def finish(self) -> None:
        pass

    async def cut(self, reason: str) -> None:
        pass

    async def deliver(self, status: int, headers: object, body: bytes) -> None:
        pass


def sender(chunks: int) -> Any:
    async def send(pool: object, outbound: object, upgrade: bool = False) -> AsyncIterator[object]:
        yield None
        yield Head(200, ((b"content-type", b"text/event-stream"),))
        yield START
        for _ in range(chunks):
            await asyncio.sleep(0)  # one event-loop turn per chunk, as a socket read
            yield DELTA
        yield END
        yield End()

    return send


async def driven(chunks: int) -> float:
    provider = Provider("primary", "http://127.0.0.1:9")
    app = App("claude", ("api.anthropic.com",), (provider,), ("/v1/messages*",))
    driver = Driver(QuietControl(), pool=None, send=sender(chunks))  # type: ignore[arg-type]
    sink = DroppingSink()
    exchange = Exchange(app, DIALECTS["anthropic"], Delivery.STREAM, [provider])
    request = ClientRequest(
        "POST", "/v1/messages", ((b"content-type", b"application/json"),), b'{"stream":true}'
    )
    started = time.process_time()
    await driver.run(exchange, request, sink)  # type: ignore[arg-type]
    spent = time.process_time() - started
    assert sink.chunks >= chunks, sink.chunks
    return spent


def parsed(chunks: int) -> float:
    """Detour's HTTP/1 client parsing a chunked stream, one provider chunk (one event) per read."""
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    wire = b"%x\r\n%s\r\n" % (len(DELTA), DELTA)
    started = time.process_time()
    for _ in range(chunks):
        parser.feed(wire)
    return time.process_time() - started


async def floor(chunks: int) -> float:
    started = time.process_time()
    async for _ in sender(chunks)(None, None):
        pass
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--profile", action="store_true", help="also print a profile of one run")
    args = parser.parse_args()
    n = args.chunks
    path = min(asyncio.run(driven(n)) for _ in range(5))
    bare = min(asyncio.run(floor(n)) for _ in range(5))
    print(f"Python {sys.version.split()[0]}, {n} chunks, best of 5:")
    print(f"  driven stream  {path / n * 1e6:6.2f} µs per chunk")
    print(f"  floor          {bare / n * 1e6:6.2f} µs per chunk (event-loop turn + generator)")
    print(f"  Detour's own   {(path - bare) / n * 1e6:6.2f} µs per chunk")
    http1 = min(parsed(n) for _ in range(5))
    print(f"  HTTP/1 parse   {http1 / n * 1e6:6.2f} µs per chunk (its client reading the provider)")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(driven(n))
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
