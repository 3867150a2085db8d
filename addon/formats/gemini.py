"""Gemini (`/v1beta/models/{model}:generateContent` / `:streamGenerateContent?alt=sse`): unnamed
`data:` chunks with no end marker; the last one carries a candidate's `finishReason`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from addon.formats.base import Dialect, EventKind, error_text
from addon.formats.documents import json_object
from addon.formats.sse import SSEEvent
from addon.formats.usage import Tokens, gemini_usage, parsed

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


#: The model a request names in its path: `/v1beta/models/{model}:generateContent`.
_MODEL_IN_PATH = re.compile(r"/models/([^/:]+)")


def _tokens(document: Mapping[str, object], final: bool) -> Tokens | None:
    tokens = gemini_usage(document.get("usageMetadata"), final)
    return tokens.with_ids(document, "responseId", "modelVersion") if tokens is not None else None


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

    def usage_slot(self, event: SSEEvent) -> str | None:
        # Every chunk may carry `usageMetadata`; the one with the finish reason has the final counts.
        data = event.data
        if '"usageMetadata"' not in data:
            return None
        return "final" if '"finishReason"' in data else "last"

    def stream_tokens(self, kept: Mapping[str, str]) -> Tokens | None:
        final = parsed(kept, "final")
        document = final or parsed(kept, "last")
        if document is None:
            return None
        return _tokens(document, final=final is not None)

    def body_tokens(self, body: bytes) -> Tokens | None:
        # One answer, or (`streamGenerateContent` without `alt=sse`) a JSON array of its chunks.
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if isinstance(document, list):
            chunks = [c for c in document if isinstance(c, dict) and "usageMetadata" in c]
            document = chunks[-1] if chunks else None
        return _tokens(document, final=True) if isinstance(document, dict) else None

    def requested_model(self, path: str, body: bytes) -> str:
        match = _MODEL_IN_PATH.search(path.partition("?")[0])
        return unquote(match[1]) if match else ""

    def larger_context_helps(self, status: int, body: bytes) -> bool:
        return status == 400 and bool(_CONTEXT_EXCEEDED.search(error_text(body)))

    def error_document(self, status: int, message: str) -> dict[str, object]:
        return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "INTERNAL")}}


GEMINI = Gemini("gemini", "gemini", ("/v1beta/models/*", "/v1/models/*"))
