"""A model answer as people read it: the assembled text, thinking and tool calls, the stop reason,
the usage, and whether the stream ended complete, was cut, or reported an error.

A streamed answer is hundreds of small events (`content_block_delta`, `response.output_text.delta`,
chunks); the "Detour" content view (`addon/mitm/contentview.py`, for mitmweb and the console) shows
this instead. The codecs the translations use read every dialect into the same events, so one
renderer serves the four; the stream watch and the usage meter say how the stream ended and what it
cost, as they do for the exchange.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field

from addon.formats import DIALECTS, Dialect
from addon.formats.base import error_text
from addon.formats.documents import json_object
from addon.formats.ir import Began, Finished, Message, StreamEvent, TextDelta, ThinkingDelta, ToolCallDelta
from addon.formats.sse import SSEEvent
from addon.formats.translation import CODECS
from addon.formats.usage import Tokens
from addon.secrets import redact

#: How each dialect's answers are recognised by the request path (the provider's base path may come
#: first: `/api/anthropic/v1/messages`).
_PATH_ENDINGS = (
    ("/messages", "anthropic"),
    ("/chat/completions", "openai-chat"),
    ("/responses", "openai-responses"),
    (":streamGenerateContent", "gemini"),
    (":generateContent", "gemini"),
)
#: The most of a long text kept in the view (the raw view still has all of it).
MAX_SHOWN = 200_000
#: The most of a body the view reads: mitmweb renders views on the proxy's own event loop, and a
#: view that took seconds would hold up every flow. Beyond it the view says what it didn't read.
MAX_REVIEWED = 1024 * 1024
#: The most chunks of a JSON-array answer read.
MAX_CHUNKS = 2_000


#: What the start of each dialect's answers holds (a JSON API that merely ends in `/messages`, e.g.
#: OpenAI's Assistants `/v1/threads/{id}/messages`, is not one of them).
_ANSWER_MARKS: dict[str, tuple[bytes, ...]] = {
    "anthropic": (b'"type":"message"', b'"type": "message"', b'"type":"error"', b'"type": "error"'),
    "openai-chat": (b'"choices"', b'"error"'),
    "openai-responses": (b'"object":"response"', b'"object": "response"', b'"error"'),
    "gemini": (b'"candidates"', b'"usageMetadata"', b'"error"'),
}
#: How much of a body `looks_like_answer` searches.
_MARK_WINDOW = 64 * 1024


def looks_like_answer(dialect: Dialect, body: bytes, streamed: bool) -> bool:
    """The body is an answer of `dialect` (an event stream, or a JSON document with its marks)."""
    if streamed:
        return True
    head = body[:_MARK_WINDOW]
    return any(mark in head for mark in _ANSWER_MARKS.get(dialect.name, ()))


def dialect_of(path: str) -> Dialect | None:
    """The dialect of a model-API request path (query ignored), or None for anything else."""
    bare = path.split("?", 1)[0].rstrip("/")
    return next((DIALECTS[name] for ending, name in _PATH_ENDINGS if bare.endswith(ending)), None)


@dataclass
class _Block:
    kind: str  # "text" | "thinking" | "tool call"
    text: list[str] = field(default_factory=list)
    name: str = ""
    id: str = ""


@dataclass
class _Answer:
    """The answer being assembled, block by block in the order they came."""

    blocks: list[_Block] = field(default_factory=list)
    calls: dict[int, _Block] = field(default_factory=dict)
    id: str = ""
    model: str = ""
    stop: str = ""

    def add(self, event: StreamEvent) -> None:
        if isinstance(event, Began):
            self.id, self.model = event.id or self.id, event.model or self.model
        elif isinstance(event, TextDelta | ThinkingDelta):
            kind = "text" if isinstance(event, TextDelta) else "thinking"
            if not self.blocks or self.blocks[-1].kind != kind:
                self.blocks.append(_Block(kind))
            self.blocks[-1].text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            call = self.calls.get(event.index)
            if call is None:
                call = self.calls[event.index] = _Block("tool call")
                self.blocks.append(call)
            call.id, call.name = call.id or event.id, call.name or event.name
            call.text.append(event.arguments)
        elif isinstance(event, Finished) and event.stop is not None:
            self.stop = event.stop.value

    def whole(self, message: Message) -> None:
        self.id, self.model = message.id, message.model
        self.stop = message.stop.value if message.stop is not None else ""
        for part in message.parts:
            if part.kind in ("text", "thinking"):
                self.blocks.append(_Block(part.kind, [part.text]))
            elif part.kind == "tool_call":
                self.blocks.append(_Block("tool call", [json.dumps(part.arguments)], part.name, part.id))


def review(
    dialect: Dialect,
    body: bytes,
    streamed: bool,
    status: int = 200,
    truncated: bool = False,
    secrets: Collection[str] = (),
) -> str:
    """The answer in `body` (an event stream when `streamed`, else one JSON document) as text, with
    every key masked (a key a model spells in pieces is whole only once the pieces are joined).
    `truncated`: `body` is only the start of the answer (a flow's bounded copy)."""
    return redact(_review(dialect, body, streamed, status, truncated), secrets)


def _review(dialect: Dialect, body: bytes, streamed: bool, status: int, truncated: bool) -> str:
    if not 200 <= status < 300 and not streamed:
        return _error_answer(dialect, f"http {status}", body)
    shown = body[:MAX_REVIEWED]
    answer = _Answer()
    if streamed:
        head, tokens = _read_stream(dialect, shown, answer)
    else:
        document = json_object(shown) if len(body) <= MAX_REVIEWED else None
        if document is not None and "error" in document and not _has_answer(document):
            return _error_answer(dialect, f"http {status}", body)  # a failure sent as a 200
        head, tokens = _read_whole(dialect, shown, document, answer)
    if len(body) > MAX_REVIEWED or truncated:
        # What the view didn't read can't be judged: never "complete".
        seen = f"{min(len(body), MAX_REVIEWED):,} of {len(body):,} bytes" if len(body) > MAX_REVIEWED else ""
        why = seen or "this flow keeps only the start of the answer"
        head = f"{dialect.name} answer, partly shown ({why}): how it ended is not known here"
    return "\n".join(_render(head, answer, tokens))


def _error_answer(dialect: Dialect, how: str, body: bytes) -> str:
    document = json_object(body[:MAX_REVIEWED])
    if document is not None:
        shown = json.dumps(document, indent=2, ensure_ascii=False)
    else:
        shown = body[:MAX_REVIEWED].decode("utf-8", "replace")
    said = error_text(body[:MAX_REVIEWED])
    return f"{dialect.name} error answer ({how}): {said or 'no error message'}\n\n{shown}"


def _has_answer(document: dict[str, object]) -> bool:
    """An answer document (not only an error) of any dialect."""
    return any(k in document for k in ("content", "choices", "candidates", "output"))


def _read_stream(dialect: Dialect, body: bytes, answer: _Answer) -> tuple[str, Tokens | None]:
    watch = dialect.watch()
    reader = CODECS[dialect.name].reader()
    # One parse: the watch's events of the body (plus a final event without its blank line).
    events: list[SSEEvent] = []
    for chunk in (body, b"\n\n"):
        watch.feed(chunk)
        events += watch.last
    for event in events:
        if event.data == "[DONE]":
            continue
        try:
            for item in reader.read(event):
                answer.add(item)
        except (ValueError, KeyError, TypeError, AttributeError):  # one odd event: the rest still shows
            continue
    if watch.error is not None:
        state = f"error in the stream: {watch.error}"
    elif watch.complete:
        state = "complete"
    else:
        state = "cut: the stream ended without its final event"
    return f"{dialect.name} stream, {watch.events} events: {state}", watch.meter.tokens()


def _read_whole(
    dialect: Dialect, body: bytes, document: dict[str, object] | None, answer: _Answer
) -> tuple[str, Tokens | None]:
    if document is None:
        chunks = _json_list(body)
        if chunks is None:
            raise ValueError("not a JSON answer")
        # Gemini's streamGenerateContent without alt=sse: the chunks as one JSON array.
        reader = CODECS[dialect.name].reader()
        for chunk in chunks[:MAX_CHUNKS]:
            if isinstance(chunk, dict):
                for item in reader.read(SSEEvent("message", json.dumps(chunk))):
                    answer.add(item)
        # The dialect reads an array's usage itself (its last chunk with counts).
        return f"{dialect.name} answer, {len(chunks)} chunks", dialect.body_tokens(body)
    answer.whole(CODECS[dialect.name].decode_message(document))
    return f"{dialect.name} answer", dialect.body_tokens(body)


def _json_list(body: bytes) -> list[object] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def _render(head: str, answer: _Answer, tokens: Tokens | None) -> list[str]:
    lines = [head]
    if tokens is not None and tokens.response_id:  # as the provider wrote it (codecs may prefix it)
        answer.id = tokens.response_id
    named = " · ".join(
        p for p in (answer.model and f"model {answer.model}", answer.id and f"id {answer.id}") if p
    )
    if named:
        lines.append(named)
    if answer.stop:
        lines.append(f"stop: {answer.stop}")
    lines.append(f"usage: {_usage(tokens)}")
    for block in answer.blocks:
        title = (
            block.kind
            if block.kind != "tool call"
            else f"tool call {block.name or '?'} ({block.id or 'no id'})"
        )
        text = "".join(block.text)
        if block.kind == "tool call":
            text = _arguments(text)
        if len(text) > MAX_SHOWN:
            text = text[:MAX_SHOWN] + f"\n… ({len(text) - MAX_SHOWN:,} more characters in the raw view)"
        lines += ["", f"── {title} ──", text]
    if not answer.blocks:
        lines += ["", "(no content)"]
    return lines


def _arguments(text: str) -> str:
    """A tool call's input, indented when it is JSON (as the tool got it otherwise)."""
    document = json_object(text) if text.strip() else {}
    return json.dumps(document, indent=2, ensure_ascii=False) if document is not None else text


def _usage(tokens: Tokens | None) -> str:
    if tokens is None:
        return "not reported"

    def n(value: int | None) -> str:
        return f"{value:,}" if value is not None else "unknown"

    parts = [f"{n(tokens.input)} in"]
    if tokens.cache_read:
        parts.append(f"{tokens.cache_read:,} cache read")
    if tokens.cache_write:
        parts.append(f"{tokens.cache_write:,} cache write")
    parts.append(f"{n(tokens.output)} out")
    if tokens.reasoning:
        parts.append(f"{tokens.reasoning:,} of them reasoning")
    return ", ".join(parts)


def event_stream(content_type: str | None) -> bool:
    return bool(content_type) and "event-stream" in (content_type or "")
