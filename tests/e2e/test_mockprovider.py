"""The mock providers and the mitmdump harness do what they claim, seen from plain clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import Mitmdump, free_port, port_accepts
from mockprovider import MockProvider

MockFactory = Callable[[str], MockProvider]
CLIENT_TIMEOUT = 5.0


def post(
    mock: MockProvider,
    path: str,
    payload: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = CLIENT_TIMEOUT,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=timeout)
    try:
        body = json.dumps(payload or {}).encode()
        conn.request("POST", path, body=body, headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """Parse an SSE body into (event, data) pairs (lines without a colon are ignored)."""
    out: list[tuple[str | None, str]] = []
    for block in raw.decode().split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((event, "\n".join(data)))
    return out


def raw_exchange(port: int, request: bytes, timeout: float = CLIENT_TIMEOUT) -> bytes:
    """Send raw bytes, read until the server closes (bounded by ``timeout`` and size)."""
    deadline = time.monotonic() + timeout
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        while len(buf) < 4 * 1024 * 1024 and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break  # an RST after some data: return what arrived
            if not data:
                break
            buf += data
    return bytes(buf)


def split_chunks(body: bytes) -> tuple[list[bytes], bool]:
    """Decode a chunked body into its chunks; the flag says whether the 0-chunk was seen."""
    chunks: list[bytes] = []
    pos = 0
    for _ in range(10_000):
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            return chunks, False
        size = int(body[pos:eol], 16)
        if size == 0:
            return chunks, True
        chunks.append(body[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2
    return chunks, False


def request_bytes(path: str, payload: dict[str, Any], close: bool = True) -> bytes:
    body = json.dumps(payload).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


# ---------------------------------------------------------------------- normal answers


def test_anthropic_json(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    resp, body = post(mock, "/v1/messages?beta=true", {"model": "claude-test-1", "max_tokens": 10})
    assert resp.status == 200
    assert resp.getheader("x-mock-provider") == "alpha"
    assert resp.getheader("content-type") == "application/json"
    data = json.loads(body)
    assert data["type"] == "message"
    assert data["model"] == "claude-test-1"
    assert data["content"] == [{"type": "text", "text": "hello from alpha"}]
    assert data["stop_reason"] == "end_turn"
    assert mock.received[0].path == "/v1/messages?beta=true"
    assert mock.received[0].route == "/v1/messages"


def test_openai_json(mock_factory: MockFactory) -> None:
    mock = mock_factory("beta")
    resp, body = post(mock, "/v1/chat/completions", {"model": "gpt-test", "messages": []})
    assert resp.status == 200
    assert resp.getheader("x-mock-provider") == "beta"
    data = json.loads(body)
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-test"
    assert data["choices"][0]["message"]["content"] == "hello from beta"
    assert data["choices"][0]["finish_reason"] == "stop"


def test_side_path(mock_factory: MockFactory) -> None:
    mock = mock_factory("gamma")
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", "/api/claude_code/settings")
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {
            "side": True,
            "provider": "gamma",
            "path": "/api/claude_code/settings",
        }
    finally:
        conn.close()


def test_anthropic_sse_sequence_one_chunk_per_event(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    raw = raw_exchange(mock.port, request_bytes("/v1/messages", {"model": "m1", "stream": True}))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/event-stream" in head.lower()
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"x-mock-provider: alpha" in head.lower()
    chunks, complete = split_chunks(body)
    assert complete
    assert all(c.endswith(b"\n\n") and c.count(b"\n\n") == 1 for c in chunks)
    events = sse_events(b"".join(chunks))
    names = [e for e, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [json.loads(d) for e, d in events if e == "content_block_delta"]
    assert len(deltas) >= 2
    assert "".join(d["delta"]["text"] for d in deltas) == "hello from alpha"
    assert json.loads(events[0][1])["message"]["model"] == "m1"
    assert all(json.loads(d)["type"] == e for e, d in events)


def test_openai_sse_sequence(mock_factory: MockFactory) -> None:
    mock = mock_factory("beta")
    payload = {"model": "gpt-s", "stream": True, "stream_options": {"include_usage": True}}
    resp, body = post(mock, "/v1/chat/completions", payload)
    assert resp.status == 200
    assert resp.getheader("content-type", "").startswith("text/event-stream")
    events = sse_events(body)
    assert events[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "gpt-s" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "hello from beta"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 15


def test_keep_alive_two_requests_one_connection(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", "/v1/messages", body=json.dumps({"model": "a"}))
        r1 = conn.getresponse()
        r1.read()
        sock1 = conn.sock
        conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "b", "stream": True}))
        r2 = conn.getresponse()
        assert sse_events(r2.read())[-1] == (None, "[DONE]")
        conn.request("GET", "/other")
        r3 = conn.getresponse()
        r3.read()
        assert conn.sock is sock1 is not None
        assert r1.status == r2.status == r3.status == 200
    finally:
        conn.close()
    assert len({r.conn_id for r in mock.received}) == 1
    assert mock.count() == 3


def test_chunked_request_body(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=CLIENT_TIMEOUT)
    try:
        parts = [b'{"model": ', b'"chunky", ', b'"max_tokens": 5}']
        conn.request("POST", "/v1/messages", body=iter(parts), encode_chunked=True)
        resp = conn.getresponse()
        assert json.loads(resp.read())["model"] == "chunky"
    finally:
        conn.close()
    rec = mock.received[0]
    assert rec.headers["transfer-encoding"] == "chunked"
    assert rec.json == {"model": "chunky", "max_tokens": 5}


# ---------------------------------------------------------------------- recording


def test_recording(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    raw = (
        b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: x\r\nX-Dup: one\r\nX-Dup: two\r\n"
        b"Authorization: Bearer sk-test\r\nContent-Length: 15\r\nConnection: close\r\n\r\n"
        b'{"model": "m2"}'
    )
    before = time.monotonic()
    raw_exchange(mock.port, raw)
    post(mock, "/v1/chat/completions", {"model": "x"})
    assert mock.wait_for_requests(2, timeout=2)
    first, second = mock.received
    assert first.method == "POST"
    assert first.path == "/v1/messages?beta=true"
    assert first.headers["x-dup"] == "two"
    assert first.headers["authorization"] == "Bearer sk-test"
    assert [v for k, v in first.raw_headers if k == "X-Dup"] == ["one", "two"]
    assert first.body == b'{"model": "m2"}'
    assert first.json == {"model": "m2"}
    assert before <= first.at <= second.at
    assert mock.count("/v1/messages") == 1
    assert mock.count("/v1/chat") == 1
    with pytest.raises(AttributeError):
        first.method = "GET"  # type: ignore[misc]
    mock.clear()
    assert mock.count() == 0
    t0 = time.monotonic()
    assert mock.wait_for_requests(1, timeout=0.2) is False
    assert time.monotonic() - t0 < 2


async def test_async_client_and_wait(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", mock.port), 5)
    try:
        writer.write(request_bytes("/v1/messages", {"model": "async"}))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert b"hello from alpha" in data
    assert await mock.async_wait_for_requests(1, timeout=2)


# ---------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "etype"),
    [
        (529, "overloaded_error"),
        (503, "overloaded_error"),
        (500, "api_error"),
        (429, "rate_limit_error"),
        (401, "authentication_error"),
        (400, "invalid_request_error"),
    ],
)
def test_status_fault_anthropic(mock_factory: MockFactory, status: int, etype: str) -> None:
    mock = mock_factory("alpha")
    mock.fault("status", status=status, retry_after=2)
    resp, body = post(mock, "/v1/messages", {"model": "m"})
    assert resp.status == status
    assert resp.getheader("retry-after") == "2"
    assert resp.getheader("x-mock-provider") == "alpha"
    data = json.loads(body)
    assert data["type"] == "error"
    assert data["error"]["type"] == etype
    assert mock.count() == 1  # recorded although it failed


def test_status_fault_openai_shape_and_overrides(mock_factory: MockFactory) -> None:
    mock = mock_factory("beta")
    mock.fault("status", status=429, headers={"Retry-After": "7", "x-extra": "1"})
    resp, body = post(mock, "/v1/chat/completions", {"model": "m"})
    assert (resp.status, resp.getheader("retry-after"), resp.getheader("x-extra")) == (429, "7", "1")
    err = json.loads(body)["error"]
    assert err["code"] == "rate_limit_exceeded" and "message" in err and "type" in err
    mock.fault("status", status=418, body=b"teapot")
    resp, body = post(mock, "/v1/chat/completions", {"model": "m"})
    assert (resp.status, body) == (418, b"teapot")
    mock.fault("status", status=500, body={"custom": True})
    resp, body = post(mock, "/v1/messages", {"model": "m"})
    assert (resp.status, json.loads(body)) == (500, {"custom": True})


def test_times_applies_once_then_normal(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("status", times=1, status=500)
    assert post(mock, "/v1/messages", {"model": "m"})[0].status == 500
    assert mock.current_fault() is None
    assert post(mock, "/v1/messages", {"model": "m"})[0].status == 200
    mock.fault("status", times=2, status=503)
    statuses = [post(mock, "/v1/messages", {"model": "m"})[0].status for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_fault_path_prefix(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("status", times=1, path_prefix="/v1/messages", status=529)
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", "/api/side")
        assert conn.getresponse().status == 200  # not matched, does not use up `times`
    finally:
        conn.close()
    assert post(mock, "/v1/messages", {})[0].status == 529
    assert post(mock, "/v1/messages", {})[0].status == 200


def test_fault_validation(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    with pytest.raises(ValueError):
        mock.fault("nonsense")
    with pytest.raises(ValueError):
        mock.fault("status")
    with pytest.raises(ValueError):
        mock.fault("refuse", times=1)


def test_refuse_then_healthy_same_port(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    port = mock.port
    # an idle keep-alive connection is cut too when the provider "goes down"
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    idle.request("GET", "/warm")
    idle.getresponse().read()
    mock.fault("refuse")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT).close()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        idle.request("GET", "/again")
        idle.getresponse().read()
    idle.close()
    assert mock.count() == 1
    mock.healthy()
    assert mock.port == port
    assert post(mock, "/v1/messages", {"model": "m"})[0].status == 200


def test_refuse_with_duration_reopens(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("refuse", duration=0.3)
    assert not port_accepts(mock.port)
    deadline = time.monotonic() + 5
    while not port_accepts(mock.port) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert port_accepts(mock.port)
    assert mock.current_fault() is None


def test_reset(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("reset")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        post(mock, "/v1/messages", {"model": "m"})
    assert mock.count("/v1/messages") == 1


def test_hang_times_out_then_healthy_aborts(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("hang")
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=0.5)
    try:
        conn.request("POST", "/v1/messages", body=b"{}")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.getresponse()
        assert time.monotonic() - t0 < 3
        assert mock.count() == 1
        mock.healthy()  # hung handlers are aborted
        assert conn.sock is not None
        conn.sock.settimeout(CLIENT_TIMEOUT)
        try:
            data = conn.sock.recv(1)  # the mock sends RST; EOF would do as well
        except ConnectionResetError:
            data = b""
        assert data == b""
    finally:
        conn.close()
    assert post(mock, "/v1/messages", {})[0].status == 200


def test_slow_first_byte(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("slow_first_byte", delay=0.3)
    t0 = time.monotonic()
    resp, body = post(mock, "/v1/messages", {"model": "m"})
    assert time.monotonic() - t0 >= 0.3
    assert resp.status == 200 and b"hello from alpha" in body


@pytest.mark.parametrize(
    ("path", "first"), [("/v1/messages", b"message_start"), ("/v1/chat/completions", b"")]
)
def test_sse_cut(mock_factory: MockFactory, path: str, first: bytes) -> None:
    mock = mock_factory("alpha")
    mock.fault("sse_cut")
    raw = raw_exchange(mock.port, request_bytes(path, {"model": "m", "stream": True}))
    chunks, complete = split_chunks(raw.partition(b"\r\n\r\n")[2])
    assert not complete
    assert len(chunks) == 2 and first in chunks[0]
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", path, body=json.dumps({"model": "m", "stream": True}))
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()


def test_sse_cut_on_json_request_truncates_body(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("sse_cut")
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", "/v1/messages", body=b'{"model": "m"}')
        resp = conn.getresponse()
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()


def test_sse_stall(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("sse_stall")
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=0.5)
    try:
        conn.request("POST", "/v1/messages", body=json.dumps({"model": "m", "stream": True}))
        resp = conn.getresponse()
        assert resp.status == 200
        lines = [resp.readline() for _ in range(6)]  # two events: event + data + blank each
        assert lines[0] == b"event: message_start\n"
        assert lines[3] == b"event: content_block_start\n"
        with pytest.raises(TimeoutError):
            resp.readline()
    finally:
        conn.close()


def test_sse_error_anthropic_and_openai(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("sse_error")
    resp, body = post(mock, "/v1/messages", {"model": "m", "stream": True})  # read() completes
    assert resp.status == 200
    events = sse_events(body)
    assert events[0][0] == "error"
    assert json.loads(events[0][1]) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    resp, body = post(mock, "/v1/chat/completions", {"model": "m", "stream": True})
    events = sse_events(body)
    assert json.loads(events[0][1])["error"]["type"] == "overloaded_error"
    mock.fault("sse_error", after=2)
    _, body = post(mock, "/v1/messages", {"model": "m", "stream": True})
    assert [e for e, _ in sse_events(body)] == ["message_start", "content_block_start", "error"]


def test_sse_malformed(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("sse_malformed")
    resp, body = post(mock, "/v1/messages", {"model": "m", "stream": True})
    assert resp.status == 200
    assert body.startswith(b"data: {not json\n\n")
    assert b"\nthis line has no colon\n" in body
    assert [e for e, _ in sse_events(body)][-1] == "message_stop"


def test_slow_stream(mock_factory: MockFactory) -> None:
    mock = mock_factory("alpha")
    mock.fault("slow_stream", interval=0.05)
    conn = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=CLIENT_TIMEOUT)
    try:
        t0 = time.monotonic()
        conn.request("POST", "/v1/messages", body=json.dumps({"model": "m", "stream": True}))
        resp = conn.getresponse()
        first = resp.readline()
        t_first = time.monotonic() - t0
        rest = resp.read()
        total = time.monotonic() - t0
    finally:
        conn.close()
    assert first == b"event: message_start\n"
    n_events = len(sse_events(first + rest))
    assert total >= 0.05 * (n_events - 1) * 0.9
    assert t_first < total


def test_stop_closes_open_connections_and_is_idempotent() -> None:
    mock = MockProvider("solo").start()
    try:
        port = mock.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
        conn.request("GET", "/x")
        conn.getresponse().read()
        mock.fault("hang")
        hung = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
        hung.request("GET", "/hang")
        assert mock.wait_for_requests(2, timeout=2)
        t0 = time.monotonic()
        mock.stop()
        assert time.monotonic() - t0 < 3
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            hung.getresponse()
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            conn.request("GET", "/y")
            conn.getresponse()
        conn.close()
        hung.close()
        assert not port_accepts(port)
    finally:
        mock.stop()
    mock.stop()
    mock.healthy()  # no-op after stop


def test_context_manager() -> None:
    with MockProvider("cm") as mock:
        port = mock.port
        assert mock.base_url == f"http://127.0.0.1:{port}"
        assert post(mock, "/v1/messages", {})[0].status == 200
    assert not port_accepts(port)


# ---------------------------------------------------------------------- harness


NOOP_SCRIPT = "# a do-nothing mitmproxy script for harness tests\naddons = []\n"


def http_get_via(port: int, target: str, timeout: float = CLIENT_TIMEOUT) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.integration
def test_harness_reverse_and_regular_reach_mock(
    tmp_path: Path, mock_factory: MockFactory, mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    mock = mock_factory("upstream")
    script = tmp_path / "noop.py"
    script.write_text(NOOP_SCRIPT)
    config = tmp_path / "config.yaml"  # never read: the no-op script ignores detour_config
    rport, gport = free_port(), free_port()
    md = mitmdump_factory(config, reverse={rport: mock.base_url}, regular_port=gport, script=script)
    assert md.alive and md.ports == [gport, rport]

    resp, body = post_via(rport, "/v1/messages?beta=true", {"model": "via-proxy"})
    assert resp.status == 200
    assert resp.getheader("x-mock-provider") == "upstream"
    assert json.loads(body)["model"] == "via-proxy"

    status, body = http_get_via(gport, f"{mock.base_url}/api/claude_code/settings")
    assert status == 200 and json.loads(body)["path"] == "/api/claude_code/settings"
    assert mock.wait_for_requests(2, timeout=5)
    assert [r.route for r in mock.received] == ["/v1/messages", "/api/claude_code/settings"]

    assert md.wait_for_log("/v1/messages", timeout=5), md.log_tail()
    assert md.ca_cert_path.exists()
    rss = md.rss_kb()
    assert rss is not None and rss > 0
    assert md.stop() is not None
    assert md.rss_kb() is None
    assert not port_accepts(rport)
    md.stop()  # idempotent


def post_via(port: int, path: str, payload: dict[str, Any]) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("POST", path, body=json.dumps(payload), headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


@pytest.mark.integration
def test_harness_early_exit_raises_with_log(
    tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump]
) -> None:
    script = tmp_path / "noop.py"
    script.write_text(NOOP_SCRIPT)
    with pytest.raises(RuntimeError, match="exited early") as info:
        mitmdump_factory(
            tmp_path / "config.yaml",
            regular_port=free_port(),
            script=script,
            extra_args=["--set", "connection_strategy=bogus"],
        )
    assert "connection_strategy" in str(info.value)


@pytest.mark.integration
def test_harness_kill(tmp_path: Path, mitmdump_factory: Callable[..., Mitmdump]) -> None:
    script = tmp_path / "noop.py"
    script.write_text(NOOP_SCRIPT)
    md = mitmdump_factory(tmp_path / "config.yaml", regular_port=free_port(), script=script)
    rc = md.kill()
    assert rc is not None and rc < 0
    assert not md.alive
