"""The new translation directions attacked (the adversarial review of Chat, Responses and Gemini):
answers that must not look complete, stop reasons, Gemini's signatures and blocks, requests that must
not trip a provider's breaker, keys and paths that must not leak."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_exchange import PLAIN_TIMEOUTS, SSE, Script

from addon.exchange import Deliver, Delivery, Exchange, Finish, Forward
from addon.formats import DIALECTS
from addon.formats.sse import SSEParser
from addon.formats.translation import Translation
from addon.model import App, Provider

KEY = "sk-ant-provider-0123456789abcdefXYZ"


def t(client: str, provider: str) -> Translation:
    return Translation(DIALECTS[client], DIALECTS[provider])


def ant(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def ant_stream(stop: str, text: str = "Half an answer") -> bytes:
    return b"".join(
        [
            ant("message_start", message={"id": "msg_1", "model": "claude", "usage": {"input_tokens": 5}}),
            ant("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            ant("content_block_delta", index=0, delta={"type": "text_delta", "text": text}),
            ant("content_block_stop", index=0),
            ant("message_delta", delta={"stop_reason": stop}, usage={"output_tokens": 3}),
            ant("message_stop"),
        ]
    )


def gem(parts: list[dict[str, Any]], finish: str | None = None, **extra: Any) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    document = {"candidates": [candidate], "modelVersion": "gemini-2.5-pro", "responseId": "g1", **extra}
    return f"data: {json.dumps(document)}\r\n\r\n".encode()


def chat_json(chunks: bytes) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in SSEParser().feed(chunks) if e.data != "[DONE]"]


def finish_reasons(chunks: bytes) -> list[str]:
    return [
        c["choices"][0]["finish_reason"]
        for c in chat_json(chunks)
        if c["choices"] and c["choices"][0]["finish_reason"]
    ]


def responses_final(stream: bytes) -> dict[str, Any]:
    events = [json.loads(e.data) for e in SSEParser().feed(stream)]
    return events[-1]


def ant_stop_reason(stream: bytes) -> str | None:
    for e in SSEParser().feed(stream):
        d = json.loads(e.data)
        if d["type"] == "message_delta":
            return d["delta"]["stop_reason"]
    return None


# --- stop reasons: a cut answer must not look like a finished one ----------------------------------


def test_anthropic_context_window_exceeded_is_not_stop_for_a_chat_client() -> None:
    """Anthropic's `model_context_window_exceeded` (the answer was cut by the context window) has no  # noqa: E501
    entry in _STOPS_IN: the Chat client gets finish_reason "stop", a complete-looking answer."""  # noqa: E501
    tr = t("openai-chat", "anthropic")
    out = tr.events(ant_stream("model_context_window_exceeded")) + tr.finish()
    assert finish_reasons(out) == ["length"]


def test_anthropic_context_window_exceeded_is_incomplete_for_a_responses_client() -> None:
    tr = t("openai-responses", "anthropic")
    out = tr.events(ant_stream("model_context_window_exceeded")) + tr.finish()
    assert responses_final(out)["type"] == "response.incomplete"


def test_anthropic_context_window_exceeded_whole_answer() -> None:
    tr = t("openai-chat", "anthropic")
    doc = {"id": "msg_1", "model": "c", "content": [{"type": "text", "text": "Half"}],
           "stop_reason": "model_context_window_exceeded", "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip  # noqa: E501
    answer = json.loads(tr.answer(200, json.dumps(doc).encode()))
    assert answer["choices"][0]["finish_reason"] == "length"


def test_a_refusal_is_not_a_completed_response() -> None:
    """Chat `content_filter` / Anthropic `refusal` → Responses: OpenAI reports a filtered answer as  # noqa: E501
    status "incomplete" (reason content_filter); the writer says "completed"."""  # noqa: E501
    tr = t("openai-responses", "anthropic")
    out = tr.events(ant_stream("refusal")) + tr.finish()
    final = responses_final(out)
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "content_filter"}


@pytest.mark.parametrize(
    "reason", ["MALFORMED_FUNCTION_CALL", "OTHER", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"]
)
def test_gemini_failure_finish_reasons_are_not_end_turn(reason: str) -> None:
    """Gemini ends a failed generation with a finishReason that _FINISH doesn't know: the reader  # noqa: E501, E702
    emits no stop, the Anthropic writer defaults to end_turn: an empty or cut answer looks done."""  # noqa: E501
    tr = t("anthropic", "gemini")
    out = tr.events(gem([{"text": "Let me edit"}])) + tr.events(gem([], reason))
    watch = DIALECTS["gemini"].watch()
    watch.feed(gem([{"text": "Let me edit"}]) + gem([], reason))
    assert not (watch.complete and watch.error is None and ant_stop_reason(out + tr.finish()) == "end_turn")


@pytest.mark.parametrize("reason", ["PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"])
def test_gemini_blocked_finish_reasons_are_refusals(reason: str) -> None:
    tr = t("anthropic", "gemini")
    out = tr.events(gem([{"text": "Sure, "}])) + tr.events(gem([], reason)) + tr.finish()
    assert ant_stop_reason(out) == "refusal"


def test_gemini_blocked_prompt_whole_answer_is_not_an_empty_end_turn() -> None:
    """A prompt Gemini blocks: 200, no candidates, `promptFeedback.blockReason`."""
    tr = t("anthropic", "gemini")
    body = json.dumps({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                       "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}}).encode()  # fmt: skip
    if tr.failure(200, body) is not None:
        return
    answer = json.loads(tr.answer(200, body))
    assert not (answer["content"] == [] and answer["stop_reason"] == "end_turn")


# --- the exchange: the Gemini watch, whose "finished" is a substring test -------------------------


def exchange_script(
    a: App, dialect: str, body: bytes, path: str, delivery: Delivery = Delivery.STREAM
) -> Script:
    """A scripted exchange of `a` for a client speaking `dialect` (the provider's key is the secret)."""
    return Script(Exchange(a, DIALECTS[dialect], delivery, list(a.providers), (KEY,), body=body, path=path))


def gemini_app() -> App:
    provider = Provider(
        "gem", "https://generativelanguage.example", api_key=KEY, auth="x-goog-api-key", api="gemini"
    )
    return App("claude", ("api.anthropic.com",), (provider,), ("/v1/messages*",), timeouts=PLAIN_TIMEOUTS)  # type: ignore[arg-type]


def test_a_finishreason_key_in_function_args_is_not_the_end() -> None:
    """`"finishReason"` appearing as a key in a function call's args makes the watch say FINISHED;  # noqa: E501
    the body then ends early (no real finishReason) and the client gets message_stop."""  # noqa: E501
    a = gemini_app()
    body = json.dumps({"model": "gemini-2.5-pro", "max_tokens": 10, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
    s = exchange_script(a, "anthropic", body, "/v1/messages")
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(gem([{"text": "Setting it."}]))
    s.data(gem([{"functionCall": {"name": "set", "args": {"finishReason": "STOP"}}}]))
    s.end()  # cut: no chunk with the candidate's own finishReason
    sent = b"".join(x.data for x in s.actions if isinstance(x, Forward))
    assert not (b"message_stop" in sent and s.of(Finish))


# --- calls -------------------------------------------------------------------------------------


def test_responses_provider_arguments_only_in_output_item_done() -> None:
    """A Responses-compatible server that sends a call's arguments only in `output_item.done` (no  # noqa: E501
    deltas, no arguments.done): the Anthropic client gets tool_use input {} and may run it."""  # noqa: E501
    tr = t("anthropic", "openai-responses")

    def ev(name: str, **d: Any) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **d})}\n\n".encode()

    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Bash", "arguments": ""}
    done = {**item, "arguments": '{"command": "rm -rf build"}', "status": "completed"}
    out = b"".join(
        [
            tr.events(ev("response.created", response={"id": "r", "model": "m"})),
            tr.events(ev("response.output_item.added", output_index=0, item=item)),
            tr.events(ev("response.output_item.done", output_index=0, item=done)),
            tr.events(
                ev("response.completed", response={"id": "r", "status": "completed", "output": [done]})
            ),
            tr.finish(),
        ]
    )
    inputs = [
        json.loads(json.loads(e.data)["delta"]["partial_json"])
        for e in SSEParser().feed(out)
        if json.loads(e.data).get("delta", {}).get("type") == "input_json_delta"
    ]
    assert inputs == [{"command": "rm -rf build"}]


