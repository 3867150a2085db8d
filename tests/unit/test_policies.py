"""Issue 16's resilience policies in the exchange, played as event scripts under a fake clock:
split first-byte limits, the first-token hold, same-provider retry, body-aware 400s and continuing
a broken stream on the next provider."""

from __future__ import annotations

import json

import pytest
from test_exchange import (
    JSON,
    SSE,
    Script,
    header,
    script,
    sse,
)

from addon.classify import ErrorKind, Outcome
from addon.exchange import Abort, Cut, Deliver, Delivery, Finish, Forward, Pick, Record, Send, Stream
from addon.model import RetrySame, Timeouts

FIRST_TOKEN = 15.0
TOKEN_TIMEOUTS = Timeouts(
    connect=10, first_byte=30, first_byte_unstreamed=300, first_token=FIRST_TOKEN, idle=120
)
MSG_START = ("message_start", {"type": "message_start", "message": {"id": "msg_primary", "content": []}})
PING = ("ping", {"type": "ping"})
TEXT_START = (
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)  # noqa: E501, RUF100


def delta(text: str, index: int = 0) -> tuple[str, dict[str, object]]:
    return (
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}},
    )  # noqa: E501, RUF100


END = (
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
    ),
    ("message_stop", {"type": "message_stop"}),
)
REQUEST = json.dumps(
    {
        "model": "claude-x",
        "stream": True,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
).encode()  # noqa: E501, RUF100


def forwarded(s: Script) -> bytes:
    return b"".join(a.data for a in s.of(Forward))


def text_of(stream: bytes) -> tuple[str, list[str]]:
    """The text an Anthropic stream carries, and its event names (a tiny accumulator; the e2e
    tests use the official SDK's)."""
    text, names = "", []
    for block in stream.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        names.append(lines["event"])
        data = json.loads(lines["data"])
        if data.get("type") == "content_block_delta":
            assert data["index"] == 0
            text += data["delta"]["text"]
    return text, names


# --- 1. the first byte: short for streams, long for whole answers ----------------------------------


@pytest.mark.parametrize(
    ("delivery", "limit"), [(Delivery.STREAM, 30.0), (Delivery.UPGRADE, 30.0), (Delivery.WHOLE, 300.0)]
)  # noqa: E501, RUF100
def test_a_streamed_request_waits_the_short_first_byte_a_whole_one_the_long(
    delivery: Delivery, limit: float
) -> None:  # noqa: E501, RUF100
    s = script(delivery, policies={"timeouts": TOKEN_TIMEOUTS})
    s.connect()
    assert s.exchange.deadline() == s.clock.now + limit
    assert s.wait(limit - 0.01) == []
    s.wait(0.01)
    assert s.records == [("primary", Outcome.TIMEOUT)]
    assert s.of(Record)[0].verdict.reason == f"timeout_first_byte: no response for {limit:g}s"
    assert s.providers_sent == ["primary", "backup"]


# --- 2. the first token ------------------------------------------------------------------------


def token_script() -> Script:
    s = script(Delivery.STREAM, policies={"timeouts": TOKEN_TIMEOUTS})
    s.connect()
    s.head(200, SSE)
    return s


def test_a_streams_head_and_pings_are_held_until_the_first_content_then_sent_at_once() -> None:
    s = token_script()
    assert not s.of(Stream)
    s.data(sse(MSG_START, PING, TEXT_START))
    assert not s.of(Stream) and not s.of(Forward)  # nothing yet: the answer may still go elsewhere
    s.data(sse(delta("hel")))
    (stream,) = s.of(Stream)
    assert header(stream, b"x-detour-provider") == b"primary"
    assert forwarded(s) == sse(MSG_START, PING, TEXT_START, delta("hel"))  # held bytes, then the token
    s.data(sse(delta("lo"), *END))
    s.end()
    assert isinstance(s.actions[-1], Finish)
    assert s.records == [("primary", Outcome.SUCCESS)]


def test_no_content_within_first_token_fails_over_before_the_client_sees_anything() -> None:
    s = token_script()
    s.data(sse(MSG_START, PING))
    assert s.exchange.deadline() == s.clock.now + FIRST_TOKEN
    assert s.wait(FIRST_TOKEN - 0.01) == []
    actions = s.wait(0.01)
    assert isinstance(actions[0], Pick)
    assert isinstance(actions[1], Abort) and actions[1].attempt.provider.id == "primary"
    assert s.records == [("primary", Outcome.TIMEOUT)]
    assert s.of(Record)[0].verdict.reason == "timeout_first_token: no content for 15s"
    assert s.providers_sent == ["primary", "backup"]
    s.connect()
    s.head(200, SSE)
    backup_start = (
        "message_start",
        {"type": "message_start", "message": {"id": "msg_backup", "content": []}},
    )
    s.data(sse(backup_start, TEXT_START, delta("hi"), *END))
    s.end()
    (stream,) = s.of(Stream)
    assert header(stream, b"x-detour-provider") == b"backup"
    assert b"msg_primary" not in forwarded(s)  # the client never saw the slow provider's events


def test_a_slow_first_token_is_kept_when_no_other_provider_would_take_the_request() -> None:
    s = script(Delivery.STREAM, "only", policies={"timeouts": TOKEN_TIMEOUTS})
    s.connect()
    s.head(200, SSE)
    s.data(sse(MSG_START))
    actions = s.wait(FIRST_TOKEN)
    assert actions[0] == Pick()  # asked for a successor; there was none
    assert not s.of(Abort) and not s.of(Record)
    # It is kept, and what it sent so far goes out: the client (and any proxy) sees it is alive.
    assert isinstance(actions[1], Stream) and forwarded(s) == sse(MSG_START)
    assert s.exchange.deadline() == s.clock.now - FIRST_TOKEN + 120  # idle from the last data now
    s.data(sse(TEXT_START, delta("late"), *END))
    s.end()
    assert s.records == [("only", Outcome.SUCCESS)]
    assert text_of(forwarded(s))[0] == "late"


def test_an_error_event_before_any_content_fails_over_instead_of_reaching_the_client() -> None:
    s = token_script()
    s.data(
        sse(
            MSG_START,
            ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )
    )  # noqa: E501, RUF100
    assert s.records == [("primary", Outcome.PROVIDER_FAILURE)]
    assert s.providers_sent == ["primary", "backup"]
    assert not s.of(Stream) and not s.of(Forward)


def test_a_chat_streams_empty_role_chunk_is_not_its_first_token() -> None:
    s = script(Delivery.STREAM, dialect="openai-chat", policies={"timeouts": TOKEN_TIMEOUTS})
    s.connect()
    s.head(200, SSE)
    role = b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    s.data(role)
    assert not s.of(Stream)
    s.data(b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n')
    assert s.of(Stream) and forwarded(s).startswith(role)


def test_an_empty_but_complete_stream_is_delivered_when_it_ends() -> None:
    s = token_script()
    s.data(
        sse(
            MSG_START,
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}}),
            ("message_stop", {"type": "message_stop"}),
        )
    )  # noqa: E501, RUF100
    s.end()
    assert s.of(Stream) and isinstance(s.actions[-1], Finish)
    assert s.records == [("primary", Outcome.SUCCESS)]


