"""The SQLite state backend: current provider per app, breaker snapshots, and an attempt log.

Detour runs inside mitmproxy's single asyncio event loop, so nothing here may block it. Every write is
an O(1) `SimpleQueue.put`; one background writer thread drains the queue and applies whatever is
waiting (up to `BATCH_MAX` items) in a single transaction. Reads happen synchronously at startup
(`open`).

The backend never raises into its caller: a corrupt file is moved aside and replaced, an unusable
location falls back to an in-memory database, and a failing write is logged once and marks the store
`degraded`. It never stores API keys; error text is passed through `redact` before it is written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from addon.breaker import BreakerSnapshot, State
from addon.formats.usage import count
from addon.state.base import AttemptRecord, LoadedState, for_storage

log = logging.getLogger(__name__)

#: The schema's version. Changes that only add columns with defaults (the attempt log's usage columns)
#: keep it: a database upgraded in place still opens in the release before, which names its columns.
SCHEMA_VERSION = "1"
#: The most queued items one transaction applies.
BATCH_MAX = 500
#: How long the writer gathers writes before committing them together (lost on a crash, at most).
BATCH_WINDOW = 0.2
#: A batch that fails because the database is locked is retried this many times in all.
BUSY_ATTEMPTS = 3
#: A report waits at most this long for the database (it runs on the proxy's event loop).
REPORT_LOCK_TIMEOUT = 0.5
#: `close` waits this long for the writer to drain before giving up on it (it is a daemon thread).
CLOSE_JOIN_TIMEOUT = 60.0

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS current_provider (
        app TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS breaker (
        app TEXT NOT NULL,
        provider TEXT NOT NULL,
        state TEXT NOT NULL,
        consecutive_failures INTEGER NOT NULL,
        open_until REAL NOT NULL,
        open_for REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (app, provider)
    )""",
    """CREATE TABLE IF NOT EXISTS attempt (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        app TEXT NOT NULL,
        provider TEXT NOT NULL,
        status INTEGER,
        outcome TEXT NOT NULL,
        latency_ms REAL NOT NULL,
        error TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS attempt_at ON attempt (at)",
)

#: The attempt log's columns added for usage accounting, in `AttemptRecord` order. Added to an older
#: table by ALTER TABLE when it opens: its old rows keep NULL tokens (unknown).
_USAGE_COLUMNS = (
    ("error_kind", "TEXT NOT NULL DEFAULT ''"),
    ("dialect", "TEXT NOT NULL DEFAULT ''"),
    ("streamed", "INTEGER NOT NULL DEFAULT 0"),
    ("model_requested", "TEXT NOT NULL DEFAULT ''"),
    ("model", "TEXT NOT NULL DEFAULT ''"),
    ("ttfb_ms", "REAL"),
    ("ttft_ms", "REAL"),
    ("input_tokens", "INTEGER"),
    ("cache_read_tokens", "INTEGER"),
    ("cache_write_tokens", "INTEGER"),
    ("output_tokens", "INTEGER"),
    ("reasoning_tokens", "INTEGER"),
    ("response_id", "TEXT NOT NULL DEFAULT ''"),
)
#: Every column of an attempt row, in `AttemptRecord` order.
ATTEMPT_COLUMNS = AttemptRecord._fields
assert ATTEMPT_COLUMNS[7:] == tuple(name for name, _ in _USAGE_COLUMNS)

_COLUMNS: dict[str, frozenset[str]] = {
    "meta": frozenset({"key", "value"}),
    "current_provider": frozenset({"app", "provider", "updated_at"}),
    "breaker": frozenset(
        {"app", "provider", "state", "consecutive_failures", "open_until", "open_for", "updated_at"}
    ),
    "attempt": frozenset({"id", "at", "app", "provider", "status", "outcome", "latency_ms", "error"}),
}

_SET_CURRENT = "INSERT OR REPLACE INTO current_provider (app, provider, updated_at) VALUES (?, ?, ?)"
_SAVE_BREAKER = (
    "INSERT OR REPLACE INTO breaker"
    " (app, provider, state, consecutive_failures, open_until, open_for, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_FORGET_BREAKER = "DELETE FROM breaker WHERE app = ? AND provider = ?"
_LOG_ATTEMPT = (
    f"INSERT INTO attempt ({', '.join(ATTEMPT_COLUMNS)}) VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
)
_PRUNE = "DELETE FROM attempt WHERE id <= (SELECT MAX(id) FROM attempt) - ?"


# --- queue items ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Write:
    sql: str
    params: tuple[object, ...]


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


@dataclass(frozen=True)
class _Stop:
    pass


_Item = _Write | AttemptRecord | _Flush | _Stop


class _Unusable(Exception):
    """The file is a database, but not one this store can use (wrong schema, failed integrity check)."""


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- the store --------------------------------------------------------------------------------


class SqliteBackend:
    """SQLite-backed state with a single background writer; see the module docstring."""

    def __init__(
        self,
        path: Path,
        attempt_limit: int = 10_000,
        *,
        busy_timeout: float = 5.0,
    ) -> None:
        if attempt_limit < 0:
            raise ValueError("attempt_limit must not be negative")
        self._path = Path(path)
        self._attempt_limit = attempt_limit
        self._secrets: tuple[str, ...] = ()
        self._busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._urgent = threading.Event()
        self._conn: sqlite3.Connection | None = None
        #: Serialises use of `_conn` between the writer and `close`.
        self._conn_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loaded: LoadedState | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        #: Why the store cannot persist at all (in-memory fallback); fixed once `open` returns.
        self._memory_reason: str | None = None
        #: Why the last batch failed; cleared when a later batch commits.
        self._write_failure: str | None = None
        #: The last write of each current provider and breaker, re-applied after failed writes.
        self._latest: dict[tuple[str, ...], _Write] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self) -> LoadedState:
        """Open (or create) the database, load what it holds, and start the writer. Never raises."""
        if self._loaded is not None:
            return self._loaded
        if self._closed:
            return LoadedState({}, {}, ("state store was already closed",))
        warnings: list[str] = []
        loaded: tuple[dict[str, str], dict[tuple[str, str], BreakerSnapshot]] = ({}, {})
        conn = self._open_file(warnings)
        if conn is not None:
            try:
                loaded = self._load(conn, warnings)
            except sqlite3.Error as exc:  # pragma: no cover - the schema was just validated
                warnings.append(f"could not read saved state from {self._path} ({_describe(exc)})")
        else:
            conn = self._open_memory(warnings)
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="detour-state-writer", daemon=True)
        self._thread.start()
        self._loaded = LoadedState(loaded[0], loaded[1], tuple(warnings))
        return self._loaded

    def close(self) -> None:
        """Commit everything queued so far, stop the writer and close the database. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._queue.put(_Stop())
        self._urgent.set()
        thread.join(CLOSE_JOIN_TIMEOUT)
        if thread.is_alive():  # pragma: no cover - only when the disk hangs
            log.warning(
                "state writer did not finish within %.0fs; queued state may be lost", CLOSE_JOIN_TIMEOUT
            )

    @property
    def degraded(self) -> str | None:
        """Why state is not (fully) persisting, or None when all is well."""
        return self._memory_reason or self._write_failure

    # --- writes (enqueue only: O(1), never block) ---------------------------------------------

    def set_current(self, app: str, provider: str) -> None:
        write = _Write(_SET_CURRENT, (app, provider, time.time()))
        self._latest[("current", app)] = write
        self._put(write)

    def save_breaker(self, app: str, provider: str, snap: BreakerSnapshot) -> None:
        params = (
            app,
            provider,
            snap.state.value,
            snap.consecutive_failures,
            snap.open_until,
            snap.open_for,
            time.time(),
        )
        write = _Write(_SAVE_BREAKER, params)
        self._latest[("breaker", app, provider)] = write
        self._put(write)

    def forget_breaker(self, app: str, provider: str) -> None:
        write = _Write(_FORGET_BREAKER, (app, provider))
        self._latest[("breaker", app, provider)] = write
        self._put(write)

    def log_attempt(self, rec: AttemptRecord) -> None:
        # Redaction happens on the writer thread, keeping the event loop's share to one put.
        self._put(rec)

    def set_secrets(self, secrets: Collection[str]) -> None:
        self._secrets = tuple(secrets)

    # --- reads for reports ---------------------------------------------------------------------

    def attempts_since(self, since: float) -> list[AttemptRecord]:
        """Read on a connection of its own (WAL readers see what is committed), after giving the
        writer a moment to commit what is queued: a report never waits long for a busy writer."""
        self.flush(REPORT_LOCK_TIMEOUT)
        try:
            with self._reader() as conn:
                return select_attempts(conn, since)
        except (sqlite3.Error, TimeoutError) as exc:
            log.warning("could not read the attempt log (%s)", _describe(exc))
            return []

    def first_logged(self) -> float | None:
        try:
            with self._reader() as conn:
                return log_start(conn)
        except (sqlite3.Error, TimeoutError):
            return None

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if self._memory_reason is None and self._conn is not None:
            with contextlib.closing(_read_only(self._path)) as conn:
                yield conn
            return
        # The in-memory fallback has one connection: share it, but never wait long for it.
        if not self._conn_lock.acquire(timeout=REPORT_LOCK_TIMEOUT):
            raise TimeoutError("the state writer is busy")
        try:
            if self._conn is None:
                raise sqlite3.OperationalError("the state store is closed")
            yield self._conn
        finally:
            self._conn_lock.release()

    def _put(self, item: _Item) -> None:
        if not self._closed:
            self._queue.put(item)

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until everything queued before this call has been applied; False on timeout.

        "Applied" means the writer has processed it: a batch that failed counts as done and shows
        in `degraded` instead.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(_Flush(done))
        self._urgent.set()
        return done.wait(timeout)

    # --- opening ------------------------------------------------------------------------------

    def _connect(self, target: str) -> sqlite3.Connection:
        """A connection with the store's pragmas and a valid schema, or an exception."""
        conn = sqlite3.connect(
            target, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise _Unusable(f"integrity check failed: {check[0] if check else 'no result'}")
            with _transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                for table, wanted in _COLUMNS.items():
                    missing = wanted - _columns(conn, table)
                    if missing:
                        raise _Unusable(f"table {table} lacks {', '.join(sorted(missing))}")
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                    )
                elif str(row[0]) != SCHEMA_VERSION:
                    raise _Unusable(f"schema version {row[0]}, expected {SCHEMA_VERSION}")
                _add_usage_columns(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_file(self, warnings: list[str]) -> sqlite3.Connection | None:
        """The file database, replacing a corrupt file; None when the location cannot be used."""
        path = self._path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._unusable(warnings, f"cannot create {path.parent} ({_describe(exc)})")
            return None
        if path.is_dir():
            self._unusable(warnings, f"{path} is a directory")
            return None
        try:
            return self._connect(str(path))
        except (sqlite3.Error, OSError, _Unusable, ValueError) as exc:
            if _is_busy(exc):
                self._unusable(warnings, f"{path} is locked by another process ({_describe(exc)})")
                return None
            reason = _describe(exc)
        if not path.exists():
            # Nothing to move aside: the directory itself is the problem.
            self._unusable(warnings, f"cannot create {path} ({reason})")
            return None
        try:
            aside = self._move_aside(path)
        except OSError as exc:
            self._unusable(
                warnings, f"{path} is unreadable ({reason}) and could not be moved aside ({_describe(exc)})"
            )
            return None
        warnings.append(
            f"state file {path.name} was corrupt or unreadable ({reason}); "
            f"moved to {aside.name} and started fresh"
        )
        try:
            return self._connect(str(path))
        except (sqlite3.Error, OSError, _Unusable, ValueError) as exc:
            self._unusable(warnings, f"cannot create {path} ({_describe(exc)})")
            return None

    @staticmethod
    def _move_aside(path: Path) -> Path:
        stamp = int(time.time())
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(path, aside)
        # A stale WAL next to a fresh database would be replayed into it: move it along.
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.replace(side, aside.with_name(aside.name + suffix))
        return aside

    def _unusable(self, warnings: list[str], why: str) -> None:
        self._memory_reason = f"{why}; state is kept in memory and will not persist across restarts"
        warnings.append(self._memory_reason)

    def _open_memory(self, warnings: list[str]) -> sqlite3.Connection:
        if self._memory_reason is None:  # pragma: no cover - every fallback path sets a reason
            self._unusable(warnings, f"cannot use {self._path}")
        return self._connect(":memory:")

    @staticmethod
    def _load(
        conn: sqlite3.Connection, warnings: list[str]
    ) -> tuple[dict[str, str], dict[tuple[str, str], BreakerSnapshot]]:
        current = {
            str(app): str(provider)
            for app, provider in conn.execute("SELECT app, provider FROM current_provider")
        }
        breakers: dict[tuple[str, str], BreakerSnapshot] = {}
        rows = conn.execute(
            "SELECT app, provider, state, consecutive_failures, open_until, open_for FROM breaker"
        )
        for app, provider, state, failures, open_until, open_for in rows:
            try:
                snap = BreakerSnapshot(State(state), int(failures), float(open_until), float(open_for))
            except (TypeError, ValueError):
                warnings.append(
                    f"ignored saved breaker for {app}/{provider}: unknown state or bad values ({state!r})"
                )
                continue
            breakers[(str(app), str(provider))] = snap
        return current, breakers

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = [self._queue.get()]
                if not isinstance(batch[0], _Flush | _Stop):
                    # Gather for a moment: one transaction per burst instead of one per request
                    # keeps the writer thread from competing with the proxy for the CPU.
                    self._urgent.wait(BATCH_WINDOW)
                self._urgent.clear()
                while len(batch) < BATCH_MAX and not isinstance(batch[-1], _Stop):
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    self._apply([i for i in batch if isinstance(i, _Write | AttemptRecord)])
                except Exception as exc:  # pragma: no cover - _apply handles sqlite errors itself
                    self._failed(exc)
                for item in batch:
                    if isinstance(item, _Flush):
                        item.done.set()
                if isinstance(batch[-1], _Stop):
                    return
        finally:
            with self._conn_lock:
                if self._conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.close()
                    self._conn = None

    def _apply(self, ops: list[_Write | AttemptRecord]) -> None:
        if not ops:
            return
        for attempt in range(1, BUSY_ATTEMPTS + 1):
            try:
                with self._conn_lock:
                    conn = self._conn
                    if conn is None:  # pragma: no cover - only after the thread has finished
                        return
                    with _transaction(conn):
                        self._execute(conn, ops)
            except sqlite3.Error as exc:
                if _is_busy(exc) and attempt < BUSY_ATTEMPTS:
                    continue
                self._failed(exc)
                return
            if self._write_failure is not None:
                log.warning("state store writes are working again")
                self._write_failure = None
                self._resync()
            return

    def _resync(self) -> None:
        """After failed writes: store the latest current providers and breakers again, since the
        batches that carried them were rolled back (a full disk that cleared, a lock that went away)."""
        self._apply(list(self._latest.values()))  # a copy: the event loop keeps updating the dict

    def _execute(self, conn: sqlite3.Connection, ops: list[_Write | AttemptRecord]) -> None:
        secrets = self._secrets
        rows: list[tuple[object, ...]] = []  # attempt rows not yet inserted, in order
        logged = False
        for op in ops:
            if isinstance(op, _Write):
                self._insert_attempts(conn, rows)
                self._run_one(conn, op.sql, op.params)
                continue
            rows.append(for_storage(op, secrets))
            logged = True
        self._insert_attempts(conn, rows)
        if logged:
            conn.execute(_PRUNE, (self._attempt_limit,))

    def _insert_attempts(self, conn: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
        """One `executemany` for a run of attempt rows: the per-row cost falls to a few µs."""
        if not rows:
            return
        conn.execute("SAVEPOINT attempts")
        try:
            conn.executemany(_LOG_ATTEMPT, rows)
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError):
            # Undo the rows before the bad one, then find and drop only that one.
            conn.execute("ROLLBACK TO attempts")
            for row in rows:
                self._run_one(conn, _LOG_ATTEMPT, row)
        conn.execute("RELEASE attempts")
        rows.clear()

    @staticmethod
    def _run_one(conn: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> None:
        try:
            conn.execute(sql, params)
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError) as exc:
            # A value sqlite cannot bind: drop this one item, not the whole batch.
            log.warning("dropped a state update with a bad value: %s", exc)

    def _failed(self, exc: BaseException) -> None:
        if self._write_failure is None:
            log.warning("state store write failed (%s); state changes may not persist", _describe(exc))
        self._write_failure = f"writes failing: {_describe(exc)}"


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def _add_usage_columns(conn: sqlite3.Connection) -> None:
    """Schema 1 to 2 in place: the attempt log gains its usage columns; every row is kept."""
    have = _columns(conn, "attempt")
    for name, kind in _USAGE_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE attempt ADD COLUMN {name} {kind}")


def select_attempts(conn: sqlite3.Connection, since: float) -> list[AttemptRecord]:
    """The attempt rows at or after `since`, oldest first. A log still at schema 1 (a database
    nobody has opened for writing since the upgrade) reads too: its rows have no usage."""
    have = _columns(conn, "attempt")
    wanted = [c if c in have else "NULL" for c in ATTEMPT_COLUMNS]
    sql = f"SELECT {', '.join(wanted)} FROM attempt WHERE at >= ? ORDER BY id"
    return [_record(row) for row in conn.execute(sql, (since,))]


def _record(row: tuple[object, ...]) -> AttemptRecord:
    """A stored row as a record. Each value is checked, since anyone may have edited the file: a
    value of the wrong kind becomes the field's default (a count: unknown), never an exception in
    a report; a column an older row lacks takes the default too."""
    values = dict(zip(ATTEMPT_COLUMNS, row, strict=True))
    defaults = AttemptRecord._field_defaults
    for name, value in values.items():
        kind = _COLUMN_KINDS.get(name, str)
        if kind is int:
            values[name] = count(value) if name.endswith("_tokens") else _integer(value)
        elif kind is float:
            values[name] = float(value) if isinstance(value, int | float) and math.isfinite(value) else None
        elif kind is bool:
            values[name] = bool(value) if isinstance(value, int) else False
        elif not isinstance(value, str):
            values[name] = str(defaults.get(name, "")) if value is None else str(value)
    values["at"] = values["at"] if values["at"] is not None else 0.0
    values["latency_ms"] = values["latency_ms"] if values["latency_ms"] is not None else 0.0
    return AttemptRecord(**values)  # type: ignore[arg-type]


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


#: The kind of each non-text column, for `_record`.
_COLUMN_KINDS: dict[str, type] = {
    "at": float,
    "status": int,
    "latency_ms": float,
    "streamed": bool,
    "ttfb_ms": float,
    "ttft_ms": float,
    "input_tokens": int,
    "cache_read_tokens": int,
    "cache_write_tokens": int,
    "output_tokens": int,
    "reasoning_tokens": int,
}


def log_start(conn: sqlite3.Connection) -> float | None:
    """When the oldest kept attempt was made, if older ones were pruned: ids count up from 1
    (AUTOINCREMENT never reuses one), so a first id above 1 means rows were deleted."""
    row = conn.execute("SELECT MIN(id), MIN(at) FROM attempt").fetchone()
    if row is None or row[0] is None or int(row[0]) <= 1:
        return None
    return float(row[1])


def _read_only(path: Path, timeout: float = REPORT_LOCK_TIMEOUT) -> sqlite3.Connection:
    """A read-only connection to the database at `path` (a URI, so `#`, `?` or `%` in the path are
    the file's own characters; read-only, so no file is ever created by reading)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)


def read_log_start(path: Path) -> float | None:
    """`log_start` of the database at `path`, read-only; None when it can't be read."""
    try:
        with contextlib.closing(_read_only(path, 5.0)) as conn:
            return log_start(conn)
    except sqlite3.Error:
        return None


def read_attempts(path: Path, since: float) -> list[AttemptRecord]:
    """The attempts in the state database at `path` since `since`, read-only: for reports made
    without a running Detour (another process may be writing it: WAL readers see committed rows).
    Raises `ValueError` with a readable reason when the file can't be read as Detour's database."""
    if not path.is_file():
        raise ValueError(f"no state database at {path}")
    try:
        with contextlib.closing(_read_only(path, 5.0)) as conn:
            if "attempt" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}:
                raise ValueError(f"{path} has no attempt log")
            return select_attempts(conn, since)
    except sqlite3.Error as exc:
        raise ValueError(f"cannot read {path}: {_describe(exc)}") from None


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
