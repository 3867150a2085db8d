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

from addon.formats.documents import json_object
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
    def trimmed(self) -> str:
        """The whitespace the prefill leaves out (the client has it already)."""
        return self.text[len(self.prefill) :]


#: How much of a continuation is compared with the start of the answer it continues: a provider that
#: ignores the prefill starts the answer over, and the client must not get it twice.
RESTART_PROBE = 24


class Restarted(Exception):
    """The continuing provider started the answer over instead of continuing it."""


class Splicer:
    """Rewrites a continuing provider's events into the client's stream; fed whole events."""

    def __init__(self, transcript: Transcript, trimmed: str) -> None:
        self.transcript = transcript
        self._parser = SSEParser()
        #: Whitespace the client has and the prefill left out: the continuation's own copy of it is
        #: dropped (only as far as it matches), or it would be there twice.
        self._skip = trimmed
        #: The continuation's events are held until its first text shows it doesn't start over.
        self._held: list[SSEEvent] = []
        self._seen = ""
        start = transcript.text.lstrip()
        self._start = start[: min(RESTART_PROBE, len(start))]
        self._checked = not self._start

    def feed(self, data: bytes) -> bytes:
        """The client's bytes for whole events of the continuing provider; raises `Restarted`."""
        out: list[SSEEvent] = []
        for event in self._parser.feed(data):
            for rewritten in self.rewrite(event):
                out += self._check(rewritten)
        return b"".join(encode(e) for e in out)

    def flush(self) -> bytes:
        """The continuation ended: whatever was held for the restart check goes out."""
        return b"".join(encode(e) for e in self._release())

    def _check(self, event: SSEEvent) -> list[SSEEvent]:
        """Hold events until the continuation's text either departs from the answer's start (it
        continues: release them) or repeats it (`Restarted`)."""
        if self._checked:
            return [event]
        self._held.append(event)
        self._seen += self.text_of(event)
        seen, start = self._seen.lstrip(), self._start
        if not start.startswith(seen[: len(start)]):
            return self._release()
        if len(seen) >= len(start) or (self.ends_text(event) and len(seen) >= min(8, len(start))):
            raise Restarted(f"it started the answer over ({seen[:40]!r})")
        return self._release() if self.ends_text(event) else []

    def _release(self) -> list[SSEEvent]:
        held, self._held, self._checked = self._held, [], True
        return held

    def text_of(self, event: SSEEvent) -> str:  # pragma: no cover - abstract
        """The continued text an already rewritten event carries ("" for none)."""
        raise NotImplementedError

    def ends_text(self, event: SSEEvent) -> bool:
        """The event ends the continuation's text (a block or message stop): decide now."""
        return False

    def rewrite(self, event: SSEEvent) -> list[SSEEvent]:  # pragma: no cover - abstract
        """The events the client gets for one of the continuing provider's."""
        raise NotImplementedError

    def text(self, piece: str) -> str:
        """A piece of continued text as the client must get it."""
        skip = self._skip
        if not skip or not piece:
            return piece
        same = 0
        for have, want in zip(piece, skip, strict=False):
            if have != want:
                break
            same += 1
        # Past a mismatch, or past all of it, nothing more is skipped.
        self._skip = skip[same:] if same == len(piece) else ""
        return piece[same:]


def encode(event: SSEEvent) -> bytes:
    """One event as SSE text (unnamed events stay unnamed)."""
    name = f"event: {event.event}\n" if event.event != "message" else ""
    return (name + "".join(f"data: {line}\n" for line in event.data.split("\n")) + "\n").encode()


def documents(sent: bytes) -> list[tuple[SSEEvent, dict[str, object] | None]]:
    """Every complete event of `sent` with its JSON object (None when not one)."""
    return [(event, json_object(event.data)) for event in SSEParser().feed(sent)]


def dumps(document: object) -> str:
    """JSON as providers write it in events: compact. ASCII only: a lone UTF-16 surrogate (an emoji
    cut in half by a JavaScript client or encoder) has no UTF-8 form, but an escape it does."""
    return json.dumps(document, separators=(",", ":"))


def with_assistant_turn(body: bytes, turn: dict[str, object], drop: tuple[str, ...] = ()) -> bytes | None:
    """The request with `turn` as its last message (and without the `drop` fields); None when it
    has no messages or already ends with an assistant turn (the client's own prefill)."""
    document = json_object(body)
    messages = document.get("messages") if document is not None else None
    if document is None or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") not in ("user", "tool"):
        return None
    continued = {k: v for k, v in document.items() if k not in drop}
    continued["messages"] = [*messages, turn]
    return json.dumps(continued).encode()
