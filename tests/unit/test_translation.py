"""Anthropic Messages client → OpenAI Chat provider (issue 13, direction 1), checked by oracles we
didn't write: translated answers and streams are read by the official `anthropic` SDK's models and its
stream accumulator (`accumulate_event`, what `messages.stream()` uses)."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from anthropic._models import construct_type
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent

from addon.formats import DIALECTS
from addon.formats.sse import SSEParser
from addon.formats.translation import MAX_TOOL_NAME, NotTranslatable, Translation

LONG_TOOL = "mcp__a_very_long_server_name__with_an_even_longer_tool_name_that_goes_past_sixty_four"


def translation() -> Translation:
    return Translation(DIALECTS["anthropic"], DIALECTS["openai-chat"])


REQUEST: dict[str, Any] = {
    "model": "deepseek-chat",
    "max_tokens": 1024,
    "stream": True,
    "metadata": {"user_id": "u1"},
    "top_k": 5,
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "system": [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332; cch=abc123;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
    ],
    "tools": [
        {"name": "Read", "description": "Read a file", "input_schema": {
            "type": "object", "properties": {"path": {"type": "string", "format": "uri"}}, "required": ["path"]}},  # noqa: E501
        {"name": LONG_TOOL, "description": "long", "input_schema": {"properties": {}}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
    ],
    "tool_choice": {"type": "any"},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "read a.txt", "cache_control": {"type": "ephemeral"}}]},  # noqa: E501
        {"role": "assistant", "content": [
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.txt", "b": 1}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                {"type": "text", "text": "hello"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ]},
            {"type": "text", "text": "and then?"},
        ]},
    ],
}  # fmt: skip


def test_a_messages_request_becomes_a_chat_request() -> None:
    path, headers, body = translation().request(
        "/v1/messages?beta=true",
        (
            (b"anthropic-version", b"2023-06-01"),
            (b"anthropic-beta", b"x"),
            (b"content-type", b"application/json"),
        ),
        json.dumps(REQUEST).encode(),
    )
    assert path == "/v1/chat/completions"
    assert headers == ((b"content-type", b"application/json"),)  # the client's API's own headers stay behind
    chat = json.loads(body)
    # system blocks merged into one leading message, without cache_control or the billing line
    assert chat["messages"][0] == {"role": "system", "content": "You are Claude Code."}
    assert chat["messages"][1] == {"role": "user", "content": "read a.txt"}
    assert chat["messages"][2] == {
        "role": "assistant", "content": "Reading.",
        "tool_calls": [{"id": "toolu_1", "type": "function",
                        "function": {"name": "Read", "arguments": '{"path": "a.txt", "b": 1}'}}],
    }  # fmt: skip
    # the tool's result right after the call, then the user's text with the tool's image
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "hello"}
    assert chat["messages"][4] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "and then?"},
    ]}  # fmt: skip
    names = [t["function"]["name"] for t in chat["tools"]]
    assert names[0] == "Read" and len(names) == 2  # the server tool (web_search) is dropped
    assert len(names[1]) == MAX_TOOL_NAME and names[1] != LONG_TOOL[:MAX_TOOL_NAME]
    assert chat["tools"][0]["function"]["parameters"]["properties"]["path"] == {"type": "string"}  # no format
    assert chat["tools"][1]["function"]["parameters"] == {"properties": {}, "type": "object"}
    assert chat["tool_choice"] == "required"
    assert chat["max_tokens"] == 1024 and "reasoning_effort" not in chat  # deepseek-chat doesn't reason
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert not {"metadata", "top_k", "thinking", "system", "stop_sequences"} & chat.keys()
    assert b"cache_control" not in body and b"billing" not in body


def test_a_reasoning_model_gets_max_completion_tokens_and_an_effort() -> None:
    request = {**REQUEST, "model": "gpt-5", "thinking": {"type": "enabled", "budget_tokens": 32000}}
    chat = json.loads(translation().request("/v1/messages", (), json.dumps(request).encode())[2])
    assert chat["max_completion_tokens"] == 1024 and "max_tokens" not in chat
    assert chat["reasoning_effort"] == "high"


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
])  # fmt: skip
def test_tool_choice(choice: dict[str, object], expected: object) -> None:
    request = {**REQUEST, "tool_choice": choice}
    assert (
        json.loads(translation().request("/v1/messages", (), json.dumps(request).encode())[2])["tool_choice"]
        == expected
    )


@pytest.mark.parametrize(("path", "headers", "body"), [
    ("/v1/messages/count_tokens", (), b"{}"),
    ("/v1/messages", ((b"content-encoding", b"gzip"),), b"\x1f\x8b"),
    ("/v1/messages", (), b"[1, 2]"),
])  # fmt: skip
def test_what_cant_be_translated_is_refused_for_this_provider(
    path: str, headers: tuple[tuple[bytes, bytes], ...], body: bytes
) -> None:
    with pytest.raises(NotTranslatable):
        translation().request(path, headers, body)


def test_a_chat_answer_becomes_a_message_the_sdk_reads() -> None:
    t = translation()
    t.request("/v1/messages", (), json.dumps(REQUEST).encode())  # learns the shortened tool name
    short = next(iter(t.rename))
    answer = {
        "id": "chatcmpl-1", "model": "deepseek-chat",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Let me look.", "reasoning_content": "I should read it.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": short, "arguments": '{"x": 1}'}}],  # noqa: E501
        }}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 60}},  # noqa: E501
    }  # fmt: skip
    message = Message.model_validate(json.loads(t.answer(200, json.dumps(answer).encode())))
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    tool = message.content[2]
    assert tool.type == "tool_use" and tool.name == LONG_TOOL and tool.input == {"x": 1}  # the client's name
    assert message.stop_reason == "tool_use"
    assert (
        message.usage.input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.output_tokens,
    ) == (40, 60, 20)


def test_a_chat_error_becomes_an_anthropic_error_with_the_providers_message() -> None:
    body = b'{"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded", "code": null}}'
    document = json.loads(translation().answer(429, body))
    assert document["type"] == "error" and document["error"]["type"] == "rate_limit_error"
    assert "Rate limit reached" in document["error"]["message"]


def chunk(delta: dict[str, object] | None = None, finish: str | None = None, **extra: object) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return f"data: {json.dumps({'id': 'c1', 'model': 'deepseek-chat', 'choices': choices, **extra})}\n\n".encode()  # noqa: E501


def accumulate(stream: bytes) -> Any:
    """The official SDK's accumulator over the translated stream; every event must validate."""
    snapshot = None
    names = []
    # anthropic 2.x keeps partial tool input per block in `json_bufs`; 0.x in the snapshot itself
    extra: dict[str, Any] = (
        {"json_bufs": {}} if "json_bufs" in inspect.signature(accumulate_event).parameters else {}
    )  # noqa: E501, RUF100
    for event in SSEParser().feed(stream):
        data = json.loads(event.data)
        assert data["type"] == event.event
        names.append(event.event)
        typed = construct_type(type_=RawMessageStreamEvent, value=data)
        snapshot = accumulate_event(event=typed, current_snapshot=snapshot, **extra)  # type: ignore[arg-type]
    return snapshot, names


