"""OpenAI Chat Completions (`/v1/chat/completions`): unnamed `data:` chunks, then `data: [DONE]`.

Some servers omit `[DONE]`; a stream whose chunks carried a `finish_reason` and then ended cleanly is
complete all the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from addon.formats.base import Dialect, EventKind, json_object
from addon.formats.sse import SSEEvent

#: A `finish_reason` with a string value (not null): the chunk that ends a choice.
_FINISHED = re.compile(r'"finish_reason"\s*:\s*"')


def openai_error(status: int, message: str) -> dict[str, object]:
    """The error shape of every OpenAI API (Chat Completions and Responses alike)."""
    kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request"
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


@dataclass(frozen=True)
class OpenAIChat(Dialect):
    def classify_event(self, event: SSEEvent) -> EventKind:
        data = event.data
        if data == "[DONE]":
            return EventKind.TERMINAL
        # Cheap substring tests first: this runs for every chunk of every stream.
        if '"error"' in data[:20]:
            document = json_object(data)
            if document is not None and "error" in document:
                return EventKind.ERROR
        if '"finish_reason"' in data and _FINISHED.search(data):
            return EventKind.FINISHED
        if '"content"' in data or '"tool_calls"' in data or '"reasoning' in data:
            return EventKind.CONTENT
        return EventKind.OTHER

    def error_document(self, status: int, message: str) -> dict[str, object]:
        return openai_error(status, message)


OPENAI_CHAT = OpenAIChat(
    "openai-chat", "openai", ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
)