# --- 4. same-provider retry ----------------------------------------------------------------------


def retry_script(delivery: Delivery = Delivery.WHOLE) -> Script:
    return script(delivery, policies={"retry_same": RetrySame(attempts=1, max_wait=3.0, backoff=0.5)})


def fail(s: Script, status: int, retry_after: str | None = None) -> None:
    headers = JSON + (((b"retry-after", retry_after.encode()),) if retry_after else ())
    s.answer(status, b'{"error": {"message": "busy"}}', headers)


@pytest.mark.parametrize(
    ("status", "retry_after", "wait"), [(429, "2", 2.0), (503, "1", 1.0), (500, None, 0.5), (529, None, 0.5)]
)  # noqa: E501, RUF100
def test_a_short_429_or_a_5xx_is_retried_on_the_same_provider_after_the_full_wait(
    status: int, retry_after: str | None, wait: float
) -> None:  # noqa: E501, RUF100
    s = retry_script()
    fail(s, status, retry_after)
    assert s.providers_sent == ["primary"]
    assert s.exchange.deadline() == s.clock.now + wait
    assert s.wait(wait - 0.01) == []  # never sooner than asked
    assert s.wait(0.01) == [Pick(same=s.of(Send)[0].attempt.provider), s.of(Send)[-1]]
    assert s.providers_sent == ["primary", "primary"]
    s.answer(200, b'{"ok": 1}')
    assert s.records == [("primary", Outcome.PROVIDER_FAILURE), ("primary", Outcome.SUCCESS)]
    assert s.of(Deliver)[0].body == b'{"ok": 1}'


