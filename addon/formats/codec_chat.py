"""OpenAI Chat Completions to and from the intermediate form: requests out, answers and chunks in.

Requests: the system text leads as one `system` message; tool results become `tool` messages right
after the assistant turn that called them (their images follow in a user message, which is where Chat
takes images); tool calls carry their input as a JSON string; tool names longer than Chat's 64
characters are shortened reversibly; reasoning models get `max_completion_tokens` and, when thinking
was asked for, `reasoning_effort`; streams ask for a final usage chunk.
Answers: `finish_reason` maps to a stop reason, cached prompt tokens are taken out of the input count.
"""

from __future__ import annotations

import hashlib
import json
import re

from addon.formats.documents import json_object
from addon.formats.ir import (
    Began,
    Conversation,
    Finished,
    Message,
    Part,
    Stop,
    StreamEvent,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    Usage,
)
from addon.formats.sse import SSEEvent

MAX_TOOL_NAME = 64
#: Models that take `max_completion_tokens` and `reasoning_effort` (OpenAI's reasoning families).
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)
#: JSON-schema keywords Chat providers commonly reject in tool parameters.
_DROPPED_KEYWORDS = frozenset({"format", "$schema", "examples"})
_FINISH = {
    "stop": Stop.END,
    "length": Stop.MAX_TOKENS,
    "tool_calls": Stop.TOOL_USE,
    "function_call": Stop.TOOL_USE,
    "content_filter": Stop.REFUSAL,
}


def tool_name(name: str) -> str:
    """A tool name Chat accepts: names over 64 characters keep a prefix and a hash of the whole."""
    if len(name) <= MAX_TOOL_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_TOOL_NAME - 9]}_{digest}"


def encode_request(conversation: Conversation) -> tuple[dict[str, object], dict[str, str]]:
    """The Chat request, and the shortened tool names → the client's names."""
    renamed = {tool_name(t.name): t.name for t in conversation.tools if tool_name(t.name) != t.name}
    messages: list[dict[str, object]] = []
    if conversation.system:
        messages.append({"role": "system", "content": conversation.system})
    for turn in conversation.turns:
        messages += _assistant(turn.parts) if turn.role == "assistant" else _user(turn.parts)
    document: dict[str, object] = {"model": conversation.model, "messages": messages}
    reasoning_model = bool(_REASONING_MODEL.match(conversation.model))
    if conversation.max_tokens is not None:
        document["max_completion_tokens" if reasoning_model else "max_tokens"] = conversation.max_tokens
    if conversation.reasoning and reasoning_model:
        document["reasoning_effort"] = conversation.reasoning
    for key, value in (("temperature", conversation.temperature), ("top_p", conversation.top_p)):
        if value is not None:
            document[key] = value
    if conversation.stop:
        document["stop"] = conversation.stop
    if conversation.tools:
        document["tools"] = [
            {"type": "function", "function": {"name": tool_name(t.name), "description": t.description,
                                              "parameters": _schema(t.schema)}}
            for t in conversation.tools
        ]  # fmt: skip
    choice = conversation.tool_choice
    if choice in ("auto", "required", "none"):
        document["tool_choice"] = choice
    elif choice:
        document["tool_choice"] = {"type": "function", "function": {"name": tool_name(choice)}}
    if conversation.stream:
        document["stream"] = True
        document["stream_options"] = {"include_usage": True}
    return document, renamed


def _user(parts: list[Part]) -> list[dict[str, object]]:
    """Tool results first (they must follow the assistant's calls), then the user's own content,
    with any images the tools returned."""
    out: list[dict[str, object]] = []
    content: list[dict[str, object]] = []
    for part in parts:
        if part.kind == "tool_result":
            text = "\n".join(p.text for p in part.content if p.kind == "text")
            out.append({"role": "tool", "tool_call_id": part.id, "content": text})
            content += [_image(p) for p in part.content if p.kind == "image"]
        elif part.kind == "text":
            content.append({"type": "text", "text": part.text})
        elif part.kind == "image":
            content.append(_image(part))
    if content:
        only_text = all(c["type"] == "text" for c in content)
        joined = "\n\n".join(str(c["text"]) for c in content) if only_text else None
        out.append({"role": "user", "content": joined if joined is not None else content})
    return out


def _image(part: Part) -> dict[str, object]:
    return {"type": "image_url", "image_url": {"url": part.url}}


def _assistant(parts: list[Part]) -> list[dict[str, object]]:
    text = "".join(p.text for p in parts if p.kind == "text")
    calls = [
        {"id": p.id, "type": "function",
         "function": {"name": tool_name(p.name), "arguments": json.dumps(p.arguments, ensure_ascii=False)}}
        for p in parts if p.kind == "tool_call"
    ]  # fmt: skip
    message: dict[str, object] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
        # DeepSeek's thinking mode wants a tool-calling turn's reasoning back; others ignore it.
        thinking = "".join(p.text for p in parts if p.kind == "thinking")
        if thinking:
            message["reasoning_content"] = thinking
    return [message]


