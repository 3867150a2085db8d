"""The "Detour" content view's rendering (`formats/review.py`) over streams and bodies recorded by us
in each dialect's shape: text, thinking and tool calls assembled, the stop reason and usage, and a
stream that was cut or reported an error said to be so, never shown as complete."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_usage import (
    ANTHROPIC_BODY,
    ANTHROPIC_HEAD,
    ANTHROPIC_STREAM,
    CHAT_BODY,
    CHAT_HEAD,
    CHAT_STREAM,
    GEMINI_BODY,
    GEMINI_HEAD,
    GEMINI_STREAM,
    RESPONSES_HEAD,
    RESPONSES_STREAM,
    chat_chunk,
    gemini_chunk,
    sse,
)

from addon.formats.review import dialect_of, review


def delta(index: int, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": body})


ANTHROPIC_TOOL_STREAM = sse(
    ("message_start", {"type": "message_start", "message": {
        "id": "msg_tool", "type": "message", "role": "assistant", "model": "claude-opus-4-1", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 50, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": ""}}),
    delta(0, {"type": "thinking_delta", "thinking": "The user wants "}),
    delta(0, {"type": "thinking_delta", "thinking": "the weather."}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1,
                             "content_block": {"type": "text", "text": ""}}),
    delta(1, {"type": "text_delta", "text": "Let me check."}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
    delta(2, {"type": "input_json_delta", "partial_json": '{"city": "Par'}),
    delta(2, {"type": "input_json_delta", "partial_json": 'is"}'}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                       "usage": {"output_tokens": 80}}),
    ("message_stop", {"type": "message_stop"}),
)  # fmt: skip
CHAT_TOOL_STREAM = sse(
    (None, chat_chunk({"role": "assistant", "content": None})),
    (None, chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"city":'}}]})),
    (None, chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]})),
    (None, chat_chunk({}, "tool_calls")),
    (None, "[DONE]"),
)  # fmt: skip
RESPONSES_TOOL_STREAM = sse(
    ("response.created", {"type": "response.created", "response": {
        "id": "resp_t", "model": "gpt-5", "output": [], "status": "in_progress", "usage": None}}),
    ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": {
        "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": ""}}),
    ("response.function_call_arguments.delta", {
        "type": "response.function_call_arguments.delta", "output_index": 0, "item_id": "fc_1",
        "delta": '{"city": "Paris"}'}),
    ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": {
        "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
        "arguments": '{"city": "Paris"}'}}),
    ("response.completed", {"type": "response.completed", "response": {
        "id": "resp_t", "model": "gpt-5", "status": "completed", "output": [],
        "usage": {"input_tokens": 20, "output_tokens": 9}}}),
)  # fmt: skip
GEMINI_TOOL_STREAM = sse((None, {
    "candidates": [{"content": {"role": "model", "parts": [
        {"text": "thinking it over", "thought": True},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 5, "totalTokenCount": 35},
    "modelVersion": "gemini-2.5-pro", "responseId": "g-tool"}))  # fmt: skip
ERROR_AFTER_TEXT = ANTHROPIC_HEAD + sse(
    ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
)

PATHS = {
    "anthropic": "/v1/messages?beta=true",
    "openai-chat": "/api/v1/chat/completions",
    "openai-responses": "/v1/responses",
    "gemini": "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
}


def shown(name: str, body: bytes, streamed: bool = True, status: int = 200) -> str:
    dialect = dialect_of(PATHS[name])
    assert dialect is not None and dialect.name == name
    return review(dialect, body, streamed, status)


@pytest.mark.parametrize(
    ("name", "stream", "head"),
    [
        ("anthropic", ANTHROPIC_STREAM, "anthropic stream, 7 events: complete"),
        ("openai-chat", CHAT_STREAM, "openai-chat stream, 5 events: complete"),
        ("openai-responses", RESPONSES_STREAM, "openai-responses stream, 8 events: complete"),
        ("gemini", GEMINI_STREAM, "gemini stream, 2 events: complete"),
    ],
)
def test_a_text_stream_reads_as_one_text_with_its_usage(name: str, stream: bytes, head: str) -> None:
    lines = shown(name, stream).splitlines()
    assert lines[0] == head
    assert lines[-2:] == ["── text ──", "Hello"]
    assert any(line.startswith("usage: ") and " in, " in line and "unknown" not in line for line in lines)
    assert "stop: end" in lines


def test_anthropic_thinking_and_a_tool_call_are_assembled() -> None:
    text = shown("anthropic", ANTHROPIC_TOOL_STREAM)
    assert text.splitlines()[:4] == [
        "anthropic stream, 14 events: complete",
        "model claude-opus-4-1 · id msg_tool",
        "stop: tool_use",
        "usage: 50 in, 80 out",
    ]
    assert "── thinking ──\nThe user wants the weather." in text
    assert "── text ──\nLet me check." in text
    assert '── tool call get_weather (toolu_1) ──\n{\n  "city": "Paris"\n}' in text


@pytest.mark.parametrize(
    ("name", "stream"),
    [
        ("openai-chat", CHAT_TOOL_STREAM),
        ("openai-responses", RESPONSES_TOOL_STREAM),
        ("gemini", GEMINI_TOOL_STREAM),
    ],
)
def test_tool_calls_of_the_other_dialects_are_assembled(name: str, stream: bytes) -> None:
    text = shown(name, stream)
    assert text.splitlines()[0].endswith("complete")
    assert "── tool call get_weather (" in text and '{\n  "city": "Paris"\n}' in text
    assert "stop: tool_use" in text


@pytest.mark.parametrize(
    ("name", "head_of_stream"),
    [("anthropic", ANTHROPIC_HEAD), ("openai-chat", CHAT_HEAD), ("openai-responses", RESPONSES_HEAD),
     ("gemini", GEMINI_HEAD)],
)  # fmt: skip
def test_a_cut_stream_says_so_and_never_reads_as_complete(name: str, head_of_stream: bytes) -> None:
    text = shown(name, head_of_stream)
    assert text.splitlines()[0].endswith("cut: the stream ended without its final event")
    assert "complete" not in text
    assert "stop:" not in text


def test_an_error_in_the_stream_is_shown_with_what_came_before() -> None:
    text = shown("anthropic", ERROR_AFTER_TEXT)
    assert text.splitlines()[0].startswith("anthropic stream, 5 events: error in the stream: ")
    assert "Overloaded" in text.splitlines()[0]
    assert text.endswith("── text ──\nHello")


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("anthropic", ANTHROPIC_BODY, "usage: 12 in, 30,000 cache read, 2,000 cache write, 345 out"),
        ("openai-chat", CHAT_BODY, "usage: 176 in, 1,024 cache read, 300 out, 128 of them reasoning"),
        ("gemini", GEMINI_BODY, "usage: 1,000 in, 3,000 cache read, 250 out, 200 of them reasoning"),
        ("gemini", [gemini_chunk("Hel", {"promptTokenCount": 4000}), GEMINI_BODY], "usage: 1,000 in"),
    ],
)
def test_a_whole_answer_reads_the_same_way(name: str, body: object, expected: str) -> None:
    text = shown(name, json.dumps(body).encode(), streamed=False)
    assert expected in text
    assert text.endswith("Hello")


def test_an_error_answer_shows_what_the_provider_said() -> None:
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    text = shown("anthropic", body.encode(), streamed=False, status=529)
    assert text.splitlines()[0] == "anthropic error answer (http 529): overloaded_error Overloaded"
    assert json.loads(text.split("\n\n", 1)[1]) == json.loads(body)  # the body itself, indented


def test_what_is_not_a_model_answer_is_not_reviewed() -> None:
    assert dialect_of("/v1/models") is None and dialect_of("/api/oauth/profile") is None
    with pytest.raises(ValueError):
        shown("anthropic", b"<html>oops</html>", streamed=False)
