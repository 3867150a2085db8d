"""A raw HTTP/1.1 client for tests, with a hard deadline: a hang can never hang the test.

It records whether a body was complete according to its framing (content-length / chunked
terminator), which is what tells a cut stream from a clean end. No httpx: it must work alike on
both supported Python/mitmproxy pairs.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from configs import CLIENT_KEY

CLIENT_TIMEOUT = 15.0  # hard client deadline: a request still open then is recorded as a HANG
APIS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions", "responses": "/v1/responses"}


@dataclass
class Reply:
    """What the client got."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the body ended as its framing says (not cut)
    error: str | None = None
    duration: float = 0.0

    @property
    def provider(self) -> str | None:
        return self.headers.get("x-detour-provider")


async def async_fetch(
    port: int,
    host: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    timeout: float = CLIENT_TIMEOUT,
    absolute: bool = True,
) -> Reply:
    """One request on a fresh connection to 127.0.0.1:port, ending within `timeout` whatever happens."""
    reply = Reply()
    started = time.monotonic()
    writer: asyncio.StreamWriter | None = None

    async def run() -> None:
        nonlocal writer
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16 * 1024 * 1024)
        target = f"http://{host}{path}" if absolute else path
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        lines += [f"Content-Length: {len(body)}", "Connection: close"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        await _read_response(reader, reply)

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        reply.error = "client timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        reply.error = reply.error or f"{type(e).__name__}: {e}"
    finally:
        reply.duration = time.monotonic() - started
        if writer is not None:
            writer.close()
    return reply


async def _read_response(reader: asyncio.StreamReader, reply: Reply) -> None:
    status_line = await reader.readline()
    if not status_line:
        reply.error = "closed before status line"
        return
    reply.status = int(status_line.split(b" ", 2)[1])
    for _ in range(500):
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            reply.error = "closed in headers"
            return
        name, _, value = line.decode("latin-1").partition(":")
        reply.headers[name.strip().lower()] = value.strip()
    buf = bytearray()
    try:
        if "chunked" in reply.headers.get("transfer-encoding", "").lower():
            for _ in range(1_000_000):
                size_line = await reader.readline()
                if not size_line.endswith(b"\n"):
                    reply.error = "cut in chunk size"
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readline()
                    reply.complete = True
                    return
                buf += await reader.readexactly(size)
                await reader.readexactly(2)
        elif "content-length" in reply.headers:
            n = int(reply.headers["content-length"])
            try:
                buf += await reader.readexactly(n)
            except asyncio.IncompleteReadError as e:
                buf += e.partial
                reply.error = "cut before content-length"
                return
            reply.complete = True
        else:
            buf += await reader.read()
            reply.complete = True
    except asyncio.IncompleteReadError as e:
        buf += e.partial
        reply.error = "cut mid-chunk"
    except OSError as e:
        reply.error = f"{type(e).__name__}: {e}"
    finally:
        reply.body = bytes(buf)


def fetch(*args: Any, **kwargs: Any) -> Reply:
    return asyncio.run(async_fetch(*args, **kwargs))


# ----------------------------------------------------------------------------- request helpers


def request_for(api: str, stream: bool, model: str = "claude-test") -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of a small model request with the client's own key."""
    if api == "anthropic":
        doc: dict[str, Any] = {
            "model": model,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        }
        headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    elif api == "responses":
        doc = {"model": "gpt-test", "input": "hi"}
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    else:
        doc = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    if stream:
        doc["stream"] = True
    headers["content-type"] = "application/json"
    return APIS[api], json.dumps(doc).encode(), headers


def answer_text(body: bytes) -> str:
    """The assistant text of a JSON or SSE answer ('' if none)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        if doc.get("content"):
            return "".join(c.get("text", "") for c in doc["content"] if isinstance(c, dict))
        if doc.get("choices"):
            return str(doc["choices"][0].get("message", {}).get("content") or "")
        if doc.get("object") == "response":
            return "".join(
                part.get("text", "") for item in doc.get("output") or [] for part in item.get("content") or []
            )
        return ""
    text = []
    for line in body.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            ev = json.loads(line[5:])
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        delta = ev.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("text"), str):
            text.append(delta["text"])
        if ev.get("type") == "response.output_text.delta" and isinstance(delta, str):
            text.append(delta)
        for ch in ev.get("choices") or []:
            piece = (ch.get("delta") or {}).get("content")
            if isinstance(piece, str):
                text.append(piece)
    return "".join(text)


TERMINALS = (b"event: message_stop", b"data: [DONE]", b"event: response.completed")


def classify_reply(reply: Reply, stream: bool) -> str:
    """ok:<mock> | cut | error-event | error:<status> | HANG | conn:<why>."""
    if reply.error == "client timeout":
        return "HANG"
    if reply.status is None:
        return f"conn:{reply.error}"
    if reply.status != 200:
        return f"error:{reply.status}"
    if any(m in reply.body for m in (b"event: error", b'data: {"error"', b"event: response.failed")):
        return "error-event"
    m = re.fullmatch(r"hello from (\w+)", answer_text(reply.body))
    if not reply.complete or m is None:
        return "cut"
    if stream and not any(t in reply.body for t in TERMINALS):
        return "cut"
    return f"ok:{m.group(1)}"


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return bool(predicate())
