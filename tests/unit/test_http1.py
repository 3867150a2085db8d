"""The upstream HTTP/1.1 codec, checked against h11 (mitmproxy's own dependency) as an oracle."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon.http1 import End, Head, ProtocolError, ResponseParser, encode_request, header_problem


def parse(data: bytes, cuts: list[int] = (), method: str = "POST", upgrade: bool = False) -> list[object]:  # type: ignore[assignment]
    parser = ResponseParser(method, upgrade)
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out: list[object] = []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        out += parser.feed(data[a:b])
    if (
        not parser.done
        and parser.trailing == b""
        and not (out and isinstance(out[0], Head) and out[0].status == 101)
    ):
        out += parser.feed(b"")
    return out


def body_of(items: list[object]) -> bytes:
    return b"".join(i for i in items if isinstance(i, bytes))


def h11_response(status: int, headers: list[tuple[str, str]], chunks: list[bytes], chunked: bool) -> bytes:
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    server.next_event()
    server.next_event()
    total = sum(map(len, chunks))
    framing = [("transfer-encoding", "chunked")] if chunked else [("content-length", str(total))]
    out = server.send(h11.Response(status_code=status, headers=headers + framing)) or b""
    for chunk in chunks:
        if chunk:
            out += server.send(h11.Data(data=chunk)) or b""
    return out + (server.send(h11.EndOfMessage()) or b"")


HEADER_NAMES = st.sampled_from(["content-type", "x-request-id", "retry-after", "x-thing"])
HEADER_VALUES = st.text(alphabet="abcdefXYZ0123 ;=/.-", min_size=0, max_size=12).map(str.strip)


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 201, 400, 429, 500, 503, 529]),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    chunks=st.lists(st.binary(max_size=40), max_size=6),
    chunked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
)
def test_the_parser_reads_what_h11_writes(status, headers, chunks, chunked, cuts) -> None:  # type: ignore[no-untyped-def]
    wire = h11_response(status, headers, chunks, chunked)
    items = parse(wire, cuts)
    head = items[0]
    assert isinstance(head, Head) and head.status == status
    expected = [(k.encode(), v.encode()) for k, v in headers]
    assert list(head.headers[: len(expected)]) == expected
    assert body_of(items) == b"".join(chunks)
    assert isinstance(items[-1], End)


@pytest.mark.parametrize(
    ("wire", "body", "reusable"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", b"hello", True),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            b"hello",
            True,
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", b"ok", True),
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", b"ok", False),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", b"until the end", False),
        (b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", b"", True),
        (b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok", b"ok", True),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok", b"ok", True),
    ],
    ids=[
        "length",
        "chunked",
        "100-continue",
        "close",
        "http10",
        "until-close",
        "204",
        "bare-lf",
        "repeated-length",
    ],
)
def test_framing(wire: bytes, body: bytes, reusable: bool) -> None:
    parser = ResponseParser()
    items = parser.feed(wire)
    if not parser.done:
        items += parser.feed(b"")
    assert body_of(items) == body and isinstance(items[-1], End)
    assert parser.reusable is reusable


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1HTTP/1.1 504 Gateway Timeout\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-le",
    ],
    ids=[
        "short-length",
        "cut-chunk",
        "bad-chunk-size",
        "conflicting-length",
        "bad-version",
        "spliced-status",
        "folding",
        "cut-head",
    ],
)
def test_broken_answers_are_protocol_errors_never_complete(wire: bytes) -> None:
    parser = ResponseParser()
    with pytest.raises(ProtocolError):
        parser.feed(wire)
        parser.feed(b"")
    assert not parser.done


def test_a_websocket_101_hands_over_what_follows() -> None:
    parser = ResponseParser("GET", upgrade=True)
    items = parser.feed(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x02hi")
    assert items == [Head(101, ((b"upgrade", b"websocket"),))]
    assert parser.trailing == b"\x81\x02hi"


def test_a_huge_head_is_refused() -> None:
    with pytest.raises(ProtocolError, match="too large"):
        ResponseParser().feed(b"HTTP/1.1 200 OK\r\nx: " + b"a" * 70_000)


def test_requests_are_written_as_h11_reads_them() -> None:
    wire = encode_request(
        "POST", "/v1/messages?beta=true", ((b"host", b"a.example"), (b"content-length", b"2")), b"{}"
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target) == (b"POST", b"/v1/messages?beta=true")
    assert bytes(server.next_event().data) == b"{}"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/v1/messages", ((b"x-api-key", b"key\r\nx-injected: 1"),)),
        ("/v1/messages", ((b"bad name", b"v"),)),
        ("/v1/messages HTTP/1.1\r\nx: y", ()),
        ("/v1/\x00", ()),
    ],
)
def test_nothing_that_would_inject_into_the_message_is_written(
    path: str, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    with pytest.raises(ProtocolError):
        encode_request("POST", path, headers, b"")


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        ((b"x-note", b"first\r\n folded"), "line break"),
        ((b"x note", b"v"), "not a valid token"),
        ((b"x-nul", b"a\x00b"), "line break or NUL"),
    ],
    ids=["folded", "space-in-name", "nul"],
)
def test_a_field_that_cant_be_written_is_named_and_refused(field: tuple[bytes, bytes], problem: str) -> None:
    """Detour answers such a client 400 before any provider is tried (`mitm/dispatch.py`)."""
    fields = ((b"host", b"example"), field)
    reason = header_problem(fields)
    assert reason is not None and problem in reason
    with pytest.raises(ProtocolError, match=problem):
        encode_request("POST", "/v1/messages", fields, b"")
    assert header_problem(((b"host", b"example"), (b"x-ok", b"v a l"))) is None
