"""Gemini (`generateContent`) to and from the intermediate form, as a provider: requests out, answers
and chunks in.

Requests: the system text becomes `systemInstruction`; turns become `contents` (`model` for the
assistant); tool calls and results become `functionCall` / `functionResponse` parts (a result is named
after the call it answers); tool schemas are cut down to the subset Gemini accepts; the model is named
in the path (`:streamGenerateContent?alt=sse` for streams). Answers: Gemini's calls carry no id, so
each gets one; `thought` parts are thinking; output tokens are the total less the prompt, so thinking
counts.
"""

from __future__ import annotations

import json
from urllib.parse import quote

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
from addon.formats.usage import gemini_usage, ir_usage

#: The JSON-schema keywords Gemini's function declarations take; others are dropped.
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "description",
        "enum",
        "properties",
        "required",
        "items",
        "nullable",
        "anyOf",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "title",
        "format",
    }
)
_FORMATS = frozenset({"enum", "date-time"})
_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
_BUDGET = {"low": 1024, "medium": 8192, "high": 24576}
_BLOCKED = ("SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY", "LANGUAGE")
_FINISH = {"STOP": Stop.END, "MAX_TOKENS": Stop.MAX_TOKENS, **dict.fromkeys(_BLOCKED, Stop.REFUSAL)}
#: Gemini 3 refuses a history whose function calls lack the signature it gave them; Detour doesn't
#: carry signatures across the client, and Google documents this value for calls that have none.
SKIP_SIGNATURE = "skip_thought_signature_validator"


def path(conversation: Conversation) -> str:
    model = quote(conversation.model, safe="-._")
    if conversation.stream:
        return f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
    return f"/v1beta/models/{model}:generateContent"


def encode_request(conversation: Conversation) -> dict[str, object]:
    names = {p.id: p.name for t in conversation.turns for p in t.parts if p.kind == "tool_call"}
    contents = []
    for turn in conversation.turns:
        parts = [p for p in (_part(part, names) for part in turn.parts) if p is not None]
        if parts:
            contents.append({"role": "model" if turn.role == "assistant" else "user", "parts": parts})
    document: dict[str, object] = {"contents": contents}
    if conversation.system:
        document["systemInstruction"] = {"parts": [{"text": conversation.system}]}
    if conversation.tools:
        declarations = [
            {"name": t.name, "description": t.description, "parameters": _schema(t.schema)}
            for t in conversation.tools
        ]
        document["tools"] = [{"functionDeclarations": declarations}]
    choice = conversation.tool_choice
    if choice in _MODES:
        document["toolConfig"] = {"functionCallingConfig": {"mode": _MODES[choice]}}
    elif choice:
        document["toolConfig"] = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}
    config: dict[str, object] = {}
    for key, value in (
        ("maxOutputTokens", conversation.max_tokens),
        ("temperature", conversation.temperature),
        ("topP", conversation.top_p),
    ):
        if value is not None:
            config[key] = value
    if conversation.stop:
        config["stopSequences"] = conversation.stop
    if conversation.reasoning:
        config["thinkingConfig"] = {
            "thinkingBudget": _BUDGET[conversation.reasoning],
            "includeThoughts": True,
        }
    if config:
        document["generationConfig"] = config
    return document


def _part(part: Part, names: dict[str, str]) -> dict[str, object] | None:
    if part.kind == "text":
        return {"text": part.text} if part.text else None
    if part.kind in ("image", "document") and part.url.startswith("data:") and ";base64," in part.url:
        media, data = part.url[5:].split(";base64,", 1)
        return {"inlineData": {"mimeType": media, "data": data}}
    if part.kind == "tool_call":
        call = {"name": part.name, "args": part.arguments}
        return {"functionCall": call, "thoughtSignature": SKIP_SIGNATURE}
    if part.kind == "tool_result":
        text = "\n".join(p.text for p in part.content if p.kind == "text")
        return {"functionResponse": {"name": names.get(part.id, part.id), "response": {"content": text}}}
    return None  # image URLs (Gemini takes only inline data or its own files), thinking


def _schema(value: object) -> object:
    if isinstance(value, list):
        return [_schema(v) for v in value]
    if not isinstance(value, dict):
        return value
    kept = {k: _schema(v) for k, v in value.items() if k in _SCHEMA_KEYS}
    if "format" in kept and kept["format"] not in _FORMATS:
        del kept["format"]
    if "properties" in value:
        kept["properties"] = (
            {k: _schema(v) for k, v in value["properties"].items()}
            if isinstance(value["properties"], dict)
            else {}
        )
    return kept


def _usage(value: object) -> Usage | None:
    return ir_usage(gemini_usage(value))


def _candidate(document: dict[str, object]) -> dict[str, object]:
    candidates = document.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    return first if isinstance(first, dict) else {}


def _parts(candidate: dict[str, object]) -> list[dict[str, object]]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def decode_message(document: dict[str, object]) -> Message:
    candidate = _candidate(document)
    parts: list[Part] = []
    for n, piece in enumerate(_parts(candidate)):
        call = piece.get("functionCall")
        if isinstance(call, dict):
            arguments = call.get("args")
            parts.append(
                Part(
                    "tool_call",
                    id=str(call.get("id") or f"call_gemini_{n}"),
                    name=str(call.get("name") or ""),
                    arguments=arguments if isinstance(arguments, dict) else {},
                )
            )
        elif isinstance(piece.get("text"), str):
            parts.append(Part("thinking" if piece.get("thought") else "text", text=str(piece["text"])))
    stop = _FINISH.get(str(candidate.get("finishReason")))
    if stop is Stop.END and any(p.kind == "tool_call" for p in parts):
        stop = Stop.TOOL_USE
    return Message(
        id=str(document.get("responseId") or "gemini"),
        model=str(document.get("modelVersion") or ""),
        parts=parts,
        stop=stop,
        usage=_usage(document.get("usageMetadata")) or Usage(),
    )


class StreamReader:
    """Gemini's chunks (each a partial `GenerateContentResponse`) → the intermediate form's events."""

    def __init__(self) -> None:
        self.began = False
        self.calls = 0

    def read(self, event: SSEEvent) -> list[StreamEvent]:
        document = json_object(event.data)
        if document is None or "error" in document:
            return []
        out: list[StreamEvent] = []
        if not self.began:
            self.began = True
            out.append(
                Began(str(document.get("responseId") or "gemini"), str(document.get("modelVersion") or ""))
            )
        candidate = _candidate(document)
        for piece in _parts(candidate):
            call = piece.get("functionCall")
            if isinstance(call, dict):  # Gemini sends each call whole, with no id: one is made up
                arguments = call.get("args")
                call_id = str(call.get("id") or f"call_gemini_{self.calls}")
                out.append(
                    ToolCallDelta(
                        self.calls,
                        call_id,
                        str(call.get("name") or ""),
                        json.dumps(arguments if isinstance(arguments, dict) else {}),
                    )
                )
                self.calls += 1
            elif isinstance(piece.get("text"), str) and piece["text"]:
                text = str(piece["text"])
                out.append(ThinkingDelta(text) if piece.get("thought") else TextDelta(text))
        finish = candidate.get("finishReason")
        if isinstance(finish, str) and finish in _FINISH:
            stop = _FINISH[finish]
            out.append(Finished(Stop.TOOL_USE if stop is Stop.END and self.calls else stop))
        usage = _usage(document.get("usageMetadata"))
        if usage is not None:
            out.append(Finished(usage=usage))
        return out
