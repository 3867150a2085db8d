"""OpenAI Chat client → Anthropic provider (issue 13, direction 3 in part), checked by the official
`openai` SDK's models and its stream accumulator (`ChatCompletionStreamState`, what
`chat.completions.stream()` uses)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from addon.formats import DIALECTS
from addon.formats.sse import SSEParser
from addon.formats.translation import Translation


def translation() -> Translation:
    return Translation(DIALECTS["openai-chat"], DIALECTS["anthropic"])


REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4",
    "stream": True,
    "max_completion_tokens": 512,
    "temperature": 0.2,
    "stop": "END",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},  # noqa: E501
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"k": "v"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get", "arguments": '{"k": "w"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "one"},
        {"role": "tool", "tool_call_id": "call_2", "content": "two"},
    ],
    "tools": [{"type": "function", "function": {"name": "get", "description": "d",
                                                "parameters": {"type": "object", "properties": {"k": {"type": "string"}}}}}],  # noqa: E501
    "tool_choice": "required",
}  # fmt: skip


def test_a_chat_request_becomes_a_messages_request() -> None:
    path, headers, body = translation().request(
        "/v1/chat/completions", ((b"openai-organization", b"org"), (b"content-type", b"application/json")),
        json.dumps(REQUEST).encode(),
    )  # fmt: skip
    assert path == "/v1/messages"
    assert headers == ((b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01"))
    doc = json.loads(body)
    assert doc["system"] == "Be brief.\n\nUse tools."
    assert doc["max_tokens"] == 512 and doc["stop_sequences"] == ["END"] and doc["temperature"] == 0.2
    assert doc["tool_choice"] == {"type": "any"} and doc["tools"][0]["input_schema"]["properties"] == {
        "k": {"type": "string"}
    }
    roles = [m["role"] for m in doc["messages"]]
    assert roles == ["user", "assistant", "user"]  # both tool results in one user turn: roles alternate
    assert doc["messages"][0]["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
    }
    assert [b["id"] for b in doc["messages"][1]["content"]] == ["call_1", "call_2"]
    assert doc["messages"][1]["content"][0]["input"] == {"k": "v"}
    assert [(b["tool_use_id"], b["content"][0]["text"]) for b in doc["messages"][2]["content"]] == [
        ("call_1", "one"),
        ("call_2", "two"),
    ]


def test_several_choices_are_not_translatable() -> None:
    from addon.formats.translation import NotTranslatable

    with pytest.raises(NotTranslatable):
        translation().request("/v1/chat/completions", (), json.dumps({**REQUEST, "n": 2}).encode())


def test_an_anthropic_answer_becomes_a_chat_completion() -> None:
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
              "content": [{"type": "text", "text": "Hi."}, {"type": "tool_use", "id": "t1", "name": "get", "input": {"k": "v"}}],  # noqa: E501
              "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 3}}  # fmt: skip  # noqa: E501
    completion = ChatCompletion.model_validate(
        json.loads(translation().answer(200, json.dumps(answer).encode()))
    )
    choice = completion.choices[0]
    assert choice.message.content == "Hi." and choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"k": "v"}
    assert (
        completion.usage is not None
        and completion.usage.prompt_tokens == 8
        and completion.usage.completion_tokens == 7
    )


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def test_an_anthropic_stream_becomes_chat_chunks_the_sdk_accumulates() -> None:
    t = translation()
    asked = {**REQUEST, "stream_options": {"include_usage": True}}  # the usage chunk only when asked
    t.request("/v1/chat/completions", (), json.dumps(asked).encode())
    stream = sse(
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude-sonnet-4", "usage": {"input_tokens": 9, "output_tokens": 1}}},  # noqa: E501
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "get", "input": {}}},  # noqa: E501
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"k": '}},  # noqa: E501
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"v"}'}},  # noqa: E501
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        {"type": "message_stop"},
    )  # fmt: skip
    out = t.events(stream) + t.finish()
    state = ChatCompletionStreamState()
    ids = set()
    done = False
    for event in SSEParser().feed(out):
        if event.data == "[DONE]":
            done = True
            continue
        chunk = ChatCompletionChunk.model_validate(json.loads(event.data))
        ids.add(chunk.id)
        state.handle_chunk(chunk)
    completion = state.get_final_completion()
    assert done and len(ids) == 1
    message = completion.choices[0].message
    assert message.content == "Let me check." and message.role == "assistant"
    assert message.tool_calls is not None and message.tool_calls[0].id == "t1"
    assert json.loads(message.tool_calls[0].function.arguments) == {"k": "v"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    ) == (9, 12)
