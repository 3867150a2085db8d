"""Anthropic Messages (`/v1/messages`): named events, ending with `message_stop`."""

from __future__ import annotations

from dataclasses import dataclass

from addon.formats.base import Dialect, EventKind, json_object
from addon.formats.sse import SSEEvent

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


@dataclass(frozen=True)
class Anthropic(Dialect):
    def classify_event(self, event: SSEEvent) -> EventKind:
        if event.event != "message":
            return _EVENTS.get(event.event, EventKind.OTHER)
        # Unnamed events: the payload's own `type` says the same.
        document = json_object(event.data)
        kind = document.get("type") if document else None
        return _EVENTS.get(kind, EventKind.OTHER) if isinstance(kind, str) else EventKind.OTHER

    def error_document(self, status: int, message: str) -> dict[str, object]:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}


ANTHROPIC = Anthropic("anthropic", "anthropic", ("/v1/messages*", "/v1/complete"))
