"""An HTTP/2 client for tests: CONNECT through the regular proxy, TLS with ALPN h2, several streams
in parallel on one connection (the `h2` library, a mitmproxy dependency), bounded in time."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

Answer = tuple[int, dict[str, str], bytes]


def open_tunnel(sock: socket.socket, target: str) -> None:
    """Send CONNECT for `target` through the proxy and read its 200 (bounded byte by byte)."""
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    for _ in range(500):
        if b"\r\n\r\n" in head:
            break
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head


def h2_requests(
    port: int, ca: Path, host: str, requests: list[tuple[str, bytes, dict[str, str]]], timeout: float = 15
) -> list[Answer]:
    """Send every (path, body, headers) as its own stream at once; the answers in the same order."""
    import h2.config
    import h2.connection
    import h2.events

    deadline = time.monotonic() + timeout
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        open_tunnel(raw, f"{host}:443")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["h2"])
        tls = ctx.wrap_socket(raw, server_hostname=host)
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        order: list[int] = []
        answers: dict[int, list[object]] = {}
        for path, body, headers in requests:
            sid = conn.get_next_available_stream_id()
            order.append(sid)
            answers[sid] = [0, {}, bytearray(), False]
            pseudo = [(":method", "POST"), (":path", path), (":authority", host), (":scheme", "https")]
            conn.send_headers(sid, [*pseudo, *headers.items()])
            conn.send_data(sid, body, end_stream=True)
        tls.sendall(conn.data_to_send())
        for _ in range(100_000):
            if all(a[3] for a in answers.values()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("h2 answers not complete")
            chunk = tls.recv(65536)
            if not chunk:
                raise ConnectionError("h2 connection closed")
            for ev in conn.receive_data(chunk):
                answer = answers.get(getattr(ev, "stream_id", 0))
                if isinstance(ev, h2.events.ResponseReceived) and answer is not None:
                    fields = {_text(k): _text(v) for k, v in ev.headers}
                    answer[0], answer[1] = int(fields[":status"]), fields
                elif isinstance(ev, h2.events.DataReceived) and answer is not None:
                    answer[2] += ev.data  # type: ignore[operator]
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset) and answer is not None:
                    answer[3] = True
            tls.sendall(conn.data_to_send())
        return [(int(answers[s][0]), answers[s][1], bytes(answers[s][2])) for s in order]  # type: ignore[arg-type, call-overload]
    finally:
        raw.close()


def h2_post(
    port: int, ca: Path, host: str, path: str, body: bytes, headers: dict[str, str], timeout: float = 10
) -> Answer:
    """One HTTP/2 request through the regular proxy."""
    return h2_requests(port, ca, host, [(path, body, headers)], timeout)[0]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
