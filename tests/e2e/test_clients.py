"""The real CLIs (Claude Code, Codex, Gemini CLI at pinned versions) through a real mitmdump with
Detour, in base-URL and system-proxy mode, primary failing and backup healthy: each exits 0 with the
backup's answer, the backup sees its own key in its auth style and never the client's, and every
model the CLI asks for is mapped. Codex runs over both its transports (WebSocket, HTTP streaming).

The CLIs come from npm (tests/support/clis.py); only an unreachable registry skips these tests.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import clis
import pytest
from configs import CLIENT_KEY, KEY_B
from mockprovider import Received

pytestmark = [pytest.mark.integration, pytest.mark.clients]

#: Every CLI run of this session, for the table printed at its end (tests/conftest.py).
RUNS: list[dict[str, object]] = []

#: The model API's paths per CLI (other calls, e.g. Codex's GET /v1/models, are not model requests).
MODEL_PATHS = {"claude": "/v1/messages", "codex": "/v1/responses", "gemini": "/v1beta/models/"}


@pytest.fixture(scope="module")
def executables() -> dict[str, Path]:
    try:
        return clis.install()
    except clis.Unavailable as e:
        pytest.skip(f"the CLIs can't be installed: {e}")


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[list[clis.Rig]]:
    rigs: list[clis.Rig] = []
    yield rigs
    for rig in reversed(rigs):
        rig.__exit__(None, None, None)


def summary() -> dict[str, object] | None:
    """The CLI x mode table: exit codes and wall times of every run."""
    if not RUNS:
        return None
    lines = ["| CLI | mode | primary | exit | wall s |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['cli']} | {r['mode']} | {r['primary']} | {r['exit']} | {r['seconds']:.1f} |" for r in RUNS
    ]
    return {"runs": RUNS, "table": "\n".join(lines)}


def run(
    rig: clis.Rig, cli: str, exe: Path, mode: str, primary: str, prompt: str = "say hi", transport: str = ""
) -> clis.Outcome:
    outcome = rig.run(cli, exe, mode, prompt=prompt)
    label = f"{mode} ({transport})" if transport else mode
    RUNS.append({"cli": cli, "mode": label, "primary": primary, "exit": outcome.returncode,
                 "seconds": round(outcome.seconds, 2)})  # fmt: skip
    return outcome


def start(rigs: list[clis.Rig], tmp_path: Path, **kw: object) -> clis.Rig:
    rig = clis.Rig(tmp_path / f"rig{len(rigs)}", **kw)  # type: ignore[arg-type]
    rig.__enter__()
    rigs.append(rig)
    return rig


def describe(outcome: clis.Outcome, rig: clis.Rig) -> str:
    return (
        f"{outcome.cli} {outcome.mode}: rc={outcome.returncode} in {outcome.seconds:.1f}s"
        f"\n--- stdout ---\n{outcome.stdout[-1500:]}\n--- stderr ---\n{outcome.stderr[-3000:]}"
        f"\n--- mitmdump ---\n{rig.md.log_tail(30)}"
    )


def model_of(rec: Received, cli: str) -> str | None:
    if cli == "gemini":
        return rec.path.split("/models/", 1)[1].split(":", 1)[0]
    if rec.method == "GET":
        return None  # a WebSocket handshake: the model travels in its messages
    model = json.loads(rec.body).get("model")
    return model if isinstance(model, str) else None


def assert_backup_served_properly(rig: clis.Rig, cli: str) -> None:
    spec = clis.CLIS[cli]
    model_requests = [r for r in rig.backup.received if r.path.startswith(MODEL_PATHS[cli])]
    assert model_requests, f"the backup got no model request: {[r.path for r in rig.backup.received]}"
    for rec in rig.backup.received:
        wire = json.dumps(rec.raw_headers) + rec.path + rec.body.decode("utf-8", "replace")
        assert CLIENT_KEY not in wire, f"the client's key reached the backup: {rec.method} {rec.path}"
        assert rec.headers.get(spec.auth_header) == spec.auth_prefix + KEY_B, (rec.path, rec.headers)
    mapped = clis.BACKUP_MODELS[cli][1]
    for rec in model_requests:
        model = model_of(rec, cli)
        assert model in (None, mapped), f"model not mapped: {model} on {rec.path}"
    for message in rig.backup.ws_messages:
        doc = json.loads(message)
        if doc.get("type") == "response.create":
            assert doc.get("model") == mapped, doc.get("model")


def assert_ran_on_backup(outcome: clis.Outcome, rig: clis.Rig) -> None:
    assert outcome.returncode == 0, describe(outcome, rig)
    assert "hello from backup" in outcome.stdout, describe(outcome, rig)
    assert_backup_served_properly(rig, outcome.cli)
    if rig.primary is not None:
        for rec in rig.primary.received:
            assert CLIENT_KEY not in json.dumps(rec.raw_headers) + rec.path
    # The switch is logged when the exchange ends, which can be just after the client has its last
    # byte and exits: wait for it (bounded), then check the whole log.
    assert rig.md.wait_for_log("served by backup after primary", timeout=10), rig.md.log_tail()
    log = rig.md.log_text()
    assert CLIENT_KEY not in log and KEY_B not in log


# --- failover, every CLI in both modes ------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("cli", "mode", "fault"),
    [
        ("claude", "base-url", 529),
        ("claude", "base-url", "refused"),
        ("claude", "proxy", 529),
        ("codex", "base-url", 503),
        ("codex", "base-url", "refused"),
        ("codex", "proxy", 503),
        ("gemini", "base-url", 503),
        ("gemini", "base-url", "refused"),
        ("gemini", "proxy", 503),
    ],
)
def test_cli_fails_over_to_the_backup(
    cli: str,
    mode: str,
    fault: int | str,
    executables: dict[str, Path],
    rig_factory: list[clis.Rig],
    tmp_path: Path,
) -> None:
    rig = start(rig_factory, tmp_path, primary_fault=fault)
    outcome = run(rig, cli, executables[cli], mode, str(fault), transport="WebSocket" * (cli == "codex"))
    assert_ran_on_backup(outcome, rig)
    if cli == "codex":  # Codex's first transport: the backup took the WebSocket
        assert rig.backup.ws_messages, describe(outcome, rig)


@pytest.mark.timeout(300)
def test_codex_over_http_streaming_fails_over_too(
    executables: dict[str, Path], rig_factory: list[clis.Rig], tmp_path: Path
) -> None:
    """A backup without WebSocket answers the upgrade 404: Codex falls back to HTTP streaming at once,
    and that is served by the backup too (the 404 charges nobody)."""
    rig = start(rig_factory, tmp_path, primary_fault=503, backup_websocket=False)
    outcome = run(rig, "codex", executables["codex"], "base-url", "503", transport="HTTP")
    assert_ran_on_backup(outcome, rig)
    assert not rig.backup.ws_messages
    assert any(r.method == "POST" and r.path == "/v1/responses" for r in rig.backup.received)
    assert outcome.seconds < 30, describe(outcome, rig)


# --- a healthy primary stays the primary ----------------------------------------------------------


@pytest.mark.timeout(300)
def test_codex_turns_on_a_healthy_primary_never_charge_it(
    executables: dict[str, Path], rig_factory: list[clis.Rig], tmp_path: Path
) -> None:
    """Six turns, three over WebSocket and three over HTTP streaming (Responses streams end with
    `response.completed` and no `[DONE]`): all served by the primary, none counted as a failure."""
    rig = start(rig_factory, tmp_path)
    primary = rig.primary
    assert primary is not None
    for turn in range(6):
        primary.websocket = rig.backup.websocket = turn < 3
        transport = "WebSocket" if turn < 3 else "HTTP"
        outcome = run(rig, "codex", executables["codex"], "base-url", "healthy", f"turn {turn}", transport)
        assert outcome.returncode == 0, describe(outcome, rig)
        assert "hello from primary" in outcome.stdout, describe(outcome, rig)
    assert not rig.backup.received
    upgrades = [r for r in primary.received if r.method == "GET" and r.path == "/v1/responses"]
    posts = [r for r in primary.received if r.method == "POST" and r.path == "/v1/responses"]
    assert len(upgrades) >= 6 and len(posts) >= 3  # turns 4-6: each tries the socket, then HTTP
    with sqlite3.connect(f"file:{rig.workdir / 'state.db'}?mode=ro", uri=True) as db:
        outcomes = db.execute(
            "SELECT outcome, COUNT(*) FROM attempt WHERE app='codex' GROUP BY outcome"
        ).fetchall()
    assert dict(outcomes).keys() <= {"success", "client_error"}, outcomes


def test_claude_code_runs_a_tool_round_trip_through_an_openai_chat_backup(
    executables: dict[str, Path], rig_factory: list[clis.Rig], tmp_path: Path
) -> None:
    """Issue 13's must-hold: the primary is overloaded, the backup speaks only OpenAI Chat. The model
    (the backup) asks for Claude Code's Read tool; Claude Code runs it, its result goes back as a
    `tool` message with the call's id, and the final answer shows what the tool read."""
    rig = start(rig_factory, tmp_path, primary_fault=529, backup_apis={"claude": "openai-chat"})
    home = rig.workdir / "home-claude-tool"
    home.mkdir(parents=True)
    note = home / "note.txt"
    note.write_text("detour-tool-round-trip-ok\n")
    rig.backup.fault("tool_round_trip", tool="Read", arguments={"file_path": str(note)})
    outcome = rig.run("claude", executables["claude"], "base-url", prompt="read note.txt", home=home,
                      args=("--allowedTools", "Read"))  # fmt: skip
    RUNS.append({"cli": "claude", "mode": "base-url (openai-chat backup, tool)", "primary": "529",
                 "exit": outcome.returncode, "seconds": round(outcome.seconds, 2)})  # fmt: skip
    assert outcome.returncode == 0, describe(outcome, rig)
    assert "the tool said:" in outcome.stdout and "detour-tool-round-trip-ok" in outcome.stdout, describe(
        outcome, rig
    )
    chats = [json.loads(r.body) for r in rig.backup.requests_to("/v1/chat/completions")]
    results = [m for c in chats for m in c["messages"] if m.get("role") == "tool"]
    assert results and results[-1]["tool_call_id"] == "call_mock_1"
    assert "detour-tool-round-trip-ok" in results[-1]["content"]
    for rec in rig.backup.received:
        wire = json.dumps(rec.raw_headers) + rec.body.decode("utf-8", "replace")
        assert CLIENT_KEY not in wire and rec.headers.get("authorization") == f"Bearer {KEY_B}"


