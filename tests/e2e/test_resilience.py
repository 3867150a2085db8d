"""Issue 16's scenarios, end to end: a real mitmdump running Detour with the example `config.yaml`'s
settings (its timeouts, breaker, retry and continuation policies; only the providers are mocks), and
the official SDKs as streaming clients, for the Anthropic Messages and the OpenAI Chat dialects.

Each scenario records how the client's answer ended and how long it took; the session prints the
table (`summary`), which is the "after" column of the closing note. Scenarios that wait for one of
the example config's timeouts (30 s, 15 s, 120 s) run at the same time, so the suite costs about the
longest of them.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import configs
import openai
import pytest
import yaml
from harness import REPO_ROOT, Mitmdump, free_port
from mockprovider import MockProvider

from addon.config import parse_duration

pytestmark = pytest.mark.integration

EXAMPLE: dict[str, Any] = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))
#: The example's apps whose settings each dialect runs with.
EXAMPLE_APP = {"anthropic": "claude", "chat": "codex"}
FAMILY = {"anthropic": "anthropic", "chat": "openai"}
DIALECTS = ("anthropic", "chat")
BACKUP_VAR, BACKUP_KEY = "DETOUR_RS_BACKUP_KEY", "sk-resilience-backup-0001"
CLIENT_KEY = configs.CLIENT_KEY


def timeout_of(dialect: str, name: str) -> float:
    """The example config's limit `name` for the dialect's app (its own override, else the top's)."""
    app = EXAMPLE["apps"][EXAMPLE_APP[dialect]]
    value = (app.get("timeouts") or {}).get(name, EXAMPLE["timeouts"][name])
    return parse_duration(value)


SDK_TIMEOUT = 300.0  # above every example limit: a hang shows as a slow row, not a client timeout

_base = importlib.import_module("anthropic._base_client")
httpx: Any = getattr(_base, "httpx2", None) or _base.httpx


@dataclass
class Row:
    scenario: str
    dialect: str
    outcome: str  # "ok: <text>" or "error: <what the SDK raised>"
    seconds: float


ROWS: list[Row] = []
_rows_lock = threading.Lock()


def summary() -> dict[str, Any] | None:
    """The table conftest prints at the end of the session."""
    if not ROWS:
        return None
    lines = ["| scenario | dialect | the client's answer | time to answer (s) |", "|---|---|---|---|"]
    lines += [f"| {r.scenario} | {r.dialect} | {r.outcome} | {r.seconds:.2f} |" for r in ROWS]
    return {"rows": [vars(r) for r in ROWS], "table": "\n".join(lines)}


@dataclass
class Lane:
    """One scenario's providers and the port its client talks to."""

    primary: MockProvider
    backup: MockProvider
    port: int
    dialect: str

    def ask(self, scenario: str) -> Row:
        """One streamed request through the official SDK's accumulator; the row it makes."""
        started = time.monotonic()
        try:
            outcome = "ok: " + (self._anthropic() if self.dialect == "anthropic" else self._chat())
        except (anthropic.APIError, openai.APIError, httpx.HTTPError) as e:
            status = getattr(e, "status_code", None)
            outcome = f"error: {type(e).__name__}" + (f" {status}" if status else "")
        row = Row(scenario, self.dialect, outcome, time.monotonic() - started)
        with _rows_lock:
            ROWS.append(row)
        return row

    def _anthropic(self) -> str:
        client = anthropic.Anthropic(
            base_url=f"http://127.0.0.1:{self.port}", api_key=CLIENT_KEY, max_retries=0, timeout=SDK_TIMEOUT
        )
        messages: Any = [{"role": "user", "content": "hi"}]
        with client.messages.stream(model="claude-sonnet-4", max_tokens=64, messages=messages) as stream:
            message = stream.get_final_message()
        assert message.stop_reason == "end_turn" and len(message.content) == 1
        block = message.content[0]
        assert block.type == "text"
        return block.text

    def _chat(self) -> str:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{self.port}/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=SDK_TIMEOUT,
        )
        messages: Any = [{"role": "user", "content": "hi"}]
        with client.chat.completions.stream(
            model="gpt-5", messages=messages, stream_options={"include_usage": True}
        ) as stream:
            completion = stream.get_final_completion()
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens > 0
        return str(completion.choices[0].message.content)


