"""The translation attacked (the adversarial review of issue 13's first directions): truncations that
must not look complete, keys that must not leak through re-encoded or shortened text, malformed
chunks and requests that must not crash the exchange."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_exchange import JSON, PLAIN_TIMEOUTS, SSE, Script
from test_translation import accumulate, chunk

from addon.exchange import Cut, Deliver, Delivery, Exchange, Finish, Forward, Stream
from addon.formats import DIALECTS
from addon.formats.sse import SSEParser
from addon.formats.translation import NotTranslatable, Translation
from addon.model import App, Provider, Timeouts

KEY = "sk-chatkey-0123456789abcdefXYZ"


def tapp(first_token: float = 0, continue_streams: bool = False, second: bool = False) -> App:
    providers = [Provider("chat", "https://api.chat.example", api_key=KEY, auth="bearer", api="openai-chat")]
    if second:
        providers.append(Provider("native", "https://native.example"))
    timeouts = Timeouts(
        connect=10, first_byte=60, first_byte_unstreamed=60, first_token=first_token, idle=120
    )
    return App(
        "claude",
        ("api.anthropic.com",),
        tuple(providers),
        ("/v1/messages*",),
        timeouts=timeouts,
        continue_streams=continue_streams,
    )  # type: ignore[arg-type]


BODY = json.dumps(
    {"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def script(
    delivery: Delivery = Delivery.STREAM, body: bytes = BODY, path: str = "/v1/messages", **kw: Any
) -> Script:
    a = tapp(**kw)
    return Script(
        Exchange(a, DIALECTS["anthropic"], delivery, list(a.providers), (KEY,), body=body, path=path)
    )


def client_bytes(s: Script) -> bytes:
    return b"".join(a.data for a in s.actions if isinstance(a, Forward))


def events(s: Script) -> list[str]:
    return [e.event for e in SSEParser().feed(client_bytes(s))]


def ended_complete(s: Script) -> bool:
    return "message_stop" in events(s) and any(isinstance(a, Finish) for a in s.actions)


# --- truncation ---------------------------------------------------------------------------------


def test_openrouter_mid_stream_error_is_not_a_complete_answer() -> None:
    """OpenRouter's documented mid-stream error: a chunk with a top-level `error` (not within the
    first 20 characters) and `finish_reason: "error"`. The client must not get `message_stop`."""
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"role": "assistant", "content": ""}))
    s.data(chunk({"content": "The first half of the ans"}))
    s.data(chunk({"content": ""}, "error", error={"code": 502, "message": "Provider disconnected"}))
    s.end()
    assert not ended_complete(s), "a provider error became stop_reason end_turn + message_stop"


def test_unknown_finish_reason_error_is_not_end_turn() -> None:
    """`finish_reason: "error"` alone (no error object) maps to Stop.END."""
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"content": "half"}))
    s.data(chunk({}, "error"))
    s.data(b"data: [DONE]\n\n")
    s.end()
    assert not ended_complete(s)


def test_empty_finish_reason_on_every_chunk_then_clean_eof() -> None:
    """Some OpenAI-compatible servers send `"finish_reason": ""` on every chunk. The watch's regex
    counts that as finished, so a body that ends early (no [DONE], no real finish_reason) is
    translated into a complete-looking message."""
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"content": "The first half of the ans"}, ""))
    s.end()
    assert not ended_complete(s)


def test_tool_call_with_truncated_arguments_becomes_empty_input() -> None:
    """finish_reason length in the middle of a tool call's arguments: the client gets a tool_use
    with input {} (it may run the tool with no arguments)."""
    t = Translation(DIALECTS["anthropic"], DIALECTS["openai-chat"])
    out = t.events(
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c",
                        "function": {"name": "Bash", "arguments": '{"command": "rm -rf /tmp/x'},
                    }
                ]
            }
        )
    )  # noqa: E501, RUF100
    out += t.events(chunk({}, "length")) + t.finish()
    message, _ = accumulate(out)
    assert not (message.content and message.content[0].type == "tool_use" and message.content[0].input == {})


# --- keys ---------------------------------------------------------------------------------------


def test_error_body_cut_at_500_bytes_leaks_a_key_prefix() -> None:
    """A non-JSON-shaped error that echoes the key: answer() cuts it at 500 bytes BEFORE masking."""
    body = json.dumps(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    s = script(Delivery.WHOLE, body)
    s.start()
    s.connect()
    s.head(401, ((b"content-type", b"text/plain"),))
    page = b"x" * 451 + b" Incorrect API key provided: " + KEY.encode()
    s.data(page)
    s.end()
    deliver = next(a for a in s.actions if isinstance(a, Deliver))
    text = json.loads(deliver.body)["error"]["message"]
    assert KEY[:15] not in text


def test_key_in_text_escaped_is_masked() -> None:
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    s.data(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"k=' + escaped.encode() + b'"}}]}\n\n')
    s.data(chunk({}, "stop"))
    s.data(b"data: [DONE]\n\n")
    s.end()
    assert KEY.encode() not in client_bytes(s)


def test_key_in_split_tool_arguments_is_masked() -> None:
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    a = json.dumps({"k": KEY})
    s.data(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "T", "arguments": a[:12]}}]}))
    s.data(chunk({"tool_calls": [{"index": 0, "function": {"arguments": a[12:]}}]}))
    s.data(chunk({}, "tool_calls"))
    s.data(b"data: [DONE]\n\n")
    s.end()
    out = client_bytes(s)
    assert KEY.encode() not in out and b"tool_use" in out


def test_in_stream_error_echoing_escaped_key() -> None:
    """An error event after content echoes the key with \\u escapes; the reason goes to the client
    in an `error` event."""
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"content": "hello"}))
    escaped = "".join(f"\\u{ord(c):04x}" for c in KEY)
    s.data(b'data: {"error":{"message":"bad key ' + escaped.encode() + b'"}}\n\n')
    s.end()
    out = client_bytes(s)
    decoded = [json.loads(e.data) for e in SSEParser().feed(out) if e.event == "error"]
    assert KEY not in json.dumps(decoded) and KEY not in str(decoded)
    # the message the SDK shows, once its escapes are read (a user pasting it in a bug report)
    shown = json.dumps(decoded).encode().decode("unicode_escape")
    assert KEY not in shown.encode().decode("unicode_escape")


def test_client_key_never_reaches_chat_provider() -> None:
    from addon.rewrite import ClientRequest, for_provider

    t = Translation(DIALECTS["anthropic"], DIALECTS["openai-chat"])
    headers = (
        (b"x-api-key", b"sk-ant-client"),
        (b"authorization", b"Bearer sk-ant-oat-client"),
        (b"cookie", b"c=1"),
        (b"anthropic-version", b"2023"),
    )
    path, kept, body = t.request("/v1/messages?beta=true&key=sk-ant-q", headers, BODY)
    out = for_provider(ClientRequest("POST", path, kept, body), tapp().providers[0])
    flat = repr(out.headers) + out.path
    assert b"sk-ant" not in flat.encode(), flat


# --- crashes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":5}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":true}}]}\n\n',
    b'data: {"choices":"abc"}\n\n',
    b'data: {"choices":[{"index":"0","delta":{"content":"x"}}]}\n\n',
    b'data: [1,2]\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"\\ud800"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":-1,"function":{"arguments":"[1]"}}]}}]}\n\n',  # noqa: E501
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"x\\""}}]}}]}\n\n',  # noqa: E501
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":"x"}]}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":{"a":1}}}]}}]}\n\n',  # noqa: E501
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"NaN"}}]}}]}\n\n',  # noqa: E501
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1e999999"}}]}}]}\n\n',  # noqa: E501
    b'data: {"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":"7"}}}\n\n',
    b'data: {"usage":{"prompt_tokens":1e400}}\n\n',
])  # fmt: skip
def test_malformed_chunks_dont_crash(raw: bytes) -> None:
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"content": "a"}))
    s.data(raw)
    s.data(chunk({}, "stop"))
    s.data(b"data: [DONE]\n\n")
    s.end()
    accumulate(client_bytes(s))


@pytest.mark.parametrize("message", [
    {"content": "x", "tool_calls": 5},
    {"content": "x", "tool_calls": [{"function": {"name": "a", "arguments": "[1]"}}]},
    {"content": 5},
])  # fmt: skip
def test_malformed_whole_answer_doesnt_crash(message: dict[str, object]) -> None:
    body = json.dumps(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    s = script(Delivery.WHOLE, body)
    s.start()
    s.connect()
    s.head(200, JSON)
    s.data(
        json.dumps(
            {"id": "x", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        ).encode()
    )
    s.end()
    deliver = next(a for a in s.actions if isinstance(a, Deliver))
    document = json.loads(deliver.body)
    for block in document["content"]:
        if block["type"] == "tool_use":
            assert isinstance(block["input"], dict), block


def test_count_tokens_with_lone_surrogate() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"cut emoji \\ud83d"}]}'
    s = script(Delivery.WHOLE, body, path="/v1/messages/count_tokens")
    s.start()
    assert any(isinstance(a, Deliver) for a in s.actions)


def test_deep_tool_schema_request() -> None:
    """Nested beyond the interpreter's recursion limit: refused for this provider, never a crash."""
    import sys

    schema: dict[str, object] = {"type": "object"}
    node = schema
    for _ in range(300):
        inner: dict[str, object] = {"type": "object"}
        node["properties"] = {"a": inner}
        node = inner
    body = json.dumps({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                       "tools": [{"name": "t", "input_schema": schema}]}).encode()  # fmt: skip
    t = Translation(DIALECTS["anthropic"], DIALECTS["openai-chat"])
    depth = sys.getrecursionlimit()
    sys.setrecursionlimit(400)
    try:
        with pytest.raises(NotTranslatable):
            t.request("/v1/messages", (), body)
    finally:
        sys.setrecursionlimit(depth)