def test_unparseable_call_with_tool_calls_finish_is_not_a_completed_empty_response() -> None:
    """Chat provider: finish_reason tool_calls, arguments not JSON: the Responses writer drops the  # noqa: E501
    call and says `response.completed` with nothing in it (Codex ends the turn as if done)."""  # noqa: E501
    tr = t("openai-responses", "openai-chat")

    def c(delta: dict[str, Any], finish: str | None = None) -> bytes:
        doc = {"id": "x", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(doc)}\n\n".encode()

    call = {"index": 0, "id": "call_1", "function": {"name": "exec", "arguments": '{"cmd": "ls'}}
    out = tr.events(c({"tool_calls": [call]}) + c({}, "tool_calls")) + tr.finish()
    final = responses_final(out)
    assert not (final["type"] == "response.completed" and final["response"]["output"] == [])


# --- requests ----------------------------------------------------------------------------------


def test_duplicate_stream_keys_translate_as_the_exchange_delivers() -> None:
    """The exchange decides STREAM with a substring test (`json_true`), the codec with the parsed
    document (last key wins): `"stream": true, "stream": false` goes out non-streamed, the JSON
    answer is then "a translated stream answered without an event stream", charged to the provider
    (one client can trip every translated provider's breaker)."""
    body = b'{"model": "claude-x", "stream": true, "stream": false, "messages": [{"role": "user", "content": "hi"}]}'  # noqa: E501
    assert DIALECTS["openai-chat"].is_stream_request("/v1/chat/completions", body)
    _, _, out = t("openai-chat", "anthropic").request("/v1/chat/completions", (), body)
    assert json.loads(out).get("stream") is True


