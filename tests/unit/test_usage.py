"""Usage accounting, table by table: what each dialect's streams and bodies report (`formats/usage`),
what an attempt costs and how attempts add up (`addon/usage`).

The streams and bodies are recorded by us in each API's documented shape, with cache and reasoning
tokens; the official SDKs' own accumulators read the same bytes and must agree with the counts.
Cut streams report what arrived and nothing more: a count that never came is None, not 0.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import anthropic
import openai
import pytest

from addon.formats import DIALECTS
from addon.formats.usage import Tokens
from addon.model import Config, Price, Provider
from addon.state.base import AttemptRecord
from addon.usage import JSON_KEYS, Pricing, cost, flow_summary, parse_window, table, totals


def sse(*events: tuple[str | None, dict[str, Any] | str]) -> bytes:
    out = b""
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out += (f"event: {name}\n" if name else "").encode() + f"data: {text}\n\n".encode()
    return out


# --- recorded streams and bodies --------------------------------------------------------------

ANTHROPIC_USAGE_START = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 30000,
    "output_tokens": 1,
}
ANTHROPIC_MESSAGE = {
    "id": "msg_01Usage",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": ANTHROPIC_USAGE_START,
}
ANTHROPIC_HEAD = sse(
    ("message_start", {"type": "message_start", "message": ANTHROPIC_MESSAGE}),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    ),
)
ANTHROPIC_STREAM = ANTHROPIC_HEAD + sse(
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 345},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)
#: Newer streams repeat every count, cumulative, in `message_delta`.
ANTHROPIC_CUMULATIVE = ANTHROPIC_HEAD + sse(
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 2000,
                "cache_read_input_tokens": 30000,
                "output_tokens": 346,
            },
        },
    ),
    ("message_stop", {"type": "message_stop"}),
)


def chat_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {
        "id": "chatcmpl-usage1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": choices,
        **extra,
    }


CHAT_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 128},
}
CHAT_HEAD = sse(
    (None, chat_chunk({"role": "assistant", "content": ""})),
    (None, chat_chunk({"content": "Hello"})),
)
CHAT_STREAM = CHAT_HEAD + sse(
    (None, chat_chunk({}, "stop")),
    (None, {**chat_chunk({}), "choices": [], "usage": CHAT_USAGE}),
    (None, "[DONE]"),
)
#: A native client that didn't ask for `stream_options.include_usage`: no usage at all.
CHAT_STREAM_WITHOUT_USAGE = CHAT_HEAD + sse((None, chat_chunk({}, "stop")), (None, "[DONE]"))

RESPONSES_USAGE = {
    "input_tokens": 5000,
    "input_tokens_details": {"cached_tokens": 4096},
    "output_tokens": 800,
    "output_tokens_details": {"reasoning_tokens": 512},
    "total_tokens": 5800,
}


def response(status: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": "resp_usage1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "gpt-5-codex",
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


MESSAGE_ITEM = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}
RESPONSES_HEAD = sse(
    (
        "response.created",
        {"type": "response.created", "sequence_number": 0, "response": response("in_progress", None)},
    ),
    (
        "response.output_item.added",
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": MESSAGE_ITEM},
    ),
    (
        "response.content_part.added",
        {
            "type": "response.content_part.added",
            "sequence_number": 2,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []},
        },
    ),
    (
        "response.output_text.delta",
        {
            "type": "response.output_text.delta",
            "sequence_number": 3,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello",
        },
    ),
)
DONE_PART = {"type": "output_text", "text": "Hello", "annotations": []}
DONE_ITEM = {**MESSAGE_ITEM, "status": "completed", "content": [DONE_PART]}
RESPONSES_STREAM = RESPONSES_HEAD + sse(
    (
        "response.output_text.done",
        {
            "type": "response.output_text.done",
            "sequence_number": 4,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "text": "Hello",
        },
    ),
    (
        "response.content_part.done",
        {
            "type": "response.content_part.done",
            "sequence_number": 5,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "part": DONE_PART,
        },
    ),
    (
        "response.output_item.done",
        {"type": "response.output_item.done", "sequence_number": 6, "output_index": 0, "item": DONE_ITEM},
    ),
    (
        "response.completed",
        {
            "type": "response.completed",
            "sequence_number": 7,
            "response": {**response("completed", RESPONSES_USAGE), "output": [DONE_ITEM]},
        },
    ),
)


def gemini_chunk(text: str, usage: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": "gemini-2.5-pro",
        "responseId": "gemini-r1",
    }


GEMINI_FINAL_USAGE = {
    "promptTokenCount": 4000,
    "cachedContentTokenCount": 3000,
    "candidatesTokenCount": 50,
    "thoughtsTokenCount": 200,
    "totalTokenCount": 4250,
}
GEMINI_HEAD = sse((None, gemini_chunk("Hel", {"promptTokenCount": 4000, "totalTokenCount": 4000})))
GEMINI_STREAM = GEMINI_HEAD + sse((None, gemini_chunk("lo", GEMINI_FINAL_USAGE, "STOP")))


def stream_tokens(dialect: str, stream: bytes, piece: int = 7) -> Tokens | None:
    """Feeds the stream to its dialect's watch in small pieces, as the network splits it."""
    watch = DIALECTS[dialect].watch()
    for start in range(0, len(stream), piece):
        watch.feed(stream[start : start + piece])
    return watch.meter.tokens()