@pytest.mark.parametrize(("status", "retry_after"), [(429, "10"), (429, None), (401, None), (404, None)])
def test_a_long_wait_an_unknown_429_wait_or_a_4xx_fails_over_at_once(
    status: int, retry_after: str | None
) -> None:  # noqa: E501, RUF100
    s = retry_script()
    fail(s, status, retry_after)
    assert s.providers_sent == ["primary", "backup"]


def test_a_provider_is_retried_once_per_request_then_failed_over() -> None:
    s = retry_script()
    fail(s, 500)
    s.wait(0.5)
    fail(s, 500)
    assert s.providers_sent == ["primary", "primary", "backup"]


def test_the_client_leaving_during_the_wait_ends_the_exchange() -> None:
    from addon.exchange import ClientGone

    s = retry_script()
    fail(s, 500)
    s.feed(ClientGone(s.clock.now))
    assert s.exchange.result is not None and s.exchange.result.client_gone
    assert s.exchange.deadline() is None


# --- 5. body-aware 400s ------------------------------------------------------------------------

TOO_LONG = {
    "anthropic": {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 215000 tokens > 200000 maximum",
        },
    },  # noqa: E501, RUF100
    "openai-chat": {
        "error": {
            "message": "This model's maximum context length is 128000 tokens.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    },  # noqa: E501, RUF100
    "openai-responses": {
        "error": {
            "message": "Your input exceeds the context window of this model.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    },  # noqa: E501, RUF100
    "gemini": {
        "error": {
            "code": 400,
            "message": "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).",  # noqa: E501
            "status": "INVALID_ARGUMENT",
        }
    },  # noqa: E501, RUF100
}
STILL_CLIENT_ERRORS = {
    "anthropic": {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "messages: roles must alternate"},
    },  # noqa: E501, RUF100
    "openai-chat": {
        "error": {
            "message": "Your request was rejected by our content policy.",
            "type": "invalid_request_error",
            "code": "content_policy_violation",
        }
    },  # noqa: E501, RUF100
    "openai-responses": {
        "error": {
            "message": "Invalid value for 'input'.",
            "type": "invalid_request_error",
            "code": "invalid_value",
        }
    },  # noqa: E501, RUF100
    "gemini": {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}},
}


@pytest.mark.parametrize("dialect", sorted(TOO_LONG))
def test_too_long_for_this_providers_context_fails_over_uncharged(dialect: str) -> None:
    s = script(dialect=dialect)
    s.answer(400, json.dumps(TOO_LONG[dialect]).encode())
    assert s.providers_sent == ["primary", "backup"]
    assert s.records == [("primary", Outcome.CONTEXT_EXCEEDED)]
    assert not Outcome.CONTEXT_EXCEEDED.counts_as_failure
    s.answer(200, b'{"ok": 1}')
    assert s.of(Deliver)[0].body == b'{"ok": 1}'


@pytest.mark.parametrize("dialect", sorted(STILL_CLIENT_ERRORS))
def test_other_client_errors_still_pass_through_untouched(dialect: str) -> None:
    body = json.dumps(STILL_CLIENT_ERRORS[dialect]).encode()
    s = script(dialect=dialect)
    s.answer(400, body)
    assert s.providers_sent == ["primary"]
    assert s.records == [("primary", Outcome.CLIENT_ERROR)]
    assert (s.of(Deliver)[0].status, s.of(Deliver)[0].body) == (400, body)


def test_too_long_everywhere_gives_the_client_the_last_providers_400() -> None:
    s = script()
    s.answer(400, json.dumps(TOO_LONG["anthropic"]).encode())
    s.answer(400, json.dumps(TOO_LONG["anthropic"]).encode())
    final = s.of(Deliver)[0]
    assert final.status == 400 and b"prompt is too long" in final.body


# --- 3. continuing a broken stream ---------------------------------------------------------------


def continuing_script(**policies: object) -> Script:
    s = script(
        Delivery.STREAM,
        policies={"continue_streams": True, **policies},
        body=REQUEST,
    )
    s.connect()
    s.head(200, SSE)
    s.data(sse(MSG_START, TEXT_START, delta("Hello"), delta(" wor")))
    return s


def test_a_stream_cut_mid_text_is_continued_on_the_next_provider_with_the_text_as_prefill() -> None:
    s = continuing_script()
    s.error(ErrorKind.RESET, "connection reset")
    assert not s.of(Cut)
    (_, continuation) = s.of(Send)
    assert continuation.attempt.provider.id == "backup"
    sent = json.loads(continuation.attempt.body_override or b"")
    assert sent["messages"][-1] == {"role": "assistant", "content": "Hello wor"}
    assert "thinking" not in sent  # a prefill can't be combined with extended thinking
    s.connect()
    s.head(200, SSE)
    backup_start = (
        "message_start",
        {"type": "message_start", "message": {"id": "msg_backup", "content": []}},
    )
    s.data(sse(backup_start, TEXT_START, delta("ld!"), *END))
    s.end()
    stream = forwarded(s)
    text, names = text_of(stream)
    assert text == "Hello world!"  # the primary's part, then the backup's, once each
    assert names.count("message_start") == 1 and b"msg_backup" not in stream
    assert names.count("content_block_start") == 1 and names.count("message_stop") == 1
    assert isinstance(s.actions[-1], Finish) and len(s.of(Stream)) == 1
    assert s.records == [("primary", Outcome.CONNECT_FAILURE), ("backup", Outcome.SUCCESS)]
    result = s.exchange.result
    assert result is not None and result.continued and result.served_by is not None
    assert result.served_by.id == "backup"


def test_the_continuation_does_not_repeat_the_whitespace_the_prefill_left_out() -> None:
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello ")), SSE)  # ends without message_stop
    (_, continuation) = s.of(Send)
    assert json.loads(continuation.attempt.body_override or b"")["messages"][-1]["content"] == "Hello"
    s.answer(200, sse(MSG_START, TEXT_START, delta(" wor"), delta("ld"), *END), SSE)
    assert text_of(forwarded(s))[0] == "Hello world"


def test_a_stall_mid_text_is_continued_after_idle() -> None:
    s = continuing_script()
    s.wait(120)
    assert [a.attempt.provider.id for a in s.of(Send)] == ["primary", "backup"]
    assert s.records == [("primary", Outcome.TIMEOUT)]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "tool_use", "id": "t1", "name": "Read", "input": {}},
        {"type": "thinking", "thinking": ""},
    ],
    ids=["tool_use", "thinking"],
)
def test_a_break_inside_a_tool_call_or_thinking_is_cut_as_before(block: dict[str, object]) -> None:
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.connect()
    s.head(200, SSE)
    start = ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
    s.data(
        sse(
            MSG_START,
            start,
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": "{"},
                },
            ),
        )
    )  # noqa: E501, RUF100
    s.error(ErrorKind.RESET, "connection reset")
    assert s.providers_sent == ["primary"]
    assert isinstance(s.actions[-1], Cut)


