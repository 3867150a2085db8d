"""Anthropic Messages client → OpenAI Responses provider and → Gemini provider (issue 13, direction 2),
read by the official `anthropic` SDK's models and stream accumulator."""

from __future__ import annotations

import json
from typing import Any

from anthropic.types import Message
from test_translation import REQUEST, accumulate

from addon.formats import DIALECTS
from addon.formats.translation import Translation


def translation(provider: str) -> Translation:
    return Translation(DIALECTS["anthropic"], DIALECTS[provider])


def test_a_messages_request_becomes_a_responses_request() -> None:
    path, _, body = translation("openai-responses").request("/v1/messages", (), json.dumps(REQUEST).encode())
    document = json.loads(body)
    assert path == "/v1/responses" and document["store"] is False and document["stream"] is True
    assert document["instructions"] == "You are Claude Code."
    kinds = [(i["type"], i.get("role")) for i in document["input"]]
    assert kinds == [("message", "user"), ("message", "assistant"), ("function_call", None),
                     ("function_call_output", None), ("message", "user")]  # fmt: skip
    assert document["input"][3] == {"type": "function_call_output", "call_id": "toolu_1", "output": "hello"}
    assert [t["name"] for t in document["tools"]][0] == "Read" and document["tool_choice"] == "required"  # noqa: RUF015


