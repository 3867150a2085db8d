"""The lean launcher as users start it: `detour ...` and `python -m addon run ...` (real processes,
real mock providers on 127.0.0.1). The integration suite runs every case under both launchers; these
are what only the launcher does: its own entry points, refusals, user scripts beside Detour.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import configs
import pytest
from harness import LEAN_LAUNCHER, REPO_ROOT, free_port, mitmdump_executable, post_json, wait_for_port

pytestmark = pytest.mark.integration
START = 30.0


def claude_config(tmp_path: Path, primary: Any) -> Path:
    queue = [configs.provider("primary", primary.base_url)]
    document = configs.config({"claude": configs.app("api.anthropic.com", queue)})
    return configs.write(tmp_path / "config.yaml", document)


def ask(port: int) -> tuple[int, dict[str, str]]:
    document = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    status, headers, _ = post_json(port, "/v1/messages", document, {"x-api-key": "client-key"})
    return status, {k.lower(): v for k, v in headers.items()}


def test_python_m_addon_run_serves_and_stops_cleanly(tmp_path: Path, mock_factory: Any) -> None:
    primary = mock_factory("primary")
    port = free_port()
    config = claude_config(tmp_path, primary)
    argv = [sys.executable, "-m", "addon", "run", "--set", f"detour_config={config}",
            "--set", f"confdir={tmp_path / 'mitmproxy'}", "--set", "connection_strategy=lazy",
            "--mode", f"reverse:https://api.anthropic.com@127.0.0.1:{port}"]  # fmt: skip
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        assert wait_for_port(port, timeout=START), log.read_text()
        deadline = time.monotonic() + START
        while "detour: loaded" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        status, headers = ask(port)
        assert status == 200
        assert headers["x-detour-provider"] == "primary"
        assert primary.count() == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "detour: loaded" in log.read_text()
    assert "POST https://api.anthropic.com/v1/messages" in log.read_text()  # the one-line flow output


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ([str(mitmdump_executable(LEAN_LAUNCHER)), "--anticache"], "option anticache"),
        (
            [sys.executable, "-m", "addon", "run", "-w", "flows.mitm", "--set", "anticomp=true"],
            "options anticomp, save_stream_file",
        ),
    ],
)
def test_an_unsupported_option_exits_at_once_naming_it_and_the_way_out(
    argv: list[str], named: str, tmp_path: Path
) -> None:
    done = subprocess.run([*argv, "--set", f"confdir={tmp_path}"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert f"detour: {named} not supported by the lean launcher" in done.stderr
    assert "use mitmdump -s addon/detour.py" in done.stderr
    assert not (tmp_path / "flows.mitm").exists()


def test_a_users_script_runs_beside_detour_and_sees_its_answer(
    tmp_path: Path, mock_factory: Any, mitmdump_factory: Any
) -> None:
    primary = mock_factory("primary")
    script = tmp_path / "stamp.py"
    script.write_text(
        "class Stamp:\n"
        "    def response(self, flow):\n"
        "        provider = flow.response.headers.get('x-detour-provider', 'none')\n"
        "        flow.response.headers['x-user-script'] = 'saw ' + provider\n"
        "addons = [Stamp()]\n"
    )
    port = free_port()
    mitmdump_factory(claude_config(tmp_path, primary), reverse={port: "https://api.anthropic.com"},
                     program=LEAN_LAUNCHER, extra_args=["-s", str(script)])  # fmt: skip
    status, headers = ask(port)
    assert status == 200
    assert headers["x-user-script"] == "saw primary"  # the answer as Detour left it