def test_a_provider_rejecting_the_prefill_gets_the_stream_cut_with_both_reasons() -> None:
    s = continuing_script()
    s.error(ErrorKind.RESET, "connection reset")
    s.answer(400, b'{"type":"error","error":{"type":"invalid_request_error","message":"no prefill"}}')
    (cut,) = s.of(Cut)
    assert "connection reset" in cut.reason and "backup did not continue it (http 400)" in cut.reason
    assert s.records == [("primary", Outcome.CONNECT_FAILURE), ("backup", Outcome.CLIENT_ERROR)]
    assert text_of(forwarded(s))[0] == "Hello wor"  # nothing added, nothing repeated


def test_nobody_left_to_continue_cuts_the_stream() -> None:
    s = script(Delivery.STREAM, "only", policies={"continue_streams": True}, body=REQUEST)
    s.connect()
    s.head(200, SSE)
    s.data(sse(MSG_START, TEXT_START, delta("Hello")))
    s.error(ErrorKind.RESET, "connection reset")
    assert isinstance(s.actions[-1], Cut)
    result = s.exchange.result
    assert result is not None and not result.succeeded and not result.continued


def test_continue_streams_off_cuts_as_before() -> None:
    s = script(Delivery.STREAM, body=REQUEST)  # the helper's app has it off
    s.connect()
    s.head(200, SSE)
    s.data(sse(MSG_START, TEXT_START, delta("Hello")))
    s.error(ErrorKind.RESET, "connection reset")
    assert s.providers_sent == ["primary"] and isinstance(s.actions[-1], Cut)