def test_chat_temperature_above_one_reaches_anthropic_as_is() -> None:
    """OpenAI takes temperature 0..2, Anthropic 0..1: 1.5 is sent on and answered 400 (the client's
    valid request gets a client error from the backup)."""
    body = json.dumps(
        {"model": "c", "temperature": 1.5, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()  # noqa: E501, RUF100
    _, _, out = t("openai-chat", "anthropic").request("/v1/chat/completions", (), body)
    assert json.loads(out)["temperature"] <= 1


def test_local_shell_output_without_its_call() -> None:
    """Codex's `local_shell_call` is dropped but its output is a `function_call_output`: an orphan
    tool_result reaches Anthropic (400 "unexpected tool_use_id")."""
    body = json.dumps({"model": "c", "stream": True, "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ls"}]},
        {"type": "local_shell_call", "call_id": "call_9", "status": "completed",
         "action": {"type": "exec", "command": ["ls"]}},
        {"type": "function_call_output", "call_id": "call_9", "output": "a b"},
    ]}).encode()  # fmt: skip
    _, _, out = t("openai-responses", "anthropic").request("/v1/responses", (), body)
    doc = json.loads(out)
    used = {b["id"] for m in doc["messages"] for b in m["content"] if b["type"] == "tool_use"}
    results = {b["tool_use_id"] for m in doc["messages"] for b in m["content"] if b["type"] == "tool_result"}
    assert results <= used


def test_chat_usage_chunk_only_when_asked() -> None:
    """The writer always ends with a `choices: []` usage chunk; OpenAI sends one only with
    stream_options.include_usage, and clients that read `chunk.choices[0]` crash on it."""
    tr = t("openai-chat", "anthropic")
    out = tr.events(ant_stream("end_turn")) + tr.finish()
    assert all(c["choices"] for c in chat_json(out))


# --- what held (kept as regression checks) ---------------------------------------------------------


