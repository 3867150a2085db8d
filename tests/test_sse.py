"""The stream tee: identity pass-through, a bounded copy, in-band errors and terminal events."""

from __future__ import annotations

import itertools

import pytest
from fakeclock import START, FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.sse import StreamTee

ANTHROPIC_OK = (
    b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
    b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":"
    b"{\"type\":\"text_delta\",\"text\":\"an error occurred in your code\"}}\n\n"
    b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
)
ANTHROPIC_ERROR = (
    b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
    b"event: error\ndata: {\"type\":\"error\","
    b"\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
)
OPENAI_OK = b'data: {"choices":[{"delta":{"content":"error handling"}}]}\n\ndata: [DONE]\n\n'
OPENAI_ERROR = b'data: {"choices":[]}\n\ndata: {"error": {"message": "boom", "type": "server_error"}}\n\n'


def feed(chunks: list[bytes], tee: StreamTee | None = None, finish: bool = True) -> StreamTee:
    tee = tee or StreamTee(FakeClock())
    for chunk in chunks:
        assert tee(chunk) is chunk
    if finish:
        assert tee(b"") == b""
    return tee


def split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize(
    ("stream", "error", "terminal"),
    [
        (ANTHROPIC_OK, False, True),
        (ANTHROPIC_ERROR, True, False),
        (OPENAI_OK, False, True),
        (OPENAI_ERROR, True, False),
        (ANTHROPIC_OK.replace(b"\n", b"\r\n"), False, True),
        (ANTHROPIC_ERROR.replace(b"\n", b"\r\n"), True, False),
        (OPENAI_OK.replace(b"\n", b"\r\n"), False, True),
        (OPENAI_ERROR.replace(b"\n", b"\r\n"), True, False),
        (ANTHROPIC_OK.replace(b": ", b":"), False, True),
        (ANTHROPIC_ERROR.replace(b"event: ", b"event:"), True, False),
    ],
    ids=[
        "anthropic-ok",
        "anthropic-error",
        "openai-ok",
        "openai-error",
        "anthropic-ok-crlf",
        "anthropic-error-crlf",
        "openai-ok-crlf",
        "openai-error-crlf",
        "anthropic-ok-nospace",
        "anthropic-error-nospace",
    ],
)
def test_detection_across_chunk_boundaries(stream: bytes, error: bool, terminal: bool, size: int) -> None:
    chunks = split_every(stream, size)
    tee = feed(chunks)
    assert (tee.error_event is not None) is error
    assert tee.saw_terminal is terminal
    assert tee.finished
    assert tee.body == stream
    assert tee.bytes_seen == len(stream)
    assert not tee.copy_truncated


def test_anthropic_error_split_inside_the_marker() -> None:
    cut = ANTHROPIC_ERROR.index(b"event: error") + len(b"event: er")
    tee = feed([ANTHROPIC_ERROR[:cut], ANTHROPIC_ERROR[cut:]], finish=False)
    assert tee.error_event is not None
    assert tee.error_event.startswith("event: error")
    assert "overloaded_error" in tee.error_event


def test_terminal_event_without_trailing_blank_line_is_seen_at_finish() -> None:
    tee = feed([b"data: {}\n\ndata: [DONE]"], finish=False)
    assert not tee.saw_terminal
    tee(b"")
    assert tee.saw_terminal and tee.finished


def test_crlf_split_between_cr_and_lf() -> None:
    stream = b"event: message_stop\r\ndata: {}\r\n\r\n"
    cut = stream.rindex(b"\r\n\r\n") + 3  # between the last CR and LF
    tee = feed([stream[:cut], stream[cut:]], finish=False)
    assert tee.saw_terminal


@pytest.mark.parametrize(
    "event",
    [
        b'event: content_block_delta\ndata: {"delta":{"text":"error"}}\n\n',
        b'event: content_block_delta\ndata: {"delta":{"text":"event: error happened"}}\n\n',
        b'data: {"choices":[{"delta":{"content":"{\\"error\\": 1}"}}]}\n\n',
        b'data: {"type":"x","error_count":0}\n\n',
        b"event: ping\ndata: {}\n\n",
    ],
)
def test_no_false_error(event: bytes) -> None:
    assert feed([event]).error_event is None


@pytest.mark.parametrize(
    "event",
    [
        b'event: content_block_delta\ndata: {"delta":{"text":"finally send data: [DONE]"}}\n\n',
        b'data: {"choices":[{"delta":{"content":"emit event: message_stop last"}}]}\n\n',
    ],
)
def test_no_false_terminal_from_text(event: bytes) -> None:
    assert feed([event]).saw_terminal is False


def test_passes_chunks_through_unchanged() -> None:
    tee = StreamTee(FakeClock())
    chunks = [b"\x00\xff binary", b"event: error\n", b"\r\n\r\n", b"x" * 100_000]
    for chunk in chunks:
        assert tee(chunk) is chunk
    assert tee.body == b"".join(chunks)


def test_copy_is_bounded() -> None:
    tee = StreamTee(FakeClock(), copy_limit=10)
    out = [tee(c) for c in (b"12345", b"67890", b"abc")]
    assert out == [b"12345", b"67890", b"abc"]
    assert tee.body == b"1234567890"
    assert tee.copy_truncated
    assert tee.bytes_seen == 13


def test_copy_within_limit_is_not_truncated() -> None:
    tee = feed([b"12345", b"67890"], StreamTee(FakeClock(), copy_limit=10))
    assert tee.body == b"1234567890" and not tee.copy_truncated


def test_truncated_copy_is_a_prefix_of_the_stream() -> None:
    tee = StreamTee(FakeClock(), copy_limit=10)
    chunks = [b"12345678", b"abcdef", b"xy"]
    for c in chunks:
        tee(c)
    assert tee.copy_truncated
    assert b"".join(chunks).startswith(tee.body)


def test_error_detected_even_after_copy_truncated() -> None:
    tee = feed([b"x" * 20 + b"\n\n", ANTHROPIC_ERROR], StreamTee(FakeClock(), copy_limit=5))
    assert tee.copy_truncated and tee.error_event is not None


def test_last_activity_follows_the_clock() -> None:
    clock = FakeClock()
    tee = StreamTee(clock)
    assert tee.last_activity == START
    clock.advance(7)
    assert tee.last_activity == START  # nothing arrived
    tee(b"data: {}\n\n")
    assert tee.last_activity == START + 7
    clock.advance(3)
    tee(b"")
    assert tee.last_activity == START + 10 and tee.finished


def test_first_error_event_is_kept() -> None:
    tee = feed([b'event: error\ndata: {"n":1}\n\n', b'event: error\ndata: {"n":2}\n\n'])
    assert tee.error_event is not None and '"n":1' in tee.error_event


@settings(max_examples=100, deadline=None)
@given(
    stream=st.sampled_from([ANTHROPIC_OK, ANTHROPIC_ERROR, OPENAI_OK, OPENAI_ERROR]),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_property_chunking_does_not_change_detection(stream: bytes, crlf: bool, cuts: list[int]) -> None:
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]
    whole = feed([stream])
    parts = feed(chunks)
    assert (parts.error_event, parts.saw_terminal, parts.body) == (
        whole.error_event,
        whole.saw_terminal,
        whole.body,
    )