def responses_event(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def test_a_responses_stream_becomes_an_anthropic_stream() -> None:
    t = translation("openai-responses")
    out = b"".join([
        t.events(responses_event("response.created", response={"id": "resp_1", "model": "gpt-5"})),
        t.events(responses_event("response.reasoning_summary_text.delta", delta="Plan.")),
        t.events(responses_event("response.output_text.delta", delta="Hi ")),
        t.events(responses_event("response.output_text.delta", delta="there.")),
        t.events(responses_event("response.output_item.added", output_index=2,
                                 item={"type": "function_call", "call_id": "call_1", "name": "Read"})),
        # arguments only in `.done`, never as deltas
        t.events(responses_event("response.function_call_arguments.done", output_index=2, arguments='{"path": "a"}')),  # noqa: E501
        t.events(responses_event("response.completed", response={
            "id": "resp_1", "status": "completed",
            "usage": {"input_tokens": 20, "output_tokens": 6, "input_tokens_details": {"cached_tokens": 5}}})),  # noqa: E501
    ]) + t.finish()  # fmt: skip
    message, names = accumulate(out)  # noqa: RUF059
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[1].text == "Hi there."
    assert (message.content[2].id, message.content[2].input) == ("call_1", {"path": "a"})
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (15, 5)


def test_a_messages_request_becomes_a_gemini_request() -> None:
    request = {**REQUEST, "model": "gemini-2.5-pro"}
    path, headers, body = translation("gemini").request("/v1/messages", (), json.dumps(request).encode())  # noqa: RUF059
    document = json.loads(body)
    assert path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert document["systemInstruction"] == {"parts": [{"text": "You are Claude Code."}]}
    assert [c["role"] for c in document["contents"]] == ["user", "model", "user"]
    assert document["contents"][1]["parts"][1] == {
        "functionCall": {"name": "Read", "args": {"path": "a.txt", "b": 1}},
        "thoughtSignature": "skip_thought_signature_validator",  # Gemini 3 wants one on every call
    }
    # the result is named after the call it answers
    assert document["contents"][2]["parts"][0] == {
        "functionResponse": {"name": "Read", "response": {"content": "hello"}}
    }
    schema = document["tools"][0]["functionDeclarations"][0]["parameters"]
    assert schema == {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
    assert document["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert document["generationConfig"]["maxOutputTokens"] == 1024


def gemini_chunk(
    parts: list[dict[str, Any]], finish: str | None = None, usage: dict[str, int] | None = None
) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    document: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-2.5-pro",
        "responseId": "g1",
    }
    if usage:
        document["usageMetadata"] = usage
    return f"data: {json.dumps(document)}\r\n\r\n".encode()


def test_a_gemini_stream_with_id_less_parallel_calls_becomes_an_anthropic_stream() -> None:
    t = translation("gemini")
    out = b"".join([
        t.events(gemini_chunk([{"text": "Thinking it over.", "thought": True}])),
        t.events(gemini_chunk([{"text": "Two reads."}])),
        t.events(gemini_chunk([{"functionCall": {"name": "Read", "args": {"path": "a"}}},
                               {"functionCall": {"name": "Read", "args": {"path": "b"}}}], "STOP",
                              {"promptTokenCount": 40, "candidatesTokenCount": 10, "totalTokenCount": 62})),
    ]) + t.finish()  # fmt: skip
    message, _ = accumulate(out)
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    ids = [b.id for b in message.content[2:]]
    assert len(set(ids)) == 2 and all(ids)  # made up, distinct
    assert [b.input for b in message.content[2:]] == [{"path": "a"}, {"path": "b"}]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (40, 22)  # thinking counts


def test_a_whole_gemini_answer_becomes_a_message() -> None:
    answer = {"candidates": [{"content": {"parts": [{"text": "Hello."}]}, "finishReason": "MAX_TOKENS"}],
              "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 5}}  # fmt: skip
    message = Message.model_validate(
        json.loads(translation("gemini").answer(200, json.dumps(answer).encode()))
    )
    assert message.content[0].type == "text" and message.content[0].text == "Hello."
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


DOCUMENT_REQUEST: dict[str, Any] = {
    "model": "m", "max_tokens": 64,
    "messages": [{"role": "user", "content": [
        {"type": "document", "title": "spec.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},  # noqa: E501
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain notes"}},
        {"type": "text", "text": "summarise"},
    ]}],
}  # fmt: skip


def test_a_pdf_travels_as_a_data_url_where_the_target_takes_one() -> None:
    body = json.dumps(DOCUMENT_REQUEST).encode()
    chat = json.loads(Translation(DIALECTS["anthropic"], DIALECTS["openai-chat"]).request("/v1/messages", (), body)[2])  # noqa: E501
    assert chat["messages"][0]["content"][0] == {
        "type": "file", "file": {"filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}}
    assert chat["messages"][0]["content"][1] == {"type": "text", "text": "plain notes"}
    responses = json.loads(translation("openai-responses").request("/v1/messages", (), body)[2])
    assert responses["input"][0]["content"][0] == {
        "type": "input_file", "filename": "spec.pdf", "file_data": "data:application/pdf;base64,JVBERi0x"}
    gemini = json.loads(translation("gemini").request("/v1/messages", (), body)[2])
    assert gemini["contents"][0]["parts"][0] == {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0x"}}  # noqa: E501


def test_a_chat_clients_pdf_reaches_anthropic_as_a_document() -> None:
    request = {"model": "c", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}}]}]}  # fmt: skip  # noqa: E501
    body = Translation(DIALECTS["openai-chat"], DIALECTS["anthropic"]).request("/v1/chat/completions", (), json.dumps(request).encode())[2]  # noqa: E501
    block = json.loads(body)["messages"][0]["content"][0]
    assert block == {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}  # noqa: E501


def test_a_long_tool_name_is_shortened_for_every_target_and_restored_in_the_stream() -> None:
    from test_translation import LONG_TOOL

    for provider in ("openai-responses", "gemini", "openai-chat"):
        t = Translation(DIALECTS["anthropic"], DIALECTS[provider])
        body = json.loads(t.request("/v1/messages", (), json.dumps(REQUEST).encode())[2])
        assert LONG_TOOL not in json.dumps(body)
        (short,) = [s for s, full in t.rename.items() if full == LONG_TOOL]
        assert len(short) <= 64
    t = translation("gemini")
    t.request("/v1/messages", (), json.dumps(REQUEST).encode())
    short = next(iter(t.rename))
    out = t.events(gemini_chunk([{"functionCall": {"name": short, "args": {}}}], "STOP")) + t.finish()
    message, _ = accumulate(out)
    assert message.content[0].name == LONG_TOOL


def test_a_whole_responses_answer_becomes_a_message_the_sdk_reads() -> None:
    answer = {
        "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Plan."}]},
            {"type": "message", "id": "m1", "role": "assistant", "content": [{"type": "output_text", "text": "Reading."}]},  # noqa: E501
            {"type": "function_call", "id": "fc_1", "call_id": "call_9", "name": "Read", "arguments": '{"path": "a"}'},  # noqa: E501
        ],
        "usage": {"input_tokens": 12, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 2}},
    }  # fmt: skip
    message = Message.model_validate(json.loads(translation("openai-responses").answer(200, json.dumps(answer).encode())))  # noqa: E501
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    tool = message.content[2]
    assert tool.type == "tool_use" and (tool.id, tool.input) == ("call_9", {"path": "a"})
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (10, 2)