STREAMS = [
    # dialect, stream, expected: (fresh input, cache read, cache write, output, reasoning, id, model)
    ("anthropic", ANTHROPIC_STREAM, Tokens(12, 30000, 2000, 345, None, "msg_01Usage", "claude-sonnet-4-5")),
    (
        "anthropic",
        ANTHROPIC_CUMULATIVE,
        Tokens(12, 30000, 2000, 346, None, "msg_01Usage", "claude-sonnet-4-5"),
    ),
    ("openai-chat", CHAT_STREAM, Tokens(176, 1024, 0, 300, 128, "chatcmpl-usage1", "gpt-4o")),
    (
        "openai-chat",
        CHAT_STREAM_WITHOUT_USAGE,
        Tokens(None, None, None, None, None, "chatcmpl-usage1", "gpt-4o"),
    ),
    ("openai-responses", RESPONSES_STREAM, Tokens(904, 4096, 0, 800, 512, "resp_usage1", "gpt-5-codex")),
    ("gemini", GEMINI_STREAM, Tokens(1000, 3000, 0, 250, 200, "gemini-r1", "gemini-2.5-pro")),
    # cut before the usage arrived: what came is kept, what didn't is unknown
    ("anthropic", ANTHROPIC_HEAD, Tokens(12, 30000, 2000, None, None, "msg_01Usage", "claude-sonnet-4-5")),
    ("openai-chat", CHAT_HEAD, Tokens(None, None, None, None, None, "chatcmpl-usage1", "gpt-4o")),
    ("openai-responses", RESPONSES_HEAD, Tokens(None, None, None, None, None, "resp_usage1", "gpt-5-codex")),
    ("gemini", GEMINI_HEAD, Tokens(4000, 0, 0, None, None, "gemini-r1", "gemini-2.5-pro")),
    # cut before anything that says a word about usage
    ("anthropic", b"event: ping\ndata: {}\n\n", None),
    ("openai-responses", b"", None),
]


@pytest.mark.parametrize(("dialect", "stream", "expected"), STREAMS)
def test_a_stream_reports_its_tokens(dialect: str, stream: bytes, expected: Tokens | None) -> None:
    assert stream_tokens(dialect, stream) == expected


def test_the_stream_is_read_the_same_however_it_is_split() -> None:
    for dialect, stream, expected in STREAMS:
        assert stream_tokens(dialect, stream, piece=1) == expected
        assert stream_tokens(dialect, stream, piece=len(stream) or 1) == expected


