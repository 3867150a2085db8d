"""The resilience policies attacked (the adversarial review of issue 16): lone surrogates, half
events and whitespace at the splice, keys reaching the next provider in a prefill, chains of breaks,
and a model list that answers while the provider's real requests fail."""

from __future__ import annotations

import json

from fakeclock import FakeClock
from test_exchange import SECRET, SSE, script, sse
from test_policies import END, MSG_START, REQUEST, TEXT_START, delta, forwarded

from addon.breaker import CircuitBreaker, State
from addon.classify import ErrorKind, Outcome
from addon.exchange import Cut, Delivery, Finish, Release, Send, Stream
from addon.formats.sse import SSEParser
from addon.model import BreakerPolicy


def client_view(stream: bytes) -> tuple[str, list[str]]:
    """What an SSE client (WHATWG parser, like the SDKs') reconstructs; raises on a bad event."""
    text, names = "", []
    for event in SSEParser().feed(stream):
        names.append(event.event)
        data = json.loads(event.data)  # an SDK raises here too
        if data.get("type") == "content_block_delta":
            text += data["delta"]["text"]
    return text, names


def test_partial_event_at_clean_end_is_forwarded_then_continuation_is_glued_onto_it() -> None:
    """A provider whose body ends cleanly mid-event (close-delimited body, proxy truncation):
    the half event is forwarded, then the continuation's events are appended to it."""
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    partial = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" wor'  # noqa: E501
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello")) + partial, SSE)
    assert len(s.of(Send)) == 2  # continued
    s.answer(200, sse(MSG_START, TEXT_START, delta(" world"), *END), SSE)
    assert isinstance(s.actions[-1], Finish)
    text, names = client_view(forwarded(s))  # every event parses: nothing was glued together
    assert text == "Hello world" and names.count("message_stop") == 1


def test_partial_event_line_complete_but_no_blank_line_merges_events() -> None:
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    partial = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" wor"}}\n'  # noqa: E501
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello")) + partial, SSE)
    s.answer(200, sse(MSG_START, TEXT_START, delta(" world"), *END), SSE)
    text, _ = client_view(forwarded(s))
    assert text == "Hello world"


def test_whitespace_skip_eats_meaningful_indentation() -> None:
    """Client got 'def f():\\n'; prefill 'def f():'; the model continues '\\n    return 1'.
    Only the trimmed '\\n' may be dropped, not the indentation."""
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("```python\ndef f():\n")), SSE)
    s.answer(200, sse(MSG_START, TEXT_START, delta("\n    return 1\n```"), *END), SSE)
    text, _ = client_view(forwarded(s))
    assert text == "```python\ndef f():\n    return 1\n```", repr(text)


def test_whitespace_skip_eats_paragraph_break() -> None:
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("Para one.\n")), SSE)
    s.answer(200, sse(MSG_START, TEXT_START, delta("\n\nPara two."), *END), SSE)
    text, _ = client_view(forwarded(s))
    assert text == "Para one.\n\nPara two.", repr(text)


def test_key_split_across_deltas_is_joined_into_the_prefill_unmasked() -> None:
    """Each event is masked alone, so a key split over two deltas reaches the client (as before);
    new: the transcript joins the pieces, and the whole key goes to the NEXT provider in the prefill."""
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    half = len(SECRET) // 2
    s.answer(
        200, sse(MSG_START, TEXT_START, delta("key " + SECRET[:half]), delta(SECRET[half:] + " ok")), SSE
    )
    (_, cont) = s.of(Send)
    assert SECRET.encode() not in (cont.attempt.body_override or b""), "provider key sent to another provider"


def test_escaped_key_in_primary_stream_is_decoded_into_the_prefill() -> None:
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    raw = f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"key {escaped}"}}}}\n\n'  # noqa: E501
    s.answer(200, sse(MSG_START, TEXT_START) + raw.encode(), SSE)
    (_, cont) = s.of(Send)
    assert SECRET.encode() not in (cont.attempt.body_override or b"")


def test_lone_surrogate_in_primary_text_crashes_the_exchange_on_continuation() -> None:
    """A provider's escaped lone surrogate (an emoji split across events by a UTF-16 encoder)."""
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    raw = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi \\ud83d"}}\n\n'  # noqa: E501
    s.answer(200, sse(MSG_START, TEXT_START) + raw, SSE)  # raises UnicodeEncodeError in _on_picked?
    assert len(s.of(Send)) == 2 or isinstance(s.actions[-1], Cut)


def test_lone_surrogate_in_continuation_crashes_the_splicer() -> None:
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello")), SSE)
    raw = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" \\ud83d"}}\n\n'  # noqa: E501
    s.answer(200, sse(MSG_START, TEXT_START) + raw + sse(*END), SSE)
    assert isinstance(s.actions[-1], Finish | Cut)


def test_lone_surrogate_in_the_clients_own_request_crashes_any_continuation() -> None:
    """JS clients (Claude Code, Codex) slice strings by UTF-16 unit; JSON.stringify then writes a
    lone `\\ud83d` escape. Any break of such a request crashes the exchange while building the
    continuation body, after the next provider's permit was taken (never Recorded nor Released)."""
    body = b'{"model":"m","stream":true,"max_tokens":9,"messages":[{"role":"user","content":"log tail: \\ud83d"}]}'  # noqa: E501
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=body)
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello")), SSE)
    assert len(s.of(Send)) == 2 or isinstance(s.actions[-1], Cut)


