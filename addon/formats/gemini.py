"""Gemini (`/v1beta/models/{model}:generateContent` / `:streamGenerateContent?alt=sse`): unnamed
`data:` chunks with no end marker; the last one carries a candidate's `finishReason`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from addon.formats.base import Dialect, EventKind, error_text
from addon.formats.documents import json_object
from addon.formats.sse import SSEEvent

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


#: "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
_CONTEXT_EXCEEDED = re.compile(
    r"input token count.*exceeds the maximum|exceeds the maximum number of tokens", re.IGNORECASE
)


#: Finish reasons that mean the model failed, not that it finished: the answer is no answer.
FAILED_FINISH = frozenset({"MALFORMED_FUNCTION_CALL", "OTHER", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})


def finish_reason(document: dict[str, object]) -> str | None:
    """The first candidate's `finishReason` (the key alone says nothing: an argument may be named so)."""
    candidates = document.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    reason = first.get("finishReason") if isinstance(first, dict) else None
    return reason if isinstance(reason, str) and reason else None


@dataclass(frozen=True)
class Gemini(Dialect):
    def is_stream_request(self, path: str, body: bytes) -> bool:
        bare, _, query = path.partition("?")
        return bare.endswith(":streamGenerateContent") or "alt=sse" in query

    def classify_event(self, event: SSEEvent) -> EventKind:
        data = event.data
        if '"error"' in data[:20]:
            document = json_object(data)
            if document is not None and "error" in document:
                return EventKind.ERROR
        if '"finishReason"' in data:
            document = json_object(data)
            reason = finish_reason(document) if document is not None else None
            if reason in FAILED_FINISH:
                return EventKind.ERROR
            if reason is not None:
                return EventKind.FINISHED
        if '"text"' in data or '"functionCall"' in data:
            return EventKind.CONTENT
        return EventKind.OTHER

    def larger_context_helps(self, status: int, body: bytes) -> bool:
        return status == 400 and bool(_CONTEXT_EXCEEDED.search(error_text(body)))

    def error_document(self, status: int, message: str) -> dict[str, object]:
        return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "INTERNAL")}}


GEMINI = Gemini("gemini", "gemini", ("/v1beta/models/*", "/v1/models/*"))
