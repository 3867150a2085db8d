"""OpenAI Responses (Codex) to and from the intermediate form: its requests in, its answers out.

Requests: `instructions` and system/developer messages become the system text; `message` items become
turns; `function_call` and `function_call_output` items become tool calls and their results (a
result joins the user turn that follows the calls); reasoning items, custom (free-form) tools and
built-in tools (web search, file search...) have no equivalent and are dropped.
Answers and streams: one `message` output item for the text, one `function_call` item per call, then
`response.completed` (or `response.incomplete` when a token limit cut the answer) with the usage.
"""

from __future__ import annotations

import json

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
from addon.formats.usage import ir_usage, responses_usage


def decode_request(document: dict[str, object]) -> Conversation:
    """A Responses request; ValueError when it isn't one."""
    source = document.get("input")
    if isinstance(source, str):
        source = [{"type": "message", "role": "user", "content": source}]
    if not isinstance(source, list):
        raise ValueError("no input")
    system = [str(document.get("instructions") or "")]
    turns: list[Turn] = []
    called: set[object] = set()
    for item in objects(source):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            parts = _content(item.get("content"))
            if role in ("system", "developer"):
                system.append("".join(p.text for p in parts if p.kind == "text"))
            else:
                append_turn(turns, "assistant" if role == "assistant" else "user", parts)
        elif kind == "function_call":
            called.add(item.get("call_id"))
            arguments = _arguments(item.get("arguments"))
            call = Part(
                "tool_call",
                id=str(item.get("call_id") or ""),
                name=str(item.get("name") or ""),
                arguments=arguments,
            )
            append_turn(turns, "assistant", [call])
        elif kind == "function_call_output":
            if item.get("call_id") not in called:
                continue  # its call (a local shell or custom tool call) had no equivalent: so has it
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            result = Part("tool_result", id=str(item.get("call_id") or ""), content=[Part("text", text=text)])
            append_turn(turns, "user", [result])
    reasoning = document.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    limit = document.get("max_output_tokens")
    return Conversation(
        model=str(document.get("model") or ""),
        system="\n\n".join(s for s in system if s),
        turns=turns,
        tools=[_tool(t) for t in objects(document.get("tools")) if t.get("type") == "function"],
        tool_choice=_choice(document.get("tool_choice")),
        max_tokens=limit if isinstance(limit, int) else None,
        temperature=number(document.get("temperature")),
        top_p=number(document.get("top_p")),
        stream=document.get("stream") is True,
        reasoning=effort if effort in ("low", "medium", "high") else None,
    )


def _content(value: object) -> list[Part]:
    if isinstance(value, str):
        return [Part("text", text=value)]
    parts: list[Part] = []
    for piece in objects(value):
        if piece.get("type") in ("input_text", "output_text", "text"):
            parts.append(Part("text", text=str(piece.get("text") or "")))
        elif piece.get("type") == "input_image" and isinstance(piece.get("image_url"), str):
            parts.append(Part("image", url=str(piece["image_url"])))
    return parts


def _arguments(value: object) -> dict[str, object]:
    try:
        parsed = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _tool(tool: dict[str, object]) -> Tool:
    schema = tool.get("parameters")
    return Tool(
        str(tool.get("name") or ""),
        str(tool.get("description") or ""),
        schema if isinstance(schema, dict) else {"type": "object", "properties": {}},
    )


def _choice(value: object) -> str | None:
    if isinstance(value, str):
        return value if value in ("auto", "required", "none") else None
    if isinstance(value, dict) and value.get("type") == "function":
        return str(value.get("name") or "") or None
    return None


# --- answers out ---------------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, object]:
    total_in = usage.input + usage.cache_read
    return {
        "input_tokens": total_in,
        "input_tokens_details": {"cached_tokens": usage.cache_read, "cache_write_tokens": 0},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": total_in + usage.output,
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, object]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(call: ToolCallDelta | Part, status: str, n: int) -> dict[str, object]:
    arguments = call.arguments if isinstance(call, ToolCallDelta) else json.dumps(call.arguments)
    call_id = call.id or f"call_detour_{n}"
    return {
        "type": "function_call",
        "id": f"fc_{call_id}",
        "call_id": call_id,
        "name": call.name,
        "arguments": arguments if status == "completed" else "",
        "status": status,
    }


#: The stops a Responses client must not take for a completed answer, and how it names them.
_INCOMPLETE = {Stop.MAX_TOKENS: "max_output_tokens", Stop.REFUSAL: "content_filter"}


def _status(stop: Stop | None) -> str:
    return "incomplete" if stop in _INCOMPLETE else "completed"


