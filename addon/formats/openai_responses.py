"""OpenAI Responses (`/v1/responses`): named events ending with `response.completed` (or
`response.incomplete`, a complete answer cut by a limit) and no `[DONE]`; `response.failed` and
`error` report a failure inside the stream."""

from __future__ import annotations

from dataclasses import dataclass

from addon.formats.base import Dialect, EventKind
from addon.formats.documents import json_object
from addon.formats.openai_chat import openai_context_exceeded, openai_error
from addon.formats.sse import SSEEvent

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


@dataclass(frozen=True)
class OpenAIResponses(Dialect):
    def classify_event(self, event: SSEEvent) -> EventKind:
        name = event.event
        if name == "message":  # unnamed: the payload's `type` is the event's name
            document = json_object(event.data)
            kind = document.get("type") if document else None
            name = kind if isinstance(kind, str) else ""
        return _EVENTS.get(name, EventKind.OTHER)

    def error_document(self, status: int, message: str) -> dict[str, object]:
        return openai_error(status, message)

    def larger_context_helps(self, status: int, body: bytes) -> bool:
        return openai_context_exceeded(status, body)


OPENAI_RESPONSES = OpenAIResponses("openai-responses", "openai", ("/v1/responses", "/v1/responses/*"))
