"""OpenAI Responses client (Codex) → OpenAI Chat or Anthropic provider (issue 13, direction 3 in
part), checked by the official `openai` SDK: its `Response` model and its Responses stream
accumulator (`ResponseStreamState`, what `responses.stream()` uses)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response

from addon.formats import DIALECTS
from addon.formats.sse import SSEParser
from addon.formats.translation import Translation

CODEX_REQUEST: dict[str, Any] = {
    "model": "gpt-5-codex",
    "instructions": "You are Codex.",
    "stream": True,
    "store": False,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "tools": [
        {"type": "function", "name": "shell", "description": "run", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}},  # noqa: E501
        {"type": "web_search"},
    ],
    "tool_choice": "auto",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none."}]},  # noqa: E501
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xyz"},
        {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": '{"command": ["ls"]}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\nb.txt"},
    ],
}  # fmt: skip


def translation(provider: str) -> Translation:
    return Translation(DIALECTS["openai-responses"], DIALECTS[provider])


def test_a_codex_request_becomes_a_chat_request() -> None:
    path, _, body = translation("openai-chat").request(
        "/v1/responses", (), json.dumps(CODEX_REQUEST).encode()
    )
    chat = json.loads(body)
    assert path == "/v1/chat/completions"
    assert chat["messages"][0] == {"role": "system", "content": "You are Codex.\n\nSandbox: none."}
    assert chat["messages"][1] == {"role": "user", "content": "list files"}
    assert chat["messages"][2]["tool_calls"][0]["function"] == {
        "name": "shell",
        "arguments": '{"command": ["ls"]}',
    }
    assert chat["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"}
    assert [t["function"]["name"] for t in chat["tools"]] == ["shell"]  # the built-in web search is dropped
    assert chat["reasoning_effort"] == "medium" and chat["stream_options"] == {"include_usage": True}


def test_a_codex_request_becomes_a_messages_request() -> None:
    _, headers, body = translation("anthropic").request(
        "/v1/responses", (), json.dumps(CODEX_REQUEST).encode()
    )
    document = json.loads(body)
    assert document["system"] == "You are Codex.\n\nSandbox: none."
    assert [m["role"] for m in document["messages"]] == ["user", "assistant", "user"]
    assert document["messages"][2]["content"][0]["tool_use_id"] == "call_1"
    assert (b"anthropic-version", b"2023-06-01") in headers


def chat_chunk(delta: dict[str, object] | None = None, finish: str | None = None, **extra: object) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return f"data: {json.dumps({'id': 'c9', 'model': 'm', 'choices': choices, **extra})}\n\n".encode()


def accumulate(stream: bytes) -> tuple[Response, list[str]]:
    from openai._types import omit  # "no text format": the SDK's own sentinel

    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    final = None
    names = []
    for event in SSEParser().feed(stream):
        data = json.loads(event.data)
        assert data["type"] == event.event
        names.append(event.event)
        for parsed in state.handle_event(_typed(data)):
            if parsed.type in ("response.completed", "response.incomplete"):
                final = parsed.response
    assert final is not None, names
    return final, names


def _typed(data: dict[str, Any]) -> Any:
    from openai._models import construct_type
    from openai.types.responses import ResponseStreamEvent

    return construct_type(type_=ResponseStreamEvent, value=data)  # type: ignore[arg-type]


@pytest.mark.parametrize("usage", [True, False])
def test_a_chat_stream_becomes_a_responses_stream_the_sdk_accumulates(usage: bool) -> None:
    t = translation("openai-chat")
    t.request("/v1/responses", (), json.dumps(CODEX_REQUEST).encode())
    chunks = [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "Running "}),
              chat_chunk({"content": "ls."}),
              chat_chunk({"tool_calls": [{"index": 0, "id": "call_2", "function": {"name": "shell", "arguments": '{"command"'}}]}),  # noqa: E501
              chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': ["ls", "-a"]}'}}]}),
              chat_chunk({}, "tool_calls")]  # fmt: skip
    if usage:
        chunks.append(chat_chunk(None, usage={"prompt_tokens": 30, "completion_tokens": 4}))
    out = b"".join(t.events(c) for c in chunks) + t.finish()
    response, names = accumulate(out)
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert response.output_text == "Running ls."
    call = next(item for item in response.output if item.type == "function_call")
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        "call_2",
        "shell",
        {"command": ["ls", "-a"]},
    )
    if usage:
        assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (
            30,
            4,
        )


def test_a_whole_chat_answer_becomes_a_response() -> None:
    answer = {"id": "c1", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": "Done."}}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2}}  # fmt: skip
    response = Response.model_validate(
        json.loads(translation("openai-chat").answer(200, json.dumps(answer).encode()))
    )
    assert response.output_text == "Done." and response.status == "completed"


def test_a_token_limit_is_an_incomplete_response() -> None:
    t = translation("openai-chat")
    out = t.events(chat_chunk({"content": "Half"}) + chat_chunk({}, "length")) + t.finish()
    names = [e.event for e in SSEParser().feed(out)]
    assert names[-1] == "response.incomplete"