def test_non_dict_arguments_in_history_request() -> None:
    body = json.dumps(
        {
            "model": "m",
            "max_tokens": 1,
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "a", "name": "t", "input": {"s": "\ud83d"}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "ok"}]},
            ],
        }
    ).encode()
    t = Translation(DIALECTS["anthropic"], DIALECTS["openai-chat"])
    t.request("/v1/messages", (), body)


@pytest.mark.parametrize("document", [
    {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": 5}]}]},
    {"messages": [{"role": "user", "content": 5}]},
    {"messages": [], "system": [{"type": "text", "text": None}]},
    {"messages": [], "system": 5},
    {"messages": [], "tools": [{"name": "t", "input_schema": {"type": "object"}, "type": None}], "tool_choice": {"type": "tool"}},  # noqa: E501
    {"messages": [], "stop_sequences": "x"},
    {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]},
])  # fmt: skip
def test_odd_requests_dont_crash(document: dict[str, object]) -> None:
    t = Translation(DIALECTS["anthropic"], DIALECTS["openai-chat"])
    t.request("/v1/messages", (), json.dumps({"model": "m", **document}).encode())


# --- first-token hold ---------------------------------------------------------------------------


def test_first_token_hold_releases_translated_head_once() -> None:
    s = script(first_token=30)
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"role": "assistant", "content": ""}))
    assert not any(isinstance(a, Stream) for a in s.actions)
    s.data(chunk({"content": "hi"}))
    assert sum(isinstance(a, Stream) for a in s.actions) == 1
    s.data(chunk({}, "stop"))
    s.data(b"data: [DONE]\n\n")
    s.end()
    message, names = accumulate(client_bytes(s))
    assert message.content[0].text == "hi" and names.count("message_start") == 1


