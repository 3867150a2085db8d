"""Run a real ``mitmdump`` subprocess with the Detour addon for integration tests.

All listeners are bound to 127.0.0.1. Mode specs use the ``MODE@HOST:PORT`` form, e.g.
``regular@127.0.0.1:8080`` and ``reverse:http://127.0.0.1:9000@127.0.0.1:8081``, which parses the
same way on mitmproxy 11.0.2 and 12.x.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

__all__ = [
    "DEFAULT_SCRIPT", "LAUNCHERS", "LEAN_LAUNCHER", "REPO_ROOT", "Mitmdump", "free_port",
    "mitmdump_executable", "wait_for_port",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCRIPT = REPO_ROOT / "addon" / "detour.py"
#: The lean launcher's console script (`addon/mitm/launcher.py`), installed next to mitmdump.
LEAN_LAUNCHER = "detour"
#: The two ways to run Detour as a proxy: `mitmdump -s addon/detour.py` and the lean launcher.
LAUNCHERS = ("mitmdump", LEAN_LAUNCHER)

_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0
_POLL = 0.05


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bound to port 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mitmdump_executable(program: str = "mitmdump") -> Path:
    """The ``mitmdump`` (or ``mitmweb``) next to ``sys.executable`` (not resolved: a venv's own one)."""
    exe = Path(sys.executable).parent / program
    if not exe.exists():
        raise FileNotFoundError(f"no {program} next to {sys.executable}")
    return exe


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> bool:
    """Poll until ``port`` accepts a TCP connection, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if port_accepts(port, host):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


class Mitmdump:
    """A running ``mitmdump`` process. Create it with :meth:`start`; always :meth:`stop` it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        argv: list[str],
        log_path: Path,
        log_file: IO[bytes],
        confdir: Path,
        regular_port: int | None,
        reverse: dict[int, str],
    ) -> None:
        self.proc = proc
        self.argv = argv
        self.log_path = log_path
        self._log_file: IO[bytes] | None = log_file
        self.confdir = confdir
        self.regular_port = regular_port
        self.reverse = reverse

    # ------------------------------------------------------------------ start / stop

    @classmethod
    def start(
        cls,
        config_path: Path | str,
        *,
        reverse: Mapping[int | str, str] | None = None,
        regular_port: int | None = None,
        confdir: Path | str,
        extra_args: Iterable[str] = (),
        script: Path | str | None = DEFAULT_SCRIPT,
        env: Mapping[str, str] | None = None,
        log_path: Path | str | None = None,
        start_timeout: float = _START_TIMEOUT,
        program: str = "mitmdump",
    ) -> Mitmdump:
        """Start mitmdump and wait until every listen port accepts TCP.

        ``reverse`` maps a listen port to an upstream base URL (``{8081: "http://127.0.0.1:9000"}``).
        ``script=None`` runs without ``-s``. ``program`` is ``mitmdump``, ``mitmweb`` or
        ``detour`` (the lean launcher, which has Detour built in and ignores ``script``).
        ``env`` is laid over ``os.environ``; the repo root is
        prepended to ``PYTHONPATH`` so the addon can ``import addon.<module>``. Output (stdout and
        stderr) goes to ``log_path`` (default ``confdir/mitmdump-<ports>.log``).
        """
        confdir = Path(confdir)
        confdir.mkdir(parents=True, exist_ok=True)
        rev = {int(p): url for p, url in (reverse or {}).items()}
        if regular_port is None and not rev:
            raise ValueError("need regular_port and/or reverse listeners")
        ports = ([regular_port] if regular_port is not None else []) + list(rev)

        argv = [str(mitmdump_executable(program))]
        lean = program == LEAN_LAUNCHER  # Detour is built in: no -s
        if script is not None and not lean:
            argv += ["-s", str(script)]
        argv += [
            "--set", f"detour_config={config_path}",
            "--set", f"confdir={confdir}",
            "--set", "connection_strategy=lazy",
        ]  # fmt: skip
        if regular_port is not None:
            argv += ["--mode", f"regular@127.0.0.1:{regular_port}"]
        for port, url in rev.items():
            argv += ["--mode", f"reverse:{url}@127.0.0.1:{port}"]
        argv += list(extra_args)

        child_env = dict(os.environ)
        child_env.update(env or {})
        child_env["PYTHONUNBUFFERED"] = "1"
        pp = child_env.get("PYTHONPATH")
        child_env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")

        log = Path(log_path) if log_path else confdir / f"mitmdump-{'-'.join(map(str, ports))}.log"
        log_file = open(log, "ab")  # noqa: SIM115 - owned by the Mitmdump object, closed in stop()
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=str(REPO_ROOT),
            )
        except BaseException:
            log_file.close()
            raise
        md = cls(proc, argv, log, log_file, confdir, regular_port, rev)
        try:
            md._wait_listening(ports, start_timeout)
            # mitmproxy 12 listens before it loads `-s` scripts: wait until Detour has its config.
            detour_loads = script == DEFAULT_SCRIPT or lean
            if detour_loads and not md.wait_for_log("detour: loaded", start_timeout):
                raise TimeoutError(f"Detour did not load its config\n--- log tail ---\n{md.log_tail()}")
        except BaseException:
            md.kill()
            raise
        return md

    def _wait_listening(self, ports: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mitmdump exited early with code {self.proc.returncode}\n"
                    f"argv: {self.argv}\n--- log tail ---\n{self.log_tail()}"
                )
            pending = [p for p in pending if not port_accepts(p)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"mitmdump not listening on {pending} after {timeout:.0f} s\n"
                    f"argv: {self.argv}\n--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(_POLL)

    def stop(self, timeout: float = _STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL if still alive after ``timeout``. Idempotent; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL right away (crash simulation). Idempotent; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(_STOP_TIMEOUT)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Mitmdump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ introspection

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    @property
    def ports(self) -> list[int]:
        return ([self.regular_port] if self.regular_port is not None else []) + list(self.reverse)

    @property
    def proxy_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the regular (forward proxy) listener."""
        if self.regular_port is None:
            raise RuntimeError("started without a regular-mode listener")
        return f"http://127.0.0.1:{self.regular_port}"

    def reverse_url(self, port: int | None = None) -> str:
        """Base URL of a reverse listener (the only one if ``port`` is None)."""
        if port is None:
            if len(self.reverse) != 1:
                raise ValueError(f"several reverse listeners {list(self.reverse)}; pass port=")
            port = next(iter(self.reverse))
        if port not in self.reverse:
            raise KeyError(port)
        return f"http://127.0.0.1:{port}"

    @property
    def ca_cert_path(self) -> Path:
        """The CA mitmproxy generates in its confdir on first start."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, substring: str, timeout: float = 5.0) -> bool:
        """Poll the log until it contains ``substring``; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if substring in self.log_text():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)

    def rss_kb(self) -> int | None:
        """Resident set size (VmRSS) in kB from /proc, or None if the process is gone."""
        if self.proc.poll() is not None:
            return None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            return None
        return None

    def __repr__(self) -> str:
        return f"<Mitmdump pid={self.proc.pid} ports={self.ports} alive={self.alive}>"


def post_json(
    port: int, path: str, document: object, headers: Mapping[str, str], timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """One POST to 127.0.0.1:`port` on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = {"content-type": "application/json", **headers}
        conn.request("POST", path, json.dumps(document), all_headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()
