"""A tee for streamed responses: passes chunks through untouched while watching the stream.

mitmproxy hands each chunk to a synchronous callable, so this must be cheap: it keeps a bounded copy
(for mitmweb and saved flows), the time of the last chunk (for the idle timeout) and a scan of the
SSE events for in-band errors (Anthropic's `event: error` inside a 200) and the terminal event that
tells a complete stream from a cut one.
"""

from __future__ import annotations

from collections.abc import Callable

DEFAULT_COPY_LIMIT = 8 * 1024 * 1024
_TERMINAL_MARKERS = (b"event: message_stop", b"data: [DONE]", b"event:message_stop", b"data:[DONE]")
_ERROR_MARKERS = (b"event: error", b"event:error", b'data: {"error"', b'data:{"error"')


class StreamTee:
    def __init__(self, clock: Callable[[], float], copy_limit: int = DEFAULT_COPY_LIMIT) -> None:
        self._clock = clock
        self._copy_limit = copy_limit
        self._parts: list[bytes] = []
        self._copied = 0
        self._pending = b""
        self.copy_truncated = False
        self.last_activity = clock()
        self.bytes_seen = 0
        self.error_event: str | None = None
        self.saw_terminal = False
        self.finished = False

    def __call__(self, chunk: bytes) -> bytes:
        self.last_activity = self._clock()
        if not chunk:
            self.finished = True
            self._scan(b"\n\n")
            return chunk
        self.bytes_seen += len(chunk)
        if not self.copy_truncated and self._copied + len(chunk) <= self._copy_limit:
            self._parts.append(chunk)
            self._copied += len(chunk)
        else:
            self.copy_truncated = True
        self._scan(chunk)
        return chunk

    @property
    def body(self) -> bytes:
        return b"".join(self._parts)

    def _scan(self, chunk: bytes) -> None:
        data = (self._pending + chunk).replace(b"\r\n", b"\n")
        *events, self._pending = data.split(b"\n\n")
        if len(self._pending) > 65536:  # a runaway event without separators: stop buffering it
            self._pending = b""
        for event in events:
            self._inspect(event)

    def _inspect(self, event: bytes) -> None:
        stripped = event.strip()
        if not stripped:
            return
        if any(_at_line_start(stripped, m) for m in _TERMINAL_MARKERS):
            self.saw_terminal = True
        if self.error_event is None and any(_at_line_start(stripped, m) for m in _ERROR_MARKERS):
            self.error_event = stripped[:300].decode("utf-8", "replace")


def _at_line_start(event: bytes, marker: bytes) -> bool:
    """Markers count only as a field at the start of a line, never inside a payload's text."""
    return event.startswith(marker) or b"\n" + marker in event
