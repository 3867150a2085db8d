"""A fast mock provider for the benchmark (asyncio, HTTP/1.1 keep-alive, tiny JSON replies).

    python bench/mock.py KIND:PORT [KIND:PORT ...] [--lifetime SECONDS]

KIND is one of
  ok    200 with a small Anthropic-style JSON body; a request body containing "stream": true gets an
        SSE stream instead: SSE_EVENTS events, one every SSE_INTERVAL seconds, ending in message_stop
  500   500 with an Anthropic-style error body (keep-alive)
  529   529 overloaded_error (keep-alive)
  hang  reads the request and never answers (the connection is held until the client closes it)

`GET /__count` on any listener answers the number of other requests that listener has received.
Prints "ready" once every listener is bound; exits on SIGTERM/SIGINT, on stdin EOF, or after
--lifetime seconds (default 1800), whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

SSE_EVENTS = 10
SSE_INTERVAL = 0.05
MAX_REQUESTS_PER_CONNECTION = 1_000_000
HANG_FOR = 120.0

OK_BODY = (
    b'{"id":"msg_bench","type":"message","role":"assistant","model":"mock",'
    b'"content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn",'
    b'"usage":{"input_tokens":1,"output_tokens":1}}'
)
ERROR_BODIES = {
    500: b'{"type":"error","error":{"type":"api_error","message":"mock 500"}}',
    529: b'{"type":"error","error":{"type":"overloaded_error","message":"mock 529"}}',
}
REASONS = {200: b"OK", 500: b"Internal Server Error", 529: b"Overloaded"}


def response(status: int, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: keep-alive\r\n\r\n" % (status, REASONS[status], len(body))
    ) + body


OK_RESPONSE = response(200, OK_BODY)
ERROR_RESPONSES = {s: response(s, b) for s, b in ERROR_BODIES.items()}


def sse_event(i: int) -> bytes:
    if i == 0:
        name, data = b"message_start", b'{"type":"message_start","message":{"id":"msg_bench"}}'
    elif i == SSE_EVENTS - 1:
        name, data = b"message_stop", b'{"type":"message_stop"}'
    else:
        name = b"content_block_delta"
        data = b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"t%d"}}' % i
    event = b"event: " + name + b"\ndata: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


class Listener:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lower = head.lower()
                body = b""
                at = lower.find(b"\r\ncontent-length:")
                if at >= 0:
                    end = lower.index(b"\r\n", at + 2)
                    body = await reader.readexactly(int(lower[at + 17 : end]))
                if head.startswith(b"GET /__count"):
                    writer.write(response(200, b'{"count":%d}' % self.count))
                    continue
                self.count += 1
                if self.kind == "ok":
                    if b'"stream": true' in body or b'"stream":true' in body:
                        await self.stream(writer)
                    else:
                        writer.write(OK_RESPONSE)
                elif self.kind == "hang":
                    await asyncio.sleep(HANG_FOR)
                    return
                else:
                    writer.write(ERROR_RESPONSES[int(self.kind)])
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
        except (ConnectionError, OSError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
        )
        await writer.drain()
        for i in range(SSE_EVENTS):
            if i:
                await asyncio.sleep(SSE_INTERVAL)
            writer.write(sse_event(i))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def main(specs: list[str], lifetime: float) -> None:
    servers = []
    for spec in specs:
        kind, _, port = spec.partition(":")
        if kind not in ("ok", "500", "529", "hang"):
            raise SystemExit(f"unknown kind {kind!r}")
        listener = Listener(kind)
        servers.append(await asyncio.start_server(listener.handle, "127.0.0.1", int(port), backlog=512))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), lifetime)
    for server in servers:
        server.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    life = 1800.0
    if "--lifetime" in args:
        i = args.index("--lifetime")
        life = float(args[i + 1])
        del args[i : i + 2]
    asyncio.run(main(args, life))