@pytest.mark.parametrize(
    "model", ["x/../../v1/files?key=AAA#", "m:generateContent?key=1", "..", "a b\r\nHost: evil"]
)  # noqa: E501, RUF100
def test_gemini_model_cannot_inject_path_or_query(model: str) -> None:
    body = json.dumps({"model": model, "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
    path, _, _ = t("anthropic", "gemini").request("/v1/messages?key=CLIENTKEY", (), body)
    bare, _, query = path.partition("?")
    assert query == "alt=sse" and bare.count("/") == 3 and "CLIENTKEY" not in path
    assert all(ch not in bare for ch in "?#\r\n ")


def test_chat_client_key_headers_dropped_for_anthropic() -> None:
    from addon.rewrite import ClientRequest, for_provider

    body = json.dumps({"model": "c", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = ((b"authorization", b"Bearer sk-client-OPENAI"), (b"openai-organization", b"org-1"),
               (b"content-type", b"application/json"))  # fmt: skip
    path, kept, out = t("openai-chat", "anthropic").request("/v1/chat/completions", headers, body)
    provider = Provider(
        "ant", "https://api.anthropic.example", api_key=KEY, auth="x-api-key", api="anthropic"
    )  # noqa: E501, RUF100
    request = ClientRequest("POST", path, kept, out)  # type: ignore[call-arg]
    sent = for_provider(request, provider)
    assert b"sk-client-OPENAI" not in b"".join(v for _, v in sent.headers)


def chat_app() -> App:
    provider = Provider(
        "ant", "https://api.anthropic.example", api_key=KEY, auth="x-api-key", api="anthropic"
    )  # noqa: E501, RUF100
    return App("codex", ("api.openai.com",), (provider,), ("/v1/chat/completions",), timeouts=PLAIN_TIMEOUTS)  # type: ignore[arg-type]


def chat_script() -> Script:
    a = chat_app()
    body = json.dumps(
        {"model": "claude", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()  # noqa: E501, RUF100
    return exchange_script(a, "openai-chat", body, "/v1/chat/completions")


@pytest.mark.parametrize("tail", [
    ant("error", error={"type": "overloaded_error", "message": "Overloaded"}),
    ant("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 3}),  # no message_stop
    b"",
])  # fmt: skip
def test_a_cut_anthropic_stream_never_gets_done_for_a_chat_client(tail: bytes) -> None:
    s = chat_script()
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(ant("message_start", message={"id": "msg_1", "model": "c", "usage": {}}))
    s.data(ant("content_block_start", index=0, content_block={"type": "text", "text": ""}))
    s.data(ant("content_block_delta", index=0, delta={"type": "text_delta", "text": "Half"}))
    if tail:
        s.data(tail)
    s.end()
    sent = b"".join(x.data for x in s.actions if isinstance(x, Forward))
    assert b"[DONE]" not in sent and b'"finish_reason": "stop"' not in sent
    assert not s.of(Finish)


def test_provider_key_echoed_in_a_responses_client_stream_is_masked() -> None:
    a = App(
        "codex",
        ("api.openai.com",),
        (Provider("ant", "https://a.example", api_key=KEY, auth="x-api-key", api="anthropic"),),  # noqa: E501, RUF100
        ("/v1/responses",),
        timeouts=PLAIN_TIMEOUTS,
    )  # type: ignore[arg-type]
    body = json.dumps({"model": "c", "stream": True, "input": "hi"}).encode()
    s = exchange_script(a, "openai-responses", body, "/v1/responses")
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(ant_stream("end_turn", text=f"your key is {KEY}"))
    sent = b"".join(x.data for x in s.actions if isinstance(x, Forward))
    assert KEY.encode() not in sent


def test_whole_translated_error_is_masked() -> None:
    a = chat_app()
    body = json.dumps({"model": "claude", "messages": [{"role": "user", "content": "hi"}]}).encode()
    s = exchange_script(a, "openai-chat", body, "/v1/chat/completions", Delivery.WHOLE)
    s.start()
    err = json.dumps(
        {"type": "error", "error": {"type": "invalid_request_error", "message": "bad key " + KEY}}
    ).encode()  # noqa: E501, RUF100
    s.answer(400, err)
    delivered = [x for x in s.actions if isinstance(x, Deliver)]
    assert delivered and KEY.encode() not in delivered[0].body
    assert "error" in json.loads(delivered[0].body)


def test_a_tool_argument_named_stream_makes_a_whole_request_a_stream() -> None:
    """The realistic form of the mismatch above: a non-streamed Anthropic request whose history has a
    tool_use with input {"stream": true} (an object, not an escaped string). The exchange delivers
    STREAM, the translated request asks for a whole answer, the provider's JSON answer is
    "a translated stream answered without an event stream": charged, failed over, every time."""
    body = json.dumps({"model": "gemini-2.5-pro", "max_tokens": 50, "messages": [
        {"role": "user", "content": "tail the log"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "tail", "input": {"stream": True}}]},  # noqa: E501
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
    ]}).encode()  # fmt: skip
    assert DIALECTS["anthropic"].is_stream_request("/v1/messages", body)  # the exchange: STREAM
    path, _, _ = t("anthropic", "gemini").request("/v1/messages", (), body)
    assert "streamGenerateContent" in path  # the provider must be asked for a stream too


def test_gemini_3_tool_history_carries_a_thought_signature() -> None:
    """Gemini 3 answers 400 "Function call is missing a thought_signature" when a functionCall part of
    the current turn comes back without one; the reader drops `thoughtSignature`, the encoder adds
    none: every second request of a Claude Code tool loop on a Gemini 3 backup fails (as a 400 the
    client gets, not a failover)."""
    body = json.dumps({"model": "gemini-3-pro-preview", "max_tokens": 50, "stream": True, "messages": [
        {"role": "user", "content": "read a"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_gemini_0", "name": "Read", "input": {"p": "a"}}]},  # noqa: E501
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_gemini_0", "content": "x"}]},  # noqa: E501
    ]}).encode()  # fmt: skip
    _, _, out = t("anthropic", "gemini").request("/v1/messages", (), body)
    calls = [p for c in json.loads(out)["contents"] for p in c["parts"] if "functionCall" in p]
    assert calls and all("thoughtSignature" in p for p in calls)
