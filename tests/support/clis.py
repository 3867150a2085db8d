"""The three coding CLIs at pinned versions, and a rig that runs them through a real mitmdump with
Detour against loopback mock providers: no real key, no internet.

Used by `tests/e2e/test_clients.py` (assertions) and `tests/support/demo.py` (`make demo`, for people).
The CLIs are installed from npm into a cache folder (`DETOUR_CLI_CACHE`, default
`~/.cache/detour/clis`), once per set of pins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import configs
from configs import CLIENT_KEY
from harness import Mitmdump, free_port
from mockprovider import MockProvider

__all__ = ["CLIS", "Cli", "Outcome", "Rig", "Unavailable", "cache_dir", "install", "on_path"]


@dataclass(frozen=True)
class Cli:
    name: str
    package: str
    version: str
    #: The app (config key) and host it talks to.
    app: str
    host: str
    #: How Detour puts the backup's key on its requests, as (header, value prefix).
    auth_header: str
    auth_prefix: str = ""


CLIS: dict[str, Cli] = {
    c.name: c
    for c in (
        Cli("claude", "@anthropic-ai/claude-code", "2.1.332", "claude", "api.anthropic.com", "x-api-key"),
        Cli("codex", "@openai/codex", "0.171.0", "codex", "api.openai.com", "authorization", "Bearer "),
        Cli(
            "gemini",
            "@google/gemini-cli",
            "0.61.0",
            "gemini",
            "generativelanguage.googleapis.com",
            "x-goog-api-key",
        ),
    )
}
#: What the backup calls each CLI's models (every model the CLI asks for is mapped).
BACKUP_MODELS = {
    "claude": ("claude-*", "backup-claude"),
    "codex": ("gpt-*", "backup-gpt"),
    "gemini": ("gemini-*", "backup-gemini"),
}
#: npm's words for "the registry can't be reached" (anything else is a real failure).
_OFFLINE = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "ENETUNREACH", "network")


class Unavailable(Exception):
    """The CLIs can't be installed here for a reason outside the project (no npm, no registry)."""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "detour" / "clis"
    return Path(os.environ.get("DETOUR_CLI_CACHE") or default)


