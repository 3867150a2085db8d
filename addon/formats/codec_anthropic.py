"""Anthropic Messages to and from the intermediate form: its requests in, its answers and events out.

Requests: the system prompt (a string or text blocks) becomes one text, without `cache_control` and
without Claude Code's rotating billing-header line (it changes every request and would defeat another
provider's prefix cache); server tools (web search and the like) have no equivalent and are dropped;
`metadata`, `top_k` and other fields without one are dropped too.
Answers: blocks are numbered densely, each closed before the next opens, tool calls are written whole
(their input is complete before they are sent), and exactly one `message_delta` carries the stop reason
and usage before `message_stop`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from addon.formats.continuation import dumps
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
    number,
    objects,
)
from addon.formats.sse import SSEEvent
from addon.formats.usage import anthropic_usage, ir_usage

#: Claude Code starts its system prompt with a line that changes on every request.
BILLING_LINE = "x-anthropic-billing-header"
_STOPS = {
    Stop.END: "end_turn",
    Stop.MAX_TOKENS: "max_tokens",
    Stop.TOOL_USE: "tool_use",
    Stop.STOP_SEQUENCE: "stop_sequence",
    Stop.REFUSAL: "refusal",
}
#: `thinking.budget_tokens` → a reasoning effort.
_EFFORT = ((4096, "low"), (16384, "medium"))


def decode_request(document: dict[str, object]) -> Conversation:
    """An Anthropic Messages request; ValueError when it isn't one."""
    messages = document.get("messages")
    if not isinstance(messages, list):
        raise ValueError("no messages")
    turns = [_turn(m) for m in messages if isinstance(m, dict)]
    thinking = document.get("thinking")
    reasoning = None
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        budget = budget if isinstance(budget, int) else 0
        reasoning = next((effort for limit, effort in _EFFORT if budget <= limit), "high")
    stop = document.get("stop_sequences")
    return Conversation(
        model=str(document.get("model") or ""),
        system=_system(document.get("system")),
        turns=turns,
        tools=[_tool(t) for t in objects(document.get("tools")) if _is_function_tool(t)],
        tool_choice=_tool_choice(document.get("tool_choice")),
        max_tokens=_int(document.get("max_tokens")),
        temperature=number(document.get("temperature")),
        top_p=number(document.get("top_p")),
        stop=[s for s in stop if isinstance(s, str)] if isinstance(stop, list) else [],
        stream=document.get("stream") is True,
        reasoning=reasoning,
    )


def _system(value: object) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = "\n\n".join(str(b.get("text") or "") for b in objects(value) if b.get("type") == "text")
    lines = text.split("\n")
    return "\n".join(line for line in lines if not line.startswith(BILLING_LINE)).strip("\n")


def _turn(message: dict[str, object]) -> Turn:
    role = "assistant" if message.get("role") == "assistant" else "user"
    content = message.get("content")
    if isinstance(content, str):
        return Turn(role, [Part("text", text=content)])
    return Turn(role, [p for p in map(_part, objects(content)) if p is not None])


def _part(block: dict[str, object]) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return Part("text", text=str(block.get("text") or ""))
    if kind == "image":
        url = _image_url(block.get("source"))
        return Part("image", url=url) if url else None
    if kind == "document":
        return _document(block)
    if kind == "thinking":
        return Part("thinking", text=str(block.get("thinking") or ""))
    if kind == "tool_use":
        arguments = block.get("input")
        arguments = arguments if isinstance(arguments, dict) else {}
        return Part(
            "tool_call", id=str(block.get("id") or ""), name=str(block.get("name") or ""), arguments=arguments
        )
    if kind == "tool_result":
        content = block.get("content")
        parts = [Part("text", text=content)] if isinstance(content, str) else [
            p for p in map(_part, objects(content)) if p is not None and p.kind in ("text", "image")
        ]  # fmt: skip
        return Part("tool_result", id=str(block.get("tool_use_id") or ""), content=parts,
                    is_error=block.get("is_error") is True)  # fmt: skip
    return None  # redacted thinking, server tool blocks: no equivalent


def _document(block: dict[str, object]) -> Part | None:
    """A PDF given inline travels as a `data:` URL; a text document is its text."""
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "text":
        return Part("text", text=str(source.get("data") or ""))
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type') or 'application/pdf'};base64,{source.get('data')}"
        return Part("document", url=url, name_hint=str(block.get("title") or "document.pdf"))
    return None