def test_a_chat_stream_becomes_an_anthropic_stream_the_sdk_accumulates() -> None:
    t = translation()
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Think"}), chunk({"reasoning_content": "ing."}),
        chunk({"content": "Hel"}), chunk({"content": "lo", "reasoning_content": "late thought"}),
        # two parallel calls, interleaved; the second's id and name come after its first arguments
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "function": {"name": "Read", "arguments": '{"pa'}}]}),  # noqa: E501
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"q"'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "function": {"name": "Grep", "arguments": ': 2}'}},
                              {"index": 0, "function": {"arguments": 'th": "a"}'}}]}),
        chunk({}, "tool_calls"),
        chunk(None, usage={"prompt_tokens": 50, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 10}}),  # noqa: E501
        b"data: [DONE]\n\n",
    ]  # fmt: skip
    out = b"".join(t.events(c) for c in chunks) + t.finish()
    message, names = accumulate(out)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "Thinking." and message.content[0].signature == ""
    assert message.content[1].text == "Hello"  # reasoning after the text doesn't reopen thinking
    assert [(b.id, b.name, b.input) for b in message.content[2:]] == [
        ("call_a", "Read", {"path": "a"}),
        ("call_b", "Grep", {"q": 2}),
    ]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (40, 9)
    assert names.count("message_start") == 1 and names.count("message_delta") == 1
    assert names[-1] == "message_stop"
    indices = [
        json.loads(e.data).get("index") for e in SSEParser().feed(out) if e.event == "content_block_start"
    ]
    assert indices == [0, 1, 2, 3]  # dense, each block closed before the next (the SDK checks)


def test_a_stream_whose_finish_reason_repeats_and_ends_without_done_is_finished_once() -> None:
    t = translation()
    out = b"".join(t.events(c) for c in [chunk({"content": "a"}, "stop"), chunk({"content": "b"}, "stop")])
    out += t.finish() + t.finish()
    message, names = accumulate(out)
    assert message.content[0].text == "ab" and message.stop_reason == "end_turn"
    assert names.count("message_stop") == 1


@pytest.mark.parametrize(
    "pieces",
    [
        ["<think>plan it</think>\n\nDone."],
        ["<th", "ink>plan", " it</thi", "nk>Done."],
        ["  <think>plan it</think>Done."],
    ],
)
def test_inline_think_tags_become_a_thinking_block(pieces: list[str]) -> None:
    t = translation()
    out = b"".join(t.events(chunk({"content": p})) for p in pieces) + t.events(chunk({}, "stop")) + t.finish()
    message, _ = accumulate(out)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content] == [
        ("thinking", "plan it"),
        ("text", "Done."),
    ]


def test_content_that_only_looks_like_a_tag_is_text() -> None:
    t = translation()
    out = b"".join(t.events(chunk({"content": p})) for p in ["<th", "is is text"]) + t.finish()
    message, _ = accumulate(out)
    assert [b.text for b in message.content] == ["<this is text"]


def test_a_tool_calling_turns_thinking_goes_back_as_reasoning_content() -> None:
    request = {**REQUEST, "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I need the file.", "signature": "sig"},
            {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "x"}]},
    ]}  # fmt: skip
    chat = json.loads(translation().request("/v1/messages", (), json.dumps(request).encode())[2])
    assert chat["messages"][2]["reasoning_content"] == "I need the file."
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "x"}
