"""OpenAI Chat Completions (`/v1/chat/completions`): unnamed `data:` chunks, then `data: [DONE]`.

Some servers omit `[DONE]`; a stream whose chunks carried a `finish_reason` and then ended cleanly is
complete all the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from addon.formats.base import Dialect, EventKind, error_text
from addon.formats.continuation import Splicer, Transcript, documents, dumps, with_assistant_turn
from addon.formats.documents import json_object
from addon.formats.sse import SSEEvent
from addon.formats.usage import Tokens, body_document, chat_usage, parsed

#: A `finish_reason` with a non-empty string value: the chunk that ends a choice.
_FINISHED = re.compile(r'"finish_reason"\s*:\s*"[^"]')
#: OpenRouter reports a failure mid-stream with `"finish_reason": "error"` (and an `error` member).
_FINISHED_IN_ERROR = re.compile(r'"finish_reason"\s*:\s*"error"')
#: OpenAI's `context_length_exceeded`, and the "maximum context length is N tokens" message of
#: OpenAI-compatible servers (vLLM, llama.cpp, DeepSeek...).
OPENAI_CONTEXT_EXCEEDED = re.compile(
    r"context_length_exceeded|maximum context length|context window", re.IGNORECASE
)
#: Delta fields that are generated content (an empty string is not).
_CONTENT_FIELDS = ("content", "tool_calls", "function_call", "reasoning_content", "reasoning", "refusal")
#: Delta fields a text prefill can't continue.
_NOT_TEXT = ("tool_calls", "function_call", "reasoning_content", "reasoning")
#: Hosts whose Chat API continues a final assistant message only when it is flagged so.
PREFILL_FLAGS: dict[str, dict[str, object]] = {
    "api.deepseek.com": {"prefix": True},
    "api.mistral.ai": {"prefix": True},
    "api.moonshot.ai": {"partial": True},
    "api.moonshot.cn": {"partial": True},
}


def openai_error(status: int, message: str) -> dict[str, object]:
    """The error shape of every OpenAI API (Chat Completions and Responses alike)."""
    kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request"
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def openai_context_exceeded(status: int, body: bytes) -> bool:
    return status in (400, 413, 422) and bool(OPENAI_CONTEXT_EXCEEDED.search(error_text(body)))


def _choices(document: dict[str, object]) -> list[dict[str, object]]:
    choices = document.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _delta(choice: dict[str, object]) -> dict[str, object]:
    delta = choice.get("delta")
    return delta if isinstance(delta, dict) else {}


@dataclass(frozen=True)
class OpenAIChat(Dialect):
    def classify_event(self, event: SSEEvent) -> EventKind:
        data = event.data
        if data == "[DONE]":
            return EventKind.TERMINAL
        # Cheap substring tests first: this runs for every chunk of every stream.
        if '"error"' in data:  # anywhere: OpenRouter puts it after the chunk's id
            document = json_object(data)
            if document is not None and document.get("error"):
                return EventKind.ERROR
        if '"finish_reason"' in data and _FINISHED.search(data):
            return EventKind.ERROR if _FINISHED_IN_ERROR.search(data) else EventKind.FINISHED
        if '"content"' in data or '"tool_calls"' in data or '"reasoning' in data:
            return EventKind.CONTENT
        return EventKind.OTHER

    def has_content(self, event: SSEEvent) -> bool:
        # Streams open with `{"role": "assistant", "content": ""}`, often long before any token.
        document = json_object(event.data)
        if document is None:
            return True
        return any(_delta(c).get(f) for c in _choices(document) for f in _CONTENT_FIELDS)

    def usage_slot(self, event: SSEEvent) -> str | None:
        # The usage chunk comes last, and only when the request asked for it (`stream_options.
        # include_usage`: Detour asks when it translates; a native client's stream has it or not).
        # Other chunks name the completion's id and model.
        data = event.data
        if '"prompt_tokens"' in data:
            return "usage"
        return "chunk" if data != "[DONE]" else None

    def stream_tokens(self, kept: Mapping[str, str]) -> Tokens | None:
        document = parsed(kept, "usage") or parsed(kept, "chunk")
        if document is None:
            return None
        tokens = chat_usage(document.get("usage")) or Tokens()
        choices = _choices(document)
        if choices and not any(c.get("finish_reason") for c in choices):
            # Usage on every chunk (vLLM's continuous_usage_stats), and the stream was cut before
            # the last one: the input is known, the output was still growing.
            tokens = Tokens(tokens.input, tokens.cache_read, tokens.cache_write)
        return tokens.with_ids(document, "id", "model")

    def body_tokens(self, body: bytes) -> Tokens | None:
        document = body_document(body)
        tokens = chat_usage(document.get("usage")) if document is not None else None
        return tokens.with_ids(document, "id", "model") if tokens is not None and document else tokens

    def error_document(self, status: int, message: str) -> dict[str, object]:
        return openai_error(status, message)

    def larger_context_helps(self, status: int, body: bytes) -> bool:
        return openai_context_exceeded(status, body)

    def transcript(self, sent: bytes) -> Transcript | None:
        chunk_id, text = "", []
        for event, document in documents(sent):
            if event.data == "[DONE]" or (document is not None and "error" in document):
                return None
            for choice in _choices(document or {}):
                delta = _delta(choice)
                if choice.get("index", 0) != 0 or choice.get("finish_reason"):
                    return None  # several choices, or the answer is complete
                if any(delta.get(f) for f in _NOT_TEXT):
                    return None
                if isinstance(delta.get("content"), str):
                    text.append(str(delta["content"]))
            found = document.get("id") if document is not None else None
            chunk_id = chunk_id or (found if isinstance(found, str) else "")
        whole = "".join(text)
        if not chunk_id or not whole.strip():
            return None
        return Transcript(whole, chunk_id, 0, True)

    def continued_body(self, body: bytes, transcript: Transcript, base_url: str) -> bytes | None:
        flag = PREFILL_FLAGS.get((urlsplit(base_url).hostname or "").lower(), {})
        turn: dict[str, object] = {"role": "assistant", "content": transcript.text, **flag}
        return with_assistant_turn(body, turn)

    def splicer(self, transcript: Transcript) -> Splicer:
        return _ChatSplicer(transcript, "")


class _ChatSplicer(Splicer):
    """The continuing provider's chunks carry the client's completion id, and no second `role`
    (SDK accumulators join repeated strings)."""

    def rewrite(self, event: SSEEvent) -> list[SSEEvent]:
        document = json_object(event.data)
        if document is None:
            return [event]
        if "id" in document:
            document["id"] = self.transcript.message_id
        for choice in _choices(document):
            delta = _delta(choice)
            delta.pop("role", None)
            if isinstance(delta.get("content"), str):
                delta["content"] = self.text(str(delta["content"]))
        return [SSEEvent(event.event, dumps(document))]

    def text_of(self, event: SSEEvent) -> str:
        document = json_object(event.data)
        choices = _choices(document) if document is not None else []
        return "".join(str(_delta(c).get("content") or "") for c in choices)

    def ends_text(self, event: SSEEvent) -> bool:
        if event.data == "[DONE]":
            return True
        document = json_object(event.data)
        return document is not None and any(c.get("finish_reason") for c in _choices(document))


OPENAI_CHAT = OpenAIChat(
    "openai-chat", "openai", ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
)
