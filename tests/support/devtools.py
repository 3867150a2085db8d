"""Headless Chromium driven over the DevTools protocol, for tests that assert on what a browser
renders (mitmweb's flow list). Blocking, bounded in time, no dependency beyond wsproto (mitmproxy's).

    with Chromium.start(tmp_path) as browser:
        page = browser.page()
        page.navigate("http://127.0.0.1:8081/")
        page.wait_for("document.querySelectorAll('tr').length > 2")
        page.screenshot(tmp_path / "list.png")

`chromium_executable()` finds Debian's `chromium` (installed by `.ci/run` when missing).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_POLL = 0.1


def chromium_executable() -> str | None:
    return next((found for name in _CANDIDATES if (found := shutil.which(name))), None)


class DevToolsError(RuntimeError):
    pass


@dataclass
class Page:
    """One tab, spoken to over its DevTools WebSocket."""

    sock: socket.socket
    ws: WSConnection
    next_id: int = 1
    buffer: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def connect(cls, url: str, timeout: float = 10.0) -> Page:
        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout)
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=parts.netloc, target=parts.path)))
        page = cls(sock, ws)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in page._receive(deadline):
                if isinstance(event, AcceptConnection):
                    return page
        raise DevToolsError("no DevTools handshake")

    def _receive(self, deadline: float) -> list[object]:
        self.sock.settimeout(max(0.05, deadline - time.monotonic()))
        data = self.sock.recv(1 << 20)
        if not data:
            raise DevToolsError("the browser closed the DevTools connection")
        self.ws.receive_data(data)
        events: list[object] = []
        for event in self.ws.events():
            if isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            events.append(event)
        return events

    def call(self, method: str, timeout: float = 15.0, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are dropped)."""
        message_id = self.next_id
        self.next_id += 1
        self.sock.sendall(
            self.ws.send(TextMessage(json.dumps({"id": message_id, "method": method, "params": params})))
        )
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            for event in self._receive(deadline):
                if isinstance(event, CloseConnection):
                    raise DevToolsError("the browser closed the DevTools connection")
                if not isinstance(event, Message) or not isinstance(event.data, str):
                    continue
                text += event.data
                if not event.message_finished:
                    continue
                document, text = json.loads(text), ""
                if document.get("id") != message_id:
                    continue
                if "error" in document:
                    raise DevToolsError(f"{method}: {document['error']}")
                result: dict[str, Any] = document.get("result", {})
                return result
        raise DevToolsError(f"{method}: no answer within {timeout:g}s")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll `expression` until it is truthy (what the page has rendered), up to `timeout`."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(_POLL)
        raise DevToolsError(f"not rendered within {timeout:g}s: {expression[:120]} (last: {value!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # the browser may have dropped it already
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        self.sock.close()


@dataclass
class Chromium:
    process: subprocess.Popen[bytes]
    port: int
    pages: list[Page] = field(default_factory=list)

    @classmethod
    def start(cls, profile: Path, width: int = 1600, height: int = 1000, timeout: float = 30.0) -> Chromium:
        executable = chromium_executable()
        if executable is None:
            raise DevToolsError("no Chromium on this machine")
        profile.mkdir(parents=True, exist_ok=True)
        active = profile / "DevToolsActivePort"
        active.unlink(missing_ok=True)  # a stale one names a port nobody listens on
        argv = [
            executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        log = (profile / "chromium.log").open("wb")
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if active.exists() and active.read_text().strip():
                return cls(process, int(active.read_text().split()[0]))
            time.sleep(_POLL)
        process.kill()
        process.wait(10)
        raise DevToolsError(f"Chromium did not start: {(profile / 'chromium.log').read_text()[-2000:]}")

    def page(self) -> Page:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as answer:
            targets = json.loads(answer.read())
        target = next(t for t in targets if t.get("type") == "page")
        page = Page.connect(target["webSocketDebuggerUrl"])
        self.pages.append(page)
        return page

    def stop(self) -> None:
        for page in self.pages:
            page.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
