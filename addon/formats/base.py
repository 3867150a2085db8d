"""What every API dialect knows about itself, and the stream watch built on that knowledge.

A dialect is one wire format (Anthropic Messages, OpenAI Chat Completions, OpenAI Responses,
Gemini). The exchange never looks inside a body itself: it asks the dialect whether a request
streams, what an event means, and how an error must look for the client's SDK to recognise it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass

from addon.formats.continuation import Splicer, Transcript
from addon.formats.documents import first_model, json_object
from addon.formats.sse import SSEEvent, SSEParser
from addon.formats.usage import Tokens, UsageMeter

#: How much of an in-stream error event is kept for the failure reason (masked, then shortened, by the
#: exchange: a key must not be cut in half before it is masked).
ERROR_KEPT = 4096

Family = str  # "anthropic" | "openai" | "gemini": what an app's clients speak


class EventKind(enum.Enum):
    """What one streamed event tells about the answer as a whole."""

    OTHER = "other"  # pings, metadata, block starts and stops
    CONTENT = "content"  # generated text, thinking or tool input: the answer has begun
    FINISHED = "finished"  # carries a stop reason; complete if the stream then ends cleanly
    TERMINAL = "terminal"  # the dialect's explicit end of stream
    ERROR = "error"  # an error reported inside a 200 stream


@dataclass(frozen=True)
class Dialect:
    """One API wire format. Subclasses override the event table and the error shape."""

    name: str
    family: Family
    #: The model-API paths an app of this family routes by default (globs, query ignored).
    paths: tuple[str, ...]

    @property
    def continues(self) -> bool:
        """A broken answer in this dialect can be continued elsewhere (it reads transcripts)."""
        return type(self).transcript is not Dialect.transcript

    def is_stream_request(self, path: str, body: bytes) -> bool:
        """The client asked for a streamed answer (`"stream": true`)."""
        return json_true(body, b'"stream"')

    def classify_event(self, event: SSEEvent) -> EventKind:  # pragma: no cover - abstract
        raise NotImplementedError

    def has_content(self, event: SSEEvent) -> bool:
        """A CONTENT event really carries generated content. Asked only until the first one does
        (so it may parse): a dialect whose streams open with empty deltas says no to those."""
        return True

    def larger_context_helps(self, status: int, body: bytes) -> bool:
        """A client-error answer says the request is too long for this provider's context window,
        which a provider with a larger one may not be."""
        return False

    def stream_error(self, message: str) -> bytes:
        """An in-stream error event saying `message`, for a stream this dialect's client reads that
        must end in error (empty when the dialect has none: the cut says it)."""
        return b""

    def transcript(self, sent: bytes) -> Transcript | None:
        """What the client got of a streamed answer that broke, if it can be continued elsewhere:
        text only, with the message still open. None when not (a tool call, thinking, no text)."""
        return None

    def continued_body(self, body: bytes, transcript: Transcript, base_url: str) -> bytes | None:
        """The client's request asking a provider to continue `transcript`, or None if it can't."""
        return None

    def splicer(self, transcript: Transcript) -> Splicer:  # pragma: no cover - only with a transcript
        raise NotImplementedError

    def error_document(self, status: int, message: str) -> dict[str, object]:  # pragma: no cover
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> bytes:
        """A JSON error body for `status` that this dialect's official SDK parses."""
        return json.dumps(self.error_document(status, message)).encode()

    def usage_slot(self, event: SSEEvent) -> str | None:
        """The role this streamed event plays in reporting usage (its raw text is kept under that
        name, the last one of each role winning), or None for the many that carry none. Called for
        every event: it must not parse."""
        return None

    def stream_tokens(self, kept: Mapping[str, str]) -> Tokens | None:
        """A stream's tokens from the events `usage_slot` kept; counts not yet final are None."""
        return None

    def body_tokens(self, body: bytes) -> Tokens | None:
        """A whole answer's tokens (None when the body reports none, e.g. an error)."""
        return None

    def requested_model(self, path: str, body: bytes) -> str:
        """The model the client asked for ("" if none): the request's first top-level `model`."""
        return first_model(body)

    def watch(self) -> StreamWatch:
        return StreamWatch(self)


def json_true(body: bytes, key: bytes) -> bool:
    """`key` (quoted) appears as a member set to `true`, without parsing the body: request bodies
    run to megabytes of conversation. A key inside a string value is escaped (`\\"stream\\"`)
    and so never matches; a nested member of that name would, which only means the answer is
    relayed as a stream, still delivered correctly."""
    start = 0
    for _ in range(len(body)):  # bounded: each pass moves past one occurrence
        at = body.find(key, start)
        if at < 0:
            return False
        start = at + len(key)
        if at and body[at - 1] == 0x5C:  # backslash: inside a string
            continue
        rest = body[start : start + 16].lstrip()
        if rest[:1] == b":" and rest[1:].lstrip().startswith(b"true"):
            return True
    return False


def readable_error(data: str) -> str:
    """An in-stream error event's text with its JSON escapes resolved, so masking sees a key however
    the provider spelled it (and with no lone surrogate left, which nothing downstream could store)."""
    document = json_object(data)
    if document is None:
        return data
    text = json.dumps(document, ensure_ascii=False)
    return text.encode("utf-8", "replace").decode("utf-8")


def error_text(body: bytes) -> str:
    """An error body's code, type, status and message joined, for matching (empty if not JSON)."""
    document = json_object(body)
    error = document.get("error") if document is not None else None
    if not isinstance(error, dict):
        return ""
    return " ".join(str(error.get(k)) for k in ("code", "type", "status", "message") if error.get(k))




class StreamWatch:
    """Follows one streamed answer: did it end as its dialect says a complete answer ends, did it
    report an error, has content begun? Fed the raw chunks exactly as they arrive."""

    __slots__ = (
        "_dialect",
        "_parser",
        "content_started",
        "error",
        "events",
        "finished",
        "last",
        "meter",
        "terminal",
    )

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._parser = SSEParser()
        #: The usage events seen, read when the attempt is recorded.
        self.meter = UsageMeter(dialect)
        self.events = 0
        self.last: list[SSEEvent] = []
        self.content_started = False
        self.finished = False
        self.terminal = False
        #: The first error event's data (shortened), if any.
        self.error: str | None = None

    def feed(self, chunk: bytes) -> None:
        #: The events this chunk completed (a translation reads them instead of parsing again).
        self.last = self._parser.feed(chunk)
        see = self.meter.see
        for event in self.last:
            self.events += 1
            see(event)
            kind = self._dialect.classify_event(event)
            if kind is EventKind.OTHER:
                continue
            if kind is EventKind.CONTENT:
                if not self.content_started:
                    self.content_started = self._dialect.has_content(event)
            elif kind is EventKind.TERMINAL:
                self.terminal = True
            elif kind is EventKind.FINISHED:
                self.finished = True
                self.content_started = True
            elif self.error is None:
                self.error = readable_error(event.data)[:ERROR_KEPT]

    @property
    def complete(self) -> bool:
        """The answer ended as a complete one does (asked only after a clean end of the body)."""
        return self.terminal or self.finished
