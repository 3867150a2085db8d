"""Continuing a broken streamed answer on another provider: what every dialect's version shares.

A stream that breaks after some text reached the client can't be retried from the start (the client
would get that text twice), but it can be continued: the next provider gets the same request with
the text so far as the start of the assistant's answer (a "prefill") and generates the rest, which
is spliced into the client's stream as more of the same message. Each dialect that can do this
reads what the client got (`Dialect.transcript`), writes the continuing request
(`Dialect.continued_body`) and rewrites the continuing provider's events (`Dialect.splicer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from addon.formats.sse import SSEEvent, SSEParser


@dataclass(frozen=True)
class Transcript:
    """The part of a broken answer the client has, and where the splice must join it."""

    #: The assistant's text so far, exactly as the client got it.
    text: str
    #: The id the client knows the message by (a continuation keeps it).
    message_id: str
    #: The last content block's index the client saw (-1: none).
    index: int = -1
    #: That block is still open: the continuation's first block becomes more of it.
    open: bool = False

    @property
    def prefill(self) -> str:
        """The text as a prefill: without trailing whitespace (Anthropic rejects it; no model needs
        it), which the continuation then must not repeat (see `Splicer.text`)."""
        return self.text.rstrip()

    @property
    def trimmed(self) -> bool:
        return len(self.prefill) != len(self.text)


class Splicer:
    """Rewrites a continuing provider's events into the client's stream; fed whole events."""

    def __init__(self, transcript: Transcript, trimmed: bool) -> None:
        self.transcript = transcript
        self._parser = SSEParser()
        #: The client's text ended in whitespace the prefill left out: drop it from the start of
        #: the continuation, or it would be there twice.
        self._skip_space = trimmed

    def feed(self, data: bytes) -> bytes:
        return b"".join(encode(out) for event in self._parser.feed(data) for out in self.rewrite(event))

    def rewrite(self, event: SSEEvent) -> list[SSEEvent]:  # pragma: no cover - abstract
        """The events the client gets for one of the continuing provider's."""
        raise NotImplementedError

    def text(self, piece: str) -> str:
        """A piece of continued text as the client must get it."""
        if self._skip_space:
            stripped = piece.lstrip()
            if stripped:
                self._skip_space = False
            return stripped
        return piece


def encode(event: SSEEvent) -> bytes:
    """One event as SSE text (unnamed events stay unnamed)."""
    name = f"event: {event.event}\n" if event.event != "message" else ""
    return (name + "".join(f"data: {line}\n" for line in event.data.split("\n")) + "\n").encode()


def documents(sent: bytes) -> list[tuple[SSEEvent, dict[str, object] | None]]:
    """Every complete event of `sent` with its JSON object (None when not one)."""
    out: list[tuple[SSEEvent, dict[str, object] | None]] = []
    for event in SSEParser().feed(sent):
        try:
            document = json.loads(event.data)
        except ValueError:
            document = None
        out.append((event, document if isinstance(document, dict) else None))
    return out


def dumps(document: object) -> str:
    """JSON as providers write it in events: compact, non-ASCII kept."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def request_document(body: bytes) -> dict[str, object] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def with_assistant_turn(body: bytes, turn: dict[str, object], drop: tuple[str, ...] = ()) -> bytes | None:
    """The request with `turn` as its last message (and without the `drop` fields); None when it
    has no messages or already ends with an assistant turn (the client's own prefill)."""
    document = request_document(body)
    messages = document.get("messages") if document is not None else None
    if document is None or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") not in ("user", "tool"):
        return None
    continued = {k: v for k, v in document.items() if k not in drop}
    continued["messages"] = [*messages, turn]
    return json.dumps(continued, ensure_ascii=False).encode()