def _response(
    response_id: str,
    model: str,
    status: str,
    output: list[dict[str, object]],
    usage: Usage | None,
    stop: Stop | None = None,
) -> dict[str, object]:
    document: dict[str, object] = {
        "id": response_id,
        "object": "response",
        "created_at": 0,
        "status": status,
        "model": model,
        "output": output,
        "usage": _usage(usage) if usage is not None else None,
        "error": None,
        "incomplete_details": {"reason": _INCOMPLETE[stop]} if stop in _INCOMPLETE else None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    return document


def encode_message(message: Message) -> dict[str, object]:
    text = "".join(p.text for p in message.parts if p.kind == "text")
    output = [_message_item("msg_" + message.id, text, "completed")] if text else []
    output += [_call_item(p, "completed", n) for n, p in enumerate(message.parts) if p.kind == "tool_call"]
    status = _status(message.stop)
    return _response("resp_" + message.id, message.model, status, output, message.usage, message.stop)


class StreamWriter:
    """The intermediate form's events as a Responses event stream (Codex's HTTP transport): text as
    `response.output_text.delta` of one message item, each tool call as a `function_call` item
    written whole at the end, then `response.completed` carrying every item and the usage."""

    def __init__(self, rename: dict[str, str] | None = None) -> None:
        self.rename = rename if rename is not None else {}  # shared: filled as the request is written
        self.id = "resp_detour"
        self.model = ""
        self.sequence = 0
        self.started = False
        self.text: list[str] = []
        self.text_open = False
        self.calls: dict[int, ToolCallDelta] = {}
        self.stop: Stop | None = None
        self.usage: Usage | None = None
        self.ended = False

    def _event(self, name: str, data: dict[str, object]) -> bytes:
        document = {"type": name, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return f"event: {name}\ndata: {json.dumps(document)}\n\n".encode()

    def _begin(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        created = _response(self.id, self.model, "in_progress", [], None)
        return self._event("response.created", {"response": created}) + self._event(
            "response.in_progress", {"response": created}
        )

    def feed(self, events: list[StreamEvent]) -> bytes:
        out = b""
        for event in events:
            if isinstance(event, Began):
                self.id, self.model = "resp_" + event.id, event.model
                continue
            out += self._begin()
            if isinstance(event, TextDelta) and event.text:
                if not self.text_open:
                    self.text_open = True
                    item = _message_item("msg_" + self.id, "", "in_progress")
                    out += self._event("response.output_item.added", {"output_index": 0, "item": item})
                    part = {"type": "output_text", "text": "", "annotations": []}
                    out += self._event(
                        "response.content_part.added",
                        {"item_id": "msg_" + self.id, "output_index": 0, "content_index": 0, "part": part},
                    )
                self.text.append(event.text)
                out += self._event(
                    "response.output_text.delta",
                    {"item_id": "msg_" + self.id, "output_index": 0, "content_index": 0, "delta": event.text},
                )
            elif isinstance(event, ThinkingDelta):
                pass  # Responses reasoning items carry encrypted state Detour can't make up
            elif isinstance(event, ToolCallDelta):
                call = self.calls.setdefault(event.index, ToolCallDelta(event.index))
                call.id, call.name = call.id or event.id, call.name or event.name
                call.arguments += event.arguments
            elif isinstance(event, Finished):
                self.stop = event.stop or self.stop
                self.usage = event.usage or self.usage
        return out

    def finish(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        out = self._begin()
        output: list[dict[str, object]] = []
        if self.text_open:
            text = "".join(self.text)
            item_id = "msg_" + self.id
            out += self._event(
                "response.output_text.done",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "text": text},
            )
            part = {"type": "output_text", "text": text, "annotations": []}
            out += self._event(
                "response.content_part.done",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part},
            )
            done = _message_item(item_id, text, "completed")
            out += self._event("response.output_item.done", {"output_index": 0, "item": done})
            output.append(done)
        dropped = False
        for n, call in enumerate(sorted(self.calls.values(), key=lambda c: c.index)):
            if _arguments(call.arguments) == {} and call.arguments.strip() not in ("", "{}"):
                dropped = True
                continue  # cut short: never hand a client a call it would run without its input
            call.name = self.rename.get(call.name, call.name)
            index = len(output)
            out += self._event(
                "response.output_item.added",
                {"output_index": index, "item": _call_item(call, "in_progress", n)},
            )
            item = _call_item(call, "completed", n)
            out += self._event(
                "response.function_call_arguments.delta",
                {"item_id": item["id"], "output_index": index, "delta": item["arguments"]},
            )
            out += self._event(
                "response.function_call_arguments.done",
                {"item_id": item["id"], "output_index": index, "arguments": item["arguments"]},
            )
            out += self._event("response.output_item.done", {"output_index": index, "item": item})
            output.append(item)
        if (
            dropped
            and self.stop in (None, Stop.TOOL_USE)
            and not any(i["type"] == "function_call" for i in output)
        ):
            self.stop = Stop.MAX_TOKENS  # the calls asked for can't be run: not a finished answer
        status = _status(self.stop)
        final = _response(self.id, self.model, status, output, self.usage or Usage(), self.stop)
        return out + self._event(f"response.{status}", {"response": final})


# --- as a provider: Responses requests out, Responses answers in ------------------------------------


def encode_request(conversation: Conversation) -> dict[str, object]:
    items: list[dict[str, object]] = []
    for turn in conversation.turns:
        if turn.role == "assistant":
            text = "".join(p.text for p in turn.parts if p.kind == "text")
            if text:
                items.append(
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text}],
                    }
                )
            items += [
                {
                    "type": "function_call",
                    "call_id": p.id,
                    "name": p.name,
                    "arguments": json.dumps(p.arguments),
                }
                for p in turn.parts
                if p.kind == "tool_call"
            ]
            continue
        for part in turn.parts:
            if part.kind == "tool_result":
                output = "\n".join(p.text for p in part.content if p.kind == "text")
                items.append({"type": "function_call_output", "call_id": part.id, "output": output})
        content: list[dict[str, object]] = []
        for part in turn.parts:
            if part.kind == "text":
                content.append({"type": "input_text", "text": part.text})
            elif part.kind == "image":
                content.append({"type": "input_image", "image_url": part.url})
            elif part.kind == "document":
                content.append({"type": "input_file", "filename": part.name_hint, "file_data": part.url})
        if content:
            items.append({"type": "message", "role": "user", "content": content})
    document: dict[str, object] = {"model": conversation.model, "input": items, "store": False}
    if conversation.system:
        document["instructions"] = conversation.system
    if conversation.tools:
        document["tools"] = [
            {"type": "function", "name": t.name, "description": t.description, "parameters": t.schema}
            for t in conversation.tools
        ]
    choice = conversation.tool_choice
    if choice in ("auto", "required", "none"):
        document["tool_choice"] = choice
    elif choice:
        document["tool_choice"] = {"type": "function", "name": choice}
    for key, value in (
        ("max_output_tokens", conversation.max_tokens),
        ("temperature", conversation.temperature),
        ("top_p", conversation.top_p),
    ):
        if value is not None:
            document[key] = value
    if conversation.reasoning:
        document["reasoning"] = {"effort": conversation.reasoning, "summary": "auto"}
    if conversation.stream:
        document["stream"] = True
    return document