Lab = Callable[..., dict[tuple[str, str], Lane]]


@pytest.fixture
def lab(
    tmp_path: Path,
    mock_factory: Callable[[str], MockProvider],
    mitmdump_factory: Callable[..., Mitmdump],
) -> Iterator[Lab]:
    """``lab(*scenarios)`` -> one mitmdump with an app per (scenario, dialect), each with its own
    primary (the client's key passes through) and backup (its own key), and the example config's
    settings for that dialect's app."""
    started: list[Mitmdump] = []

    def make(*scenarios: str) -> dict[tuple[str, str], Lane]:
        apps: dict[str, Any] = {}
        lanes: dict[tuple[str, str], Lane] = {}
        reverse: dict[int, str] = {}
        for i, (scenario, dialect) in enumerate((s, d) for s in scenarios for d in DIALECTS):
            primary, backup = mock_factory("primary"), mock_factory("backup")
            settings = {
                k: v
                for k, v in EXAMPLE["apps"][EXAMPLE_APP[dialect]].items()
                if k not in ("hosts", "providers")
            }
            host = f"lane{i}.resilience.test"
            apps[f"lane{i}"] = {
                **settings,
                "hosts": [host],
                "api": FAMILY[dialect],
                "providers": [
                    {"id": "primary", "base_url": primary.base_url},
                    {"id": "backup", "base_url": backup.base_url, "api_key": f"${{{BACKUP_VAR}}}"},
                ],
            }
            port = free_port()
            reverse[port] = f"http://{host}"
            lanes[(scenario, dialect)] = Lane(primary, backup, port, dialect)
        document = {
            "state": "state.db",
            "breaker": EXAMPLE["breaker"],
            "timeouts": EXAMPLE["timeouts"],
            "switch_min_interval": EXAMPLE["switch_min_interval"],
            "apps": apps,
        }
        config = configs.write(tmp_path / "config.yaml", document)
        started.append(mitmdump_factory(config, reverse=reverse, env={BACKUP_VAR: BACKUP_KEY}))
        return lanes

    yield make
    for md in started:
        assert md.alive, md.log_tail()
        assert BACKUP_KEY not in md.log_text()


def run_together(jobs: dict[tuple[str, str], Callable[[], Row]]) -> dict[tuple[str, str], Row]:
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {key: pool.submit(job) for key, job in jobs.items()}
        return {key: future.result(timeout=SDK_TIMEOUT + 30) for key, future in futures.items()}


# --- 1-3: the scenarios that wait for a limit, all at once ---------------------------------------


def test_silent_slow_to_start_and_stalled_providers_are_left_within_the_example_limits(lab: Lab) -> None:
    lanes = lab("silent", "slow first token", "stalled mid-answer")
    for dialect in DIALECTS:
        lanes[("silent", dialect)].primary.fault("hang")
        lanes[("slow first token", dialect)].primary.fault("slow_first_token", delay=20.0)
        # Anthropic: message_start, the text block, "hello"; Chat: the role chunk, "hello".
        events = 3 if dialect == "anthropic" else 2
        lanes[("stalled mid-answer", dialect)].primary.fault("sse_stall", events=events)
    rows = run_together({key: (lambda key=key: lanes[key].ask(key[0])) for key in lanes})
    for dialect in DIALECTS:
        first_byte, first_token = timeout_of(dialect, "first_byte"), timeout_of(dialect, "first_token")
        idle = timeout_of(dialect, "idle")
        silent = rows[("silent", dialect)]
        assert silent.outcome == "ok: hello from backup"
        assert first_byte <= silent.seconds < first_byte + 3, silent  # was connect + 120 s, and lost
        slow = rows[("slow first token", dialect)]
        assert slow.outcome == "ok: hello from backup"
        assert first_token <= slow.seconds < first_token + 3, slow  # the primary's token came at 20 s
        stalled = rows[("stalled mid-answer", dialect)]
        assert stalled.outcome == "ok: hello from backup"  # "hello" from the primary, the rest continued
        assert idle <= stalled.seconds < idle + 3, stalled
        assert lanes[("stalled mid-answer", dialect)].backup.continued == ["hello"]
    for lane in lanes.values():
        lane.primary.healthy()


