"""The per-event cost of translating a stream, next to passing one through, in one run.

Drives the exchange itself (no sockets, no proxy: what is measured is Detour's own work per event)
with the same answer twice, interleaved in rounds: (p) an Anthropic stream to an Anthropic client,
passed through; (t) the same text as an OpenAI Chat stream, translated for the Anthropic client. Each
stream is N text events of a few characters, fed one network chunk per event, as providers send them.
Prints µs per event (median of rounds) for both and their ratio (issue 13's target: t/p ≤ 2), and the
time to the first forwarded byte of each.

    python bench/translation.py [--events 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from addon.breaker import Permit
from addon.exchange import (
    BodyData,
    BodyEnd,
    Connected,
    Delivery,
    Exchange,
    Forward,
    Picked,
    ResponseHead,
    Start,
)
from addon.formats import DIALECTS
from addon.model import App, Provider, RetrySame, Timeouts

SSE = ((b"content-type", b"text/event-stream"),)
PERMIT = Permit(0, probe=False)
REQUEST = json.dumps(
    {"model": "m", "stream": True, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
)


def anthropic_stream(n: int) -> list[bytes]:
    def event(name: str, data: dict[str, object]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    start = {"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "model": "m",  # noqa: E501
                                                  "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}}  # fmt: skip  # noqa: E501
    chunks = [event("message_start", start),
              event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})]  # fmt: skip
    chunks += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": f"word{i} "}}) for i in range(n)]  # fmt: skip  # noqa: E501
    chunks += [event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": n}}),
               event("message_stop", {"type": "message_stop"})]  # fmt: skip
    return chunks


def chat_stream(n: int) -> list[bytes]:
    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        document = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        return f"data: {json.dumps(document)}\n\n".encode()

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": f"word{i} "}) for i in range(n)]
    chunks += [
        chunk({}, "stop"),
        b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":5}}\n\n',
    ]
    return [*chunks, b"data: [DONE]\n\n"]


def app(api: str | None) -> App:
    provider = Provider("p", "https://p.example", api_key="k" if api else None, api=api)
    timeouts = Timeouts(first_token=15.0)
    return App("claude", ("api.anthropic.com",), (provider,), ("/v1/messages*",), timeouts=timeouts,
               retry_same=RetrySame(attempts=0))  # fmt: skip


def one(api: str | None, chunks: list[bytes]) -> tuple[float, float, int]:
    """(seconds for the whole stream, seconds to the first Forward, bytes forwarded)."""
    a = app(api)
    ex = Exchange(
        a,
        DIALECTS["anthropic"],
        Delivery.STREAM,
        list(a.providers),
        ("k-secret-0001",),
        body=REQUEST.encode(),
    )
    now = 0.0
    started = time.perf_counter()
    ex.handle(Start(now))
    ex.handle(Picked(a.providers[0], PERMIT, now))
    ex.handle(Connected(now))
    ex.handle(ResponseHead(200, SSE, now, 0.0))
    first = 0.0
    sent = 0
    for data in chunks:
        for action in ex.handle(BodyData(data, now)):
            if isinstance(action, Forward):
                sent += len(action.data)
                if not first:
                    first = time.perf_counter() - started
    for action in ex.handle(BodyEnd(now)):
        if isinstance(action, Forward):
            sent += len(action.data)
    assert ex.result is not None and ex.result.succeeded, ex.result
    return time.perf_counter() - started, first, sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    native, chat = anthropic_stream(args.events), chat_stream(args.events)
    passed: list[tuple[float, float, int]] = []
    translated: list[tuple[float, float, int]] = []
    for _ in range(args.rounds):  # interleaved: both see the same machine state
        passed.append(one(None, native))
        translated.append(one("openai-chat", chat))
    p = statistics.median(s[0] for s in passed) / args.events * 1e6
    t = statistics.median(s[0] for s in translated) / args.events * 1e6
    p_first = statistics.median(s[1] for s in passed) * 1e3
    t_first = statistics.median(s[1] for s in translated) * 1e3
    print(
        f"### Translation cost per streamed event ({args.events} text events, {args.rounds} rounds, medians)\n"  # noqa: E501
    )
    print("| path | µs per event | to the first forwarded byte, ms |")
    print("|---|---|---|")
    print(f"| p: Anthropic stream passed through | {p:.2f} | {p_first:.3f} |")
    print(f"| t: OpenAI Chat stream translated to Anthropic | {t:.2f} | {t_first:.3f} |")
    print(
        f"\nt/p per event: **{t / p:.2f}x** (target ≤ 2x); first byte t-p: **{t_first - p_first:+.3f} ms** (target ≤ 1 ms)."  # noqa: E501
    )


if __name__ == "__main__":
    main()