ANTHROPIC_BODY = {
    **ANTHROPIC_MESSAGE,
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "usage": {**ANTHROPIC_USAGE_START, "output_tokens": 345},
}
CHAT_BODY = {
    "id": "chatcmpl-usage1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": CHAT_USAGE,
}
DEEPSEEK_BODY = {
    **CHAT_BODY,
    "model": "deepseek-chat",
    "usage": {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "prompt_cache_hit_tokens": 64,
        "prompt_cache_miss_tokens": 36,
    },
}
RESPONSES_BODY = response("completed", RESPONSES_USAGE)
GEMINI_BODY = gemini_chunk("Hello", GEMINI_FINAL_USAGE, "STOP")

BODIES = [
    ("anthropic", ANTHROPIC_BODY, Tokens(12, 30000, 2000, 345, None, "msg_01Usage", "claude-sonnet-4-5")),
    ("openai-chat", CHAT_BODY, Tokens(176, 1024, 0, 300, 128, "chatcmpl-usage1", "gpt-4o")),
    ("openai-chat", DEEPSEEK_BODY, Tokens(36, 64, 0, 20, None, "chatcmpl-usage1", "deepseek-chat")),
    ("openai-responses", RESPONSES_BODY, Tokens(904, 4096, 0, 800, 512, "resp_usage1", "gpt-5-codex")),
    ("gemini", GEMINI_BODY, Tokens(1000, 3000, 0, 250, 200, "gemini-r1", "gemini-2.5-pro")),
    # streamGenerateContent without alt=sse answers with a JSON array of its chunks
    (
        "gemini",
        [gemini_chunk("Hel", {"promptTokenCount": 4000}), GEMINI_BODY],
        Tokens(1000, 3000, 0, 250, 200, "gemini-r1", "gemini-2.5-pro"),
    ),
    # no usage in the body: nothing is known
    ("anthropic", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, None),
    ("openai-chat", {"error": {"message": "rate limited", "type": "rate_limit_exceeded"}}, None),
    ("openai-responses", "not json", None),
    ("gemini", {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}, None),
]


@pytest.mark.parametrize(("dialect", "body", "expected"), BODIES)
def test_a_whole_answer_reports_its_tokens(dialect: str, body: object, expected: Tokens | None) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    assert DIALECTS[dialect].body_tokens(raw) == expected


def test_a_count_that_is_not_a_count_is_unknown() -> None:
    body = {**CHAT_BODY, "usage": {"prompt_tokens": "12", "completion_tokens": -3, "total_tokens": True}}
    tokens = DIALECTS["openai-chat"].body_tokens(json.dumps(body).encode())
    assert tokens is not None and tokens.input is None and tokens.output is None


def test_the_requested_model_comes_from_the_body_or_the_gemini_path() -> None:
    body = json.dumps({"model": "claude-opus-4-1", "messages": [{"role": "user", "content": '"model": "x"'}]})
    assert DIALECTS["anthropic"].requested_model("/v1/messages", body.encode()) == "claude-opus-4-1"
    late = b'{"messages": [{"model": "inner"}], "max_tokens": 5, "model": "gpt-5"}'
    assert DIALECTS["openai-chat"].requested_model("/v1/chat/completions", late) == "gpt-5"
    assert DIALECTS["openai-chat"].requested_model("/v1/chat/completions", b"[1, 2]") == ""
    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert DIALECTS["gemini"].requested_model(path, b"{}") == "gemini-2.5-pro"


# --- the official SDKs read the same bytes --------------------------------------------------------