def _schema(schema: dict[str, object]) -> dict[str, object]:
    """The tool's parameters as Chat providers take them: an object at the root, without the
    keywords they commonly reject."""
    cleaned = _clean(schema)
    root = cleaned if isinstance(cleaned, dict) else {}
    root.setdefault("type", "object")
    if root.get("type") == "object":
        root.setdefault("properties", {})
    return root


def _clean(value: object) -> object:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k not in _DROPPED_KEYWORDS}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# --- answers in ----------------------------------------------------------------------------------


def usage_of(document: dict[str, object]) -> Usage | None:
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    cached = cached if isinstance(cached, int) else 0
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return Usage(
        input=max(0, (prompt if isinstance(prompt, int) else 0) - cached),
        output=completion if isinstance(completion, int) else 0,
        cache_read=cached,
    )


class InlineThinking:
    """Splits `<think>…</think>` at the start of the content off as thinking, across chunks."""

    OPEN, CLOSE = "<think>", "</think>"

    def __init__(self) -> None:
        self.state = "start"  # "start" (undecided) | "thinking" | "text"
        self.pending = ""

    def split(self, piece: str) -> list[StreamEvent]:
        if self.state == "text":
            return [TextDelta(piece)]
        self.pending += piece
        if self.state == "start":
            head = self.pending.lstrip()
            if self.OPEN.startswith(head) and len(head) < len(self.OPEN):
                return []  # could still become "<think>"
            if not head.startswith(self.OPEN):
                self.state, text, self.pending = "text", self.pending, ""
                return [TextDelta(text)]
            self.state, self.pending = "thinking", head[len(self.OPEN) :]
        end = self.pending.find(self.CLOSE)
        if end < 0:
            cut = len(self.pending) - _partial_suffix(self.pending, self.CLOSE)
            thought, self.pending = self.pending[:cut], self.pending[cut:]
            return [ThinkingDelta(thought)] if thought else []
        thought, rest = self.pending[:end], self.pending[end + len(self.CLOSE) :].lstrip("\n")
        self.state, self.pending = "text", ""
        out: list[StreamEvent] = [ThinkingDelta(thought)] if thought else []
        return out + ([TextDelta(rest)] if rest else [])


    def flush(self) -> list[StreamEvent]:
        """The content ended: what is still held goes out as what it was."""
        pending, self.pending = self.pending, ""
        if not pending:
            return []
        return [ThinkingDelta(pending) if self.state == "thinking" else TextDelta(pending)]


def _partial_suffix(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def decode_message(document: dict[str, object]) -> Message:
    choices = document.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    parts: list[Part] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(Part("thinking", text=reasoning))
    if isinstance(message.get("content"), str) and message["content"]:
        inline = InlineThinking()
        for event in [*inline.split(str(message["content"])), *inline.flush()]:
            if isinstance(event, ThinkingDelta | TextDelta):
                kind = "thinking" if isinstance(event, ThinkingDelta) else "text"
                parts.append(Part(kind, text=event.text))
    for call in message.get("tool_calls") or []:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            function = call["function"]
            arguments = json_object(str(function.get("arguments") or "{}")) or {}
            parts.append(Part("tool_call", id=str(call.get("id") or ""), name=str(function.get("name") or ""),
                              arguments=arguments))  # fmt: skip
    return Message(
        id=str(document.get("id") or ""),
        model=str(document.get("model") or ""),
        parts=parts,
        stop=_FINISH.get(str(choice.get("finish_reason"))),
        usage=usage_of(document) or Usage(),
    )


class StreamReader:
    """Chat chunks → the intermediate form's events. `[DONE]` and the end of the body say nothing
    here: whoever drives this knows whether the stream was complete.

    Reasoning arrives as `reasoning_content` (DeepSeek, vLLM), `reasoning` (OpenRouter), or inline in
    the content as `<think>…</think>` at its start (Qwen, DeepSeek-R1 on llama.cpp, Ollama): all three
    become thinking."""

    def __init__(self) -> None:
        self.began = False
        self.inline = InlineThinking()

    def read(self, event: SSEEvent) -> list[StreamEvent]:
        document = json_object(event.data)
        if document is None or "error" in document:
            return []
        out: list[StreamEvent] = []
        if not self.began:
            self.began = True
            out.append(Began("msg_" + str(document.get("id") or "detour"), str(document.get("model") or "")))
        choices = document.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(ThinkingDelta(reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                out += self.inline.split(str(delta["content"]))
            for call in delta.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                function = call.get("function")
                function = function if isinstance(function, dict) else {}
                index = call.get("index")
                piece = ToolCallDelta(index if isinstance(index, int) else 0, str(call.get("id") or ""))
                piece.name = str(function.get("name") or "")
                piece.arguments = str(function.get("arguments") or "")
                out.append(piece)
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                out.append(Finished(stop=_FINISH.get(finish, Stop.END)))
        usage = usage_of(document)
        if usage is not None:
            out.append(Finished(usage=usage))
        return out

    def flush(self) -> list[StreamEvent]:
        return self.inline.flush()
