"""A provider for the streaming-scale bench: many long Anthropic SSE streams, each event stamped.

    python bench/streamserver.py PORT EVENTS INTERVAL_MS

Answers every `POST /v1/messages` (keep-alive, any body) with a 200 `text/event-stream`, chunked: a
`message_start`, a `content_block_start`, EVENTS `content_block_delta` events INTERVAL_MS apart, then
the block's stop, a `message_delta` with usage and `message_stop`, as Anthropic sends them. Each
delta's text is the `time.monotonic()` at which it was written, so the client measures every event's
transit time (one clock: the same machine). Non-streaming requests get a small JSON answer.

Built on asyncio protocols with one timer per stream, not streams or a test framework: at 500
streams x 50 events/s its own cost must stay small next to the proxy it feeds (it runs on the load
generator's CPU). Prints "ready" once listening; exits on SIGINT/SIGTERM or when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_bench","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,'
    b'"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_END = (
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":200}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"t=%.6f"}}\n\n'
)
_JSON = json.dumps(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class StreamProtocol(asyncio.Protocol):
    """One client connection: requests in order, each answered by a paced stream."""

    def __init__(self, events: int, interval: float) -> None:
        self.events = events
        self.interval = interval
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.timer is not None:
            return
        head = self.buffer[:head_end].decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip() == "content-length":
                length = int(value)
        if len(self.buffer) < head_end + 4 + length:
            return
        body = self.buffer[head_end + 4 : head_end + 4 + length]
        self.buffer = self.buffer[head_end + 4 + length :]
        self.answer(body)

    def answer(self, body: bytes) -> None:
        assert self.transport is not None
        if b'"stream": true' not in body and b'"stream":true' not in body:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(_JSON), _JSON)
            )
            return
        self.transport.write(_HEAD + chunk(_START))
        loop = asyncio.get_running_loop()
        self.timer = loop.call_at(loop.time() + self.interval, self.tick, 0, loop.time() + self.interval)

    def tick(self, sent: int, due: float) -> None:
        if self.transport is None:
            return
        self.transport.write(chunk(_DELTA % time.monotonic()))
        sent += 1
        if sent < self.events:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(due + self.interval, self.tick, sent, due + self.interval)
            return
        self.transport.write(chunk(_END) + b"0\r\n\r\n")
        self.timer = None
        if self.buffer:  # a pipelined request waited for this stream
            self.data_received(b"")


async def serve(port: int, events: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: StreamProtocol(events, interval), "127.0.0.1", port, backlog=2048
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000.0))