def _usage_in(value: object) -> Usage | None:
    return ir_usage(responses_usage(value))


def _stop_of(response: dict[str, object], calls: bool) -> Stop:
    if response.get("status") == "incomplete":
        return Stop.MAX_TOKENS
    return Stop.TOOL_USE if calls else Stop.END


def decode_message(document: dict[str, object]) -> Message:
    parts: list[Part] = []
    for item in objects(document.get("output")):
        if item.get("type") == "message":
            text = "".join(
                str(c.get("text") or "")
                for c in objects(item.get("content"))
                if c.get("type") == "output_text"
            )
            if text:
                parts.append(Part("text", text=text))
        elif item.get("type") == "function_call":
            parts.append(
                Part(
                    "tool_call",
                    id=str(item.get("call_id") or ""),
                    name=str(item.get("name") or ""),
                    arguments=_arguments(item.get("arguments")),
                )
            )
        elif item.get("type") == "reasoning":
            summary = "".join(str(s.get("text") or "") for s in objects(item.get("summary")))
            if summary:
                parts.append(Part("thinking", text=summary))
    calls = any(p.kind == "tool_call" for p in parts)
    return Message(
        id=str(document.get("id") or ""),
        model=str(document.get("model") or ""),
        parts=parts,
        stop=_stop_of(document, calls),
        usage=_usage_in(document.get("usage")) or Usage(),
    )


class StreamReader:
    """Responses events → the intermediate form's events. A call's arguments may come only with
    `function_call_arguments.done` (no deltas): they are taken from there then."""

    def __init__(self) -> None:
        self.streamed: set[int] = set()  # output indices whose arguments came as deltas
        self.calls = False

    def read(self, event: SSEEvent) -> list[StreamEvent]:
        document = json_object(event.data)
        if document is None:
            return []
        kind = document.get("type") if event.event == "message" else event.event
        index = document.get("output_index")
        index = index if isinstance(index, int) else 0
        if kind == "response.created":
            response = document.get("response")
            response = response if isinstance(response, dict) else {}
            return [Began(str(response.get("id") or ""), str(response.get("model") or ""))]
        if kind == "response.output_text.delta":
            return [TextDelta(str(document.get("delta") or ""))]
        if kind == "response.reasoning_summary_text.delta":
            return [ThinkingDelta(str(document.get("delta") or ""))]
        if kind == "response.output_item.added":
            item = document.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                self.calls = True
                return [ToolCallDelta(index, str(item.get("call_id") or ""), str(item.get("name") or ""))]
            return []
        if kind == "response.function_call_arguments.delta":
            self.streamed.add(index)
            return [ToolCallDelta(index, arguments=str(document.get("delta") or ""))]
        if kind == "response.function_call_arguments.done" and index not in self.streamed:
            self.streamed.add(index)
            return [ToolCallDelta(index, arguments=str(document.get("arguments") or ""))]
        if kind == "response.output_item.done" and index not in self.streamed:
            item = document.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":  # arguments only here
                self.streamed.add(index)
                return [ToolCallDelta(index, arguments=str(item.get("arguments") or ""))]
        if kind in ("response.completed", "response.incomplete"):
            response = document.get("response")
            response = response if isinstance(response, dict) else {}
            return [Finished(_stop_of(response, self.calls), _usage_in(response.get("usage")))]
        return []