def _image_url(source: object) -> str:
    if not isinstance(source, dict):
        return ""
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url":
        return str(source.get("url") or "")
    return ""


def _is_function_tool(tool: dict[str, object]) -> bool:
    """A client tool (name, schema); server tools (`web_search_…`, `bash_…` with a `type`) aren't."""
    return "input_schema" in tool and tool.get("type") in (None, "custom")


def _tool(tool: dict[str, object]) -> Tool:
    schema = tool.get("input_schema")
    return Tool(str(tool.get("name") or ""), str(tool.get("description") or ""),
                schema if isinstance(schema, dict) else {})  # fmt: skip


def _tool_choice(value: object) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("type")
    if kind == "tool":
        return str(value.get("name") or "")
    return {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- answers out ---------------------------------------------------------------------------------


def encode_message(message: Message) -> dict[str, object]:
    content: list[dict[str, object]] = []
    for part in message.parts:
        if part.kind == "thinking":
            content.append({"type": "thinking", "thinking": part.text, "signature": ""})
        elif part.kind == "text":
            content.append({"type": "text", "text": part.text})
        elif part.kind == "tool_call":
            content.append({"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments})
    return {
        "id": message.id,
        "type": "message",
        "role": "assistant",
        "model": message.model,
        "content": content,
        "stop_reason": _STOPS.get(message.stop) if message.stop else "end_turn",
        "stop_sequence": None,
        "usage": _usage(message.usage),
    }


def _usage(usage: Usage) -> dict[str, object]:
    return {
        "input_tokens": usage.input,
        "output_tokens": usage.output,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation_input_tokens": 0,
    }


#: While tool calls accumulate, a ping every this many pieces of them.
PING_EVERY = 16
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
#: The event a stream is mostly made of, written without building a document for each.
_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"text_delta","text":%s}}\n\n'
)


