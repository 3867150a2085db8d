"""The dialect registry: the shared SSE parser (checked against the anthropic SDK's own decoder),
each dialect's stream ends and in-stream errors, and error bodies parsed by the official SDKs."""

from __future__ import annotations

import importlib
import json

import anthropic
import openai
import pytest
from anthropic._streaming import SSEDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.formats import DIALECTS, FAMILIES, dialect_for
from addon.formats.base import json_true
from addon.formats.sse import MAX_EVENT_BYTES, SSEEvent, SSEParser

_httpx = (
    getattr(importlib.import_module("anthropic._base_client"), "httpx2", None)
    or importlib.import_module("anthropic._base_client").httpx
)
_ohttpx = (
    getattr(importlib.import_module("openai._base_client"), "httpx2", None)
    or importlib.import_module("openai._base_client").httpx
)


def parse(*chunks: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


# --- the SSE parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"event: a\ndata: 1\n\n"], [("a", "1")]),
        ([b"event: a\r\ndata: 1\r\n\r\n"], [("a", "1")]),
        ([b"event: a\rdata: 1\r\r"], [("a", "1")]),
        ([b"event: a\r", b"\ndata: 1\r", b"\n\r\n"], [("a", "1")]),
        ([b"data: 1\ndata: 2\n\n"], [("message", "1\n2")]),
        ([b": keep-alive\n\n", b"data:x\n\n"], [("message", "x")]),
        ([b"data: [DONE]\n\n"], [("message", "[DONE]")]),
        ([b"event: lonely\n\n"], [("lonely", "")]),  # as the SDKs' decoders do
        ([b"data: unfinished"], []),  # no blank line: never dispatched
        (
            ["data: caf\u00e9 \u2603\n\n".encode()[:9], "data: caf\u00e9 \u2603\n\n".encode()[9:]],
            [("message", "caf\u00e9 \u2603")],
        ),
    ],
    ids=[
        "lf",
        "crlf",
        "cr",
        "crlf-split",
        "multi-data",
        "comment",
        "done",
        "no-data",
        "unterminated",
        "split-utf8",
    ],
)
def test_sse_parser(chunks: list[bytes], expected: list[tuple[str, str]]) -> None:
    assert [(e.event, e.data) for e in parse(*chunks)] == expected


def test_a_runaway_event_is_dropped_and_the_parser_resynchronises() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: " + b"x" * (MAX_EVENT_BYTES + 10)) == []
    assert parser.feed(b"more\n\ndata: ok\n\n") == [SSEEvent("message", "ok")]


