"""Scripted raw HTTP "providers" for faults MockProvider doesn't have: each connection's request is
read, then a script writes whatever bytes it likes. Threads and sockets are stopped on exit."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

Script = Callable[[socket.socket, threading.Event], None]


class ScriptServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accept = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> ScriptServer:
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._accept.join(5)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        for thread in self._threads:
            thread.join(5)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5.0)
        data = b""
        with contextlib.suppress(OSError):
            for _ in range(1000):  # bounded: a request ends in \r\n\r\n plus its body
                if b"\r\n\r\n" in data:
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    if len(body) >= length:
                        break
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests += 1
            self.script(conn, self._stop)


def drip(head: bytes, every: float) -> Script:
    """Write `head` one byte at a time, `every` seconds apart (a status line that never finishes in time)."""

    def script(conn: socket.socket, stop: threading.Event) -> None:
        for byte in head:
            if stop.wait(every):
                return
            conn.sendall(bytes([byte]))

    return script


def stall_after(head: bytes) -> Script:
    """Write `head` (a status line, fields and part of a body), then nothing until the server stops."""

    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        stop.wait(60)

    return script


def continue_then(answer: bytes, delay: float) -> Script:
    """`100 Continue`, then after `delay` the real answer."""

    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not stop.wait(delay):
            conn.sendall(answer)

    return script


def endless_body(status: int, total: int, chunk: int = 1 << 20) -> Script:
    """A head announcing `total` bytes, then as many zeros as the reader takes, as fast as it takes them."""

    def script(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (status, total)
        )
        block = b"0" * chunk
        sent = 0
        deadline = time.monotonic() + 60
        while sent < total and not stop.is_set() and time.monotonic() < deadline:
            conn.sendall(block)
            sent += chunk

    return script
