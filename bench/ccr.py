"""claude-code-router (ccr) as a comparison proxy for the bench: install it, configure it, start it.

ccr is a Node proxy that Claude Code users put in front of their providers; the bench runs it between
the load generator and a mock Anthropic provider to compare its per-request cost with Detour's.

What the pinned release (2.0.0, one bundled file ``dist/cli.js``, no npm dependencies) does, read
from that file:

* Config: ``$HOME/.claude-code-router/config.json`` (``os.homedir()``, so the HOME we pass); keys
  ``Providers``, ``Router``, ``LOG``, ``HOST``, ``PORT``, ``APIKEY``, ``CUSTOM_ROUTER_PATH``. The
  environment is not merged into it, except ``SERVICE_PORT``, which overrides ``PORT``.
* ``node dist/cli.js start`` builds the Fastify server and listens in that very process: no fork,
  no worker children, it just writes its PID to ``.claude-code-router.pid``. (Every other subcommand,
  e.g. ``ccr code``/``ccr restart``, spawns a detached ``cli.js start``.) SIGINT/SIGTERM close the
  server and exit 0. ``start`` refuses to run ("server is running") while that PID file names a live
  process, so :func:`prepare` removes a stale one.
* ``LOG: false`` gives Fastify no logger at all: nothing under ``logs/`` and nothing per request on
  stdout (one "Loaded JSON config" line at start-up).
* A provider whose ``transformer.use`` is exactly ``["Anthropic"]`` (the transformer that owns
  ``/v1/messages``) is "bypassed": no Anthropic->OpenAI->Anthropic conversion; the request JSON goes
  to ``api_base_url`` (the full URL, used as is) and the upstream response comes back untranslated.
* Without ``APIKEY`` ccr asks for no key (it then only binds 127.0.0.1 and rejects foreign
  ``Origin`` headers); the client's ``x-api-key`` is replaced by the provider's ``api_key``.

It is still not a byte pass-through, even bypassed: every ``/v1/messages`` body is parsed, counted
with tiktoken (cl100k) for routing, given ``"stream": false`` when it has no ``stream``, and
re-serialised; the ``model`` goes through the router (we install one that keeps it); upstream
response headers are dropped and a non-streaming answer is re-serialised. SSE is piped as it arrives.
An upstream error keeps its status, but its body is wrapped in ccr's own error JSON (with a stack).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

CCR_VERSION = "2.0.0"
PACKAGE = "@musistudio/claude-code-router"
PROVIDER = "mock"

# The router ccr calls for every /v1/messages request (CUSTOM_ROUTER_PATH): it returns
# "provider,model" for the client's own model, so the model is not rewritten to a fixed
# Router.default (which would also make haiku requests look like sonnet ones upstream).
_ROUTER_JS = """\
// Written by detour's bench/ccr.py: send every request to the one provider, keeping its model.
module.exports = async function router(req) {
  return "%s," + req.body.model;
};
"""

# Variables that would change where or how ccr listens or connects; the bench's environment
# must not leak into the measured proxy.
_DROPPED_ENV = (
    "SERVICE_PORT",
    "NODE_OPTIONS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)


class CcrUnavailable(Exception):
    """ccr cannot be used here (npm unreachable, install failed, no node, won't start).

    The bench skips ccr's column with the message, which says why in one line.
    """


def _package_dir(cache: Path) -> Path:
    return cache / "node_modules" / "@musistudio" / "claude-code-router"


def _installed_entry(cache: Path) -> Path | None:
    """The entry if `cache` already holds exactly the pinned version, so repeated runs skip npm."""
    pkg = _package_dir(cache)
    try:
        version = json.loads((pkg / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    entry = pkg / "dist" / "cli.js"
    return entry if version == CCR_VERSION and entry.is_file() else None


def _npm_reason(output: str) -> str:
    """One line out of npm's multi-line error report: its error code and first message line.

    npm prints ``npm error code ECONNREFUSED`` (``npm ERR!`` before npm 10), then errno/syscall
    lines, the message, a stack and a pointer to its debug log; only the code and message say why.
    """
    body: list[str] = []
    for raw in output.splitlines():
        line = raw.strip()
        for prefix in ("npm error", "npm ERR!"):
            if line.startswith(prefix):
                body.append(line[len(prefix) :].strip())
    code = next((ln.split(None, 1)[1] for ln in body if ln.startswith("code ") and " " in ln), "")
    skip = ("code ", "errno ", "syscall ", "at ", "A complete log", "}")
    message = next((ln for ln in body if ln and not ln.startswith(skip)), "")
    if not body:
        message = next((ln.strip() for ln in reversed(output.splitlines()) if ln.strip()), "no output")
    reason = ": ".join(part for part in (code, message) if part)
    return reason[:300]


def install(cache: Path, timeout: float = 300.0) -> Path:
    """npm-install the pinned ccr into `cache` (reused when already there); return ``dist/cli.js``.

    The entry is run with ``node`` directly rather than through the ``ccr`` bin link, so the
    process the caller starts is the server itself. Install scripts are skipped: the package has
    none that the server needs (it ships one bundled file plus the tiktoken wasm).
    """
    entry = _installed_entry(cache)
    if entry is not None:
        return entry
    npm = shutil.which("npm")
    if npm is None:
        raise CcrUnavailable("npm not found on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        npm,
        "install",
        "--prefix",
        str(cache),
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--ignore-scripts",
        "--loglevel=error",
        # npm's default (2 retries, 10-60 s back-off) spends over a minute on a refused registry.
        "--fetch-retries=1",
        "--fetch-retry-mintimeout=2000",
        "--fetch-retry-maxtimeout=5000",
        f"{PACKAGE}@{CCR_VERSION}",
    ]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise CcrUnavailable(f"npm install {PACKAGE}@{CCR_VERSION} timed out after {timeout:.0f}s") from None
    except OSError as e:
        raise CcrUnavailable(f"npm install could not run: {e}") from None
    if proc.returncode != 0:
        why = _npm_reason(proc.stderr or proc.stdout or "")
        raise CcrUnavailable(f"npm install {PACKAGE}@{CCR_VERSION} failed ({proc.returncode}): {why}")
    entry = _installed_entry(cache)
    if entry is None:
        raise CcrUnavailable(f"npm install finished but {PACKAGE}@{CCR_VERSION} dist/cli.js is missing")
    return entry


def config(upstream: str, port: int, router_path: Path) -> dict[str, object]:
    """ccr's config.json: one bypassed Anthropic provider at `upstream`, no logs, no client key.

    ``api_key`` must be non-empty or ccr silently ignores the provider; it is what upstream sees
    as ``x-api-key``. ``Router.default`` is only the fallback should the custom router fail.
    """
    return {
        "LOG": False,
        "HOST": "127.0.0.1",
        "PORT": port,
        "CUSTOM_ROUTER_PATH": str(router_path),
        "Providers": [
            {
                "name": PROVIDER,
                "api_base_url": upstream.rstrip("/") + "/v1/messages",
                "api_key": "sk-ccr-bench",
                "models": ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"],
                "transformer": {"use": ["Anthropic"]},
            }
        ],
        "Router": {"default": f"{PROVIDER},claude-sonnet-4-5"},
    }


def _node() -> str:
    """The node binary, checked against the package's ``engines`` (node >= 20) before ccr is run."""
    node = shutil.which("node")
    if node is None:
        raise CcrUnavailable("node not found on PATH")
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)
        major = int(out.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise CcrUnavailable(f"{node} --version failed: {e}") from None
    if major < 20:
        raise CcrUnavailable(f"ccr {CCR_VERSION} needs node >= 20, found {out.stdout.strip()}")
    return node


def prepare(workdir: Path, entry: Path, upstream: str, port: int) -> tuple[list[str], dict[str, str]]:
    """Write ccr's config under a private HOME in `workdir`; return (argv, env) to run it in the foreground.

    ccr then serves ``POST /v1/messages`` on 127.0.0.1:`port`, forwarding to `upstream` (a base URL
    such as ``http://127.0.0.1:40001``). The argv's process (``node cli.js start``) is the server, so
    its PID is the one to read CPU time and RSS from, and SIGINT/SIGTERM stop it. A private HOME
    (and TMPDIR) keeps the user's own ccr config, PID file and ``~/.claude.json`` out of it.
    """
    node = _node()
    home = (workdir / "home").resolve()
    ccr_dir = home / ".claude-code-router"
    tmp = (workdir / "tmp").resolve()
    for d in (ccr_dir, ccr_dir / "logs", ccr_dir / "plugins", tmp):
        d.mkdir(parents=True, exist_ok=True)
    (ccr_dir / ".claude-code-router.pid").unlink(missing_ok=True)
    router_path = (workdir / "ccr-router.js").resolve()
    router_path.write_text(_ROUTER_JS % PROVIDER, encoding="utf-8")
    (ccr_dir / "config.json").write_text(
        json.dumps(config(upstream, port, router_path), indent=2) + "\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(HOME=str(home), TMPDIR=str(tmp), NODE_ENV="production", NO_COLOR="1")
    return [node, str(entry.resolve()), "start"], env