STREAM_TEXT = st.lists(
    st.sampled_from(
        [b"event: e\n", b"data: d\n", b"data: \xc3\xa9\n", b": c\n", b"\n", b"\r\n", b"data:x\r\n"]
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(parts=STREAM_TEXT, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_sse_parser_agrees_with_the_anthropic_sdk_decoder(parts: list[bytes], cuts: list[int]) -> None:
    """Whatever the chunking, the events are those the SDK's decoder sees in the whole stream (`id`
    and `retry` fields left out: no model API uses them, and the SDK keeps `id` across events)."""
    stream = b"".join(parts) + b"\n\n"
    points = sorted({c for c in cuts if c < len(stream)})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    ours = [(e.event, e.data) for e in parse(*chunks)]
    theirs = [(e.event or "message", e.data) for e in SSEDecoder().iter_bytes(iter([stream]))]
    assert ours == theirs


# --- stream ends and errors per dialect ----------------------------------------------------------


def sse(*events: tuple[str | None, object]) -> bytes:
    out = b""
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode()
    return out


ANTHROPIC_OK = sse(
    ("message_start", {"type": "message_start"}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "hi"}}),
    ("message_stop", {"type": "message_stop"}),
)
CHAT_OK = sse(
    (None, {"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
    (None, {"choices": [{"delta": {"content": "hi"}, "finish_reason": None}]}),
    (None, {"choices": [{"delta": {}, "finish_reason": "stop"}]}),
    (None, {"choices": [], "usage": {"prompt_tokens": 1}}),
)
RESPONSES = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.output_item.done",
]
GEMINI_OK = sse(
    (None, {"candidates": [{"content": {"parts": [{"text": "hi"}]}}]}),
    (
        None,
        {
            "candidates": [{"content": {"parts": [{"text": "!"}]}, "finishReason": "STOP"}],
            "usageMetadata": {},
        },
    ),
)


def responses(*names: str) -> bytes:
    return sse(*((n, {"type": n}) for n in names))


@pytest.mark.parametrize(
    ("dialect", "body", "complete", "error"),
    [
        ("anthropic", ANTHROPIC_OK, True, False),
        ("anthropic", ANTHROPIC_OK.rsplit(b"event: message_stop", 1)[0], False, False),
        ("anthropic", sse(("error", {"type": "error", "error": {"type": "overloaded_error"}})), False, True),
        ("anthropic", ANTHROPIC_OK.replace(b"event: ", b"x-ignored: "), True, False),  # unnamed: by `type`
        ("openai-chat", CHAT_OK + b"data: [DONE]\n\n", True, False),
        ("openai-chat", CHAT_OK, True, False),  # no [DONE], but finished: complete (issue 16.7)
        ("openai-chat", CHAT_OK.split(b'"finish_reason": "stop"')[0], False, False),
        ("openai-chat", sse((None, {"error": {"message": "overloaded"}})), False, True),
        ("openai-responses", responses(*RESPONSES, "response.completed"), True, False),
        ("openai-responses", responses(*RESPONSES, "response.incomplete"), True, False),
        ("openai-responses", responses(*RESPONSES), False, False),
        ("openai-responses", responses(*RESPONSES, "response.failed"), False, True),
        ("openai-responses", responses("error"), False, True),
        (
            "openai-responses",
            sse(*((None, {"type": n}) for n in [*RESPONSES, "response.completed"])),
            True,
            False,
        ),
        ("gemini", GEMINI_OK, True, False),
        ("gemini", GEMINI_OK.split(b'"finishReason"')[0], False, False),
        (
            "gemini",
            sse((None, {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})),
            False,
            True,
        ),
    ],
)
def test_stream_watch(dialect: str, body: bytes, complete: bool, error: bool) -> None:
    watch = DIALECTS[dialect].watch()
    for i in range(0, len(body), 7):  # in awkward pieces, as the network delivers it
        watch.feed(body[i : i + 7])
    assert watch.complete is complete
    assert (watch.error is not None) is error


def test_content_started_only_with_content() -> None:
    watch = DIALECTS["anthropic"].watch()
    watch.feed(sse(("message_start", {"type": "message_start"}), ("ping", {"type": "ping"})))
    assert not watch.content_started
    watch.feed(sse(("content_block_delta", {"type": "content_block_delta"})))
    assert watch.content_started


def test_a_text_that_mentions_an_end_marker_is_not_one() -> None:
    watch = DIALECTS["anthropic"].watch()
    watch.feed(sse(("content_block_delta", {"delta": {"text": "event: message_stop\n\ndata: [DONE]"}})))
    assert not watch.complete


# --- the registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "path", "dialect"),
    [
        ("anthropic", "/v1/messages?beta=true", "anthropic"),
        ("openai", "/v1/chat/completions", "openai-chat"),
        ("openai", "/v1/responses", "openai-responses"),
        ("openai", "/v1/responses/resp_1/cancel", "openai-responses"),
        ("openai", "/v1/embeddings", "openai-chat"),
        ("gemini", "/v1beta/models/g:streamGenerateContent?alt=sse", "gemini"),
    ],
)
def test_dialect_for(family: str, path: str, dialect: str) -> None:
    assert dialect_for(family, path).name == dialect


def test_every_dialect_belongs_to_one_family() -> None:
    assert sorted(d.name for ds in FAMILIES.values() for d in ds) == sorted(DIALECTS)


@pytest.mark.parametrize(
    ("dialect", "path", "body", "streams"),
    [
        ("anthropic", "/v1/messages", b'{"model":"m","stream":true}', True),
        ("anthropic", "/v1/messages", b'{"model":"m", "stream" : true}', True),
        ("anthropic", "/v1/messages", b'{"model":"m","stream":false}', False),
        ("anthropic", "/v1/messages", b'{"model":"m"}', False),
        ("anthropic", "/v1/messages", b'{"messages":[{"content":"say \\"stream\\": true"}]}', False),
        ("openai-responses", "/v1/responses", b'{"stream":true}', True),
        ("gemini", "/v1beta/models/g:streamGenerateContent?alt=sse", b"{}", True),
        ("gemini", "/v1beta/models/g:generateContent", b'{"stream":true}', False),
    ],
)
def test_stream_requests(dialect: str, path: str, body: bytes, streams: bool) -> None:
    assert DIALECTS[dialect].is_stream_request(path, body) is streams


def test_json_true_is_bounded_and_exact() -> None:
    assert not json_true(b'"stream"' * 10_000, b'"stream"')
    assert json_true(b'{"x": "stream", "stream":\ttrue}', b'"stream"')


# --- error bodies, as the official SDKs read them --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (503, anthropic.InternalServerError, "overloaded_error"),
        (504, anthropic.InternalServerError, "api_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
    ],
)
def test_anthropic_error_bodies_parse_as_the_sdks_errors(status: int, error_class: type, kind: str) -> None:
    body = DIALECTS["anthropic"].error_body(status, "every provider failed")
    client = anthropic.Anthropic(api_key="x", base_url="http://127.0.0.1:9")
    request = _httpx.Request("POST", "http://127.0.0.1:9/v1/messages")
    response = _httpx.Response(
        status, content=body, headers={"content-type": "application/json"}, request=request
    )
    error = client._make_status_error_from_response(response)
    assert isinstance(error, error_class)
    assert error.body == {"type": "error", "error": {"type": kind, "message": "every provider failed"}}


@pytest.mark.parametrize("dialect", ["openai-chat", "openai-responses"])
@pytest.mark.parametrize(
    ("status", "error_class"),
    [(429, openai.RateLimitError), (503, openai.InternalServerError), (403, openai.PermissionDeniedError)],
)
def test_openai_error_bodies_parse_as_the_sdks_errors(dialect: str, status: int, error_class: type) -> None:
    body = DIALECTS[dialect].error_body(status, "every provider failed")
    client = openai.OpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    request = _ohttpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    response = _ohttpx.Response(
        status, content=body, headers={"content-type": "application/json"}, request=request
    )
    error = client._make_status_error_from_response(response)
    assert isinstance(error, error_class)
    assert "every provider failed" in error.message
    assert error.code == error.type


def test_gemini_error_body_is_googles_shape() -> None:
    document = json.loads(DIALECTS["gemini"].error_body(429, "slow down"))
    assert document == {"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}
