"""An incremental Server-Sent Events parser shared by every dialect: bytes in, events out.

Chunks arrive as the network splits them, not as the provider wrote its events, so the parser keeps
the unfinished tail between calls. It follows the WHATWG rules that matter for model APIs: `\\r\\n`,
`\\r` and `\\n` all end a line, a blank line ends an event, lines starting with `:` are comments,
several `data:` lines are joined with `\\n`, and one leading space after the colon is dropped. Bytes are
decoded per finished line, so a UTF-8 character split across chunks is never mangled. Like the
official SDKs' decoders (which is what clients see), an event with fields but no data is dispatched.
"""

from __future__ import annotations

from typing import NamedTuple

#: An event that grows beyond this without ending is dropped (a provider sending garbage must not
#: grow Detour's memory without bound); the parser resynchronises at the next blank line.
MAX_EVENT_BYTES = 4 * 1024 * 1024


class SSEEvent(NamedTuple):
    """One dispatched event; `event` is "message" when the provider named none."""

    event: str
    data: str


class SSEParser:
    def __init__(self) -> None:
        self._tail = b""
        self._event = ""
        self._data: list[str] = []
        #: An `event` or `data` field was seen since the last dispatch (`id` and `retry` mean nothing
        #: to model APIs and are ignored).
        self._fields = False
        self._size = 0
        self._skipping = False
        #: The last chunk ended in `\r`: a `\n` starting the next one belongs to the same line end.
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """The events that `chunk` completes, in order."""
        if not chunk:
            return []
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = chunk[-1:] == b"\r"
        data = self._tail + chunk if self._tail else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_EVENT_BYTES:
            self._tail = b""
            self._skipping = True
        events: list[SSEEvent] = []
        for line in lines:
            # The common lines inline (this runs for every line of every stream): `event:` and
            # `data:` with their usual single space, and the blank line ending an event.
            if not line:
                if self._fields and not self._skipping:
                    events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._event, self._data, self._size, self._skipping, self._fields = "", [], 0, False, False
            elif line[:6] == b"data: " and not self._skipping and self._size + len(line) <= MAX_EVENT_BYTES:
                self._size += len(line)
                self._data.append(line[6:].decode("utf-8", "replace"))
                self._fields = True
            elif line[:7] == b"event: " and not self._skipping and self._size + len(line) <= MAX_EVENT_BYTES:
                self._size += len(line)
                self._event = line[7:].decode("utf-8", "replace")
                self._fields = True
            else:
                self._line(line, events)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: an event not followed by a blank line is incomplete and is not dispatched."""
        self._tail = b""
        self._event, self._data, self._size, self._fields = "", [], 0, False
        return []

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._fields and not self._skipping:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._event, self._data, self._size, self._skipping, self._fields = "", [], 0, False, False
            return
        if self._skipping or line[:1] == b":":
            return
        self._size += len(line)
        if self._size > MAX_EVENT_BYTES:
            self._event, self._data, self._skipping = "", [], True
            return
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
            self._fields = True
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
            self._fields = True
