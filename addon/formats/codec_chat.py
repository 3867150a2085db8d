"""OpenAI Chat Completions to and from the intermediate form: requests out, answers and chunks in.

Requests: the system text leads as one `system` message; tool results become `tool` messages right
after the assistant turn that called them (their images follow in a user message, which is where Chat
takes images); tool calls carry their input as a JSON string (names are shortened to 64 characters
before any encoder sees them: `translation.tool_name`); reasoning models get `max_completion_tokens`
and, when thinking was asked for, `reasoning_effort`; streams ask for a final usage chunk.
Answers: `finish_reason` maps to a stop reason, cached prompt tokens are taken out of the input count.
"""

from __future__ import annotations

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
    Tool,
    ToolCallDelta,
    Turn,
    Usage,
    append_turn,
    number,
    objects,
)
from addon.formats.sse import SSEEvent
from addon.formats.usage import chat_usage, ir_usage

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


def encode_request(conversation: Conversation) -> dict[str, object]:
    """The Chat request (tool names are already within the 64 characters every API allows: see
    `translation.tool_name`)."""
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
            {"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": _schema(t.schema)}}
            for t in conversation.tools
        ]  # fmt: skip
    choice = conversation.tool_choice
    if choice in ("auto", "required", "none"):
        document["tool_choice"] = choice
    elif choice:
        document["tool_choice"] = {"type": "function", "function": {"name": choice}}
    if conversation.stream:
        document["stream"] = True
        document["stream_options"] = {"include_usage": True}
    return document


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
        elif part.kind == "document":  # OpenAI's `file` part, a data URL
            content.append({"type": "file", "file": {"filename": part.name_hint, "file_data": part.url}})
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
         "function": {"name": p.name, "arguments": json.dumps(p.arguments, ensure_ascii=False)}}
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
    return ir_usage(chat_usage(document.get("usage")))


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
    parts += _calls(message)
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
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
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
            if isinstance(finish, str) and finish in _FINISH:  # "error" and the unknown: the watch decides
                out.append(Finished(stop=_FINISH[finish]))
        usage = usage_of(document)
        if usage is not None:
            out.append(Finished(usage=usage))
        return out

    def flush(self) -> list[StreamEvent]:
        return self.inline.flush()


# --- the other way: Chat requests in, Chat answers out ---------------------------------------------


def decode_request(document: dict[str, object]) -> Conversation:
    """A Chat Completions request; ValueError when it isn't one (or asks for several choices)."""
    messages = document.get("messages")
    if not isinstance(messages, list):
        raise ValueError("no messages")
    if document.get("n") not in (None, 1):
        raise ValueError("several choices (n > 1) have no equivalent")
    system: list[str] = []
    turns: list[Turn] = []
    for message in (m for m in messages if isinstance(m, dict)):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(message.get("content")))
        elif role == "tool":
            result = Part("tool_result", id=str(message.get("tool_call_id") or ""),
                          content=[Part("text", text=_text_of(message.get("content")))])  # fmt: skip
            append_turn(turns, "user", [result])
        elif role == "assistant":
            append_turn(turns, "assistant", _assistant_parts(message))
        else:
            append_turn(turns, "user", _user_parts(message.get("content")))
    offered = document.get("tools")
    listed = offered if isinstance(offered, list) else []
    tools = [_tool_in(t) for t in listed if isinstance(t, dict) and t.get("type") == "function"]
    limit = document.get("max_completion_tokens") or document.get("max_tokens")
    stop = document.get("stop")
    effort = document.get("reasoning_effort")
    return Conversation(
        model=str(document.get("model") or ""),
        system="\n\n".join(s for s in system if s),
        turns=turns,
        tools=tools,
        tool_choice=_choice_in(document.get("tool_choice")),
        max_tokens=limit if isinstance(limit, int) else None,
        temperature=number(document.get("temperature")),
        top_p=number(document.get("top_p")),
        stop=[stop]
        if isinstance(stop, str)
        else [s for s in stop if isinstance(s, str)]
        if isinstance(stop, list)
        else [],
        stream=document.get("stream") is True,
        reasoning=effort if effort in ("low", "medium", "high") else None,
    )


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _user_parts(content: object) -> list[Part]:
    if isinstance(content, str):
        return [Part("text", text=content)]
    parts: list[Part] = []
    for piece in content if isinstance(content, list) else []:
        if not isinstance(piece, dict):
            continue
        if piece.get("type") == "text":
            parts.append(Part("text", text=str(piece.get("text") or "")))
        elif piece.get("type") == "image_url":
            image = piece.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                parts.append(Part("image", url=url))
        elif piece.get("type") == "file" and isinstance(piece.get("file"), dict):
            file = piece["file"]
            data = file.get("file_data")
            if isinstance(data, str) and data.startswith("data:"):
                name = str(file.get("filename") or "document.pdf")
                parts.append(Part("document", url=data, name_hint=name))
    return parts


def _assistant_parts(message: dict[str, object]) -> list[Part]:
    text = _text_of(message.get("content"))
    return [*([Part("text", text=text)] if text else []), *_calls(message)]