def sdk_http_client(sdk: str, status: int, body: bytes, content_type: str) -> Any:
    """An HTTP client of the SDK's own httpx (httpx2 in newer SDKs) that answers every request
    with `body`: the SDK parses and accumulates it exactly as it would a provider's answer."""
    base = importlib.import_module(f"{sdk}._base_client")
    httpx: Any = getattr(base, "httpx2", None) or base.httpx

    def answer(request: Any) -> Any:
        return httpx.Response(status, headers={"content-type": content_type}, content=body)

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_the_anthropic_sdk_accumulates_the_same_counts() -> None:
    ours = stream_tokens("anthropic", ANTHROPIC_STREAM)
    client = anthropic.Anthropic(
        api_key="k",
        base_url="http://sdk.test",
        max_retries=0,
        http_client=sdk_http_client("anthropic", 200, ANTHROPIC_STREAM, "text/event-stream"),
    )
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=[]) as stream:
        usage = stream.get_final_message().usage
    assert ours is not None
    assert (usage.input_tokens, usage.output_tokens) == (ours.input, ours.output)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (
        ours.cache_read,
        ours.cache_write,
    )


def test_the_openai_sdk_reads_the_same_chat_counts() -> None:
    ours = stream_tokens("openai-chat", CHAT_STREAM)
    client = openai.OpenAI(
        api_key="k",
        base_url="http://sdk.test/v1",
        max_retries=0,
        http_client=sdk_http_client("openai", 200, CHAT_STREAM, "text/event-stream"),
    )
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=[], stream=True))
    usage = chunks[-1].usage
    assert ours is not None and usage is not None
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else None
    assert (usage.prompt_tokens - (cached or 0), cached, usage.completion_tokens) == (
        ours.input,
        ours.cache_read,
        ours.output,
    )
    assert reasoning == ours.reasoning


def test_the_openai_sdk_reads_the_same_responses_counts() -> None:
    ours = stream_tokens("openai-responses", RESPONSES_STREAM)
    client = openai.OpenAI(
        api_key="k",
        base_url="http://sdk.test/v1",
        max_retries=0,
        http_client=sdk_http_client("openai", 200, RESPONSES_STREAM, "text/event-stream"),
    )
    with client.responses.stream(model="gpt-5-codex", input="hi") as stream:
        usage = stream.get_final_response().usage
    assert ours is not None and usage is not None
    cached = usage.input_tokens_details.cached_tokens
    assert (usage.input_tokens - cached, cached, usage.output_tokens) == (
        ours.input,
        ours.cache_read,
        ours.output,
    )
    assert usage.output_tokens_details.reasoning_tokens == ours.reasoning


def test_the_sdks_parse_the_whole_bodies_with_the_same_counts() -> None:
    message = anthropic.types.Message.model_validate(ANTHROPIC_BODY)
    assert message.usage.input_tokens == 12 and message.usage.cache_read_input_tokens == 30000
    completion = openai.types.chat.ChatCompletion.model_validate(CHAT_BODY)
    assert completion.usage is not None and completion.usage.prompt_tokens == 176 + 1024


# --- prices and totals --------------------------------------------------------------------------

SONNET = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75)


def record(
    provider: str = "backup",
    model: str = "claude-sonnet-4-5",
    outcome: str = "success",
    status: int | None = 200,
    tokens: Tokens | None = None,
    latency: float = 100.0,
    app: str = "claude",
) -> AttemptRecord:
    tokens = tokens or Tokens()
    return AttemptRecord(
        0.0,
        app,
        provider,
        status,
        outcome,
        latency,
        "",
        model=model,
        input_tokens=tokens.input,
        cache_read_tokens=tokens.cache_read,
        cache_write_tokens=tokens.cache_write,
        output_tokens=tokens.output,
        reasoning_tokens=tokens.reasoning,
    )


def config(*prices: tuple[str, Price], multiplier: float = 1.0) -> Config:
    from pathlib import Path

    from addon.model import App

    providers = (Provider("primary", "https://p.example"), Provider("backup", "https://b.example"))
    app = App("claude", ("api.anthropic.com",), providers, ("/v1/messages*",))
    multipliers = ((("claude", "backup"), multiplier),)
    return Config(Path("c.yaml"), Path("s.db"), (app,), prices=prices, price_multipliers=multipliers)


