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
)


def _append(turns: list[Turn], role: str, parts: list[Part]) -> None:
    if turns and turns[-1].role == role:
        turns[-1].parts += parts
    else:
        turns.append(Turn(role, parts))


def _items(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def decode_request(document: dict[str, object]) -> Conversation:
    """A Responses request; ValueError when it isn't one."""
    source = document.get("input")
    if isinstance(source, str):
        source = [{"type": "message", "role": "user", "content": source}]
    if not isinstance(source, list):
        raise ValueError("no input")
    system = [str(document.get("instructions") or "")]
    turns: list[Turn] = []
    for item in _items(source):
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            parts = _content(item.get("content"))
            if role in ("system", "developer"):
                system.append("".join(p.text for p in parts if p.kind == "text"))
            else:
                _append(turns, "assistant" if role == "assistant" else "user", parts)
        elif kind == "function_call":
            arguments = _arguments(item.get("arguments"))
            call = Part(
                "tool_call",
                id=str(item.get("call_id") or ""),
                name=str(item.get("name") or ""),
                arguments=arguments,
            )
            _append(turns, "assistant", [call])
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            result = Part("tool_result", id=str(item.get("call_id") or ""), content=[Part("text", text=text)])
            _append(turns, "user", [result])
    reasoning = document.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    limit = document.get("max_output_tokens")
    return Conversation(
        model=str(document.get("model") or ""),
        system="\n\n".join(s for s in system if s),
        turns=turns,
        tools=[_tool(t) for t in _items(document.get("tools")) if t.get("type") == "function"],
        tool_choice=_choice(document.get("tool_choice")),
        max_tokens=limit if isinstance(limit, int) else None,
        temperature=_number(document.get("temperature")),
        top_p=_number(document.get("top_p")),
        stream=document.get("stream") is True,
        reasoning=effort if effort in ("low", "medium", "high") else None,
    )


def _content(value: object) -> list[Part]:
    if isinstance(value, str):
        return [Part("text", text=value)]
    parts: list[Part] = []
    for piece in _items(value):
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


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


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
        "incomplete_details": {"reason": "max_output_tokens"} if stop is Stop.MAX_TOKENS else None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    return document


def encode_message(message: Message) -> dict[str, object]:
    text = "".join(p.text for p in message.parts if p.kind == "text")
    output = [_message_item("msg_" + message.id, text, "completed")] if text else []
    output += [_call_item(p, "completed", n) for n, p in enumerate(message.parts) if p.kind == "tool_call"]
    status = "incomplete" if message.stop is Stop.MAX_TOKENS else "completed"
    return _response("resp_" + message.id, message.model, status, output, message.usage, message.stop)


class StreamWriter:
    """The intermediate form's events as a Responses event stream (Codex's HTTP transport): text as
    `response.output_text.delta` of one message item, each tool call as a `function_call` item
    written whole at the end, then `response.completed` carrying every item and the usage."""

    def __init__(self, rename: dict[str, str] | None = None) -> None:
        self.rename = rename or {}
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
        for n, call in enumerate(sorted(self.calls.values(), key=lambda c: c.index)):
            if _arguments(call.arguments) == {} and call.arguments.strip() not in ("", "{}"):
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
        status = "incomplete" if self.stop is Stop.MAX_TOKENS else "completed"
        final = _response(self.id, self.model, status, output, self.usage or Usage(), self.stop)
        return out + self._event(f"response.{status}", {"response": final})