def test_a_chat_stream_is_continued_under_the_same_completion_id() -> None:
    body = json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    s = script(Delivery.STREAM, dialect="openai-chat", policies={"continue_streams": True}, body=body)

    def chunk(cid: str, delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({'id': cid, 'choices': [choice]})}\n\n".encode()

    s.connect()
    s.head(200, SSE)
    s.data(
        chunk("c-primary", {"role": "assistant", "content": ""})
        + chunk("c-primary", {"content": "Hello wor"})
    )
    s.error(ErrorKind.RESET, "connection reset")
    (_, continuation) = s.of(Send)
    assert json.loads(continuation.attempt.body_override or b"")["messages"][-1] == {
        "role": "assistant",
        "content": "Hello wor",
    }  # noqa: E501, RUF100
    s.answer(
        200,
        chunk("c-backup", {"role": "assistant", "content": ""})
        + chunk("c-backup", {"content": "ld"})
        + chunk("c-backup", {}, "stop")
        + b"data: [DONE]\n\n",
        SSE,
    )  # noqa: E501, RUF100
    stream = forwarded(s)
    assert b"c-backup" not in stream and stream.count(b'"role"') == 1
    assert isinstance(s.actions[-1], Finish)


def continued_stream(client_part: bytes, continuation: bytes) -> bytes:
    """What the client gets when `client_part` breaks and the backup answers `continuation`."""
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, client_part, SSE)  # ends without message_stop: broken
    assert len(s.of(Send)) == 2
    s.answer(200, continuation, SSE)
    assert isinstance(s.actions[-1], Finish)
    return forwarded(s)


def indices(stream: bytes) -> list[tuple[str, int]]:
    out = []
    for block in stream.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            data = json.loads(lines["data"])
            if "index" in data:
                out.append((lines["event"], data["index"]))
    return out


def test_a_continuation_after_a_closed_text_block_is_numbered_after_it() -> None:
    client_part = sse(MSG_START, TEXT_START, delta("Done."), ("content_block_stop", {"type": "content_block_stop", "index": 0}))  # noqa: E501
    stream = continued_stream(client_part, sse(MSG_START, TEXT_START, delta(" More."), *END))
    assert indices(stream) == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
    ]  # fmt: skip


def test_a_continuation_that_starts_with_a_tool_call_closes_the_clients_text_block_first() -> None:
    tool = ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "Read", "input": {}}})  # noqa: E501
    stream = continued_stream(sse(MSG_START, TEXT_START, delta("Let me look")), sse(MSG_START, tool, *END))
    assert indices(stream) == [
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_stop", 1),
    ]  # fmt: skip


def test_a_key_in_a_continuation_is_masked_after_splicing() -> None:
    from test_exchange import SECRET

    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)  # JSON escapes hide it until re-encoded
    raw = f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{escaped}"}}}}\n\n'  # noqa: E501
    stream = continued_stream(sse(MSG_START, TEXT_START, delta("key:")), sse(MSG_START, TEXT_START) + raw.encode() + sse(*END))  # noqa: E501
    assert SECRET.encode() not in stream
    assert "key:***" in text_of(stream)[0]