def test_first_token_hold_tool_call_only_stream() -> None:
    s = script(first_token=30)
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"role": "assistant", "content": None}))
    s.data(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "T", "arguments": "{}"}}]}))
    s.data(chunk({}, "tool_calls"))
    s.data(b"data: [DONE]\n\n")
    s.end()
    message, _ = accumulate(client_bytes(s))
    assert message.content[0].type == "tool_use" and message.stop_reason == "tool_use"


def test_break_after_buffered_tool_call_is_not_complete() -> None:
    s = script(first_token=30)
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"content": "let me look"}))
    s.data(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "T", "arguments": "{}"}}]}))
    from addon.classify import ErrorKind

    s.error(ErrorKind.RESET, "reset")
    assert not ended_complete(s)
    assert any(isinstance(a, Cut) for a in s.actions)
    assert "error" in events(s)


# --- continuation -------------------------------------------------------------------------------


def test_continuation_onto_a_reasoning_chat_provider() -> None:
    """A broken stream continued by a translated provider that thinks first (reasoning_content or
    inline <think>): the continuation's thinking block arrives while the client's text block is open."""
    a = App(
        "claude",
        ("api.anthropic.com",),
        (
            Provider("native", "https://native.example"),
            Provider("chat", "https://api.chat.example", api_key=KEY, auth="bearer", api="openai-chat"),
        ),
        ("/v1/messages*",),
        timeouts=PLAIN_TIMEOUTS,
        continue_streams=True,
    )  # type: ignore[arg-type]
    s = Script(
        Exchange(
            a,
            DIALECTS["anthropic"],
            Delivery.STREAM,
            list(a.providers),
            (KEY,),
            body=BODY,
            path="/v1/messages",
        )
    )
    s.start()
    s.connect()
    s.head(200, SSE)
    ev = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "m1",
                    "type": "message",
                    "role": "assistant",
                    "model": "x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "The quick brown fox jumps over"},
            },
        ),
    ]
    s.data(b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in ev))
    from addon.classify import ErrorKind

    s.error(ErrorKind.RESET, "reset")
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"role": "assistant", "content": ""}))
    s.data(chunk({"reasoning_content": "I should continue the sentence."}))
    s.data(chunk({"content": " the lazy dog."}))
    s.data(chunk({}, "stop"))
    s.data(b"data: [DONE]\n\n")
    s.end()
    out = client_bytes(s)
    message, names = accumulate(out)  # noqa: RUF059
    assert (
        "".join(b.text for b in message.content if b.type == "text")
        == "The quick brown fox jumps over the lazy dog."
    )