def test_cost_is_each_kind_of_token_at_its_price() -> None:
    rec = record(tokens=Tokens(1_000_000, 2_000_000, 100_000, 10_000))
    assert cost(rec, SONNET) == pytest.approx(3.0 + 0.6 + 0.375 + 0.15)
    assert cost(rec, SONNET, 0.5) == pytest.approx((3.0 + 0.6 + 0.375 + 0.15) / 2)
    # a cache price not listed is charged as input
    assert cost(rec, Price(3.0, 15.0)) == pytest.approx(3.0 + 6.0 + 0.3 + 0.15)


def test_unknown_tokens_or_an_unknown_price_cost_unknown_never_zero() -> None:
    assert cost(record(tokens=Tokens(10, 0, 0, None)), SONNET) is None
    assert cost(record(tokens=Tokens(10, 0, 0, 5)), None) is None
    pricing = Pricing(config(("claude-*", SONNET)), table=lambda r: None)
    assert pricing(record(model="glm-4.6", tokens=Tokens(10, 0, 0, 5))) is None
    assert pricing(record(model="claude-sonnet-4-5", tokens=Tokens(10, 0, 0, 5))) == pytest.approx(105e-6)


def test_the_first_matching_glob_prices_and_the_provider_multiplier_applies() -> None:
    cheap = Price(1.0, 1.0)
    pricing = Pricing(
        config(("claude-sonnet-*", SONNET), ("claude-*", cheap), multiplier=2.0), table=lambda r: None
    )
    assert pricing(record(tokens=Tokens(1_000_000, 0, 0, 0))) == pytest.approx(6.0)
    assert pricing(record(provider="primary", tokens=Tokens(1_000_000, 0, 0, 0))) == pytest.approx(3.0)
    assert (
        pricing(record(model="claude-haiku-4-5", provider="primary", tokens=Tokens(1_000_000, 0, 0, 0)))
        == 1.0
    )


def test_the_price_table_is_asked_only_for_models_without_a_configured_price() -> None:
    asked: list[str] = []

    def table(rec: AttemptRecord) -> float | None:
        asked.append(rec.model)
        return 0.25

    pricing = Pricing(config(("claude-*", SONNET), multiplier=2.0), table=table)
    assert pricing(record(model="gpt-5", tokens=Tokens(1, 0, 0, 1))) == 0.5
    pricing(record(tokens=Tokens(1, 0, 0, 1)))
    assert asked == ["gpt-5"]


def test_totals_add_up_per_app_provider_and_model() -> None:
    pricing = Pricing(config(("claude-*", SONNET)), table=lambda r: None)
    rows = [
        record("primary", outcome="provider_failure", status=529, latency=20.0),
        record("backup", tokens=Tokens(100, 1000, 0, 10, None), latency=300.0),
        record("primary", outcome="provider_failure", status=529, latency=30.0),
        record("backup", tokens=Tokens(200, 0, 500, 20, None), latency=100.0),
        record("backup", model="glm-4.6", tokens=Tokens(5, 0, 0, 5)),
    ]
    groups = totals(rows, pricing)
    assert [g.as_json() for g in groups] == [
        {
            "app": "claude",
            "provider": "primary",
            "model": "claude-sonnet-4-5",
            "requests": 2,
            "failures": 2,
            "input_tokens": None,
            "cache_read_tokens": None,
            "cache_write_tokens": None,
            "output_tokens": None,
            "reasoning_tokens": None,
            "cost_usd": 0.0,
        },
        {
            "app": "claude",
            "provider": "backup",
            "model": "claude-sonnet-4-5",
            "requests": 2,
            "failures": 0,
            "input_tokens": 300,
            "cache_read_tokens": 1000,
            "cache_write_tokens": 500,
            "output_tokens": 30,
            "reasoning_tokens": None,
            "cost_usd": round((300 * 3 + 1000 * 0.3 + 500 * 3.75 + 30 * 15) / 1e6, 10),
        },
        {
            "app": "claude",
            "provider": "backup",
            "model": "glm-4.6",
            "requests": 1,
            "failures": 0,
            "input_tokens": 5,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "output_tokens": 5,
            "reasoning_tokens": None,
            "cost_usd": None,
        },
    ]
    assert list(groups[0].as_json()) == list(JSON_KEYS)
    assert groups[1].p50_ms == 200.0 and groups[1].success_rate == 1.0