def _calls(message: dict[str, object]) -> list[Part]:
    """A Chat message's `tool_calls` as tool-call parts (their arguments parsed)."""
    parts = []
    for call in objects(message.get("tool_calls")):
        function = call.get("function")
        if isinstance(function, dict):
            arguments = json_object(str(function.get("arguments") or "{}")) or {}
            parts.append(Part("tool_call", id=str(call.get("id") or ""), name=str(function.get("name") or ""),
                              arguments=arguments))  # fmt: skip
    return parts


def _tool_in(tool: dict[str, object]) -> Tool:
    function = tool.get("function")
    function = function if isinstance(function, dict) else {}
    schema = function.get("parameters")
    return Tool(str(function.get("name") or ""), str(function.get("description") or ""),
                schema if isinstance(schema, dict) else {"type": "object", "properties": {}})  # fmt: skip


def _choice_in(value: object) -> str | None:
    if isinstance(value, str):
        return value if value in ("auto", "required", "none") else None
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        return str(value["function"].get("name") or "") or None
    return None


_FINISH_OUT = {
    Stop.END: "stop",
    Stop.STOP_SEQUENCE: "stop",
    Stop.MAX_TOKENS: "length",
    Stop.TOOL_USE: "tool_calls",
    Stop.REFUSAL: "content_filter",
}


def _usage_out(usage: Usage) -> dict[str, object]:
    prompt = usage.input + usage.cache_read
    return {"prompt_tokens": prompt, "completion_tokens": usage.output, "total_tokens": prompt + usage.output,
            "prompt_tokens_details": {"cached_tokens": usage.cache_read}}  # fmt: skip


def encode_message(message: Message, created: int) -> dict[str, object]:
    text = "".join(p.text for p in message.parts if p.kind == "text")
    reasoning = "".join(p.text for p in message.parts if p.kind == "thinking")
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": json.dumps(p.arguments)}}
        for p in message.parts
        if p.kind == "tool_call"
    ]
    body: dict[str, object] = {"role": "assistant", "content": text or None}
    if reasoning:
        body["reasoning_content"] = reasoning
    if calls:
        body["tool_calls"] = calls
    stop = message.stop or (Stop.TOOL_USE if calls else Stop.END)
    return {
        "id": message.id, "object": "chat.completion", "created": created, "model": message.model,
        "choices": [{"index": 0, "message": body, "finish_reason": _FINISH_OUT[stop], "logprobs": None}],
        "usage": _usage_out(message.usage),
    }  # fmt: skip


class StreamWriter:
    """The intermediate form's events as Chat chunks: a role chunk first, content and tool-call
    deltas as they come, one chunk with the `finish_reason`, a usage chunk, then `[DONE]`."""

    def __init__(self, created: int) -> None:
        self.created = created
        #: The client asked for a final usage chunk (`stream_options.include_usage`).
        self.include_usage = False
        self.id = "chatcmpl-detour"
        self.model = ""
        self.started = False
        self.calls: dict[int, int] = {}  # the provider's call index → the client's
        self.stop: Stop | None = None
        self.usage = Usage()
        self.ended = False

    def _envelope(self) -> dict[str, object]:
        chunk = "chat.completion.chunk"
        return {"id": self.id, "object": chunk, "created": self.created, "model": self.model}

    def _chunk(self, delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        document = {**self._envelope(), "choices": [choice]}
        return f"data: {json.dumps(document)}\n\n".encode()

    def feed(self, events: list[StreamEvent]) -> bytes:
        out = b""
        for event in events:
            if isinstance(event, Began):
                self.id = "chatcmpl-" + event.id.removeprefix("msg_")
                self.model = event.model
            if not self.started:
                self.started = True
                out += self._chunk({"role": "assistant", "content": ""})
            if isinstance(event, TextDelta) and event.text:
                out += self._chunk({"content": event.text})
            elif isinstance(event, ThinkingDelta) and event.text:
                out += self._chunk({"reasoning_content": event.text})
            elif isinstance(event, ToolCallDelta):
                index = self.calls.setdefault(event.index, len(self.calls))
                call: dict[str, object] = {"index": index, "function": {"arguments": event.arguments}}
                if event.id or event.name:
                    call.update(
                        id=event.id,
                        type="function",
                        function={"name": event.name, "arguments": event.arguments},
                    )
                out += self._chunk({"tool_calls": [call]})
            elif isinstance(event, Finished):
                self.stop = event.stop or self.stop
                self.usage = event.usage or self.usage
        return out

    def finish(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out = b"" if self.started else self._chunk({"role": "assistant", "content": ""})
        stop = self.stop or (Stop.TOOL_USE if self.calls else Stop.END)
        out += self._chunk({}, _FINISH_OUT[stop])
        if self.include_usage:
            usage = {**self._envelope(), "choices": [], "usage": _usage_out(self.usage)}
            out += f"data: {json.dumps(usage)}\n\n".encode()
        return out + b"data: [DONE]\n\n"