def test_continuation_of_a_continuation_keeps_text_once_and_one_block() -> None:
    s = script(Delivery.STREAM, "a", "b", "c", "d", policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("One ")), SSE)  # breaks (no stop)
    s.connect()
    s.head(200, SSE)
    s.error(ErrorKind.RESET, "reset before any content")  # b breaks at once
    s.answer(200, sse(MSG_START, TEXT_START, delta(" two "), delta("three")), SSE)  # c breaks
    bodies = [json.loads(a.attempt.body_override)["messages"][-1]["content"] for a in s.of(Send)[1:]]
    assert bodies == ["One", "One", "One two three"]
    s.answer(200, sse(MSG_START, TEXT_START, delta(" four."), *END), SSE)
    assert isinstance(s.actions[-1], Finish)
    text, names = client_view(forwarded(s))
    assert text == "One two three four."
    assert names.count("message_start") == 1 and names.count("content_block_start") == 1
    assert names.count("message_stop") == 1 and len(s.of(Stream)) == 1


def test_continuation_ending_without_message_stop_and_nobody_left_is_cut() -> None:
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello")), SSE)
    s.answer(200, sse(MSG_START, TEXT_START, delta(" world")), SSE)  # no stop either
    assert isinstance(s.actions[-1], Cut)


def test_backup_message_delta_without_stop_is_not_continued_again() -> None:
    """message_delta reached the client; a third provider must not append more."""
    s = script(Delivery.STREAM, "a", "b", "c", policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello")), SSE)
    s.answer(200, sse(MSG_START, TEXT_START, delta(" world"), *END[:2]), SSE)  # no message_stop
    assert len(s.of(Send)) == 2 and isinstance(s.actions[-1], Cut)


def test_a_request_ending_in_the_clients_own_prefill_is_cut_without_picking_anyone() -> None:
    body = json.dumps(
        {
            "model": "m",
            "stream": True,
            "max_tokens": 9,
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{"}],
        }
    ).encode()
    s = script(Delivery.STREAM, "a", "b", "c", policies={"continue_streams": True}, body=body)
    s.answer(200, sse(MSG_START, TEXT_START, delta('"k": 1')), SSE)
    assert isinstance(s.actions[-1], Cut)
    assert not s.of(Release) and len(s.of(Send)) == 1  # no provider is picked only to be skipped


P = BreakerPolicy()  # defaults: open_for 30, max_open_for 120, recovery_probe 5


def test_real_requests_keep_hitting_a_provider_whose_models_list_answers() -> None:
    clock = FakeClock()
    cb = CircuitBreaker(P, clock)
    for _ in range(P.failure_threshold):
        cb.record(cb.acquire(), Outcome.TIMEOUT)
    assert cb.state() is State.OPEN
    tests = 0
    for _ in range(600):  # ten minutes, second by second
        clock.advance(1)
        generation = cb.take_recovery_probe()
        if generation is not None:
            cb.probed(generation, "recovery probe answered http 200")  # /v1/models is fine
        permit = cb.acquire()
        if permit is not None:  # a real user request: it times out (30 s first byte) every time
            tests += 1
            cb.record(permit, Outcome.TIMEOUT)
    # Without the probe: open 30+60+120+120+120+120 -> about 6 tests in ten minutes.
    assert tests <= 10, f"{tests} user requests sent to a provider that fails every one in 10 minutes"


def test_a_provider_that_starts_the_answer_over_is_not_spliced_in_twice() -> None:
    """OpenAI's own Chat API (and servers without a prefix flag) answer a final assistant turn with a
    new reply: the client must not get its text a second time."""
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=REQUEST)
    s.answer(200, sse(MSG_START, TEXT_START, delta("The answer to your question is")), SSE)
    s.connect()
    s.head(200, SSE)
    s.data(sse(MSG_START, TEXT_START, delta("The answer to "), delta("your question is 42.")))
    (cut,) = s.of(Cut)
    assert "did not continue it (it started the answer over" in cut.reason
    text, _ = client_view(forwarded(s))
    assert text == "The answer to your question is"  # nothing of the restart reached the client
    assert s.records[-1] == ("backup", Outcome.CLIENT_ERROR)  # not its failure: uncharged


def test_a_long_prompt_gets_more_time_to_its_first_token() -> None:
    from test_policies import TOKEN_TIMEOUTS

    long = json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x" * 500_000}]}
    )
    s = script(Delivery.STREAM, policies={"timeouts": TOKEN_TIMEOUTS}, body=long.encode())
    s.connect()
    s.head(200, SSE)
    assert s.exchange.deadline() == s.clock.now + 15 + len(long) / 50_000  # ~25 s for 500 kB


def test_a_continuation_to_anthropic_also_loses_unsigned_thinking() -> None:
    """A conversation that went through a translated provider carries thinking without a signature;
    continuing a broken answer on a native Anthropic provider must strip it from the prefilled request
    too (Anthropic refuses it in a history)."""
    history = json.loads(REQUEST)
    history["messages"] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": ""},
                                          {"type": "text", "text": "earlier"}]},
        {"role": "user", "content": "go on"},
    ]  # fmt: skip
    s = script(Delivery.STREAM, policies={"continue_streams": True}, body=json.dumps(history).encode())
    sent_first = s.of(Send)[0].attempt.body_override
    assert sent_first is not None and b'"signature": ""' not in sent_first
    s.answer(200, sse(MSG_START, TEXT_START, delta("Hello wor")), SSE)
    continued = json.loads(s.of(Send)[1].attempt.body_override or b"")
    assert continued["messages"][-1] == {"role": "assistant", "content": "Hello wor"}
    assert all(b.get("type") != "thinking" for m in continued["messages"] if isinstance(m["content"], list) for b in m["content"])  # noqa: E501