def test_a_cut_stream_makes_its_total_cost_unknown_but_a_refused_attempt_does_not() -> None:
    pricing = Pricing(config(("claude-*", SONNET)), table=lambda r: None)
    cut = record(outcome="connect_failure", status=200, tokens=Tokens(100, 0, 0, None))
    refused = record(outcome="connect_failure", status=None)
    (group,) = totals([record(tokens=Tokens(100, 0, 0, 10)), refused], pricing)
    assert group.cost_usd is not None and group.failures == 1
    (group,) = totals([record(tokens=Tokens(100, 0, 0, 10)), cut], pricing)
    # what is known is exact; what isn't is not passed off as a total
    assert group.cost_usd is None and group.total("input_tokens") == 200
    assert group.total("output_tokens") is None
    assert group.as_json()["output_tokens"] is None and group.shown("output_tokens") == "≥10"
    assert "≥10" in table([group]).splitlines()[1]


def test_the_table_reads_well() -> None:
    pricing = Pricing(config(("claude-*", SONNET)), table=lambda r: None)
    text = table(
        totals(
            [record(tokens=Tokens(1234, 0, 0, 56)), record("primary", outcome="timeout", status=None)],
            pricing,
        )
    )
    lines = text.splitlines()
    assert lines[0].split() == [
        "app",
        "provider",
        "model",
        "requests",
        "ok",
        "p50",
        "input",
        "cached",
        "output",
        "reasoning",
        "cost",
    ]
    assert lines[1].split()[:5] == ["claude", "backup", "claude-sonnet-4-5", "1", "100%"]
    assert "1,234" in lines[1] and "$0.0045" in lines[1]
    assert lines[-1] == "total: 2 requests, cost $0.00454"
    assert table([]) == "no attempts in this window"


def test_a_flow_summary_says_tokens_and_cost() -> None:
    summary = flow_summary(Tokens(1234, 30000, 0, 56), 0.0123)
    assert summary == "1,234 in (+30,000 cached) / 56 out tokens, $0.0123"
    assert flow_summary(Tokens(10, 0, 0, None), None) == "10 in / ? out tokens, cost unknown"
    assert flow_summary(None, None) == "tokens not reported"
    assert flow_summary(Tokens(10, 0, 0, 5), 0.000105) == "10 in / 5 out tokens, $0.000105"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600.0), ("24h", 86400.0), ("7d", 604800.0), (" 30m ", 1800.0), ("1.5h", 5400.0)],
)
def test_a_window_is_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1w", "-1h", "0h", "400d", "1h30m"])
def test_a_bad_window_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="window must be"):
        parse_window(text)


def test_the_optional_price_table_prices_models_the_config_leaves_out() -> None:
    """`genai-prices` (the `prices` extra; installed for tests on Python 3.12 + mitmproxy 12 only)."""
    pytest.importorskip("genai_prices")
    pricing = Pricing(config(multiplier=2.0))
    thousand = Tokens(1000, 1000, 0, 1000)  # below the long-context tier: $3 in, $0.30 cached, $15 out
    assert pricing(record("primary", tokens=thousand)) == pytest.approx((3.0 + 0.3 + 15.0) / 1000)
    assert pricing(record("backup", tokens=thousand)) == pytest.approx((3.0 + 0.3 + 15.0) / 1000 * 2)
    assert pricing(record(model="detour-unpriced-test-model", tokens=thousand)) is None
    assert pricing(record(tokens=Tokens(1_000_000, 0, 0, None))) is None