def _event(name: str, document: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {dumps(document)}\n\n".encode()


class StreamWriter:
    """The intermediate form's events as an Anthropic event stream.

    Tool calls are written whole at the end of the message (their pieces can arrive interleaved and
    out of order, and Anthropic blocks can't be reopened); text and thinking stream as they come.
    """

    def __init__(self, rename: dict[str, str] | None = None) -> None:
        #: Tool names as the provider knows them → as the client named them.
        self.rename = rename if rename is not None else {}  # shared: filled as the request is written
        self.started = False
        self.index = -1
        self.open: str | None = None  # "text" | "thinking"
        self.text_begun = False
        self.calls: dict[int, ToolCallDelta] = {}
        self.stop: Stop | None = None
        self.usage = Usage()
        self.ended = False
        self.pieces = 0

    def feed(self, events: Iterable[StreamEvent]) -> bytes:
        return b"".join(self._one(e) for e in events)

    def _one(self, event: StreamEvent) -> bytes:
        if isinstance(event, Began):
            return self._begin(event.id, event.model)
        out = b"" if self.started else self._begin("msg_detour", "")
        if isinstance(event, ThinkingDelta) and event.text and not self.text_begun:
            out += self._open("thinking") + _event("content_block_delta", {
                "type": "content_block_delta", "index": self.index,
                "delta": {"type": "thinking_delta", "thinking": event.text}})  # fmt: skip
        elif isinstance(event, TextDelta) and event.text:
            self.text_begun = True
            out += self._open("text") + _TEXT_DELTA % (self.index, json.dumps(event.text).encode())
        elif isinstance(event, ToolCallDelta):
            call = self.calls.setdefault(event.index, ToolCallDelta(event.index))
            call.id = call.id or event.id
            call.name = call.name or event.name
            call.arguments += event.arguments
            self.pieces += 1
            if self.pieces % PING_EVERY == 0:  # the calls are written at the end: show life meanwhile
                out += _PING
        elif isinstance(event, Finished):
            self.stop = event.stop or self.stop
            if event.usage is not None:
                self.usage = event.usage
        return out

    def _begin(self, message_id: str, model: str) -> bytes:
        if self.started:
            return b""
        self.started = True
        message: dict[str, object] = {"id": message_id, "type": "message", "role": "assistant",
                                      "model": model, "content": [],
                   "stop_reason": None, "stop_sequence": None, "usage": _usage(Usage())}  # fmt: skip
        return _event("message_start", {"type": "message_start", "message": message})

    def _open(self, kind: str) -> bytes:
        if self.open == kind:
            return b""
        out = self._close()
        self.index += 1
        self.open = kind
        block = (
            {"type": "thinking", "thinking": "", "signature": ""}
            if kind == "thinking"
            else {"type": "text", "text": ""}
        )
        return out + _event(
            "content_block_start",
            {"type": "content_block_start", "index": self.index, "content_block": block},
        )

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        out = b""
        if self.open == "thinking":
            signature = {"type": "content_block_delta", "index": self.index,
                         "delta": {"type": "signature_delta", "signature": ""}}  # fmt: skip
            out += _event("content_block_delta", signature)
        self.open = None
        return out + _event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def finish(self) -> bytes:
        """The provider's answer is complete: the tool calls, one `message_delta`, `message_stop`."""
        if self.ended:
            return b""
        self.ended = True
        out = (b"" if self.started else self._begin("msg_detour", "")) + self._close()
        written = 0
        for n, call in enumerate(sorted(self.calls.values(), key=lambda c: c.index)):
            try:
                arguments = json.loads(call.arguments) if call.arguments.strip() else {}
            except ValueError:
                continue  # cut short (a token limit): never hand a client a call it would run without input
            if not isinstance(arguments, dict):
                continue
            written += 1
            self.index += 1
            name = self.rename.get(call.name, call.name)
            block = {"type": "tool_use", "id": call.id or f"toolu_detour_{n}", "name": name, "input": {}}
            out += _event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
            delta = {"type": "input_json_delta", "partial_json": dumps(arguments)}
            out += _event(
                "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
            )
            out += _event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        stop = self.stop or (Stop.TOOL_USE if written else Stop.END)
        if stop is Stop.TOOL_USE and not written:
            stop = Stop.MAX_TOKENS
        usage = {"input_tokens": self.usage.input, "output_tokens": self.usage.output,
                 "cache_read_input_tokens": self.usage.cache_read}  # fmt: skip
        ending: dict[str, object] = {"stop_reason": _STOPS[stop], "stop_sequence": None}
        out += _event("message_delta", {"type": "message_delta", "delta": ending, "usage": usage})
        return out + _event("message_stop", {"type": "message_stop"})


# --- the other way: Anthropic requests out, Anthropic answers in -----------------------------------

ANTHROPIC_VERSION = "2023-06-01"
#: Anthropic requires `max_tokens`; a client of another API may leave it out.
DEFAULT_MAX_TOKENS = 8192
_BUDGET = {"low": 2048, "medium": 8192, "high": 16384}
_STOPS_IN = {v: k for k, v in _STOPS.items()} | {"model_context_window_exceeded": Stop.MAX_TOKENS}


def _stop_in(value: object) -> Stop | None:
    """A stop reason read in; one Detour doesn't know (`pause_turn`...) is never taken for a normal end."""
    if not isinstance(value, str) or not value:
        return None
    return _STOPS_IN.get(value, Stop.MAX_TOKENS)


def encode_request(conversation: Conversation) -> dict[str, object]:
    messages = []
    for turn in conversation.turns:
        blocks = [b for b in map(_block, turn.parts) if b is not None]
        if blocks:
            messages.append({"role": turn.role, "content": blocks})
    document: dict[str, object] = {
        "model": conversation.model,
        "max_tokens": conversation.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": messages,
    }
    if conversation.system:
        document["system"] = conversation.system
    if conversation.reasoning:
        budget = _BUDGET[conversation.reasoning]
        document["thinking"] = {"type": "enabled", "budget_tokens": budget}
        document["max_tokens"] = max(int(str(document["max_tokens"])), budget + 1024)
    if not conversation.reasoning:  # thinking allows neither
        # Anthropic takes 0-1 (Chat 0-2), and newer models refuse both at once: temperature wins.
        if conversation.temperature is not None:
            document["temperature"] = min(1.0, max(0.0, conversation.temperature))
        elif conversation.top_p is not None:
            document["top_p"] = conversation.top_p
    if conversation.stop:
        document["stop_sequences"] = conversation.stop
    if conversation.tools:
        document["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.schema}
                             for t in conversation.tools]  # fmt: skip
    choice = conversation.tool_choice
    if choice in ("auto", "none"):
        document["tool_choice"] = {"type": choice}
    elif choice == "required":
        document["tool_choice"] = {"type": "any"}
    elif choice:
        document["tool_choice"] = {"type": "tool", "name": choice}
    if conversation.stream:
        document["stream"] = True
    return document


def _block(part: Part) -> dict[str, object] | None:
    if part.kind == "text":
        return {"type": "text", "text": part.text} if part.text else None
    if part.kind == "image":
        return {"type": "image", "source": _source(part.url)}
    if part.kind == "document":
        return {"type": "document", "source": _source(part.url)}
    if part.kind == "tool_call":
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.arguments}
    if part.kind == "tool_result":
        content = [b for b in map(_block, part.content) if b is not None]
        return {"type": "tool_result", "tool_use_id": part.id, "content": content, "is_error": part.is_error}
    return None  # thinking without its signature can't be sent back


