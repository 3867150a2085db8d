"""Usage in the attempt log: what the exchange measures of each attempt, how it is stored, how a
database written before usage accounting is migrated, and the `python -m addon usage` report."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_exchange import SSE, Script, app, script
from test_usage import ANTHROPIC_STREAM, CHAT_BODY, CHAT_STREAM

from addon.breaker import State
from addon.classify import ErrorKind, Outcome, Verdict
from addon.control import Control
from addon.exchange import Delivery, Done, Exchange, Forward, Record
from addon.formats import DIALECTS
from addon.formats.usage import Metering, Tokens
from addon.model import App, Config, Price, Provider
from addon.state import AttemptRecord, MemoryBackend, SqliteBackend
from addon.state.sqlite import read_attempts

REPO = Path(__file__).resolve().parents[2]
#: A database written by Detour before usage accounting (`tests/fixtures/make_v1_state.py`).
V1_DATABASE = REPO / "tests" / "fixtures" / "state-v1.db"
V1_COLUMNS = ("at", "app", "provider", "status", "outcome", "latency_ms", "error")


def body(model: str) -> bytes:
    return json.dumps({"model": model, "max_tokens": 5, "stream": True, "messages": []}).encode()


# --- what the exchange measures ----------------------------------------------------------------


def test_a_streamed_attempt_is_metered_with_its_timings_models_and_tokens() -> None:
    s = script(Delivery.STREAM, body=body("claude-sonnet-4-5"))
    s.clock.advance(0.1)
    s.connect()
    s.clock.advance(0.2)
    s.head(200, SSE)
    s.clock.advance(0.3)
    half = ANTHROPIC_STREAM.index(b"event: content_block_delta")
    s.data(ANTHROPIC_STREAM[:half])
    s.clock.advance(0.4)
    s.data(ANTHROPIC_STREAM[half:])
    s.end()
    (record,) = s.of(Record)
    metering = s.exchange.metering(record.attempt)
    assert metering == Metering(
        "anthropic", True, "claude-sonnet-4-5", "claude-sonnet-4-5", 300.0, 1000.0,
        Tokens(12, 30000, 2000, 345, None, "msg_01Usage", "claude-sonnet-4-5"),
    )  # fmt: skip
    (done,) = s.of(Done)
    assert done.result.metering == metering


def test_the_sent_model_is_the_provider_s_mapping_of_the_requested_one() -> None:
    s = script(Delivery.WHOLE, body=body("claude-sonnet-4-5"))
    primary = s.exchange.queue  # what is left: the backup
    mapped = Provider("backup", "https://b.example", models=(("claude-*", "glm-4.6"),))
    s.exchange.queue[:] = [mapped]
    assert primary == [mapped]
    s.answer(529, b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}')
    s.answer(200, json.dumps({**CHAT_BODY, "model": "glm-4.6"}).encode())
    failed, served = (s.exchange.metering(r.attempt) for r in s.of(Record))
    assert (failed.model_requested, failed.model, failed.tokens) == (
        "claude-sonnet-4-5",
        "claude-sonnet-4-5",
        None,
    )
    assert (served.model_requested, served.model) == ("claude-sonnet-4-5", "glm-4.6")
    assert failed.ttft_ms is None and not failed.streamed


def test_a_translated_attempt_is_metered_in_the_provider_s_dialect() -> None:
    chat = Provider(
        "chat", "https://c.example", api_key="k", models=(("claude-*", "gpt-4o"),), api="openai-chat"
    )
    claude = dataclasses.replace(app("primary"), providers=(chat,))
    s = Script(Exchange(claude, DIALECTS["anthropic"], Delivery.STREAM, [chat], (), body=body("claude-x")))
    s.start()
    s.connect()
    s.head(200, SSE)
    s.data(CHAT_STREAM)
    s.end()
    (record,) = s.of(Record)
    assert s.exchange.metering(record.attempt)[:4] == ("openai-chat", True, "claude-x", "gpt-4o")
    assert s.exchange.metering(record.attempt).tokens == Tokens(
        176, 1024, 0, 300, 128, "chatcmpl-usage1", "gpt-4o"
    )
    forwarded = b"".join(a.data for a in s.of(Forward))
    assert b"message_stop" in forwarded  # the client got its Anthropic stream


# --- storing it ---------------------------------------------------------------------------------


def config(path: Path) -> Config:
    providers = (Provider("primary", "https://p.example"), Provider("backup", "https://b.example"))
    app = App("claude", ("api.anthropic.com",), providers, ("/v1/messages*",))
    return Config(
        path.with_name("config.yaml"), path, (app,), prices=(("claude-*", Price(3.0, 15.0, 0.3, 3.75)),)
    )


METERED = Metering("anthropic", True, "claude-sonnet-4-5", "glm-4.6", 12.5, 80.25,
                   Tokens(100, 2000, 300, 40, None, "msg_1", "glm-4.6"))  # fmt: skip


def test_control_logs_the_metering_with_the_verdict(tmp_path: Path) -> None:
    store = MemoryBackend()
    control = Control(config(tmp_path / "s.db"), lambda: 5.0, store, wall=lambda: 1_800_000_000.0)
    permit = control.acquire("claude", "backup")
    assert permit is not None
    control.record(
        "claude", "backup", permit, Verdict(Outcome.SUCCESS, "http 200", 200), 123.456, None, METERED
    )
    failed = control.acquire("claude", "primary")
    assert failed is not None
    timeout = Verdict(Outcome.TIMEOUT, "timeout_first_byte: 30s", kind=ErrorKind.TIMEOUT_FIRST_BYTE)
    control.record("claude", "primary", failed, timeout, 30000.0)
    served, timed_out = store.attempts
    assert served == AttemptRecord(
        1_800_000_000.0, "claude", "backup", 200, "success", 123.46, "", "", "anthropic", True,
        "claude-sonnet-4-5", "glm-4.6", 12.5, 80.25, 100, 2000, 300, 40, None, "msg_1",
    )  # fmt: skip
    assert (timed_out.error_kind, timed_out.input_tokens, timed_out.model) == ("timeout_first_byte", None, "")


def test_sqlite_stores_and_reads_every_usage_column(tmp_path: Path) -> None:
    path = tmp_path / "detour.db"
    store = SqliteBackend(path)
    store.open()
    rec = AttemptRecord(1.0, "claude", "backup", 200, "success", 1.5, "", "", "anthropic", True,
                        "claude-x", "glm-4.6", 2.0, 3.0, 10, 20, 30, 40, 5, "msg_9")  # fmt: skip
    unknown = AttemptRecord(2.0, "claude", "primary", 200, "connect_failure", 2.5, "reset", "reset")
    store.log_attempt(rec)
    store.log_attempt(unknown)
    assert store.attempts_since(0.0) == [rec, unknown]
    assert store.attempts_since(1.5) == [unknown]
    store.close()
    assert read_attempts(path, 0.0) == [rec, unknown]
    assert store.first_logged() is None  # closed, and nothing was pruned anyway


def test_the_report_says_when_the_log_was_pruned_inside_the_window(tmp_path: Path) -> None:
    store = SqliteBackend(tmp_path / "detour.db", attempt_limit=2)
    store.open()
    for at in (1.0, 2.0, 3.0):
        store.log_attempt(AttemptRecord(at, "claude", "backup", 200, "success", 1.0, ""))
    assert [r.at for r in store.attempts_since(0.0)] == [2.0, 3.0]
    assert store.first_logged() == 2.0
    store.close()
    memory = MemoryBackend(attempt_limit=2)
    memory.log_attempt(AttemptRecord(1.0, "claude", "backup", 200, "success", 1.0, ""))
    assert memory.first_logged() is None
    for at in (2.0, 3.0):
        memory.log_attempt(AttemptRecord(at, "claude", "backup", 200, "success", 1.0, ""))
    assert memory.first_logged() == 2.0


# --- a database from before usage accounting -----------------------------------------------------


def v1_rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT {', '.join(V1_COLUMNS)} FROM attempt ORDER BY id").fetchall()


def test_the_fixture_is_a_version_1_database() -> None:
    with sqlite3.connect(f"file:{V1_DATABASE}?mode=ro", uri=True) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(attempt)")]
    assert version == "1"
    assert columns == ["id", *V1_COLUMNS]


def test_a_database_written_before_usage_accounting_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "detour.db"
    shutil.copy(V1_DATABASE, path)
    before = v1_rows(path)
    assert len(before) == 31
    store = SqliteBackend(path)
    loaded = store.open()
    assert loaded.warnings == ()
    assert loaded.current == {"claude": "zhipu", "codex": "openai"}
    assert loaded.breakers[("claude", "anthropic")].state is State.OPEN
    new = AttemptRecord(1_790_000_000.0, "claude", "zhipu", 200, "success", 5.0, "", "", "anthropic", True,
                        "claude-x", "glm-4.6", 1.0, 2.0, 10, 0, 0, 5, None, "msg_new")  # fmt: skip
    store.log_attempt(new)
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []  # nothing moved aside
    assert v1_rows(path)[:31] == before  # every old row, unchanged
    rows = read_attempts(path, 0.0)
    assert rows[-1] == new
    assert all(r.input_tokens is None and r.output_tokens is None and r.model == "" for r in rows[:31])
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        columns = [row[1] for row in conn.execute("PRAGMA table_info(attempt)")]
    # Only columns were added: the release before still opens it (it checks the version and its own
    # columns, and names its columns when it writes).
    assert version == "1" and columns[: len(V1_COLUMNS) + 1] == ["id", *V1_COLUMNS]
    again = SqliteBackend(path)  # a second start finds version 2 and changes nothing
    assert again.open().warnings == ()
    again.close()
    assert read_attempts(path, 0.0) == rows


def test_a_version_1_database_is_reported_on_without_being_changed(tmp_path: Path) -> None:
    path = tmp_path / "detour.db"
    shutil.copy(V1_DATABASE, path)
    rows = read_attempts(path, 0.0)
    assert [tuple(getattr(r, c) for c in V1_COLUMNS) for r in rows] == v1_rows(path)
    assert rows[-1].error == "timeout_first_byte: é" and rows[-1].error_kind == ""
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)


# --- python -m addon usage --------------------------------------------------------------------------


def run_usage(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "addon", "usage", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "state: detour.db\n"
        "prices:\n  'claude-*': {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75}\n"
        "apps:\n  claude:\n    hosts: [api.anthropic.com]\n    providers:\n"
        "      - {id: primary, base_url: 'https://p.example'}\n"
        # its key isn't in the report's environment: the report still knows the provider's multiplier
        "      - {id: backup, base_url: 'https://b.example', api_key: '${DETOUR_T_UNSET_KEY}',\n"
        "         price_multiplier: 0.5}\n",
        encoding="utf-8",
    )
    return path


def test_the_usage_command_reports_from_the_database_without_a_proxy(tmp_path: Path) -> None:
    import time

    write_config(tmp_path)
    store = SqliteBackend(tmp_path / "detour.db")
    store.open()
    now = time.time()
    store.log_attempt(AttemptRecord(now - 7200, "claude", "backup", 200, "success", 9.0, "", model="claude-x",
                                    input_tokens=1_000_000, output_tokens=0))  # fmt: skip
    store.log_attempt(AttemptRecord(now - 60, "claude", "primary", 529, "provider_failure", 10.0, "http 529",
                                    "http", model="claude-x"))  # fmt: skip
    store.log_attempt(AttemptRecord(now - 30, "claude", "backup", 200, "success", 20.0, "", model="claude-x",
                                    input_tokens=100, cache_read_tokens=1000, cache_write_tokens=0,
                                    output_tokens=10, reasoning_tokens=None))  # fmt: skip
    store.close()
    done = run_usage("--json", "--since", "1h", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {"app": "claude", "provider": "primary", "model": "claude-x", "requests": 1, "failures": 1,
         "input_tokens": None, "cache_read_tokens": None, "cache_write_tokens": None, "output_tokens": None,
         "reasoning_tokens": None, "cost_usd": 0.0},
        {"app": "claude", "provider": "backup", "model": "claude-x", "requests": 1, "failures": 0,
         "input_tokens": 100, "cache_read_tokens": 1000, "cache_write_tokens": 0, "output_tokens": 10,
         "reasoning_tokens": None, "cost_usd": round((100 * 3 + 1000 * 0.3 + 10 * 15) / 1e6 * 0.5, 10)},
    ]  # fmt: skip
    text = run_usage("--since", "24h", cwd=tmp_path)
    assert text.returncode == 0
    assert text.stdout.splitlines()[-1] == "total: 3 requests, cost $1.50"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "1w"), "detour usage: window must be a number and a unit"),
        (("--config", "missing.yaml"), "detour usage: missing.yaml: cannot read file"),
        ((), "detour usage: no state database at"),
    ],
)
def test_the_usage_command_explains_what_is_wrong(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    write_config(tmp_path)
    done = run_usage(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(message), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_names_and_ids_from_clients_and_providers_are_stored_masked_and_bounded(
    tmp_path: Path, backend: str
) -> None:
    key = "sk-ant-api03-usage-SECRET-0123456789abcdef"
    store = SqliteBackend(tmp_path / "detour.db") if backend == "sqlite" else MemoryBackend()
    store.open()
    store.set_secrets([key])
    echoed = AttemptRecord(1.0, "claude", "backup", 200, "success", 1.0, f"echo {key}")
    store.log_attempt(echoed._replace(model_requested=f"claude {key}", model=key, response_id="x" * 5000))
    (stored,) = store.attempts_since(0.0)
    store.close()
    assert key not in repr(stored)
    assert stored.model == "***" and stored.model_requested == "claude ***" and stored.error == "echo ***"
    assert stored.response_id == "x" * 200
    if backend == "sqlite":
        assert key.encode() not in (tmp_path / "detour.db").read_bytes()
