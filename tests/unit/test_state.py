"""The SQLite state backend against real files: restart round trips, retention, recovery, concurrency."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from statedb import recent

from addon.breaker import BreakerSnapshot, State
from addon.secrets import redact
from addon.state import AttemptRecord, LoadedState, MemoryBackend, SqliteBackend

StateStore = SqliteBackend


def rec(i: int = 0, app: str = "claude", provider: str = "primary", error: str = "") -> AttemptRecord:
    return AttemptRecord(
        at=1_700_000_000.0 + i,
        app=app,
        provider=provider,
        status=200,
        outcome="success",
        latency_ms=float(i),
        error=error,
    )


@pytest.fixture
def stores() -> Iterator[list[StateStore]]:
    """Stores to close at teardown, so no writer thread outlives its test."""
    opened: list[StateStore] = []
    yield opened
    for store in opened:
        store.close()


def open_store(
    stores: list[StateStore], path: Path, secrets: tuple[str, ...] = (), **kwargs: object
) -> tuple[StateStore, LoadedState]:
    store = StateStore(path, **kwargs)  # type: ignore[arg-type]
    store.set_secrets(secrets)
    stores.append(store)
    return store, store.open()


def count_attempts(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (n,) = conn.execute("SELECT COUNT(*) FROM attempt").fetchone()
    return int(n)


# --- round trips ------------------------------------------------------------------------------


def test_fresh_store_creates_file_and_loads_nothing(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "deep" / "dir" / "detour.db"
    store, loaded = open_store(stores, path)
    assert loaded == LoadedState({}, {}, ())
    assert path.is_file()
    assert store.degraded is None


def test_state_survives_restart(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path)
    open_until = time.time() + 300
    opened = BreakerSnapshot(State.OPEN, 3, open_until, 30.0)
    store.set_current("claude", "backup")
    store.set_current("codex", "primary")
    store.set_current("claude", "backup2")  # last write wins
    store.save_breaker("claude", "primary", opened)
    store.save_breaker("claude", "backup", BreakerSnapshot(State.CLOSED, 1, 0.0, 0.0))
    store.save_breaker("codex", "gone", BreakerSnapshot(State.HALF_OPEN, 0, 1.0, 60.0))
    store.forget_breaker("codex", "gone")
    store.log_attempt(rec(1, error="boom"))
    assert store.flush()
    store.close()

    _, loaded = open_store(stores, path)
    assert loaded.warnings == ()
    assert loaded.current == {"claude": "backup2", "codex": "primary"}
    assert loaded.breakers == {
        ("claude", "primary"): opened,
        ("claude", "backup"): BreakerSnapshot(State.CLOSED, 1, 0.0, 0.0),
    }
    # The open circuit keeps its deadline exactly.
    assert loaded.breakers[("claude", "primary")].open_until == open_until
    assert recent(path) == [rec(1, error="boom")]


def test_unknown_breaker_state_is_skipped_with_warning(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path)
    store.save_breaker("claude", "good", BreakerSnapshot(State.OPEN, 3, 123.0, 30.0))
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO breaker VALUES ('claude', 'weird', 'sideways', 0, 0, 0, 0)",
        )
    _, loaded = open_store(stores, path)
    assert list(loaded.breakers) == [("claude", "good")]
    assert len(loaded.warnings) == 1
    assert "claude/weird" in loaded.warnings[0]


def test_writes_queued_before_open_land_after_open(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store = StateStore(path)
    stores.append(store)
    store.set_current("claude", "early")
    assert not store.flush(timeout=0.01)  # no writer yet
    store.open()
    assert store.flush()
    store.close()
    _, loaded = open_store(stores, path)
    assert loaded.current == {"claude": "early"}


def test_an_unbindable_attempt_is_dropped_and_the_rest_of_its_batch_kept(
    tmp_path: Path, stores: list[StateStore], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path)
    store.log_attempt(rec(1))
    store.log_attempt(rec(2)._replace(status=object()))  # type: ignore[arg-type]
    store.set_current("claude", "backup")  # a write between attempt rows keeps its place
    store.log_attempt(rec(3))
    assert store.flush()
    assert [r.at for r in recent(path)] == [rec(3).at, rec(1).at]
    assert "dropped a state update with a bad value" in caplog.text
    assert store.degraded is None


def test_attempts_are_stored_in_order_with_their_app(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path)
    for i in range(10):
        store.log_attempt(rec(i, app="claude" if i % 2 else "codex"))
    assert store.flush()
    assert [r.at for r in recent(path, limit=3)] == [rec(9).at, rec(8).at, rec(7).at]
    claude = recent(path, app="claude")
    assert [r.latency_ms for r in claude] == [9.0, 7.0, 5.0, 3.0, 1.0]
    assert recent(path, app="nobody") == []


def test_wal_mode_is_on(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    open_store(stores, path)
    with sqlite3.connect(path) as conn:
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert mode == "wal"
    assert version == "1"


def test_close_is_idempotent_and_later_writes_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "detour.db"
    store = StateStore(path)
    store.open()
    store.close()
    store.close()
    store.set_current("claude", "late")
    store.log_attempt(rec())
    assert store.flush(timeout=0.1)
    assert recent(path) == []


# --- retention --------------------------------------------------------------------------------


def test_retention_keeps_newest_attempts(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path, attempt_limit=100)
    for i in range(150):
        store.log_attempt(rec(i))
    assert store.flush()
    for i in range(150, 250):
        store.log_attempt(rec(i))
    assert store.flush()
    assert count_attempts(path) == 100
    latest = recent(path, limit=1000)
    assert [r.latency_ms for r in latest] == [float(i) for i in range(249, 149, -1)]


# --- recovery ---------------------------------------------------------------------------------


def test_corrupt_file_is_moved_aside(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    garbage = b"this is definitely not sqlite\x00\xff" * 200
    path.write_bytes(garbage)
    store, loaded = open_store(stores, path)
    assert len(loaded.warnings) == 1
    warning = loaded.warnings[0]
    assert "corrupt" in warning and "moved to detour.db.corrupt-" in warning and "started fresh" in warning
    aside = list(tmp_path.glob("detour.db.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == garbage
    assert store.degraded is None
    store.set_current("claude", "backup")
    store.close()
    _, loaded = open_store(stores, path)
    assert loaded.current == {"claude": "backup"}
    assert loaded.warnings == ()


def test_wrong_schema_version_is_moved_aside(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    conn.close()
    _, loaded = open_store(stores, path)
    assert "schema version 99" in loaded.warnings[0]
    assert list(tmp_path.glob("detour.db.corrupt-*"))


def test_table_with_wrong_columns_is_moved_aside(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE breaker (app TEXT, something_else TEXT)")
    conn.close()
    store, loaded = open_store(stores, path)
    assert "breaker" in loaded.warnings[0] and "moved to" in loaded.warnings[0]
    store.save_breaker("a", "p", BreakerSnapshot(State.CLOSED, 0, 0.0, 0.0))
    assert store.flush()
    assert store.degraded is None


def test_repeated_corruption_does_not_overwrite_earlier_copy(
    tmp_path: Path, stores: list[StateStore]
) -> None:
    path = tmp_path / "detour.db"
    for n in range(2):
        path.write_bytes(b"junk %d" % n * 100)
        store, loaded = open_store(stores, path)
        assert "moved to" in loaded.warnings[0]
        store.close()
    assert len(list(tmp_path.glob("detour.db.corrupt-*"))) == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_unreadable_file_is_moved_aside(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    open_store(stores, path)[0].close()
    path.chmod(0)
    store, loaded = open_store(stores, path)
    assert "moved to" in loaded.warnings[0]
    assert store.degraded is None


def test_unwritable_location_falls_back_to_memory(tmp_path: Path, stores: list[StateStore]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file, so it cannot be a directory")
    store, loaded = open_store(stores, blocker / "state.db")
    assert len(loaded.warnings) == 1
    assert "will not persist" in loaded.warnings[0]
    assert store.degraded is not None and "will not persist" in store.degraded
    # Everything still works, it just doesn't persist.
    store.set_current("claude", "backup")
    store.save_breaker("claude", "primary", BreakerSnapshot(State.OPEN, 3, 1.0, 30.0))
    store.forget_breaker("claude", "primary")
    store.log_attempt(rec(7))
    assert store.flush()
    assert store.degraded is not None and "will not persist" in store.degraded
    store.close()
    assert blocker.read_text().startswith("a regular file")


def test_directory_in_place_of_file_falls_back_to_memory(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    path.mkdir()
    store, loaded = open_store(stores, path)
    assert "is a directory" in loaded.warnings[0]
    assert store.degraded is not None and "in memory" in store.degraded
    store.log_attempt(rec())
    assert store.flush()
    assert path.is_dir()  # not moved aside
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_file_locked_by_another_process_is_not_moved_aside(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE x (y)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store, loaded = open_store(stores, path, busy_timeout=0.05)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "locked" in loaded.warnings[0]
    assert store.degraded is not None and "in memory" in store.degraded
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_runtime_write_failure_is_logged_once_and_never_raises(
    tmp_path: Path, stores: list[StateStore], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path, secrets=("hunter2-secret",))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE attempt")
    conn.close()
    with caplog.at_level(logging.WARNING, logger="addon.store"):
        for i in range(3):
            store.log_attempt(rec(i, error="hunter2-secret"))
            assert store.flush()
    assert store.degraded is not None and "attempt" in store.degraded
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == 1
    assert "hunter2-secret" not in caplog.text
    # Other tables still work, and the store recovers.
    store.set_current("claude", "backup")
    assert store.flush()
    assert store.degraded is None


# --- redaction --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("", (), ""),
        ("plain failure", ("secretvalue",), "plain failure"),
        ("key secretvalue leaked", ("secretvalue",), "key *** leaked"),
        ("twice: abcd abcd", ("abcd",), "twice: *** ***"),
        ("too short: abc", ("abc",), "too short: abc"),
        ("nested longsecret", ("secret", "longsecret"), "nested ***"),
        ("bad key sk-ant-api03-abcdefgh_IJ-kl", (), "bad key ***"),
        ("sk-proj-0123456789 and sk-short", (), "*** and sk-short"),
        ("gemini AIzaSyA1234567890abcdefghijklmn end", (), "gemini *** end"),
        ("AIzaShort", (), "AIzaShort"),
        ("Authorization: Bearer abc.def-ghi", (), "Authorization: Bearer ***"),
        ("bearer xyz, then", (), "bearer ***, then"),
        ("Bearer sk-abcdefghijkl", (), "Bearer ***"),
    ],
)
def test_redact(text: str, secrets: tuple[str, ...], expected: str) -> None:
    assert redact(text, secrets) == expected


def test_stored_errors_are_redacted(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path, secrets=("my-own-key-123",))
    store.log_attempt(rec(1, error="401 for my-own-key-123 / sk-abcdefghijklmnop"))
    assert store.flush()
    store.set_secrets(["rotated-key-456"])
    store.log_attempt(rec(2, error="401 for rotated-key-456"))
    store.log_attempt(rec(3, error="x" * 5000))
    store.close()
    raw = path.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("detour.db-*"))
    assert b"my-own-key-123" not in raw and b"rotated-key-456" not in raw and b"sk-abcdefgh" not in raw
    _, _ = open_store(stores, path)
    errors = [r.error for r in recent(path)]
    assert errors[1:] == ["401 for ***", "401 for *** / ***"]
    assert 0 < len(errors[0]) <= 1000


# --- concurrency and the non-blocking promise -------------------------------------------------


def test_concurrent_writers_lose_nothing(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path, attempt_limit=1_000_000)
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(200):
            store.log_attempt(rec(n * 1000 + i, app=f"app{n}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.flush()
    assert count_attempts(path) == 1600
    for n in range(8):
        assert len(recent(path, limit=10_000, app=f"app{n}")) == 200


def test_enqueue_does_not_block_while_writer_is_locked_out(tmp_path: Path, stores: list[StateStore]) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path, busy_timeout=30.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        store.log_attempt(rec(0))
        # The writer is stuck waiting for the lock, so this flush cannot finish.
        assert not store.flush(timeout=0.2)
        started = time.monotonic()
        for i in range(1, 1001):
            store.log_attempt(rec(i))
            store.set_current("claude", f"p{i}")
        elapsed = time.monotonic() - started
        # Still holding the lock here: nothing can have been written.
        (n,) = holder.execute("SELECT COUNT(*) FROM attempt").fetchone()
        assert n == 0
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert elapsed < 0.5
    assert store.flush(timeout=30.0)
    assert count_attempts(path) == 1001
    assert store.degraded is None
    store.close()
    _, loaded = open_store(stores, path)
    assert loaded.current == {"claude": "p1000"}


def test_memory_backend_keeps_everything_and_redacts() -> None:
    backend = MemoryBackend(attempt_limit=2)
    backend.set_secrets(["memory-secret-1"])
    assert backend.open() == LoadedState({}, {}, ())
    backend.set_current("claude", "backup")
    backend.save_breaker("claude", "primary", BreakerSnapshot(State.OPEN, 3, 1.0, 30.0))
    for i in range(3):
        backend.log_attempt(rec(i, error="saw memory-secret-1"))
    assert backend.flush() and backend.degraded is None
    assert [r.at for r in backend.attempts] == [rec(1).at, rec(2).at]
    assert all(r.error == "saw ***" for r in backend.attempts)
    assert backend.open().current == {"claude": "backup"}
    backend.forget_breaker("claude", "primary")
    assert backend.open().breakers == {}


def test_after_failed_writes_the_latest_current_provider_is_stored_again(
    tmp_path: Path, stores: list[StateStore]
) -> None:
    path = tmp_path / "detour.db"
    store, _ = open_store(stores, path, busy_timeout=0.05)
    store.set_current("claude", "primary")
    assert store.flush()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # like a full disk: every write fails for a while
    try:
        store.set_current("claude", "backup")
        store.save_breaker("claude", "primary", BreakerSnapshot(State.OPEN, 3, 1_700_000_030.0, 30.0))
        assert store.flush(timeout=30.0)
        assert store.degraded is not None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.log_attempt(rec(1))  # any later write that works...
    assert store.flush(timeout=30.0)
    assert store.degraded is None
    with sqlite3.connect(path) as conn:  # ...brings the state up to date again
        current = conn.execute("SELECT provider FROM current_provider WHERE app='claude'").fetchone()
        assert current == ("backup",)
        assert conn.execute("SELECT state FROM breaker WHERE provider='primary'").fetchone() == ("open",)