# --- 3 (cut), 4, 5, 7: the scenarios that take no time ------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_stream_cut_mid_answer_is_continued_by_the_backup(lab: Lab, dialect: str) -> None:
    lane = lab("cut mid-answer")[("cut mid-answer", dialect)]
    lane.primary.fault("sse_cut", events=3 if dialect == "anthropic" else 2)
    row = lane.ask("cut mid-answer")
    assert row.outcome == "ok: hello from backup"
    assert lane.backup.continued == ["hello"]
    assert row.seconds < 3


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("scenario", "fault"), [
    ("429, Retry-After 1 s", {"status": 429, "retry_after": 1}),
    ("one 500", {"status": 500}),
])  # fmt: skip
def test_a_single_429_or_500_is_retried_on_the_same_provider(
    lab: Lab, dialect: str, scenario: str, fault: dict[str, Any]
) -> None:
    lane = lab(scenario)[(scenario, dialect)]
    lane.primary.fault("status", times=1, **fault)
    row = lane.ask(scenario)
    assert row.outcome == "ok: hello from primary"
    assert lane.backup.count() == 0 and lane.primary.count() == 2
    wait = float(fault.get("retry_after", 0.5))
    assert wait <= row.seconds < wait + 2  # the whole Retry-After waited, never less


CONTEXT_EXCEEDED = {
    "anthropic": {"type": "error", "error": {
        "type": "invalid_request_error", "message": "prompt is too long: 215000 tokens > 200000 maximum"}},
    "chat": {"error": {"message": "This model's maximum context length is 128000 tokens. However, your "
                       "messages resulted in 215000 tokens.", "type": "invalid_request_error",
                       "param": "messages", "code": "context_length_exceeded"}},
}  # fmt: skip
CONTENT_POLICY = {
    "anthropic": {"type": "error", "error": {"type": "invalid_request_error",
                                             "message": "Output blocked by content filtering policy"}},
    "chat": {"error": {"message": "Your request was rejected as a result of our safety system.",
                       "type": "invalid_request_error", "param": None, "code": "content_policy_violation"}},
}  # fmt: skip


@pytest.mark.parametrize("dialect", DIALECTS)
def test_too_long_for_the_primary_is_served_by_a_backup_a_content_policy_400_is_not(
    lab: Lab, dialect: str
) -> None:
    lanes = lab("400 context too long", "400 content policy")
    long, policy = lanes[("400 context too long", dialect)], lanes[("400 content policy", dialect)]
    long.primary.fault("status", status=400, body=CONTEXT_EXCEEDED[dialect])
    policy.primary.fault("status", status=400, body=CONTENT_POLICY[dialect])
    assert long.ask("400 context too long").outcome == "ok: hello from backup"
    assert policy.ask("400 content policy").outcome == "error: BadRequestError 400"
    assert policy.backup.count() == 0
    # Neither is held against the primary: three more "too long" answers leave its circuit closed.
    for _ in range(3):
        long.ask("400 context too long (again)")
    long.primary.healthy()
    assert long.ask("400 context too long, then healthy").outcome == "ok: hello from primary"


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_a_complete_chat_stream_without_done_is_a_success(lab: Lab, framing: str) -> None:
    scenario = f"Chat stream without [DONE] ({framing})"
    lane = lab(scenario)[(scenario, "chat")]
    lane.primary.fault("sse_no_done", framing=framing)
    # Four in a row: were each a failure, the third would open the primary's circuit.
    rows = [lane.ask(scenario if i == 0 else f"{scenario} (again)") for i in range(4)]
    assert [r.outcome for r in rows] == ["ok: hello from primary"] * 4
    assert lane.backup.count() == 0