def _installed_version(root: Path, cli: Cli) -> str | None:
    try:
        doc = json.loads((root / "node_modules" / cli.package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = doc.get("version")
    return version if isinstance(version, str) else None


def install(names: Iterable[str] = tuple(CLIS), timeout: float = 900.0) -> dict[str, Path]:
    """Each named CLI's executable, installed at its pinned version into `cache_dir()` if missing."""
    root = cache_dir()
    wanted = [CLIS[n] for n in names]
    missing = [c for c in wanted if _installed_version(root, c) != c.version]
    if missing:
        npm = shutil.which("npm")
        if npm is None:
            raise Unavailable("npm is not installed")
        root.mkdir(parents=True, exist_ok=True)
        specs = [f"{c.package}@{c.version}" for c in missing]
        argv = [npm, "install", "--prefix", str(root), "--no-audit", "--no-fund", "--loglevel=error", *specs]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"npm install did not finish in {timeout:.0f}s (registry unreachable?)"
            ) from None
        if done.returncode != 0:
            if any(word in done.stderr for word in _OFFLINE):
                raise Unavailable(f"npm registry unreachable: {done.stderr.strip()[-300:]}")
            raise RuntimeError(f"npm install {' '.join(specs)} failed:\n{done.stderr[-2000:]}")
    return {c.name: root / "node_modules" / ".bin" / c.name for c in wanted}


def on_path() -> dict[str, Path]:
    """The CLIs a user has installed themselves (any version), by name."""
    found = {name: shutil.which(name) for name in CLIS}
    return {name: Path(path) for name, path in found.items() if path is not None}


@dataclass
class Outcome:
    """One CLI run: how it ended and what the providers saw meanwhile."""

    cli: str
    mode: str
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    timed_out: bool = False


@dataclass
class Rig:
    """Mock providers `primary` and `backup` for all three apps, and a mitmdump with Detour in front of
    them: a system-proxy listener and one base-URL listener per API.

    `primary_fault`: None (healthy), an HTTP status it answers every request with, or "refused"
    (nothing listens at its address).
    """

    workdir: Path
    primary_fault: int | str | None = None
    backup_websocket: bool = True
    #: The backup's `api` per CLI (e.g. {"claude": "openai-chat"}: Detour translates for it).
    backup_apis: dict[str, str] = field(default_factory=dict)
    primary: MockProvider | None = None
    backup: MockProvider = field(init=False)
    md: Mitmdump = field(init=False)
    reverse_ports: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> Rig:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.backup = MockProvider("backup", websocket=self.backup_websocket).start()
        if self.primary_fault == "refused":
            primary_url = f"http://127.0.0.1:{free_port()}"
        else:
            self.primary = MockProvider("primary").start()
            primary_url = self.primary.base_url
            if isinstance(self.primary_fault, int):
                self.primary.fault("status", status=self.primary_fault)
        try:
            self._start_detour(primary_url)
        except BaseException:
            self._stop_mocks()
            raise
        return self

    def _start_detour(self, primary_url: str) -> None:
        apps = {}
        for cli in CLIS.values():
            pattern, model = BACKUP_MODELS[cli.name]
            translated = {"api": self.backup_apis[cli.name]} if cli.name in self.backup_apis else {}
            queue = [
                configs.provider("primary", primary_url, configs.PRIMARY_KEY_ENV),
                configs.provider(
                    "backup",
                    self.backup.base_url,
                    configs.BACKUP_KEY_ENV,
                    models={pattern: model},
                    **translated,
                ),
            ]
            apps[cli.app] = configs.app(cli.host, queue)
        document = configs.config(apps, timeouts={"connect": "2s", "first_byte": "20s", "idle": "20s"})
        cfg = configs.write(self.workdir / "config.yaml", document)
        self.reverse_ports = {cli.name: free_port() for cli in CLIS.values()}
        reverse = {self.reverse_ports[c.name]: f"https://{c.host}" for c in CLIS.values()}
        self.md = Mitmdump.start(
            cfg,
            regular_port=free_port(),
            reverse=reverse,
            confdir=self.workdir / "mitmproxy",
            env=configs.KEY_ENV,
        )

    def __exit__(self, *exc: object) -> None:
        try:
            self.md.stop()
        finally:
            self._stop_mocks()

    def _stop_mocks(self) -> None:
        self.backup.stop()
        if self.primary is not None:
            self.primary.stop()

    def base_url(self, cli: str) -> str:
        port = self.reverse_ports[cli]
        return f"http://127.0.0.1:{port}/v1" if cli == "codex" else f"http://127.0.0.1:{port}"

    def env(self, cli: str, mode: str, home: Path) -> dict[str, str]:
        """A clean environment: nothing of the caller's (real keys, proxies, base URLs) leaks in."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "NO_COLOR": "1",
            "CI": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "GEMINI_TELEMETRY_ENABLED": "false",
        }
        if mode == "proxy":
            ca = str(self.md.ca_cert_path)
            proxy = self.md.proxy_url
            env.update(HTTPS_PROXY=proxy, https_proxy=proxy, NODE_EXTRA_CA_CERTS=ca, SSL_CERT_FILE=ca)
        elif mode != "base-url":
            raise ValueError(f"mode is 'base-url' or 'proxy', got {mode!r}")
        if cli == "claude":
            env["ANTHROPIC_API_KEY"] = CLIENT_KEY
            if mode == "base-url":
                env["ANTHROPIC_BASE_URL"] = self.base_url(cli)
        elif cli == "codex":
            env["OPENAI_API_KEY"] = CLIENT_KEY
            env["CODEX_HOME"] = str(home / ".codex")
        elif cli == "gemini":
            env["GEMINI_API_KEY"] = CLIENT_KEY
            if mode == "base-url":
                env["GOOGLE_GEMINI_BASE_URL"] = self.base_url(cli)
        return env

    def run(
        self,
        cli: str,
        exe: Path,
        mode: str,
        prompt: str = "say hi",
        timeout: float = 120.0,
        home: Path | None = None,
        args: tuple[str, ...] = (),
    ) -> Outcome:
        """Run one CLI non-interactively, in a fresh home (or `home`), through Detour in `mode`."""
        home = home or self.workdir / f"home-{cli}-{mode}-{time.monotonic_ns()}"
        home.mkdir(parents=True, exist_ok=True)
        env = self.env(cli, mode, home)
        argv = [*_argv(cli, exe, prompt, self.base_url(cli) if mode == "base-url" else None), *args]
        if cli == "codex":
            (home / ".codex").mkdir()
            login = [str(exe), "login", "--with-api-key"]
            subprocess.run(
                login, input=CLIENT_KEY, env=env, capture_output=True, text=True, timeout=60, check=True
            )
        if cli == "gemini":
            (home / ".gemini").mkdir()
            settings: dict[str, Any] = {"security": {"auth": {"selectedType": "gemini-api-key"}}}
            (home / ".gemini" / "settings.json").write_text(json.dumps(settings))
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                env=env,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else e.stderr or ""
            return Outcome(cli, mode, None, time.monotonic() - started, out, err, timed_out=True)
        return Outcome(cli, mode, done.returncode, time.monotonic() - started, done.stdout, done.stderr)


def _argv(cli: str, exe: Path, prompt: str, base_url: str | None) -> list[str]:
    if cli == "claude":
        return [str(exe), "-p", prompt]
    if cli == "codex":
        options = ["-c", f'openai_base_url="{base_url}"'] if base_url else []
        return [str(exe), "exec", "--skip-git-repo-check", *options, prompt]
    if cli == "gemini":
        return [str(exe), "-p", prompt, "--skip-trust"]
    raise ValueError(f"unknown CLI {cli!r}")
