"""A small blocking WebSocket client for tests (wsproto over a socket), bounded in time."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)


@dataclass
class Handshake:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    messages: list[dict[str, Any]] = field(default_factory=list)


def responses_turn(
    port: int,
    path: str = "/v1/responses",
    headers: dict[str, str] | None = None,
    model: str = "gpt-test",
    timeout: float = 10.0,
) -> Handshake:
    """Open a WebSocket to 127.0.0.1:`port`, send one `response.create`, read events up to
    `response.completed` (or the refusal of the handshake), close."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    sock.sendall(ws.send(Request(host="api.openai.com", target=path, extra_headers=extra)))
    result: Handshake | None = None
    try:
        for _ in range(100_000):
            if time.monotonic() > deadline:
                raise TimeoutError("websocket turn not finished")
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    result = Handshake(101, {k.decode().lower(): v.decode() for k, v in event.extra_headers})
                    message = {"type": "response.create", "model": model, "input": "hi"}
                    sock.sendall(ws.send(TextMessage(data=json.dumps(message))))
                elif isinstance(event, RejectConnection):
                    result = Handshake(
                        event.status_code, {k.decode().lower(): v.decode() for k, v in event.headers}
                    )
                    if not event.has_body:
                        return result
                elif isinstance(event, RejectData):
                    assert result is not None
                    result.body += event.data
                    if event.body_finished:
                        return result
                elif isinstance(event, TextMessage):
                    assert result is not None
                    result.messages.append(json.loads(event.data))
                    if result.messages[-1].get("type") == "response.completed":
                        sock.sendall(ws.send(CloseConnection(code=1000)))
                        return result
                elif isinstance(event, CloseConnection):
                    return result or Handshake(0, {})
            if not data:
                return result or Handshake(0, {})
        raise TimeoutError("too many reads")
    finally:
        sock.close()


def text_of(turn: Handshake) -> str:
    return "".join(m.get("delta", "") for m in turn.messages if m.get("type") == "response.output_text.delta")
