"""OpenAI Responses (`/v1/responses`): named events ending with `response.completed` (or
`response.incomplete`, a complete answer cut by a limit) and no `[DONE]`; `response.failed` and
`error` report a failure inside the stream."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from addon.formats.base import Dialect, EventKind
from addon.formats.documents import json_object
from addon.formats.openai_chat import openai_context_exceeded, openai_error
from addon.formats.sse import SSEEvent
from addon.formats.usage import Tokens, body_document, member, parsed, responses_usage

_EVENTS = {
    "response.completed": EventKind.TERMINAL,
    "response.incomplete": EventKind.TERMINAL,
    "response.failed": EventKind.ERROR,
    "error": EventKind.ERROR,
    "response.output_text.delta": EventKind.CONTENT,
    "response.reasoning_text.delta": EventKind.CONTENT,
    "response.reasoning_summary_text.delta": EventKind.CONTENT,
    "response.function_call_arguments.delta": EventKind.CONTENT,
    "response.function_call_arguments.done": EventKind.CONTENT,
    "response.refusal.delta": EventKind.CONTENT,
    # A reasoning model may think for minutes before its first delta: an output item (reasoning,
    # message or call) being added is the sign that generation has begun.
    "response.output_item.added": EventKind.CONTENT,
}

#: The events that carry the response object: its id and model when it starts, its usage at the end.
_USAGE_SLOTS = {
    "response.created": "created",
    "response.completed": "final",
    "response.incomplete": "final",
    "response.failed": "final",
}


#: The `type` of an unnamed event that carries the response object, found without parsing (a quoted
#: string with these exact characters can only be a key or a value: JSON escapes a quote in a text).
_RESPONSE_TYPE = re.compile(r'"type"\s*:\s*"(response\.(?:created|completed|incomplete|failed))"')
#: An unnamed `error` event (over Codex's WebSocket, an error ends the response it answers).
_ERROR_TYPE = re.compile(r'^\s*\{\s*"type"\s*:\s*"error"')


def response_event_name(event: SSEEvent) -> str:
    """The name of an event that carries the response object, else "". An unnamed one (WebSocket
    messages, some servers) carries its name as `type`, anywhere in the object (OpenAI sends it
    first, SDK-built objects last)."""
    if event.event != "message":
        return event.event
    data = event.data
    if '"response.' not in data:
        return ""
    found = _RESPONSE_TYPE.search(data)
    return found[1] if found else ""


def response_tokens(document: Mapping[str, object] | None) -> Tokens | None:
    """The tokens of an event or message carrying a `response` object (None without one)."""
    response = member(document, "response")
    if not isinstance(response, dict):
        return None
    return (responses_usage(response.get("usage")) or Tokens()).with_ids(response, "id", "model")


def final_message(text: str) -> tuple[str, Tokens | None] | None:
    """A Responses WebSocket message that ends a response (`response.completed`, `.incomplete`,
    `.failed`, or an `error`): its event name and tokens; None for every other message (those are
    not parsed)."""
    name = response_event_name(SSEEvent("message", text))
    if _USAGE_SLOTS.get(name) == "final":
        return name, response_tokens(json_object(text))
    if _ERROR_TYPE.match(text):
        return "error", None
    return None


@dataclass(frozen=True)
class OpenAIResponses(Dialect):
    def classify_event(self, event: SSEEvent) -> EventKind:
        name = event.event
        if name == "message":  # unnamed: the payload's `type` is the event's name
            document = json_object(event.data)
            kind = document.get("type") if document else None
            name = kind if isinstance(kind, str) else ""
        return _EVENTS.get(name, EventKind.OTHER)

    def usage_slot(self, event: SSEEvent) -> str | None:
        return _USAGE_SLOTS.get(response_event_name(event))

    def stream_tokens(self, kept: Mapping[str, str]) -> Tokens | None:
        return response_tokens(parsed(kept, "final") or parsed(kept, "created"))

    def body_tokens(self, body: bytes) -> Tokens | None:
        document = body_document(body)
        return response_tokens({"response": document}) if document is not None else None

    def error_document(self, status: int, message: str) -> dict[str, object]:
        return openai_error(status, message)

    def larger_context_helps(self, status: int, body: bytes) -> bool:
        return openai_context_exceeded(status, body)


OPENAI_RESPONSES = OpenAIResponses("openai-responses", "openai", ("/v1/responses", "/v1/responses/*"))