@pytest.mark.parametrize("content_type", [b"application/json", b"text/plain", None])
def test_stream_request_answered_without_an_event_stream(content_type: bytes | None) -> None:
    """A Chat provider answers a stream request with 200 and a JSON body (an error in a 200, or a
    server that ignores `stream`), or with SSE under another content type: nothing watches it, the
    raw Chat bytes go to the Anthropic client untranslated, and finish() appends a complete, empty
    message."""
    s = script()
    s.start()
    s.connect()
    s.head(200, ((b"content-type", content_type),) if content_type else ())
    if content_type == b"application/json":
        s.data(b'{"error":{"message":"content moderation: refused","code":"sensitive"}}')
    else:
        s.data(chunk({"content": "half an answ"}))
    s.end()
    assert not ended_complete(s)
    assert b"data: {" not in client_bytes(s)  # no untranslated Chat chunk reached the Anthropic client


def test_tool_call_arguments_stream_silently() -> None:
    """While a Chat model streams a long tool call (a Write of a big file), the Anthropic client gets
    no byte at all: no input_json_delta, no ping."""
    s = script()
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(chunk({"content": "writing"}))
    before = len(client_bytes(s))
    for i in range(200):
        s.data(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "c" if i == 0 else None,
                            "function": {
                                "name": "Write" if i == 0 else None,
                                "arguments": ('{"content": "' if i == 0 else "x" * 500),
                            },
                        }
                    ]
                }
            )
        )
    assert len(client_bytes(s)) > before, "200 chunks (100 KB) of tool input and the client saw nothing"


def test_whole_200_with_an_error_document_is_not_an_empty_message() -> None:
    body = json.dumps(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    s = script(Delivery.WHOLE, body)
    s.start()
    s.connect()
    s.head(200, JSON)
    s.data(b'{"error":{"message":"Insufficient balance","type":"unknown_error"}}')
    s.end()
    deliver = next(a for a in s.actions if isinstance(a, Deliver))
    document = json.loads(deliver.body)
    assert document.get("type") != "message" or document["content"], document