def _source(url: str) -> dict[str, object]:
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "base64", "media_type": media, "data": data}
    return {"type": "url", "url": url}


def usage_in(value: object) -> Usage | None:
    return ir_usage(anthropic_usage(value))


def decode_message(document: dict[str, object]) -> Message:
    parts: list[Part] = []
    for block in objects(document.get("content")):
        part = _part(block)
        if part is not None and part.kind in ("text", "thinking", "tool_call"):
            parts.append(part)
    return Message(
        id=str(document.get("id") or ""),
        model=str(document.get("model") or ""),
        parts=parts,
        stop=_stop_in(document.get("stop_reason")),
        usage=usage_in(document.get("usage")) or Usage(),
    )


class StreamReader:
    """Anthropic events → the intermediate form's events (tool input streams as argument pieces)."""

    def __init__(self) -> None:
        self.blocks: dict[int, str] = {}  # index → block type
        self.usage = Usage()

    def read(self, event: SSEEvent) -> list[StreamEvent]:
        document = json_object(event.data)
        if document is None:
            return []
        kind = document.get("type")
        index = document.get("index")
        index = index if isinstance(index, int) else 0
        if kind == "message_start":
            message = document.get("message")
            message = message if isinstance(message, dict) else {}
            self.usage = usage_in(message.get("usage")) or Usage()
            return [Began(str(message.get("id") or ""), str(message.get("model") or ""))]
        if kind == "content_block_start":
            block = document.get("content_block")
            block = block if isinstance(block, dict) else {}
            self.blocks[index] = str(block.get("type"))
            if block.get("type") == "tool_use":
                return [ToolCallDelta(index, str(block.get("id") or ""), str(block.get("name") or ""))]
            return []
        if kind == "content_block_delta":
            delta = document.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            if delta.get("type") == "text_delta":
                return [TextDelta(str(delta.get("text") or ""))]
            if delta.get("type") == "thinking_delta":
                return [ThinkingDelta(str(delta.get("thinking") or ""))]
            if delta.get("type") == "input_json_delta":
                return [ToolCallDelta(index, arguments=str(delta.get("partial_json") or ""))]
            return []
        if kind == "message_delta":
            delta = document.get("delta")
            stop = delta.get("stop_reason") if isinstance(delta, dict) else None
            late = usage_in(document.get("usage"))
            if late is not None:  # cumulative: the output so far, and the input again on some servers
                self.usage = Usage(
                    late.input or self.usage.input, late.output, late.cache_read or self.usage.cache_read
                )
            return [Finished(_stop_in(stop), self.usage)]
        return []


_UNSIGNED = (b'"signature":""', b'"signature": ""')


def without_unsigned_thinking(body: bytes) -> bytes | None:
    """The request without thinking blocks whose signature is empty (a translated provider wrote them;
    Anthropic rejects them even in past turns), or None when it has none (nearly always: one substring
    test, the body isn't parsed)."""
    if not any(marker in body for marker in _UNSIGNED):
        return None
    document = json_object(body)
    messages = document.get("messages") if document is not None else None
    if document is None or not isinstance(messages, list):
        return None
    changed = False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            kept = [b for b in content if not _unsigned(b)]
            if kept and len(kept) != len(content):
                message["content"] = kept
                changed = True
    return json.dumps(document).encode() if changed else None


def _unsigned(block: object) -> bool:
    return isinstance(block, dict) and block.get("type") == "thinking" and not block.get("signature")
