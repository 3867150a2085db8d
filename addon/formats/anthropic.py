"""Anthropic Messages (`/v1/messages`): named events, ending with `message_stop`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from addon.formats.base import Dialect, EventKind, error_text
from addon.formats.continuation import Splicer, Transcript, documents, dumps, with_assistant_turn
from addon.formats.documents import json_object
from addon.formats.sse import SSEEvent
from addon.formats.usage import Tokens, anthropic_usage, body_document, member, parsed

_EVENTS = {
    "message_stop": EventKind.TERMINAL,
    "error": EventKind.ERROR,
    "content_block_delta": EventKind.CONTENT,
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
#: "prompt is too long: 215000 tokens > 200000 maximum", "input length and `max_tokens` exceed
#: context limit: ...": a model with a larger context window may take the same request.
_CONTEXT_EXCEEDED = re.compile(r"prompt is too long|exceed context limit|context window", re.IGNORECASE)
#: Events that report usage: `message_start` (input and cache counts, a placeholder output count) and
#: `message_delta` (cumulative counts, the final output among them).
_USAGE_SLOTS = {"message_start": "start", "message_delta": "delta"}
#: Events that end the message: after one of them there is nothing left to continue.
_ENDING = frozenset({"message_delta", "message_stop", "error"})


def _name(event: SSEEvent, document: dict[str, object] | None) -> str:
    """The event's name; unnamed events carry the same in their payload's `type`."""
    if event.event != "message":
        return event.event
    kind = document.get("type") if document else None
    return kind if isinstance(kind, str) else ""


@dataclass(frozen=True)
class Anthropic(Dialect):
    def classify_event(self, event: SSEEvent) -> EventKind:
        if event.event != "message":
            return _EVENTS.get(event.event, EventKind.OTHER)
        return _EVENTS.get(_name(event, json_object(event.data)), EventKind.OTHER)

    def usage_slot(self, event: SSEEvent) -> str | None:
        return _USAGE_SLOTS.get(event.event)

    def stream_tokens(self, kept: Mapping[str, str]) -> Tokens | None:
        message = member(parsed(kept, "start"), "message")
        started = anthropic_usage(member(message, "usage")) or Tokens()
        delta = anthropic_usage(member(parsed(kept, "delta"), "usage"))
        if delta is None:  # cut before its final counts: the output so far is not known
            tokens = Tokens(started.input, started.cache_read, started.cache_write)
        else:  # later counts win; a count `message_delta` leaves out stays as `message_start` said
            tokens = Tokens(
                delta.input if delta.input is not None else started.input,
                delta.cache_read or started.cache_read,
                delta.cache_write or started.cache_write,
                delta.output,
            )
        return tokens.with_ids(message, "id", "model") if isinstance(message, dict) else tokens

    def body_tokens(self, body: bytes) -> Tokens | None:
        document = body_document(body)
        tokens = anthropic_usage(member(document, "usage"))
        return tokens.with_ids(document, "id", "model") if tokens is not None and document else tokens

    def error_document(self, status: int, message: str) -> dict[str, object]:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    def stream_error(self, message: str) -> bytes:
        document = {"type": "error", "error": {"type": "api_error", "message": message}}
        return f"event: error\ndata: {dumps(document)}\n\n".encode()

    def larger_context_helps(self, status: int, body: bytes) -> bool:
        return status == 400 and bool(_CONTEXT_EXCEEDED.search(error_text(body)))

    def transcript(self, sent: bytes) -> Transcript | None:
        message_id, index, is_open, text = "", -1, False, []
        for event, document in documents(sent):
            name = _name(event, document)
            if name in _ENDING:
                return None
            if document is None:
                continue
            if name == "message_start":
                message = document.get("message")
                found = message.get("id") if isinstance(message, dict) else None
                message_id = found if isinstance(found, str) else ""
            elif name == "content_block_start":
                block = document.get("content_block")
                if not isinstance(block, dict) or block.get("type") != "text":
                    return None  # thinking or a tool call: a prefill can't continue those
                index, is_open = _index(document), True
                text.append(str(block.get("text") or ""))
            elif name == "content_block_delta":
                delta = document.get("delta")
                if not isinstance(delta, dict) or delta.get("type") != "text_delta":
                    return None
                text.append(str(delta.get("text") or ""))
            elif name == "content_block_stop":
                is_open = False
        whole = "".join(text)
        if not message_id or not whole.strip():
            return None
        return Transcript(whole, message_id, index, is_open)

    def continued_body(self, body: bytes, transcript: Transcript, base_url: str) -> bytes | None:
        # A prefill ends without whitespace (the API rejects it) and can't be combined with
        # extended thinking; the answer's thinking, if any, is over anyway.
        turn: dict[str, object] = {"role": "assistant", "content": transcript.prefill}
        return with_assistant_turn(body, turn, drop=("thinking",))

    def splicer(self, transcript: Transcript) -> Splicer:
        return _AnthropicSplicer(transcript, transcript.trimmed)


def _index(document: dict[str, object]) -> int:
    index = document.get("index")
    return index if isinstance(index, int) else 0


class _AnthropicSplicer(Splicer):
    """The continuing provider's message becomes more of the client's: its `message_start` is
    dropped, its first text block joins the client's open one, later blocks are numbered on."""

    def __init__(self, transcript: Transcript, trimmed: str) -> None:
        super().__init__(transcript, trimmed)
        #: Added to the continuing provider's block indices; fixed by its first block.
        self._offset = transcript.index if transcript.open else transcript.index + 1

    def rewrite(self, event: SSEEvent) -> list[SSEEvent]:
        document = json_object(event.data)
        name = _name(event, document)
        if document is None or name == "message_start":
            return [] if name == "message_start" else [event]
        t = self.transcript
        out: list[SSEEvent] = []
        if name == "content_block_start" and _index(document) == 0 and t.open:
            block = document.get("content_block")
            if isinstance(block, dict) and block.get("type") == "text" and not block.get("text"):
                return []  # the client's open block goes on
            # Something else comes first: close the client's block, number the rest after it.
            stop = {"type": "content_block_stop", "index": t.index}
            out.append(SSEEvent("content_block_stop" if event.event != "message" else "message", dumps(stop)))
            self._offset = t.index + 1
        if "index" in document:
            document["index"] = self._offset + _index(document)
        delta = document.get("delta")
        if name == "content_block_delta" and isinstance(delta, dict) and delta.get("type") == "text_delta":
            delta["text"] = self.text(str(delta.get("text") or ""))
            if not delta["text"]:
                return out
        out.append(SSEEvent(event.event, dumps(document)))
        return out

    def text_of(self, event: SSEEvent) -> str:
        document = json_object(event.data)
        delta = document.get("delta") if document is not None else None
        if _name(event, document) == "content_block_delta" and isinstance(delta, dict):
            return str(delta.get("text") or "")
        return ""

    def ends_text(self, event: SSEEvent) -> bool:
        return _name(event, json_object(event.data)) in ("content_block_stop", *_ENDING)


ANTHROPIC = Anthropic("anthropic", "anthropic", ("/v1/messages*", "/v1/complete"))