def test_codex_runs_a_tool_round_trip_through_an_openai_chat_backup(
    executables: dict[str, Path], rig_factory: list[clis.Rig], tmp_path: Path
) -> None:
    """The same for Codex: its WebSocket is told to use HTTP (the backup is reached over HTTP only),
    its Responses request is translated to Chat, the model asks for `exec_command`, Codex runs it, and
    the output goes back as a `tool` message with the call's id."""
    rig = start(rig_factory, tmp_path, primary_fault=500, backup_apis={"codex": "openai-chat"})
    home = rig.workdir / "home-codex-tool"
    rig.backup.fault("tool_round_trip", tool="exec_command", arguments={"cmd": "echo detour-codex-round-trip-ok"})  # noqa: E501
    # A model Codex knows sends its tools; the sandbox needs bubblewrap, which CI machines may lack.
    args = ("-m", "gpt-5-codex", "--dangerously-bypass-approvals-and-sandbox")
    outcome = rig.run("codex", executables["codex"], "base-url", prompt="run echo", home=home, args=args)
    RUNS.append({"cli": "codex", "mode": "base-url (openai-chat backup, tool)", "primary": "500",
                 "exit": outcome.returncode, "seconds": round(outcome.seconds, 2)})  # fmt: skip
    assert outcome.returncode == 0, describe(outcome, rig)
    assert "the tool said:" in outcome.stdout and "detour-codex-round-trip-ok" in outcome.stdout, describe(outcome, rig)  # noqa: E501
    chats = [json.loads(r.body) for r in rig.backup.requests_to("/v1/chat/completions")]
    results = [m for c in chats for m in c["messages"] if m.get("role") == "tool"]
    assert results and results[-1]["tool_call_id"] == "call_mock_1"
    assert "detour-codex-round-trip-ok" in results[-1]["content"]
    assert all(c["model"] == clis.BACKUP_MODELS["codex"][1] for c in chats)
    for rec in rig.backup.received:
        wire = json.dumps(rec.raw_headers) + rec.body.decode("utf-8", "replace")
        assert CLIENT_KEY not in wire and rec.headers.get("authorization") == f"Bearer {KEY_B}"
